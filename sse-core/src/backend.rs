//! The [`FanoutBackend`] trait: how envelopes travel between instances.
//!
//! A backend moves opaque envelope bytes. Encoding, the sending-application filter and delivery to
//! streams all happen in the hub, so a backend is a thin adapter over a broker's publish/subscribe,
//! written once per broker (see the `sse-fanout-*` backend crates) or by a user for their own.

use std::fmt;
use std::time::SystemTime;

use async_trait::async_trait;
use bytes::Bytes;
use futures_core::stream::BoxStream;

pub use crate::error::{BackendError, BoxError};
use crate::history::BrokerHistory;
use crate::route::SessionRoutes;

/// What a subscription yields: every envelope any instance published after it started, and a
/// [`Received::Gap`] wherever it may have missed some.
pub type BackendStream = BoxStream<'static, Received>;

pub use crate::history::Lane;

/// One item of a [`BackendStream`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Received {
    /// An envelope, as some instance (or another program) published it, on [lane](Lane) 0.
    Envelope(Bytes),
    /// An envelope on another [lane](Lane) than 0.
    OnLane {
        /// Its lane.
        lane: Lane,
        /// The envelope.
        envelope: Bytes,
    },
    /// The subscription may have missed envelopes (of any lane) published at or after `since`
    /// and before the next item (its broker connection was lost and is back, or the broker dropped messages of
    /// a slow subscriber). The hub reads them from the backend's
    /// [history](FanoutBackend::history), once, and delivers those it did not have before it
    /// goes on with the items after this one; a backend reports the gap and never reads the
    /// history itself. `since` is a little before the subscription's last sign of life (clocks
    /// of hosts and broker differ): reading from too early costs only the read.
    Gap {
        /// Nothing published before this time was missed.
        since: SystemTime,
    },
}

impl Received {
    /// The envelope, of whichever lane; `None` for a gap.
    pub fn into_envelope(self) -> Option<Bytes> {
        match self {
            Received::Envelope(envelope) | Received::OnLane { envelope, .. } => Some(envelope),
            Received::Gap { .. } => None,
        }
    }
}

impl From<Bytes> for Received {
    fn from(envelope: Bytes) -> Self {
        Received::Envelope(envelope)
    }
}

/// The stream of a subscription whose task forwards messages into a bounded channel: the usual
/// shape of a backend's [`FanoutBackend::subscribe`]. The stream ends when the task drops its
/// sender. The channel carries envelopes ([`Bytes`]) or [`Received`] items (to report gaps).
pub fn channel_stream<T: Into<Received> + Send + 'static>(
    rx: tokio::sync::mpsc::Receiver<T>,
) -> BackendStream {
    use futures_util::StreamExt;
    futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item.into(), rx))
    })
    .boxed()
}

/// The reconnect bookkeeping of a backend whose subscriptions reconnect by themselves: how many
/// are down right now (health is down while any is) and how often one came back.
#[derive(Debug, Default)]
pub struct Reconnects {
    down: std::sync::atomic::AtomicU64,
    restored: std::sync::atomic::AtomicU64,
}

impl Reconnects {
    /// The state of one subscription, counted here until it is dropped.
    pub fn subscription(&self) -> SubscriptionState<'_> {
        SubscriptionState {
            gauge: self,
            down: false,
        }
    }

    /// How often a subscription was restored after it was lost.
    pub fn restored(&self) -> u64 {
        self.restored.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// `Health::down` while any subscription is reconnecting.
    pub fn health(&self) -> Option<Health> {
        match self.down.load(std::sync::atomic::Ordering::Relaxed) {
            0 => None,
            n => Some(Health::down(format!("{n} subscription(s) reconnecting"))),
        }
    }
}

/// One subscription's part in [`Reconnects`]; a subscription that ends while down takes itself
/// out of the count when dropped.
#[derive(Debug)]
pub struct SubscriptionState<'a> {
    gauge: &'a Reconnects,
    down: bool,
}

impl SubscriptionState<'_> {
    /// The connection is lost; reconnecting.
    pub fn lost(&mut self) {
        self.set(true);
    }

    /// The connection is back.
    pub fn restored(&mut self) {
        if self.down {
            self.gauge
                .restored
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        self.set(false);
    }

    fn set(&mut self, down: bool) {
        use std::sync::atomic::Ordering::Relaxed;
        if down != self.down {
            self.down = down;
            if down {
                self.gauge.down.fetch_add(1, Relaxed);
            } else {
                self.gauge.down.fetch_sub(1, Relaxed);
            }
        }
    }
}

impl Drop for SubscriptionState<'_> {
    fn drop(&mut self) {
        self.set(false);
    }
}

/// Whether a backend can publish and receive right now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Health {
    /// `true` when connected.
    pub up: bool,
    /// Why it is down, or other detail worth showing.
    pub detail: Option<String>,
}

impl Health {
    /// Connected.
    pub fn up() -> Self {
        Health {
            up: true,
            detail: None,
        }
    }

    /// Not connected, for `reason`.
    pub fn down(reason: impl Into<String>) -> Self {
        Health {
            up: false,
            detail: Some(reason.into()),
        }
    }
}

