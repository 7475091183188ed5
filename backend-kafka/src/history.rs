//! The history a Kafka topic keeps by itself: a hub reads the last minutes of every partition
//! when it starts (see [`sse_core::history`]).
//!
//! Each partition is read from the first offset at or after the start time (`offsets_for_times`)
//! up to its end offset when the read began, by a consumer of its own that commits nothing; the
//! partitions are then merged by record timestamp, each partition's order kept (a session's
//! events share a partition, so each session's order is exact). The topic's retention
//! (`retention.ms`, `retention.bytes`) must keep at least the hub's replay age.

use std::collections::VecDeque;
use std::time::SystemTime;

use async_trait::async_trait;
use bytes::Bytes;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use sse_core::BackendError;
use sse_core::history::{BrokerHistory, HistoryStream, unix_millis};

use crate::{Inner, KafkaBackend, blocking, config_error, kafka_error};

#[async_trait]
impl BrokerHistory for KafkaBackend {
    async fn read_since(&self, since: SystemTime) -> Result<HistoryStream, BackendError> {
        let envelopes = self.inner.read_since(since).await?;
        Ok(Box::pin(futures_util::stream::iter(
            envelopes.into_iter().map(Ok),
        )))
    }
}

/// One partition's part of a read: where it starts and the end offset it reads up to.
struct Span {
    partition: i32,
    start: i64,
    end: i64,
    done: bool,
    records: VecDeque<(i64, Bytes)>,
}

/// How long the read waits for a record before it checks whether the partitions are done.
const IDLE: std::time::Duration = std::time::Duration::from_millis(500);

impl Inner {
    async fn read_since(&self, since: SystemTime) -> Result<Vec<Bytes>, BackendError> {
        let partitions = self
            .partitions()
            .await?
            .ok_or_else(|| config_error(format!("topic `{}` does not exist", self.config.topic)))?;
        let group = format!(
            "{}-history-{}",
            self.config.group_prefix,
            uuid::Uuid::new_v4()
        );
        let consumer: StreamConsumer = self
            .config
            .client_config(&[
                ("group.id", &group),
                ("enable.auto.commit", "false"),
                ("enable.auto.offset.store", "false"),
                ("fetch.wait.max.ms", "5"),
                ("allow.auto.create.topics", "false"),
            ])
            .create()
            .map_err(|e| config_error(format!("history consumer: {e}")))?;
        let consumer = std::sync::Arc::new(consumer);
        let read = self.read_spans(consumer.clone(), partitions, since).await;
        // Closing a librdkafka consumer blocks (it says goodbye to the broker): off the async
        // threads.
        let _ = blocking(move || {
            drop(consumer);
            Ok(())
        })
        .await;
        read
    }

    /// Reads every partition of `partitions` from `since` to its end offset, with `consumer`.
    async fn read_spans(
        &self,
        consumer: std::sync::Arc<StreamConsumer>,
        partitions: Vec<i32>,
        since: SystemTime,
    ) -> Result<Vec<Bytes>, BackendError> {
        let (topic, timeout) = (self.config.topic.clone(), self.config.timeout);
        let positioned = consumer.clone();
        let since_ms = i64::try_from(unix_millis(since)).unwrap_or(i64::MAX);
        let mut spans = blocking(move || {
            let mut by_time = TopicPartitionList::new();
            for &partition in &partitions {
                by_time
                    .add_partition_offset(&topic, partition, Offset::Offset(since_ms))
                    .map_err(kafka_error)?;
            }
            let starts = positioned
                .offsets_for_times(by_time, timeout)
                .map_err(kafka_error)?;
            let mut spans = Vec::new();
            let mut assignment = TopicPartitionList::new();
            for element in starts.elements() {
                let (_, end) = positioned
                    .fetch_watermarks(&topic, element.partition(), timeout)
                    .map_err(kafka_error)?;
                // No record at or after the time: the offset is "end" (or -1).
                let Offset::Offset(start) = element.offset() else {
                    continue;
                };
                if start < 0 || start >= end {
                    continue;
                }
                assignment
                    .add_partition_offset(&topic, element.partition(), Offset::Offset(start))
                    .map_err(kafka_error)?;
                spans.push(Span {
                    partition: element.partition(),
                    start,
                    end,
                    done: false,
                    records: VecDeque::new(),
                });
            }
            positioned.assign(&assignment).map_err(kafka_error)?;
            Ok(spans)
        })
        .await?;

        // Read until every partition reached the end offset it had when the read began. A
        // partition whose last offsets hold no record for us (transaction markers) is done when
        // the consumer's position passes its end.
        let deadline = tokio::time::Instant::now() + timeout * 4;
        while spans.iter().any(|s| !s.done) {
            let message = match tokio::time::timeout(IDLE, consumer.recv()).await {
                Ok(message) => message.map_err(kafka_error)?,
                Err(_) => {
                    if tokio::time::Instant::now() > deadline {
                        return Err(BackendError::Timeout {
                            backend: crate::NAME,
                            after: timeout * 4,
                        });
                    }
                    let positions = consumer.position().map_err(kafka_error)?;
                    for span in spans.iter_mut() {
                        if let Some(Offset::Offset(at)) = positions
                            .find_partition(&self.config.topic, span.partition)
                            .map(|p| p.offset())
                        {
                            span.done |= at >= span.end;
                        }
                    }
                    continue;
                }
            };
            let Some(span) = spans
                .iter_mut()
                .find(|s| s.partition == message.partition())
            else {
                continue;
            };
            let offset = message.offset();
            if span.done || offset < span.start || offset >= span.end {
                continue;
            }
            let at = message.timestamp().to_millis().unwrap_or(0);
            span.records.push_back((
                at,
                Bytes::copy_from_slice(message.payload().unwrap_or_default()),
            ));
            span.done = offset + 1 >= span.end;
        }
        consumer.unassign().ok();
        Ok(merge(spans))
    }
}

/// Merges the partitions' records by timestamp, keeping each partition's own order.
fn merge(mut spans: Vec<Span>) -> Vec<Bytes> {
    let mut merged = Vec::with_capacity(spans.iter().map(|s| s.records.len()).sum());
    loop {
        let next = spans
            .iter_mut()
            .filter(|s| !s.records.is_empty())
            .min_by_key(|s| s.records.front().map(|(at, _)| *at));
        match next.and_then(|s| s.records.pop_front()) {
            Some((_, bytes)) => merged.push(bytes),
            None => return merged,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partitions_merge_by_time_keeping_their_own_order() {
        let span = |partition, records: &[(i64, &'static str)]| Span {
            partition,
            start: 0,
            end: 0,
            done: true,
            records: records
                .iter()
                .map(|(at, s)| (*at, Bytes::from_static(s.as_bytes())))
                .collect(),
        };
        // Partition 1's clock went backwards: its order still wins over timestamps.
        let merged = merge(vec![
            span(0, &[(1, "a"), (4, "d")]),
            span(1, &[(2, "b"), (1, "c"), (5, "e")]),
        ]);
        assert_eq!(merged, ["a", "b", "c", "d", "e"]);
    }
}
