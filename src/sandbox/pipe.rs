//! A tool's stdout and stderr: in memory, with a cap.
//!
//! wasmtime's `MemoryOutputPipe` traps with a generic message past its capacity. Here the cap
//! is explicit: stdout past the cap fails the write (the tool is stopped and the invocation
//! fails naming the limit); stderr past the cap is dropped and marked truncated, since a chatty
//! log must not fail a tool.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamError};

/// What happens to bytes past the cap.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Overflow {
    /// The write fails and the guest stops.
    Fail,
    /// The bytes are dropped.
    Truncate,
}

#[derive(Debug, Default)]
struct Inner {
    buf: BytesMut,
    overflowed: bool,
}

/// An in-memory output with a byte cap. Clones share the buffer.
#[derive(Debug, Clone)]
pub struct CappedPipe {
    inner: Arc<Mutex<Inner>>,
    cap: usize,
    overflow: Overflow,
}

impl CappedPipe {
    /// An empty pipe holding at most `cap` bytes.
    pub fn new(cap: u64, overflow: Overflow) -> Self {
        Self {
            inner: Arc::default(),
            cap: usize::try_from(cap).unwrap_or(usize::MAX),
            overflow,
        }
    }

    /// What was written (up to the cap), and whether more was attempted.
    pub fn take(&self) -> (Bytes, bool) {
        let mut inner = self.lock();
        let bytes = std::mem::take(&mut inner.buf).freeze();
        (bytes, inner.overflowed)
    }

    /// Whether more than the cap was written.
    pub fn overflowed(&self) -> bool {
        self.lock().overflowed
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding this lock cannot leave the buffer inconsistent.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Appends what fits; returns whether everything fitted.
    fn append(&self, bytes: &[u8]) -> bool {
        let mut inner = self.lock();
        let room = self.cap.saturating_sub(inner.buf.len());
        let n = bytes.len().min(room);
        inner.buf.extend_from_slice(&bytes[..n]);
        if n < bytes.len() {
            inner.overflowed = true;
            return false;
        }
        true
    }

    fn overflow_error(&self) -> StreamError {
        StreamError::Trap(wasmtime::format_err!(
            "output exceeded its cap of {} bytes",
            self.cap
        ))
    }
}

impl OutputStream for CappedPipe {
    fn write(&mut self, bytes: Bytes) -> Result<(), StreamError> {
        if !self.append(&bytes) && self.overflow == Overflow::Fail {
            return Err(self.overflow_error());
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<(), StreamError> {
        Ok(())
    }

    fn check_write(&mut self) -> Result<usize, StreamError> {
        if self.overflow == Overflow::Fail && self.overflowed() {
            return Err(self.overflow_error());
        }
        // Truncating pipes always accept (and drop); failing ones accept one byte more than
        // fits so that an overflowing write is seen, and named, rather than blocking forever.
        Ok(64 << 10)
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for CappedPipe {
    async fn ready(&mut self) {}
}

impl IsTerminal for CappedPipe {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for CappedPipe {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }

    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

impl tokio::io::AsyncWrite for CappedPipe {
    fn poll_write(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        if !self.append(buf) && self.overflow == Overflow::Fail {
            return Poll::Ready(Err(std::io::Error::other(format!(
                "output exceeded its cap of {} bytes",
                self.cap
            ))));
        }
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}
