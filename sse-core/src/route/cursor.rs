//! The resume position of a stream in session routing, written as its SSE `id`.
//!
//! A session's stream has two sources: the broadcasts and the session's route. Each source
//! reaches every instance in the same order, but how the two interleave differs from instance to
//! instance (they travel on different channels, subjects or queues), so "everything after event
//! X" means something else on each: a client moving at that moment would get an event twice, or
//! never. So the id a hub writes on such a stream names the stream's place in **both**:
//!
//! ```text
//! id: <event id>~<the other source's last event id>     e.g. 0190…-7a1~0190…-6f3
//! id: <event id>~@<unix ms>                             nothing of the other source yet
//! ```
//!
//! A routed event's frame carries the last broadcast this instance received before it (the
//! same for every stream here: a stream that opens or resumes here is at this instance's place
//! in the broadcasts). A broadcast's frame leaves the other part empty (`<id>~`) and each
//! session's stream fills in its own last routed event as it writes the frame
//! ([`Cursors`]). A resume on any instance then replays the broadcasts after the one position
//! and the session's events after the other, whatever order the instance saw them in.
//!
//! The event id stays first and readable (`lastEventId.split("~")[0]` for ids without `~`); an
//! id that holds `~` or `\` has them escaped with `\`. Plain ids (broadcast routing) name a
//! position in the one source there is.

use std::borrow::Cow;
use std::time::{Duration, SystemTime};

use bytes::{BufMut, Bytes, BytesMut};

use crate::history;

/// Between the event id and the other source's position.
const SEP: u8 = b'~';
const ESCAPE: u8 = b'\\';

/// How much earlier than a stream's start (`@ms`) a resume looks for the events of a source it
/// had none of yet: publishers' clocks differ. An event from that margin may reach the stream
/// though it was published just before the stream opened; none is missed.
pub(crate) const SINCE_MARGIN: Duration = Duration::from_secs(5);

/// Escapes an event id for a cursor: `\` and `~` get a `\` before them.
pub(crate) fn escape(id: &str) -> Cow<'_, str> {
    if !id.bytes().any(|b| b == SEP || b == ESCAPE) {
        return Cow::Borrowed(id);
    }
    let mut out = String::with_capacity(id.len() + 4);
    for c in id.chars() {
        if c == '~' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    Cow::Owned(out)
}

fn unescape(escaped: &str) -> Cow<'_, str> {
    if !escaped.contains('\\') {
        return Cow::Borrowed(escaped);
    }
    let mut out = String::with_capacity(escaped.len());
    let mut chars = escaped.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            if let Some(next) = chars.next() {
                out.push(next);
            }
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

/// The event part of a cursor as written in a frame's `id` field: up to the first unescaped `~`.
pub(crate) fn event_part(field: &[u8]) -> &[u8] {
    &field[..separator(field).unwrap_or(field.len())]
}

/// The position of the first unescaped `~` in `field`.
fn separator(field: &[u8]) -> Option<usize> {
    let mut i = 0;
    while i < field.len() {
        match field[i] {
            ESCAPE => i += 2,
            SEP => return Some(i),
            _ => i += 1,
        }
    }
    None
}

/// The stream's place in its other source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Other {
    /// None named: a plain id (broadcast routing, or a stream without a session), whose event
    /// is a position in the one order the stream has.
    Unnamed,
    /// After this event (its id, unescaped).
    After(String),
    /// Every event of that source published since this time (the stream had none yet).
    Since(SystemTime),
}

/// A `Last-Event-ID` read as a cursor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Cursor {
    /// The id of the last event the client received.
    pub(crate) event: String,
    pub(crate) other: Other,
}

impl Cursor {
    /// The stream's place in the routed source this cursor names, as broadcasts' ids carry it
    /// (escaped), given whether its event is a routed one (`event_session`, as the log or read
    /// that serves the resume knows it). Before any routed event: since now.
    pub(crate) fn routed_part(&self, event_session: Option<Option<&str>>) -> String {
        match (event_session, &self.other) {
            (Some(Some(_)), _) => escape(&self.event).into_owned(),
            (_, Other::After(id)) => escape(id).into_owned(),
            (_, Other::Since(t)) => since(*t),
            (_, Other::Unnamed) => since(SystemTime::now()),
        }
    }

    /// A `Last-Event-ID` of broadcast routing, where ids are written as they are: the event.
    pub(crate) fn plain(last: &str) -> Cursor {
        Cursor {
            event: last.to_owned(),
            other: Other::Unnamed,
        }
    }

    /// Reads a `Last-Event-ID` of session routing: any string is a cursor (a plain id names its
    /// event only).
    pub(crate) fn parse(last: &str) -> Cursor {
        let Some(at) = separator(last.as_bytes()) else {
            return Cursor {
                event: unescape(last).into_owned(),
                other: Other::Unnamed,
            };
        };
        let (event, other) = (&last[..at], &last[at + 1..]);
        let other = if other.is_empty() {
            Other::Unnamed
        } else if let Some(ms) = other
            .strip_prefix('@')
            .and_then(|ms| ms.parse::<u64>().ok())
        {
            Other::Since(SystemTime::UNIX_EPOCH + Duration::from_millis(ms))
        } else {
            Other::After(unescape(other).into_owned())
        };
        Cursor {
            event: unescape(event).into_owned(),
            other,
        }
    }
}

