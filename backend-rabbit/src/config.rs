//! [`RabbitConfig`]: how the backend uses RabbitMQ, made by hand or from the hub's settings.

use std::str::FromStr;
use std::time::Duration;

use sse_core::connect::{BackendConfig, BackendSettings};
use sse_core::{BackendError, ReplayConfig, Routing};

use crate::{NAME, RabbitBackend};

/// The broker a hub uses when its settings name none.
pub const DEFAULT_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

/// How the backend uses RabbitMQ.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct RabbitConfig {
    /// The broker's URL: `amqp://user:password@host:5672/vhost` (`%2f` for `/`), `amqps://`
    /// for TLS, `?heartbeat=10` as lapin reads it; several, comma-separated, for the nodes of a
    /// cluster (a connection goes to the node that answered last, else to the next).
    pub url: String,
    /// The fanout exchange every instance shares.
    pub exchange: String,
    /// This instance's queue name (unique per instance, e.g. `{app}.{instance}`); a second
    /// subscription of the same backend gets `.2`, `.3`… appended.
    pub queue: String,
    /// Persistent (`true`) or transient delivery mode.
    pub persistent: bool,
    /// Unacknowledged messages the broker sends ahead.
    pub prefetch: u16,
    /// How long connecting, declaring and each confirm may take.
    pub timeout: Duration,
    /// The longest wait between reconnect attempts.
    pub max_backoff: Duration,
    /// The history kept in a stream queue bound to the exchange (see the crate docs); `None`
    /// keeps none. Give the hub the same bounds
    /// ([`HubConfig::replay`](sse_core::HubConfig::replay)).
    pub history: Option<ReplayConfig>,
    /// The history stream queue's name; default `{exchange}.history`.
    pub history_queue: String,
    /// The nodes of a cluster that keep the history stream when it is created
    /// (`x-initial-cluster-size`; 3 on a three-node cluster, so that the loss of one node loses
    /// nothing that was confirmed); `None` leaves it to RabbitMQ. A stream made earlier keeps
    /// its replicas (`rabbitmq-streams add_replica` changes them).
    pub history_replicas: Option<u16>,
    /// The hash partitions of session ids in routed delivery (see the `routes` module docs):
    /// more partitions mean fewer other sessions' events reach an instance, and more bindings.
    pub route_partitions: u32,
    /// Where subscriptions receive envelopes from: the history stream (one order for every
    /// instance; the default) or a queue of the instance's own.
    pub delivery: Delivery,
}

/// Where a subscription receives envelopes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Delivery {
    /// The history stream itself, from the next offset (see the `stream` module): every instance
    /// receives every envelope in the stream's one order, and a lost connection consumes again
    /// after the last offset received. Every instance reads targeted envelopes too, so session
    /// routing saves nothing. Needs history; without it a subscription uses
    /// [`Queue`](Delivery::Queue).
    #[default]
    Stream,
    /// A queue of the instance's own bound to the exchange (and, in session routing, to the
    /// partitions of the sessions it holds): session routing saves traffic, but two publishers'
    /// near-simultaneous envelopes reach two instances' queues in either order, so a client
    /// moving between instances at that moment may receive one of them twice, or not at all.
    Queue,
}

impl RabbitConfig {
    /// Defaults for the broker at `url`, `exchange` and this instance's `queue`: transient messages, prefetch 256, timeout 5 s, backoff up to 5 s, history with
    /// the default [`ReplayConfig`] in the stream queue `{exchange}.history`.
    pub fn new(
        url: impl Into<String>,
        exchange: impl Into<String>,
        queue: impl Into<String>,
    ) -> Self {
        let exchange = exchange.into();
        RabbitConfig {
            url: url.into(),
            history: Some(ReplayConfig::default()),
            history_queue: format!("{exchange}.history"),
            history_replicas: None,
            exchange,
            queue: queue.into(),
            persistent: false,
            prefetch: 256,
            timeout: Duration::from_secs(5),
            max_backoff: Duration::from_secs(5),
            route_partitions: DEFAULT_ROUTE_PARTITIONS,
            delivery: Delivery::default(),
        }
    }

    /// Sets where subscriptions receive envelopes from.
    pub fn delivery(mut self, delivery: Delivery) -> Self {
        self.delivery = delivery;
        self
    }

    /// Sets the history's bounds; `None` keeps no history.
    pub fn history(mut self, history: Option<ReplayConfig>) -> Self {
        self.history = history;
        self
    }
}

impl FromStr for Delivery {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        match text {
            "stream" => Ok(Delivery::Stream),
            "queue" => Ok(Delivery::Queue),
            other => Err(format!("expected stream or queue, got `{other}`")),
        }
    }
}

/// The default of [`RabbitConfig::route_partitions`]: with `S` sessions in the cluster, an
/// instance receives about `1 + S / partitions` times the targeted events meant for its own
/// sessions (≤ 1.1 up to ~6 500 sessions), and binds about one partition per session it holds.
pub const DEFAULT_ROUTE_PARTITIONS: u32 = 65_536;

impl BackendConfig for RabbitConfig {
    type Backend = RabbitBackend;

    /// The URL (default [`DEFAULT_URL`]), exchange and history of the settings, the queue
    /// `{app}.{instance}` (named so it can be declared again after a reconnect), and the options
    /// `delivery` (`stream` or `queue`, see [`Delivery`]), `route-partitions`, `queue` and
    /// `history-replicas`.
    fn from_settings(mut settings: BackendSettings) -> Result<Self, BackendError> {
        let default_queue = format!("{}.{}", settings.app_name, settings.instance_id);
        let queue = settings.take(NAME, "queue")?.unwrap_or(default_queue);
        let delivery = settings.take(NAME, "delivery")?;
        let partitions: Option<u32> = settings.take(NAME, "route-partitions")?;
        let replicas: Option<u16> = settings.take(NAME, "history-replicas")?;
        settings.finish(NAME)?;
        let url = settings.url.unwrap_or_else(|| DEFAULT_URL.to_owned());
        let mut config = RabbitConfig::new(url, settings.channel, queue).history(settings.history);
        if let Some(delivery) = delivery {
            config.delivery = delivery;
        }
        if settings.routing != Routing::Broadcast
            && config.delivery == Delivery::Stream
            && config.history.is_some()
        {
            tracing::info!(
                "session routing on RabbitMQ with delivery from the history stream: every \
                 instance reads every event (one order); delivery=queue saves that traffic \
                 without one order"
            );
        }
        if let Some(partitions) = partitions {
            config.route_partitions = partitions.max(1);
        }
        config.history_replicas = replicas;
        Ok(config)
    }

    async fn connect(self) -> Result<RabbitBackend, BackendError> {
        RabbitBackend::connect(self).await
    }
}
