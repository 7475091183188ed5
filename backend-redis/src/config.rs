//! [`RedisConfig`]: how the backend talks to Redis, made by hand or from the hub's settings.

use std::time::Duration;

use sse_core::connect::{BackendConfig, BackendSettings};
use sse_core::{BackendError, ReplayConfig};

use crate::{NAME, RedisBackend};

/// The server a hub uses when its settings name none.
pub const DEFAULT_URL: &str = "redis://127.0.0.1:6379";

/// How the backend talks to Redis.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct RedisConfig {
    /// The server's URL: `redis://host:port`, `rediss://` for TLS, with `user:password@` when
    /// it asks for them.
    pub url: String,
    /// The pub/sub channel every instance shares.
    pub channel: String,
    /// How long connecting (and each reconnect attempt) may take.
    pub connect_timeout: Duration,
    /// How long a publish may wait for the server's answer.
    pub response_timeout: Duration,
    /// How often an idle subscription pings the server to notice a dead connection.
    pub ping_interval: Duration,
    /// The longest wait between reconnect attempts.
    pub max_backoff: Duration,
    /// Messages buffered between the subscription connection and the hub.
    pub buffer: usize,
    /// The history kept in a Redis stream (see the crate docs); `None` keeps none. Give the hub
    /// the same bounds ([`HubConfig::replay`](sse_core::HubConfig::replay)): its replay log is
    /// where the history is served from, and what recognises envelopes that arrive twice.
    pub history: Option<ReplayConfig>,
    /// The key of the history stream.
    pub history_key: String,
}

impl RedisConfig {
    /// Defaults for the server at `url` and `channel`: connect timeout 2 s, response timeout 2 s, ping every 5 s,
    /// backoff up to 5 s, buffer of 4096 messages, history with the default [`ReplayConfig`] in
    /// the stream `{channel}:history`.
    pub fn new(url: impl Into<String>, channel: impl Into<String>) -> Self {
        let channel = channel.into();
        RedisConfig {
            url: url.into(),
            history: Some(ReplayConfig::default()),
            history_key: format!("{channel}:history"),
            channel,
            connect_timeout: Duration::from_secs(2),
            response_timeout: Duration::from_secs(2),
            ping_interval: Duration::from_secs(5),
            max_backoff: Duration::from_secs(5),
            buffer: 4096,
        }
    }

    /// Sets the history's bounds; `None` keeps no history.
    pub fn history(mut self, history: Option<ReplayConfig>) -> Self {
        self.history = history;
        self
    }
}

impl BackendConfig for RedisConfig {
    type Backend = RedisBackend;

    /// The URL (default [`DEFAULT_URL`]), channel and history of the settings; Redis takes no
    /// options.
    fn from_settings(mut settings: BackendSettings) -> Result<Self, BackendError> {
        settings.finish(NAME)?;
        let url = settings.url.unwrap_or_else(|| DEFAULT_URL.to_owned());
        Ok(RedisConfig::new(url, settings.channel).history(settings.history))
    }

    async fn connect(self) -> Result<RedisBackend, BackendError> {
        RedisBackend::connect(self).await
    }
}