/// The other part of a cursor for a source that has had no event yet: since `at`.
pub(crate) fn since(at: SystemTime) -> String {
    format!("@{}", history::unix_millis(at))
}

/// The `id` field of a routed event's frame: the event, then the last broadcast before it.
pub(crate) fn routed_id(event: &str, last_broadcast: &str) -> String {
    format!("{}~{last_broadcast}", escape(event))
}

/// The `id` field of a broadcast's frame in session routing: the event, the other part left
/// for each stream to fill in ([`Cursors::write`]).
pub(crate) fn broadcast_id(event: &str) -> String {
    format!("{}~", escape(event))
}

/// `frame` (`id: …` first) with `id` as its `id` field instead.
pub(crate) fn with_id(frame: &Bytes, id: &str) -> Bytes {
    let Some(end) = frame.iter().position(|&b| b == b'\n') else {
        return frame.clone();
    };
    let mut out = BytesMut::with_capacity(frame.len() + id.len());
    out.put_slice(b"id: ");
    out.put_slice(id.as_bytes());
    out.put_slice(&frame[end..]);
    out.freeze()
}

/// One session stream's place in the routed source, kept as its frames go out: a broadcast's
/// frame gets it written into its `id`, a routed event's frame moves it.
#[derive(Debug)]
pub(crate) struct Cursors {
    /// The other part for broadcasts: the escaped id of the last routed event written, or
    /// `@ms` before the first.
    routed: String,
}

impl Cursors {
    pub(crate) fn new(routed: String) -> Self {
        Cursors { routed }
    }

    /// The frame to write for `frame`: a broadcast's with this stream's routed position filled
    /// in (a copy), any other as it is (a routed event's moves the position).
    pub(crate) fn write(&mut self, frame: Bytes) -> Bytes {
        let Some(rest) = frame.strip_prefix(b"id: ") else {
            return frame; // comments, retry, the reset event
        };
        let Some(end) = rest.iter().position(|&b| b == b'\n') else {
            return frame;
        };
        let field = &rest[..end];
        let Some(at) = separator(field) else {
            return frame;
        };
        if at + 1 < field.len() {
            // A routed event: the stream is now after it.
            if let Ok(event) = std::str::from_utf8(&field[..at]) {
                event.clone_into(&mut self.routed);
            }
            return frame;
        }
        // A broadcast: `id: <event>~` + this stream's routed position.
        let split = 4 + end;
        let mut out = BytesMut::with_capacity(frame.len() + self.routed.len());
        out.put_slice(&frame[..split]);
        out.put_slice(self.routed.as_bytes());
        out.put_slice(&frame[split..]);
        out.freeze()
    }
}

/// Where each source's replay starts in an ordered sequence of events (a replay log, a read of
/// the broker's history): a broadcast at index `i` is replayed when `i >= broadcasts`, an event
/// of the session when `i >= routed`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Starts {
    pub(crate) broadcasts: usize,
    pub(crate) routed: usize,
}

/// What [`starts`] needs to know of the sequence.
pub(crate) trait Sequence {
    fn len(&self) -> usize;
    /// The index of the event with this id.
    fn find(&self, id: &str) -> Option<usize>;
    /// The session of the event at `i` (`None`: a broadcast).
    fn session(&self, i: usize) -> Option<&str>;
    /// When the event at `i` was published, as far as the sequence knows.
    fn published(&self, i: usize) -> SystemTime;
}

/// Where the replay for `cursor` starts in `events`, for a stream of `session`; `None` when the
/// sequence does not hold a position the cursor names (the replay must come from elsewhere), or
/// the cursor's event is another session's (a forged id).
pub(crate) fn starts(
    cursor: &Cursor,
    session: Option<&str>,
    events: &impl Sequence,
) -> Option<Starts> {
    let at = events.find(&cursor.event)?;
    if cursor.other == Other::Unnamed {
        // A position in the one order the stream had.
        return Some(Starts {
            broadcasts: at + 1,
            routed: at + 1,
        });
    }
    let own = events.session(at);
    if own.is_some() && own != session {
        return None;
    }
    let other = match &cursor.other {
        Other::Unnamed => at + 1,
        Other::After(id) => {
            let other = events.find(id)?;
            // The other part names the other source.
            if events.session(other).is_some() == own.is_some() {
                return None;
            }
            other + 1
        }
        Other::Since(t) => {
            let from = t
                .checked_sub(SINCE_MARGIN)
                .unwrap_or(SystemTime::UNIX_EPOCH);
            (0..events.len())
                .find(|&i| events.published(i) >= from)
                .unwrap_or(events.len())
        }
    };
    Some(if own.is_some() {
        Starts {
            broadcasts: other,
            routed: at + 1,
        }
    } else {
        Starts {
            broadcasts: at + 1,
            routed: other,
        }
    })
}

