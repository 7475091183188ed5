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
//! Redis pub/sub delivers to the subscribers connected at the moment of publishing: an event
//! published while an instance's subscription is reconnecting does not reach that instance.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::StreamExt;
use redis::aio::{ConnectionManager, ConnectionManagerConfig, PubSubSink};
use sse_core::backend::Reconnects;
use sse_core::{BackendError, BackendStream, FanoutBackend, Health};
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
}

impl RedisConfig {
    /// Defaults for `channel`: connect timeout 2 s, response timeout 2 s, ping every 5 s,
    /// backoff up to 5 s, buffer of 4096 messages.
    pub fn new(channel: impl Into<String>) -> Self {
        RedisConfig {
            channel: channel.into(),
            connect_timeout: Duration::from_secs(2),
            response_timeout: Duration::from_secs(2),
            ping_interval: Duration::from_secs(5),
            max_backoff: Duration::from_secs(5),
            buffer: 4096,
        }
    }
}

/// Fans envelopes out over Redis pub/sub. Cheap to clone.
#[derive(Clone)]
pub struct RedisBackend {
    inner: Arc<Inner>,
}

struct Inner {
    client: redis::Client,
    publisher: ConnectionManager,
    config: RedisConfig,
    /// Subscriptions currently down (a backend is healthy when this is 0 and publishing works).
    reconnects: Reconnects,
    closed: CancellationToken,
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
                reconnects: Reconnects::default(),
                closed: CancellationToken::new(),
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
        if self.inner.closed.is_cancelled() {
            return Err(BackendError::Closed { backend: NAME });
        }
        let mut connection = self.inner.publisher.clone();
        let result: Result<i64, _> = redis::cmd("PUBLISH")
            .arg(&self.inner.config.channel)
            .arg(envelope.as_ref())
            .query_async(&mut connection)
            .await;
        result.map(drop).map_err(unavailable)
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

/// Forwards messages of one subscription; reconnects and subscribes again when the connection
/// dies, until the backend is closed or the receiving side is dropped.
async fn run_subscription(
    inner: Arc<Inner>,
    first: (PubSubSink, redis::aio::PubSubStream),
    tx: mpsc::Sender<Bytes>,
) {
    let mut connection = Some(first);
    let mut backoff = Duration::from_millis(50);
    let mut state = inner.reconnects.subscription();
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
        let mut ping = tokio::time::interval(inner.config.ping_interval);
        ping.tick().await;
        let lost = loop {
            tokio::select! {
                () = inner.closed.cancelled() => return,
                message = stream.next() => match message {
                    Some(message) => {
                        let bytes = Bytes::copy_from_slice(message.get_payload_bytes());
                        if tx.send(bytes).await.is_err() {
                            return; // nobody is listening any more
                        }
                    }
                    None => break "connection closed".to_owned(),
                },
                _ = ping.tick() => {
                    let answer = tokio::time::timeout(
                        inner.config.response_timeout,
                        sink.ping::<redis::Value>(),
                    ).await;
                    match answer {
                        Ok(Ok(_)) => {}
                        Ok(Err(error)) => break format!("ping failed: {error}"),
                        Err(_) => break "ping timed out".to_owned(),
                    }
                }
            }
        };
        state.lost();
        tracing::warn!(channel = %inner.config.channel, reason = %lost, "redis subscription lost; reconnecting");
    }
}

/// rustls needs a process-wide crypto provider for `rediss://`; install ring's unless one is set.
fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}
