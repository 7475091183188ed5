//! The subscription: one connection of its own that reconnects with backoff, subscribes the
//! shared channel and the session routes again, and reports the gap it may have left.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use futures_util::StreamExt;
use redis::aio::PubSubSink;
use sse_core::{BackendError, Received};
use tokio::sync::mpsc;

use crate::{Inner, NAME, unavailable};

/// How far before its last sign of life a restored subscription's gap begins: the clocks of this
/// host and the Redis server may differ by this much.
const GAP_MARGIN: Duration = Duration::from_secs(5);

impl Inner {
    /// A subscribed connection: its ping sink and its message stream.
    pub(crate) async fn subscribed(
        &self,
    ) -> Result<(PubSubSink, redis::aio::PubSubStream), BackendError> {
        let timeout = self.config.connect_timeout;
        let attempt = async {
            let pubsub = self.client.get_async_pubsub().await.map_err(unavailable)?;
            let (mut sink, stream) = pubsub.split();
            sink.subscribe(&self.config.channel)
                .await
                .map_err(unavailable)?;
            Ok((sink, stream))
        };
        tokio::time::timeout(timeout, attempt)
            .await
            .map_err(|_| BackendError::Timeout {
                backend: NAME,
                after: timeout,
            })?
    }
}

/// Forwards messages of one subscription; reconnects and subscribes again when the connection
/// dies, until the backend is closed or the receiving side is dropped.
pub(crate) async fn run_subscription(
    inner: Arc<Inner>,
    first: (PubSubSink, redis::aio::PubSubStream),
    tx: mpsc::Sender<Received>,
) {
    let mut connection = Some(first);
    let mut backoff = Duration::from_millis(50);
    let mut state = inner.reconnects.subscription();
    // When this subscription last proved it was receiving (a message or a ping's answer).
    let mut alive_at = SystemTime::now();
    let mut lost = false;
    loop {
        let (mut sink, mut stream) = match connection.take() {
            Some(connection) => connection,
            None => {
                tokio::select! {
                    () = inner.closed.cancelled() => return,
                    () = tx.closed() => return,
                    () = tokio::time::sleep(backoff) => {}
                }
                match inner.subscribed().await {
                    Ok(connection) => {
                        state.restored();
                        tracing::info!(channel = %inner.config.channel, "redis subscription restored");
                        backoff = Duration::from_millis(50);
                        connection
                    }
                    Err(error) => {
                        tracing::debug!(%error, "redis reconnect attempt failed");
                        backoff = (backoff * 2).min(inner.config.max_backoff);
                        continue;
                    }
                }
            }
        };
        if let Err(error) = inner.resubscribe(&sink).await {
            tracing::warn!(%error, "subscribing the session routes again failed; reconnecting");
            state.lost();
            lost = true;
            inner.connection_lost();
            continue;
        }
        if std::mem::take(&mut lost) {
            // Subscribed again: what was published while this subscription was down is in the
            // history, which the hub reads for this gap.
            let since = alive_at.checked_sub(GAP_MARGIN).unwrap_or(alive_at);
            if tx.send(Received::Gap { since }).await.is_err() {
                return;
            }
        }
        let mut ping = tokio::time::interval(inner.config.ping_interval);
        ping.tick().await;
        let reason = loop {
            tokio::select! {
                () = inner.closed.cancelled() => return,
                message = stream.next() => match message {
                    Some(message) => {
                        let bytes = Bytes::copy_from_slice(message.get_payload_bytes());
                        if tx.send(Received::Envelope(bytes)).await.is_err() {
                            return; // nobody is listening any more
                        }
                        alive_at = SystemTime::now();
                    }
                    None => break "connection closed".to_owned(),
                },
                _ = ping.tick() => {
                    let answer = tokio::time::timeout(
                        inner.config.response_timeout,
                        sink.ping::<redis::Value>(),
                    ).await;
                    match answer {
                        Ok(Ok(_)) => alive_at = SystemTime::now(),
                        Ok(Err(error)) => break format!("ping failed: {error}"),
                        Err(_) => break "ping timed out".to_owned(),
                    }
                }
            }
        };
        state.lost();
        lost = true;
        inner.connection_lost();
        tracing::warn!(channel = %inner.config.channel, %reason, "redis subscription lost; reconnecting");
    }
}
