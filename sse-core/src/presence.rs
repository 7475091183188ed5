//! Presence: which sessions have a stream open anywhere in the cluster, and (opt-in) one
//! `online` and one `offline` event per transition, for the whole cluster.
//!
//! # How it travels
//!
//! Over the backend's own broadcast channel, so it works on every backend (the local one
//! included) and with either [routing](crate::route): each instance publishes presence messages
//! (`{"ssePresence":…}`, see the `wire` module; never delivered to a stream):
//!
//! - a **delta** when its streams of some sessions changed, giving its absolute count per
//!   session (batched every 50 ms): traffic grows with opens and closes, not with sessions;
//! - a **beat** every [`PresenceConfig::interval`]: one small message per instance;
//! - a **snapshot** of the whole state, only to answer an instance that starts (or lost its
//!   state) and asked for it.
//!
//! Every instance applies the presence messages in the broadcast channel's order, which the
//! broker gives every instance alike (for Kafka: a topic of one partition). So every instance
//! that holds the state computes the same thing at the same message: which session has just
//! gone online or offline, and which one instance announces it (the one whose message caused
//! it, or, when that one does not hold the state yet or is gone, the synced instance of lowest
//! id). That is what makes each presence event **exactly once** without a lock in the broker:
//! two instances opening a session's first streams at once publish two deltas; the first one
//! in the order makes the transition, the second changes only a count.
//!
//! # Presence events
//!
//! With [`PresenceConfig::events`] set, a transition goes out as an ordinary broadcast event of
//! that name (with an id, in the replay log and the broker's history, to every stream that
//! listens to the name), with the payload `{"sessionId":"a","state":"online","transition":7}`.
//! A session goes `online` when its first stream opens anywhere, `offline` when its last one
//! closed everywhere and none opened again within [`PresenceConfig::linger`] (a reconnect in
//! the linger is no flap: no event at all). An event that an instance published but that came
//! after the transition was undone (a retried publish, a client back just as the linger ended)
//! is dropped by every instance alike: listeners see online and offline alternate, online
//! first, once each per transition. The event name is reserved: [`Hub::publish`](crate::Hub::publish)
//! refuses it. Every instance must have the same setting.
//!
//! # Crashes and partitions
//!
//! An instance that has not been heard from for three intervals is evicted by the others (only
//! by one that hears its own beats come back, so an instance that is itself cut off does not
//! evict the rest): its streams leave the state, and their sessions go offline after the
//! linger, so an `offline` event comes within [`PresenceConfig::offline_within`] of a crash. An
//! instance that was cut off and comes back reads what it missed from the broker's history (as
//! every subscription does), sees that it was evicted, asks for the state again and publishes
//! its streams again: their sessions come back online with one event each, nothing doubled.
//!
//! # Staleness
//!
//! A query answers from this instance's copy: it lags the truth by one trip through the broker
//! (plus up to 50 ms of batching). An instance that has just started answers only once it holds
//! the state ([`Presence::synced`]); the first instance of a cluster waits 1.5 intervals for
//! others to answer before it starts the state itself.

mod state;
mod wire;

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use state::{Action, Input, State, Unanswered};
pub use state::{PresenceCounts, SessionPresence};
pub(crate) use wire::is_presence;
use wire::{Body, Entry, Message};

use crate::backend::FanoutBackend;
use crate::envelope::{Envelope, EnvelopeRef};
use crate::event::SendSseEvent;
use crate::repository::EventFilter;

/// How often local changes are published, batched.
const FLUSH: Duration = Duration::from_millis(50);

/// Sessions one delta carries at most.
const DELTA_SESSIONS: usize = 500;

/// How long a sync request waits for its snapshot before it is asked again.
const SYNC_RETRY: Duration = Duration::from_secs(2);

/// Presence events published in one round of the presence task, at most.
const ANNOUNCE_BATCH: usize = 1024;

/// Presence events in flight at once.
const ANNOUNCE_CONCURRENCY: usize = 32;

/// Intervals of silence after which an instance is evicted.
const SILENT_INTERVALS: u32 = 3;

