//! The stream's order, restored per subject from the republished messages' headers.
//!
//! The server sequences a stored message under the stream's lock but republishes it after
//! letting go, so two publishers' messages can go out in the other order than their sequence
//! numbers (every subscriber then sees the same swap, but a read of the history does not). Each
//! republished message carries its sequence (`Nats-Sequence`) and the sequence of the message
//! before it on the same subject (`Nats-Last-Sequence`), so a subject's messages form a chain:
//! a message whose predecessor has not arrived yet waits for it.
//!
//! The first message of a subject since subscribing (or since a gap) cannot know whether its
//! predecessor will come (it may have been published before the subscription): it waits
//! [`FIRST_HOLD`] for it, long beyond the microseconds a swap spans. A message still waiting
//! after [`HOLD`] goes out in sequence order, after a gap the subscription reports: its
//! predecessor was lost on the way (in a cluster, a republish lost as the stream's leader
//! moved), and the hub reads it from the history.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

use bytes::Bytes;
use tokio::time::Instant;

/// How long the first message of a subject waits for a predecessor.
pub(crate) const FIRST_HOLD: Duration = Duration::from_millis(5);
/// How long a message waits for a predecessor the chain says must come.
pub(crate) const HOLD: Duration = Duration::from_secs(1);

/// A republished message's place in its stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Stamp {
    /// Its sequence number.
    pub seq: u64,
    /// The sequence number of the message before it on its subject (0: none).
    pub prev: u64,
}

impl Stamp {
    /// The stamp of a republished message, from its headers.
    pub(crate) fn of(headers: Option<&async_nats::HeaderMap>) -> Option<Stamp> {
        let headers = headers?;
        let number = |name: &str| headers.get(name)?.as_str().parse::<u64>().ok();
        Some(Stamp {
            seq: number(async_nats::header::NATS_SEQUENCE.as_ref())?,
            prev: number(async_nats::header::NATS_LAST_SEQUENCE.as_ref())?,
        })
    }
}

/// One subject's chain.
#[derive(Debug, Default)]
struct Chain {
    /// The sequence of the last message let out, once one was.
    last: Option<u64>,
    /// Messages waiting for their predecessor, by the predecessor's sequence.
    waiting: BTreeMap<u64, Waiting>,
}

#[derive(Debug)]
struct Waiting {
    seq: u64,
    payload: Bytes,
    until: Instant,
}

/// Lets messages out per subject in the stream's order. See the module docs.
#[derive(Debug, Default)]
pub(crate) struct Sequencer {
    chains: HashMap<String, Chain>,
    /// The subjects with a message waiting: what `expire` and `deadline` look at, so a message
    /// costs nothing per subscribed subject.
    held: HashSet<String>,
}

impl Sequencer {
    /// Takes a message received on `subject`; appends to `out` what may now go out, in order.
    pub(crate) fn push(
        &mut self,
        subject: &str,
        stamp: Option<Stamp>,
        payload: Bytes,
        now: Instant,
        out: &mut Vec<Bytes>,
    ) {
        let Some(stamp) = stamp else {
            out.push(payload);
            return;
        };
        let chain = match self.chains.get_mut(subject) {
            Some(chain) => chain,
            None => self.chains.entry(subject.to_owned()).or_default(),
        };
        let next = match chain.last {
            Some(last) => stamp.prev == last || stamp.seq <= last,
            None => stamp.prev == 0,
        };
        if next {
            out.push(payload);
            chain.last = Some(chain.last.map_or(stamp.seq, |l| l.max(stamp.seq)));
            chain.follow(out);
            if chain.waiting.is_empty() && !self.held.is_empty() {
                self.held.remove(subject);
            }
            return;
        }
        let hold = if chain.last.is_some() {
            HOLD
        } else {
            FIRST_HOLD
        };
        chain.waiting.insert(
            stamp.prev,
            Waiting {
                seq: stamp.seq,
                payload,
                until: now + hold,
            },
        );
        self.held.insert(subject.to_owned());
    }

    /// Lets out, in sequence order, every chain that has a message waiting past its time.
    /// Returns whether a message its chain said must come never did (a chain that had let a
    /// message out before): it was lost on the way (a republish lost when a cluster's stream
    /// leader moved, say), and the caller reports a gap before what is let out.
    #[must_use = "a broken chain is a gap to report"]
    pub(crate) fn expire(&mut self, now: Instant, out: &mut Vec<Bytes>) -> bool {
        let chains = &mut self.chains;
        let mut broken = false;
        self.held.retain(|subject| {
            let Some(chain) = chains.get_mut(subject) else {
                return false;
            };
            if chain.waiting.values().any(|w| w.until <= now) {
                broken |= chain.last.is_some();
                chain.release(out);
            }
            !chain.waiting.is_empty()
        });
        broken
    }

    /// When [`expire`](Self::expire) next has something to do.
    pub(crate) fn deadline(&self) -> Option<Instant> {
        self.held
            .iter()
            .filter_map(|subject| self.chains.get(subject))
            .flat_map(|c| c.waiting.values().map(|w| w.until))
            .min()
    }

