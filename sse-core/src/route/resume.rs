//! Resuming a stream (`Last-Event-ID`) in routed delivery.
//!
//! In broadcast routing every instance receives every envelope, so its replay log is complete
//! from the moment it started. In session routing an instance receives a session's envelopes
//! only while it holds the session's route, so its log has gaps: a client coming back to an
//! instance that did not hold its session the whole time since its last event would be replayed
//! a partial history. The hub tells the two cases apart by the route's
//! [`covered_since`](super::table::RouteLease::covered_since):
//!
//! - the last event was received live at least [`GUARD`] after the route was subscribed (every
//!   later envelope of the session was routed here): the local log serves the replay, a hash
//!   lookup as in broadcast routing (a client back on the instance it left, or on one holding
//!   another stream of its session);
//! - otherwise the replay is read from the [broker's history](crate::history), from a little
//!   before the last event's time (the timestamp of an id the hub generated, UUIDv7), after the
//!   route is subscribed: what the read holds after the last event, then what the log received
//!   since the read began and the read did not hold. Resumes share a read that began after their
//!   route was subscribed and reaches back far enough, so a reconnect storm after an instance
//!   died costs the broker a few reads, not one per client.
//!
//! When the history cannot be read (a backend without it, a failed read, an id the history no
//! longer holds), the stream gets the [reset event](crate::replay::RESET_EVENT), never a replay
//! with a hole in it.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use tokio::time::Instant;

use crate::envelope::{Envelope, EnvelopeKind};
use crate::error::BackendError;
use crate::history::{self, BrokerHistory};
use crate::replay::{Replay, ReplayLog};
use crate::repository::EventFilter;
use crate::route::cursor::{self, Cursor, Other};
use crate::stats::Stats;

/// How long after its route was subscribed an event must have arrived for the local log to be
/// trusted with what followed it: longer than an envelope spends between publisher and hub.
pub(crate) const GUARD: Duration = Duration::from_secs(1);

/// How far before the last event's timestamp a read starts (publishers' clocks differ).
const SKEW: Duration = Duration::from_secs(5);

/// Reads start on multiples of this, so resumes with nearby last events share one.
const ROUND: u64 = 5_000;

/// Where a resuming stream's replay comes from.
#[derive(Debug)]
pub(crate) enum ResumeFrom {
    /// The instance's own log, complete for the session since the last event.
    Local,
    /// A read of the broker's history that holds the last event.
    Broker(Arc<HistoryRead>),
    /// Nowhere complete: the stream gets the reset event.
    Unknown,
}

impl std::fmt::Display for ResumeFrom {
    /// For the logs: where a resume replays from.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ResumeFrom::Local => f.write_str("the local log"),
            ResumeFrom::Broker(read) => write!(
                f,
                "a history read of {} events, begun {:?} ago",
                read.events.len(),
                read.started.elapsed()
            ),
            ResumeFrom::Unknown => f.write_str("nowhere (reset)"),
        }
    }
}

/// One read of the broker's history.
#[derive(Debug)]
pub(crate) struct HistoryRead {
    started: Instant,
    since: SystemTime,
    /// The replay log's next sequence number when the read began: what the log received from
    /// then on may be missing from the read.
    seq: u64,
    events: Vec<ReadEvent>,
    /// Event id to its position in `events`.
    index: HashMap<Box<str>, usize>,
    /// Whether frames carry cursor ids (session routing) or the events' own (broadcast routing).
    cursors: bool,
}

#[derive(Debug)]
struct ReadEvent {
    id: Box<str>,
    session: Option<Box<str>>,
    name: Box<str>,
    /// When its publisher published it.
    published: SystemTime,
    /// Its frame with a cursor id (see [`cursor`]): a broadcast's with the other part left for
    /// each stream, a routed event's after the read's last broadcast before it (`before`); one
    /// before any broadcast of the read has its plain id, and a replay writes the cursor in.
    frame: Bytes,
    /// The index of the read's last broadcast before this event.
    before: Option<usize>,
}

impl cursor::Sequence for HistoryRead {
    fn len(&self) -> usize {
        self.events.len()
    }

    fn find(&self, id: &str) -> Option<usize> {
        self.index.get(id).copied()
    }

