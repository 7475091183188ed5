//! The history: the Redis stream every publish appends to, read with `XRANGE` a page at a time.

use std::time::SystemTime;

use async_trait::async_trait;
use bytes::Bytes;
use sse_core::BackendError;
use sse_core::history::{self, BrokerHistory, HistoryStream};

use crate::{Inner, RedisBackend, unavailable};

/// Entries one `XRANGE` reads.
const PAGE: usize = 1000;

#[async_trait]
impl BrokerHistory for RedisBackend {
    async fn read_since(&self, since: SystemTime) -> Result<HistoryStream, BackendError> {
        self.inner.read_since(since).await
    }
}

impl Inner {
    /// `XRANGE` from `since` up to the newest entry when the read begins, a page at a time.
    async fn read_since(&self, since: SystemTime) -> Result<HistoryStream, BackendError> {
        let mut connection = self.publisher.clone();
        let key = self.names.history_key.clone();
        let newest: Vec<(String, Vec<Vec<u8>>)> = redis::cmd("XREVRANGE")
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
        Ok(history::paged(first, move |start: String| {
            let (mut connection, key, end) = (connection.clone(), key.clone(), end.clone());
            async move {
                let page: Vec<(String, Vec<Vec<u8>>)> = redis::cmd("XRANGE")
                    .arg(&key)
                    .arg(&start)
                    .arg(&end)
                    .arg("COUNT")
                    .arg(PAGE)
                    .query_async(&mut connection)
                    .await
                    .map_err(unavailable)?;
                let next = match page.last() {
                    Some((last, _)) if page.len() == PAGE && *last != end => {
                        Some(format!("({last}"))
                    }
                    _ => None,
                };
                let envelopes = page
                    .into_iter()
                    .filter_map(|(_, fields)| envelope_field(fields))
                    .collect();
                Ok((envelopes, next))
            }
        }))
    }
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
