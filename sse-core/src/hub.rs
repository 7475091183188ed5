//! The [`Hub`]: publish goes out through the backend, what any instance published comes back in,
//! is filtered by application, encoded once and delivered to this instance's streams.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::time::Instant;

use bytes::Bytes;
use futures_util::StreamExt;
use tokio_util::sync::{CancellationToken, DropGuard};
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::backend::{BackendError, BackendStream, FanoutBackend, Health, Received};
use crate::catch_up;
use crate::disconnect::{self, Disconnect};
use crate::encode;
use crate::envelope::{Envelope, EnvelopeError};
use crate::event::{EventId, SendSseEvent};
use crate::history;
use crate::memory::InMemoryEmitterRepository;
use crate::presence::{self, Presence, PresenceConfig};
use crate::probe::{self, ProbeConfig, Prober, Step};
use crate::replay::{Pushed, RESET_EVENT, Replay, ReplayConfig, ReplayLog, Source};
use crate::repository::{CloseReason, EmitterRepository, EventFilter, Subscription, Target};
use crate::route::cursor::{self, Cursor, Cursors};
use crate::route::resume::{Resume, ResumeFrom, Resumes};
use crate::route::{RouteLease, RouteTable, Routing};
use crate::stats::{LatencySnapshot, LogLimit, Stats, StatsSnapshot};
use crate::stream::EventStream;

/// Which applications' envelopes an instance delivers (jEAP's sending-application filter).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum AcceptApps {
    /// Only envelopes whose `app` is this hub's own app name (the default), so several
    /// applications can share one channel.
    #[default]
    Own,
    /// Every envelope, whatever app sent it.
    Any,
    /// Envelopes from these apps.
    These(Vec<String>),
}

/// How a hub behaves. Build one with [`HubConfig::new`] or through [`HubBuilder`].
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct HubConfig {
    /// The application name written into every envelope this hub publishes.
    pub app_name: String,
    /// This instance's id, unique among the app's instances.
    pub instance_id: String,
    /// Which apps' envelopes to deliver.
    pub accept_apps: AcceptApps,
    /// Idle time after which a stream gets a heartbeat comment; `None` turns heartbeats off.
    pub heartbeat: Option<Duration>,
    /// How long a stream stays open before the server ends it (the client reconnects); `None`
    /// keeps streams open. Each stream's deadline is shortened by a random 0–10 % so that streams
    /// opened together do not all reconnect together.
    pub emitter_timeout: Option<Duration>,
    /// Frames that may wait for one client before it is closed as too slow.
    pub queue_size: usize,
    /// Bytes that may wait for one client before it is closed as too slow (one frame of any
    /// size may always wait); its queue is let go at once. Default 4 MiB.
    pub max_stream_bytes: usize,
    /// The reconnection delay sent to clients (`retry:`) when a stream opens; `None` sends none.
    pub retry: Option<Duration>,
    /// The reconnection delay sent in the last frame of a stream ended by shutdown, so that
    /// clients move to another instance promptly.
    pub shutdown_retry: Duration,
    /// The history kept for `Last-Event-ID` replay; `None` keeps none (every resume gets the
    /// reset event).
    pub replay: Option<ReplayConfig>,
    /// Open streams this instance accepts at most; `None` for no limit.
    pub max_streams: Option<usize>,
    /// Open streams one session may hold on this instance at most; `None` for no limit.
    pub max_streams_per_session: Option<usize>,
    /// How targeted events travel between instances (see [`crate::route`]).
    pub routing: Routing,
    /// When to check that the subscription still delivers (see [`crate::probe`]); `None` never
    /// checks.
    pub probe: Option<ProbeConfig>,
    /// Presence across the cluster (see [`crate::presence`]); `None` tracks none.
    pub presence: Option<PresenceConfig>,
}

impl HubConfig {
    /// The defaults: app `sse-fanout`, a random instance id, heartbeat 15 s, emitter timeout
    /// 3 minutes (as in the Spring starter), queue of 256 frames and 4 MiB, `retry: 3000` on connect and
    /// `retry: 1000` at shutdown, the default [`ReplayConfig`], no stream limits, the default
    /// [`ProbeConfig`].
    pub fn new(app_name: impl Into<String>) -> Self {
        HubConfig {
            app_name: app_name.into(),
            instance_id: uuid::Uuid::new_v4().simple().to_string(),
            accept_apps: AcceptApps::Own,
            heartbeat: Some(Duration::from_secs(15)),
            emitter_timeout: Some(Duration::from_secs(180)),
            queue_size: 256,
            max_stream_bytes: 4 * 1024 * 1024,
            retry: Some(Duration::from_secs(3)),
            shutdown_retry: Duration::from_secs(1),
            replay: Some(ReplayConfig::default()),
            max_streams: None,
            max_streams_per_session: None,
            routing: Routing::Broadcast,
            probe: Some(ProbeConfig::default()),
            presence: None,
        }
    }

    fn accepts(&self, app: &str) -> bool {
        match &self.accept_apps {
            AcceptApps::Own => app == self.app_name,
            AcceptApps::Any => true,
            AcceptApps::These(apps) => apps.iter().any(|a| a == app),
        }
    }
}

impl Default for HubConfig {
    fn default() -> Self {
        HubConfig::new("sse-fanout")
    }
}

/// Why publishing failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PublishError {
    /// The event cannot be sent as it is (an event name or id with CR, LF or NUL, say).
    #[error("invalid event: {0}")]
    Invalid(#[from] EnvelopeError),
    /// The event's id (chosen by the publisher) is one this instance's history holds already:
    /// ids are unique, and a second event under one id would be taken for a redelivery of the
    /// first and dropped by every instance.
    #[error("an event with id `{0}` was published already; ids must be unique")]
    DuplicateId(String),
    /// The event name is the one presence events go out under (see [`crate::presence`]):
    /// only the hub sends events of that name.
    #[error("the event name `{0}` is reserved for presence events")]
    Reserved(String),
    /// The backend did not take it.
    #[error(transparent)]
    Backend(#[from] BackendError),
}

/// Why a stream was not opened.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum OpenError {
    /// In [routed delivery](crate::route), the session's route could not be subscribed, so
    /// the stream would miss its events; trying again later may succeed.
    #[error("the session's route could not be subscribed: {0}")]
    RouteUnavailable(String),
    /// The stream resumes (`Last-Event-ID`) from an event this instance must read from the
    /// broker's history, and the history cannot be read right now: the event may well be
    /// there, so this is no reset; trying again later may succeed.
    #[error("the broker's history cannot be read to resume the stream: {0}")]
    HistoryUnavailable(String),
    /// The instance holds as many streams as it accepts.
    #[error("this instance holds its limit of {max} open streams")]
    TooManyStreams {
        /// The limit.
        max: usize,
    },
    /// The session holds as many streams as one session may.
    #[error("this session holds its limit of {max} open streams")]
    TooManyForSession {
        /// The limit.
        max: usize,
    },
}

/// Builds a [`Hub`].
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use std::time::Duration;
/// use sse_core::{Hub, LocalBackend};
///
/// let hub = Hub::builder(LocalBackend::new())
///     .app_name("orders")
///     .heartbeat(Some(Duration::from_secs(20)))
///     .start()
///     .await?;
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct HubBuilder {
    backend: Arc<dyn FanoutBackend>,
    repository: Option<Arc<dyn EmitterRepository>>,
    config: HubConfig,
}

impl HubBuilder {
    /// Replaces the whole configuration.
    pub fn config(mut self, config: HubConfig) -> Self {
        self.config = config;
        self
    }

