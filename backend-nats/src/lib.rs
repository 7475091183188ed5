//! NATS core pub/sub backend for sse-fanout.
//!
//! Every instance publishes envelopes to one subject (default `send.sse.event`) and subscribes to
//! it. `publish` flushes, so `Ok` means the message is on the server's connection (core NATS
//! acknowledges no publish: one lost with the connection is lost). async-nats reconnects by itself
//! and subscribes again; [`health`](FanoutBackend::health) follows the connection state. Messages
//! the client drops because a subscription fell behind (slow consumer) are counted and logged.
//!
//! Credentials, tokens, NKeys and TLS: set an [`async_nats::ConnectOptions`] with
//! [`NatsConfig::options`], or put a user and password or a token in the URL
//! (`nats://user:pass@host:4222`, `nats://token@host:4222`, `tls://host:4222`).
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! use sse_core::Hub;
//! use sse_fanout_nats::{NatsBackend, NatsConfig};
//!
//! let backend = NatsBackend::connect(NatsConfig::new("nats://127.0.0.1:4222", "send.sse.event")).await?;
//! let hub = Hub::builder(backend).app_name("orders").start().await?;
//! # Ok(()) }
//! ```
//!
//! A publish that times out while the connection is down may still be sent once it is back: the
//! client keeps it in its outgoing buffer.
//!
//! # History
//!
//! With history on (the default, [`NatsConfig::history`]), the backend keeps a JetStream stream
//! over the subject (named by [`NatsConfig::history_stream`], created or updated when it
//! connects: limits by age, count and bytes from the [`ReplayConfig`](sse_core::ReplayConfig), oldest discarded first,
//! file storage), and publishes through JetStream: `Ok` means the stream stored the envelope.
//!
//! **One order.** The instances do not subscribe the subject itself: core NATS hands two
//! publishers' near-simultaneous messages to each subscriber in its own order, so two instances
//! would disagree on what came after what, and a client moving between them with
//! `Last-Event-ID` would get an event twice or never. The stream republishes every message it
//! stores, in the order it stored them, under [`LIVE_PREFIX`] (`send.sse.event` →
//! `_SSE_FANOUT_LIVE.send.sse.event`, a route's subject likewise), and that is what the
//! instances subscribe: one publisher (the stream) delivers in one order to every subscriber,
//! across the shared subject and the routes alike. The server republishes a message after it
//! let go of the stream's lock, so two publishers' messages can still go out swapped against
//! their sequence numbers (and a history read); the subscription puts each subject's messages
//! back in sequence order from the headers the stream adds (see the `order` module), which
//! holds the first message of a subject since subscribing up to 5 ms. A hub reads the
//! stream when it starts (see [`sse_core::history`]) with an ephemeral pull consumer starting at
//! a time, in batches, up to the messages pending when the read began. Anything published to the
//! subject by any client (`nats pub send.sse.event '<envelope>'`) is captured by the stream too.
//! The server must have JetStream enabled (`nats-server -js`); set `history` to `None` otherwise.
//!
//! When the connection comes back after it was lost, or the client dropped messages of a slow
//! subscription, the subscription reports a [gap](sse_core::Received::Gap) from a few seconds
//! before the last message it received, and the hub reads what it missed from the stream before
//! what comes next (without history it would be missing).
//!
//! # Routed delivery
//!
//! In [session routing](sse_core::route) a targeted envelope is published to the subject
//! `{subject}.{token}` (the [route token](sse_core::route::route_token): one token of `A–Z a–z 0–9
//! _ -`, so no `.`, `*` or `>` from a session id reaches a subject), and an instance subscribes
//! the subjects of the sessions it holds on its one connection; the JetStream history stream
//! captures `{subject}` and `{subject}.*`. One round trip (a message to an inbox of ours coming
//! back) confirms a batch of subscribes: the server has them before any later publish.
//! async-nats subscribes them again after a reconnect by itself. With history, targeted events
//! and broadcasts reach every instance in the stream's one order (above); without it, a targeted
//! event and a broadcast travel on different subjects, and their relative order is not kept.

