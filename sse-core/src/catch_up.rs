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
//! While a catch-up runs (its read may wait for the broker for up to [`GIVE_UP`]), the hub is
//! [`Behind`]: its log lacks what was published since the gap began, so a resume whose event it
//! does not hold is read from the broker's history, reaching back to where the gap began (see
//! `route::resume`), never answered from the log with a reset; and what the catch-up then
//! delivers, such a stream skips where it had it before its cursor.

use std::sync::{Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use futures_util::StreamExt;
use tokio_util::sync::CancellationToken;

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

/// How long the hub keeps trying to read one gap (a broker that is back for the subscription
/// may still refuse reads for a moment, e.g. a JetStream leader being elected) before it gives
/// up, logs and counts the gap as unrecovered.
pub(crate) const GIVE_UP: Duration = Duration::from_secs(30);

/// Whether the hub is catching up after a gap, and since when it may have missed envelopes.
#[derive(Debug, Default)]
pub(crate) struct Behind(Mutex<Option<SystemTime>>);

impl Behind {
    /// Marks the hub behind since `since` until the returned guard is dropped (the catch-up has
    /// delivered what it read, or given up).
    pub(crate) fn enter(&self, since: SystemTime) -> BehindGuard<'_> {
        *self.0.lock().unwrap_or_else(PoisonError::into_inner) = Some(since);
        BehindGuard(self)
    }

    /// Since when the hub may lack envelopes, while it catches up.
    pub(crate) fn since(&self) -> Option<SystemTime> {
        *self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Clears [`Behind`] when dropped.
#[derive(Debug)]
pub(crate) struct BehindGuard<'a>(&'a Behind);

impl Drop for BehindGuard<'_> {
    fn drop(&mut self) {
        *self.0.0.lock().unwrap_or_else(PoisonError::into_inner) = None;
    }
}

/// What reading a gap came to.
#[derive(Debug)]
pub(crate) enum Read {
    /// The history since the gap, oldest first.
    Envelopes(Vec<Bytes>),
    /// The hub is stopping.
    Stopped,
    /// Every attempt failed for [`GIVE_UP`], or the failure is not temporary.
    Failed(BackendError),
}

/// Reads `history` since `since`, whole, trying again after temporary failures for up to
/// [`GIVE_UP`].
pub(crate) async fn read(
    history: &dyn BrokerHistory,
    since: SystemTime,
    stop: &CancellationToken,
) -> Read {
    let mut backoff = Backoff::new();
    loop {
        let attempt = async {
            let mut stream = history.read_since(since).await?;
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
        tracing::debug!(%error, ?wait, "reading the history for a gap failed; trying again");
        tokio::select! {
            () = stop.cancelled() => return Read::Stopped,
            () = tokio::time::sleep(wait) => {}
        }
    }
}

/// The one retry policy of history reads: again after 0.1, 0.2, … 2 s while the failure is
/// temporary, for up to [`GIVE_UP`].
#[derive(Debug)]
pub(crate) struct Backoff {
    started: tokio::time::Instant,
    wait: Duration,
}

impl Backoff {
    pub(crate) fn new() -> Backoff {
        Backoff {
            started: tokio::time::Instant::now(),
            wait: FIRST_RETRY,
        }
    }

    /// How long to wait before reading again after `error`; `None`: give up.
    pub(crate) fn after(&mut self, error: &BackendError) -> Option<Duration> {
        if !error.is_temporary() || self.started.elapsed() + self.wait > GIVE_UP {
            return None;
        }
        let wait = self.wait;
        self.wait = (self.wait * 2).min(MAX_RETRY);
        Some(wait)
    }
}

/// Where the envelopes the subscription had not received begin in `read`: just after the one
/// with id `last_live` (the last envelope it received before the gap), or at the start when the
/// read does not hold that id.
pub(crate) fn missed_from(read: &[Bytes], last_live: Option<&str>) -> usize {
    let Some(last_live) = last_live else { return 0 };
    read.iter()
        .rposition(|bytes| Envelope::decode_ref(bytes).is_ok_and(|e| e.id() == last_live))
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

    #[test]
    fn the_missed_envelopes_begin_after_the_last_one_received() {
        let read: Vec<(String, Bytes)> = (0..5).map(envelope).collect();
        let bytes: Vec<Bytes> = read.iter().map(|(_, b)| b.clone()).collect();
        assert_eq!(missed_from(&bytes, Some(&read[2].0)), 3);
        assert_eq!(missed_from(&bytes, Some(&read[4].0)), 5);
        assert_eq!(missed_from(&bytes, Some("not-in-the-read")), 0);
        assert_eq!(missed_from(&bytes, None), 0);
        assert_eq!(missed_from(&[], Some(&read[0].0)), 0);
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
    async fn a_failed_read_is_tried_again_until_it_succeeds_or_gives_up() {
        let stop = CancellationToken::new();
        let history = Flaky {
            fail: 3,
            reads: AtomicUsize::new(0),
            envelopes: Mutex::new(vec![envelope(1).1]),
        };
        let Read::Envelopes(read) = read(&history, SystemTime::now(), &stop).await else {
            panic!("not read")
        };
        assert_eq!((read.len(), history.reads.load(Ordering::Relaxed)), (1, 4));

        let never = Flaky {
            fail: usize::MAX,
            reads: AtomicUsize::new(0),
            envelopes: Mutex::default(),
        };
        let started = tokio::time::Instant::now();
        assert!(matches!(
            super::read(&never, SystemTime::now(), &stop).await,
            Read::Failed(_)
        ));
        assert!(started.elapsed() <= GIVE_UP, "{:?}", started.elapsed());
        assert!(started.elapsed() >= GIVE_UP - MAX_RETRY * 2);
    }
}
