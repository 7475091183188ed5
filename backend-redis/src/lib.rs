//! Redis pub/sub backend for sse-fanout.
//!
//! Every instance publishes envelopes to one channel (default `send.sse.event`) and subscribes to
//! it, so every instance receives every event. Publishing goes through a reconnecting multiplexed
//! connection; each subscription has its own connection, which reconnects with backoff (up to 5 s)
//! and subscribes again after the server restarts or drops it. While it is down,
//! [`health`](FanoutBackend::health) says so.
//!
//! `redis://`, `rediss://` (TLS, webpki roots) and `redis://:password@host` / `redis://user:password@host`
//! URLs work.
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! use sse_core::Hub;
//! use sse_fanout_redis::RedisBackend;
//!
//! let backend = RedisBackend::connect("redis://127.0.0.1:6379", "send.sse.event").await?;
//! let hub = Hub::builder(backend).app_name("orders").start().await?;
//! # Ok(()) }
//! ```
//!
//! # History
//!
//! With history on (the default, [`RedisConfig::history`]), every publish is one Lua script that
//! appends the envelope to a Redis stream (key [`RedisConfig::history_key`], default
//! `{channel}:history`: `XADD … MAXLEN ~ max_events`, then `XTRIM … MINID ~` the oldest id younger
//! than `max_age`, and `PEXPIRE` of `max_age` so an unused stream goes away) and `PUBLISH`es it,
//! atomically: subscribers and the stream see the same envelopes in the same order. A hub reads
//! the stream with `XRANGE`, in pages, when it starts (see [`sse_core::history`]). Redis ≥ 6.2.
//!
//! Another program publishing to an app with history must write to both, atomically, e.g.
//! `MULTI`, `XADD send.sse.event:history MAXLEN ~ 10000 * e '<envelope>'`,
//! `PUBLISH send.sse.event '<envelope>'`, `EXEC`; a plain `PUBLISH` reaches the live streams but
//! not the history.
//!
//! Redis pub/sub delivers to the subscribers connected at the moment of publishing. When an
//! instance's subscription comes back after it was lost, the backend reports a
//! [gap](sse_core::Received::Gap) from a few seconds before its last sign of life, and the hub
//! reads what it missed from the stream before it goes on (without history, what was published
//! while the subscription was down does not reach that instance).
//!
//! # Routed delivery
//!
//! In [session routing](sse_core::route) a targeted envelope is published to its session's own
//! channel, `{channel}:{token}` (its [route token](sse_core::route::route_token)), with the same
//! history script, and an instance `SUBSCRIBE`s the channels of the sessions it holds on its
//! subscription connection, up to 1 000 per command; after a reconnect it subscribes them all
//! again in such batches before it reports the gap. Plain channels, never patterns:
//! a pattern subscription makes every `PUBLISH` on the server match against every pattern, while
//! a channel is one hash lookup (10 000 channels subscribe in about 20 ms, BENCHMARKS.md). The
//! backend talks to one Redis server: Redis Cluster, and with it sharded pub/sub
//! (`SSUBSCRIBE`), is not supported yet.

use std::collections::HashSet;
use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::StreamExt;
use redis::aio::{ConnectionManager, ConnectionManagerConfig, PubSubSink};
use sse_core::backend::Reconnects;
use sse_core::history::{self, BrokerHistory, HistoryStream};
use sse_core::route::{SessionRoutes, route_token};
use sse_core::{BackendError, BackendStream, FanoutBackend, Health, Received, ReplayConfig};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

const NAME: &str = "redis";