/// How presence works on this hub (see the [module docs](self)); the same on every instance.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct PresenceConfig {
    /// How often each instance says it is alive; three intervals of silence evict it.
    pub interval: Duration,
    /// How long a session with no stream left stays online before its `offline` event.
    pub linger: Duration,
    /// The event name of presence events; `None` sends none (the view still works).
    pub events: Option<String>,
}

impl Default for PresenceConfig {
    /// Beats every 2 s, a linger of 5 s, no presence events.
    fn default() -> Self {
        PresenceConfig {
            interval: Duration::from_secs(2),
            linger: Duration::from_secs(5),
            events: None,
        }
    }
}

impl PresenceConfig {
    /// Sends presence events under `event_name`.
    pub fn events(mut self, event_name: impl Into<String>) -> Self {
        self.events = Some(event_name.into());
        self
    }

    /// Beats every `interval`.
    pub fn interval(mut self, interval: Duration) -> Self {
        self.interval = interval;
        self
    }

    /// Lingers `linger` before an offline event.
    pub fn linger(mut self, linger: Duration) -> Self {
        self.linger = linger;
        self
    }

    /// The longest time from an instance's crash to its sessions' offline events: its silence
    /// is noticed after three intervals, checked once per interval, then the linger.
    ///
    /// ```
    /// use std::time::Duration;
    /// use sse_core::presence::PresenceConfig;
    /// let config = PresenceConfig::default();
    /// assert_eq!(config.offline_within(), Duration::from_secs(13));
    /// ```
    pub fn offline_within(&self) -> Duration {
        self.interval * (SILENT_INTERVALS + 1) + self.linger
    }
}

/// The cluster's presence as this instance knows it; from [`Hub::presence`](crate::Hub::presence).
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use std::time::Duration;
/// use sse_core::{EventFilter, Hub, LocalBackend};
/// use sse_core::presence::PresenceConfig;
///
/// let config = PresenceConfig::default().interval(Duration::from_millis(100));
/// let hub = Hub::builder(LocalBackend::new()).presence(Some(config)).start().await?;
/// let presence = hub.presence().expect("presence is on");
/// let _stream = hub.open_stream(Some("u-42".into()), EventFilter::Any).await?;
/// while !presence.is_online("u-42") {
///     tokio::time::sleep(Duration::from_millis(20)).await;
/// }
/// assert_eq!(presence.counts().sessions, 1);
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct Presence {
    tracker: Arc<Tracker>,
}

impl Presence {
    /// Whether `session_id` has a stream open on any instance.
    pub fn is_online(&self, session_id: &str) -> bool {
        self.tracker.state().session(session_id).online
    }

    /// One session, cluster-wide (offline with no streams when unknown).
    pub fn session(&self, session_id: &str) -> SessionPresence {
        self.tracker.state().session(session_id)
    }

    /// Sessions with a stream listening to `event_name` (by name, or to every name), in id
    /// order after `after`, at most `limit`: page on with the last id returned.
    pub fn sessions_for(
        &self,
        event_name: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Vec<SessionPresence> {
        self.tracker.state().listening(event_name, after, limit)
    }

    /// Sessions online, their streams and the instances, cluster-wide.
    pub fn counts(&self) -> PresenceCounts {
        self.tracker.state().counts()
    }

    /// Whether this instance holds the cluster's state yet (it does not in its first moments).
    pub fn synced(&self) -> bool {
        self.tracker.state().synced()
    }

    /// The event name presence events go out under, if they do.
    pub fn event_name(&self) -> Option<&str> {
        self.tracker.config.events.as_deref()
    }
}

/// This instance's own streams of one session.
#[derive(Debug, Default)]
struct Local {
    streams: u32,
    since: u64,
    /// Streams listening to every event name.
    any: u32,
    names: HashMap<Box<str>, u32>,
}

/// The streams of this instance, and the sessions whose change is not published yet.
#[derive(Debug, Default)]
struct Own {
    sessions: HashMap<Arc<str>, Local>,
    dirty: HashSet<Arc<str>>,
}

/// The presence capability of one hub: its replicated [`State`], its own streams, and what its
/// task has to publish.
#[derive(Debug)]
pub(crate) struct Tracker {
    config: PresenceConfig,
    app: String,
    me: String,
    inc: u64,
    state: Mutex<State>,
    own: Mutex<Own>,
    outbox: Mutex<Vec<Action>>,
    /// When each member was last heard from (this instance's clock).
    heard: Mutex<HashMap<Arc<str>, Instant>>,
    wake: Notify,
}

fn guard<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The payload of a presence event.
#[derive(serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct Announcement {
    session_id: String,
    state: String,
    transition: u64,
}

