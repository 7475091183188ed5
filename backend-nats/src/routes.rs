//! Session routes: a session's events on its own subject, `{subject}.{token}`, one core
//! subscription per session joined to the forwarding task (see the crate docs on routed
//! delivery).

use std::collections::HashMap;
use std::sync::Mutex;

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::StreamExt;
use futures_util::stream::BoxStream;
use sse_core::BackendError;
use sse_core::route::{SessionRoutes, route_token};
use tokio_util::sync::CancellationToken;

use crate::subscribe::Incoming;
use crate::{NAME, NatsBackend, lock};

/// The session subjects this instance subscribes (see the crate docs on routed delivery).
#[derive(Debug, Default)]
pub(crate) struct Routes {
    /// Each route's subscription, ended by cancelling its token.
    pub(crate) subscribed: Mutex<HashMap<String, CancellationToken>>,
    /// Hands new route subscriptions to the task that forwards to the hub.
    pub(crate) forward: Mutex<Option<tokio::sync::mpsc::Sender<BoxStream<'static, Incoming>>>>,
}

impl NatsBackend {
    /// The subject of a session's route: the shared subject and the session's route token.
    fn route_subject(&self, session: &str) -> String {
        format!("{}.{}", self.config.subject, route_token(session))
    }

    /// A core subscription to a route's subject, as the forwarding task takes it, and the token
    /// that ends it.
    async fn route_stream(
        &self,
        subject: &str,
    ) -> Result<(BoxStream<'static, Incoming>, CancellationToken), BackendError> {
        let subscriber = self
            .client
            .subscribe(self.delivered_on(subject))
            .await
            .map_err(|e| BackendError::unavailable(NAME, e))?;
        let stop = CancellationToken::new();
        let ended = Incoming::Ended(self.delivered_on(subject));
        let route = subscriber
            .map(Incoming::Message)
            .take_until(stop.clone().cancelled_owned())
            .chain(futures_util::stream::once(async move { ended }))
            .boxed();
        Ok((route, stop))
    }

    /// Hands every route this instance holds to a new forwarding task (the hub subscribed again,
    /// e.g. after its delivery probe found the old subscription silent): each gets a new
    /// subscription there, and the old one ends.
    pub(crate) async fn carry_routes(
        &self,
        forward: &tokio::sync::mpsc::Sender<BoxStream<'static, Incoming>>,
    ) -> Result<(), BackendError> {
        let subjects: Vec<String> = lock(&self.routes.subscribed).keys().cloned().collect();
        for subject in subjects {
            let (route, stop) = self.route_stream(&subject).await?;
            forward
                .send(route)
                .await
                .map_err(|_| BackendError::Closed { backend: NAME })?;
            if let Some(old) = lock(&self.routes.subscribed).insert(subject, stop) {
                old.cancel();
            }
        }
        Ok(())
    }
}

#[async_trait]
impl SessionRoutes for NatsBackend {
    async fn publish_to(&self, session: &str, envelope: Bytes) -> Result<(), BackendError> {
        self.publish_on(self.route_subject(session), envelope).await
    }

    /// One core subscription per session subject, then one round trip through the server for
    /// the batch, so every SUB is in place when this returns.
    async fn subscribe(&self, sessions: &[&str]) -> Result<(), BackendError> {
        let forward = lock(&self.routes.forward)
            .clone()
            .ok_or(BackendError::Config {
                backend: NAME,
                message: "session routes need the backend's subscription: start the hub first"
                    .to_owned(),
            })?;
        for session in sessions {
            let subject = self.route_subject(session);
            if lock(&self.routes.subscribed).contains_key(&subject) {
                continue;
            }
            let (route, stop) = self.route_stream(&subject).await?;
            forward
                .send(route)
                .await
                .map_err(|_| BackendError::Closed { backend: NAME })?;
            lock(&self.routes.subscribed).insert(subject, stop);
        }
        tokio::time::timeout(self.config.publish_timeout, self.round_trip())
            .await
            .map_err(|_| self.timeout())?
    }

    /// Ends the sessions' subscriptions (dropping a subscription unsubscribes it).
    async fn unsubscribe(&self, sessions: &[&str]) -> Result<(), BackendError> {
        let mut subscribed = lock(&self.routes.subscribed);
        for session in sessions {
            if let Some(stop) = subscribed.remove(&self.route_subject(session)) {
                stop.cancel();
            }
        }
        Ok(())
    }

    fn subscribed(&self) -> usize {
        lock(&self.routes.subscribed).len()
    }
}
