//! Kafka backend for sse-fanout: jEAP's server-sent-events design.
//!
//! - **Producer.** Every envelope goes to one topic (default `send.sse.event`); `publish` waits for
//!   the delivery report, as jEAP sends synchronously. The key is the session id, so one session's
//!   events stay in order on one partition; a broadcast is keyed by the publishing instance
//!   (the envelope's `origin`), so one publisher's broadcasts stay in order too. Across
//!   partitions Kafka keeps no order, so instances may interleave a session's events and the
//!   broadcasts differently; a topic of one partition gives every instance the same order,
//!   which a client moving between instances with `Last-Event-ID` relies on.
//! - **Consumer.** Every subscription uses a unique group id (`{group_prefix}-{uuid}`, like jEAP's
//!   `${spring.application.name}-${random.uuid}`) and reads every partition of the topic, so every
//!   instance receives every event published after it started. "Started" means ready: before
//!   [`subscribe`](FanoutBackend::subscribe) returns, each partition's position is fixed at its
//!   current end offset, so an event published the moment the hub reports ready is delivered
//!   (with `auto.offset.reset=latest` alone, the position is resolved later and such an event can
//!   be skipped). Offsets are stored only once an event has been handed to the hub.
//! - **Topic validation.** At connect the topic must exist (jEAP's topic validator), or the
//!   backend fails with [`BackendError::Config`] naming it, unless [`KafkaConfig::create_topic`]
//!   is set; then it is created through the admin API.
//! - **Settings.** Any librdkafka setting passes through [`KafkaConfig::set`] (SASL, TLS, tuning).
//!   The defaults favour a live stream over batch throughput: `linger.ms=0` on the producer,
//!   `fetch.wait.max.ms=5` on the consumer (librdkafka's 500 ms default adds up to half a second
//!   per hop), short reconnect backoffs.
//!
//! - **History.** The topic is the history: a hub reads its last minutes when it starts (see
//!   the `history` module's notes and [`sse_core::history`]); keep the topic's retention at least
//!   the hub's replay age (Kafka's default, 7 days, does).
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! use sse_core::Hub;
//! use sse_fanout_kafka::{KafkaBackend, KafkaConfig};
//!
//! let config = KafkaConfig::new("127.0.0.1:9092", "send.sse.event", "orders").create_topic(3, 1);
//! let backend = KafkaBackend::connect(config).await?;
//! let hub = Hub::builder(backend).app_name("orders").start().await?;
//! # Ok(()) }
//! ```

mod config;
mod history;
mod publish;
mod subscribe;
mod topic;

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use async_trait::async_trait;
use bytes::Bytes;
use rdkafka::error::KafkaError;
use rdkafka::producer::{FutureProducer, Producer};
use sse_core::connect::Connector;
use sse_core::history::BrokerHistory;
use sse_core::{BackendError, BackendStream, FanoutBackend, Health};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use config::{DEFAULT_URL, KafkaConfig};

/// This backend's row in a hub's table of backends (`--backend kafka`).
pub const CONNECTOR: Connector =
    Connector::of::<KafkaConfig>("kafka", "Kafka (the topic is the history)");

const NAME: &str = "kafka";

/// Fans envelopes out over a Kafka topic. Cheap to clone.
#[derive(Clone)]
pub struct KafkaBackend {
    inner: Arc<Inner>,
}

struct Inner {
    config: KafkaConfig,
    /// The largest envelope the topic takes (see [`Inner::max_envelope`]).
    max_envelope: std::sync::atomic::AtomicUsize,
    producer: FutureProducer,
    closed: CancellationToken,
    /// The subscriptions' consumers: `close` waits until each has let go of the broker.
    consumers: TaskTracker,
    consuming_ok: AtomicBool,
}

impl fmt::Debug for KafkaBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KafkaBackend")
            .field("brokers", &self.inner.config.brokers)
            .field("topic", &self.inner.config.topic)
            .finish_non_exhaustive()
    }
}

fn kafka_error(error: KafkaError) -> BackendError {
    BackendError::unavailable(NAME, error)
}

fn config_error(message: impl Into<String>) -> BackendError {
    BackendError::Config {
        backend: NAME,
        message: message.into(),
    }
}

/// Runs a blocking librdkafka call off the async threads.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, BackendError> + Send + 'static,
) -> Result<T, BackendError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| BackendError::unavailable(NAME, e))?
}

impl KafkaBackend {
    /// Connects, validates the topic (creating it when configured), and starts the producer.
    pub async fn connect(config: KafkaConfig) -> Result<Self, BackendError> {
        let timeout = config.timeout.as_millis().to_string();
        let producer: FutureProducer = config
            .client_config(&[
                ("linger.ms", "0"),
                ("message.max.bytes", "4194304"),
                ("message.timeout.ms", &timeout),
                ("request.timeout.ms", &timeout),
            ])
            .create()
            .map_err(|e| config_error(format!("producer: {e}")))?;
        let inner = Arc::new(Inner {
            config,
            max_envelope: std::sync::atomic::AtomicUsize::new(
                publish::DEFAULT_MAX_MESSAGE_BYTES - publish::BATCH_ROOM,
            ),
            producer,
            closed: CancellationToken::new(),
            consumers: TaskTracker::new(),
            consuming_ok: AtomicBool::new(true),
        });
        inner.validate_topic().await?;
        let max = inner.max_envelope().await;
        inner.max_envelope.store(max, Ordering::Relaxed);
        Ok(KafkaBackend { inner })
    }
}

#[async_trait]
impl FanoutBackend for KafkaBackend {
    fn name(&self) -> &'static str {
        NAME
    }

    async fn publish(&self, envelope: Bytes) -> Result<(), BackendError> {
        if self.inner.closed.is_cancelled() {
            return Err(BackendError::Closed { backend: NAME });
        }
        self.inner.publish(envelope).await
    }

    async fn subscribe(&self) -> Result<BackendStream, BackendError> {
        if self.inner.closed.is_cancelled() {
            return Err(BackendError::Closed { backend: NAME });
        }
        let consumer = self.inner.positioned_consumer().await?;
        let (tx, rx) = mpsc::channel(1024);
        self.inner
            .consumers
            .spawn(subscribe::run_consumer(self.inner.clone(), consumer, tx));
        Ok(sse_core::backend::channel_stream(rx))
    }

    async fn health(&self) -> Health {
        if self.inner.closed.is_cancelled() {
            return Health::down("closed");
        }
        match self.inner.partitions().await {
            Ok(Some(_)) if self.inner.consuming_ok.load(Ordering::Relaxed) => Health::up(),
            Ok(Some(_)) => Health::down("the consumer reports errors"),
            Ok(None) => Health::down(format!("topic `{}` is missing", self.inner.config.topic)),
            Err(error) => Health::down(error.to_string()),
        }
    }

    fn history(&self) -> Option<&dyn BrokerHistory> {
        self.inner.config.history.is_some().then_some(self as _)
    }

    fn max_envelope(&self) -> Option<usize> {
        Some(self.inner.max_envelope.load(Ordering::Relaxed))
    }

    async fn close(&self) -> Result<(), BackendError> {
        self.inner.closed.cancel();
        self.inner.consumers.close();
        let timeout = self.inner.config.timeout;
        if tokio::time::timeout(timeout, self.inner.consumers.wait())
            .await
            .is_err()
        {
            tracing::warn!(after = ?timeout, "kafka consumers did not close in time");
        }
        let producer = self.inner.producer.clone();
        blocking(move || producer.flush(timeout).map_err(kafka_error)).await
    }
}
