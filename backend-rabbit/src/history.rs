//! The history in a RabbitMQ stream queue bound to the fanout exchange: every envelope published
//! to the exchange is routed to each instance's queue and, in the same step, appended to the
//! stream, which RabbitMQ trims by age (`x-max-age`) and size (`x-max-length-bytes`).
//!
//! A subscription that comes back after its connection was lost (its queue went away with it)
//! reads the stream from a little before the last message it received, ahead of the new queue's.
//!
//! A read consumes the stream from a timestamp (`x-stream-offset`, whole seconds, so it may start
//! up to a second early: the hub recognises what it has). To know where the stream ended when the
//! read began, the reader first appends a marker of its own to the stream (through the default
//! exchange, so no instance's queue gets it) and reads until it meets that marker; other readers'
//! markers are skipped.

use std::time::SystemTime;

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel};
use sse_core::history::{BrokerHistory, HistoryStream};
use sse_core::{BackendError, ReplayConfig};

use crate::{Inner, NAME, RabbitBackend, unavailable};

/// The header that marks a reader's end-of-read marker.
const MARKER: &str = "x-sse-fanout-history-marker";

/// Unacknowledged stream messages a reader takes ahead (stream consumers need a prefetch).
const PREFETCH: u16 = 1000;

#[async_trait]
impl BrokerHistory for RabbitBackend {
    async fn read_since(&self, since: SystemTime) -> Result<HistoryStream, BackendError> {
        let envelopes = self.inner.timed(self.inner.read_since(since)).await?;
        Ok(Box::pin(futures_util::stream::iter(
            envelopes.into_iter().map(Ok),
        )))
    }
}

impl Inner {
    /// Declares the history stream queue and binds it to the exchange.
    pub(crate) async fn declare_history(
        &self,
        connection: &lapin::Connection,
        channel: &Channel,
        history: &ReplayConfig,
    ) -> Result<(), BackendError> {
        let queue = self.config.history_queue.as_str();
        let mut arguments = FieldTable::default();
        arguments.insert(
            "x-queue-type".into(),
            AMQPValue::LongString("stream".into()),
        );
        arguments.insert(
            "x-max-age".into(),
            AMQPValue::LongString(format!("{}s", history.max_age.as_secs().max(1)).into()),
        );
        arguments.insert(
            "x-max-length-bytes".into(),
            AMQPValue::LongLongInt(i64::try_from(history.max_bytes).unwrap_or(i64::MAX)),
        );
        if let Some(replicas) = self.config.history_replicas {
            arguments.insert(
                "x-initial-cluster-size".into(),
                AMQPValue::LongInt(i32::from(replicas.max(1))),
            );
        }
        // Retention drops whole segments: small ones keep the stream close to its age.
        arguments.insert(
            "x-stream-max-segment-size-bytes".into(),
            AMQPValue::LongLongInt(4 * 1024 * 1024),
        );
        let options = QueueDeclareOptions {
            durable: true,
            ..QueueDeclareOptions::default()
        };
        let declared = channel
            .queue_declare(queue.into(), options, arguments)
            .await;
        // A stream declared earlier with other limits keeps them (RabbitMQ cannot change a
        // queue's arguments; a policy can): use it as it is, on a fresh channel (the failed
        // declare closed this one).
        let channel = &match declared {
            Ok(_) => channel.clone(),
            Err(error) if error.to_string().contains("PRECONDITION_FAILED") => {
                tracing::warn!(
                    %queue, %error,
                    "the history stream exists with other limits; using it as it is \
                     (set them with a policy, or delete the queue to have it declared again)"
                );
                let fresh = connection.create_channel().await.map_err(unavailable)?;
                let passive = QueueDeclareOptions {
                    passive: true,
                    ..QueueDeclareOptions::default()
                };
                fresh
                    .queue_declare(queue.into(), passive, FieldTable::default())
                    .await
                    .map_err(unavailable)?;
                fresh
            }
            Err(error) => {
                return Err(BackendError::Config {
                    backend: NAME,
                    message: format!(
                        "cannot declare the history stream queue `{queue}` (RabbitMQ >= 3.9): {error}"
                    ),
                });
            }
        };
        self.bind(channel, queue).await?;
        self.bind_history_to_routes(channel, queue).await
    }

    async fn read_since(&self, since: SystemTime) -> Result<Vec<Bytes>, BackendError> {
        if since > SystemTime::now() {
            // Nothing was published in the future; and a stream read from a time after the
            // marker's would never meet it.
            return Ok(Vec::new());
        }
        let queue = self.config.history_queue.clone();
        let connection = self.connection("history").await?;
        let read = async {
            let channel = connection.create_channel().await.map_err(unavailable)?;
            channel
                .confirm_select(ConfirmSelectOptions::default())
                .await
                .map_err(unavailable)?;
            channel
                .basic_qos(PREFETCH, BasicQosOptions::default())
                .await
                .map_err(unavailable)?;
            // The marker: where the stream ended when this read began.
            let marker = uuid::Uuid::new_v4().to_string();
            let mut headers = FieldTable::default();
            headers.insert(MARKER.into(), AMQPValue::LongString(marker.clone().into()));
            channel
                .basic_publish(
                    "".into(),
                    queue.clone().into(),
                    BasicPublishOptions::default(),
                    b"",
                    BasicProperties::default().with_headers(headers),
                )
                .await
                .map_err(unavailable)?
                .await
                .map_err(unavailable)?;
            let seconds = since
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            let mut arguments = FieldTable::default();
            arguments.insert("x-stream-offset".into(), AMQPValue::Timestamp(seconds));
            let mut consumer = channel
                .basic_consume(
                    queue.clone().into(),
                    format!("sse-fanout.history.{marker}").into(),
                    BasicConsumeOptions::default(),
                    arguments,
                )
                .await
                .map_err(unavailable)?;
            let mut envelopes = Vec::new();
            while let Some(delivery) = consumer.next().await {
                let delivery = delivery.map_err(unavailable)?;
                delivery
                    .ack(BasicAckOptions::default())
                    .await
                    .map_err(unavailable)?;
                match marker_of(&delivery.properties) {
                    Some(m) if m == marker.as_bytes() => return Ok(envelopes),
                    Some(_) => {}
                    None => envelopes.push(Bytes::from(delivery.data)),
                }
            }
            Err(BackendError::unavailable(
                NAME,
                "the history consumer ended before the end of the stream",
            ))
        };
        let result = read.await;
        let _ = connection.close(200, "history read".into()).await;
        result
    }
}

pub(crate) fn marker_of(properties: &BasicProperties) -> Option<&[u8]> {
    match properties.headers().as_ref()?.inner().get(MARKER)? {
        AMQPValue::LongString(value) => Some(value.as_bytes()),
        _ => None,
    }
}