impl Tracker {
    pub(crate) fn new(config: PresenceConfig, app: &str, me: &str) -> Arc<Tracker> {
        let inc = fastrand::u64(..);
        Arc::new(Tracker {
            state: Mutex::new(State::new(me, inc, config.events.is_some())),
            config,
            app: app.to_owned(),
            me: me.to_owned(),
            inc,
            own: Mutex::default(),
            outbox: Mutex::default(),
            heard: Mutex::default(),
            wake: Notify::new(),
        })
    }

    pub(crate) fn handle(self: &Arc<Self>) -> Presence {
        Presence {
            tracker: self.clone(),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        guard(&self.state)
    }

    /// The event name presence events go out under.
    pub(crate) fn event_name(&self) -> Option<&str> {
        self.config.events.as_deref()
    }

    /// Applies a presence message received from the broadcast channel (live or caught up).
    pub(crate) fn control(&self, bytes: &[u8]) {
        let Some(message) = Message::decode(bytes) else {
            tracing::debug!("skipping a presence message this build does not read");
            return;
        };
        if message.app != self.app {
            return;
        }
        guard(&self.heard).insert(message.from.as_str().into(), Instant::now());
        self.apply(Input::Control(message));
    }

    /// The subscription lost messages for good (a gap with no history to read): ask for the
    /// state again.
    pub(crate) fn resync(&self) {
        guard(&self.outbox).push(Action::Resync);
        self.wake.notify_one();
    }

    /// Whether a received presence event is delivered: one whose transition was undone or
    /// announced already is dropped, alike on every instance. Other events pass.
    pub(crate) fn admits(&self, envelope: &EnvelopeRef<'_>) -> bool {
        if self.event_name() != Some(envelope.event_name())
            || envelope.app() != self.app
            || envelope.session_id().is_some()
        {
            return true;
        }
        let Ok(announcement) = serde_json::from_str::<Announcement>(envelope.payload().get())
        else {
            return true;
        };
        self.apply(Input::Announcement {
            session: announcement.session_id,
            online: announcement.state == "online",
            transition: announcement.transition,
        })
    }

    fn apply(&self, input: Input) -> bool {
        let mut actions = Vec::new();
        tracing::trace!(?input, "presence input");
        let delivered = self.state().apply(input, &mut actions);
        if !actions.is_empty() {
            tracing::debug!(?actions, "presence actions");
        }
        if !actions.is_empty() {
            guard(&self.outbox).extend(actions);
            self.wake.notify_one();
        }
        delivered
    }

    /// A stream of `session` opened here: held until the returned lease is dropped.
    pub(crate) fn track(self: &Arc<Self>, session: Arc<str>, events: &EventFilter) -> Lease {
        let names: Option<Box<[Box<str>]>> = match events {
            EventFilter::Any => None,
            EventFilter::Names(names) => Some(names.clone()),
        };
        {
            let mut own = guard(&self.own);
            let local = own.sessions.entry(session.clone()).or_default();
            if local.streams == 0 {
                local.since = crate::history::unix_millis(std::time::SystemTime::now());
            }
            local.streams += 1;
            match &names {
                None => local.any += 1,
                Some(names) => {
                    for name in names.iter() {
                        *local.names.entry(name.clone()).or_default() += 1;
                    }
                }
            }
            own.dirty.insert(session.clone());
        }
        Lease {
            tracker: self.clone(),
            session,
            names,
        }
    }

    fn release(&self, session: &Arc<str>, names: Option<&[Box<str>]>) {
        let mut own = guard(&self.own);
        let Some(local) = own.sessions.get_mut(session) else {
            return;
        };
        local.streams = local.streams.saturating_sub(1);
        match names {
            None => local.any = local.any.saturating_sub(1),
            Some(names) => {
                for name in names {
                    if let Some(count) = local.names.get_mut(name) {
                        *count -= 1;
                        if *count == 0 {
                            local.names.remove(name);
                        }
                    }
                }
            }
        }
        own.dirty.insert(session.clone());
    }

    /// Sessions whose delta did not go out: published again next round.
    fn changed_again(&self, sessions: Vec<Arc<str>>) {
        guard(&self.own).dirty.extend(sessions);
    }

    /// The deltas of what changed here since the last flush, each with its sessions; forgets
    /// sessions with no stream.
    fn take_deltas(&self) -> Vec<(Body, Vec<Arc<str>>)> {
        let mut own = guard(&self.own);
        let dirty: Vec<Arc<str>> = own.dirty.drain().collect();
        let entries: Vec<Entry> = dirty
            .iter()
            .map(|session| {
                let entry = match own.sessions.get(session) {
                    Some(local) if local.streams > 0 => Entry {
                        s: session.to_string(),
                        n: local.streams,
                        since: local.since,
                        e: (local.any == 0).then(|| {
                            let mut names: Vec<String> =
                                local.names.keys().map(|n| n.to_string()).collect();
                            names.sort();
                            names
                        }),
                    },
                    _ => Entry {
                        s: session.to_string(),
                        n: 0,
                        since: 0,
                        e: None,
                    },
                };
                if entry.n == 0 {
                    own.sessions.remove(session);
                }
                entry
            })
            .collect();
        entries
            .chunks(DELTA_SESSIONS)
            .zip(dirty.chunks(DELTA_SESSIONS))
            .map(|(chunk, sessions)| {
                (
                    Body::Delta {
                        sessions: chunk.to_vec(),
                    },
                    sessions.to_vec(),
                )
            })
            .collect()
    }

    /// Marks every own session to be published again.
    fn republish_all(&self) {
        let mut own = guard(&self.own);
        let all: Vec<Arc<str>> = own.sessions.keys().cloned().collect();
        own.dirty.extend(all);
    }

    fn message(&self, body: Body) -> Bytes {
        Message {
            app: self.app.clone(),
            from: self.me.clone(),
            inc: self.inc,
            body,
        }
        .encode()
    }

    /// The presence event of a transition this instance announces; its id is the same at
    /// each try, so that a publish that landed twice is dropped as a duplicate.
    fn announcement(&self, session: &str, online: bool, transition: u64) -> Option<Bytes> {
        let name = self.event_name()?;
        let payload = serde_json::json!({
            "sessionId": session,
            "state": if online { "online" } else { "offline" },
            "transition": transition,
        });
        let event = SendSseEvent::new(name, payload)
            .with_id(format!("presence-{:016x}-{transition}", self.inc));
        Envelope::encode_event(&event, &self.app, &self.me)
            .ok()
            .map(|(_, bytes)| bytes)
    }

    /// Publishes a `leave`, so that the others drop this instance's streams at once.
    pub(crate) async fn leave(&self, backend: &dyn FanoutBackend) {
        if let Err(error) = backend.publish(self.message(Body::Leave)).await {
            tracing::debug!(%error, "publishing the presence leave failed");
        }
    }
}

/// A stream's part in its session's presence: it counts until dropped.
#[derive(Debug)]
pub(crate) struct Lease {
    tracker: Arc<Tracker>,
    session: Arc<str>,
    names: Option<Box<[Box<str>]>>,
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.tracker.release(&self.session, self.names.as_deref());
    }
}

