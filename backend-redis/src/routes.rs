//! Session routes: a session's events on its own channel, `{channel}:{token}`, subscribed on the
//! subscription's connection (see the crate docs on routed delivery).

use std::collections::HashSet;
use std::sync::PoisonError;

use async_trait::async_trait;
use bytes::Bytes;
use sse_core::BackendError;
use sse_core::route::{SessionRoutes, route_token};

use crate::link::Subscriber;
use crate::names::RouteName;
use crate::{Inner, RedisBackend};

/// Channels one `SUBSCRIBE` names at most when routes are subscribed again after a reconnect.
const ROUTE_BATCH: usize = 1000;

/// The session channels this instance subscribes (see the crate docs on routed delivery), and
/// the subscription connection's sink while it is up.
#[derive(Default)]
pub(crate) struct Routes {
    channels: HashSet<String>,
    sink: Option<Subscriber>,
}

impl Inner {
    /// The channel of a session's route, and its lane.
    fn route(&self, session: &str) -> RouteName {
        self.names.route(&route_token(session))
    }

    fn route_channels(&self, sessions: &[&str]) -> Vec<String> {
        sessions.iter().map(|s| self.route(s).channel).collect()
    }

    /// The subscription's connection is gone: routes are recorded, not subscribed, until
    /// [`resubscribe`](Self::resubscribe) hands over the next one.
    pub(crate) fn connection_lost(&self) {
        self.routes().sink = None;
    }

    /// Whether this instance wants `channel` subscribed (the shared channel, or a route it
    /// holds): a channel Redis unsubscribed by itself (its slot moved) is subscribed again.
    pub(crate) fn intends(&self, channel: &[u8]) -> bool {
        channel == self.names.channel.as_bytes()
            || std::str::from_utf8(channel).is_ok_and(|c| self.routes().channels.contains(c))
    }

    fn routes(&self) -> std::sync::MutexGuard<'_, Routes> {
        self.routes.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Hands a new subscription connection's sink to the routes and subscribes every route
    /// again, in batches (after a reconnect).
    pub(crate) async fn resubscribe(&self, sink: &Subscriber) -> Result<(), BackendError> {
        let _changing = self.route_changes.lock().await;
        let channels: Vec<String> = {
            let mut routes = self.routes();
            routes.sink = Some(sink.clone());
            routes.channels.iter().cloned().collect()
        };
        for batch in channels.chunks(ROUTE_BATCH) {
            self.timed(sink.clone().subscribe(batch)).await?;
        }
        if !channels.is_empty() {
            tracing::info!(
                routes = channels.len(),
                "redis session routes subscribed again"
            );
        }
        Ok(())
    }
}

#[async_trait]
impl SessionRoutes for RedisBackend {
    async fn publish_to(&self, session: &str, envelope: Bytes) -> Result<(), BackendError> {
        let route = self.inner.route(session);
        self.inner
            .publish_on(&route.channel, route.lane, envelope)
            .await
    }

    async fn subscribe(&self, sessions: &[&str]) -> Result<(), BackendError> {
        let channels = self.inner.route_channels(sessions);
        let sink = {
            let mut routes = self.inner.routes();
            routes.channels.extend(channels.iter().cloned());
            routes.sink.clone()
        };
        // While the subscription reconnects, the routes are recorded: it subscribes them when it
        // is back, and catches up from the history.
        let Some(mut sink) = sink else { return Ok(()) };
        let subscribed = self.inner.timed(sink.subscribe(&channels)).await;
        if subscribed.is_err() {
            let mut routes = self.inner.routes();
            for channel in &channels {
                routes.channels.remove(channel);
            }
        }
        subscribed
    }

    async fn unsubscribe(&self, sessions: &[&str]) -> Result<(), BackendError> {
        let channels = self.inner.route_channels(sessions);
        let sink = {
            let mut routes = self.inner.routes();
            for channel in &channels {
                routes.channels.remove(channel);
            }
            routes.sink.clone()
        };
        // A connection that is down forgets its subscriptions by itself.
        let Some(mut sink) = sink else { return Ok(()) };
        self.inner.timed(sink.unsubscribe(&channels)).await
    }

    fn subscribed(&self) -> usize {
        self.inner.routes().channels.len()
    }
}
