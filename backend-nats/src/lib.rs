//! NATS core pub/sub backend for sse-fanout.
//!
//! Every instance publishes envelopes to one subject (default `send.sse.event`) and subscribes to
//! it. `publish` flushes, so `Ok` means the message is on the server's connection (core NATS
//! acknowledges no publish: one lost with the connection is lost). async-nats reconnects by itself
//! and subscribes again; [`health`](FanoutBackend::health) follows the connection state. Messages
//! the client drops because a subscription fell behind (slow consumer) are counted and logged.
//!
//! Credentials, tokens, NKeys and TLS: pass an [`async_nats::ConnectOptions`] to
//! [`NatsBackend::connect_with`], or put a user and password or a token in the URL
//! (`nats://user:pass@host:4222`, `nats://token@host:4222`, `tls://host:4222`).
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! use sse_core::Hub;
//! use sse_fanout_nats::NatsBackend;
//!
//! let backend = NatsBackend::connect("nats://127.0.0.1:4222", "send.sse.event").await?;
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
//! connects: limits by age, count and bytes from the [`ReplayConfig`], oldest discarded first,
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

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_nats::connection::State;
use async_nats::jetstream::{self, consumer, stream as js_stream};
use async_nats::{Client, Event};
use async_trait::async_trait;
use bytes::Bytes;
use futures_util::StreamExt;
use futures_util::stream::{BoxStream, SelectAll};
use sse_core::history::{BrokerHistory, HistoryStream};
use sse_core::route::{SessionRoutes, route_token};
use sse_core::{BackendError, BackendStream, FanoutBackend, Health, Received, ReplayConfig};
use tokio_util::sync::CancellationToken;

mod order;
use order::{Sequencer, Stamp};

/// The client's connect options, for [`NatsBackend::connect_with`].
pub use async_nats::ConnectOptions;

const NAME: &str = "nats";

/// How the backend uses NATS.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct NatsConfig {
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
}