/// The presence task of one hub: publishes what changed here, beats, evicts the silent, asks
/// for the state and announces the transitions this instance decided.
pub(crate) async fn run(
    tracker: Arc<Tracker>,
    backend: Arc<dyn FanoutBackend>,
    stop: CancellationToken,
) {
    let interval = tracker.config.interval;
    let mut task = Task {
        tracker: tracker.clone(),
        backend,
        lingers: VecDeque::new(),
        announcing: VecDeque::new(),
        first_sync: Instant::now(),
        last_sync: Instant::now(),
        next_beat: Instant::now(),
        evicting: HashMap::new(),
    };
    task.ask_for_state().await;
    let mut tick = tokio::time::interval(FLUSH);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            () = tracker.wake.notified() => {}
            _ = tick.tick() => {}
        }
        // The beat first: however much else there is to publish, the others must not take
        // this instance for dead.
        let now = Instant::now();
        if now >= task.next_beat {
            task.next_beat = now + interval;
            let synced = tracker.state().synced();
            task.publish(Body::Beat { synced }).await;
            task.evict_silent().await;
        }
        let actions = std::mem::take(&mut *guard(&tracker.outbox));
        for action in actions {
            task.act(action).await;
        }
        for (delta, sessions) in tracker.take_deltas() {
            if !task.publish(delta).await {
                tracker.changed_again(sessions);
            }
        }
        task.lingers_due();
        task.announce().await;
        task.sync_unanswered().await;
    }
}