    /// Sets the application name (see [`HubConfig::app_name`]).
    pub fn app_name(mut self, name: impl Into<String>) -> Self {
        self.config.app_name = name.into();
        self
    }

    /// Sets the instance id (see [`HubConfig::instance_id`]).
    pub fn instance_id(mut self, id: impl Into<String>) -> Self {
        self.config.instance_id = id.into();
        self
    }

    /// Sets which apps' envelopes are delivered (see [`AcceptApps`]).
    pub fn accept_apps(mut self, accept: AcceptApps) -> Self {
        self.config.accept_apps = accept;
        self
    }

    /// Sets the heartbeat interval (see [`HubConfig::heartbeat`]).
    pub fn heartbeat(mut self, every: Option<Duration>) -> Self {
        self.config.heartbeat = every;
        self
    }

    /// Sets the emitter timeout (see [`HubConfig::emitter_timeout`]).
    pub fn emitter_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.config.emitter_timeout = timeout;
        self
    }

    /// Sets the per-stream queue size (see [`HubConfig::queue_size`]).
    pub fn queue_size(mut self, frames: usize) -> Self {
        self.config.queue_size = frames.max(1);
        self
    }

    /// Sets the per-stream bound in bytes (see [`HubConfig::max_stream_bytes`]).
    pub fn max_stream_bytes(mut self, bytes: usize) -> Self {
        self.config.max_stream_bytes = bytes.max(1);
        self
    }

    /// Sets the `retry:` sent on connect (see [`HubConfig::retry`]).
    pub fn retry(mut self, retry: Option<Duration>) -> Self {
        self.config.retry = retry;
        self
    }

    /// Sets the replay history (see [`HubConfig::replay`]).
    pub fn replay(mut self, replay: Option<ReplayConfig>) -> Self {
        self.config.replay = replay;
        self
    }

    /// Sets the stream limits (see [`HubConfig::max_streams`] and
    /// [`HubConfig::max_streams_per_session`]).
    pub fn stream_limits(
        mut self,
        per_instance: Option<usize>,
        per_session: Option<usize>,
    ) -> Self {
        self.config.max_streams = per_instance;
        self.config.max_streams_per_session = per_session;
        self
    }

    /// Sets how targeted events travel between instances (see [`crate::route`]).
    pub fn routing(mut self, routing: Routing) -> Self {
        self.config.routing = routing;
        self
    }

    /// Sets when the hub checks that its subscription still delivers (see [`crate::probe`]);
    /// `None` never checks.
    pub fn probe(mut self, probe: Option<ProbeConfig>) -> Self {
        self.config.probe = probe;
        self
    }

    /// Tracks presence across the cluster (see [`crate::presence`]); `None` (the default)
    /// tracks none.
    pub fn presence(mut self, presence: Option<PresenceConfig>) -> Self {
        self.config.presence = presence;
        self
    }

    /// Uses another repository instead of the [`InMemoryEmitterRepository`].
    pub fn repository(mut self, repository: impl EmitterRepository) -> Self {
        self.repository = Some(Arc::new(repository));
        self
    }

    /// Subscribes to the backend and starts delivering. Returns once the subscription is in place,
    /// so an event published after this returns reaches this instance's streams, and, when the
    /// backend keeps [history in the broker](crate::history) and the hub keeps a replay log, once
    /// that history is loaded, so any `Last-Event-ID` the cluster still holds can be served.
    ///
    /// Fails with [`BackendError::Config`] when [`Routing::Session`] is asked of a backend that
    /// offers no routes.
    pub async fn start(self) -> Result<Hub, BackendError> {
        let routes = match self.config.routing {
            Routing::Broadcast => None,
            Routing::Session { linger } => {
                if self.backend.routes().is_none() {
                    return Err(BackendError::Config {
                        backend: self.backend.name(),
                        message: "this backend cannot route events by session; use broadcast \
                                  routing with it"
                            .to_owned(),
                    });
                }
                Some(linger)
            }
        };
        let stream = self.backend.subscribe().await?;
        let stats = Arc::new(Stats::default());
        let routes = routes.map(|linger| Arc::new(RouteTable::new(linger, stats.clone())));
        let shared = Arc::new(Shared {
            repository: self
                .repository
                .unwrap_or_else(|| Arc::new(InMemoryEmitterRepository::new())),
            opening: opening_frame(self.config.retry),
            farewell: encode::retry(self.config.shutdown_retry),
            replay: self.config.replay.map(|c| Mutex::new(ReplayLog::new(c))),
            malformed_log: LogLimit::default(),
            last_broadcast: Mutex::new(cursor::since(std::time::SystemTime::now())),
            prober: self
                .config
                .probe
                .map(|probe| Prober::new(probe, &self.config.instance_id)),
            behind: catch_up::Behind::default(),
            disconnected: tokio::sync::broadcast::Sender::new(DISCONNECTED_BACKLOG),
            presence: self.config.presence.clone().map(|presence| {
                presence::Tracker::new(presence, &self.config.app_name, &self.config.instance_id)
            }),
            routes: routes.clone(),
            config: self.config,
            stats,
        });
        if let (Some(history), Some(replay)) = (self.backend.history(), shared.config.replay) {
            shared.load_history(history, replay.max_age).await?;
        }
        let stop = CancellationToken::new();
        // Each task ends when the hub stops, whatever it awaits (a broker call included).
        let tasks = TaskTracker::new();
        tasks.spawn(stop.clone().run_until_cancelled_owned(consume(
            shared.clone(),
            self.backend.clone(),
            stream,
            stop.clone(),
        )));
        if let Some(tracker) = &shared.presence {
            tasks.spawn(stop.clone().run_until_cancelled_owned(presence::run(
                tracker.clone(),
                self.backend.clone(),
                stop.clone(),
            )));
        }
        if let Some(routes) = &routes {
            tasks.spawn(
                stop.clone().run_until_cancelled_owned(
                    routes.clone().run(self.backend.clone(), stop.clone()),
                ),
            );
        }
        tasks.close();
        tracing::info!(
            backend = self.backend.name(),
            app = %shared.config.app_name,
            instance = %shared.config.instance_id,
            "hub started"
        );
        Ok(Hub {
            inner: Arc::new(HubInner {
                shared,
                routes,
                resumes: Resumes::default(),
                started: Instant::now(),
                backend: self.backend,
                stop: stop.clone(),
                tasks,
                _stop_on_drop: stop.drop_guard(),
            }),
        })
    }
}

/// The one handle business code keeps: publish events, open streams, read health and counters.
/// Cheap to clone; the hub stops receiving when the last clone is dropped or [`shutdown`](Self::shutdown) is called.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use futures_util::StreamExt;
/// use serde_json::json;
/// use sse_core::{EventFilter, Hub, LocalBackend, SendSseEvent};
///
/// let hub = Hub::builder(LocalBackend::new()).app_name("orders").start().await?;
/// let mut stream = hub.open_stream(Some("s-42".into()), EventFilter::parse("order-update")?).await?;
/// stream.next().await; // the opening comment
///
/// hub.publish(SendSseEvent::new("order-update", json!({"status": "shipped"})).to_session("s-42")).await?;
/// let frame = stream.next().await.unwrap();
/// assert!(frame.ends_with(b"event: order-update\ndata: {\"status\":\"shipped\"}\n\n"));
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct Hub {
    inner: Arc<HubInner>,
}

