//! RabbitMQ backend for sse-fanout.
//!
//! At start the backend declares a durable fanout exchange (default `send.sse.event`) and, with
//! history, a stream queue bound to it. Where a subscription receives envelopes from is its
//! [`Delivery`]:
//!
//! - [`Delivery::Stream`] (the default, with history): the history stream itself, from the next
//!   offset, so every instance receives every envelope in the stream's one order (see the
//!   `stream` module for why that matters to `Last-Event-ID`).
//! - [`Delivery::Queue`] (and without history): the Spring Boot SSE starter's design. Each
//!   subscription declares its instance's own queue, exclusive and auto-delete, bound to the
//!   exchange (the starter's `oneQueuePerInstance=true`): every instance receives every event, and
//!   when an instance dies its queue goes away by itself.
//!
//! Declaring is idempotent, so any number of instances may start at once.
//!
//! - Publishing uses publisher confirms: `Ok` means the broker took the message. Delivery mode is
//!   transient by default (a live stream has no use for old events), persistent on request.
//! - Consuming uses a prefetch limit and acknowledges each message once it is handed to the hub.
//! - When the connection drops (broker restart, `rabbitmqctl stop_app`), publishing fails fast with
//!   a typed error and reconnects on the next call; each subscription reconnects with backoff,
//!   declares its queue again (the queue is named by this instance, never server-named, so the
//!   name survives) and resumes consuming. `health` reports the state.
//! - `amqp://` and `amqps://` URLs, the vhost in the path (`/%2f` for `/`), and the heartbeat as
//!   a query parameter (`?heartbeat=10`) work as lapin reads them.
//!
//! - **History** (on by default, [`RabbitConfig::history`]): a durable stream queue
//!   (`{exchange}.history`) bound to the exchange keeps the last minutes, trimmed by age and
//!   size; a hub reads it when it starts (see [`sse_core::history`] and the `history` module).
//!   RabbitMQ >= 3.9.
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! use sse_core::Hub;
//! use sse_fanout_rabbit::{RabbitBackend, RabbitConfig};
//!
//! let config = RabbitConfig::new("send.sse.event", "orders.instance-1");
//! let backend = RabbitBackend::connect("amqp://guest:guest@127.0.0.1:5672/%2f", config).await?;
//! let hub = Hub::builder(backend).app_name("orders").start().await?;
//! # Ok(()) }
//! ```
//!
//! In [session routing](sse_core::route) targeted envelopes go to a direct exchange by hash
//! partition of their session (see the `routes` module and [`RabbitConfig::route_partitions`]).

mod history;
mod routes;
mod stream;
mod subscription;

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use lapin::options::{
    BasicConsumeOptions, BasicPublishOptions, BasicQosOptions, ConfirmSelectOptions,
    ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::FieldTable;
use lapin::uri::AMQPUri;
use lapin::{
    BasicProperties, Channel, Confirmation, Connection, ConnectionProperties, ExchangeKind,
};
use sse_core::backend::Reconnects;
use sse_core::history::BrokerHistory;
use sse_core::{BackendError, BackendStream, FanoutBackend, Health, ReplayConfig};
use tokio::sync::{Mutex, mpsc};
use tokio_util::sync::CancellationToken;

use subscription::{Session, Source};

const NAME: &str = "rabbit";

/// How the backend uses RabbitMQ.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct RabbitConfig {
    /// The fanout exchange every instance shares.
    pub exchange: String,
    /// This instance's queue name (unique per instance, e.g. `{app}.{instance}`); a second
    /// subscription of the same backend gets `.2`, `.3`… appended.
    pub queue: String,
    /// Persistent (`true`) or transient delivery mode.
    pub persistent: bool,
    /// Unacknowledged messages the broker sends ahead.
    pub prefetch: u16,
    /// How long connecting, declaring and each confirm may take.
    pub timeout: Duration,
    /// The longest wait between reconnect attempts.
    pub max_backoff: Duration,
    /// The history kept in a stream queue bound to the exchange (see the crate docs); `None`
    /// keeps none. Give the hub the same bounds
    /// ([`HubConfig::replay`](sse_core::HubConfig::replay)).
    pub history: Option<ReplayConfig>,
    /// The history stream queue's name; default `{exchange}.history`.
    pub history_queue: String,
    /// The hash partitions of session ids in routed delivery (see the `routes` module docs):
    /// more partitions mean fewer other sessions' events reach an instance, and more bindings.
    pub route_partitions: u32,
    /// Where subscriptions receive envelopes from: the history stream (one order for every
    /// instance; the default) or a queue of the instance's own.
    pub delivery: Delivery,
}