struct Task {
    tracker: Arc<Tracker>,
    backend: Arc<dyn FanoutBackend>,
    /// Offline events waiting for the linger: when, the session, its transition.
    lingers: VecDeque<(Instant, Arc<str>, u64)>,
    /// Transitions to announce (retried while the broker refuses).
    announcing: VecDeque<(Arc<str>, bool, u64)>,
    first_sync: Instant,
    last_sync: Instant,
    next_beat: Instant,
    /// When an eviction of a member was last published.
    evicting: HashMap<Arc<str>, Instant>,
}

impl Task {
    async fn act(&mut self, action: Action) {
        match action {
            Action::Announce {
                session,
                online,
                transition,
            } => self.announcing.push_back((session, online, transition)),
            Action::Linger {
                session,
                transition,
            } => self.lingers.push_back((
                Instant::now() + self.tracker.config.linger,
                session,
                transition,
            )),
            Action::Publish(body) => {
                self.publish(body).await;
            }
            Action::RepublishLocal => self.tracker.republish_all(),
            Action::Resync => {
                tracing::info!(
                    instance = %self.tracker.me,
                    "presence: this instance was evicted, refused or missed messages; asking for \
                     the state again"
                );
                self.tracker.state().rejoin();
                self.tracker.republish_all();
                self.first_sync = Instant::now();
                self.ask_for_state().await;
            }
        }
    }

    /// Publishes a presence message, trying a few times; whether it went out. A delta that
    /// did not is published again next round; a lost beat, sync request, snapshot or eviction
    /// is sent again when its time comes round.
    async fn publish(&self, body: Body) -> bool {
        let bytes = self.tracker.message(body);
        let mut wait = Duration::from_millis(50);
        for _ in 0..5 {
            match self.backend.publish(bytes.clone()).await {
                Ok(()) => return true,
                Err(error) => {
                    tracing::debug!(%error, "publishing a presence message failed");
                    tokio::time::sleep(wait).await;
                    wait *= 2;
                }
            }
        }
        tracing::warn!(
            "a presence message could not be published; presence may lag until the broker is back"
        );
        false
    }

    async fn ask_for_state(&mut self) {
        self.last_sync = Instant::now();
        self.publish(Body::Sync).await;
    }

    fn lingers_due(&mut self) {
        let now = Instant::now();
        while self.lingers.front().is_some_and(|(at, _, _)| *at <= now) {
            if let Some((_, session, transition)) = self.lingers.pop_front() {
                self.announcing.push_back((session, false, transition));
            }
        }
    }