/// Carries envelopes from the instance that publishes to every instance (itself included).
///
/// Implement this to add a broker. The trait is object-safe: the hub holds an
/// `Arc<dyn FanoutBackend>`, and an application that shares one backend keeps one too
/// ([`Hub::builder_arc`](crate::Hub::builder_arc)). There is deliberately no forwarding impl for
/// `Arc<T>` or `Box<T>`: a capability added here could be forgotten in one and silently read as
/// `None` behind it, whereas a trait object always calls the implementation itself. Run [`testkit`](crate#testkit) (feature `testkit`) against an
/// implementation to check that it keeps this contract.
#[async_trait]
pub trait FanoutBackend: Send + Sync + fmt::Debug + 'static {
    /// A short name for logs and health (`"redis"`, `"nats"`).
    fn name(&self) -> &'static str;

    /// Publishes one envelope to every instance. Returning `Ok` means the broker holds it; a
    /// broker that is down gives an error within a bounded time, never a hang.
    async fn publish(&self, envelope: Bytes) -> Result<(), BackendError>;

    /// Starts receiving. Returns only once the broker holds the subscription, so that anything
    /// published after it returns is received. The stream yields each envelope once, in the order
    /// each publisher published them, and keeps going across broker outages (the backend
    /// reconnects by itself). Where it may have missed envelopes (a lost connection that is
    /// back, messages the broker dropped), it yields a [`Received::Gap`] before what follows:
    /// the hub catches up from the [`history`](Self::history), the backend never reads it for
    /// that. It ends only after [`close`](Self::close).
    async fn subscribe(&self) -> Result<BackendStream, BackendError>;

    /// Whether the broker connection is up.
    async fn health(&self) -> Health;

    /// Leaves the broker cleanly (drops queues and consumer groups that belong to this instance).
    async fn close(&self) -> Result<(), BackendError> {
        Ok(())
    }

    /// How often the backend re-established a lost broker connection (0 when it does not count).
    fn reconnects(&self) -> u64 {
        0
    }

    /// The history this backend keeps in its broker, if it keeps one (see [`crate::history`]).
    /// The default, `None`, leaves `Last-Event-ID` to each instance's own replay log.
    fn history(&self) -> Option<&dyn BrokerHistory> {
        None
    }

    /// The routes this backend offers for [routed delivery](crate::route), if it offers them.
    /// The default, `None`, means broadcast only: a hub configured for
    /// [`Routing::Session`](crate::route::Routing::Session) refuses to start on it.
    fn routes(&self) -> Option<&dyn SessionRoutes> {
        None
    }

    /// The largest envelope, in bytes, the broker accepts, when the backend knows it; a larger
    /// one is refused with [`BackendError::TooLarge`]. The conformance suite sends one of exactly
    /// this size (1 MiB when `None`).
    fn max_envelope(&self) -> Option<usize> {
        None
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::sync::Arc;

    use super::*;
    use crate::LocalBackend;
    use crate::history::HistoryStream;

    /// A backend with every optional capability, to see each one through a shared handle.
    #[derive(Debug, Default)]
    struct Capable {
        local: LocalBackend,
    }

    #[async_trait]
    impl BrokerHistory for Capable {
        async fn read_since(&self, _since: SystemTime) -> Result<HistoryStream, BackendError> {
            Ok(Box::pin(futures_util::stream::empty()))
        }
    }

    #[async_trait]
    impl FanoutBackend for Capable {
        fn name(&self) -> &'static str {
            "capable"
        }
        async fn publish(&self, envelope: Bytes) -> Result<(), BackendError> {
            self.local.publish(envelope).await
        }
        async fn subscribe(&self) -> Result<BackendStream, BackendError> {
            FanoutBackend::subscribe(&self.local).await
        }
        async fn health(&self) -> Health {
            Health::down("a test")
        }
        fn reconnects(&self) -> u64 {
            7
        }
        fn history(&self) -> Option<&dyn BrokerHistory> {
            Some(self)
        }
        fn routes(&self) -> Option<&dyn SessionRoutes> {
            self.local.routes()
        }
        fn max_envelope(&self) -> Option<usize> {
            Some(1234)
        }
    }

    /// Every optional capability reads the same through the handles a backend is shared by (the
    /// hub's `Arc<dyn FanoutBackend>`, a `Box<dyn FanoutBackend>`): none falls back to its default.
    #[tokio::test]
    async fn a_shared_backend_keeps_every_capability() {
        let shared: Arc<dyn FanoutBackend> = Arc::new(Capable::default());
        let boxed: Box<dyn FanoutBackend> = Box::new(Capable::default());
        for backend in [&*shared, &*boxed] {
            assert_eq!(backend.name(), "capable");
            assert_eq!(backend.reconnects(), 7);
            assert_eq!(backend.max_envelope(), Some(1234));
            assert!(backend.history().is_some(), "history lost");
            assert!(backend.routes().is_some(), "routes lost");
            assert!(!backend.health().await.up);
        }
        // The hub sees them too: session routing starts only on a backend with routes.
        let hub = crate::Hub::builder_arc(shared)
            .routing(crate::Routing::session())
            .start()
            .await
            .expect("session routing on a backend with routes");
        assert_eq!(hub.backend_routes(), Some(0));
    }
}
