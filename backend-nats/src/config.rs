//! [`NatsConfig`]: how the backend uses NATS, made by hand or from the hub's settings.

use std::fmt;
use std::time::Duration;

use async_nats::{ConnectOptions, ServerAddr};
use sse_core::connect::{BackendConfig, BackendSettings, cluster_addresses};
use sse_core::{BackendError, ReplayConfig};

use crate::{NAME, NatsBackend};

/// The server a hub uses when its settings name none.
pub const DEFAULT_URL: &str = "nats://127.0.0.1:4222";

/// How the backend uses NATS.
#[derive(Clone)]
#[non_exhaustive]
pub struct NatsConfig {
    /// The server's URL (`nats://host:4222`; several, comma-separated, for a cluster).
    pub url: String,
    /// The client's options (credentials, TLS, names); the backend adds its own event
    /// callback, connect timeout and subscription capacity.
    pub options: ConnectOptions,
    /// The subject every instance shares.
    pub subject: String,
    /// How long connecting may take.
    pub connect_timeout: Duration,
    /// How long `publish` waits for the message to be written out (flush) before it gives up.
    pub publish_timeout: Duration,
    /// Messages the client buffers per subscription before it drops them as a slow consumer.
    pub subscription_capacity: usize,
    /// The history kept in a JetStream stream (see the crate docs); `None` keeps none and
    /// publishes with core NATS. Give the hub the same bounds
    /// ([`HubConfig::replay`](sse_core::HubConfig::replay)).
    pub history: Option<ReplayConfig>,
    /// The JetStream stream's name; default `SSE_FANOUT_` and the subject with every character
    /// a stream name cannot hold replaced by `_`.
    pub history_stream: String,
    /// Copies of the history stream a JetStream cluster keeps (default 1; 3 on a three-server
    /// cluster, so that the loss of one server loses nothing that was acknowledged). An existing
    /// stream is brought to this number when the backend connects.
    pub history_replicas: usize,
}

impl NatsConfig {
    /// Defaults for the server at `url` and `subject`: connect timeout 2 s, publish timeout 2 s, 65 536 buffered messages,
    /// history with the default [`ReplayConfig`].
    pub fn new(url: impl Into<String>, subject: impl Into<String>) -> Self {
        let subject = subject.into();
        NatsConfig {
            url: url.into(),
            options: ConnectOptions::new(),
            history_stream: stream_name(&subject),
            history: Some(ReplayConfig::default()),
            subject,
            connect_timeout: Duration::from_secs(2),
            publish_timeout: Duration::from_secs(2),
            subscription_capacity: 65_536,
            history_replicas: 1,
        }
    }

    /// Sets the client's options (credentials, TLS, names).
    pub fn options(mut self, options: ConnectOptions) -> Self {
        self.options = options;
        self
    }

    /// The servers of [`url`](Self::url), which names one or several, comma-separated (the
    /// client connects to one and moves to another when it is lost); a
    /// [`Config`](BackendError::Config) error names one that is not a server address.
    pub fn servers(&self) -> Result<Vec<ServerAddr>, BackendError> {
        cluster_addresses(NAME, &self.url, |url| {
            url.parse::<ServerAddr>()
                .map_err(|e| format!("not a NATS server address: {e}"))
        })
    }

    /// Sets how many servers of a JetStream cluster keep the history stream.
    pub fn history_replicas(mut self, replicas: usize) -> Self {
        self.history_replicas = replicas;
        self
    }

    /// Sets the history's bounds; `None` keeps no history.
    pub fn history(mut self, history: Option<ReplayConfig>) -> Self {
        self.history = history;
        self
    }
}

/// The default JetStream stream name for `subject`.
fn stream_name(subject: &str) -> String {
    let safe: String = subject
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    format!("SSE_FANOUT_{safe}")
}

impl fmt::Debug for NatsConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NatsConfig")
            .field("url", &self.url)
            .field("subject", &self.subject)
            .field("history", &self.history)
            .field("history_stream", &self.history_stream)
            .field("history_replicas", &self.history_replicas)
            .finish_non_exhaustive()
    }
}

impl BackendConfig for NatsConfig {
    type Backend = NatsBackend;

    /// The URL (default [`DEFAULT_URL`]; several, comma-separated, for a cluster), subject and
    /// history of the settings.
    ///
    /// Options: `history-replicas` (see [`NatsConfig::history_replicas`]).
    fn from_settings(mut settings: BackendSettings) -> Result<Self, BackendError> {
        let replicas = settings.take(NAME, "history-replicas")?.unwrap_or(1);
        settings.finish(NAME)?;
        let url = settings.url.unwrap_or_else(|| DEFAULT_URL.to_owned());
        Ok(NatsConfig::new(url, settings.channel)
            .history(settings.history)
            .history_replicas(replicas))
    }

    async fn connect(self) -> Result<NatsBackend, BackendError> {
        NatsBackend::connect(self).await
    }
}