    /// Messages may have been missed: lets out everything waiting, in sequence order, and
    /// starts every chain afresh.
    pub(crate) fn gap(&mut self, out: &mut Vec<Bytes>) {
        for chain in self.chains.values_mut() {
            chain.release(out);
        }
        self.chains.clear();
        self.held.clear();
    }

    /// The subject is no longer subscribed.
    pub(crate) fn forget(&mut self, subject: &str) {
        self.chains.remove(subject);
        self.held.remove(subject);
    }
}

impl Chain {
    /// Lets out the waiting messages that now follow the last one.
    fn follow(&mut self, out: &mut Vec<Bytes>) {
        while let Some(last) = self.last
            && let Some(next) = self.waiting.remove(&last)
        {
            out.push(next.payload);
            self.last = Some(next.seq);
        }
    }

    /// Lets out every waiting message, in sequence order.
    fn release(&mut self, out: &mut Vec<Bytes>) {
        let mut waiting: Vec<Waiting> = std::mem::take(&mut self.waiting).into_values().collect();
        waiting.sort_by_key(|w| w.seq);
        for w in waiting {
            self.last = Some(self.last.map_or(w.seq, |l| l.max(w.seq)));
            out.push(w.payload);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stamp(seq: u64, prev: u64) -> Option<Stamp> {
        Some(Stamp { seq, prev })
    }

    fn push(s: &mut Sequencer, subject: &str, seq: u64, prev: u64, at: Instant) -> Vec<Bytes> {
        let mut out = Vec::new();
        s.push(
            subject,
            stamp(seq, prev),
            Bytes::from(seq.to_string()),
            at,
            &mut out,
        );
        out
    }

    fn names(out: &[Bytes]) -> Vec<String> {
        out.iter()
            .map(|b| String::from_utf8_lossy(b).into_owned())
            .collect()
    }

    #[test]
    fn a_swapped_pair_goes_out_in_sequence_order() {
        let now = Instant::now();
        let mut s = Sequencer::default();
        assert_eq!(names(&push(&mut s, "a", 10, 0, now)), ["10"]);
        // 12 came before 11 (its predecessor on the subject): it waits.
        assert!(push(&mut s, "a", 12, 11, now).is_empty());
        assert_eq!(names(&push(&mut s, "a", 11, 10, now)), ["11", "12"]);
        assert_eq!(s.deadline(), None);
    }

    #[test]
    fn subjects_are_chains_of_their_own() {
        let now = Instant::now();
        let mut s = Sequencer::default();
        assert_eq!(names(&push(&mut s, "a", 1, 0, now)), ["1"]);
        assert_eq!(names(&push(&mut s, "b", 2, 0, now)), ["2"]);
        // Sequences of other subjects in between are no gap.
        assert_eq!(names(&push(&mut s, "a", 7, 1, now)), ["7"]);
        assert_eq!(names(&push(&mut s, "b", 9, 2, now)), ["9"]);
    }

    #[test]
    fn the_first_message_waits_briefly_for_a_predecessor() {
        let now = Instant::now();
        let mut s = Sequencer::default();
        // Subscribed mid-stream: 21's predecessor 20 may or may not come.
        assert!(push(&mut s, "a", 21, 20, now).is_empty());
        assert!(push(&mut s, "a", 20, 15, now).is_empty());
        assert_eq!(s.deadline(), Some(now + FIRST_HOLD));
        let mut out = Vec::new();
        assert!(!s.expire(now + FIRST_HOLD / 2, &mut out));
        assert!(out.is_empty());
        // No gap: a first message's predecessor may well predate the subscription.
        assert!(!s.expire(now + FIRST_HOLD, &mut out));
        assert_eq!(names(&out), ["20", "21"]);
        // The chain goes on from there.
        assert_eq!(names(&push(&mut s, "a", 30, 21, now)), ["30"]);
    }

    #[test]
    fn a_lost_predecessor_is_waited_for_then_passed_after_a_gap() {
        let now = Instant::now();
        let mut s = Sequencer::default();
        push(&mut s, "a", 1, 0, now);
        assert!(push(&mut s, "a", 5, 3, now).is_empty());
        assert!(push(&mut s, "a", 4, 2, now).is_empty());
        assert_eq!(s.deadline(), Some(now + HOLD));
        let mut out = Vec::new();
        assert!(!s.expire(now + HOLD / 2, &mut out));
        assert!(s.expire(now + HOLD, &mut out), "2 and 3 never came: a gap");
        assert_eq!(names(&out), ["4", "5"]);
    }

    #[test]
    fn a_gap_lets_everything_out_and_starts_afresh() {
        let now = Instant::now();
        let mut s = Sequencer::default();
        push(&mut s, "a", 1, 0, now);
        push(&mut s, "a", 5, 3, now);
        let mut out = Vec::new();
        s.gap(&mut out);
        assert_eq!(names(&out), ["5"]);
        // After the gap, the next message starts its chain (waiting briefly).
        assert!(push(&mut s, "a", 9, 8, now).is_empty());
        assert_eq!(s.deadline(), Some(now + FIRST_HOLD));
    }

    #[test]
    fn unstamped_messages_pass_at_once() {
        let mut s = Sequencer::default();
        let mut out = Vec::new();
        s.push("a", None, Bytes::from("x"), Instant::now(), &mut out);
        assert_eq!(names(&out), ["x"]);
    }
}