/// How the backend talks to Redis.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct RedisConfig {
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
    /// Defaults for `channel`: connect timeout 2 s, response timeout 2 s, ping every 5 s,
    /// backoff up to 5 s, buffer of 4096 messages, history with the default [`ReplayConfig`] in
    /// the stream `{channel}:history`.
    pub fn new(channel: impl Into<String>) -> Self {
        let channel = channel.into();
        RedisConfig {
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

/// Appends the envelope (`ARGV[1]`) to the history stream (`KEYS[1]`), trims the stream to
/// `ARGV[3]` entries and `ARGV[4]` milliseconds, and publishes it to the channel (`ARGV[2]`):
/// one atomic step, so subscribers and the stream see the same order.
const PUBLISH_SCRIPT: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[3], '*', 'e', ARGV[1])
local oldest = now - tonumber(ARGV[4])
if oldest > 0 then
  redis.call('XTRIM', KEYS[1], 'MINID', '~', oldest)
end
redis.call('PEXPIRE', KEYS[1], ARGV[4])
return redis.call('PUBLISH', ARGV[2], ARGV[1])
";

/// Channels one `SUBSCRIBE` names at most when routes are subscribed again after a reconnect.
const ROUTE_BATCH: usize = 1000;

/// Entries one `XRANGE` reads.
const PAGE: usize = 1000;

/// How far before its last sign of life a restored subscription's gap begins: the clocks of this
/// host and the Redis server may differ by this much.
const GAP_MARGIN: Duration = Duration::from_secs(5);

/// Fans envelopes out over Redis pub/sub. Cheap to clone.
#[derive(Clone)]
pub struct RedisBackend {
    inner: Arc<Inner>,
}

struct Inner {
    client: redis::Client,
    publisher: ConnectionManager,
    config: RedisConfig,
    script: redis::Script,
    /// Subscriptions currently down (a backend is healthy when this is 0 and publishing works).
    reconnects: Reconnects,
    closed: CancellationToken,
    routes: Mutex<Routes>,
    /// Held by each change of the subscribed routes, so that subscribing them again after a
    /// reconnect cannot overtake an unsubscribe.
    route_changes: tokio::sync::Mutex<()>,
}

/// The session channels this instance subscribes (see the crate docs on routed delivery), and
/// the subscription connection's sink while it is up.
#[derive(Default)]
struct Routes {
    channels: HashSet<String>,
    sink: Option<PubSubSink>,
}

impl fmt::Debug for RedisBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisBackend")
            .field("channel", &self.inner.config.channel)
            .finish_non_exhaustive()
    }
}

fn unavailable(error: redis::RedisError) -> BackendError {
    BackendError::unavailable(NAME, error)
}

impl RedisBackend {
    /// Connects to `url` and uses `channel`, with the other settings at their defaults.
    pub async fn connect(url: &str, channel: &str) -> Result<Self, BackendError> {
        Self::connect_with(url, RedisConfig::new(channel)).await
    }

    /// Connects to `url` with `config`. Fails when the URL is invalid or the server cannot be
    /// reached within the connect timeout.
    pub async fn connect_with(url: &str, config: RedisConfig) -> Result<Self, BackendError> {
        install_crypto_provider();
        let client = redis::Client::open(url).map_err(|e| BackendError::Config {
            backend: NAME,
            message: format!("invalid Redis URL: {e}"),
        })?;
        let manager_config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(config.connect_timeout))
            .set_response_timeout(Some(config.response_timeout))
            .set_number_of_retries(1)
            .set_max_delay(config.max_backoff);
        let publisher = tokio::time::timeout(
            config.connect_timeout * 2,
            ConnectionManager::new_with_config(client.clone(), manager_config),
        )
        .await
        .map_err(|_| BackendError::Timeout {
            backend: NAME,
            after: config.connect_timeout * 2,
        })?
        .map_err(unavailable)?;
        Ok(RedisBackend {
            inner: Arc::new(Inner {
                client,
                publisher,
                config,
                script: redis::Script::new(PUBLISH_SCRIPT),
                reconnects: Reconnects::default(),
                closed: CancellationToken::new(),
                routes: Mutex::default(),
                route_changes: tokio::sync::Mutex::new(()),
            }),
        })
    }

    /// How often a subscription had to reconnect.
    pub fn reconnects(&self) -> u64 {
        self.inner.reconnects.restored()
    }

    /// The channel in use.
    pub fn channel(&self) -> &str {
        &self.inner.config.channel
    }
}

