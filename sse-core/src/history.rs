//! Cluster-wide history: the recent envelopes kept **in the broker**, so that an instance that
//! was not running when an event went by can still replay it to a client that reconnects with
//! `Last-Event-ID` (rolling deploys, autoscaling, crashes, a restart in place).
//!
//! A backend offers it through [`FanoutBackend::history`](crate::FanoutBackend::history), an
//! optional capability: the default (`None`) keeps the per-instance replay log of earlier
//! versions, so a custom backend without history still works.
//!
//! # How the hub uses it
//!
//! When a hub starts, it subscribes first (live envelopes wait in the subscription), then reads
//! the broker's history of the last [`ReplayConfig::max_age`](crate::ReplayConfig) into its
//! replay log, and only then starts delivering and returns from
//! [`HubBuilder::start`](crate::HubBuilder::start): an instance serves history from the moment it
//! exists (the hub binary listens, so `/healthz` answers, only after that). Envelopes that arrive
//! both ways at the seam are recognised by their id and delivered once.
//!
//! This *warm-up* is chosen over reading the broker for each reconnecting client: an instance
//! reads the broker once, however many clients come back to it at once (the reconnect storm after
//! an instance dies costs the broker nothing), and every `Last-Event-ID` lookup stays a hash
//! lookup under the same lock that makes the seam between replay and live events exact.

use std::fmt;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use bytes::Bytes;
use futures_core::stream::BoxStream;
use futures_util::StreamExt;

use crate::error::BackendError;

/// One order of envelopes in a broker: every subscriber receives a lane's envelopes in the same
/// order, and the broker's [history](crate::history) holds them in that order; envelopes of
/// different lanes have no order between them.
///
/// A backend whose broker gives all its envelopes one order (one Redis server, one JetStream
/// stream, one RabbitMQ stream queue) has one lane, 0, and need not know of lanes. A backend that
/// spreads its routes over several orders so that several broker servers share the work (the
/// partitions of a Redis Cluster) numbers them: the broadcasts are lane 0, and each session's
/// route belongs to one lane, so each stream's two sources (see [`route`](crate::route)) keep one order each.
/// After a [gap](crate::Received::Gap) the hub finds its place in each lane on its own (see
/// [`BrokerHistory::lanes`]).
pub type Lane = u16;

/// Envelopes read back from a broker's history, oldest first. An `Err` ends the read.
pub type HistoryStream = BoxStream<'static, Result<Bytes, BackendError>>;

/// The history a backend keeps in its broker, written as part of publishing.
///
/// Implementations keep it bounded by the [`ReplayConfig`](crate::ReplayConfig) they were
/// given (age and count; bytes where the broker can), and must pass
/// [`testkit::history`](crate#testkit)'s checks.
#[async_trait]
pub trait BrokerHistory: Send + Sync + fmt::Debug {
    /// Reads the envelopes published at or after `since` (a broker may start a little earlier;
    /// duplicates are harmless, the hub recognises ids it holds), oldest first, in the order the
    /// broker's subscribers receive them, ending with the newest envelope the broker held when
    /// the read began: the stream always ends.
    ///
    /// A history of several [lanes](Lane) merges them by time, each lane's own
    /// order kept.
    async fn read_since(&self, since: SystemTime) -> Result<HistoryStream, BackendError>;

    /// How many [lanes](Lane) the history holds: 1 (the default) for a broker
    /// that gives all its envelopes one order.
    fn lanes(&self) -> Lane {
        1
    }

    /// Reads one lane as [`read_since`](Self::read_since) reads them all: in the order its
    /// subscribers receive it. After a gap the hub reads each lane this way and finds its place
    /// in it by the last envelope it received live on that lane. The default reads the whole
    /// history, which is right only for a history of one lane.
    async fn read_lane_since(
        &self,
        lane: Lane,
        since: SystemTime,
    ) -> Result<HistoryStream, BackendError> {
        let _ = lane;
        self.read_since(since).await
    }
}

/// A [`HistoryStream`] over a paged read: `fetch(cursor)` returns one page and the cursor of the
/// next (`None` after the last). Pages are fetched one at a time, as the stream is read.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// use bytes::Bytes;
/// use futures_util::StreamExt;
/// use sse_core::history::paged;
///
/// // Three pages of two envelopes each.
/// let stream = paged(0u32, |page| async move {
///     let items = vec![Bytes::from(format!("{page}a")), Bytes::from(format!("{page}b"))];
///     Ok((items, (page < 2).then_some(page + 1)))
/// });
/// let all: Vec<_> = stream.map(Result::unwrap).collect().await;
/// assert_eq!(all.len(), 6);
/// assert_eq!(all[5], "2b");
/// # }
/// ```
pub fn paged<C, F, Fut>(first: C, fetch: F) -> HistoryStream
where
    C: Send + 'static,
    F: FnMut(C) -> Fut + Send + 'static,
    Fut: Future<Output = Result<(Vec<Bytes>, Option<C>), BackendError>> + Send + 'static,
{
    let pages =
        futures_util::stream::unfold((Some(first), fetch), |(cursor, mut fetch)| async move {
            let cursor = cursor?;
            match fetch(cursor).await {
                Ok((items, next)) => {
                    let items: Vec<Result<Bytes, BackendError>> =
                        items.into_iter().map(Ok).collect();
                    Some((futures_util::stream::iter(items), (next, fetch)))
                }
                Err(error) => Some((futures_util::stream::iter(vec![Err(error)]), (None, fetch))),
            }
        });
    pages.flatten().boxed()
}

/// What one read of a broker's history brought.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct ReadReport {
    /// Envelopes read.
    pub(crate) envelopes: usize,
    /// How long the read took.
    pub(crate) took: Duration,
}

/// Reads `history` since `since` and hands every envelope to `each`, oldest first.
pub(crate) async fn read_into(
    history: &dyn BrokerHistory,
    since: SystemTime,
    mut each: impl FnMut(&Bytes),
) -> Result<ReadReport, BackendError> {
    let started = tokio::time::Instant::now();
    let mut stream = history.read_since(since).await?;
    let mut envelopes = 0;
    while let Some(item) = stream.next().await {
        each(&item?);
        envelopes += 1;
    }
    Ok(ReadReport {
        envelopes,
        took: started.elapsed(),
    })
}

/// Milliseconds since the Unix epoch, as envelopes and brokers count time.
pub fn unix_millis(at: SystemTime) -> u64 {
    at.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}
