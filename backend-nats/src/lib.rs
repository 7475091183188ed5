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

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use async_nats::connection::State;
use async_nats::{Client, ConnectOptions, Event};
use async_trait::async_trait;
use bytes::Bytes;
use futures_util::StreamExt;
use sse_core::{BackendError, BackendStream, FanoutBackend, Health};

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
}

impl NatsConfig {
    /// Defaults for `subject`: connect timeout 2 s, publish timeout 2 s, 65 536 buffered messages.
    pub fn new(subject: impl Into<String>) -> Self {
        NatsConfig {
            subject: subject.into(),
            connect_timeout: Duration::from_secs(2),
            publish_timeout: Duration::from_secs(2),
            subscription_capacity: 65_536,
        }
    }
}

/// Fans envelopes out over a NATS subject. Cheap to clone.
#[derive(Clone)]
pub struct NatsBackend {
    client: Client,
    config: Arc<NatsConfig>,
    counters: Arc<Counters>,
}

#[derive(Debug, Default)]
struct Counters {
    slow_consumer: AtomicU64,
    reconnects: AtomicU64,
    connected_once: AtomicBool,
    closed: AtomicBool,
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
        Ok(NatsBackend {
            client,
            config: Arc::new(config),
            counters,
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
                tracing::warn!(%subject, sid, "NATS dropped messages: a subscription is a slow consumer");
            }
            Event::Connected => {
                if self.connected_once.load(Ordering::Relaxed) {
                    self.reconnects.fetch_add(1, Ordering::Relaxed);
                    tracing::info!(%subject, "NATS connection restored");
                }
            }
            Event::Disconnected => tracing::warn!(%subject, "NATS connection lost; reconnecting"),
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
        if self.counters.closed.load(Ordering::Relaxed) {
            return Err(BackendError::Closed { backend: NAME });
        }
        let max = self.client.server_info().max_payload;
        if max > 0 && envelope.len() > max {
            return Err(BackendError::TooLarge {
                backend: NAME,
                size: envelope.len(),
                max,
            });
        }
        if self.client.connection_state() != State::Connected {
            return Err(BackendError::unavailable(NAME, "not connected to NATS"));
        }
        let send = async {
            self.client
                .publish(self.config.subject.clone(), envelope)
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

    async fn subscribe(&self) -> Result<BackendStream, BackendError> {
        if self.counters.closed.load(Ordering::Relaxed) {
            return Err(BackendError::Closed { backend: NAME });
        }
        let subscriber = self
            .client
            .subscribe(self.config.subject.clone())
            .await
            .map_err(|e| BackendError::unavailable(NAME, e))?;
        tokio::time::timeout(self.config.publish_timeout, self.round_trip())
            .await
            .map_err(|_| self.timeout())??;
        Ok(subscriber.map(|message| message.payload).boxed())
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
