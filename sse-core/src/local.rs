//! [`LocalBackend`]: the embedded, in-process backend for a single instance.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::StreamExt;
use tokio::sync::broadcast;

use crate::backend::{BackendError, BackendStream, FanoutBackend, Health};

/// Fans envelopes out inside one process, with no broker: the default for a single instance.
///
/// Clones share one channel, so several hubs in one process (as in tests) see each other's events.
/// A subscriber that falls more than `capacity` envelopes behind loses the oldest ones; the loss is
/// logged and counted in [`lagged`](Self::lagged).
#[derive(Debug, Clone)]
pub struct LocalBackend {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    tx: broadcast::Sender<Bytes>,
    closed: AtomicBool,
    lagged: AtomicU64,
}

impl LocalBackend {
    /// The default capacity: envelopes a subscriber may fall behind before it loses some.
    pub const DEFAULT_CAPACITY: usize = 16 * 1024;

    /// A backend with [`DEFAULT_CAPACITY`](Self::DEFAULT_CAPACITY).
    pub fn new() -> Self {
        Self::with_capacity(Self::DEFAULT_CAPACITY)
    }

    /// A backend whose subscribers may fall `capacity` envelopes behind.
    pub fn with_capacity(capacity: usize) -> Self {
        let (tx, _) = broadcast::channel(capacity.max(1));
        LocalBackend {
            inner: Arc::new(Inner {
                tx,
                closed: AtomicBool::new(false),
                lagged: AtomicU64::new(0),
            }),
        }
    }

    /// Envelopes lost by subscribers that fell too far behind.
    pub fn lagged(&self) -> u64 {
        self.inner.lagged.load(Ordering::Relaxed)
    }
}

impl Default for LocalBackend {
    fn default() -> Self {
        Self::new()
    }
}

#[async_trait]
impl FanoutBackend for LocalBackend {
    fn name(&self) -> &'static str {
        "local"
    }

    async fn publish(&self, envelope: Bytes) -> Result<(), BackendError> {
        if self.inner.closed.load(Ordering::Acquire) {
            return Err(BackendError::Closed { backend: "local" });
        }
        // No subscriber is not an error: nobody is listening yet.
        let _ = self.inner.tx.send(envelope);
        Ok(())
    }

    async fn subscribe(&self) -> Result<BackendStream, BackendError> {
        if self.inner.closed.load(Ordering::Acquire) {
            return Err(BackendError::Closed { backend: "local" });
        }
        let rx = self.inner.tx.subscribe();
        let inner = self.inner.clone();
        let stream = futures_util::stream::unfold((rx, inner), |(mut rx, inner)| async move {
            loop {
                match rx.recv().await {
                    Ok(bytes) => return Some((bytes, (rx, inner))),
                    Err(broadcast::error::RecvError::Lagged(n)) => {
                        inner.lagged.fetch_add(n, Ordering::Relaxed);
                        tracing::warn!(lost = n, "local backend subscriber fell behind");
                    }
                    Err(broadcast::error::RecvError::Closed) => return None,
                }
                if inner.closed.load(Ordering::Acquire) {
                    return None;
                }
            }
        });
        Ok(stream.boxed())
    }

    async fn health(&self) -> Health {
        if self.inner.closed.load(Ordering::Acquire) {
            Health::down("closed")
        } else {
            Health::up()
        }
    }

    async fn close(&self) -> Result<(), BackendError> {
        self.inner.closed.store(true, Ordering::Release);
        Ok(())
    }
}
