//! Counters of what a hub did, cheap to bump on the hot path.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde::Serialize;

use crate::repository::CloseReason;

/// Live counters of one hub. Read them with [`Hub::stats`](crate::Hub::stats).
#[derive(Debug, Default)]
pub(crate) struct Stats {
    pub(crate) published: AtomicU64,
    pub(crate) publish_failed: AtomicU64,
    pub(crate) received: AtomicU64,
    pub(crate) malformed: AtomicU64,
    pub(crate) dropped_other_app: AtomicU64,
    pub(crate) delivered: AtomicU64,
    pub(crate) streams_opened: AtomicU64,
    pub(crate) replayed: AtomicU64,
    pub(crate) replay_unknown: AtomicU64,
    pub(crate) replays_local: AtomicU64,
    pub(crate) replays_broker: AtomicU64,
    pub(crate) duplicates: AtomicU64,
    pub(crate) history_reads: AtomicU64,
    pub(crate) history_read_failed: AtomicU64,
    pub(crate) history_loaded: AtomicU64,
    pub(crate) gaps: AtomicU64,
    pub(crate) gaps_unrecovered: AtomicU64,
    pub(crate) probes: AtomicU64,
    pub(crate) probe_failures: AtomicU64,
    pub(crate) caught_up: AtomicU64,
    pub(crate) received_unmatched: AtomicU64,
    pub(crate) route_subscribes: AtomicU64,
    pub(crate) route_unsubscribes: AtomicU64,
    pub(crate) route_failures: AtomicU64,
    pub(crate) rejected_instance_limit: AtomicU64,
    pub(crate) rejected_session_limit: AtomicU64,
    pub(crate) disconnects: AtomicU64,
    /// Streams from opening until their [`EventStream`](crate::EventStream) is dropped: a stream
    /// closed as slow keeps counting while the HTTP layer still holds it (an HTTP/2 stream whose
    /// client does not read is not polled, so not dropped, until the client reads or leaves).
    pub(crate) streams_held: AtomicU64,
    closed_client_gone: AtomicU64,
    closed_timeout: AtomicU64,
    closed_slow_client: AtomicU64,
    closed_shutdown: AtomicU64,
    closed_disconnected: AtomicU64,
    pub(crate) publish_latency: Latency,
    pub(crate) history_read_latency: Latency,
    pub(crate) route_subscribe_latency: Latency,
}

/// A copy of a hub's counters at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct StatsSnapshot {
    /// Events this instance published successfully.
    pub published: u64,
    /// Publish calls that failed (invalid event or backend error).
    pub publish_failed: u64,
    /// Envelopes received from the backend.
    pub received: u64,
    /// Received envelopes that could not be decoded, skipped.
    pub malformed: u64,
    /// Received envelopes of other applications, skipped.
    pub dropped_other_app: u64,
    /// Frames queued for streams (one event to three streams counts three).
    pub delivered: u64,
    /// Streams opened.
    pub streams_opened: u64,
    /// Events replayed to resuming streams.
    pub replayed: u64,
    /// Resuming streams whose `Last-Event-ID` was not in the history (sent the reset event).
    pub replay_unknown: u64,
    /// Resuming streams served from history this instance had received live.
    pub replays_local: u64,
    /// Resuming streams whose `Last-Event-ID` this instance knows only from the broker's
    /// history (it was not running, or not subscribed, when that event went by).
    pub replays_broker: u64,
    /// Envelopes received a second time under an id the history holds, not delivered again.
    pub duplicates: u64,
    /// Reads of the broker's history (one when the hub starts).
    pub history_reads: u64,
    /// Reads of the broker's history that failed.
    pub history_read_failed: u64,
    /// Envelopes read from the broker's history.
    pub history_loaded: u64,
    /// Gaps the backend's subscription reported (it may have missed envelopes; see
    /// [`Received::Gap`](crate::Received::Gap)).
    pub gaps: u64,
    /// Gaps with no history to read, or whose read failed in a way that is not temporary (a
    /// temporary refusal is waited out): what was published meanwhile may be missing on this
    /// instance.
    pub gaps_unrecovered: u64,
    /// Delivery probes sent (see [`crate::probe`]).
    pub probes: u64,
    /// Delivery probes that did not come back: the subscription was silent though connected,
    /// and was made again (see [`crate::probe`]).
    pub probe_failures: u64,
    /// Envelopes read after a gap that the subscription had not received (those the replay log
    /// held already count as duplicates too).
    pub caught_up: u64,
    /// Received targeted envelopes that matched no stream on this instance: the cost of
    /// broadcast routing (or, in session routing, of a partition shared with other sessions).
    pub received_unmatched: u64,
    /// Session routes subscribed (see [`crate::route`]).
    pub route_subscribes: u64,
    /// Session routes unsubscribed after their linger.
    pub route_unsubscribes: u64,
    /// Session routes whose subscribe or unsubscribe failed.
    pub route_failures: u64,
    /// Streams refused because the instance was at its stream limit.
    pub rejected_instance_limit: u64,
    /// Streams refused because their session was at its stream limit.
    pub rejected_session_limit: u64,
    /// Streams closed because the client went away.
    pub closed_client_gone: u64,
    /// Streams closed at the emitter timeout.
    pub closed_timeout: u64,
    /// Streams closed because the client did not keep up.
    pub closed_slow_client: u64,
    /// Streams closed by shutdown.
    pub closed_shutdown: u64,
    /// Disconnects this instance received (see [`crate::disconnect`]).
    pub disconnects: u64,
    /// Streams ended by a disconnect of their session.
    pub closed_disconnected: u64,
}

