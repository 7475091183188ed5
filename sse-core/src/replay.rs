//! The replay log: the recent envelopes an instance received, so that a client reconnecting with
//! `Last-Event-ID` (to this instance or any other) gets everything it missed.
//!
//! Every instance receives every event of its app, so any instance can serve any session's
//! history. The log is bounded by count, age and bytes; the resume point is found through a hash
//! index from event id to position, never by scanning.

use std::collections::hash_map::Entry as Slot;
use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasher, BuildHasherDefault, Hasher, RandomState};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use tokio::time::Instant;

use crate::repository::EventFilter;
use crate::route::cursor::{self, Cursor, Starts};

/// How much history an instance keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct ReplayConfig {
    /// At most this many events (default 10 000).
    pub max_events: usize,
    /// Events older than this are dropped (default 5 minutes).
    pub max_age: Duration,
    /// At most this many bytes of encoded frames (default 64 MiB).
    pub max_bytes: usize,
}

impl Default for ReplayConfig {
    fn default() -> Self {
        ReplayConfig {
            max_events: 10_000,
            max_age: Duration::from_secs(300),
            max_bytes: 64 * 1024 * 1024,
        }
    }
}

/// The name of the event a stream receives first when its `Last-Event-ID` is not in the log
/// (unknown, or older than the log keeps): the application should refetch its state.
pub const RESET_EVENT: &str = "sse-fanout-reset";

/// One event of the history: its frame, and its id, session and name in one allocation.
#[derive(Debug)]
struct Entry {
    seq: u64,
    /// The id's key in the index.
    key: u64,
    /// The id, then the session (if any), then the event name.
    text: Box<str>,
    id_len: u32,
    session_len: Option<u32>,
    /// Read from the broker's history rather than received live.
    from_broker: bool,
    frame: Bytes,
    at: Instant,
}

impl Entry {
    fn id(&self) -> &str {
        &self.text[..self.id_len as usize]
    }

    fn session(&self) -> Option<&str> {
        let start = self.id_len as usize;
        self.session_len
            .map(|len| &self.text[start..start + len as usize])
    }

    fn event_name(&self) -> &str {
        let start = self.id_len as usize + self.session_len.unwrap_or(0) as usize;
        &self.text[start..]
    }
}

/// The history of one instance.
#[derive(Debug)]
pub(crate) struct ReplayLog {
    config: ReplayConfig,
    entries: VecDeque<Entry>,
    /// From a keyed 64-bit hash of an id to its entry's sequence number; a lookup checks the
    /// entry's id, so a collision (astronomically rare) reads as an unknown id, never a wrong one.
    index: HashMap<u64, u64, BuildHasherDefault<Prehashed>>,
    hasher: RandomState,
    next_seq: u64,
    bytes: usize,
}

/// The index's keys are hashes already.
#[derive(Debug, Default)]
struct Prehashed(u64);

impl Hasher for Prehashed {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 << 8) | u64::from(b);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

/// What a reconnecting stream gets from the log.
#[derive(Debug, PartialEq)]
pub(crate) enum Replay {
    /// The frames after the last event id that match the stream, in order; `from_broker` when
    /// that id came from the broker's history (this instance had not seen it live).
    Frames {
        frames: Vec<Bytes>,
        from_broker: bool,
    },
    /// The id is not in the log.
    Unknown,
}

/// Where an envelope pushed into the log came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Source {
    /// Received live from the backend's subscription.
    Live,
    /// Read from the broker's history; published at `at`.
    Broker,
    /// Read from the broker's history after a gap in the subscription: received late, and
    /// from then on in the log as if live.
    CatchUp,
}

/// What [`ReplayLog::push`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use]
pub(crate) enum Pushed {
    /// The envelope is new: deliver it.
    New,
    /// An envelope with this id is in the log already (the same event arriving twice, e.g. from
    /// the broker's history and live at once): do not deliver it again.
    Duplicate,
}

impl ReplayLog {
    pub(crate) fn new(config: ReplayConfig) -> Self {
        ReplayLog {
            config,
            entries: VecDeque::new(),
            index: HashMap::default(),
            hasher: RandomState::new(),
            next_seq: 0,
            bytes: 0,
        }
    }

