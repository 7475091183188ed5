//! RabbitMQ backend for sse-fanout.
//!
//! At start the backend declares a durable fanout exchange (default `send.sse.event`) and, with
//! history, a stream queue bound to it. Where a subscription receives envelopes from is its
//! [`Delivery`]:
//!
//! - [`Delivery::Stream`] (the default, with history): the history stream itself, from the next
//!   offset, so every instance receives every envelope in the stream's one order (see the
//!   `subscribe` module for why that matters to `Last-Event-ID`).
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
//! let url = "amqp://guest:guest@127.0.0.1:5672/%2f";
//! let config = RabbitConfig::new(url, "send.sse.event", "orders.instance-1");
//! let backend = RabbitBackend::connect(config).await?;
//! let hub = Hub::builder(backend).app_name("orders").start().await?;
//! # Ok(()) }
//! ```
//!
//! In [session routing](sse_core::route) targeted envelopes go to a direct exchange by hash
//! partition of their session (see the `routes` module and [`RabbitConfig::route_partitions`]).

mod config;
mod history;
mod nodes;
mod publish;
mod routes;
mod subscribe;

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::nodes::Nodes;
use async_trait::async_trait;
use bytes::Bytes;
use lapin::options::{ExchangeDeclareOptions, QueueBindOptions};
use lapin::types::FieldTable;
use lapin::{Channel, Connection, ConnectionProperties, ExchangeKind};
use sse_core::backend::Reconnects;
use sse_core::connect::Connector;
use sse_core::history::BrokerHistory;
use sse_core::{BackendError, BackendStream, FanoutBackend, Health};
use tokio::sync::{Mutex, mpsc};
use tokio_util::sync::CancellationToken;

pub use config::{DEFAULT_ROUTE_PARTITIONS, DEFAULT_URL, Delivery, RabbitConfig};

use subscribe::Source;

/// This backend's row in a hub's table of backends (`--backend rabbit`).
pub const CONNECTOR: Connector =
    Connector::of::<RabbitConfig>("rabbit", "RabbitMQ (a stream queue for the history)");

const NAME: &str = "rabbit";

/// Fans envelopes out over a RabbitMQ fanout exchange. Cheap to clone.
#[derive(Clone)]
pub struct RabbitBackend {
    inner: Arc<Inner>,
}

struct Inner {
    /// The cluster's nodes (one for a single broker); connections go to the node that answered
    /// last, else to the next one in turn.
    nodes: Nodes,
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
    /// Connects with `config`, declares the exchange (and the history stream), and opens the
    /// publishing channel.
    pub async fn connect(config: RabbitConfig) -> Result<Self, BackendError> {
        if config.queue.is_empty() {
            return Err(BackendError::Config {
                backend: NAME,
                message: "the queue name must not be empty".into(),
            });
        }
        let inner = Arc::new(Inner {
            nodes: Nodes::parse(&config.url)?,
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

    /// A connection to the node that answered last, else to the others in turn: an instance
    /// whose node is lost goes on with another node of the cluster.
    async fn connection(&self, role: &str) -> Result<Connection, BackendError> {
        let mut last_error = None;
        for uri in self.nodes.in_turn() {
            let properties = ConnectionProperties::default()
                .with_connection_name(format!("sse-fanout {role} {}", self.config.queue).into());
            let attempt = self.timed(async move {
                Connection::connect_uri(uri, properties)
                    .await
                    .map_err(unavailable)
            });
            match attempt.await {
                Ok(connection) => return Ok(connection),
                Err(error) => {
                    self.nodes.failed();
                    last_error = Some(error);
                }
            }
        }
        Err(last_error.unwrap_or(BackendError::Closed { backend: NAME }))
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
        tokio::spawn(subscribe::run(self.inner.clone(), source, first, tx));
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
