//! [`KafkaConfig`]: how the backend uses Kafka, made by hand or from the hub's settings.

use std::time::Duration;

use rdkafka::config::ClientConfig;
use sse_core::connect::{BackendConfig, BackendSettings};
use sse_core::{BackendError, ReplayConfig, Routing};

use crate::{KafkaBackend, NAME, config_error};

/// The brokers a hub uses when its settings name none.
pub const DEFAULT_URL: &str = "127.0.0.1:9092";

/// How the backend uses Kafka.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct KafkaConfig {
    /// `bootstrap.servers`: `host:port`, comma-separated.
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

    pub(crate) fn client_config(&self, defaults: &[(&str, &str)]) -> ClientConfig {
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

impl BackendConfig for KafkaConfig {
    type Backend = KafkaBackend;

    /// The brokers (the URL, default [`DEFAULT_URL`]), topic and history of the settings, groups
    /// named after the app, and the options `create-topic` (`true`: create a missing topic),
    /// `topic-partitions` and `topic-replication` (of a created topic, default 1 each), and
    /// `librdkafka.<key>` (any librdkafka setting, see [`KafkaConfig::set`]).
    fn from_settings(mut settings: BackendSettings) -> Result<Self, BackendError> {
        if settings.routing != Routing::Broadcast {
            return Err(config_error(
                "session routing does not work with Kafka: its consumers own partitions, not \
                 sessions, so every instance must read the whole topic; use broadcast routing",
            ));
        }
        let create: Option<bool> = settings.take(NAME, "create-topic")?;
        let partitions: Option<i32> = settings.take(NAME, "topic-partitions")?;
        let replication: Option<i32> = settings.take(NAME, "topic-replication")?;
        let passed = settings.take_prefixed("librdkafka.");
        settings.finish(NAME)?;
        let brokers = settings.url.unwrap_or_else(|| DEFAULT_URL.to_owned());
        let mut config = KafkaConfig::new(brokers, settings.channel, settings.app_name)
            .history(settings.history);
        if create == Some(true) {
            config = config.create_topic(partitions.unwrap_or(1), replication.unwrap_or(1));
        }
        for (key, value) in passed {
            config = config.set(key, value);
        }
        Ok(config)
    }

    async fn connect(self) -> Result<KafkaBackend, BackendError> {
        KafkaBackend::connect(self).await
    }
}