#[derive(Debug)]
struct HubInner {
    shared: Arc<Shared>,
    /// The session routes this instance holds, in [`Routing::Session`].
    routes: Option<Arc<RouteTable>>,
    /// The broker reads that resuming streams share: in routed delivery, and in broadcast
    /// routing for events this instance has not received yet.
    resumes: Resumes,
    /// When the hub started: in broadcast routing its log covers every event since.
    started: Instant,
    backend: Arc<dyn FanoutBackend>,
    stop: CancellationToken,
    /// The receiving task and the route table's: [`Hub::shutdown`] waits for them, so the
    /// backend's subscription is let go of before the backend closes.
    tasks: TaskTracker,
    _stop_on_drop: DropGuard,
}

/// What the consuming task and the hub handle share.
#[derive(Debug)]
struct Shared {
    repository: Arc<dyn EmitterRepository>,
    config: HubConfig,
    stats: Arc<Stats>,
    opening: Bytes,
    farewell: Bytes,
    replay: Option<Mutex<ReplayLog>>,
    /// Malformed envelopes are logged at most once a second.
    malformed_log: LogLimit,
    /// In session routing: the last broadcast received, escaped for a cursor (`@ms` before the
    /// first), which routed events' frames carry (see [`crate::route::cursor`]).
    last_broadcast: Mutex<String>,
    /// Whether the subscription still delivers (see [`crate::probe`]).
    prober: Option<Prober>,
    /// Set while a catch-up after a gap runs (see [`crate::catch_up`]).
    behind: catch_up::Behind,
    /// The sessions disconnected (see [`Hub::disconnected`]).
    disconnected: tokio::sync::broadcast::Sender<Arc<str>>,
    /// Presence across the cluster, when tracked (see [`crate::presence`]).
    presence: Option<Arc<presence::Tracker>>,
    /// The session routes this instance holds, in [`Routing::Session`]: a catch-up delivers a
    /// routed envelope only if its route was here (see [`catch_up::routed_here`]).
    routes: Option<Arc<RouteTable>>,
}

