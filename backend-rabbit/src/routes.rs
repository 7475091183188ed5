//! Routed delivery on RabbitMQ: hash partitions of the session id on a direct exchange.
//!
//! A binding per session would follow every stream that opens and closes, and bindings are what
//! RabbitMQ is slowest at changing (each is a transaction in its metadata store, replicated in a
//! cluster; see BENCHMARKS.md for what they cost here). So the session ids are hashed into a
//! fixed number of partitions ([`RabbitConfig::route_partitions`](crate::RabbitConfig)), a
//! targeted event is published to the direct exchange `{exchange}.routes` with its partition as
//! the routing key (`p17`), and an instance binds its queue to the partitions its sessions fall
//! in, counting sessions per partition: a binding changes only when a partition gains its first
//! session on the instance or loses its last. The instance then receives the other sessions of
//! its partitions too, and the hub keeps only its own; more partitions mean fewer such events
//! and more bindings.
//!
//! With history on, a routed publish names the history stream queue too, through RabbitMQ's
//! sender-selected distribution (a `CC` header with the routing key `history`, to which the
//! stream queue is bound): one publish, stored and routed in one step.

use std::collections::HashMap;

use async_trait::async_trait;
use bytes::Bytes;
use lapin::options::{ExchangeDeclareOptions, QueueBindOptions};
use lapin::types::{AMQPValue, FieldArray, FieldTable};
use lapin::{Channel, ExchangeKind};
use sse_core::BackendError;
use sse_core::route::{SessionRoutes, partition};

use crate::{Inner, NAME, RabbitBackend, unavailable};

/// The routing key of the history stream queue's binding to the routes exchange.
const HISTORY_KEY: &str = "history";

/// Bindings one batch changes at a time (each is one round trip; they are sent together).
const BIND_BATCH: usize = 256;

/// The partitions this instance binds, and where.
#[derive(Default)]
pub(crate) struct Routes {
    /// Sessions per bound partition.
    partitions: HashMap<u32, usize>,
    /// The channel and queue of the current consuming connection, while it is up.
    bound_to: Option<(Channel, String)>,
}

impl Inner {
    /// The direct exchange targeted events are published to.
    pub(crate) fn routes_exchange(&self) -> String {
        format!("{}.routes", self.config.exchange)
    }

    pub(crate) async fn declare_routes_exchange(
        &self,
        channel: &Channel,
    ) -> Result<(), BackendError> {
        let options = ExchangeDeclareOptions {
            durable: true,
            ..ExchangeDeclareOptions::default()
        };
        channel
            .exchange_declare(
                self.routes_exchange().into(),
                ExchangeKind::Direct,
                options,
                FieldTable::default(),
            )
            .await
            .map_err(unavailable)
    }

