//! [`RedisConfig`]: how the backend talks to Redis, made by hand or from the hub's settings.

use std::time::Duration;

use sse_core::connect::{BackendConfig, BackendSettings};
use sse_core::{BackendError, ReplayConfig};

use crate::{NAME, RedisBackend};

/// The server a hub uses when its settings name none.
pub const DEFAULT_URL: &str = "redis://127.0.0.1:6379";

/// The route partitions of a Redis Cluster by default ([`RedisConfig::route_partitions`]):
/// enough to spread routed traffic evenly over 2, 4, 8 or 16 masters, and within one partition
/// of even over 3 to 15.
pub const DEFAULT_ROUTE_PARTITIONS: u16 = 16;

/// How the backend talks to Redis.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct RedisConfig {
    /// The server's URL: `redis://host:port`, `rediss://` for TLS, with `user:password@` when
    /// it asks for them. A Redis Cluster is named by several nodes' URLs, comma-separated
    /// (`redis://a:7000,redis://b:7001`), or by one node of it (the backend asks the node).
    pub url: String,
    /// The pub/sub channel every instance shares.
    pub channel: String,
    /// How long connecting (and each reconnect attempt) may take.
    pub connect_timeout: Duration,
    /// How long a command may wait for the server's answer.
    pub response_timeout: Duration,
    /// How long a publish may take, retries after a failover or a moved slot included; past it
    /// the publish fails and the server refuses to run it any more (see the crate docs).
    pub publish_timeout: Duration,
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
    /// The key of the history stream. On a Redis Cluster it must be in the channel's slot: the
    /// default becomes `{channel}:history`, braces included (a hash tag).
    pub history_key: String,
    /// Replicas that must have a publish before it is answered (`WAIT`); 0 answers once the
    /// master has it. Redis replicates asynchronously: without a wait, a publish answered by a
    /// master that dies before its replica has it is lost in the failover.
    pub wait_replicas: u32,
    /// How long a publish waits for [`wait_replicas`](Self::wait_replicas) before it fails.
    pub wait_timeout: Duration,
    /// On a Redis Cluster, the partitions the session routes are spread over, each with its own
    /// hash tag, history stream and [lane](sse_core::backend::Lane), so that routed traffic is
    /// shared by every master (see the crate docs); 0 keeps the routes in the channel's slot,
    /// on its master. Every instance of an app must use the same number. Ignored on one
    /// server.
    pub route_partitions: u16,
}

impl RedisConfig {
    /// Defaults for the server at `url` and `channel`: connect timeout 2 s, response timeout 2 s,
    /// publish timeout 3 s, ping every 5 s,
    /// backoff up to 5 s, buffer of 4096 messages, history with the default [`ReplayConfig`] in
    /// the stream `{channel}:history`, and on a cluster [`DEFAULT_ROUTE_PARTITIONS`] route
    /// partitions.
    pub fn new(url: impl Into<String>, channel: impl Into<String>) -> Self {
        let channel = channel.into();
        RedisConfig {
            url: url.into(),
            history: Some(ReplayConfig::default()),
            history_key: format!("{channel}:history"),
            channel,
            connect_timeout: Duration::from_secs(2),
            response_timeout: Duration::from_secs(2),
            publish_timeout: Duration::from_secs(3),
            ping_interval: Duration::from_secs(5),
            max_backoff: Duration::from_secs(5),
            buffer: 4096,
            wait_replicas: 0,
            wait_timeout: Duration::from_secs(1),
            route_partitions: DEFAULT_ROUTE_PARTITIONS,
        }
    }

    /// The URLs of the nodes [`url`](Self::url) names (one for a single server).
    pub fn nodes(&self) -> Result<Vec<String>, BackendError> {
        sse_core::connect::cluster_addresses(NAME, &self.url, |url| Ok(url.to_owned()))
    }

    /// Waits for `replicas` replicas to have a publish, up to `timeout`, before it is answered.
    pub fn wait_replicas(mut self, replicas: u32, timeout: Duration) -> Self {
        self.wait_replicas = replicas;
        self.wait_timeout = timeout;
        self
    }

    /// Spreads the routes over `partitions` on a Redis Cluster (see
    /// [`route_partitions`](Self::route_partitions)).
    pub fn route_partitions(mut self, partitions: u16) -> Self {
        self.route_partitions = partitions;
        self
    }

    /// Sets the history's bounds; `None` keeps no history.
    pub fn history(mut self, history: Option<ReplayConfig>) -> Self {
        self.history = history;
        self
    }
}

impl BackendConfig for RedisConfig {
    type Backend = RedisBackend;

    /// The URL (default [`DEFAULT_URL`]), channel and history of the settings. Options:
    /// `wait-replicas` and `wait-timeout-ms` (see [`RedisConfig::wait_replicas`]),
    /// `route-partitions` (see [`RedisConfig::route_partitions`]).
    fn from_settings(mut settings: BackendSettings) -> Result<Self, BackendError> {
        let replicas = settings.take(NAME, "wait-replicas")?.unwrap_or(0);
        let timeout = settings.take(NAME, "wait-timeout-ms")?.unwrap_or(1000);
        let partitions = settings
            .take(NAME, "route-partitions")?
            .unwrap_or(DEFAULT_ROUTE_PARTITIONS);
        settings.finish(NAME)?;
        let url = settings.url.unwrap_or_else(|| DEFAULT_URL.to_owned());
        Ok(RedisConfig::new(url, settings.channel)
            .history(settings.history)
            .wait_replicas(replicas, Duration::from_millis(timeout))
            .route_partitions(partitions))
    }

    async fn connect(self) -> Result<RedisBackend, BackendError> {
        RedisBackend::connect(self).await
    }
}