fn lock(log: &Mutex<ReplayLog>) -> std::sync::MutexGuard<'_, ReplayLog> {
    log.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The first bytes of every stream: a comment (so proxies and clients see the stream open at
/// once) and the `retry:` delay, with no blank line after them (see [`encode::retry`]).
fn opening_frame(retry: Option<Duration>) -> Bytes {
    match retry {
        None => Bytes::from_static(b": ok\n"),
        Some(retry) => {
            let mut frame = b": ok\n".to_vec();
            frame.extend_from_slice(&encode::retry(retry));
            Bytes::from(frame)
        }
    }
}

/// The longest `Last-Event-ID` the reset event echoes: longer than any id this hub writes (a
/// session routing cursor holds two ids of at most a few hundred bytes); a longer one is not
/// ours, and is not reflected (`null`), so that a client cannot make every reset it gets as
/// large as its request head.
const MAX_ECHOED_ID: usize = 1024;

/// Disconnected sessions a [`Hub::disconnected`] receiver may fall behind by before it is told
/// it lagged.
const DISCONNECTED_BACKLOG: usize = 1024;

/// How long [`Hub::shutdown`] waits for the hub's tasks to end.
const TASKS_END: Duration = Duration::from_secs(10);

/// The event that tells a resuming client its history is gone.
fn reset_frame(last_event_id: &str) -> Bytes {
    let echoed = (last_event_id.len() <= MAX_ECHOED_ID).then_some(last_event_id);
    let data = serde_json::json!({ "lastEventId": echoed }).to_string();
    encode::Event::new(&data).name(RESET_EVENT).encode_checked()
}

impl Hub {
    /// Starts building a hub on `backend`.
    pub fn builder(backend: impl FanoutBackend) -> HubBuilder {
        Self::builder_arc(Arc::new(backend))
    }

    /// Starts building a hub on a shared backend.
    pub fn builder_arc(backend: Arc<dyn FanoutBackend>) -> HubBuilder {
        HubBuilder {
            backend,
            repository: None,
            config: HubConfig::default(),
        }
    }

    /// Publishes an event to its session's streams, or to every stream when it has no session, on
    /// whichever instances they are. Returns the event's id once the backend has it.
    pub async fn publish(&self, event: SendSseEvent) -> Result<EventId, PublishError> {
        let started = Instant::now();
        let result = self.publish_inner(&event).await;
        let stats = &self.inner.shared.stats;
        stats.publish_latency.record(started.elapsed());
        match &result {
            Ok(id) => {
                Stats::bump(&stats.published);
                tracing::debug!(
                    event_id = %id,
                    instance = %self.inner.shared.config.instance_id,
                    event = %event.event_name,
                    "published"
                );
            }
            Err(error) => {
                Stats::bump(&stats.publish_failed);
                tracing::debug!(%error, event = %event.event_name, "publish failed");
            }
        }
        result
    }

    async fn publish_inner(&self, event: &SendSseEvent) -> Result<EventId, PublishError> {
        let config = &self.inner.shared.config;
        if let Some(tracker) = &self.inner.shared.presence
            && tracker.event_name() == Some(event.event_name.as_str())
        {
            return Err(PublishError::Reserved(event.event_name.clone()));
        }
        if let (Some(id), Some(log)) = (&event.id, &self.inner.shared.replay)
            && lock(log).contains(id)
        {
            return Err(PublishError::DuplicateId(id.clone()));
        }
        let (id, bytes) = Envelope::encode_event(event, &config.app_name, &config.instance_id)?;
        let span = tracing::debug_span!(
            "publish",
            event_id = %id,
            instance = %config.instance_id,
            backend = self.inner.backend.name(),
        );
        match (&event.session_id, self.inner.routes.is_some()) {
            (Some(session), true) => {
                // `start` checked that the backend has routes.
                let routes = self.inner.backend.routes().ok_or(BackendError::Config {
                    backend: self.inner.backend.name(),
                    message: "routes went away".to_owned(),
                })?;
                routes.publish_to(session, bytes).instrument(span).await?;
            }
            _ => self.inner.backend.publish(bytes).instrument(span).await?,
        }
        Ok(id)
    }

    /// Ends every stream of a session on every instance, each after the disconnect's goodbye
    /// event if it has one (see [`crate::disconnect`]). Returns the disconnect's id once the
    /// backend has it.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use futures_util::StreamExt;
    /// use serde_json::json;
    /// use sse_core::{Disconnect, EventFilter, Hub, LocalBackend};
    ///
    /// let hub = Hub::builder(LocalBackend::new()).start().await?;
    /// let mut stream = hub.open_stream(Some("u-42".into()), EventFilter::Any).await?;
    /// stream.next().await; // the opening comment
    ///
    /// hub.disconnect(Disconnect::session("u-42").goodbye("logged-out", json!(null))).await?;
    /// assert_eq!(&stream.next().await.unwrap()[..], b"event: logged-out\ndata: null\n\n");
    /// assert!(stream.next().await.is_none());
    /// # Ok(()) }
    /// ```
    pub async fn disconnect(&self, disconnect: Disconnect) -> Result<EventId, PublishError> {
        let config = &self.inner.shared.config;
        let (id, bytes) = disconnect.encode(&config.app_name, &config.instance_id)?;
        // The broadcast channel reaches every instance, whatever the routing.
        self.inner.backend.publish(bytes).await?;
        tracing::debug!(disconnect = %id, session = %disconnect.session_id, "disconnect published");
        Ok(id)
    }

    /// The sessions this instance receives disconnects for, as they arrive: what a cache of
    /// credentials (an auth callout's) lets go of. A receiver that falls behind by more than
    /// 1024 gets [`RecvError::Lagged`](tokio::sync::broadcast::error::RecvError::Lagged).
    pub fn disconnected(&self) -> tokio::sync::broadcast::Receiver<Arc<str>> {
        self.inner.shared.disconnected.subscribe()
    }

    /// A subscription with this hub's queue bounds, to adjust before [`open`](Self::open).
    pub fn subscription(&self, session_id: Option<Arc<str>>, events: EventFilter) -> Subscription {
        let config = &self.inner.shared.config;
        let mut subscription = Subscription::new(session_id, events, config.queue_size);
        subscription.max_queued_bytes = config.max_stream_bytes;
        subscription
    }

    /// Opens a stream for a session (or a session-less one, which gets broadcasts only).
    pub async fn open_stream(
        &self,
        session_id: Option<Arc<str>>,
        events: EventFilter,
    ) -> Result<EventStream, OpenError> {
        self.open(self.subscription(session_id, events)).await
    }

    /// Opens a stream for a prepared subscription.
    pub async fn open(&self, subscription: Subscription) -> Result<EventStream, OpenError> {
        self.open_after(subscription, None).await
    }

    /// Opens a stream that first replays, in order, every event after `last_event_id` that matches
    /// it (from this instance's history, whichever instance the client was on before), then goes
    /// on live with no gap and no duplicate at the seam. When the id is not in the history, the
    /// stream starts with one [`RESET_EVENT`](crate::replay::RESET_EVENT) instead.
    ///
    /// In [routed delivery](crate::route), the first stream of a session on this instance waits
    /// for its route to be subscribed (one broker round trip), so that whatever is published once
    /// this returns reaches it; otherwise it returns at once. A resume there that this instance's
    /// log cannot serve whole is read from the broker's history (see `route::resume`).
    pub async fn open_after(
        &self,
        subscription: Subscription,
        last_event_id: Option<&str>,
    ) -> Result<EventStream, OpenError> {
        self.check_limits(&subscription)?;
        let route = self.route(subscription.session_id.as_ref()).await?;
        let routing = matches!(self.inner.shared.config.routing, Routing::Session { .. });
        let cursor = last_event_id.map(|last| match routing {
            true => Cursor::parse(last),
            false => Cursor::plain(last),
        });
        let session = subscription.session_id.as_deref();
        let from = match (&route, &cursor) {
            (Some(lease), Some(cursor)) => {
                self.resume_from(lease.covered_since(), cursor, session)
                    .await?
            }
            // Broadcast routing: the log holds every event since the hub started, but one the
            // client had from a quicker instance may not have arrived here yet.
            (None, Some(cursor)) if self.not_arrived_yet(cursor) => {
                self.resume_from(self.inner.started, cursor, session)
                    .await?
            }
            (None, Some(cursor)) => {
                self.refuse_reset_while_down(cursor).await?;
                ResumeFrom::Local
            }
            _ => ResumeFrom::Local,
        };
        let resumed = last_event_id.zip(cursor.as_ref());
        self.register(subscription, resumed, route, from)
    }

    /// Where a resume in routed delivery replays from (see [`crate::route::resume`]); an error
    /// when the broker's history cannot be read now.
    async fn resume_from(
        &self,
        covered_since: Instant,
        cursor: &Cursor,
        session: Option<&str>,
    ) -> Result<ResumeFrom, OpenError> {
        let shared = &self.inner.shared;
        let (Some(log), Some(replay)) = (&shared.replay, shared.config.replay) else {
            return Ok(ResumeFrom::Local);
        };
        let accepts = |app: &str| shared.config.accepts(app);
        let resume = Resume {
            history: self.inner.backend.history(),
            log,
            max_age: replay.max_age,
            accepts: &accepts,
            stats: &shared.stats,
            cursors: matches!(shared.config.routing, Routing::Session { .. }),
            behind: shared.behind.since(),
        };
        let from = self
            .inner
            .resumes
            .decide(resume, cursor, session, covered_since)
            .await
            .map_err(|error| {
                tracing::warn!(%error, "reading the broker's history for a resume failed");
                OpenError::HistoryUnavailable(error.to_string())
            })?;
        tracing::debug!(
            target: "sse_core::resume",
            ?session, ?cursor, covered_for = ?covered_since.elapsed(), %from,
            "resume"
        );
        Ok(from)
    }

    /// Whether a resume's event is not in this instance's log but was published so recently
    /// that it may still be on its way here (see [`route::resume::may_still_arrive`]), and the
    /// broker's history can tell.
    fn not_arrived_yet(&self, cursor: &Cursor) -> bool {
        let shared = &self.inner.shared;
        match (
            &shared.replay,
            shared.config.replay,
            self.inner.backend.history(),
        ) {
            // While catching up after a gap, the log lacks what the gap holds, however old.
            (Some(log), Some(replay), Some(_)) => {
                shared.behind.since().is_some()
                    || crate::route::resume::may_still_arrive(&lock(log), cursor, replay.max_age)
            }
            _ => false,
        }
    }

    /// In broadcast routing, a resume whose event this instance's log lacks gets the reset
    /// event. While the hub is down (its subscription lost and reconnecting, or silent), the log
    /// may lack the event only because the subscription has not received it: the hub learns
    /// that it is behind, and since when, only when the subscription is back and reports its
    /// gap. Such a resume is refused as unavailable (the client comes back, here or elsewhere),
    /// never reset.
    async fn refuse_reset_while_down(&self, cursor: &Cursor) -> Result<(), OpenError> {
        let shared = &self.inner.shared;
        let (Some(log), Some(_)) = (&shared.replay, self.inner.backend.history()) else {
            return Ok(());
        };
        if lock(log).contains(&cursor.event) {
            return Ok(());
        }
        let health = self.health().await;
        if health.up {
            return Ok(());
        }
        Err(OpenError::HistoryUnavailable(format!(
            "this instance is down ({}): it cannot tell whether the event is gone",
            health.detail.as_deref().unwrap_or("no detail")
        )))
    }

    /// Holds the session's route for a new stream, in routed delivery.
    async fn route(&self, session: Option<&Arc<str>>) -> Result<Option<RouteLease>, OpenError> {
        match (&self.inner.routes, session) {
            (Some(routes), Some(session)) => routes
                .acquire(session)
                .await
                .map(Some)
                .map_err(OpenError::RouteUnavailable),
            _ => Ok(None),
        }
    }

    fn register(
        &self,
        subscription: Subscription,
        resumed: Option<(&str, &Cursor)>,
        route: Option<RouteLease>,
        from: ResumeFrom,
    ) -> Result<EventStream, OpenError> {
        let shared = &self.inner.shared;
        let mut prelude = vec![shared.opening.clone()];
        let mut replayed = Vec::new();
        // In session routing, a session's stream writes its place in the routed source into
        // broadcasts' ids (see `route::cursor`): where it starts.
        let routing = matches!(shared.config.routing, Routing::Session { .. });
        let mut routed_from = (routing && subscription.session_id.is_some())
            .then(|| cursor::since(std::time::SystemTime::now()));
        let lifetime = subscription.lifetime;
        let presence = shared
            .presence
            .as_ref()
            .zip(subscription.session_id.clone())
            .map(|(tracker, session)| tracker.track(session, &subscription.events));
        let emitter = match resumed {
            None => shared.repository.register(subscription),
            Some((last, cursor)) => {
                let session = subscription.session_id.clone();
                let events = subscription.events.clone();
                // Registering under the log's lock, which the receiving task holds from appending
                // an envelope until it is delivered: what is in the snapshot is not delivered live
                // again, and what is delivered live is not in the snapshot.
                let (emitter, replay) = match &shared.replay {
                    Some(log) => {
                        let mut log = lock(log);
                        let emitter = shared.repository.register(subscription);
                        let replay = match &from {
                            ResumeFrom::Local => {
                                if let Some(from) = &mut routed_from {
                                    *from = cursor.routed_part(log.session_of(&cursor.event));
                                }
                                log.since_cursor(
                                    cursor,
                                    session.as_deref(),
                                    &events,
                                    Instant::now(),
                                )
                            }
                            ResumeFrom::Broker(read) => {
                                if let Some(from) = &mut routed_from {
                                    *from = cursor.routed_part(read.session_of(&cursor.event));
                                }
                                let (replay, in_flight) =
                                    read.replay(cursor, session.as_deref(), &events, &log);
                                replayed = in_flight;
                                replay
                            }
                            ResumeFrom::Unknown => Replay::Unknown,
                        };
                        (emitter, replay)
                    }
                    None => (shared.repository.register(subscription), Replay::Unknown),
                };
                match replay {
                    Replay::Frames {
                        frames,
                        from_broker,
                    } => {
                        Stats::bump(if from_broker {
                            &shared.stats.replays_broker
                        } else {
                            &shared.stats.replays_local
                        });
                        Stats::add(&shared.stats.replayed, frames.len());
                        prelude.extend(frames);
                    }
                    Replay::Unknown => {
                        Stats::bump(&shared.stats.replay_unknown);
                        prelude.push(reset_frame(last));
                    }
                }
                emitter
            }
        };
        Stats::bump(&shared.stats.streams_opened);
        let timeout = shared.config.emitter_timeout.map(|t| {
            // Up to 10 % earlier, so streams opened together spread their reconnects.
            t.mul_f64(1.0 - fastrand::f64() * 0.1)
        });
        let timeout = match (timeout, lifetime) {
            (Some(timeout), Some(lifetime)) => Some(timeout.min(lifetime)),
            (timeout, lifetime) => timeout.or(lifetime),
        };
        let mut stream = EventStream::new(
            emitter,
            prelude,
            shared.farewell.clone(),
            shared.config.heartbeat,
            timeout,
            shared.stats.clone(),
            route,
        );
        stream.skip_replayed(replayed);
        if let Some(lease) = presence {
            stream.hold(lease);
        }
        if let Some(from) = routed_from {
            stream.write_cursors(Cursors::new(from));
        }
        Ok(stream)
    }

    fn check_limits(&self, subscription: &Subscription) -> Result<(), OpenError> {
        let shared = &self.inner.shared;
        if let Some(max) = shared.config.max_streams
            && self.open_streams() >= max
        {
            Stats::bump(&shared.stats.rejected_instance_limit);
            return Err(OpenError::TooManyStreams { max });
        }
        if let (Some(max), Some(session)) = (
            shared.config.max_streams_per_session,
            subscription.session_id.as_deref(),
        ) && shared.repository.count_session(session) >= max
        {
            Stats::bump(&shared.stats.rejected_session_limit);
            return Err(OpenError::TooManyForSession { max });
        }
        Ok(())
    }

    /// Streams open on this instance: from opening until the HTTP layer drops them, so a stream
    /// closed as slow counts until its memory is let go.
    pub fn open_streams(&self) -> usize {
        let held = self.inner.shared.stats.streams_held.load(Ordering::Acquire);
        usize::try_from(held).unwrap_or(usize::MAX)
    }

    /// The cluster's presence, when this hub tracks it (see [`crate::presence`]).
    pub fn presence(&self) -> Option<Presence> {
        self.inner.shared.presence.as_ref().map(|t| t.handle())
    }

    /// Sessions holding a route on this instance in [routed delivery](crate::route) (those
    /// lingering after their last stream included); 0 in broadcast routing.
    pub fn routed_sessions(&self) -> usize {
        self.inner.routes.as_ref().map_or(0, |r| r.sessions())
    }

    /// Routes the backend is subscribed to now (sessions or partitions), when it routes.
    pub fn backend_routes(&self) -> Option<usize> {
        self.inner
            .routes
            .as_ref()
            .and(self.inner.backend.routes())
            .map(|r| r.subscribed())
    }

    /// How long subscribing a session's route took for the streams that waited for it, as a
    /// histogram (for `/metrics`).
    pub fn route_subscribe_latency(&self) -> LatencySnapshot {
        self.inner.shared.stats.route_subscribe_latency.snapshot()
    }

    /// The backend's health.
    pub async fn health(&self) -> Health {
        if let Some(reason) = self.inner.shared.prober.as_ref().and_then(Prober::down) {
            return Health::down(reason);
        }
        if let Some(reason) = self.inner.shared.behind.down() {
            return Health::down(reason);
        }
        self.inner.backend.health().await
    }

    /// How often the backend re-established a lost broker connection.
    pub fn backend_reconnects(&self) -> u64 {
        self.inner.backend.reconnects()
    }

    /// The backend's name.
    pub fn backend_name(&self) -> &'static str {
        self.inner.backend.name()
    }

    /// The configuration.
    pub fn config(&self) -> &HubConfig {
        &self.inner.shared.config
    }

    /// The counters.
    pub fn stats(&self) -> StatsSnapshot {
        self.inner.shared.stats.snapshot()
    }

    /// How long [`publish`](Self::publish) took, as a histogram (for `/metrics`).
    pub fn publish_latency(&self) -> LatencySnapshot {
        self.inner.shared.stats.publish_latency.snapshot()
    }

    /// How long reading the broker's history took, as a histogram (for `/metrics`).
    pub fn history_read_latency(&self) -> LatencySnapshot {
        self.inner.shared.stats.history_read_latency.snapshot()
    }

    /// Ends every open stream (each after its queued frames), as for shutdown. Streams opened
    /// later are not affected.
    pub fn close_streams(&self) {
        self.inner
            .shared
            .repository
            .close_all(CloseReason::Shutdown);
    }

    /// Ends every stream, stops receiving and closes the backend. The hub's tasks have ended
    /// (and dropped their subscription) before the backend is closed, so a backend can let go
    /// of its broker connections while the broker is still there.
    pub async fn shutdown(&self) -> Result<(), BackendError> {
        self.close_streams();
        self.inner.stop.cancel();
        if tokio::time::timeout(TASKS_END, self.inner.tasks.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                after = ?TASKS_END,
                "the hub's receiving tasks did not end; closing the backend under them"
            );
        }
        // After the presence task ended: nothing of this instance's follows its leave.
        if let Some(tracker) = &self.inner.shared.presence {
            tracker.leave(self.inner.backend.as_ref()).await;
        }
        self.inner.backend.close().await
    }
}

