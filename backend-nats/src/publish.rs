//! Publishing: through JetStream when the backend keeps history (stored, then republished to the
//! instances in the stream's order), else core NATS.

use std::sync::atomic::Ordering;

use async_nats::connection::State;
use bytes::Bytes;
use sse_core::BackendError;

use crate::{LIVE_PREFIX, NAME, NatsBackend};

impl NatsBackend {
    /// Publishes to `subject` (the shared one, or a session's), through JetStream with history.
    pub(crate) async fn publish_on(
        &self,
        subject: String,
        envelope: Bytes,
    ) -> Result<(), BackendError> {
        if self.counters.closed.load(Ordering::Relaxed) {
            return Err(BackendError::Closed { backend: NAME });
        }
        let max = self.client.server_info().max_payload;
        if max > 0 && envelope.len() > max {
            return Err(BackendError::TooLarge {
                backend: NAME,
                size: envelope.len(),
                max,
                raise: "the server's max_payload (nats-server configuration, up to 64 MB)",
            });
        }
        if self.client.connection_state() != State::Connected {
            return Err(BackendError::unavailable(NAME, "not connected to NATS"));
        }
        let send = async {
            if let Some(jetstream) = &self.jetstream {
                // Stored in the history stream, and so delivered to the subject's subscribers.
                let ack = jetstream
                    .publish(subject.clone(), envelope)
                    .await
                    .map_err(|e| BackendError::unavailable(NAME, e))?;
                return ack
                    .await
                    .map(drop)
                    .map_err(|e| BackendError::unavailable(NAME, e));
            }
            self.client
                .publish(subject, envelope)
                .await
                .map_err(|e| BackendError::unavailable(NAME, e))?;
            self.client
                .flush()
                .await
                .map_err(|e| BackendError::unavailable(NAME, e))
        };
        tokio::time::timeout(self.config.publish_timeout, send)
            .await
            .map_err(|_| self.timeout())?
    }

    /// Where the messages published to `subject` reach the instances: with history, the stream's
    /// republished copy (one order for every subscriber), else `subject` itself.
    pub(crate) fn delivered_on(&self, subject: &str) -> String {
        match self.jetstream {
            Some(_) => format!("{LIVE_PREFIX}.{subject}"),
            None => subject.to_owned(),
        }
    }
}