    fn session(&self, i: usize) -> Option<&str> {
        self.events[i].session.as_deref()
    }

    fn published(&self, i: usize) -> SystemTime {
        self.events[i].published
    }
}

impl HistoryRead {
    /// Whether the read holds the positions `cursor` names, for a stream of `session`.
    fn serves(&self, cursor: &Cursor, session: Option<&str>) -> bool {
        cursor::starts(cursor, session, self).is_some()
    }

    fn holds(&self, id: &str) -> bool {
        self.index.contains_key(id)
    }

    /// The replay of a stream of `session` and `events` after `cursor`, whose positions the
    /// read holds: the read's events after them (each source from its own), then those `log`
    /// received since the read began that the read does not hold. Called under the log's lock,
    /// with the stream registered.
    ///
    /// Also the ids of the stream's events that the log does not hold yet: replayed ones may
    /// still be on their way live (published while the read ran), and when this instance's
    /// subscription has a gap, catching up delivers what came after its last envelope, which
    /// may be events the stream had before its cursor; the stream must not get them twice.
    pub(crate) fn replay(
        &self,
        cursor: &Cursor,
        session: Option<&str>,
        events: &EventFilter,
        log: &ReplayLog,
    ) -> (Replay, Vec<Box<str>>) {
        let Some(starts) = cursor::starts(cursor, session, self) else {
            return (Replay::Unknown, Vec::new());
        };
        // The stream's place in the broadcasts as the replay goes on: what routed events'
        // frames carry. Before the read's first broadcast at or after it, the cursor's own.
        let initial = match (&cursor.other, self.session_of(&cursor.event)) {
            (_, Some(None)) => cursor::escape(&cursor.event).into_owned(),
            (Other::After(id), _) => cursor::escape(id).into_owned(),
            (Other::Since(t), _) => cursor::since(*t),
            (Other::Unnamed, _) => cursor::since(self.since),
        };
        // Events of the stream that this instance may still receive, live or by catching up
        // after a gap, although the stream has them: those the log does not hold, whether the
        // stream had them before its cursor or gets them now. Not only those after the last
        // one the log holds: on a backend of several lanes the read merges them by time, and
        // a lane's catch-up may deliver what the read has before an envelope another lane
        // delivered here (found by the fault test on a Redis Cluster).
        let mut in_flight = Vec::new();
        let mut frames = Vec::new();
        for (i, e) in self.events.iter().enumerate() {
            let its =
                e.session.as_deref().is_none_or(|s| session == Some(s)) && events.matches(&e.name);
            if !its {
                continue;
            }
            let ahead = !log.contains(&e.id);
            if !(i >= starts.first() && starts.replays(i, e.session.as_deref(), session)) {
                if ahead {
                    in_flight.push(e.id.clone());
                }
                continue;
            }
            let frame = match (&e.session, e.before) {
                _ if !self.cursors => e.frame.clone(),
                // The read's frame: the stream is past that broadcast (it had it, or it was
                // replayed).
                (None, _) => e.frame.clone(),
                (Some(_), Some(b)) if b + 1 >= starts.broadcasts => e.frame.clone(),
                // The stream's place in the broadcasts is its cursor's.
                (Some(_), _) => cursor::with_id(&e.frame, &cursor::routed_id(&e.id, &initial)),
            };
            frames.push(frame);
            if !log.contains(&e.id) {
                in_flight.push(e.id.clone());
            }
        }
        frames.extend(
            log.matching_from(self.seq, session, events)
                .filter(|(id, _)| !self.holds(id))
                .map(|(_, frame)| frame.clone()),
        );
        let replay = Replay::Frames {
            frames,
            from_broker: true,
        };
        (replay, in_flight)
    }

    /// The session of the event with this id (`Some(None)`: a broadcast), when the read holds it.
    pub(crate) fn session_of(&self, id: &str) -> Option<Option<&str>> {
        self.index
            .get(id)
            .map(|&i| self.events[i].session.as_deref())
    }
}

/// How long the latest read is kept for resumes that come after it (a reconnect storm lasts
/// seconds); then its memory is given back even if no resume comes again.
const KEEP_READ: Duration = Duration::from_secs(10);