async fn consume(
    shared: Arc<Shared>,
    backend: Arc<dyn FanoutBackend>,
    mut stream: BackendStream,
    stop: CancellationToken,
) {
    // The last envelope received live on each lane: where a catch-up after a gap finds its
    // place (see [`crate::catch_up`]).
    let mut last_live = catch_up::LastLive::default();
    let mut probe_tick = tokio::time::interval(
        shared
            .prober
            .as_ref()
            .map_or(Duration::from_secs(3600), Prober::tick),
    );
    probe_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // When the subscription last delivered: what the probe measures silence from, and where a
    // catch-up after a failed probe begins.
    let mut heard = Instant::now();
    loop {
        let message = tokio::select! {
            biased;
            _ = stop.cancelled() => return,
            message = stream.next() => message,
            _ = probe_tick.tick(), if shared.prober.is_some() => {
                if let Some(renewed) = shared.probe(backend.as_ref(), heard, &last_live, &stop).await {
                    stream = renewed;
                    heard = Instant::now();
                }
                continue;
            }
        };
        if message.is_some() {
            heard = Instant::now();
        }
        match message {
            Some(Received::Envelope(bytes)) if probe::is_probe(&bytes) => {}
            Some(Received::Envelope(bytes)) => {
                shared.receive(&bytes, Source::Live);
                last_live.received(0, bytes);
            }
            Some(Received::OnLane { lane, envelope }) => {
                shared.receive(&envelope, Source::Live);
                last_live.received(lane, envelope);
            }
            Some(Received::Gap { since }) => {
                shared
                    .catch_up(backend.as_ref(), since, &last_live, &stop)
                    .await;
            }
            None => {
                tracing::error!(
                    "the backend's subscription ended; this instance receives no more events"
                );
                return;
            }
        }
    }
}