/// Where a subscription receives envelopes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Delivery {
    /// The history stream itself, from the next offset (see the `stream` module): every instance
    /// receives every envelope in the stream's one order, and a lost connection consumes again
    /// after the last offset received. Every instance reads targeted envelopes too, so session
    /// routing saves nothing. Needs history; without it a subscription uses
    /// [`Queue`](Delivery::Queue).
    #[default]
    Stream,
    /// A queue of the instance's own bound to the exchange (and, in session routing, to the
    /// partitions of the sessions it holds): session routing saves traffic, but two publishers'
    /// near-simultaneous envelopes reach two instances' queues in either order, so a client
    /// moving between instances at that moment may receive one of them twice, or not at all.
    Queue,
}

impl RabbitConfig {
    /// Defaults: transient messages, prefetch 256, timeout 5 s, backoff up to 5 s, history with
    /// the default [`ReplayConfig`] in the stream queue `{exchange}.history`.
    pub fn new(exchange: impl Into<String>, queue: impl Into<String>) -> Self {
        let exchange = exchange.into();
        RabbitConfig {
            history: Some(ReplayConfig::default()),
            history_queue: format!("{exchange}.history"),
            exchange,
            queue: queue.into(),
            persistent: false,
            prefetch: 256,
            timeout: Duration::from_secs(5),
            max_backoff: Duration::from_secs(5),
            route_partitions: DEFAULT_ROUTE_PARTITIONS,
            delivery: Delivery::default(),
        }
    }

    /// Sets where subscriptions receive envelopes from.
    pub fn delivery(mut self, delivery: Delivery) -> Self {
        self.delivery = delivery;
        self
    }

    /// Sets the history's bounds; `None` keeps no history.
    pub fn history(mut self, history: Option<ReplayConfig>) -> Self {
        self.history = history;
        self
    }
}

/// The default of [`RabbitConfig::route_partitions`]: with `S` sessions in the cluster, an
/// instance receives about `1 + S / partitions` times the targeted events meant for its own
/// sessions (≤ 1.1 up to ~6 500 sessions), and binds about one partition per session it holds.
pub const DEFAULT_ROUTE_PARTITIONS: u32 = 65_536;

/// Fans envelopes out over a RabbitMQ fanout exchange. Cheap to clone.
#[derive(Clone)]
pub struct RabbitBackend {
    inner: Arc<Inner>,
}

struct Inner {
    uri: AMQPUri,
    config: RabbitConfig,
    /// The publishing connection and its confirm-mode channel; `None` after it failed.
    publisher: Mutex<Option<(Connection, Channel)>>,
    subscriptions: AtomicU64,
    reconnects: Reconnects,
    closed: CancellationToken,
    /// The route partitions bound (see the `routes` module).
    routes: std::sync::Mutex<routes::Routes>,
    /// Held by each change of the bound partitions, so that binding them again after a
    /// reconnect cannot overtake an unbind.
    route_changes: Mutex<()>,
}

impl fmt::Debug for RabbitBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RabbitBackend")
            .field("exchange", &self.inner.config.exchange)
            .field("queue", &self.inner.config.queue)
            .finish_non_exhaustive()
    }
}

fn unavailable(error: lapin::Error) -> BackendError {
    BackendError::unavailable(NAME, error)
}

impl RabbitBackend {
    /// Connects to `url`, declares the exchange, and opens the publishing channel.
    pub async fn connect(url: &str, config: RabbitConfig) -> Result<Self, BackendError> {
        if config.queue.is_empty() {
            return Err(BackendError::Config {
                backend: NAME,
                message: "the queue name must not be empty".into(),
            });
        }
        let uri: AMQPUri = url.parse().map_err(|e| BackendError::Config {
            backend: NAME,
            message: format!("invalid AMQP URL: {e}"),
        })?;
        let inner = Arc::new(Inner {
            uri,
            config,
            publisher: Mutex::new(None),
            subscriptions: AtomicU64::new(0),
            reconnects: Reconnects::default(),
            closed: CancellationToken::new(),
            routes: std::sync::Mutex::default(),
            route_changes: Mutex::new(()),
        });
        let session = inner.publishing_session().await?;
        *inner.publisher.lock().await = Some(session);
        Ok(RabbitBackend { inner })
    }