impl Starts {
    /// Whether the event at `i`, of `event_session`, is replayed to a stream of `session`.
    pub(crate) fn replays(
        &self,
        i: usize,
        event_session: Option<&str>,
        session: Option<&str>,
    ) -> bool {
        match event_session {
            None => i >= self.broadcasts,
            Some(s) => session == Some(s) && i >= self.routed,
        }
    }

    /// The first index anything is replayed from.
    pub(crate) fn first(&self) -> usize {
        self.broadcasts.min(self.routed)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn ids_escape_and_parse_back() {
        for id in ["plain", "a~b", "back\\slash~", "~", "\\", ""] {
            let cursor = Cursor::parse(&routed_id(id, &escape("b~1")));
            assert_eq!(cursor.event, id);
            assert_eq!(cursor.other, Other::After("b~1".into()));
            let cursor = Cursor::parse(&broadcast_id(id));
            assert_eq!((cursor.event.as_str(), cursor.other), (id, Other::Unnamed));
        }
        assert_eq!(
            Cursor::parse("x~@1700000000000").other,
            Other::Since(SystemTime::UNIX_EPOCH + Duration::from_millis(1_700_000_000_000))
        );
        let plain = Cursor::parse("order-17");
        assert_eq!(
            (plain.event.as_str(), plain.other),
            ("order-17", Other::Unnamed)
        );
    }

    #[test]
    fn a_broadcast_gets_the_streams_routed_position_and_a_routed_event_moves_it() {
        let mut cursors = Cursors::new("@5".into());
        let broadcast =
            |id: &str| Bytes::from(format!("id: {}\nevent: e\ndata: b\n\n", broadcast_id(id)));
        assert_eq!(
            cursors.write(broadcast("b1")),
            "id: b1~@5\nevent: e\ndata: b\n\n"
        );
        let routed = Bytes::from(format!("id: {}\ndata: r\n\n", routed_id("r~1", "b1")));
        assert_eq!(cursors.write(routed.clone()), routed);
        assert_eq!(
            cursors.write(broadcast("b2")),
            "id: b2~r\\~1\nevent: e\ndata: b\n\n"
        );
        for other in [": heartbeat\n", "retry: 1000\n", "id: plain\ndata: x\n\n"] {
            assert_eq!(cursors.write(Bytes::from(other)), other);
        }
    }

    struct Events(Vec<(&'static str, Option<&'static str>, u64)>);

    impl Sequence for Events {
        fn len(&self) -> usize {
            self.0.len()
        }
        fn find(&self, id: &str) -> Option<usize> {
            self.0.iter().position(|e| e.0 == id)
        }
        fn session(&self, i: usize) -> Option<&str> {
            self.0[i].1
        }
        fn published(&self, i: usize) -> SystemTime {
            SystemTime::UNIX_EPOCH + Duration::from_millis(self.0[i].2)
        }
    }

    /// The point of cursors: two instances that saw a broadcast and a routed event in opposite
    /// orders agree on what a client that left after either has still to get.
    #[test]
    fn each_source_resumes_from_its_own_position_whatever_the_order() {
        // Instance A saw r1 then b1; instance B sees b1 then r1.
        let on_b = Events(vec![
            ("b0", None, 0),
            ("b1", None, 10),
            ("r1", Some("s"), 10),
            ("r2", Some("s"), 20),
            ("x", Some("other"), 20),
        ]);
        // Left A after b1 (having r1): `b1~r1`. On B: r2 only, not r1 again.
        let replayed = |last: &str| -> Vec<&str> {
            let from = starts(&Cursor::parse(last), Some("s"), &on_b).unwrap();
            (from.first()..on_b.len())
                .filter(|&i| from.replays(i, on_b.0[i].1, Some("s")))
                .map(|i| on_b.0[i].0)
                .collect()
        };
        assert_eq!(replayed(&format!("b1~{}", escape("r1"))), ["r2"]);
        // Left A after r1 (before b1 reached A): `r1~b0`. On B: b1 and r2, b1 not lost.
        assert_eq!(replayed(&routed_id("r1", "b0")), ["b1", "r2"]);
        // Nothing routed yet since 15 ms: r2 (and r1, within the margin).
        assert_eq!(
            starts(&Cursor::parse("b1~@15"), Some("s"), &on_b),
            Some(Starts {
                broadcasts: 2,
                routed: 0
            })
        );
        // Another session's event is no cursor of ours.
        assert!(super::starts(&Cursor::parse("x~b1"), Some("s"), &on_b).is_none());
        // Both parts of one source: forged.
        assert!(super::starts(&Cursor::parse("b1~b0"), Some("s"), &on_b).is_none());
    }
}