impl Shared {
    /// One step of the delivery probe (see [`crate::probe`]): sends a probe when the
    /// subscription has been silent, and when one did not come back, subscribes again (the
    /// new subscription is returned), and reads what was missed since `heard` from the
    /// history.
    async fn probe(
        &self,
        backend: &dyn FanoutBackend,
        heard: Instant,
        last_live: &catch_up::LastLive,
        stop: &CancellationToken,
    ) -> Option<BackendStream> {
        let prober = self.prober.as_ref()?;
        match prober.step(heard) {
            Step::Wait => None,
            Step::Send(probe) => {
                Stats::bump(&self.stats.probes);
                if let Err(error) = backend.publish(probe).await {
                    tracing::debug!(%error, "publishing a delivery probe failed");
                }
                None
            }
            Step::Failed => {
                Stats::bump(&self.stats.probe_failures);
                tracing::warn!(
                    backend = backend.name(),
                    instance = %self.config.instance_id,
                    "a delivery probe did not come back: the subscription delivers nothing; \
                     subscribing again"
                );
                let mut wait = Duration::from_millis(100);
                let renewed = loop {
                    tokio::select! {
                        () = stop.cancelled() => return None,
                        subscribed = backend.subscribe() => match subscribed {
                            Ok(stream) => break stream,
                            Err(error) => tracing::debug!(%error, "subscribing again failed"),
                        },
                    }
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(Duration::from_secs(5));
                };
                let now = std::time::SystemTime::now();
                let heard_at = now.checked_sub(heard.elapsed()).unwrap_or(now);
                let since = heard_at
                    .checked_sub(catch_up::PROBE_MARGIN)
                    .unwrap_or(heard_at);
                self.catch_up(backend, since, last_live, stop).await;
                prober.restored();
                tracing::info!(instance = %self.config.instance_id, "subscribed again after a failed delivery probe");
                Some(renewed)
            }
        }
    }
}

impl Shared {
    /// Ends the streams a received disconnect names (see [`crate::disconnect`]).
    fn disconnect(&self, disconnect: disconnect::Received, id: &str) {
        Stats::bump(&self.stats.disconnects);
        let ended = self.repository.close_session(
            &disconnect.session,
            disconnect.opened_before,
            disconnect.goodbye.as_ref(),
        );
        tracing::debug!(
            disconnect = id,
            session = %disconnect.session,
            ended,
            instance = %self.config.instance_id,
            "session disconnected"
        );
        // No receiver is not an error: nothing caches credentials here.
        let _ = self.disconnected.send(disconnect.session);
    }

    /// Delivers what the subscription missed in a gap, read from the history (see
    /// [`crate::catch_up`]), before anything received after the gap: each lane read on its own,
    /// from after the last envelope received live on it.
    async fn catch_up(
        &self,
        backend: &dyn FanoutBackend,
        since: std::time::SystemTime,
        last_live: &catch_up::LastLive,
        stop: &CancellationToken,
    ) {
        Stats::bump(&self.stats.gaps);
        let _behind = self.behind.enter(since);
        let Some(history) = backend.history() else {
            Stats::bump(&self.stats.gaps_unrecovered);
            self.presence_missed();
            tracing::warn!(
                backend = backend.name(),
                "the subscription may have missed envelopes, and there is no history to read \
                 them from"
            );
            return;
        };
        let started = Instant::now();
        let mut read_in_all = 0;
        let mut lanes = Vec::new();
        for lane in 0..history.lanes().max(1) {
            Stats::bump(&self.stats.history_reads);
            let mut read = match catch_up::read(history, lane, since, &self.behind, stop).await {
                catch_up::Read::Envelopes(read) => read,
                catch_up::Read::Stopped => return,
                catch_up::Read::Failed(error) => {
                    Stats::bump(&self.stats.history_read_failed);
                    Stats::bump(&self.stats.gaps_unrecovered);
                    self.presence_missed();
                    tracing::warn!(
                        %error,
                        lane,
                        "reading the history after a gap failed, and the failure is not \
                         temporary; envelopes published meanwhile may be missing on this instance"
                    );
                    return;
                }
            };
            read_in_all += read.len();
            let from = catch_up::missed_from(&read, last_live.id(lane).as_deref());
            lanes.push(read.split_off(from));
        }
        let missed = catch_up::by_publish_time(lanes);
        for bytes in &missed {
            self.receive(bytes, Source::CatchUp);
        }
        let missed = missed.len();
        self.stats.history_read_latency.record(started.elapsed());
        tracing::info!(
            read = read_in_all,
            after_last_received = missed,
            took = ?started.elapsed(),
            instance = %self.config.instance_id,
            "caught up from the history after a gap"
        );
    }

    /// Presence messages may be among what a gap lost for good: presence asks for the state
    /// again rather than go on from a copy that may differ from the others'.
    fn presence_missed(&self) {
        if let Some(tracker) = &self.presence {
            tracker.resync();
        }
    }

    /// Reads the broker's history of the last `max_age` into the replay log (see
    /// [`crate::history`]); what arrives live afterwards under an id read here is a duplicate.
    async fn load_history(
        &self,
        history: &dyn history::BrokerHistory,
        max_age: Duration,
    ) -> Result<(), BackendError> {
        let since = std::time::SystemTime::now()
            .checked_sub(max_age)
            .unwrap_or(std::time::UNIX_EPOCH);
        // A broker that is back may refuse reads for a moment (a JetStream replica still
        // copying its store): read again, as a catch-up does. What a failed attempt delivered
        // is in the log, and comes again as a duplicate.
        let mut backoff = catch_up::Backoff::until(catch_up::DOWN_AFTER);
        loop {
            let read = history::read_into(history, since, |bytes| {
                self.receive(bytes, Source::Broker);
            })
            .await;
            Stats::bump(&self.stats.history_reads);
            match read {
                Ok(report) => {
                    self.stats.history_read_latency.record(report.took);
                    tracing::info!(
                        envelopes = report.envelopes,
                        took = ?report.took,
                        instance = %self.config.instance_id,
                        "history loaded from the broker"
                    );
                    return Ok(());
                }
                Err(error) => {
                    Stats::bump(&self.stats.history_read_failed);
                    let Some(wait) = backoff.after(&error) else {
                        return Err(error);
                    };
                    tracing::debug!(%error, ?wait, "loading the history failed; trying again");
                    tokio::time::sleep(wait).await;
                }
            }
        }
    }