/// The reads resumes share: the latest one, kept for [`KEEP_READ`].
#[derive(Debug, Default)]
pub(crate) struct Resumes {
    latest: Arc<tokio::sync::Mutex<Option<Arc<HistoryRead>>>>,
}

/// What deciding a resume needs from the hub.
pub(crate) struct Resume<'a> {
    pub(crate) history: Option<&'a dyn BrokerHistory>,
    pub(crate) log: &'a std::sync::Mutex<ReplayLog>,
    pub(crate) max_age: Duration,
    /// Whether envelopes of this app are delivered here.
    pub(crate) accepts: &'a (dyn Fn(&str) -> bool + Sync),
    pub(crate) stats: &'a Stats,
    /// Whether streams' ids are cursors (session routing): a read's frames carry them.
    pub(crate) cursors: bool,
    /// While the instance catches up after a gap: since when it may lack envelopes (see
    /// [`crate::catch_up`]).
    pub(crate) behind: Option<SystemTime>,
}

impl Resumes {
    /// Where the replay after `last` comes from for a stream whose session's route has covered
    /// this instance since `covered_since`.
    pub(crate) async fn decide(
        &self,
        resume: Resume<'_>,
        cursor: &Cursor,
        session: Option<&str>,
        covered_since: Instant,
    ) -> Result<ResumeFrom, BackendError> {
        let (local, times) = {
            let log = lock(resume.log);
            (
                log_serves(&log, cursor, session, covered_since),
                cursor_times(&log, cursor),
            )
        };
        if local {
            return Ok(ResumeFrom::Local);
        }
        let Some(history) = resume.history else {
            return Ok(ResumeFrom::Unknown);
        };
        let oldest = SystemTime::now()
            .checked_sub(resume.max_age)
            .unwrap_or(SystemTime::UNIX_EPOCH);
        let since = times
            .map_or(oldest, |t| {
                round_down(t.checked_sub(SKEW).unwrap_or(oldest))
            })
            .max(oldest);
        // While this instance catches up after a gap, the read reaches back to where the gap
        // began: what the catch-up is about to deliver, a stream that had it before its cursor
        // skips (see `HistoryRead::replay`), only if the read holds it.
        let since = resume
            .behind
            .map_or(since, |behind| since.min(round_down(behind)).max(oldest));
        let read = self
            .read(&resume, history, since, covered_since, cursor, session)
            .await?;
        if read.serves(cursor, session) {
            return Ok(ResumeFrom::Broker(read));
        }
        if since > oldest {
            // An id's time was wrong (a publisher's own id that looks like a UUIDv7): all of it.
            let read = self
                .read(&resume, history, oldest, covered_since, cursor, session)
                .await?;
            if read.serves(cursor, session) {
                return Ok(ResumeFrom::Broker(read));
            }
        }
        Ok(ResumeFrom::Unknown)
    }

