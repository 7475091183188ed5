//! Publishing: one producer; a record keyed by its session (or, for a broadcast, its
//! publishing instance), sent and waited for until the delivery report.

use std::borrow::Cow;
use std::sync::atomic::Ordering;

use bytes::Bytes;
use rdkafka::admin::{AdminClient, AdminOptions, ResourceSpecifier};
use rdkafka::client::DefaultClientContext;
use rdkafka::error::RDKafkaErrorCode;
use rdkafka::producer::FutureRecord;
use serde::Deserialize;
use sse_core::BackendError;

use crate::{Inner, NAME, kafka_error};

/// Kafka's default `max.message.bytes` (a topic's largest record batch).
pub(crate) const DEFAULT_MAX_MESSAGE_BYTES: usize = 1_048_588;

/// Room left in a record batch for its own header, the record's and the key (a session id).
pub(crate) const BATCH_ROOM: usize = 1024;

/// What the producer keys a record by, read without decoding the rest of the envelope.
#[derive(Deserialize)]
struct Key<'a> {
    #[serde(rename = "sessionId", borrow, default)]
    session_id: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    origin: Option<Cow<'a, str>>,
}

impl Inner {
    /// Sends one envelope and waits for its delivery report.
    pub(crate) async fn publish(&self, envelope: Bytes) -> Result<(), BackendError> {
        if envelope.len() > self.max_envelope.load(Ordering::Relaxed) {
            return Err(self.too_large(envelope.len()));
        }
        // A session's events share its partition (jEAP keys by session). A broadcast is keyed by
        // its publishing instance, so that one publisher's broadcasts keep their order too.
        let key = serde_json::from_slice::<Key<'_>>(&envelope)
            .ok()
            .and_then(|k| k.session_id.or(k.origin));
        let mut record = FutureRecord::<str, [u8]>::to(&self.config.topic).payload(&envelope);
        if let Some(key) = key.as_deref() {
            record = record.key(key);
        }
        self.producer
            .send(record, self.config.timeout)
            .await
            .map(drop)
            .map_err(|(error, _)| match error.rdkafka_error_code() {
                Some(RDKafkaErrorCode::MessageSizeTooLarge) => self.too_large(envelope.len()),
                Some(RDKafkaErrorCode::MessageTimedOut) => BackendError::Timeout {
                    backend: NAME,
                    after: self.config.timeout,
                },
                _ => kafka_error(error),
            })
    }

    /// The largest envelope the topic takes: its `max.message.bytes` (Kafka counts the whole
    /// record batch) less [`BATCH_ROOM`]; Kafka's default when the broker does not say.
    pub(crate) async fn max_envelope(&self) -> usize {
        let admin: Result<AdminClient<DefaultClientContext>, _> =
            self.config.client_config(&[]).create();
        let topic = self.config.topic.as_str();
        let described = match admin {
            Ok(admin) => {
                let options = AdminOptions::new().request_timeout(Some(self.config.timeout));
                admin
                    .describe_configs([&ResourceSpecifier::Topic(topic)], &options)
                    .await
                    .ok()
            }
            Err(_) => None,
        };
        let limit = described
            .into_iter()
            .flatten()
            .flatten()
            .find_map(|resource| {
                resource
                    .get("max.message.bytes")?
                    .value
                    .as_deref()?
                    .parse()
                    .ok()
            })
            .unwrap_or(DEFAULT_MAX_MESSAGE_BYTES);
        limit.saturating_sub(BATCH_ROOM).max(1)
    }

    fn too_large(&self, size: usize) -> BackendError {
        BackendError::TooLarge {
            backend: NAME,
            size,
            max: self.max_envelope.load(Ordering::Relaxed),
            raise: "the topic's max.message.bytes (kafka-configs --alter --entity-type topics \
                    --add-config max.message.bytes=N), and the broker's message.max.bytes and \
                    replica.fetch.max.bytes above it",
        }
    }
}
