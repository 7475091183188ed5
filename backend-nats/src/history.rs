//! The history: a JetStream stream over the shared subject and the routes' subjects, which also
//! republishes what it stores for the instances; read with a pull consumer from a start time,
//! refused (as unavailable, so read again) when the consumer's replica is behind the stream's
//! leader.

use std::time::Duration;

use async_nats::Client;
use async_nats::jetstream::{self, consumer, stream as js_stream};
use async_trait::async_trait;
use futures_util::StreamExt;
use sse_core::history::{BrokerHistory, HistoryStream};
use sse_core::{BackendError, ReplayConfig};

use crate::{LIVE_PREFIX, NAME, NatsBackend, NatsConfig};

/// Messages one fetch of a history read asks for.
const PAGE: usize = 1000;

/// Creates the history stream, or brings an existing one's limits up to date.
pub(crate) async fn ensure_stream(
    client: &Client,
    config: &NatsConfig,
    history: &ReplayConfig,
) -> Result<jetstream::Context, BackendError> {
    let context = jetstream::new(client.clone());
    let stream = js_stream::Config {
        name: config.history_stream.clone(),
        // The shared subject and the session routes' subjects under it.
        subjects: vec![config.subject.clone(), format!("{}.*", config.subject)],
        max_age: history.max_age,
        max_messages: i64::try_from(history.max_events).unwrap_or(i64::MAX),
        max_bytes: i64::try_from(history.max_bytes).unwrap_or(i64::MAX),
        discard: js_stream::DiscardPolicy::Old,
        storage: js_stream::StorageType::File,
        num_replicas: config.history_replicas.max(1),
        allow_direct: true,
        // Every stored message goes out again, in the stream's order, to the same subject
        // under LIVE_PREFIX: what the instances subscribe (see the crate docs on order).
        republish: Some(js_stream::Republish {
            source: ">".to_owned(),
            destination: format!("{LIVE_PREFIX}.>"),
            headers_only: false,
        }),
        ..Default::default()
    };
    let created = tokio::time::timeout(
        config.connect_timeout * 2,
        context.create_or_update_stream(stream),
    )
    .await
    .map_err(|_| BackendError::Timeout {
        backend: NAME,
        after: config.connect_timeout * 2,
    })?;
    created.map_err(|e| BackendError::Config {
        backend: NAME,
        message: format!(
            "cannot create or update the JetStream stream `{}` over `{}` for the history \
             (is JetStream enabled on the server? turn history off otherwise): {e}",
            config.history_stream, config.subject
        ),
    })?;
    Ok(context)
}

#[async_trait]
impl BrokerHistory for NatsBackend {
    async fn read_since(
        &self,
        since: std::time::SystemTime,
    ) -> Result<HistoryStream, BackendError> {
        let Some(jetstream) = &self.jetstream else {
            return Ok(Box::pin(futures_util::stream::empty()));
        };
        let unavailable =
            |e: &dyn std::fmt::Display| BackendError::unavailable(NAME, e.to_string());
        let read = async {
            let stream = jetstream
                .get_stream(&self.config.history_stream)
                .await
                .map_err(|e| unavailable(&e))?;
            let consumer = stream
                .create_consumer(consumer::pull::Config {
                    deliver_policy: consumer::DeliverPolicy::ByStartTime {
                        start_time: time::OffsetDateTime::from(since),
                    },
                    ack_policy: consumer::AckPolicy::None,
                    inactive_threshold: Duration::from_secs(30),
                    memory_storage: true,
                    ..Default::default()
                })
                .await
                .map_err(|e| unavailable(&e))?;
            let pending = consumer.cached_info().num_pending;
            let name = consumer.cached_info().name.clone();
            // The consumer reads its leader's replica of the stream, which may be behind the
            // stream's leader (in a cluster, a server that lost its store and is copying it back
            // in): a read from there would miss envelopes. What the stream's leader said it held
            // before the consumer was made must all be in the consumer's reach.
            let leader_last = stream.cached_info().state.last_sequence;
            let reach = consumer.cached_info().delivered.stream_sequence + pending;
            if reach < leader_last {
                let _ = stream.delete_consumer(&name).await;
                return Err(unavailable(&format!(
                    "the replica that would serve the history read holds up to sequence \
                     {reach}, its leader {leader_last}: it is still catching up"
                )));
            }
            Ok::<_, BackendError>((stream, consumer, pending, name))
        };
        let (stream, consumer, pending, name) =
            tokio::time::timeout(self.config.publish_timeout, read)
                .await
                .map_err(|_| self.timeout())??;
        let timeout = self.config.publish_timeout;
        let remaining = usize::try_from(pending).unwrap_or(usize::MAX);
        Ok(sse_core::history::paged(
            remaining,
            move |remaining: usize| {
                let (stream, consumer, name) = (stream.clone(), consumer.clone(), name.clone());
                async move {
                    let fetch = async {
                        let mut batch = consumer
                            .fetch()
                            .max_messages(remaining.min(PAGE))
                            .messages()
                            .await
                            .map_err(|e| BackendError::unavailable(NAME, e))?;
                        let mut envelopes = Vec::new();
                        while let Some(message) = batch.next().await {
                            let message =
                                message.map_err(|e| BackendError::unavailable(NAME, e))?;
                            envelopes.push(message.payload.clone());
                        }
                        Ok::<_, BackendError>(envelopes)
                    };
                    let envelopes =
                        tokio::time::timeout(timeout, fetch).await.map_err(|_| {
                            BackendError::Timeout {
                                backend: NAME,
                                after: timeout,
                            }
                        })??;
                    let left = remaining.saturating_sub(envelopes.len());
                    // Done when every message pending at the start is read, or none came (the
                    // oldest ones aged out meanwhile).
                    let next = (left > 0 && !envelopes.is_empty()).then_some(left);
                    if next.is_none() {
                        let _ = stream.delete_consumer(&name).await;
                    }
                    Ok((envelopes, next))
                }
            },
        ))
    }
}