impl Inner {
    /// Publishes to `channel` (the shared one, or a session's), through the history script when
    /// history is on.
    async fn publish_on(&self, channel: &str, envelope: Bytes) -> Result<(), BackendError> {
        if self.closed.is_cancelled() {
            return Err(BackendError::Closed { backend: NAME });
        }
        let mut connection = self.publisher.clone();
        let config = &self.config;
        let result: Result<i64, _> = match &config.history {
            None => {
                redis::cmd("PUBLISH")
                    .arg(channel)
                    .arg(envelope.as_ref())
                    .query_async(&mut connection)
                    .await
            }
            Some(history) => {
                self.script
                    .key(&config.history_key)
                    .arg(envelope.as_ref())
                    .arg(channel)
                    .arg(history.max_events.max(1))
                    .arg(
                        u64::try_from(history.max_age.as_millis())
                            .unwrap_or(u64::MAX)
                            .max(1),
                    )
                    .invoke_async(&mut connection)
                    .await
            }
        };
        result.map(drop).map_err(unavailable)
    }

    /// The channel of a session's route.
    fn route_channel(&self, session: &str) -> String {
        format!("{}:{}", self.config.channel, route_token(session))
    }

    fn route_channels(&self, sessions: &[&str]) -> Vec<String> {
        sessions.iter().map(|s| self.route_channel(s)).collect()
    }

    fn routes(&self) -> std::sync::MutexGuard<'_, Routes> {
        self.routes.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Hands a new subscription connection's sink to the routes and subscribes every route
    /// again, in batches (after a reconnect).
    async fn resubscribe(&self, sink: &PubSubSink) -> Result<(), BackendError> {
        let _changing = self.route_changes.lock().await;
        let channels: Vec<String> = {
            let mut routes = self.routes();
            routes.sink = Some(sink.clone());
            routes.channels.iter().cloned().collect()
        };
        for batch in channels.chunks(ROUTE_BATCH) {
            self.timed(sink.clone().subscribe(batch)).await?;
        }
        if !channels.is_empty() {
            tracing::info!(
                routes = channels.len(),
                "redis session routes subscribed again"
            );
        }
        Ok(())
    }

    async fn timed<T>(
        &self,
        call: impl Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, BackendError> {
        let after = self.config.response_timeout;
        tokio::time::timeout(after, call)
            .await
            .map_err(|_| BackendError::Timeout {
                backend: NAME,
                after,
            })?
            .map_err(unavailable)
    }

    /// A subscribed connection: its ping sink and its message stream.
    async fn subscribed(&self) -> Result<(PubSubSink, redis::aio::PubSubStream), BackendError> {
        let timeout = self.config.connect_timeout;
        let attempt = async {
            let pubsub = self.client.get_async_pubsub().await.map_err(unavailable)?;
            let (mut sink, stream) = pubsub.split();
            sink.subscribe(&self.config.channel)
                .await
                .map_err(unavailable)?;
            Ok((sink, stream))
        };
        tokio::time::timeout(timeout, attempt)
            .await
            .map_err(|_| BackendError::Timeout {
                backend: NAME,
                after: timeout,
            })?
    }
}

#[async_trait]
impl FanoutBackend for RedisBackend {
    fn reconnects(&self) -> u64 {
        self.inner.reconnects.restored()
    }

    fn name(&self) -> &'static str {
        NAME
    }

    async fn publish(&self, envelope: Bytes) -> Result<(), BackendError> {
        self.inner
            .publish_on(&self.inner.config.channel, envelope)
            .await
    }

    fn routes(&self) -> Option<&dyn SessionRoutes> {
        Some(self)
    }

    fn history(&self) -> Option<&dyn BrokerHistory> {
        self.inner.config.history.is_some().then_some(self as _)
    }