    /// Appends an envelope's frame, published at `at`; refuses one whose id the log holds.
    pub(crate) fn push(
        &mut self,
        id: &str,
        session: Option<&str>,
        event_name: &str,
        frame: &Bytes,
        source: Source,
        at: Instant,
    ) -> Pushed {
        if self.config.max_events == 0 {
            return Pushed::New;
        }
        let (Ok(id_len), Ok(session_len)) = (
            u32::try_from(id.len()),
            session.map(|s| u32::try_from(s.len())).transpose(),
        ) else {
            // Ids and sessions of 4 GiB do not get here (the broker refuses them first).
            return Pushed::New;
        };
        // One lookup in the index: a slot whose entry holds this id is a duplicate; otherwise
        // (no slot, an evicted entry's, or a hash collision) the slot becomes the new entry's.
        let key = self.hasher.hash_one(id);
        let seq = self.next_seq;
        let first = self.entries.front().map_or(0, |e| e.seq);
        match self.index.entry(key) {
            Slot::Occupied(mut slot) => {
                let held = slot
                    .get()
                    .checked_sub(first)
                    .and_then(|at| usize::try_from(at).ok())
                    .and_then(|at| self.entries.get(at));
                if held.is_some_and(|e| e.id() == id) {
                    return Pushed::Duplicate;
                }
                slot.insert(seq);
            }
            Slot::Vacant(slot) => {
                slot.insert(seq);
            }
        }
        let mut text =
            String::with_capacity(id.len() + session.map_or(0, str::len) + event_name.len());
        text.push_str(id);
        text.push_str(session.unwrap_or(""));
        text.push_str(event_name);
        self.next_seq += 1;
        self.bytes += frame.len();
        self.entries.push_back(Entry {
            seq,
            key,
            text: text.into_boxed_str(),
            id_len,
            session_len,
            from_broker: source == Source::Broker,
            frame: frame.clone(),
            at,
        });
        self.evict(at);
        Pushed::New
    }

    /// The entry with this id, through the index.
    fn find(&self, key: u64, id: &str) -> Option<&Entry> {
        let &seq = self.index.get(&key)?;
        let first = self.entries.front().map_or(0, |e| e.seq);
        usize::try_from(seq.checked_sub(first)?)
            .ok()
            .and_then(|at| self.entries.get(at))
            .filter(|e| e.id() == id)
    }

    /// Whether an event with this id is in the log.
    pub(crate) fn contains(&self, id: &str) -> bool {
        self.find(self.hasher.hash_one(id), id).is_some()
    }

    fn evict(&mut self, now: Instant) {
        while let Some(front) = self.entries.front() {
            let too_many = self.entries.len() > self.config.max_events;
            let too_big = self.bytes > self.config.max_bytes && self.entries.len() > 1;
            let too_old = now.saturating_duration_since(front.at) > self.config.max_age;
            if !(too_many || too_big || too_old) {
                break;
            }
            if let Some(old) = self.entries.pop_front() {
                self.bytes -= old.frame.len();
                if self.index.get(&old.key) == Some(&old.seq) {
                    self.index.remove(&old.key);
                }
            }
        }
    }

    /// The frames after `last_id` for a stream of `session` (broadcasts included) and `events`:
    /// a plain id's resume.
    #[cfg(test)]
    pub(crate) fn since(
        &mut self,
        last_id: &str,
        session: Option<&str>,
        events: &EventFilter,
        now: Instant,
    ) -> Replay {
        self.since_cursor(&Cursor::plain(last_id), session, events, now)
    }

    /// The frames a stream of `session` and `events` resumes with after `cursor` (see
    /// [`crate::route::cursor`]): each of its sources from its own position; `Unknown` when the
    /// log does not hold the positions the cursor names.
    pub(crate) fn since_cursor(
        &mut self,
        cursor: &Cursor,
        session: Option<&str>,
        events: &EventFilter,
        now: Instant,
    ) -> Replay {
        self.evict(now);
        let Some(starts) = self.starts(cursor, session) else {
            return Replay::Unknown;
        };
        let from_broker = self
            .find(self.hasher.hash_one(&cursor.event), &cursor.event)
            .is_some_and(|e| e.from_broker);
        let first = starts.first().min(self.entries.len());
        let frames = self
            .entries
            .range(first..)
            .zip(first..)
            .filter(|(e, i)| starts.replays(*i, e.session(), session))
            .filter(|(e, _)| events.matches(e.event_name()))
            .map(|(e, _)| e.frame.clone())
            .collect();
        Replay::Frames {
            frames,
            from_broker,
        }
    }

