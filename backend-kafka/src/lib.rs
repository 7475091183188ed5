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

mod history;

use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::StreamExt;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, ResourceSpecifier, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::{Offset, TopicPartitionList};
use serde::Deserialize;
use sse_core::history::BrokerHistory;
use sse_core::{BackendError, BackendStream, FanoutBackend, Health, ReplayConfig};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

const NAME: &str = "kafka";

/// How the backend uses Kafka.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct KafkaConfig {
    /// `bootstrap.servers`.
    pub brokers: String,
    /// The topic every instance shares.
    pub topic: String,
    /// Group ids are `{group_prefix}-{uuid}`: use the application name.
    pub group_prefix: String,
    /// Create the topic when it is missing: `(partitions, replication factor)`.
    pub create_topic: Option<(i32, i32)>,
    /// How long a publish waits for its delivery report, and metadata calls for an answer.
    pub timeout: Duration,
    /// librdkafka settings applied to producer, consumer and admin client, after the defaults.
    pub settings: Vec<(String, String)>,
    /// Whether a hub reads the topic's last [`ReplayConfig::max_age`] when it starts (the topic
    /// is the history: see the crate docs); `None` reads nothing.
    pub history: Option<ReplayConfig>,
}

impl KafkaConfig {
    /// Settings for `topic` on `brokers`, groups named after `group_prefix`; timeout 5 s.
    pub fn new(
        brokers: impl Into<String>,
        topic: impl Into<String>,
        group_prefix: impl Into<String>,
    ) -> Self {
        KafkaConfig {
            brokers: brokers.into(),
            topic: topic.into(),
            group_prefix: group_prefix.into(),
            create_topic: None,
            timeout: Duration::from_secs(5),
            settings: Vec::new(),
            history: Some(ReplayConfig::default()),
        }
    }

    /// Sets the history read when a hub starts; `None` reads none.
    pub fn history(mut self, history: Option<ReplayConfig>) -> Self {
        self.history = history;
        self
    }

    /// Creates the topic with `partitions` and `replication` when it does not exist.
    pub fn create_topic(mut self, partitions: i32, replication: i32) -> Self {
        self.create_topic = Some((partitions.max(1), replication.max(1)));
        self
    }

    /// Passes a librdkafka setting through (`security.protocol`, `sasl.mechanism`, …).
    pub fn set(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.settings.push((key.into(), value.into()));
        self
    }

    fn client_config(&self, defaults: &[(&str, &str)]) -> ClientConfig {
        let mut config = ClientConfig::new();
        config.set("bootstrap.servers", &self.brokers);
        config.set("socket.nagle.disable", "true");
        config.set("reconnect.backoff.ms", "50");
        config.set("reconnect.backoff.max.ms", "1000");
        for (k, v) in defaults {
            config.set(*k, *v);
        }
        for (k, v) in &self.settings {
            config.set(k, v);
        }
        config
    }
}

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
                DEFAULT_MAX_MESSAGE_BYTES - BATCH_ROOM,
            ),
            producer,
            closed: CancellationToken::new(),
            consuming_ok: AtomicBool::new(true),
        });
        inner.validate_topic().await?;
        let max = inner.max_envelope().await;
        inner.max_envelope.store(max, Ordering::Relaxed);
        Ok(KafkaBackend { inner })
    }
}

/// Kafka's default `max.message.bytes` (a topic's largest record batch).
const DEFAULT_MAX_MESSAGE_BYTES: usize = 1_048_588;

/// Room left in a record batch for its own header, the record's and the key (a session id).
const BATCH_ROOM: usize = 1024;