    /// Publishes the presence events of the transitions still this instance's to announce: up
    /// to [`ANNOUNCE_BATCH`] a round, [`ANNOUNCE_CONCURRENCY`] at once (a crash can leave
    /// thousands to announce, and beats must go on meanwhile); those the broker refused are
    /// tried again next round.
    async fn announce(&mut self) {
        use futures_util::StreamExt;
        let batch: Vec<(Arc<str>, bool, u64)> = {
            let state = self.tracker.state();
            let take = self.announcing.len().min(ANNOUNCE_BATCH);
            self.announcing
                .drain(..take)
                .filter(|(session, online, transition)| {
                    state.still_pending(session, *online, *transition)
                })
                .collect()
        };
        let tracker = &self.tracker;
        let backend = &self.backend;
        let failed: Vec<(Arc<str>, bool, u64)> = futures_util::stream::iter(batch)
            .map(|(session, online, transition)| async move {
                let bytes = tracker.announcement(&session, online, transition)?;
                match backend.publish(bytes).await {
                    Ok(()) => {
                        tracing::debug!(%session, online, transition, "presence event published");
                        None
                    }
                    Err(error) => {
                        tracing::debug!(%error, "publishing a presence event failed; trying again");
                        Some((session, online, transition))
                    }
                }
            })
            .buffer_unordered(ANNOUNCE_CONCURRENCY)
            .filter_map(std::future::ready)
            .collect()
            .await;
        self.announcing.extend(failed);
    }

    /// Evicts members silent for three intervals, when this instance hears its own beats (an
    /// instance that is cut off itself evicts nobody).
    async fn evict_silent(&mut self) {
        let interval = self.tracker.config.interval;
        let now = Instant::now();
        let members = self.tracker.state().members();
        let silent: Vec<(Arc<str>, u64)> = {
            let mut heard = guard(&self.tracker.heard);
            let me_heard = heard
                .get(self.tracker.me.as_str())
                .is_some_and(|at| now.duration_since(*at) < interval * 2);
            if !me_heard {
                return;
            }
            heard.retain(|id, _| {
                **id == *self.tracker.me || members.iter().any(|(member, _)| member == id)
            });
            members
                .into_iter()
                .filter(|(id, _)| **id != *self.tracker.me)
                .filter(|(id, _)| {
                    let at = heard.entry(id.clone()).or_insert(now);
                    now.duration_since(*at) > interval * SILENT_INTERVALS
                })
                .collect()
        };
        for (who, inc) in silent {
            if self
                .evicting
                .get(&who)
                .is_some_and(|at| now.duration_since(*at) < interval)
            {
                continue;
            }
            tracing::info!(instance = %self.tracker.me, evicted = %who, "presence: evicting a silent instance");
            self.evicting.insert(who.clone(), now);
            self.publish(Body::Evict {
                who: who.to_string(),
                who_inc: inc,
            })
            .await;
        }
        self.evicting
            .retain(|_, at| now.duration_since(*at) < interval * 10);
    }

