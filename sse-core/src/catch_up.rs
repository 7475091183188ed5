//! Catching up after a gap: the one place where the hub reads what a subscription missed.
//!
//! A backend's subscription yields [`Received::Gap`](crate::Received::Gap) where it may have
//! missed envelopes (its connection was lost and is back, the broker dropped messages of a slow
//! subscriber). The hub's receiving task then reads the backend's
//! [history](crate::history) from the gap's `since`, here, with one retry policy for every
//! backend, and delivers what the subscription had not received before it goes on with the
//! live envelopes that came after the gap (they wait in the subscription meanwhile).
//!
//! What the subscription had not received is found by **position**, not by time: the history
//! holds envelopes in the order the broker's subscribers receive them, so those after the last
//! envelope received live (found in the read by its id) are the missed ones, and those before it
//! are not, whether or not this instance's replay log holds them. That is what keeps a catch-up
//! from delivering again, in session routing, a session's events from before this instance held
//! its route (the log does not have them, yet the session's client does), or, at a high rate,
//! events the bounded log has let go of. When the last live envelope is not in the read (nothing
//! was received since the read's start), every envelope read is a candidate; the replay log
//! still drops those it holds.
//!
//! A backend whose broker keeps several orders ([lanes](crate::backend::Lane): the partitions of
//! a Redis Cluster, each on its own master) gives no order between them, so the hub reads each
//! lane on its own and finds its place in it by the last envelope it received live on that lane
//! ([`LastLive`]): a place found in one merged read would skip what one lane missed while
//! another went on.
//!
//! A catch-up does not give up while the broker's refusal is temporary: what the subscription
//! missed is only in the history, and a hub that went on without it would keep a hole in its log
//! that later resumes replay as if complete (a NATS cluster once refused reads for over 30 s
//! while its servers were replaced). Live delivery waits meanwhile, and once a read has failed
//! for [`DOWN_AFTER`] the hub reports itself down (`/healthz`) with the reason, so that a load
//! balancer sends new clients elsewhere. Only a failure that is not temporary (a missing stream,
//! a refused permission) ends the catch-up, counted as an unrecovered gap.
//!
//! While a catch-up runs, the hub is [`Behind`]: its log lacks what was published since the gap began, so a resume whose event it
//! does not hold is read from the broker's history, reaching back to where the gap began (see
//! `route::resume`), never answered from the log with a reset; and what the catch-up then
//! delivers, such a stream skips where it had it before its cursor.