impl Stats {
    pub(crate) fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn add(counter: &AtomicU64, n: usize) {
        counter.fetch_add(n as u64, Ordering::Relaxed);
    }

    /// Counts a stream that ended, when it is let go; streams closed as slow are counted when
    /// they are closed ([`closed_slow`](Self::closed_slow)), which may be long before.
    pub(crate) fn closed(&self, reason: CloseReason) {
        Self::bump(match reason {
            CloseReason::Timeout => &self.closed_timeout,
            CloseReason::SlowClient => return,
            CloseReason::Shutdown => &self.closed_shutdown,
            CloseReason::Disconnected => &self.closed_disconnected,
            _ => &self.closed_client_gone,
        });
    }

    /// Counts streams the repository closed as slow while delivering.
    pub(crate) fn closed_slow(&self, streams: usize) {
        Self::add(&self.closed_slow_client, streams);
    }

    pub(crate) fn snapshot(&self) -> StatsSnapshot {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        StatsSnapshot {
            published: get(&self.published),
            publish_failed: get(&self.publish_failed),
            received: get(&self.received),
            malformed: get(&self.malformed),
            dropped_other_app: get(&self.dropped_other_app),
            delivered: get(&self.delivered),
            streams_opened: get(&self.streams_opened),
            replayed: get(&self.replayed),
            replay_unknown: get(&self.replay_unknown),
            replays_local: get(&self.replays_local),
            replays_broker: get(&self.replays_broker),
            duplicates: get(&self.duplicates),
            history_reads: get(&self.history_reads),
            history_read_failed: get(&self.history_read_failed),
            history_loaded: get(&self.history_loaded),
            gaps: get(&self.gaps),
            gaps_unrecovered: get(&self.gaps_unrecovered),
            probes: get(&self.probes),
            probe_failures: get(&self.probe_failures),
            caught_up: get(&self.caught_up),
            received_unmatched: get(&self.received_unmatched),
            route_subscribes: get(&self.route_subscribes),
            route_unsubscribes: get(&self.route_unsubscribes),
            route_failures: get(&self.route_failures),
            rejected_instance_limit: get(&self.rejected_instance_limit),
            rejected_session_limit: get(&self.rejected_session_limit),
            closed_client_gone: get(&self.closed_client_gone),
            closed_timeout: get(&self.closed_timeout),
            closed_slow_client: get(&self.closed_slow_client),
            closed_shutdown: get(&self.closed_shutdown),
            disconnects: get(&self.disconnects),
            closed_disconnected: get(&self.closed_disconnected),
        }
    }
}

/// Upper bounds, in seconds, of the publish latency histogram's buckets: 0.5 ms to 5 s.
pub const PUBLISH_LATENCY_BUCKETS: [f64; 13] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];

