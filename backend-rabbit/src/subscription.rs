//! One subscription's life, whichever [`Source`] it consumes: forward each delivery to the hub
//! and acknowledge it once handed over; when the connection dies, connect again with backoff,
//! until the backend is closed or the receiving side is dropped.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use futures_util::StreamExt;
use lapin::message::Delivery;
use lapin::options::BasicAckOptions;
use lapin::{Channel, Connection, Consumer};
use sse_core::{BackendError, Received};
use tokio::sync::mpsc;

use crate::Inner;
use crate::history::marker_of;
use crate::stream::offset_of;

/// How far before its last sign of life a restored subscription's gap begins (this host's and the
/// broker's clocks may differ by this much).
const GAP_MARGIN: Duration = Duration::from_secs(5);

/// A consuming connection: the connection, its consumer, and the channel kept open for it.
pub(crate) type Session = (Connection, Consumer, Channel);

/// Where a subscription consumes from (see [`Delivery`](crate::Delivery)).
pub(crate) enum Source {
    /// The instance's own queue, declared again on each connection: what was published while
    /// it was gone is a gap, from a little before the last delivery.
    Queue { queue: String, alive_at: SystemTime },
    /// The history stream, consumed again from the offset after the last one received: nothing
    /// is missed, unless nothing had been received yet.
    Stream {
        last: Option<i64>,
        started: SystemTime,
    },
}

impl Source {
    pub(crate) fn queue(queue: String) -> Source {
        Source::Queue {
            queue,
            alive_at: SystemTime::now(),
        }
    }

    pub(crate) fn stream() -> Source {
        Source::Stream {
            last: None,
            started: SystemTime::now(),
        }
    }

    /// A new consuming connection.
    pub(crate) async fn connect(&self, inner: &Inner) -> Result<Session, BackendError> {
        match self {
            Source::Queue { queue, .. } => inner.consuming_session(queue).await,
            Source::Stream { last, .. } => inner.consuming_stream(last.map(|o| o + 1)).await,
        }
    }

    /// After connecting again: where the hub must read the history from, if anywhere.
    fn gap(&self) -> Option<SystemTime> {
        let from = match self {
            Source::Queue { alive_at, .. } => *alive_at,
            Source::Stream { last: Some(_), .. } => return None,
            Source::Stream {
                last: None,
                started,
            } => *started,
        };
        Some(from.checked_sub(GAP_MARGIN).unwrap_or(from))
    }

    /// The envelope a delivery carries, if it is one to hand over: a stream's history-reader
    /// markers, and offsets before ours in a chunk RabbitMQ hands over whole, are not.
    fn envelope(&mut self, delivery: &mut Delivery) -> Option<Bytes> {
        match self {
            Source::Queue { alive_at, .. } => *alive_at = SystemTime::now(),
            Source::Stream { last, .. } => {
                let offset = offset_of(&delivery.properties);
                if let (Some(o), Some(l)) = (offset, *last)
                    && o <= l
                {
                    return None;
                }
                if offset.is_some() {
                    *last = offset;
                }
                if marker_of(&delivery.properties).is_some() {
                    return None;
                }
            }
        }
        Some(Bytes::from(std::mem::take(&mut delivery.data)))
    }

    fn name(&self) -> &str {
        match self {
            Source::Queue { queue, .. } => queue,
            Source::Stream { .. } => "history stream",
        }
    }
}

/// Runs the subscription on `first`, then on each new connection.
pub(crate) async fn run(
    inner: Arc<Inner>,
    mut source: Source,
    first: Session,
    tx: mpsc::Sender<Received>,
) {
    let mut session = Some(first);
    let mut backoff = Duration::from_millis(100);
    let mut state = inner.reconnects.subscription();
    'reconnect: loop {
        let (connection, mut consumer, _channel) = match session.take() {
            Some(session) => session,
            None => {
                tokio::select! {
                    () = inner.closed.cancelled() => break 'reconnect,
                    () = tx.closed() => break 'reconnect,
                    () = tokio::time::sleep(backoff) => {}
                }
                match source.connect(&inner).await {
                    Ok(session) => {
                        state.restored();
                        tracing::info!(source = source.name(), "rabbitmq subscription restored");
                        backoff = Duration::from_millis(100);
                        if let Some(since) = source.gap()
                            && tx.send(Received::Gap { since }).await.is_err()
                        {
                            break 'reconnect;
                        }
                        session
                    }
                    Err(error) => {
                        tracing::debug!(%error, source = source.name(), "rabbitmq reconnect attempt failed");
                        backoff = (backoff * 2).min(inner.config.max_backoff);
                        continue;
                    }
                }
            }
        };
        let lost = loop {
            let delivery = tokio::select! {
                () = inner.closed.cancelled() => {
                    let _ = connection.close(200, "bye".into()).await;
                    break 'reconnect;
                }
                delivery = consumer.next() => delivery,
            };
            let mut delivery = match delivery {
                Some(Ok(delivery)) => delivery,
                Some(Err(error)) => break error.to_string(),
                None => break "consumer cancelled".to_owned(),
            };
            if let Some(envelope) = source.envelope(&mut delivery)
                && tx.send(Received::Envelope(envelope)).await.is_err()
            {
                let _ = connection.close(200, "bye".into()).await;
                break 'reconnect;
            }
            if let Err(error) = delivery.ack(BasicAckOptions::default()).await {
                break error.to_string();
            }
        };
        state.lost();
        inner.routes_lost();
        tracing::warn!(source = source.name(), reason = %lost, "rabbitmq subscription lost; reconnecting");
    }
}