    /// Binds the history stream queue to the routes exchange under [`HISTORY_KEY`].
    pub(crate) async fn bind_history_to_routes(
        &self,
        channel: &Channel,
        queue: &str,
    ) -> Result<(), BackendError> {
        self.declare_routes_exchange(channel).await?;
        channel
            .queue_bind(
                queue.into(),
                self.routes_exchange().into(),
                HISTORY_KEY.into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(unavailable)
    }

    /// The routing key and headers of a targeted event.
    pub(crate) fn route_of(&self, session: &str) -> (String, FieldTable) {
        let key = format!(
            "p{}",
            partition(session, self.config.route_partitions.max(1))
        );
        let mut headers = FieldTable::default();
        if self.config.history.is_some() {
            headers.insert(
                "CC".into(),
                AMQPValue::FieldArray(FieldArray::from(vec![AMQPValue::LongString(
                    HISTORY_KEY.into(),
                )])),
            );
        }
        (key, headers)
    }

    fn routes(&self) -> std::sync::MutexGuard<'_, Routes> {
        self.routes
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A new consuming connection: binds its queue to every partition held (after a reconnect,
    /// the queue is new), in batches.
    pub(crate) async fn bind_routes(
        &self,
        channel: Channel,
        queue: &str,
    ) -> Result<(), BackendError> {
        let _changing = self.route_changes.lock().await;
        let partitions: Vec<u32> = {
            let mut routes = self.routes();
            routes.bound_to = Some((channel.clone(), queue.to_owned()));
            routes.partitions.keys().copied().collect()
        };
        self.bind_partitions(&channel, queue, &partitions, true)
            .await?;
        if !partitions.is_empty() {
            tracing::info!(%queue, partitions = partitions.len(), "rabbitmq route partitions bound again");
        }
        Ok(())
    }

    /// The consuming connection is gone: nothing is bound until the next one.
    pub(crate) fn routes_lost(&self) {
        self.routes().bound_to = None;
    }

    async fn bind_partitions(
        &self,
        channel: &Channel,
        queue: &str,
        partitions: &[u32],
        bind: bool,
    ) -> Result<(), BackendError> {
        let exchange = self.routes_exchange();
        for batch in partitions.chunks(BIND_BATCH) {
            let calls = batch.iter().map(|p| {
                let (queue, exchange, key) = (queue.to_owned(), exchange.clone(), format!("p{p}"));
                async move {
                    if bind {
                        channel
                            .queue_bind(
                                queue.into(),
                                exchange.into(),
                                key.into(),
                                QueueBindOptions::default(),
                                FieldTable::default(),
                            )
                            .await
                    } else {
                        channel
                            .queue_unbind(
                                queue.into(),
                                exchange.into(),
                                key.into(),
                                FieldTable::default(),
                            )
                            .await
                    }
                }
            });
            let results = self
                .timed(async { Ok(futures_util::future::join_all(calls).await) })
                .await?;
            for result in results {
                result.map_err(unavailable)?;
            }
        }
        Ok(())
    }
}

#[async_trait]
impl SessionRoutes for RabbitBackend {
    async fn publish_to(&self, session: &str, envelope: Bytes) -> Result<(), BackendError> {
        if self.inner.closed.is_cancelled() {
            return Err(BackendError::Closed { backend: NAME });
        }
        let (key, headers) = self.inner.route_of(session);
        self.inner
            .publish_to(&self.inner.routes_exchange(), &key, headers, &envelope)
            .await
    }

    async fn subscribe(&self, sessions: &[&str]) -> Result<(), BackendError> {
        let inner = &self.inner;
        let _changing = inner.route_changes.lock().await;
        let partitions = inner.config.route_partitions.max(1);
        let (new, bound_to) = {
            let mut routes = inner.routes();
            let mut new = Vec::new();
            for session in sessions {
                let count = routes
                    .partitions
                    .entry(partition(session, partitions))
                    .or_insert(0);
                *count += 1;
                if *count == 1 {
                    new.push(partition(session, partitions));
                }
            }
            (new, routes.bound_to.clone())
        };
        // While the consuming connection is down, the partitions are recorded: the next one
        // binds them, and the hub catches up from the history. A subscription on the history
        // stream binds nothing: the stream carries every session's envelopes.
        let Some((channel, queue)) = bound_to else {
            return Ok(());
        };
        let bound = inner.bind_partitions(&channel, &queue, &new, true).await;
        if bound.is_err() {
            let mut routes = inner.routes();
            for session in sessions {
                let p = partition(session, partitions);
                if let Some(count) = routes.partitions.get_mut(&p) {
                    *count -= 1;
                    if *count == 0 {
                        routes.partitions.remove(&p);
                    }
                }
            }
        }
        bound
    }

    async fn unsubscribe(&self, sessions: &[&str]) -> Result<(), BackendError> {
        let inner = &self.inner;
        let _changing = inner.route_changes.lock().await;
        let partitions = inner.config.route_partitions.max(1);
        let (gone, bound_to) = {
            let mut routes = inner.routes();
            let mut gone = Vec::new();
            for session in sessions {
                let p = partition(session, partitions);
                if let Some(count) = routes.partitions.get_mut(&p) {
                    *count -= 1;
                    if *count == 0 {
                        routes.partitions.remove(&p);
                        gone.push(p);
                    }
                }
            }
            (gone, routes.bound_to.clone())
        };
        // A queue that went with its connection has no bindings left to remove.
        let Some((channel, queue)) = bound_to else {
            return Ok(());
        };
        inner.bind_partitions(&channel, &queue, &gone, false).await
    }

    fn subscribed(&self) -> usize {
        self.inner.routes().partitions.len()
    }

    fn exact(&self) -> bool {
        false
    }
}