    /// The session of the event with this id (`Some(None)`: a broadcast), when the log holds it.
    pub(crate) fn session_of(&self, id: &str) -> Option<Option<&str>> {
        self.find(self.hasher.hash_one(id), id).map(Entry::session)
    }

    /// Where each source of a stream of `session` resumes after `cursor` in this log.
    pub(crate) fn starts(&self, cursor: &Cursor, session: Option<&str>) -> Option<Starts> {
        cursor::starts(cursor, session, &LogSequence::new(self))
    }

    /// The sequence number the next pushed envelope gets.
    pub(crate) fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// When the event with this id was pushed (received live) or published (read from the
    /// broker), and whether it was read from the broker.
    pub(crate) fn arrived(&self, id: &str) -> Option<(Instant, bool)> {
        self.find(self.hasher.hash_one(id), id)
            .map(|e| (e.at, e.from_broker))
    }

    /// The entries pushed at or after sequence number `seq` that a stream of `session` and
    /// `events` receives: their ids and frames, in order.
    pub(crate) fn matching_from<'a>(
        &'a self,
        seq: u64,
        session: Option<&'a str>,
        events: &'a EventFilter,
    ) -> impl Iterator<Item = (&'a str, &'a Bytes)> + 'a {
        let first = self.entries.front().map_or(0, |e| e.seq);
        let start = usize::try_from(seq.saturating_sub(first)).unwrap_or(usize::MAX);
        self.entries
            .range(start.min(self.entries.len())..)
            .filter(move |e| e.session().is_none_or(|target| session == Some(target)))
            .filter(move |e| events.matches(e.event_name()))
            .map(|e| (e.id(), &e.frame))
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.entries.len()
    }
}

/// The log as a [`cursor::Sequence`]: entries by position, publish times from arrival times.
struct LogSequence<'a> {
    log: &'a ReplayLog,
    now: (Instant, SystemTime),
}

impl<'a> LogSequence<'a> {
    fn new(log: &'a ReplayLog) -> Self {
        LogSequence {
            log,
            now: (Instant::now(), SystemTime::now()),
        }
    }
}

