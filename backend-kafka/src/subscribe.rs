//! The subscription: a consumer of its own group, positioned at every partition's end before
//! `subscribe` returns, forwarding each message and storing its offset once handed over.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::Bytes;
use futures_util::StreamExt;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use sse_core::BackendError;
use tokio::sync::mpsc;

use crate::{Inner, NAME, blocking, config_error, kafka_error};

impl Inner {
    /// A consumer of every partition, each positioned at its current end offset.
    pub(crate) async fn positioned_consumer(&self) -> Result<StreamConsumer, BackendError> {
        let group = format!("{}-{}", self.config.group_prefix, uuid::Uuid::new_v4());
        let consumer: StreamConsumer = self
            .config
            .client_config(&[
                ("group.id", &group),
                ("auto.offset.reset", "latest"),
                ("enable.auto.commit", "true"),
                ("enable.auto.offset.store", "false"),
                ("fetch.wait.max.ms", "5"),
                ("fetch.error.backoff.ms", "50"),
                ("allow.auto.create.topics", "false"),
            ])
            .create()
            .map_err(|e| config_error(format!("consumer: {e}")))?;
        let partitions = self
            .partitions()
            .await?
            .ok_or_else(|| config_error(format!("topic `{}` does not exist", self.config.topic)))?;
        let consumer = Arc::new(consumer);
        let topic = self.config.topic.clone();
        let timeout = self.config.timeout;
        let positioned = consumer.clone();
        blocking(move || {
            let mut assignment = TopicPartitionList::new();
            for partition in partitions {
                let (_, high) = positioned
                    .fetch_watermarks(&topic, partition, timeout)
                    .map_err(kafka_error)?;
                assignment
                    .add_partition_offset(&topic, partition, Offset::Offset(high))
                    .map_err(kafka_error)?;
            }
            positioned.assign(&assignment).map_err(kafka_error)
        })
        .await?;
        tracing::debug!(%group, topic = %self.config.topic, "kafka consumer positioned at the end offsets");
        Arc::try_unwrap(consumer)
            .map_err(|_| BackendError::unavailable(NAME, "consumer still shared"))
    }
}

/// Forwards every message to the hub, storing its offset once handed over. librdkafka reconnects
/// by itself; errors in between are logged and reflected in health.
pub(crate) async fn run_consumer(
    inner: Arc<Inner>,
    consumer: StreamConsumer,
    tx: mpsc::Sender<Bytes>,
) {
    let mut stream = consumer.stream();
    loop {
        let message = tokio::select! {
            () = inner.closed.cancelled() => break,
            () = tx.closed() => break,
            message = stream.next() => message,
        };
        match message {
            Some(Ok(message)) => {
                inner.consuming_ok.store(true, Ordering::Relaxed);
                let bytes = Bytes::copy_from_slice(message.payload().unwrap_or_default());
                if tx.send(bytes).await.is_err() {
                    break;
                }
                if let Err(error) = consumer.store_offset_from_message(&message) {
                    tracing::debug!(%error, "could not store the offset");
                }
            }
            Some(Err(error)) => {
                if inner.consuming_ok.swap(false, Ordering::Relaxed) {
                    tracing::warn!(%error, topic = %inner.config.topic, "kafka consumer error; librdkafka retries");
                }
            }
            None => break,
        }
    }
    drop(stream);
    // Closing a librdkafka consumer blocks (it says goodbye to the broker): off the async
    // threads, and awaited, so that `close` returns once it is done.
    let _ = blocking(move || {
        consumer.unassign().ok();
        drop(consumer);
        Ok(())
    })
    .await;
}