    /// A read since `since` or earlier that began after `covered_since`: the latest one when it
    /// qualifies and holds the positions `cursor` names (a read that began before its event was
    /// published cannot serve it, however far back it reaches), a new one otherwise (one at a
    /// time).
    async fn read(
        &self,
        resume: &Resume<'_>,
        history: &dyn BrokerHistory,
        since: SystemTime,
        covered_since: Instant,
        cursor: &Cursor,
        session: Option<&str>,
    ) -> Result<Arc<HistoryRead>, BackendError> {
        let mut latest = self.latest.lock().await;
        if let Some(read) = latest.as_ref()
            && read.started >= covered_since
            && read.since <= since
            && read.serves(cursor, session)
        {
            return Ok(read.clone());
        }
        // Not needed by any newer resume: let it go before reading again.
        *latest = None;
        let seq = lock(resume.log).next_seq();
        let started = Instant::now();
        let mut events: Vec<ReadEvent> = Vec::new();
        let mut index = HashMap::new();
        // The read's last broadcast so far: escaped, and its index.
        let mut last_broadcast: Option<String> = None;
        let mut last_broadcast_at: Option<usize> = None;
        let read = history::read_into(history, since, |bytes| {
            let Ok(envelope) = Envelope::decode_ref(bytes) else {
                return;
            };
            // A disconnect is not an event to replay (see `crate::disconnect`).
            if !(resume.accepts)(envelope.app()) || envelope.kind() != EnvelopeKind::Event {
                return;
            }
            // An event the broker holds twice (a publish its client sent again after a lost
            // answer) has its place where it came first: there subscribers delivered it, and
            // dropped the later copy as a duplicate (found by the fault test on a Kafka cluster:
            // a resume after an event replayed the second copy of one before it).
            if index.contains_key(envelope.id()) {
                return;
            }
            index.insert(Box::from(envelope.id()), events.len());
            events.push(ReadEvent {
                id: Box::from(envelope.id()),
                published: envelope.ts().map_or_else(SystemTime::now, |ms| {
                    SystemTime::UNIX_EPOCH + Duration::from_millis(ms)
                }),
                session: envelope.session_id().map(Box::from),
                name: Box::from(envelope.event_name()),
                // The frame most replays write: a broadcast's placeholder, or a routed event
                // after the read's last broadcast before it.
                frame: match (envelope.session_id(), &last_broadcast) {
                    _ if !resume.cursors => envelope.frame(),
                    (None, _) => envelope.frame_as(&cursor::broadcast_id(envelope.id())),
                    (Some(_), Some(b)) => envelope.frame_as(&cursor::routed_id(envelope.id(), b)),
                    (Some(_), None) => envelope.frame(),
                },
                before: last_broadcast_at,
            });
            if envelope.session_id().is_none() {
                last_broadcast = Some(cursor::escape(envelope.id()).into_owned());
                last_broadcast_at = Some(events.len() - 1);
            }
        })
        .await;
        Stats::bump(&resume.stats.history_reads);
        match read {
            Ok(report) => resume.stats.history_read_latency.record(report.took),
            Err(error) => {
                Stats::bump(&resume.stats.history_read_failed);
                return Err(error);
            }
        }
        let read = Arc::new(HistoryRead {
            started,
            since,
            seq,
            events,
            index,
            cursors: resume.cursors,
        });
        *latest = Some(read.clone());
        let (slot, kept) = (Arc::downgrade(&self.latest), Arc::downgrade(&read));
        tokio::spawn(async move {
            tokio::time::sleep(KEEP_READ).await;
            if let Some(slot) = slot.upgrade() {
                let mut latest = slot.lock().await;
                if latest
                    .as_ref()
                    .is_some_and(|r| std::ptr::eq(Arc::as_ptr(r), kept.as_ptr()))
                {
                    *latest = None;
                }
            }
        });
        Ok(read)
    }
}

/// Whether the log alone serves a resume after `cursor` for a stream of `session` whose route
/// has covered this instance since `covered_since`: it holds the positions the cursor names,
/// and every event of the session after the routed one reached this instance (it arrived live
/// at least [`GUARD`] after the route was subscribed).
fn log_serves(
    log: &ReplayLog,
    cursor: &Cursor,
    session: Option<&str>,
    covered_since: Instant,
) -> bool {
    if log.starts(cursor, session).is_none() {
        return false;
    }
    let covered = |id: &str| {
        log.arrived(id)
            .is_some_and(|(at, from_broker)| !from_broker && at >= covered_since + GUARD)
    };
    let event_is_routed = log.session_of(&cursor.event).is_some_and(|s| s.is_some());
    match &cursor.other {
        _ if event_is_routed => covered(&cursor.event),
        Other::Unnamed => covered(&cursor.event),
        Other::After(id) => covered(id),
        Other::Since(t) => {
            let from = t
                .checked_sub(cursor::SINCE_MARGIN)
                .unwrap_or(SystemTime::UNIX_EPOCH);
            let age = SystemTime::now().duration_since(from).unwrap_or_default();
            Instant::now()
                .checked_sub(age)
                .is_some_and(|from| from >= covered_since + GUARD)
        }
    }
}

/// How long after its publishing an event may still be on its way to an instance: brokers hand
/// one message to their subscribers at different moments (a Kafka consumer polls, a hub catches
/// up after a reconnect).
pub(crate) const IN_FLIGHT: Duration = Duration::from_secs(10);

