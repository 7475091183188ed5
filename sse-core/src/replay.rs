//! The replay log: the recent envelopes an instance received, so that a client reconnecting with
//! `Last-Event-ID` (to this instance or any other) gets everything it missed.
//!
//! Every instance receives every event of its app, so any instance can serve any session's
//! history. The log is bounded by count, age and bytes; the resume point is found through a hash
//! index from event id to position, never by scanning.

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasher, BuildHasherDefault, Hasher, RandomState};
use std::time::Duration;

use bytes::Bytes;
use tokio::time::Instant;

use crate::repository::EventFilter;

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
    /// The frames after the last event id that match the stream, in order.
    Frames(Vec<Bytes>),
    /// The id is not in the log.
    Unknown,
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

    pub(crate) fn push(
        &mut self,
        id: &str,
        session: Option<&str>,
        event_name: &str,
        frame: &Bytes,
        now: Instant,
    ) {
        if self.config.max_events == 0 {
            return;
        }
        let (Ok(id_len), Ok(session_len)) = (
            u32::try_from(id.len()),
            session.map(|s| u32::try_from(s.len())).transpose(),
        ) else {
            // Ids and sessions of 4 GiB do not get here (the broker refuses them first).
            return;
        };
        let mut text =
            String::with_capacity(id.len() + session.map_or(0, str::len) + event_name.len());
        text.push_str(id);
        text.push_str(session.unwrap_or(""));
        text.push_str(event_name);
        let seq = self.next_seq;
        self.next_seq += 1;
        let key = self.hasher.hash_one(id);
        self.index.insert(key, seq);
        self.bytes += frame.len();
        self.entries.push_back(Entry {
            seq,
            key,
            text: text.into_boxed_str(),
            id_len,
            session_len,
            frame: frame.clone(),
            at: now,
        });
        self.evict(now);
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

    /// The frames after `last_id` for a stream of `session` (broadcasts included) and `events`.
    pub(crate) fn since(
        &mut self,
        last_id: &str,
        session: Option<&str>,
        events: &EventFilter,
        now: Instant,
    ) -> Replay {
        self.evict(now);
        let Some(&seq) = self.index.get(&self.hasher.hash_one(last_id)) else {
            return Replay::Unknown;
        };
        let first = self.entries.front().map_or(0, |e| e.seq);
        let Some(found) = usize::try_from(seq - first)
            .ok()
            .and_then(|at| self.entries.get(at))
            .filter(|e| e.id() == last_id)
        else {
            return Replay::Unknown;
        };
        let start = usize::try_from(found.seq + 1 - first).unwrap_or(usize::MAX);
        Replay::Frames(
            self.entries
                .range(start.min(self.entries.len())..)
                .filter(|e| match e.session() {
                    None => true,
                    Some(target) => session == Some(target),
                })
                .filter(|e| events.matches(e.event_name()))
                .map(|e| e.frame.clone())
                .collect(),
        )
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.entries.len()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn frame(s: &str) -> Bytes {
        Bytes::from(s.to_owned())
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
        l.push("1", Some("s1"), "e", &frame("a"), now);
        l.push("2", Some("s2"), "e", &frame("b"), now);
        l.push("3", None, "e", &frame("c"), now);
        l.push("4", Some("s1"), "other", &frame("d"), now);
        l.push("5", Some("s1"), "e", &frame("e"), now);
        let any = EventFilter::Any;
        let only_e = EventFilter::parse("e").unwrap();
        assert_eq!(
            l.since("1", Some("s1"), &any, now),
            Replay::Frames(vec![frame("c"), frame("d"), frame("e")])
        );
        assert_eq!(
            l.since("1", Some("s1"), &only_e, now),
            Replay::Frames(vec![frame("c"), frame("e")])
        );
        assert_eq!(
            l.since("2", None, &any, now),
            Replay::Frames(vec![frame("c")])
        );
        assert_eq!(l.since("5", Some("s1"), &any, now), Replay::Frames(vec![]));
        assert_eq!(l.since("nope", Some("s1"), &any, now), Replay::Unknown);
    }

    #[test]
    fn bounded_by_count_bytes_and_age() {
        let now = Instant::now();
        let mut l = log(3);
        for i in 0..10 {
            l.push(&i.to_string(), None, "e", &frame("x"), now);
        }
        assert_eq!(l.len(), 3);
        assert_eq!(l.index.len(), 3);
        assert_eq!(l.since("6", None, &EventFilter::Any, now), Replay::Unknown);
        assert_eq!(
            l.since("7", None, &EventFilter::Any, now),
            Replay::Frames(vec![frame("x"), frame("x")])
        );

        let mut l = ReplayLog::new(ReplayConfig {
            max_bytes: 10,
            ..ReplayConfig::default()
        });
        for i in 0..5 {
            l.push(&i.to_string(), None, "e", &frame("1234"), now);
        }
        assert_eq!(l.len(), 2);

        let mut l = log(100);
        l.push("old", None, "e", &frame("x"), now);
        let later = now + Duration::from_secs(301);
        l.push("new", None, "e", &frame("y"), later);
        assert_eq!(
            l.since("old", None, &EventFilter::Any, later),
            Replay::Unknown
        );
        assert_eq!(
            l.since("new", None, &EventFilter::Any, later),
            Replay::Frames(vec![])
        );
    }

    #[test]
    fn entries_keep_their_id_session_and_name_apart() {
        let now = Instant::now();
        let mut l = log(10);
        l.push("id-1", Some("sess"), "name", &frame("a"), now);
        l.push("id-2", None, "other", &frame("b"), now);
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
        l.push("1", None, "e", &frame("x"), now);
        assert_eq!(l.since("1", None, &EventFilter::Any, now), Replay::Unknown);
    }
}
