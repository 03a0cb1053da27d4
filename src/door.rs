//! What both front doors (the API and the forward proxy) share: accepting at most
//! `max_connections` at a time, and draining on shutdown.
//!
//! On shutdown a door stops accepting, tells every connection to finish gracefully (an idle
//! keep-alive connection closes; a request in progress completes and its response is sent),
//! and waits for them, at most [`DRAIN_TIMEOUT`]. A CONNECT tunnel holds its connection's
//! permit and is waited for too, up to the same deadline.

use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};

/// The longest a door waits for its connections after shutdown begins (a Kubernetes pod gets
/// 30 s between SIGTERM and SIGKILL by default).
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(25);

/// The connections of one door.
#[derive(Debug)]
pub struct Door {
    permits: Arc<Semaphore>,
    max: usize,
    drain: watch::Sender<bool>,
    name: &'static str,
}

impl Door {
    /// A door admitting at most `max` connections at once.
    pub fn new(name: &'static str, max: usize) -> Self {
        let max = max.max(1);
        Self {
            permits: Arc::new(Semaphore::new(max)),
            max,
            drain: watch::channel(false).0,
            name,
        }
    }

    /// The next connection and its permit, waiting for a free permit first; `None` once
    /// `shutdown` has resolved.
    pub async fn accept(
        &self,
        listener: &TcpListener,
        shutdown: &mut (impl Future<Output = ()> + Unpin),
    ) -> Option<(TcpStream, OwnedSemaphorePermit)> {
        loop {
            let permit = tokio::select! {
                _ = &mut *shutdown => return None,
                p = self.permits.clone().acquire_owned() => p.ok()?,
            };
            let stream = tokio::select! {
                _ = &mut *shutdown => return None,
                a = listener.accept() => match a {
                    Ok((s, _)) => s,
                    Err(e) => {
                        tracing::warn!(door = self.name, error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
            };
            let _ = stream.set_nodelay(true);
            return Some((stream, permit));
        }
    }

    /// Resolves when connections should finish gracefully.
    pub fn draining(&self) -> impl Future<Output = ()> + Send + 'static {
        let mut rx = self.drain.subscribe();
        async move {
            let _ = rx.wait_for(|d| *d).await;
        }
    }

    /// Tells every connection to finish and waits until they have (every permit is back),
    /// at most [`DRAIN_TIMEOUT`].
    pub async fn drain(&self) {
        let _ = self.drain.send(true);
        let open = self.max - self.permits.available_permits();
        if open == 0 {
            return;
        }
        tracing::info!(door = self.name, open, "draining connections");
        let max = u32::try_from(self.max).unwrap_or(u32::MAX);
        match tokio::time::timeout(DRAIN_TIMEOUT, self.permits.acquire_many(max)).await {
            Ok(_) => tracing::info!(door = self.name, "drained"),
            Err(_) => tracing::warn!(
                door = self.name,
                still_open = self.max - self.permits.available_permits(),
                "connections still open at the drain deadline; closing them"
            ),
        }
    }
}