/// Whether the event a resume names is not in `log` but, by its id's time (a UUIDv7, as the
/// hub makes them), was published less than [`IN_FLIGHT`] ago, and within the history's
/// `max_age`: a client may have had it from an instance that received it sooner. Such a resume
/// is read from the broker's history, not reset. Older unknown ids (and ids that carry no time)
/// are not read for: an instance's log holds everything of the history's age since it started,
/// so they are gone. (A forged id with a recent UUIDv7 time is read for, as in session routing.)
pub(crate) fn may_still_arrive(log: &ReplayLog, cursor: &Cursor, max_age: Duration) -> bool {
    if log.contains(&cursor.event) {
        return false;
    }
    let Some(published) = last_event_time(&cursor.event, None) else {
        return false;
    };
    SystemTime::now()
        .duration_since(published)
        .map_or(true, |age| age < IN_FLIGHT.min(max_age))
}

/// The earliest time a read for `cursor` must reach back to: the publishing time of each
/// position it names.
fn cursor_times(log: &ReplayLog, cursor: &Cursor) -> Option<SystemTime> {
    let time = |id: &str| last_event_time(id, log.arrived(id).map(|(at, _)| at));
    let event = time(&cursor.event)?;
    let other = match &cursor.other {
        Other::Unnamed => Some(event),
        Other::After(id) => time(id),
        Other::Since(t) => t.checked_sub(cursor::SINCE_MARGIN),
    }?;
    Some(event.min(other))
}

/// When the event `last` was published, as far as the hub can tell: the timestamp of a UUIDv7
/// id (what the hub generates), else when this instance logged it.
fn last_event_time(last: &str, logged: Option<Instant>) -> Option<SystemTime> {
    let from_id = uuid::Uuid::try_parse(last)
        .ok()
        .filter(|u| u.get_version_num() == 7)
        .and_then(|u| u.get_timestamp())
        .map(|ts| {
            let (secs, nanos) = ts.to_unix();
            SystemTime::UNIX_EPOCH + Duration::new(secs, nanos)
        })
        .filter(|t| *t <= SystemTime::now() + SKEW);
    from_id.or_else(|| {
        let age = Instant::now().saturating_duration_since(logged?);
        SystemTime::now().checked_sub(age)
    })
}

fn round_down(t: SystemTime) -> SystemTime {
    let ms = history::unix_millis(t);
    SystemTime::UNIX_EPOCH + Duration::from_millis(ms - ms % ROUND)
}

