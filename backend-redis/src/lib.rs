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
//! use sse_fanout_redis::{RedisBackend, RedisConfig};
//!
//! let config = RedisConfig::new("redis://127.0.0.1:6379", "send.sse.event");
//! let backend = RedisBackend::connect(config).await?;
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
//! a channel is one hash lookup (10 000 channels subscribe in about 20 ms, BENCHMARKS.md).
//!
//! # Redis Cluster
//!
//! A URL listing several nodes (`redis://a:7000,redis://b:7000`), or one node that says it runs
//! in cluster mode, makes the backend use a Redis Cluster (Redis ≥ 7): sharded pub/sub
//! (`SPUBLISH`, `SSUBSCRIBE`), never classic `PUBLISH` (which every node would relay).
//!
//! - The shared channel and its history stream are in the channel's slot (the stream begins
//!   with its hash tag, `{channel}:history`), so one script still writes the history and
//!   publishes.
//! - The session routes are spread over [`RedisConfig::route_partitions`] partitions (16 by
//!   default), each with its own hash tag, history stream and slot, picked so that a cluster
//!   with its slots in equal ranges has them spread evenly over its masters: routed traffic is
//!   shared by every master, not carried by the channel's. Each partition is a
//!   [lane](sse_core::backend::Lane): one order, on its master; a session's events keep theirs,
//!   and after a gap the hub reads each lane's history on its own. A whole read (a hub's start,
//!   a resume) merges the lanes by entry id.
//! - A hub subscribes on one connection to each master that serves a lane (three on a cluster
//!   of three masters), each lane's channels on its master's connection, routes in pipelines of
//!   1 000. It follows a slot to its new master after a failover or a migration (Redis's
//!   unsolicited `sunsubscribe`, a closed connection, a refused subscribe) and reports the gap.
//!
//! A publish can wait for replicas ([`RedisConfig::wait_replicas()`]), and has a deadline the
//! script checks ([`RedisConfig::publish_timeout`]): one answered as failed never goes out later.
//! The project's README ("A Redis Cluster") says what survives which failure and what it costs.

mod cluster;
mod config;
mod history;
mod link;
mod names;
mod publish;
mod routes;
mod subscribe;

use std::fmt;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use bytes::Bytes;
use sse_core::backend::Reconnects;
use sse_core::connect::Connector;
use sse_core::history::BrokerHistory;
use sse_core::route::SessionRoutes;
use sse_core::{BackendError, BackendStream, FanoutBackend, Health};
use tokio_util::sync::CancellationToken;

pub use config::{DEFAULT_ROUTE_PARTITIONS, DEFAULT_URL, RedisConfig};

use link::{Conn, Link};
use names::Names;
use routes::Routes;

/// This backend's row in a hub's table of backends (`--backend redis`).
pub const CONNECTOR: Connector = Connector::of::<RedisConfig>("redis", "Redis pub/sub");

const NAME: &str = "redis";

/// Fans envelopes out over Redis pub/sub. Cheap to clone.
#[derive(Clone)]
pub struct RedisBackend {
    inner: Arc<Inner>,
}

struct Inner {
    link: Link,
    /// The connection publishing and reading the history.
    publisher: Conn,
    config: RedisConfig,
    names: Names,
    script: redis::Script,
    /// Subscriptions currently down (a backend is healthy when this is 0 and publishing works).
    reconnects: Reconnects,
    closed: CancellationToken,
    routes: Mutex<Routes>,
    /// Held by each change of the subscribed routes, so that subscribing them again after a
    /// reconnect cannot overtake an unsubscribe.
    route_changes: tokio::sync::Mutex<()>,
}

impl fmt::Debug for RedisBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisBackend")
            .field("channel", &self.inner.names.channel)
            .field("cluster", &self.is_cluster())
            .finish_non_exhaustive()
    }
}

fn unavailable(error: redis::RedisError) -> BackendError {
    BackendError::unavailable(NAME, error)
}

impl RedisBackend {
    /// Connects with `config`. Fails when the URL is invalid or the server cannot be reached
    /// within the connect timeout.
    pub async fn connect(config: RedisConfig) -> Result<Self, BackendError> {
        install_crypto_provider();
        let link = Link::discover(&config).await?;
        let names = Names::new(&config, matches!(link, Link::Cluster(_)))?;
        let publisher = link.commands(&config).await?;
        Ok(RedisBackend {
            inner: Arc::new(Inner {
                script: redis::Script::new(&publish::publish_script(names.sharded)),
                link,
                publisher,
                names,
                config,
                reconnects: Reconnects::default(),
                closed: CancellationToken::new(),
                routes: Mutex::default(),
                route_changes: tokio::sync::Mutex::new(()),
            }),
        })
    }

    /// Whether the backend talks to a Redis Cluster (sharded pub/sub) rather than one server.
    pub fn is_cluster(&self) -> bool {
        matches!(self.inner.link, Link::Cluster(_))
    }

    /// How often a subscription had to reconnect.
    pub fn reconnects(&self) -> u64 {
        self.inner.reconnects.restored()
    }

    /// The channel in use.
    pub fn channel(&self) -> &str {
        &self.inner.names.channel
    }

    /// The channel of `session`'s route in [session routing](sse_core::route): its slot tells
    /// which master of a Redis Cluster carries the session's events.
    ///
    /// ```no_run
    /// # async fn run() -> Result<(), sse_core::BackendError> {
    /// use sse_fanout_redis::{RedisBackend, RedisConfig};
    ///
    /// let config = RedisConfig::new("redis://127.0.0.1:6379", "orders");
    /// let backend = RedisBackend::connect(config).await?;
    /// // On one server; on a cluster the channel begins with its partition's hash tag.
    /// assert_eq!(backend.route_channel("user-42"), "orders:s-user-42");
    /// # Ok(()) }
    /// ```
    pub fn route_channel(&self, session: &str) -> String {
        self.inner
            .names
            .route(&sse_core::route::route_token(session))
            .channel
    }
}

impl Inner {
    async fn timed<T>(
        &self,
        call: impl Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, BackendError> {
        within(self.config.response_timeout, call).await
    }
}

/// `call`'s answer, or [`BackendError::Timeout`] when it takes longer than `after`.
async fn within<T>(
    after: std::time::Duration,
    call: impl Future<Output = redis::RedisResult<T>>,
) -> Result<T, BackendError> {
    tokio::time::timeout(after, call)
        .await
        .map_err(|_| BackendError::Timeout {
            backend: NAME,
            after,
        })?
        .map_err(unavailable)
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
            .publish_on(&self.inner.names.channel, 0, envelope)
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
        match &self.inner.link {
            Link::Single(client) => {
                subscribe::subscribe::<subscribe::Single>(self.inner.clone(), (**client).clone())
                    .await
            }
            Link::Cluster(nodes) => cluster::subscribe(self.inner.clone(), nodes).await,
        }
    }

    async fn health(&self) -> Health {
        if self.inner.closed.is_cancelled() {
            return Health::down("closed");
        }
        if let Some(down) = self.inner.reconnects.health() {
            return down;
        }
        let mut connection = self.inner.publisher.clone();
        let ping = tokio::time::timeout(
            self.inner.config.response_timeout,
            connection.on_master_of(&self.inner.names.channel, redis::cmd("PING")),
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

/// rustls needs a process-wide crypto provider for `rediss://`; install ring's unless one is set.
fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}