    /// How often a subscription had to reconnect.
    pub fn reconnects(&self) -> u64 {
        self.inner.reconnects.restored()
    }
}

impl Inner {
    /// Whether subscriptions consume the history stream (see [`Delivery`]).
    fn delivers_from_stream(&self) -> bool {
        self.config.delivery == Delivery::Stream && self.config.history.is_some()
    }

    async fn timed<T>(
        &self,
        what: impl Future<Output = Result<T, BackendError>>,
    ) -> Result<T, BackendError> {
        tokio::time::timeout(self.config.timeout, what)
            .await
            .map_err(|_| BackendError::Timeout {
                backend: NAME,
                after: self.config.timeout,
            })?
    }

    async fn connection(&self, role: &str) -> Result<Connection, BackendError> {
        let properties = ConnectionProperties::default()
            .with_connection_name(format!("sse-fanout {role} {}", self.config.queue).into());
        let uri = self.uri.clone();
        self.timed(async move {
            Connection::connect_uri(uri, properties)
                .await
                .map_err(unavailable)
        })
        .await
    }

    async fn declare_exchange(&self, channel: &Channel) -> Result<(), BackendError> {
        let options = ExchangeDeclareOptions {
            durable: true,
            ..ExchangeDeclareOptions::default()
        };
        channel
            .exchange_declare(
                self.config.exchange.clone().into(),
                ExchangeKind::Fanout,
                options,
                FieldTable::default(),
            )
            .await
            .map_err(unavailable)?;
        self.declare_routes_exchange(channel).await
    }

    /// Binds `queue` to the fanout exchange.
    async fn bind(&self, channel: &Channel, queue: &str) -> Result<(), BackendError> {
        channel
            .queue_bind(
                queue.into(),
                self.config.exchange.clone().into(),
                "".into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(unavailable)
    }

    async fn publishing_session(&self) -> Result<(Connection, Channel), BackendError> {
        let connection = self.connection("publisher").await?;
        self.timed(async {
            let channel = connection.create_channel().await.map_err(unavailable)?;
            channel
                .confirm_select(ConfirmSelectOptions::default())
                .await
                .map_err(unavailable)?;
            self.declare_exchange(&channel).await?;
            if let Some(history) = &self.config.history {
                let declaring = connection.create_channel().await.map_err(unavailable)?;
                self.declare_history(&connection, &declaring, history)
                    .await?;
                let _ = declaring.close(200, "declared".into()).await;
            }
            Ok(channel)
        })
        .await
        .map(|channel| (connection, channel))
    }

    /// A consuming connection: the instance's queue declared, bound, and consumed.
    async fn consuming_session(&self, queue: &str) -> Result<Session, BackendError> {
        let connection = self.connection("subscriber").await?;
        let consumer = self
            .timed(async {
                let channel = connection.create_channel().await.map_err(unavailable)?;
                channel
                    .basic_qos(self.config.prefetch, BasicQosOptions::default())
                    .await
                    .map_err(unavailable)?;
                self.declare_exchange(&channel).await?;
                let options = QueueDeclareOptions {
                    exclusive: true,
                    auto_delete: true,
                    ..QueueDeclareOptions::default()
                };
                channel
                    .queue_declare(queue.into(), options, FieldTable::default())
                    .await
                    .map_err(unavailable)?;
                self.bind(&channel, queue).await?;
                let consumer = channel
                    .basic_consume(
                        queue.into(),
                        format!("sse-fanout.{queue}").into(),
                        BasicConsumeOptions::default(),
                        FieldTable::default(),
                    )
                    .await
                    .map_err(unavailable)?;
                Ok((consumer, channel))
            })
            .await?;
        self.bind_routes(consumer.1.clone(), queue).await?;
        Ok((connection, consumer.0, consumer.1))
    }

    /// The publishing channel, reconnected first when its connection is gone.
    async fn publisher(
        &self,
    ) -> Result<tokio::sync::MutexGuard<'_, Option<(Connection, Channel)>>, BackendError> {
        let mut publisher = self.publisher.lock().await;
        if publisher
            .as_ref()
            .is_none_or(|(connection, _)| !connection.status().connected())
        {
            *publisher = None;
            *publisher = Some(self.publishing_session().await?);
        }
        Ok(publisher)
    }