impl Inner {
    /// The largest envelope the topic takes: its `max.message.bytes` (Kafka counts the whole
    /// record batch) less [`BATCH_ROOM`]; Kafka's default when the broker does not say.
    async fn max_envelope(&self) -> usize {
        let admin: Result<AdminClient<DefaultClientContext>, _> =
            self.config.client_config(&[]).create();
        let topic = self.config.topic.as_str();
        let described = match admin {
            Ok(admin) => {
                let options = AdminOptions::new().request_timeout(Some(self.config.timeout));
                admin
                    .describe_configs([&ResourceSpecifier::Topic(topic)], &options)
                    .await
                    .ok()
            }
            Err(_) => None,
        };
        let limit = described
            .into_iter()
            .flatten()
            .flatten()
            .find_map(|resource| {
                resource
                    .get("max.message.bytes")?
                    .value
                    .as_deref()?
                    .parse()
                    .ok()
            })
            .unwrap_or(DEFAULT_MAX_MESSAGE_BYTES);
        limit.saturating_sub(BATCH_ROOM).max(1)
    }

    fn too_large(&self, size: usize) -> BackendError {
        BackendError::TooLarge {
            backend: NAME,
            size,
            max: self.max_envelope.load(Ordering::Relaxed),
            raise: "the topic's max.message.bytes (kafka-configs --alter --entity-type topics \
                    --add-config max.message.bytes=N), and the broker's message.max.bytes and \
                    replica.fetch.max.bytes above it",
        }
    }

    /// The topic's partition ids, or `None` when the broker does not know the topic.
    async fn partitions(&self) -> Result<Option<Vec<i32>>, BackendError> {
        let producer = self.producer.clone();
        let topic = self.config.topic.clone();
        let timeout = self.config.timeout;
        blocking(move || {
            // All topics: asking for one by name may make a broker auto-create it.
            let metadata = producer
                .client()
                .fetch_metadata(None, timeout)
                .map_err(kafka_error)?;
            Ok(metadata
                .topics()
                .iter()
                .find(|t| t.name() == topic && t.error().is_none())
                .map(|t| t.partitions().iter().map(|p| p.id()).collect::<Vec<_>>())
                .filter(|p| !p.is_empty()))
        })
        .await
    }