fn lock(log: &std::sync::Mutex<ReplayLog>) -> std::sync::MutexGuard<'_, ReplayLog> {
    log.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_uuid_v7_id_gives_its_time_and_another_id_the_logged_time() {
        let now = SystemTime::now();
        let ms = history::unix_millis(now) - 60_000;
        let id = uuid::Builder::from_unix_timestamp_millis(ms, &[7; 10])
            .into_uuid()
            .to_string();
        let t = last_event_time(&id, None).unwrap();
        assert_eq!(history::unix_millis(t), ms);
        assert!(last_event_time("order-17", None).is_none());
        let logged = Instant::now() - Duration::from_secs(30);
        let t = last_event_time("order-17", Some(logged)).unwrap();
        let age = now.duration_since(t).unwrap_or_default();
        assert!(age >= Duration::from_secs(29) && age < Duration::from_secs(32));
        // A v7 id from the far future is no time at all.
        let future = uuid::Builder::from_unix_timestamp_millis(ms + 3_600_000, &[7; 10])
            .into_uuid()
            .to_string();
        assert!(last_event_time(&future, None).is_none());
    }

    /// A broker history holding a list of envelopes (more may be appended between reads).
    #[derive(Debug)]
    struct Fixed(std::sync::Mutex<Vec<Bytes>>);

    impl Fixed {
        fn new(envelopes: Vec<Bytes>) -> Self {
            Fixed(std::sync::Mutex::new(envelopes))
        }
    }

    #[async_trait::async_trait]
    impl BrokerHistory for Fixed {
        async fn read_since(
            &self,
            _since: SystemTime,
        ) -> Result<history::HistoryStream, BackendError> {
            let items: Vec<Result<Bytes, BackendError>> =
                self.0.lock().unwrap().iter().cloned().map(Ok).collect();
            Ok(Box::pin(futures_util::stream::iter(items)))
        }
    }

    /// What a resume needs of a hub, over a history.
    struct Fixture {
        history: Fixed,
        log: std::sync::Mutex<ReplayLog>,
        stats: Stats,
    }

    fn accept_all(_: &str) -> bool {
        true
    }

    impl Fixture {
        fn new(history: Fixed) -> Self {
            Fixture {
                history,
                log: std::sync::Mutex::new(ReplayLog::new(crate::ReplayConfig::default())),
                stats: Stats::default(),
            }
        }

        fn resume(&self) -> Resume<'_> {
            Resume {
                history: Some(&self.history),
                log: &self.log,
                max_age: Duration::from_secs(300),
                accepts: &accept_all,
                stats: &self.stats,
                cursors: true,
                behind: None,
            }
        }
    }

    fn event(n: u32) -> Envelope {
        let e = crate::SendSseEvent::new("e", serde_json::json!(n)).to_session("s1");
        Envelope::from_event(&e, "app", "o").unwrap()
    }

    /// Finding 2 of the exactly-once issue: a read shared between resumes began before the
    /// event a later resume names was published; that resume must read again, not get a reset.
    #[tokio::test]
    async fn a_shared_read_serves_no_resume_whose_event_came_after_it() {
        let (unknown, first, second) = (event(0), event(1), event(2));
        let history = Fixed::new(vec![first.encode().unwrap()]);
        let hub = Fixture::new(history);
        let resume = || hub.resume();
        let resumes = Resumes::default();
        let covered = Instant::now();
        // An id nobody holds: read from the oldest retained time, and kept for sharing.
        let gone = resumes
            .decide(resume(), &Cursor::plain(&unknown.id), Some("s1"), covered)
            .await
            .unwrap();
        assert!(matches!(gone, ResumeFrom::Unknown), "{gone:?}");
        // Published after that read began.
        hub.history.0.lock().unwrap().push(second.encode().unwrap());
        let from = resumes
            .decide(resume(), &Cursor::plain(&second.id), Some("s1"), covered)
            .await
            .unwrap();
        assert!(
            matches!(&from, ResumeFrom::Broker(read) if read.holds(&second.id)),
            "{from:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_read_is_shared_then_let_go() {
        let (first, second) = (event(1), event(2));
        let history = Fixed::new(vec![first.encode().unwrap(), second.encode().unwrap()]);
        let hub = Fixture::new(history);
        let resume = || hub.resume();
        let resumes = Resumes::default();
        let covered = Instant::now();
        let ResumeFrom::Broker(a) = resumes
            .decide(resume(), &Cursor::plain(&first.id), Some("s1"), covered)
            .await
            .unwrap()
        else {
            panic!("not from the broker")
        };
        let ResumeFrom::Broker(b) = resumes
            .decide(resume(), &Cursor::plain(&first.id), Some("s1"), covered)
            .await
            .unwrap()
        else {
            panic!("not from the broker")
        };
        assert!(
            Arc::ptr_eq(&a, &b),
            "the second resume shares the first read"
        );
        assert_eq!(
            hub.stats
                .history_reads
                .load(std::sync::atomic::Ordering::Relaxed),
            1
        );
        let filter = crate::EventFilter::Any;
        let (Replay::Frames { frames, .. }, in_flight) = a.replay(
            &Cursor::plain(&first.id),
            Some("s1"),
            &filter,
            &lock(&hub.log),
        ) else {
            panic!("nothing replayed")
        };
        assert_eq!(frames.len(), 1, "what followed the last event");
        assert_eq!(
            in_flight,
            vec![Box::from(first.id.as_str()), Box::from(second.id.as_str())],
            "the stream's events this instance has not received yet"
        );
        drop((a, b));
        tokio::time::sleep(KEEP_READ + Duration::from_secs(1)).await;
        assert!(resumes.latest.lock().await.is_none(), "the read was let go");
    }

    #[test]
    fn reads_start_on_round_times() {
        let t = SystemTime::UNIX_EPOCH + Duration::from_millis(1_700_000_012_345);
        assert_eq!(history::unix_millis(round_down(t)), 1_700_000_010_000);
    }
}