    async fn publish(&self, envelope: &[u8]) -> Result<(), BackendError> {
        self.publish_to(&self.config.exchange, "", FieldTable::default(), envelope)
            .await
    }

    /// Publishes to `exchange` with a routing key and headers, waiting for the confirm.
    async fn publish_to(
        &self,
        exchange: &str,
        key: &str,
        headers: FieldTable,
        envelope: &[u8],
    ) -> Result<(), BackendError> {
        let mut publisher = self.publisher().await?;
        let Some((_, channel)) = publisher.as_ref() else {
            return Err(BackendError::unavailable(NAME, "no publishing channel"));
        };
        let properties = BasicProperties::default()
            .with_delivery_mode(if self.config.persistent { 2 } else { 1 })
            .with_headers(headers);
        let result = self
            .timed(async {
                let confirm = channel
                    .basic_publish(
                        exchange.into(),
                        key.into(),
                        BasicPublishOptions::default(),
                        envelope,
                        properties,
                    )
                    .await
                    .map_err(unavailable)?;
                match confirm.await.map_err(unavailable)? {
                    Confirmation::Nack(_) => Err(BackendError::Other {
                        backend: NAME,
                        source: "the broker refused the message (nack)".into(),
                    }),
                    _ => Ok(()),
                }
            })
            .await;
        if result.as_ref().is_err_and(BackendError::is_temporary) {
            // Reconnect on the next publish.
            *publisher = None;
        }
        result
    }
}

#[async_trait]
impl FanoutBackend for RabbitBackend {
    fn reconnects(&self) -> u64 {
        self.inner.reconnects.restored()
    }

    fn name(&self) -> &'static str {
        NAME
    }

    async fn publish(&self, envelope: Bytes) -> Result<(), BackendError> {
        if self.inner.closed.is_cancelled() {
            return Err(BackendError::Closed { backend: NAME });
        }
        self.inner.publish(&envelope).await
    }

    async fn subscribe(&self) -> Result<BackendStream, BackendError> {
        if self.inner.closed.is_cancelled() {
            return Err(BackendError::Closed { backend: NAME });
        }
        let source = if self.inner.delivers_from_stream() {
            Source::stream()
        } else {
            let n = self.inner.subscriptions.fetch_add(1, Ordering::Relaxed) + 1;
            Source::queue(if n == 1 {
                self.inner.config.queue.clone()
            } else {
                format!("{}.{n}", self.inner.config.queue)
            })
        };
        let first = source.connect(&self.inner).await?;
        let (tx, rx) = mpsc::channel(usize::from(self.inner.config.prefetch.max(1)));
        tokio::spawn(subscription::run(self.inner.clone(), source, first, tx));
        Ok(sse_core::backend::channel_stream(rx))
    }

    async fn health(&self) -> Health {
        if self.inner.closed.is_cancelled() {
            return Health::down("closed");
        }
        if let Some(down) = self.inner.reconnects.health() {
            return down;
        }
        // An active check: reconnects the publishing connection if it is gone.
        match self.inner.publisher().await {
            Ok(_) => Health::up(),
            Err(error) => Health::down(error.to_string()),
        }
    }

    fn history(&self) -> Option<&dyn BrokerHistory> {
        self.inner.config.history.is_some().then_some(self as _)
    }

    fn routes(&self) -> Option<&dyn sse_core::SessionRoutes> {
        Some(self)
    }

    async fn close(&self) -> Result<(), BackendError> {
        // Subscriptions close their connections, which deletes their exclusive queues.
        self.inner.closed.cancel();
        if let Some((connection, _)) = self.inner.publisher.lock().await.take() {
            let _ = connection.close(200, "bye".into()).await;
        }
        Ok(())
    }
}
