//! [`LocalBackend`]: the embedded, in-process backend for a single instance.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::StreamExt;
use tokio::sync::broadcast;

use crate::backend::{BackendError, BackendStream, FanoutBackend, Health, Received};
use crate::route::SessionRoutes;

/// What travels on the channel: an envelope, and the session whose route it was published to.
type Message = (Option<Arc<str>>, Bytes);

/// Fans envelopes out inside one process, with no broker: the default for a single instance.
///
/// Clones share one channel, so several hubs in one process (as in tests) see each other's events.
/// A subscriber that falls more than `capacity` envelopes behind loses the oldest ones; the loss is
/// logged and counted in [`lagged`](Self::lagged).
///
/// It offers [routed delivery](crate::route) too, to try it and to test code built on it: each
/// handle made by [`instance`](Self::instance) is one instance with routes of its own (clones
/// share them).
#[derive(Debug, Clone)]
pub struct LocalBackend {
    inner: Arc<Inner>,
    /// This instance's own state: its routes, and whether it was closed.
    own: Arc<Own>,
}

#[derive(Debug, Default)]
struct Own {
    /// The sessions whose routes this instance receives.
    routes: Mutex<HashSet<Arc<str>>>,
    closed: AtomicBool,
}

#[derive(Debug)]
struct Inner {
    tx: broadcast::Sender<Message>,
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
                lagged: AtomicU64::new(0),
            }),
            own: Arc::default(),
        }
    }

    /// Another instance on the same channel, with routes of its own.
    pub fn instance(&self) -> Self {
        LocalBackend {
            inner: self.inner.clone(),
            own: Arc::default(),
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
        if self.own.closed.load(Ordering::Acquire) {
            return Err(BackendError::Closed { backend: "local" });
        }
        // No subscriber is not an error: nobody is listening yet.
        let _ = self.inner.tx.send((None, envelope));
        Ok(())
    }

    fn routes(&self) -> Option<&dyn SessionRoutes> {
        Some(self)
    }

    async fn subscribe(&self) -> Result<BackendStream, BackendError> {
        if self.own.closed.load(Ordering::Acquire) {
            return Err(BackendError::Closed { backend: "local" });
        }
        let rx = self.inner.tx.subscribe();
        let state = (rx, self.inner.clone(), self.own.clone());
        let stream = futures_util::stream::unfold(state, |(mut rx, inner, own)| async move {
            loop {
                match rx.recv().await {
                    Ok((None, bytes)) => {
                        return Some((Received::Envelope(bytes), (rx, inner, own)));
                    }
                    Ok((Some(session), bytes)) => {
                        if lock(&own.routes).contains(&session) {
                            return Some((Received::Envelope(bytes), (rx, inner, own)));
                        }
                    }
                    Err(broadcast::error::RecvError::Lagged(n)) => {
                        inner.lagged.fetch_add(n, Ordering::Relaxed);
                        tracing::warn!(lost = n, "local backend subscriber fell behind");
                        let gap = Received::Gap {
                            since: std::time::SystemTime::now(),
                        };
                        return Some((gap, (rx, inner, own)));
                    }
                    Err(broadcast::error::RecvError::Closed) => return None,
                }
                if own.closed.load(Ordering::Acquire) {
                    return None;
                }
            }
        });
        Ok(stream.boxed())
    }

    async fn health(&self) -> Health {
        if self.own.closed.load(Ordering::Acquire) {
            Health::down("closed")
        } else {
            Health::up()
        }
    }

    async fn close(&self) -> Result<(), BackendError> {
        self.own.closed.store(true, Ordering::Release);
        Ok(())
    }
}

fn lock(routes: &Mutex<HashSet<Arc<str>>>) -> std::sync::MutexGuard<'_, HashSet<Arc<str>>> {
    routes.lock().unwrap_or_else(PoisonError::into_inner)
}

#[async_trait]
impl SessionRoutes for LocalBackend {
    async fn publish_to(&self, session: &str, envelope: Bytes) -> Result<(), BackendError> {
        if self.own.closed.load(Ordering::Acquire) {
            return Err(BackendError::Closed { backend: "local" });
        }
        let _ = self.inner.tx.send((Some(session.into()), envelope));
        Ok(())
    }

    async fn subscribe(&self, sessions: &[&str]) -> Result<(), BackendError> {
        lock(&self.own.routes).extend(sessions.iter().map(|s| Arc::from(*s)));
        Ok(())
    }

    async fn unsubscribe(&self, sessions: &[&str]) -> Result<(), BackendError> {
        let mut routes = lock(&self.own.routes);
        for session in sessions {
            routes.remove(*session);
        }
        Ok(())
    }

    fn subscribed(&self) -> usize {
        lock(&self.own.routes).len()
    }
}
