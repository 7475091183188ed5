//! Counters of what a hub did, cheap to bump on the hot path.

use std::sync::atomic::{AtomicU64, Ordering};

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
    pub(crate) rejected_instance_limit: AtomicU64,
    pub(crate) rejected_session_limit: AtomicU64,
    closed_client_gone: AtomicU64,
    closed_timeout: AtomicU64,
    closed_slow_client: AtomicU64,
    closed_shutdown: AtomicU64,
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
}

impl Stats {
    pub(crate) fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn add(counter: &AtomicU64, n: usize) {
        counter.fetch_add(n as u64, Ordering::Relaxed);
    }

    pub(crate) fn closed(&self, reason: CloseReason) {
        Self::bump(match reason {
            CloseReason::Timeout => &self.closed_timeout,
            CloseReason::SlowClient => &self.closed_slow_client,
            CloseReason::Shutdown => &self.closed_shutdown,
            _ => &self.closed_client_gone,
        });
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
            rejected_instance_limit: get(&self.rejected_instance_limit),
            rejected_session_limit: get(&self.rejected_session_limit),
            closed_client_gone: get(&self.closed_client_gone),
            closed_timeout: get(&self.closed_timeout),
            closed_slow_client: get(&self.closed_slow_client),
            closed_shutdown: get(&self.closed_shutdown),
        }
    }
}