mod config;
mod history;
mod order;
mod publish;
mod routes;
mod subscribe;

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use async_nats::connection::State;
use async_nats::jetstream;
use async_nats::{Client, Event};
use async_trait::async_trait;
use bytes::Bytes;
use futures_util::StreamExt;
use sse_core::connect::Connector;
use sse_core::history::BrokerHistory;
use sse_core::route::SessionRoutes;
use sse_core::{BackendError, BackendStream, FanoutBackend, Health};

pub use config::{DEFAULT_URL, NatsConfig};

/// The client's connect options, for [`NatsConfig::options`].
pub use async_nats::ConnectOptions;

use routes::Routes;

/// This backend's row in a hub's table of backends (`--backend nats`).
pub const CONNECTOR: Connector =
    Connector::of::<NatsConfig>("nats", "NATS (JetStream for the history)");

const NAME: &str = "nats";

/// The prefix under which the history stream republishes what it stores: a message stored from
/// `send.sse.event.s-a` goes out on `_SSE_FANOUT_LIVE.send.sse.event.s-a`.
pub const LIVE_PREFIX: &str = "_SSE_FANOUT_LIVE";

/// Fans envelopes out over a NATS subject. Cheap to clone.
#[derive(Clone)]
pub struct NatsBackend {
    client: Client,
    /// Set when the backend keeps history.
    jetstream: Option<jetstream::Context>,
    config: Arc<NatsConfig>,
    counters: Arc<Counters>,
    routes: Arc<Routes>,
}

#[derive(Debug, Default)]
struct Counters {
    slow_consumer: AtomicU64,
    reconnects: AtomicU64,
    connected_once: AtomicBool,
    /// Set by a disconnect: the next `Connected` event is a reconnect.
    disconnected: AtomicBool,
    closed: AtomicBool,
    /// Bumped when messages may have been missed (the connection came back, or the client
    /// dropped messages of a slow subscription): subscriptions then catch up from the history.
    missed: tokio::sync::watch::Sender<u64>,
}

impl fmt::Debug for NatsBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NatsBackend")
            .field("subject", &self.config.subject)
            .finish_non_exhaustive()
    }
}

impl NatsBackend {
    /// A round trip through the server on this connection, proving every command sent before it
    /// (a SUB) has been processed: the server handles one connection's commands in order, so once
    /// a message published to a fresh inbox of ours comes back, they are. (`Client::flush` only
    /// writes the buffer out; an event published on another connection right after it could reach
    /// the server before the SUB did, and be missed: seen in 16 of 300 tries here.)
    async fn round_trip(&self) -> Result<(), BackendError> {
        let inbox = self.client.new_inbox();
        let mut probe = self
            .client
            .subscribe(inbox.clone())
            .await
            .map_err(|e| BackendError::unavailable(NAME, e))?;
        self.client
            .publish(inbox, Bytes::new())
            .await
            .map_err(|e| BackendError::unavailable(NAME, e))?;
        self.client
            .flush()
            .await
            .map_err(|e| BackendError::unavailable(NAME, e))?;
        match probe.next().await {
            Some(_) => Ok(()),
            None => Err(BackendError::unavailable(
                NAME,
                "the connection closed during subscribe",
            )),
        }
    }
    /// Connects with `config`. Fails when the server cannot be reached within the connect
    /// timeout, or (with history) JetStream refuses the history stream.
    pub async fn connect(config: NatsConfig) -> Result<Self, BackendError> {
        let counters = Arc::new(Counters::default());
        let events = counters.clone();
        let subject = config.subject.clone();
        let options = config
            .options
            .clone()
            .connection_timeout(config.connect_timeout)
            .subscription_capacity(config.subscription_capacity)
            .event_callback(move |event| {
                let counters = events.clone();
                let subject = subject.clone();
                async move { counters.on_event(&subject, event) }
            });
        let servers = config.servers()?;
        let client = tokio::time::timeout(config.connect_timeout * 2, options.connect(servers))
            .await
            .map_err(|_| BackendError::Timeout {
                backend: NAME,
                after: config.connect_timeout * 2,
            })?
            .map_err(|e| BackendError::unavailable(NAME, e))?;
        counters.connected_once.store(true, Ordering::Relaxed);
        let jetstream = match &config.history {
            None => None,
            Some(history) => Some(history::ensure_stream(&client, &config, history).await?),
        };
        Ok(NatsBackend {
            client,
            jetstream,
            config: Arc::new(config),
            counters,
            routes: Arc::default(),
        })
    }