    async fn subscribe(&self) -> Result<BackendStream, BackendError> {
        if self.inner.closed.is_cancelled() {
            return Err(BackendError::Closed { backend: NAME });
        }
        let first = self.inner.subscribed().await?;
        let (tx, rx) = mpsc::channel(self.inner.config.buffer.max(1));
        tokio::spawn(run_subscription(self.inner.clone(), first, tx));
        Ok(sse_core::backend::channel_stream(rx))
    }

    async fn health(&self) -> Health {
        if self.inner.closed.is_cancelled() {
            return Health::down("closed");
        }
        if let Some(down) = self.inner.reconnects.health() {
            return down;
        }
        let mut connection = self.inner.publisher.clone();
        let ping: Result<String, _> = tokio::time::timeout(
            self.inner.config.response_timeout,
            redis::cmd("PING").query_async(&mut connection),
        )
        .await
        .unwrap_or_else(|_| {
            Err(redis::RedisError::from((
                redis::ErrorKind::Io,
                "PING timed out",
            )))
        });
        match ping {
            Ok(_) => Health::up(),
            Err(error) => Health::down(error.to_string()),
        }
    }

    async fn close(&self) -> Result<(), BackendError> {
        self.inner.closed.cancel();
        Ok(())
    }
}

#[async_trait]
impl BrokerHistory for RedisBackend {
    async fn read_since(&self, since: SystemTime) -> Result<HistoryStream, BackendError> {
        self.inner.read_since(since).await
    }
}

impl Inner {
    /// `XRANGE` from `since` up to the newest entry when the read begins, a page at a time.
    async fn read_since(&self, since: SystemTime) -> Result<HistoryStream, BackendError> {
        let mut connection = self.publisher.clone();
        let key = self.config.history_key.clone();
        let newest: Vec<(String, Vec<Vec<u8>>)> = redis::cmd("XREVRANGE")
            .arg(&key)
            .arg("+")
            .arg("-")
            .arg("COUNT")
            .arg(1)
            .query_async(&mut connection)
            .await
            .map_err(unavailable)?;
        let Some((end, _)) = newest.into_iter().next() else {
            return Ok(Box::pin(futures_util::stream::empty()));
        };
        let first = format!("{}-0", history::unix_millis(since));
        Ok(history::paged(first, move |start: String| {
            let (mut connection, key, end) = (connection.clone(), key.clone(), end.clone());
            async move {
                let page: Vec<(String, Vec<Vec<u8>>)> = redis::cmd("XRANGE")
                    .arg(&key)
                    .arg(&start)
                    .arg(&end)
                    .arg("COUNT")
                    .arg(PAGE)
                    .query_async(&mut connection)
                    .await
                    .map_err(unavailable)?;
                let next = match page.last() {
                    Some((last, _)) if page.len() == PAGE && *last != end => {
                        Some(format!("({last}"))
                    }
                    _ => None,
                };
                let envelopes = page
                    .into_iter()
                    .filter_map(|(_, fields)| envelope_field(fields))
                    .collect();
                Ok((envelopes, next))
            }
        }))
    }
}

/// The envelope of a stream entry: the value of its `e` field.
fn envelope_field(fields: Vec<Vec<u8>>) -> Option<Bytes> {
    let mut fields = fields.into_iter();
    while let (Some(name), Some(value)) = (fields.next(), fields.next()) {
        if name == b"e" {
            return Some(Bytes::from(value));
        }
    }
    None
}