impl NatsConfig {
    /// Defaults for `subject`: connect timeout 2 s, publish timeout 2 s, 65 536 buffered messages,
    /// history with the default [`ReplayConfig`].
    pub fn new(subject: impl Into<String>) -> Self {
        let subject = subject.into();
        NatsConfig {
            history_stream: stream_name(&subject),
            history: Some(ReplayConfig::default()),
            subject,
            connect_timeout: Duration::from_secs(2),
            publish_timeout: Duration::from_secs(2),
            subscription_capacity: 65_536,
        }
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

/// Messages one fetch of a history read asks for.
const PAGE: usize = 1000;

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

/// The session subjects this instance subscribes (see the crate docs on routed delivery).
#[derive(Debug, Default)]
struct Routes {
    /// Each route's subscription, ended by cancelling its token.
    subscribed: Mutex<HashMap<String, CancellationToken>>,
    /// Hands new route subscriptions to the task that forwards to the hub.
    forward: Mutex<Option<tokio::sync::mpsc::Sender<BoxStream<'static, Incoming>>>>,
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
    /// Publishes to `subject` (the shared one, or a session's), through JetStream with history.
    async fn publish_on(&self, subject: String, envelope: Bytes) -> Result<(), BackendError> {
        if self.counters.closed.load(Ordering::Relaxed) {
            return Err(BackendError::Closed { backend: NAME });
        }
        let max = self.client.server_info().max_payload;
        if max > 0 && envelope.len() > max {
            return Err(BackendError::TooLarge {
                backend: NAME,
                size: envelope.len(),
                max,
                raise: "the server's max_payload (nats-server configuration, up to 64 MB)",
            });
        }
        if self.client.connection_state() != State::Connected {
            return Err(BackendError::unavailable(NAME, "not connected to NATS"));
        }
        let send = async {
            if let Some(jetstream) = &self.jetstream {
                // Stored in the history stream, and so delivered to the subject's subscribers.
                let ack = jetstream
                    .publish(subject.clone(), envelope)
                    .await
                    .map_err(|e| BackendError::unavailable(NAME, e))?;
                return ack
                    .await
                    .map(drop)
                    .map_err(|e| BackendError::unavailable(NAME, e));
            }
            self.client
                .publish(subject, envelope)
                .await
                .map_err(|e| BackendError::unavailable(NAME, e))?;
            self.client
                .flush()
                .await
                .map_err(|e| BackendError::unavailable(NAME, e))
        };
        tokio::time::timeout(self.config.publish_timeout, send)
            .await
            .map_err(|_| self.timeout())?
    }

    /// The subject of a session's route: the shared subject and the session's route token.
    fn route_subject(&self, session: &str) -> String {
        format!("{}.{}", self.config.subject, route_token(session))
    }

    /// Where the messages published to `subject` reach the instances: with history, the stream's
    /// republished copy (one order for every subscriber), else `subject` itself.
    fn delivered_on(&self, subject: &str) -> String {
        match self.jetstream {
            Some(_) => format!("{LIVE_PREFIX}.{subject}"),
            None => subject.to_owned(),
        }
    }

    /// Connects to `url` and uses `subject`, other settings at their defaults.
    pub async fn connect(url: &str, subject: &str) -> Result<Self, BackendError> {
        Self::connect_with(url, NatsConfig::new(subject), ConnectOptions::new()).await
    }

    /// Connects to `url` with `config`, on top of `options` (credentials, TLS, names): the
    /// backend adds its own event callback, connect timeout and subscription capacity.
    pub async fn connect_with(
        url: &str,
        config: NatsConfig,
        options: ConnectOptions,
    ) -> Result<Self, BackendError> {
        let counters = Arc::new(Counters::default());
        let events = counters.clone();
        let subject = config.subject.clone();
        let options = options
            .connection_timeout(config.connect_timeout)
            .subscription_capacity(config.subscription_capacity)
            .event_callback(move |event| {
                let counters = events.clone();
                let subject = subject.clone();
                async move { counters.on_event(&subject, event) }
            });
        let client = tokio::time::timeout(config.connect_timeout * 2, options.connect(url))
            .await
            .map_err(|_| BackendError::Timeout {
                backend: NAME,
                after: config.connect_timeout * 2,
            })?
            .map_err(|e| BackendError::unavailable(NAME, e))?;
        counters.connected_once.store(true, Ordering::Relaxed);
        let jetstream = match &config.history {
            None => None,
            Some(history) => Some(ensure_stream(&client, &config, history).await?),
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

/// Creates the history stream, or brings an existing one's limits up to date.
async fn ensure_stream(
    client: &Client,
    config: &NatsConfig,
    history: &ReplayConfig,
) -> Result<jetstream::Context, BackendError> {
    let context = jetstream::new(client.clone());
    let stream = js_stream::Config {
        name: config.history_stream.clone(),
        // The shared subject and the session routes' subjects under it.
        subjects: vec![config.subject.clone(), format!("{}.*", config.subject)],
        max_age: history.max_age,
        max_messages: i64::try_from(history.max_events).unwrap_or(i64::MAX),
        max_bytes: i64::try_from(history.max_bytes).unwrap_or(i64::MAX),
        discard: js_stream::DiscardPolicy::Old,
        storage: js_stream::StorageType::File,
        allow_direct: true,
        // Every stored message goes out again, in the stream's order, to the same subject
        // under LIVE_PREFIX: what the instances subscribe (see the crate docs on order).
        republish: Some(js_stream::Republish {
            source: ">".to_owned(),
            destination: format!("{LIVE_PREFIX}.>"),
            headers_only: false,
        }),
        ..Default::default()
    };
    let created = tokio::time::timeout(
        config.connect_timeout * 2,
        context.create_or_update_stream(stream),
    )
    .await
    .map_err(|_| BackendError::Timeout {
        backend: NAME,
        after: config.connect_timeout * 2,
    })?;
    created.map_err(|e| BackendError::Config {
        backend: NAME,
        message: format!(
            "cannot create or update the JetStream stream `{}` over `{}` for the history \
             (is JetStream enabled on the server? turn history off otherwise): {e}",
            config.history_stream, config.subject
        ),
    })?;
    Ok(context)
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
        *lock(&self.routes.forward) = Some(routes_tx);
        tokio::spawn(forward(
            subscriber,
            routes_rx,
            self.counters.missed.subscribe(),
            tx,
        ));
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

/// How far before its last sign of life the gap of a subscription that may have missed messages
/// begins (this host's and the server's clocks may differ by this much).
const GAP_MARGIN: Duration = Duration::from_secs(5);

/// What a route's subscription yields to the forwarding task.
enum Incoming {
    Message(async_nats::Message),
    /// The route was unsubscribed: its subject's chain is forgotten.
    Ended(String),
}

/// Forwards a subscription's messages, per subject in the stream's order (see the `order`
/// module); when messages may have been missed (a reconnect, a slow consumer), first lets out
/// what waited and reports a [gap](Received::Gap) from a little before the last message
/// received, which the hub reads from the history.
///
/// The session routes' subscriptions join the shared subject's here, as they are subscribed.
async fn forward(
    subscriber: async_nats::Subscriber,
    mut routes: tokio::sync::mpsc::Receiver<BoxStream<'static, Incoming>>,
    mut missed: tokio::sync::watch::Receiver<u64>,
    tx: tokio::sync::mpsc::Sender<Received>,
) {
    let mut alive_at = std::time::SystemTime::now();
    let mut subscriber = subscriber;
    let mut incoming: SelectAll<BoxStream<'static, Incoming>> = SelectAll::new();
    let mut order = Sequencer::default();
    let mut out = Vec::new();
    loop {
        let deadline = order.deadline();
        let message = tokio::select! {
            Some(route) = routes.recv() => {
                incoming.push(route);
                continue;
            }
            message = subscriber.next() => match message {
                Some(message) => message,
                None => return,
            },
            Some(item) = incoming.next(), if !incoming.is_empty() => match item {
                Incoming::Message(message) => message,
                Incoming::Ended(subject) => {
                    order.forget(&subject);
                    continue;
                }
            },
            () = sleep_until(deadline), if deadline.is_some() => {
                order.expire(tokio::time::Instant::now(), &mut out);
                if !send_all(&tx, &mut out).await {
                    return;
                }
                continue;
            }
            changed = missed.changed() => {
                if changed.is_err() {
                    return;
                }
                order.gap(&mut out);
                if !send_all(&tx, &mut out).await {
                    return;
                }
                // The hub reads what this subscription missed from the history.
                let since = alive_at.checked_sub(GAP_MARGIN).unwrap_or(alive_at);
                if tx.send(Received::Gap { since }).await.is_err() {
                    return;
                }
                continue;
            }
            () = tx.closed() => return,
        };
        let stamp = Stamp::of(message.headers.as_ref());
        let now = tokio::time::Instant::now();
        order.push(
            message.subject.as_str(),
            stamp,
            message.payload,
            now,
            &mut out,
        );
        if !send_all(&tx, &mut out).await {
            return;
        }
        alive_at = std::time::SystemTime::now();
    }
}

/// Sleeps until `deadline` (forever without one; the branch is off then).
async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

/// Sends and empties `out`; `false` when the hub is gone.
async fn send_all(tx: &tokio::sync::mpsc::Sender<Received>, out: &mut Vec<Bytes>) -> bool {
    for payload in out.drain(..) {
        if tx.send(Received::Envelope(payload)).await.is_err() {
            return false;
        }
    }
    true
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

#[async_trait]
impl SessionRoutes for NatsBackend {
    async fn publish_to(&self, session: &str, envelope: Bytes) -> Result<(), BackendError> {
        self.publish_on(self.route_subject(session), envelope).await
    }

    /// One core subscription per session subject, then one round trip through the server for
    /// the batch, so every SUB is in place when this returns.
    async fn subscribe(&self, sessions: &[&str]) -> Result<(), BackendError> {
        let forward = lock(&self.routes.forward)
            .clone()
            .ok_or(BackendError::Config {
                backend: NAME,
                message: "session routes need the backend's subscription: start the hub first"
                    .to_owned(),
            })?;
        for session in sessions {
            let subject = self.route_subject(session);
            if lock(&self.routes.subscribed).contains_key(&subject) {
                continue;
            }
            let subscriber = self
                .client
                .subscribe(self.delivered_on(&subject))
                .await
                .map_err(|e| BackendError::unavailable(NAME, e))?;
            let stop = CancellationToken::new();
            let ended = Incoming::Ended(self.delivered_on(&subject));
            let route = subscriber
                .map(Incoming::Message)
                .take_until(stop.clone().cancelled_owned())
                .chain(futures_util::stream::once(async move { ended }))
                .boxed();
            forward
                .send(route)
                .await
                .map_err(|_| BackendError::Closed { backend: NAME })?;
            lock(&self.routes.subscribed).insert(subject, stop);
        }
        tokio::time::timeout(self.config.publish_timeout, self.round_trip())
            .await
            .map_err(|_| self.timeout())?
    }

    /// Ends the sessions' subscriptions (dropping a subscription unsubscribes it).
    async fn unsubscribe(&self, sessions: &[&str]) -> Result<(), BackendError> {
        let mut subscribed = lock(&self.routes.subscribed);
        for session in sessions {
            if let Some(stop) = subscribed.remove(&self.route_subject(session)) {
                stop.cancel();
            }
        }
        Ok(())
    }

    fn subscribed(&self) -> usize {
        lock(&self.routes.subscribed).len()
    }
}

#[async_trait]
impl BrokerHistory for NatsBackend {
    async fn read_since(
        &self,
        since: std::time::SystemTime,
    ) -> Result<HistoryStream, BackendError> {
        let Some(jetstream) = &self.jetstream else {
            return Ok(Box::pin(futures_util::stream::empty()));
        };
        let unavailable =
            |e: &dyn std::fmt::Display| BackendError::unavailable(NAME, e.to_string());
        let read = async {
            let stream = jetstream
                .get_stream(&self.config.history_stream)
                .await
                .map_err(|e| unavailable(&e))?;
            let consumer = stream
                .create_consumer(consumer::pull::Config {
                    deliver_policy: consumer::DeliverPolicy::ByStartTime {
                        start_time: time::OffsetDateTime::from(since),
                    },
                    ack_policy: consumer::AckPolicy::None,
                    inactive_threshold: Duration::from_secs(30),
                    memory_storage: true,
                    ..Default::default()
                })
                .await
                .map_err(|e| unavailable(&e))?;
            let pending = consumer.cached_info().num_pending;
            let name = consumer.cached_info().name.clone();
            Ok::<_, BackendError>((stream, consumer, pending, name))
        };
        let (stream, consumer, pending, name) =
            tokio::time::timeout(self.config.publish_timeout, read)
                .await
                .map_err(|_| self.timeout())??;
        let timeout = self.config.publish_timeout;
        let remaining = usize::try_from(pending).unwrap_or(usize::MAX);
        Ok(sse_core::history::paged(
            remaining,
            move |remaining: usize| {
                let (stream, consumer, name) = (stream.clone(), consumer.clone(), name.clone());
                async move {
                    let fetch = async {
                        let mut batch = consumer
                            .fetch()
                            .max_messages(remaining.min(PAGE))
                            .messages()
                            .await
                            .map_err(|e| BackendError::unavailable(NAME, e))?;
                        let mut envelopes = Vec::new();
                        while let Some(message) = batch.next().await {
                            let message =
                                message.map_err(|e| BackendError::unavailable(NAME, e))?;
                            envelopes.push(message.payload.clone());
                        }
                        Ok::<_, BackendError>(envelopes)
                    };
                    let envelopes =
                        tokio::time::timeout(timeout, fetch).await.map_err(|_| {
                            BackendError::Timeout {
                                backend: NAME,
                                after: timeout,
                            }
                        })??;
                    let left = remaining.saturating_sub(envelopes.len());
                    // Done when every message pending at the start is read, or none came (the
                    // oldest ones aged out meanwhile).
                    let next = (left > 0 && !envelopes.is_empty()).then_some(left);
                    if next.is_none() {
                        let _ = stream.delete_consumer(&name).await;
                    }
                    Ok((envelopes, next))
                }
            },
        ))
    }
}