    /// A sync request that got no snapshot: asked again, or, with nobody else in the cluster
    /// for 1.5 intervals, the state starts here.
    async fn sync_unanswered(&mut self) {
        if self.tracker.state().synced()
            || self.last_sync.elapsed() < SYNC_RETRY.min(self.tracker.config.interval)
        {
            return;
        }
        if self.tracker.state().declared_unconfirmed() {
            self.last_sync = Instant::now();
            self.publish(Body::Synced).await;
            return;
        }
        let may_declare = self.first_sync.elapsed() >= self.tracker.config.interval * 3 / 2;
        let mut actions = Vec::new();
        let outcome = self.tracker.state().unanswered(may_declare, &mut actions);
        match outcome {
            Unanswered::AskAgain => self.ask_for_state().await,
            Unanswered::Declared => {
                self.last_sync = Instant::now();
                tracing::info!(instance = %self.tracker.me, "presence: no other instance answered; this one starts the cluster's state");
            }
            Unanswered::Wait => {}
        }
        for action in actions {
            self.act(action).await;
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    /// Two hubs on one (local) backend, as two instances on one broker.
    async fn two_hubs(events: bool) -> (crate::Hub, crate::Hub) {
        let backend: Arc<dyn FanoutBackend> = Arc::new(crate::LocalBackend::new());
        let mut config = PresenceConfig::default()
            .interval(Duration::from_millis(100))
            .linger(Duration::from_millis(200));
        if events {
            config = config.events("presence");
        }
        let start = |id: &str| {
            crate::Hub::builder_arc(backend.clone())
                .instance_id(id)
                .presence(Some(config.clone()))
                .start()
        };
        (start("a").await.unwrap(), start("b").await.unwrap())
    }

    async fn until(what: &str, check: impl Fn() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while !check() {
            assert!(Instant::now() < deadline, "{what}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    #[tokio::test]
    async fn a_hub_that_shuts_down_takes_its_sessions_with_it_at_once() {
        let (a, b) = two_hubs(false).await;
        let (pa, pb) = (a.presence().unwrap(), b.presence().unwrap());
        until("both synced", || pa.synced() && pb.synced()).await;
        let _stream = a
            .open_stream(Some("u1".into()), EventFilter::Any)
            .await
            .unwrap();
        until("b sees u1", || pb.is_online("u1")).await;
        assert_eq!(pb.counts().instances, 2);
        let left = Instant::now();
        a.shutdown().await.unwrap();
        until("b sees a leave", || {
            pb.counts().instances == 1 && !pb.is_online("u1")
        })
        .await;
        // Well before an eviction (three intervals of silence) could have done it.
        assert!(
            left.elapsed() < Duration::from_millis(300),
            "{:?}",
            left.elapsed()
        );
    }

    #[tokio::test]
    async fn presence_events_reach_listeners_and_the_name_is_reserved() {
        let (a, b) = two_hubs(true).await;
        let (pa, pb) = (a.presence().unwrap(), b.presence().unwrap());
        until("both synced", || pa.synced() && pb.synced()).await;
        let mut listener = b
            .open_stream(None, EventFilter::parse("presence").unwrap())
            .await
            .unwrap();
        let _opening = futures_util::StreamExt::next(&mut listener).await;
        let stream = a
            .open_stream(Some("u1".into()), EventFilter::Any)
            .await
            .unwrap();
        let online = futures_util::StreamExt::next(&mut listener).await.unwrap();
        let online = String::from_utf8_lossy(&online);
        assert!(online.contains("event: presence\n"), "{online}");
        assert!(
            online.contains(r#"data: {"sessionId":"u1","state":"online","transition":1}"#),
            "{online}"
        );
        drop(stream);
        let offline = futures_util::StreamExt::next(&mut listener).await.unwrap();
        assert!(String::from_utf8_lossy(&offline).contains(r#""state":"offline""#));
        let refused = a
            .publish(SendSseEvent::new(
                "presence",
                serde_json::json!({"sessionId": "u1"}),
            ))
            .await;
        assert!(
            matches!(refused, Err(crate::PublishError::Reserved(_))),
            "{refused:?}"
        );
    }

    #[test]
    fn deltas_give_absolute_counts_and_names() {
        let tracker = Tracker::new(PresenceConfig::default(), "a", "i1");
        let chat = EventFilter::parse("chat,news").unwrap();
        let one = tracker.track("u1".into(), &chat);
        let two = tracker.track("u1".into(), &EventFilter::parse("chat").unwrap());
        let deltas = tracker.take_deltas();
        let (Body::Delta { sessions }, _) = &deltas[0] else {
            panic!("{deltas:?}")
        };
        assert_eq!(sessions[0].n, 2);
        assert_eq!(
            sessions[0].e.as_deref(),
            Some(&["chat".to_owned(), "news".to_owned()][..])
        );
        drop(one);
        drop(two);
        let deltas = tracker.take_deltas();
        let (Body::Delta { sessions }, _) = &deltas[0] else {
            panic!("{deltas:?}")
        };
        assert_eq!(sessions[0].n, 0);
        assert!(guard(&tracker.own).sessions.is_empty());
        assert!(tracker.take_deltas().is_empty());
    }
}