/// Forwards messages of one subscription; reconnects and subscribes again when the connection
/// dies, until the backend is closed or the receiving side is dropped.
async fn run_subscription(
    inner: Arc<Inner>,
    first: (PubSubSink, redis::aio::PubSubStream),
    tx: mpsc::Sender<Received>,
) {
    let mut connection = Some(first);
    let mut backoff = Duration::from_millis(50);
    let mut state = inner.reconnects.subscription();
    // When this subscription last proved it was receiving (a message or a ping's answer).
    let mut alive_at = SystemTime::now();
    let mut lost = false;
    loop {
        let (mut sink, mut stream) = match connection.take() {
            Some(connection) => connection,
            None => {
                tokio::select! {
                    () = inner.closed.cancelled() => return,
                    () = tx.closed() => return,
                    () = tokio::time::sleep(backoff) => {}
                }
                match inner.subscribed().await {
                    Ok(connection) => {
                        state.restored();
                        tracing::info!(channel = %inner.config.channel, "redis subscription restored");
                        backoff = Duration::from_millis(50);
                        connection
                    }
                    Err(error) => {
                        tracing::debug!(%error, "redis reconnect attempt failed");
                        backoff = (backoff * 2).min(inner.config.max_backoff);
                        continue;
                    }
                }
            }
        };
        if let Err(error) = inner.resubscribe(&sink).await {
            tracing::warn!(%error, "subscribing the session routes again failed; reconnecting");
            state.lost();
            lost = true;
            inner.routes().sink = None;
            continue;
        }
        if std::mem::take(&mut lost) {
            // Subscribed again: what was published while this subscription was down is in the
            // history, which the hub reads for this gap.
            let since = alive_at.checked_sub(GAP_MARGIN).unwrap_or(alive_at);
            if tx.send(Received::Gap { since }).await.is_err() {
                return;
            }
        }
        let mut ping = tokio::time::interval(inner.config.ping_interval);
        ping.tick().await;
        let reason = loop {
            tokio::select! {
                () = inner.closed.cancelled() => return,
                message = stream.next() => match message {
                    Some(message) => {
                        let bytes = Bytes::copy_from_slice(message.get_payload_bytes());
                        if tx.send(Received::Envelope(bytes)).await.is_err() {
                            return; // nobody is listening any more
                        }
                        alive_at = SystemTime::now();
                    }
                    None => break "connection closed".to_owned(),
                },
                _ = ping.tick() => {
                    let answer = tokio::time::timeout(
                        inner.config.response_timeout,
                        sink.ping::<redis::Value>(),
                    ).await;
                    match answer {
                        Ok(Ok(_)) => alive_at = SystemTime::now(),
                        Ok(Err(error)) => break format!("ping failed: {error}"),
                        Err(_) => break "ping timed out".to_owned(),
                    }
                }
            }
        };
        state.lost();
        lost = true;
        inner.routes().sink = None;
        tracing::warn!(channel = %inner.config.channel, %reason, "redis subscription lost; reconnecting");
    }
}

#[async_trait]
impl SessionRoutes for RedisBackend {
    async fn publish_to(&self, session: &str, envelope: Bytes) -> Result<(), BackendError> {
        let channel = self.inner.route_channel(session);
        self.inner.publish_on(&channel, envelope).await
    }

    async fn subscribe(&self, sessions: &[&str]) -> Result<(), BackendError> {
        let channels = self.inner.route_channels(sessions);
        let sink = {
            let mut routes = self.inner.routes();
            routes.channels.extend(channels.iter().cloned());
            routes.sink.clone()
        };
        // While the subscription reconnects, the routes are recorded: it subscribes them when it
        // is back, and catches up from the history.
        let Some(mut sink) = sink else { return Ok(()) };
        let subscribed = self.inner.timed(sink.subscribe(&channels)).await;
        if subscribed.is_err() {
            let mut routes = self.inner.routes();
            for channel in &channels {
                routes.channels.remove(channel);
            }
        }
        subscribed
    }

    async fn unsubscribe(&self, sessions: &[&str]) -> Result<(), BackendError> {
        let channels = self.inner.route_channels(sessions);
        let sink = {
            let mut routes = self.inner.routes();
            for channel in &channels {
                routes.channels.remove(channel);
            }
            routes.sink.clone()
        };
        // A connection that is down forgets its subscriptions by itself.
        let Some(mut sink) = sink else { return Ok(()) };
        self.inner.timed(sink.unsubscribe(&channels)).await
    }

    fn subscribed(&self) -> usize {
        self.inner.routes().channels.len()
    }
}

/// rustls needs a process-wide crypto provider for `rediss://`; install ring's unless one is set.
fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}