impl cursor::Sequence for LogSequence<'_> {
    fn len(&self) -> usize {
        self.log.entries.len()
    }

    fn find(&self, id: &str) -> Option<usize> {
        let entry = self.log.find(self.log.hasher.hash_one(id), id)?;
        let first = self.log.entries.front().map_or(0, |e| e.seq);
        usize::try_from(entry.seq - first).ok()
    }

    fn session(&self, i: usize) -> Option<&str> {
        self.log.entries[i].session()
    }

    fn published(&self, i: usize) -> SystemTime {
        let age = self.now.0.saturating_duration_since(self.log.entries[i].at);
        self.now
            .1
            .checked_sub(age)
            .unwrap_or(SystemTime::UNIX_EPOCH)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn frame(s: &str) -> Bytes {
        Bytes::from(s.to_owned())
    }

    fn frames(frames: Vec<Bytes>) -> Replay {
        Replay::Frames {
            frames,
            from_broker: false,
        }
    }

    fn log(max_events: usize) -> ReplayLog {
        ReplayLog::new(ReplayConfig {
            max_events,
            ..ReplayConfig::default()
        })
    }

    #[test]
    fn replays_what_came_after_for_the_session_and_broadcasts() {
        let now = Instant::now();
        let mut l = log(100);
        let _ = l.push("1", Some("s1"), "e", &frame("a"), Source::Live, now);
        let _ = l.push("2", Some("s2"), "e", &frame("b"), Source::Live, now);
        let _ = l.push("3", None, "e", &frame("c"), Source::Live, now);
        let _ = l.push("4", Some("s1"), "other", &frame("d"), Source::Live, now);
        let _ = l.push("5", Some("s1"), "e", &frame("e"), Source::Live, now);
        let any = EventFilter::Any;
        let only_e = EventFilter::parse("e").unwrap();
        assert_eq!(
            l.since("1", Some("s1"), &any, now),
            frames(vec![frame("c"), frame("d"), frame("e")])
        );
        assert_eq!(
            l.since("1", Some("s1"), &only_e, now),
            frames(vec![frame("c"), frame("e")])
        );
        assert_eq!(l.since("2", None, &any, now), frames(vec![frame("c")]));
        assert_eq!(l.since("5", Some("s1"), &any, now), frames(vec![]));
        assert_eq!(l.since("nope", Some("s1"), &any, now), Replay::Unknown);
    }

    #[test]
    fn bounded_by_count_bytes_and_age() {
        let now = Instant::now();
        let mut l = log(3);
        for i in 0..10 {
            let _ = l.push(&i.to_string(), None, "e", &frame("x"), Source::Live, now);
        }
        assert_eq!(l.len(), 3);
        assert_eq!(l.index.len(), 3);
        assert_eq!(l.since("6", None, &EventFilter::Any, now), Replay::Unknown);
        assert_eq!(
            l.since("7", None, &EventFilter::Any, now),
            frames(vec![frame("x"), frame("x")])
        );

        let mut l = ReplayLog::new(ReplayConfig {
            max_bytes: 10,
            ..ReplayConfig::default()
        });
        for i in 0..5 {
            let _ = l.push(&i.to_string(), None, "e", &frame("1234"), Source::Live, now);
        }
        assert_eq!(l.len(), 2);

        let mut l = log(100);
        let _ = l.push("old", None, "e", &frame("x"), Source::Live, now);
        let later = now + Duration::from_secs(301);
        let _ = l.push("new", None, "e", &frame("y"), Source::Live, later);
        assert_eq!(
            l.since("old", None, &EventFilter::Any, later),
            Replay::Unknown
        );
        assert_eq!(
            l.since("new", None, &EventFilter::Any, later),
            frames(vec![])
        );
    }

    #[test]
    fn entries_keep_their_id_session_and_name_apart() {
        let now = Instant::now();
        let mut l = log(10);
        let _ = l.push("id-1", Some("sess"), "name", &frame("a"), Source::Live, now);
        let _ = l.push("id-2", None, "other", &frame("b"), Source::Live, now);
        let e = &l.entries[0];
        assert_eq!(
            (e.id(), e.session(), e.event_name()),
            ("id-1", Some("sess"), "name")
        );
        let e = &l.entries[1];
        assert_eq!(
            (e.id(), e.session(), e.event_name()),
            ("id-2", None, "other")
        );
        // A prefix of a stored id is not that id.
        assert_eq!(
            l.since("id-", Some("sess"), &EventFilter::Any, now),
            Replay::Unknown
        );
    }

    #[test]
    fn a_zero_sized_log_keeps_nothing() {
        let now = Instant::now();
        let mut l = log(0);
        let _ = l.push("1", None, "e", &frame("x"), Source::Live, now);
        assert_eq!(l.since("1", None, &EventFilter::Any, now), Replay::Unknown);
    }

    #[test]
    fn an_id_already_held_is_a_duplicate() {
        let now = Instant::now();
        let mut l = log(10);
        assert_eq!(
            l.push("a", None, "e", &frame("1"), Source::Broker, now),
            Pushed::New
        );
        assert_eq!(
            l.push("a", None, "e", &frame("1"), Source::Live, now),
            Pushed::Duplicate
        );
        assert_eq!(
            l.push("b", None, "e", &frame("2"), Source::Live, now),
            Pushed::New
        );
        assert!(l.contains("a") && l.contains("b") && !l.contains("c"));
        // Replaying after an id read from the broker says so.
        assert_eq!(
            l.since("a", None, &EventFilter::Any, now),
            Replay::Frames {
                frames: vec![frame("2")],
                from_broker: true
            }
        );
        assert_eq!(l.len(), 2);
    }
}