    fn receive(&self, bytes: &[u8], source: Source) {
        if probe::is_probe(bytes) {
            return; // read back from a history: not an event
        }
        if presence::is_presence(bytes) {
            // Presence starts from the cluster's state, not from the history read at start.
            if let (Some(tracker), false) = (&self.presence, source == Source::Broker) {
                tracker.control(bytes);
            }
            return;
        }
        Stats::bump(match source {
            Source::Live => &self.stats.received,
            Source::Broker => &self.stats.history_loaded,
            Source::CatchUp => &self.stats.caught_up,
        });
        let envelope = match Envelope::decode_ref(bytes) {
            Ok(envelope) => envelope,
            Err(error) => {
                Stats::bump(&self.stats.malformed);
                if let Some(held_back) = self.malformed_log.allow(Duration::from_secs(1)) {
                    tracing::warn!(
                        %error,
                        len = bytes.len(),
                        held_back,
                        "skipping a malformed envelope (one such line a second at most; \
                         sse_events_dropped_total{{reason=\"malformed\"}} counts them all)"
                    );
                }
                return;
            }
        };
        if !self.config.accepts(envelope.app()) {
            Stats::bump(&self.stats.dropped_other_app);
            tracing::trace!(
                event_id = envelope.id(),
                app = envelope.app(),
                "envelope of another app"
            );
            return;
        }
        if let (Some(tracker), false) = (&self.presence, source == Source::Broker)
            && !tracker.admits(&envelope)
        {
            Stats::bump(&self.stats.duplicates);
            tracing::debug!(
                event_id = envelope.id(),
                "a presence event of a transition undone or announced already; dropped"
            );
            return;
        }
        if let Some(disconnect) = disconnect::Received::of(&envelope) {
            // From the history read at start there is nothing to end yet.
            if source != Source::Broker {
                self.disconnect(disconnect, envelope.id());
            }
            return;
        }
        let session = envelope.session_id();
        if let (Source::CatchUp, Some(routes), Some(session)) = (source, &self.routes, session)
            && !catch_up::routed_here(routes.covered_since(session), envelope.ts())
        {
            tracing::trace!(
                event_id = envelope.id(),
                "caught up, published before its session's route was here; not delivered"
            );
            return;
        }
        // `decode_ref` validated it: every field encodes. In session routing the id is a
        // cursor over the stream's two sources (see `route::cursor`).
        let routed = matches!(self.config.routing, Routing::Session { .. });
        let frame = match (routed, session) {
            (false, _) => envelope.frame(),
            (true, None) => envelope.frame_as(&cursor::broadcast_id(envelope.id())),
            (true, Some(_)) => {
                let last = self
                    .last_broadcast
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner);
                envelope.frame_as(&cursor::routed_id(envelope.id(), &last))
            }
        };
        let _span = tracing::debug_span!(
            "deliver",
            event_id = envelope.id(),
            instance = %self.config.instance_id,
            origin = envelope.origin().unwrap_or(""),
        )
        .entered();
        let event_name = envelope.event_name();
        let target = session.map_or(Target::Broadcast, Target::Session);
        let report = match &self.replay {
            Some(log) => {
                let at = match source {
                    Source::Live | Source::CatchUp => Instant::now(),
                    Source::Broker => published_at(envelope.ts()),
                };
                let mut log = lock(log);
                if log.push(envelope.id(), session, event_name, &frame, source, at)
                    == Pushed::Duplicate
                {
                    Stats::bump(&self.stats.duplicates);
                    tracing::debug!(event_id = envelope.id(), "already delivered; skipped");
                    return;
                }
                self.repository.deliver(target, event_name, &frame)
            }
            None => self.repository.deliver(target, event_name, &frame),
        };
        if routed && session.is_none() {
            *self
                .last_broadcast
                .lock()
                .unwrap_or_else(PoisonError::into_inner) =
                cursor::escape(envelope.id()).into_owned();
        }
        Stats::add(&self.stats.delivered, report.queued);
        self.stats.closed_slow(report.closed_slow);
        if report.queued == 0 && session.is_some() && matches!(source, Source::Live) {
            Stats::bump(&self.stats.received_unmatched);
        }
        tracing::debug!(queued = report.queued, "delivered");
    }
}