/// A latency histogram in atomics: what a publish costs is a few additions, nothing allocated.
#[derive(Debug, Default)]
pub(crate) struct Latency {
    /// One counter per bucket of [`PUBLISH_LATENCY_BUCKETS`], then one for larger values.
    buckets: [AtomicU64; PUBLISH_LATENCY_BUCKETS.len() + 1],
    sum_nanos: AtomicU64,
}

impl Latency {
    pub(crate) fn record(&self, elapsed: Duration) {
        let seconds = elapsed.as_secs_f64();
        let bucket = PUBLISH_LATENCY_BUCKETS
            .iter()
            .position(|&le| seconds <= le)
            .unwrap_or(PUBLISH_LATENCY_BUCKETS.len());
        self.buckets[bucket].fetch_add(1, Ordering::Relaxed);
        let nanos = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
        self.sum_nanos.fetch_add(nanos, Ordering::Relaxed);
    }

    pub(crate) fn snapshot(&self) -> LatencySnapshot {
        let mut cumulative = 0;
        let mut buckets = Vec::with_capacity(PUBLISH_LATENCY_BUCKETS.len());
        for (le, counter) in PUBLISH_LATENCY_BUCKETS.iter().zip(&self.buckets) {
            cumulative += counter.load(Ordering::Relaxed);
            buckets.push((*le, cumulative));
        }
        let count =
            cumulative + self.buckets[PUBLISH_LATENCY_BUCKETS.len()].load(Ordering::Relaxed);
        LatencySnapshot {
            buckets,
            count,
            sum_seconds: self.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9,
        }
    }
}

/// How long publishing took, as a Prometheus-style histogram. Read it with
/// [`Hub::publish_latency`](crate::Hub::publish_latency).
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct LatencySnapshot {
    /// For each upper bound in seconds, how many publishes took at most that long.
    pub buckets: Vec<(f64, u64)>,
    /// Publishes measured.
    pub count: u64,
    /// Their total duration.
    pub sum_seconds: f64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latency_buckets_are_cumulative() {
        let latency = Latency::default();
        for ms in [0, 2, 2, 40, 9000] {
            latency.record(Duration::from_millis(ms));
        }
        let s = latency.snapshot();
        assert_eq!(s.count, 5);
        assert_eq!(s.buckets[0], (0.0005, 1));
        assert_eq!(s.buckets[2], (0.0025, 3));
        assert_eq!(s.buckets[6], (0.05, 4));
        assert_eq!(s.buckets[12], (5.0, 4));
        assert!((s.sum_seconds - 9.044).abs() < 1e-9);
    }
}

/// Lets a log line through at most once per period, counting the ones it held back: one bad
/// publisher must not flood the log (the counters still count every case).
#[derive(Debug, Default)]
pub(crate) struct LogLimit {
    /// Milliseconds since the Unix epoch before which no line goes through.
    next_at: AtomicU64,
    held: AtomicU64,
}

impl LogLimit {
    /// `Some(lines held back since the last one)` when a line may be written now.
    pub(crate) fn allow(&self, every: Duration) -> Option<u64> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        self.allow_at(now, every)
    }

    fn allow_at(&self, now_ms: u64, every: Duration) -> Option<u64> {
        let next = self.next_at.load(Ordering::Relaxed);
        let every = u64::try_from(every.as_millis()).unwrap_or(u64::MAX);
        if now_ms >= next
            && self
                .next_at
                .compare_exchange(
                    next,
                    now_ms.saturating_add(every),
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                )
                .is_ok()
        {
            return Some(self.held.swap(0, Ordering::Relaxed));
        }
        self.held.fetch_add(1, Ordering::Relaxed);
        None
    }
}

#[cfg(test)]
mod log_limit_tests {
    use super::*;

    #[test]
    fn one_line_a_period_and_a_count_of_the_rest() {
        let limit = LogLimit::default();
        let second = Duration::from_secs(1);
        assert_eq!(limit.allow_at(10_000, second), Some(0));
        for t in 10_001..10_500 {
            assert_eq!(limit.allow_at(t, second), None);
        }
        assert_eq!(limit.allow_at(10_999, second), None);
        assert_eq!(limit.allow_at(11_000, second), Some(500));
        assert_eq!(limit.allow_at(12_500, second), Some(0));
    }
}