use std::sync::{Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use futures_util::StreamExt;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::backend::Lane;
use crate::envelope::Envelope;
use crate::error::BackendError;
use crate::history::BrokerHistory;

/// How far before the last sign of life of a subscription found silent by the delivery probe its
/// catch-up begins (clocks of hosts and broker differ).
pub(crate) const PROBE_MARGIN: Duration = Duration::from_secs(5);

/// The first wait before reading again after a failed read; doubled up to [`MAX_RETRY`].
const FIRST_RETRY: Duration = Duration::from_millis(100);

/// The longest wait between two reads of one gap.
const MAX_RETRY: Duration = Duration::from_secs(2);

/// How long one read may take before it counts as failed (and is tried again): a backend whose
/// read hangs does not hold up live delivery for longer than this.
const ATTEMPT: Duration = Duration::from_secs(10);

/// How long reads may be refused before the hub reports itself down: a broker that is back for
/// the subscription may refuse reads for a moment (a JetStream leader being elected), which is
/// no reason to go down; longer is. It is also how long a hub's start waits for its history.
pub(crate) const DOWN_AFTER: Duration = Duration::from_secs(30);

/// Whether the hub is catching up after a gap, since when it may have missed envelopes, and why
/// it is down when the history has been unreadable for [`DOWN_AFTER`].
#[derive(Debug, Default)]
pub(crate) struct Behind(Mutex<Option<Lag>>);

#[derive(Debug)]
struct Lag {
    since: SystemTime,
    down: Option<String>,
}

impl Behind {
    /// Marks the hub behind since `since` until the returned guard is dropped (the catch-up has
    /// delivered what it read, or ended).
    pub(crate) fn enter(&self, since: SystemTime) -> BehindGuard<'_> {
        *self.lock() = Some(Lag { since, down: None });
        BehindGuard(self)
    }

    /// Since when the hub may lack envelopes, while it catches up.
    pub(crate) fn since(&self) -> Option<SystemTime> {
        self.lock().as_ref().map(|lag| lag.since)
    }

    /// Why the hub is down, when its catch-up has not been able to read for [`DOWN_AFTER`].
    pub(crate) fn down(&self) -> Option<String> {
        self.lock().as_ref().and_then(|lag| lag.down.clone())
    }

    fn set_down(&self, reason: String) {
        if let Some(lag) = self.lock().as_mut() {
            lag.down = Some(reason);
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Lag>> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Clears [`Behind`] when dropped.
#[derive(Debug)]
pub(crate) struct BehindGuard<'a>(&'a Behind);

impl Drop for BehindGuard<'_> {
    fn drop(&mut self) {
        *self.0.lock() = None;
    }
}

/// What reading a gap came to.
#[derive(Debug)]
pub(crate) enum Read {
    /// The history since the gap, oldest first.
    Envelopes(Vec<Bytes>),
    /// The hub is stopping.
    Stopped,
    /// The failure is not temporary.
    Failed(BackendError),
}

/// Reads `lane` of `history` since `since`, whole, trying again after temporary failures until
/// it succeeds or the hub stops; `behind` is marked down once reads have failed for
/// [`DOWN_AFTER`].
pub(crate) async fn read(
    history: &dyn BrokerHistory,
    lane: Lane,
    since: SystemTime,
    behind: &Behind,
    stop: &CancellationToken,
) -> Read {
    let mut backoff = Backoff::endless();
    let mut reported = false;
    loop {
        let attempt = async {
            let mut stream = if history.lanes() > 1 {
                history.read_lane_since(lane, since).await?
            } else {
                history.read_since(since).await?
            };
            let mut envelopes = Vec::new();
            while let Some(item) = stream.next().await {
                envelopes.push(item?);
            }
            Ok::<_, BackendError>(envelopes)
        };
        let attempt = async {
            tokio::time::timeout(ATTEMPT, attempt)
                .await
                .unwrap_or(Err(BackendError::Timeout {
                    backend: "history",
                    after: ATTEMPT,
                }))
        };
        let error = tokio::select! {
            () = stop.cancelled() => return Read::Stopped,
            result = attempt => match result {
                Ok(envelopes) => return Read::Envelopes(envelopes),
                Err(error) => error,
            },
        };
        let Some(wait) = backoff.after(&error) else {
            return Read::Failed(error);
        };
        if !reported && backoff.elapsed() >= DOWN_AFTER {
            reported = true;
            let reason = format!(
                "catching up after a gap: the broker's history has refused reads for {:?} \
                 ({error}); live delivery waits until it answers",
                backoff.elapsed()
            );
            tracing::warn!("{reason}");
            behind.set_down(reason);
        }
        tracing::debug!(%error, ?wait, "reading the history for a gap failed; trying again");
        tokio::select! {
            () = stop.cancelled() => return Read::Stopped,
            () = tokio::time::sleep(wait) => {}
        }
    }
}

/// The one retry policy of history reads: again after 0.1, 0.2, … 2 s while the failure is
/// temporary, either without end (a catch-up) or for up to a limit (a hub's start).
#[derive(Debug)]
pub(crate) struct Backoff {
    started: tokio::time::Instant,
    wait: Duration,
    limit: Option<Duration>,
}

impl Backoff {
    /// Gives up only on a failure that is not temporary.
    pub(crate) fn endless() -> Backoff {
        Backoff {
            started: tokio::time::Instant::now(),
            wait: FIRST_RETRY,
            limit: None,
        }
    }

    /// Gives up, too, once `limit` has passed.
    pub(crate) fn until(limit: Duration) -> Backoff {
        Backoff {
            limit: Some(limit),
            ..Backoff::endless()
        }
    }

    /// How long since the first attempt.
    pub(crate) fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    /// How long to wait before reading again after `error`; `None`: give up.
    pub(crate) fn after(&mut self, error: &BackendError) -> Option<Duration> {
        let past_limit = self
            .limit
            .is_some_and(|limit| self.started.elapsed() + self.wait > limit);
        if !error.is_temporary() || past_limit {
            return None;
        }
        let wait = self.wait;
        self.wait = (self.wait * 2).min(MAX_RETRY);
        Some(wait)
    }
}

/// The last envelope the subscription received live on each [lane](Lane): where a catch-up
/// finds its place in that lane's history.
#[derive(Debug, Default)]
pub(crate) struct LastLive(Vec<Option<Bytes>>);

impl LastLive {
    /// `envelope` was received live on `lane`.
    pub(crate) fn received(&mut self, lane: Lane, envelope: Bytes) {
        let lane = usize::from(lane);
        if self.0.len() <= lane {
            self.0.resize(lane + 1, None);
        }
        self.0[lane] = Some(envelope);
    }

    /// The id of the last envelope received live on `lane`.
    pub(crate) fn id(&self, lane: Lane) -> Option<String> {
        let bytes = self.0.get(usize::from(lane))?.as_ref()?;
        Envelope::decode_ref(bytes)
            .ok()
            .map(|envelope| envelope.id().to_owned())
    }
}

/// The missed envelopes of every lane in one sequence, merged by the time their publishers
/// wrote in them, each lane's own order kept: one publisher's broadcast and the routed event it
/// published next travel on two lanes, and a catch-up that delivered lane after lane would
/// deliver them the other way round. An envelope without a time goes with the one before it in
/// its lane.
pub(crate) fn by_publish_time(lanes: Vec<Vec<Bytes>>) -> Vec<Bytes> {
    if lanes.len() == 1 {
        return lanes.into_iter().next().unwrap_or_default();
    }
    let mut lanes: Vec<(u64, std::iter::Peekable<std::vec::IntoIter<Bytes>>)> = lanes
        .into_iter()
        .map(|lane| (0, lane.into_iter().peekable()))
        .collect();
    let mut merged = Vec::new();
    loop {
        let next = lanes
            .iter_mut()
            .enumerate()
            .filter_map(|(i, (last, lane))| {
                let bytes = lane.peek()?;
                let ts = Envelope::decode_ref(bytes)
                    .ok()
                    .and_then(|e| e.ts())
                    .unwrap_or(*last);
                *last = ts;
                Some((ts, i))
            })
            .min();
        let Some((_, i)) = next else {
            return merged;
        };
        merged.extend(lanes[i].1.next());
    }
}

/// How long before its session's route covered this instance a routed envelope a catch-up read
/// may have been published and still be one this instance missed: publishers' clocks differ.
const ROUTED_SKEW: Duration = Duration::from_secs(5);

/// Whether a routed envelope a catch-up read, published at `published` (Unix ms, as its
/// publisher wrote it), was this instance's to receive: its session's route has covered this
/// instance since `covered_since` (`None`: it holds no route of the session). One published
/// before that went to the instances that held the route then, and a stream of the session
/// that resumed here since was replayed it from the history if it did not have it. Only
/// position in a lane tells what this instance missed, and a lane where it received nothing
/// since the gap began gives none: every envelope of the lane read is a candidate, those of
/// sessions routed here only later too (found by the fault test on a Redis Cluster, whose route
/// partitions are such lanes).
pub(crate) fn routed_here(covered_since: Option<Instant>, published: Option<u64>) -> bool {
    let Some(covered_since) = covered_since else {
        return false;
    };
    let Some(published) = published else {
        return true;
    };
    let now = SystemTime::now();
    let covered_at = now.checked_sub(covered_since.elapsed()).unwrap_or(now);
    let from = covered_at.checked_sub(ROUTED_SKEW).unwrap_or(covered_at);
    published >= crate::history::unix_millis(from)
}

/// Where the envelopes the subscription had not received begin in `read`: just after the one
/// with id `last_live` (the last envelope it received before the gap), or at the start when the
/// read does not hold that id. When the broker holds that envelope twice (a publish sent again
/// after a lost answer), just after its first copy: the subscription may have received only
/// that one, and what it did receive after it, the replay log drops.
pub(crate) fn missed_from(read: &[Bytes], last_live: Option<&str>) -> usize {
    let Some(last_live) = last_live else { return 0 };
    read.iter()
        .position(|bytes| Envelope::decode_ref(bytes).is_ok_and(|e| e.id() == last_live))
        .map_or(0, |at| at + 1)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::SendSseEvent;
    use crate::history::HistoryStream;
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn envelope(n: u32) -> (String, Bytes) {
        let event = SendSseEvent::new("e", serde_json::json!(n));
        let envelope = Envelope::from_event(&event, "app", "o").unwrap();
        (envelope.id.clone(), envelope.encode().unwrap())
    }

    /// An envelope published by this test at `ms` (Unix milliseconds).
    fn at(ms: u64, n: u32) -> Bytes {
        let event = SendSseEvent::new("e", serde_json::json!(n));
        let mut envelope = Envelope::from_event(&event, "app", "o").unwrap();
        envelope.ts = Some(ms);
        envelope.encode().unwrap()
    }

    #[test]
    fn lanes_caught_up_go_out_by_publish_time_each_in_its_own_order() {
        let payloads = |merged: Vec<Bytes>| -> Vec<u32> {
            merged
                .iter()
                .map(|b| Envelope::decode(b).unwrap().payload.get().parse().unwrap())
                .collect()
        };
        // Lane 1's second envelope claims an earlier time (another publisher's clock): it
        // still comes after lane 1's first.
        let merged = by_publish_time(vec![
            vec![at(10, 0), at(30, 2)],
            vec![at(20, 1), at(15, 3), at(40, 4)],
        ]);
        assert_eq!(payloads(merged), [0, 1, 3, 2, 4]);
        let one = by_publish_time(vec![vec![at(5, 9), at(1, 8)]]);
        assert_eq!(payloads(one), [9, 8], "one lane as it is");
    }

    #[test]
    fn the_missed_envelopes_begin_after_the_last_one_received() {
        let read: Vec<(String, Bytes)> = (0..5).map(envelope).collect();
        let bytes: Vec<Bytes> = read.iter().map(|(_, b)| b.clone()).collect();
        assert_eq!(missed_from(&bytes, Some(&read[2].0)), 3);
        assert_eq!(missed_from(&bytes, Some(&read[4].0)), 5);
        assert_eq!(missed_from(&bytes, Some("not-in-the-read")), 0);
        assert_eq!(missed_from(&bytes, None), 0);
        assert_eq!(missed_from(&[], Some(&read[0].0)), 0);
        // Held twice: after the first copy, so that what came between is not skipped.
        let twice = [bytes[0].clone(), bytes[1].clone(), bytes[0].clone()];
        assert_eq!(missed_from(&twice, Some(&read[0].0)), 1);
    }

    /// A history whose first `fail` reads fail as unavailable.
    #[derive(Debug)]
    struct Flaky {
        fail: usize,
        reads: AtomicUsize,
        envelopes: Mutex<Vec<Bytes>>,
    }

    #[async_trait::async_trait]
    impl BrokerHistory for Flaky {
        async fn read_since(&self, _since: SystemTime) -> Result<HistoryStream, BackendError> {
            if self.reads.fetch_add(1, Ordering::Relaxed) < self.fail {
                return Err(BackendError::unavailable("flaky", "down"));
            }
            let items: Vec<Result<Bytes, BackendError>> = self
                .envelopes
                .lock()
                .unwrap()
                .iter()
                .cloned()
                .map(Ok)
                .collect();
            Ok(Box::pin(futures_util::stream::iter(items)))
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_read_is_tried_again_until_it_succeeds() {
        let stop = CancellationToken::new();
        let behind = Behind::default();
        let _behind = behind.enter(SystemTime::now());
        let history = Flaky {
            fail: 3,
            reads: AtomicUsize::new(0),
            envelopes: Mutex::new(vec![envelope(1).1]),
        };
        let Read::Envelopes(read) = read(&history, 0, SystemTime::now(), &behind, &stop).await
        else {
            panic!("not read")
        };
        assert_eq!((read.len(), history.reads.load(Ordering::Relaxed)), (1, 4));
        assert_eq!(
            behind.down(),
            None,
            "a short refusal is no reason to go down"
        );
    }

    /// A CI fault run (a NATS cluster) had reads refused for over 30 s: a catch-up that gave up
    /// then left a hole in the hub's log. It keeps reading, and the hub is down meanwhile.
    #[tokio::test(start_paused = true)]
    async fn a_long_refusal_is_waited_out_and_reported_down_meanwhile() {
        let stop = CancellationToken::new();
        let behind = Behind::default();
        let guard = behind.enter(SystemTime::now());
        let history = Flaky {
            fail: 60,
            reads: AtomicUsize::new(0),
            envelopes: Mutex::new(vec![envelope(1).1]),
        };
        let reading = read(&history, 0, SystemTime::now(), &behind, &stop);
        tokio::pin!(reading);
        let started = tokio::time::Instant::now();
        let mut down_at = None;
        let read = loop {
            tokio::select! {
                read = &mut reading => break read,
                () = tokio::time::sleep(Duration::from_millis(100)) => {
                    if down_at.is_none() && behind.down().is_some() {
                        down_at = Some(started.elapsed());
                    }
                }
            }
        };
        let Read::Envelopes(read) = read else {
            panic!("gave up")
        };
        assert_eq!(read.len(), 1);
        assert!(
            started.elapsed() > DOWN_AFTER * 3,
            "{:?}",
            started.elapsed()
        );
        let down_at = down_at.expect("never reported down");
        assert!(
            down_at >= DOWN_AFTER && down_at < DOWN_AFTER + MAX_RETRY * 2,
            "{down_at:?}"
        );
        assert!(behind.down().unwrap().contains("refused reads"));
        drop(guard);
        assert_eq!(behind.down(), None, "up again once caught up");
    }

    #[tokio::test(start_paused = true)]
    async fn a_failure_that_is_not_temporary_ends_the_read() {
        #[derive(Debug)]
        struct Missing;
        #[async_trait::async_trait]
        impl BrokerHistory for Missing {
            async fn read_since(&self, _: SystemTime) -> Result<HistoryStream, BackendError> {
                Err(BackendError::Config {
                    backend: "missing",
                    message: "no such stream".into(),
                })
            }
        }
        let behind = Behind::default();
        let read = read(
            &Missing,
            0,
            SystemTime::now(),
            &behind,
            &CancellationToken::new(),
        )
        .await;
        assert!(matches!(read, Read::Failed(_)), "{read:?}");
    }

    #[test]
    fn a_start_gives_up_after_its_limit() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .unwrap();
        runtime.block_on(async {
            let mut backoff = Backoff::until(DOWN_AFTER);
            let down = BackendError::unavailable("h", "down");
            let mut waited = Duration::ZERO;
            while let Some(wait) = backoff.after(&down) {
                tokio::time::sleep(wait).await;
                waited += wait;
            }
            assert!(waited <= DOWN_AFTER && waited >= DOWN_AFTER - MAX_RETRY * 2);
        });
    }
}
