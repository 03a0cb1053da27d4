//! Bodies moving through the pipeline: one boxed type, and a metered wrapper that enforces a
//! size cap and reports how the body ended (so the audit record carries the outcome).

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;

/// Any error a body can fail with.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The body type of every request and response in the pipeline.
pub type BoxBody = http_body_util::combinators::UnsyncBoxBody<Bytes, BoxError>;

/// Maps an impossible error into [`BoxError`] (for bodies that cannot fail).
pub fn empty_error(never: Infallible) -> BoxError {
    match never {}
}

/// Boxes any body whose error converts into [`BoxError`].
pub fn boxed<B>(body: B) -> BoxBody
where
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    body.map_err(Into::into).boxed_unsync()
}

/// An empty body.
pub fn empty() -> BoxBody {
    http_body_util::Empty::new()
        .map_err(empty_error)
        .boxed_unsync()
}

/// How a metered body ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum End {
    /// Every byte was relayed.
    Complete,
    /// The cap was exceeded; the stream was cut.
    TooLarge,
    /// The underlying body failed.
    Failed(String),
    /// The receiver went away before the end.
    Aborted,
}

/// The error a metered body fails with past its cap.
#[derive(Debug, thiserror::Error)]
#[error("body exceeds the {0}-byte limit")]
pub struct TooLarge(pub u64);

type OnEnd = Box<dyn FnOnce(u64, End) + Send>;

/// The error a metered body fails with when no data arrives for its idle timeout.
#[derive(Debug, thiserror::Error)]
#[error("no data for {0:?}")]
pub struct IdleTimeout(pub Duration);

/// Counts bytes, cuts the stream past `limit` or after `idle` without data, and calls
/// `on_end` exactly once with the byte count and how the body ended (including when it is
/// dropped early).
pub struct Metered {
    inner: BoxBody,
    bytes: u64,
    limit: u64,
    idle: Duration,
    deadline: Pin<Box<tokio::time::Sleep>>,
    on_end: Option<OnEnd>,
}

impl Metered {
    /// Wraps a body.
    pub fn new(
        inner: BoxBody,
        limit: u64,
        idle: Duration,
        on_end: impl FnOnce(u64, End) + Send + 'static,
    ) -> Self {
        Self {
            inner,
            bytes: 0,
            limit,
            idle,
            deadline: Box::pin(tokio::time::sleep(idle)),
            on_end: Some(Box::new(on_end)),
        }
    }

    fn finish(&mut self, end: End) {
        if let Some(f) = self.on_end.take() {
            f(self.bytes, end);
        }
    }
}

impl Body for Metered {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if self.on_end.is_none() {
            return Poll::Ready(None);
        }
        match Pin::new(&mut self.inner).poll_frame(cx) {
            Poll::Pending => {
                if self.deadline.as_mut().poll(cx).is_ready() {
                    let idle = self.idle;
                    self.finish(End::Failed(format!("no data for {idle:?}")));
                    return Poll::Ready(Some(Err(Box::new(IdleTimeout(idle)))));
                }
                Poll::Pending
            }
            Poll::Ready(None) => {
                self.finish(End::Complete);
                Poll::Ready(None)
            }
            Poll::Ready(Some(Err(e))) => {
                self.finish(End::Failed(e.to_string()));
                Poll::Ready(Some(Err(e)))
            }
            Poll::Ready(Some(Ok(frame))) => {
                let next = tokio::time::Instant::now() + self.idle;
                self.deadline.as_mut().reset(next);
                if let Some(data) = frame.data_ref() {
                    // The frame that crosses the cap is not relayed, so it is not counted.
                    let bytes = self.bytes + data.len() as u64;
                    if bytes > self.limit {
                        let limit = self.limit;
                        self.finish(End::TooLarge);
                        return Poll::Ready(Some(Err(Box::new(TooLarge(limit)))));
                    }
                    self.bytes = bytes;
                }
                // Receivers stop polling once the body says it has ended (Content-Length).
                if self.inner.is_end_stream() {
                    self.finish(End::Complete);
                }
                Poll::Ready(Some(Ok(frame)))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.on_end.is_none() || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for Metered {
    fn drop(&mut self) {
        self.finish(End::Aborted);
    }
}
