//! One subscription's life, whichever [`Source`] it consumes: forward each delivery to the hub
//! and acknowledge it once handed over; when the connection dies, connect again with backoff,
//! until the backend is closed or the receiving side is dropped.
//!
//! # Live delivery from the history stream ([`Delivery::Stream`](crate::Delivery::Stream))
//!
//! RabbitMQ routes two publishers' messages into each queue in that queue's own order: two
//! instances with a queue each can disagree on which of two near-simultaneous events came first,
//! and a client that moves between them with `Last-Event-ID` would get one of them twice, or
//! never. A stream queue has one order, its offsets, and every consumer reads it in that order.
//! So each subscription consumes the history stream itself from the next offset: every instance
//! delivers the same sequence, the one a resume reads back from the history.
//!
//! A subscription that loses its connection consumes again from the offset after the last one it
//! received: nothing is missed or received twice, and no history read is needed (RabbitMQ may
//! hand over the whole chunk that offset falls in, so earlier offsets are skipped). Only one that
//! received nothing before it was lost reports a [gap](sse_core::Received::Gap).
//!
//! Every instance reads every message of the stream, targeted ones included: in session routing
//! nothing needs binding, and nothing is saved either ([`Delivery::Queue`](crate::Delivery::Queue)
//! saves it, without one order).

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use futures_util::StreamExt;
use lapin::BasicProperties;
use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicQosOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Channel, Connection, Consumer};
use sse_core::{BackendError, Received};
use tokio::sync::mpsc;

use crate::history::marker_of;
use crate::{Inner, unavailable};

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

    /// The stream offset it consumes from next, when it has received one.
    fn next_offset(&self) -> Option<i64> {
        match self {
            Source::Stream { last, .. } => last.map(|o| o + 1),
            Source::Queue { .. } => None,
        }
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
                        tracing::info!(
                            source = source.name(),
                            next_offset = ?source.next_offset(),
                            "rabbitmq subscription restored"
                        );
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

/// The header in which RabbitMQ gives a stream message's offset.
const OFFSET: &str = "x-stream-offset";

impl Inner {
    /// A consuming connection: the instance's queue declared, bound, and consumed.
    pub(crate) async fn consuming_session(&self, queue: &str) -> Result<Session, BackendError> {
        let connection = self.connection("subscriber").await?;
        let consumer = self
            .timed(async {
                let channel = connection.create_channel().await.map_err(unavailable)?;
                channel
                    .basic_qos(self.config.prefetch, BasicQosOptions::default())
                    .await
                    .map_err(unavailable)?;
                self.declare_exchange(&channel).await?;
                let options = QueueDeclareOptions {
                    exclusive: true,
                    auto_delete: true,
                    ..QueueDeclareOptions::default()
                };
                channel
                    .queue_declare(queue.into(), options, FieldTable::default())
                    .await
                    .map_err(unavailable)?;
                self.bind(&channel, queue).await?;
                let consumer = channel
                    .basic_consume(
                        queue.into(),
                        format!("sse-fanout.{queue}").into(),
                        BasicConsumeOptions::default(),
                        FieldTable::default(),
                    )
                    .await
                    .map_err(unavailable)?;
                Ok((consumer, channel))
            })
            .await?;
        self.bind_routes(consumer.1.clone(), queue).await?;
        Ok((connection, consumer.0, consumer.1))
    }

    /// Consumes the history stream from `offset`, or from the next message when `None`.
    pub(crate) async fn consuming_stream(
        &self,
        offset: Option<i64>,
    ) -> Result<Session, BackendError> {
        let connection = self.connection("subscriber").await?;
        let queue = self.config.history_queue.clone();
        let (consumer, channel) = self
            .timed(async {
                let channel = connection.create_channel().await.map_err(unavailable)?;
                // Stream consumers must have a prefetch.
                channel
                    .basic_qos(self.config.prefetch.max(1), BasicQosOptions::default())
                    .await
                    .map_err(unavailable)?;
                let mut arguments = FieldTable::default();
                arguments.insert(
                    OFFSET.into(),
                    match offset {
                        Some(offset) => AMQPValue::LongLongInt(offset),
                        None => AMQPValue::LongString("next".into()),
                    },
                );
                let consumer = channel
                    .basic_consume(
                        queue.clone().into(),
                        format!("sse-fanout.{}", self.config.queue).into(),
                        BasicConsumeOptions::default(),
                        arguments,
                    )
                    .await
                    .map_err(unavailable)?;
                Ok((consumer, channel))
            })
            .await?;
        Ok((connection, consumer, channel))
    }
}

/// A stream message's offset.
pub(crate) fn offset_of(properties: &BasicProperties) -> Option<i64> {
    match properties.headers().as_ref()?.inner().get(OFFSET)? {
        AMQPValue::LongLongInt(offset) => Some(*offset),
        AMQPValue::LongInt(offset) => Some(i64::from(*offset)),
        _ => None,
    }
}