/// The monotonic time at which an envelope read from history was published, from the `ts` its
/// publisher wrote (now when it has none, or claims the future).
fn published_at(ts: Option<u64>) -> Instant {
    let now = Instant::now();
    let Some(ts) = ts else { return now };
    let age = history::unix_millis(std::time::SystemTime::now()).saturating_sub(ts);
    now.checked_sub(Duration::from_millis(age)).unwrap_or(now)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::local::LocalBackend;
    use serde_json::json;
    use tokio::time::Instant;

    async fn next(stream: &mut EventStream) -> String {
        let frame = tokio::time::timeout(Duration::from_secs(5), stream.next())
            .await
            .unwrap()
            .unwrap();
        String::from_utf8(frame.to_vec()).unwrap()
    }

    /// For paused-clock tests, where a timeout would fire before the stream's own timers.
    async fn next_paused(stream: &mut EventStream) -> String {
        String::from_utf8(stream.next().await.unwrap().to_vec()).unwrap()
    }

    #[tokio::test]
    async fn publish_reaches_the_sessions_stream_only() {
        let hub = Hub::builder(LocalBackend::new()).start().await.unwrap();
        let mut s1 = hub
            .open_stream(Some("s1".into()), EventFilter::parse("e").unwrap())
            .await
            .unwrap();
        let mut s2 = hub
            .open_stream(Some("s2".into()), EventFilter::parse("e").unwrap())
            .await
            .unwrap();
        assert_eq!(next(&mut s1).await, ": ok\nretry: 3000\n");
        assert_eq!(next(&mut s2).await, ": ok\nretry: 3000\n");
        let id = hub
            .publish(SendSseEvent::new("e", json!("hi")).to_session("s1"))
            .await
            .unwrap();
        assert_eq!(
            next(&mut s1).await,
            format!("id: {id}\nevent: e\ndata: hi\n\n")
        );
        hub.publish(SendSseEvent::new("e", json!("all")))
            .await
            .unwrap();
        assert!(next(&mut s1).await.ends_with("data: all\n\n"));
        assert!(next(&mut s2).await.ends_with("data: all\n\n"));
        let stats = hub.stats();
        assert_eq!(
            (stats.published, stats.received, stats.delivered),
            (2, 2, 3)
        );
    }

    #[tokio::test]
    async fn other_apps_are_dropped_unless_accepted() {
        let backend = LocalBackend::new();
        let orders = Hub::builder(backend.clone())
            .app_name("orders")
            .start()
            .await
            .unwrap();
        let billing = Hub::builder(backend.clone())
            .app_name("billing")
            .start()
            .await
            .unwrap();
        let any = Hub::builder(backend)
            .app_name("audit")
            .accept_apps(AcceptApps::Any)
            .start()
            .await
            .unwrap();
        let mut o = orders.open_stream(None, EventFilter::Any).await.unwrap();
        let mut b = billing.open_stream(None, EventFilter::Any).await.unwrap();
        let mut a = any.open_stream(None, EventFilter::Any).await.unwrap();
        for s in [&mut o, &mut b, &mut a] {
            next(s).await;
        }
        billing
            .publish(SendSseEvent::new("e", json!("from billing")))
            .await
            .unwrap();
        orders
            .publish(SendSseEvent::new("e", json!("from orders")))
            .await
            .unwrap();
        assert!(next(&mut o).await.contains("from orders"));
        assert!(next(&mut b).await.contains("from billing"));
        assert!(next(&mut a).await.contains("from billing"));
        assert!(next(&mut a).await.contains("from orders"));
        assert_eq!(orders.stats().dropped_other_app, 1);
    }

    #[tokio::test]
    async fn invalid_events_are_refused_before_the_backend() {
        let hub = Hub::builder(LocalBackend::new()).start().await.unwrap();
        let err = hub
            .publish(SendSseEvent::new("a\nb", json!(1)))
            .await
            .unwrap_err();
        assert!(matches!(err, PublishError::Invalid(_)), "{err}");
        assert_eq!(hub.stats().publish_failed, 1);
        assert_eq!(hub.stats().received, 0);
    }

    #[tokio::test]
    async fn malformed_envelopes_are_counted_and_skipped() {
        let backend = LocalBackend::new();
        let hub = Hub::builder(backend.clone()).start().await.unwrap();
        let mut s = hub.open_stream(None, EventFilter::Any).await.unwrap();
        next(&mut s).await;
        backend
            .publish(Bytes::from_static(b"garbage"))
            .await
            .unwrap();
        hub.publish(SendSseEvent::new("e", json!("after")))
            .await
            .unwrap();
        assert!(next(&mut s).await.contains("after"));
        assert_eq!(hub.stats().malformed, 1);
    }

    #[tokio::test(start_paused = true)]
    async fn heartbeat_when_idle_and_reset_by_events() {
        let hub = Hub::builder(LocalBackend::new())
            .heartbeat(Some(Duration::from_secs(15)))
            .emitter_timeout(None)
            .start()
            .await
            .unwrap();
        let mut s = hub.open_stream(None, EventFilter::Any).await.unwrap();
        next_paused(&mut s).await;
        let start = Instant::now();
        assert_eq!(next_paused(&mut s).await, ": heartbeat\n");
        assert_eq!(start.elapsed(), Duration::from_secs(15));
        tokio::time::sleep(Duration::from_secs(10)).await;
        hub.publish(SendSseEvent::new("e", json!(1))).await.unwrap();
        next_paused(&mut s).await;
        let event_at = Instant::now();
        assert_eq!(next_paused(&mut s).await, ": heartbeat\n");
        assert_eq!(event_at.elapsed(), Duration::from_secs(15));
    }

    #[tokio::test(start_paused = true)]
    async fn emitter_timeout_ends_the_stream_with_jitter() {
        let hub = Hub::builder(LocalBackend::new())
            .heartbeat(None)
            .emitter_timeout(Some(Duration::from_secs(100)))
            .start()
            .await
            .unwrap();
        let mut s = hub.open_stream(None, EventFilter::Any).await.unwrap();
        next(&mut s).await;
        let start = Instant::now();
        assert_eq!(s.next().await, None);
        let lived = start.elapsed();
        assert!(
            lived >= Duration::from_secs(90) && lived <= Duration::from_secs(100),
            "{lived:?}"
        );
        assert_eq!(s.close_reason(), Some(CloseReason::Timeout));
        drop(s);
        assert_eq!(hub.stats().closed_timeout, 1);
        assert_eq!(hub.open_streams(), 0);
    }

    #[tokio::test]
    async fn retry_is_sent_on_open_and_shutdown_ends_streams() {
        let hub = Hub::builder(LocalBackend::new())
            .retry(Some(Duration::from_millis(1500)))
            .start()
            .await
            .unwrap();
        let mut s = hub.open_stream(None, EventFilter::Any).await.unwrap();
        assert_eq!(next(&mut s).await, ": ok\nretry: 1500\n");
        hub.shutdown().await.unwrap();
        // The last frame tells the client to come back soon (to another instance).
        assert_eq!(s.next().await.as_deref(), Some(&b"retry: 1000\n"[..]));
        assert_eq!(s.next().await, None);
        drop(s);
        assert_eq!(hub.stats().closed_shutdown, 1);
        assert!(!hub.health().await.up);
    }

    #[tokio::test]
    async fn dropping_a_stream_counts_client_gone() {
        let hub = Hub::builder(LocalBackend::new()).start().await.unwrap();
        let s = hub
            .open_stream(Some("s".into()), EventFilter::Any)
            .await
            .unwrap();
        assert_eq!(hub.open_streams(), 1);
        drop(s);
        assert_eq!(hub.open_streams(), 0);
        assert_eq!(hub.stats().closed_client_gone, 1);
    }

    #[tokio::test]
    async fn resuming_replays_what_was_missed_then_goes_live() {
        let hub = Hub::builder(LocalBackend::new()).start().await.unwrap();
        let any = || EventFilter::Any;
        let mut first = hub.open_stream(Some("s1".into()), any()).await.unwrap();
        next(&mut first).await;
        let mut ids = Vec::new();
        for (i, session) in ["s1", "s2", "s1"].into_iter().enumerate() {
            let id = hub
                .publish(SendSseEvent::new("e", json!(i)).to_session(session))
                .await
                .unwrap();
            ids.push(id);
        }
        hub.publish(SendSseEvent::new("e", json!("all")))
            .await
            .unwrap();
        for _ in 0..3 {
            next(&mut first).await;
        }
        drop(first);
        // Back with the first id: s1's third event and the broadcast, not s2's.
        let sub = hub.subscription(Some("s1".into()), any());
        let mut resumed = hub.open_after(sub, Some(ids[0].as_str())).await.unwrap();
        next(&mut resumed).await;
        assert!(next(&mut resumed).await.contains("data: 2\n"));
        assert!(next(&mut resumed).await.contains("data: all\n"));
        hub.publish(SendSseEvent::new("e", json!("live")).to_session("s1"))
            .await
            .unwrap();
        assert!(next(&mut resumed).await.contains("data: live\n"));
        assert_eq!(hub.stats().replayed, 2);
    }

    #[tokio::test]
    async fn an_unknown_last_event_id_starts_with_the_reset_event() {
        let hub = Hub::builder(LocalBackend::new()).start().await.unwrap();
        let sub = hub.subscription(None, EventFilter::Any);
        let mut s = hub.open_after(sub, Some("gone\nforged: x")).await.unwrap();
        next(&mut s).await;
        assert_eq!(
            next(&mut s).await,
            "event: sse-fanout-reset\ndata: {\"lastEventId\":\"gone\\nforged: x\"}\n\n"
        );
        assert_eq!(hub.stats().replay_unknown, 1);
    }

    #[tokio::test]
    async fn an_oversized_last_event_id_is_not_echoed() {
        let hub = Hub::builder(LocalBackend::new()).start().await.unwrap();
        let longest = "a".repeat(MAX_ECHOED_ID);
        let sub = hub.subscription(None, EventFilter::Any);
        let mut s = hub.open_after(sub, Some(&longest)).await.unwrap();
        next(&mut s).await;
        assert!(
            next(&mut s).await.contains(&longest),
            "echoed up to the bound"
        );
        let sub = hub.subscription(None, EventFilter::Any);
        let mut s = hub
            .open_after(sub, Some(&"a".repeat(300_000)))
            .await
            .unwrap();
        next(&mut s).await;
        assert_eq!(
            next(&mut s).await,
            "event: sse-fanout-reset\ndata: {\"lastEventId\":null}\n\n"
        );
    }

    #[tokio::test]
    async fn stream_limits() {
        let hub = Hub::builder(LocalBackend::new())
            .stream_limits(Some(3), Some(2))
            .start()
            .await
            .unwrap();
        let a = hub
            .open_stream(Some("s".into()), EventFilter::Any)
            .await
            .unwrap();
        let _b = hub
            .open_stream(Some("s".into()), EventFilter::Any)
            .await
            .unwrap();
        assert_eq!(
            hub.open_stream(Some("s".into()), EventFilter::Any)
                .await
                .unwrap_err(),
            OpenError::TooManyForSession { max: 2 }
        );
        let _c = hub.open_stream(None, EventFilter::Any).await.unwrap();
        assert_eq!(
            hub.open_stream(None, EventFilter::Any).await.unwrap_err(),
            OpenError::TooManyStreams { max: 3 }
        );
        drop(a);
        hub.open_stream(Some("s".into()), EventFilter::Any)
            .await
            .unwrap();
        let stats = hub.stats();
        assert_eq!(
            (stats.rejected_instance_limit, stats.rejected_session_limit),
            (1, 1)
        );
    }
}