    async fn validate_topic(&self) -> Result<(), BackendError> {
        if self.partitions().await?.is_some() {
            return Ok(());
        }
        let topic = &self.config.topic;
        let Some((partitions, replication)) = self.config.create_topic else {
            return Err(config_error(format!(
                "topic `{topic}` does not exist; create it, or enable topic creation (--create-topic)"
            )));
        };
        let admin: AdminClient<DefaultClientContext> = self
            .config
            .client_config(&[])
            .create()
            .map_err(|e| config_error(format!("admin client: {e}")))?;
        let new_topic = NewTopic::new(topic, partitions, TopicReplication::Fixed(replication));
        let options = AdminOptions::new().operation_timeout(Some(self.config.timeout));
        let results = admin
            .create_topics([&new_topic], &options)
            .await
            .map_err(kafka_error)?;
        for result in results {
            match result {
                Ok(_) => tracing::info!(%topic, partitions, replication, "created the topic"),
                Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((name, code)) => {
                    return Err(BackendError::Other {
                        backend: NAME,
                        source: format!("creating topic {name}: {code}").into(),
                    });
                }
            }
        }
        // Wait until the metadata shows it, so that subscribe finds its partitions.
        let deadline = tokio::time::Instant::now() + self.config.timeout;
        while self.partitions().await?.is_none() {
            if tokio::time::Instant::now() > deadline {
                return Err(BackendError::Timeout {
                    backend: NAME,
                    after: self.config.timeout,
                });
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(())
    }

    /// A consumer of every partition, each positioned at its current end offset.
    async fn positioned_consumer(&self) -> Result<StreamConsumer, BackendError> {
        let group = format!("{}-{}", self.config.group_prefix, uuid::Uuid::new_v4());
        let consumer: StreamConsumer = self
            .config
            .client_config(&[
                ("group.id", &group),
                ("auto.offset.reset", "latest"),
                ("enable.auto.commit", "true"),
                ("enable.auto.offset.store", "false"),
                ("fetch.wait.max.ms", "5"),
                ("fetch.error.backoff.ms", "50"),
                ("allow.auto.create.topics", "false"),
            ])
            .create()
            .map_err(|e| config_error(format!("consumer: {e}")))?;
        let partitions = self
            .partitions()
            .await?
            .ok_or_else(|| config_error(format!("topic `{}` does not exist", self.config.topic)))?;
        let consumer = Arc::new(consumer);
        let topic = self.config.topic.clone();
        let timeout = self.config.timeout;
        let positioned = consumer.clone();
        blocking(move || {
            let mut assignment = TopicPartitionList::new();
            for partition in partitions {
                let (_, high) = positioned
                    .fetch_watermarks(&topic, partition, timeout)
                    .map_err(kafka_error)?;
                assignment
                    .add_partition_offset(&topic, partition, Offset::Offset(high))
                    .map_err(kafka_error)?;
            }
            positioned.assign(&assignment).map_err(kafka_error)
        })
        .await?;
        tracing::debug!(%group, topic = %self.config.topic, "kafka consumer positioned at the end offsets");
        Arc::try_unwrap(consumer)
            .map_err(|_| BackendError::unavailable(NAME, "consumer still shared"))
    }
}

/// What the producer keys a record by, read without decoding the rest of the envelope.
#[derive(Deserialize)]
struct Key<'a> {
    #[serde(rename = "sessionId", borrow, default)]
    session_id: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    origin: Option<Cow<'a, str>>,
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
        if envelope.len() > self.inner.max_envelope.load(Ordering::Relaxed) {
            return Err(self.inner.too_large(envelope.len()));
        }
        // A session's events share its partition (jEAP keys by session). A broadcast is keyed by
        // its publishing instance, so that one publisher's broadcasts keep their order too.
        let key = serde_json::from_slice::<Key<'_>>(&envelope)
            .ok()
            .and_then(|k| k.session_id.or(k.origin));
        let mut record = FutureRecord::<str, [u8]>::to(&self.inner.config.topic).payload(&envelope);
        if let Some(key) = key.as_deref() {
            record = record.key(key);
        }
        self.inner
            .producer
            .send(record, self.inner.config.timeout)
            .await
            .map(drop)
            .map_err(|(error, _)| match error.rdkafka_error_code() {
                Some(RDKafkaErrorCode::MessageSizeTooLarge) => self.inner.too_large(envelope.len()),
                Some(RDKafkaErrorCode::MessageTimedOut) => BackendError::Timeout {
                    backend: NAME,
                    after: self.inner.config.timeout,
                },
                _ => kafka_error(error),
            })
    }

    async fn subscribe(&self) -> Result<BackendStream, BackendError> {
        if self.inner.closed.is_cancelled() {
            return Err(BackendError::Closed { backend: NAME });
        }
        let consumer = self.inner.positioned_consumer().await?;
        let (tx, rx) = mpsc::channel(1024);
        tokio::spawn(run_consumer(self.inner.clone(), consumer, tx));
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
        let producer = self.inner.producer.clone();
        let timeout = self.inner.config.timeout;
        blocking(move || producer.flush(timeout).map_err(kafka_error)).await
    }
}

/// Forwards every message to the hub, storing its offset once handed over. librdkafka reconnects
/// by itself; errors in between are logged and reflected in health.
async fn run_consumer(inner: Arc<Inner>, consumer: StreamConsumer, tx: mpsc::Sender<Bytes>) {
    let mut stream = consumer.stream();
    loop {
        let message = tokio::select! {
            () = inner.closed.cancelled() => break,
            () = tx.closed() => break,
            message = stream.next() => message,
        };
        match message {
            Some(Ok(message)) => {
                inner.consuming_ok.store(true, Ordering::Relaxed);
                let bytes = Bytes::copy_from_slice(message.payload().unwrap_or_default());
                if tx.send(bytes).await.is_err() {
                    break;
                }
                if let Err(error) = consumer.store_offset_from_message(&message) {
                    tracing::debug!(%error, "could not store the offset");
                }
            }
            Some(Err(error)) => {
                if inner.consuming_ok.swap(false, Ordering::Relaxed) {
                    tracing::warn!(%error, topic = %inner.config.topic, "kafka consumer error; librdkafka retries");
                }
            }
            None => break,
        }
    }
    drop(stream);
    consumer.unassign().ok();
}
