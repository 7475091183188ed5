//! The history: the Redis stream every publish appends to, read with `XRANGE` a page at a time.
//! On a Redis Cluster with route partitions each [lane](sse_core::backend::Lane) has a stream
//! of its own, in its slot: a lane is read alone after a gap, and a whole read merges the lanes
//! by their entries' ids (the time each master added them), each lane's order kept.

use std::time::SystemTime;

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::StreamExt;
use sse_core::BackendError;
use sse_core::backend::Lane;
use sse_core::history::{self, BrokerHistory, HistoryStream};

use crate::{Inner, RedisBackend, unavailable};

/// Entries one `XRANGE` reads.
const PAGE: usize = 1000;

#[async_trait]
impl BrokerHistory for RedisBackend {
    async fn read_since(&self, since: SystemTime) -> Result<HistoryStream, BackendError> {
        let lanes = self.inner.names.lanes();
        if lanes == 1 {
            return self.read_lane_since(0, since).await;
        }
        let mut read = Vec::with_capacity(usize::from(lanes));
        for lane in 0..lanes {
            let mut entries = Vec::new();
            let mut stream = self.inner.read_key_since(lane, since).await?;
            while let Some(entry) = stream.next().await {
                entries.push(entry?);
            }
            read.push(entries);
        }
        let merged: Vec<Result<Bytes, BackendError>> = merge(read)
            .into_iter()
            .map(|(_, envelope)| Ok(envelope))
            .collect();
        Ok(futures_util::stream::iter(merged).boxed())
    }

    fn lanes(&self) -> Lane {
        self.inner.names.lanes()
    }

    async fn read_lane_since(
        &self,
        lane: Lane,
        since: SystemTime,
    ) -> Result<HistoryStream, BackendError> {
        let entries = self.inner.read_key_since(lane, since).await?;
        Ok(entries
            .map(|entry| entry.map(|(_, envelope)| envelope))
            .boxed())
    }
}

/// A stream entry's id, `<milliseconds>-<sequence>`, as numbers (they order as Redis orders).
type EntryId = (u64, u64);

/// A page of `XRANGE`: each entry's id and fields.
type Page = Vec<(String, Vec<Vec<u8>>)>;

/// Entries read from one lane's stream, oldest first.
type Entries = futures_util::stream::BoxStream<'static, Result<(EntryId, Bytes), BackendError>>;

impl Inner {
    /// `XRANGE` of `lane`'s stream from `since` up to its newest entry when the read begins, a
    /// page at a time.
    async fn read_key_since(&self, lane: Lane, since: SystemTime) -> Result<Entries, BackendError> {
        let mut connection = self.publisher.clone();
        let key = self.names.history_key(lane).to_owned();
        let newest: Page = redis::cmd("XREVRANGE")
            .arg(&key)
            .arg("+")
            .arg("-")
            .arg("COUNT")
            .arg(1)
            .query_async(&mut connection)
            .await
            .map_err(unavailable)?;
        let Some((end, _)) = newest.into_iter().next() else {
            return Ok(Box::pin(futures_util::stream::empty()));
        };
        let first = format!("{}-0", history::unix_millis(since));
        let pages = futures_util::stream::unfold(Some(first), move |start| {
            let (mut connection, key, end) = (connection.clone(), key.clone(), end.clone());
            async move {
                let start = start?;
                let page: Result<Page, _> = redis::cmd("XRANGE")
                    .arg(&key)
                    .arg(&start)
                    .arg(&end)
                    .arg("COUNT")
                    .arg(PAGE)
                    .query_async(&mut connection)
                    .await;
                let page = match page {
                    Ok(page) => page,
                    Err(error) => {
                        return Some((vec![Err(unavailable(error))], None));
                    }
                };
                let next = match page.last() {
                    Some((last, _)) if page.len() == PAGE && *last != end => {
                        Some(format!("({last}"))
                    }
                    _ => None,
                };
                let entries = page
                    .into_iter()
                    .filter_map(|(id, fields)| Some(Ok((entry_id(&id)?, envelope_field(fields)?))))
                    .collect::<Vec<_>>();
                Some((entries, next))
            }
        });
        Ok(pages.map(futures_util::stream::iter).flatten().boxed())
    }
}

/// Merges lanes read whole by entry id, each lane's own order kept (ties go to the lower lane).
fn merge(lanes: Vec<Vec<(EntryId, Bytes)>>) -> Vec<(EntryId, Bytes)> {
    let total = lanes.iter().map(Vec::len).sum();
    let mut merged = Vec::with_capacity(total);
    let mut lanes: Vec<std::iter::Peekable<std::vec::IntoIter<(EntryId, Bytes)>>> = lanes
        .into_iter()
        .map(|lane| lane.into_iter().peekable())
        .collect();
    loop {
        let next = lanes
            .iter_mut()
            .enumerate()
            .filter_map(|(lane, entries)| entries.peek().map(|(id, _)| (*id, lane)))
            .min();
        let Some((_, lane)) = next else {
            return merged;
        };
        merged.extend(lanes[lane].next());
    }
}

/// A stream entry id as numbers; `None` for what is not one.
fn entry_id(id: &str) -> Option<EntryId> {
    let (ms, seq) = id.split_once('-')?;
    Some((ms.parse().ok()?, seq.parse().ok()?))
}

/// The envelope of a stream entry: the value of its `e` field.
fn envelope_field(fields: Vec<Vec<u8>>) -> Option<Bytes> {
    let mut fields = fields.into_iter();
    while let (Some(name), Some(value)) = (fields.next(), fields.next()) {
        if name == b"e" {
            return Some(Bytes::from(value));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn lanes_merge_by_entry_id_keeping_their_own_order() {
        let lane = |entries: &[((u64, u64), &'static str)]| {
            entries
                .iter()
                .map(|(id, e)| (*id, Bytes::from_static(e.as_bytes())))
                .collect::<Vec<_>>()
        };
        let merged = merge(vec![
            lane(&[((10, 0), "a"), ((10, 1), "b"), ((30, 0), "c")]),
            lane(&[((5, 0), "x"), ((10, 0), "y"), ((40, 0), "z")]),
            lane(&[]),
        ]);
        let order: Vec<&[u8]> = merged.iter().map(|(_, e)| e.as_ref()).collect();
        assert_eq!(
            order,
            [&b"x"[..], b"a", b"y", b"b", b"c", b"z"],
            "by id, ties to the lower lane"
        );
        assert_eq!(entry_id("1700000000000-12"), Some((1_700_000_000_000, 12)));
        assert_eq!(entry_id("nonsense"), None);
    }
}