    /// Messages the client dropped because a subscription fell behind.
    pub fn slow_consumer_drops(&self) -> u64 {
        self.counters.slow_consumer.load(Ordering::Relaxed)
    }

    /// How often the connection was re-established.
    pub fn reconnects(&self) -> u64 {
        self.counters.reconnects.load(Ordering::Relaxed)
    }

    /// The underlying client, for anything else the application does with NATS.
    pub fn client(&self) -> &Client {
        &self.client
    }

    fn timeout(&self) -> BackendError {
        BackendError::Timeout {
            backend: NAME,
            after: self.config.publish_timeout,
        }
    }
}

impl Counters {
    fn on_event(&self, subject: &str, event: Event) {
        match event {
            Event::SlowConsumer(sid) => {
                self.slow_consumer.fetch_add(1, Ordering::Relaxed);
                self.missed.send_modify(|n| *n += 1);
                tracing::warn!(%subject, sid, "NATS dropped messages: a subscription is a slow consumer");
            }
            Event::Connected => {
                // The first connection's own event can come after `connect` returned: only a
                // connection that follows a disconnect is a reconnect.
                if self.disconnected.swap(false, Ordering::Relaxed) {
                    self.reconnects.fetch_add(1, Ordering::Relaxed);
                    self.missed.send_modify(|n| *n += 1);
                    tracing::info!(%subject, "NATS connection restored");
                }
            }
            Event::Disconnected => {
                if self.connected_once.load(Ordering::Relaxed) {
                    self.disconnected.store(true, Ordering::Relaxed);
                }
                tracing::warn!(%subject, "NATS connection lost; reconnecting");
            }
            other => tracing::info!(%subject, event = %other, "NATS event"),
        }
    }
}

#[async_trait]
impl FanoutBackend for NatsBackend {
    fn reconnects(&self) -> u64 {
        self.counters.reconnects.load(Ordering::Relaxed)
    }

    fn name(&self) -> &'static str {
        NAME
    }

    async fn publish(&self, envelope: Bytes) -> Result<(), BackendError> {
        self.publish_on(self.config.subject.clone(), envelope).await
    }

    fn routes(&self) -> Option<&dyn SessionRoutes> {
        Some(self)
    }

    async fn subscribe(&self) -> Result<BackendStream, BackendError> {
        if self.counters.closed.load(Ordering::Relaxed) {
            return Err(BackendError::Closed { backend: NAME });
        }
        let subscriber = self
            .client
            .subscribe(self.delivered_on(&self.config.subject))
            .await
            .map_err(|e| BackendError::unavailable(NAME, e))?;
        tokio::time::timeout(self.config.publish_timeout, self.round_trip())
            .await
            .map_err(|_| self.timeout())??;
        let (tx, rx) = tokio::sync::mpsc::channel(4096);
        let (routes_tx, routes_rx) = tokio::sync::mpsc::channel(64);
        *lock(&self.routes.forward) = Some(routes_tx.clone());
        tokio::spawn(subscribe::forward(
            subscriber,
            routes_rx,
            self.counters.missed.subscribe(),
            tx,
        ));
        // Subscribed before (the hub subscribes again): the routes move to this subscription.
        self.carry_routes(&routes_tx).await?;
        Ok(sse_core::backend::channel_stream(rx))
    }

    async fn health(&self) -> Health {
        if self.counters.closed.load(Ordering::Relaxed) {
            return Health::down("closed");
        }
        match self.client.connection_state() {
            State::Connected => Health::up(),
            State::Disconnected => Health::down("disconnected; reconnecting"),
            State::Pending => Health::down("connecting"),
        }
    }

    fn history(&self) -> Option<&dyn BrokerHistory> {
        self.jetstream.is_some().then_some(self as _)
    }

    fn max_envelope(&self) -> Option<usize> {
        Some(self.client.server_info().max_payload).filter(|&max| max > 0)
    }

    async fn close(&self) -> Result<(), BackendError> {
        if self.counters.closed.swap(true, Ordering::Relaxed) {
            return Ok(());
        }
        self.client
            .drain()
            .await
            .map_err(|e| BackendError::unavailable(NAME, e))
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}
