//! Live delivery from the history stream ([`Delivery::Stream`](crate::Delivery::Stream)).
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
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicQosOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Connection, Consumer};
use sse_core::{BackendError, Received};
use tokio::sync::mpsc;

use crate::history::marker_of;
use crate::{GAP_MARGIN, Inner, unavailable};

/// The header in which RabbitMQ gives a stream message's offset.
const OFFSET: &str = "x-stream-offset";

/// A consuming connection on the history stream.
type Session = (Connection, Consumer, Channel);

impl Inner {
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
fn offset_of(properties: &BasicProperties) -> Option<i64> {
    match properties.headers().as_ref()?.inner().get(OFFSET)? {
        AMQPValue::LongLongInt(offset) => Some(*offset),
        AMQPValue::LongInt(offset) => Some(i64::from(*offset)),
        _ => None,
    }
}

/// Forwards the stream's messages in offset order, acknowledging each once handed over (a
/// stream's acks only give credit); consumes again after the last offset when the connection
/// dies, until the backend is closed or the receiving side is dropped.
pub(crate) async fn run(inner: Arc<Inner>, first: Session, tx: mpsc::Sender<Received>) {
    let mut session = Some(first);
    let mut backoff = Duration::from_millis(100);
    let mut state = inner.reconnects.subscription();
    let mut last: Option<i64> = None;
    let started = SystemTime::now();
    'reconnect: loop {
        let (connection, mut consumer, _channel) = match session.take() {
            Some(session) => session,
            None => {
                tokio::select! {
                    () = inner.closed.cancelled() => break 'reconnect,
                    () = tx.closed() => break 'reconnect,
                    () = tokio::time::sleep(backoff) => {}
                }
                match inner.consuming_stream(last.map(|o| o + 1)).await {
                    Ok(session) => {
                        state.restored();
                        tracing::info!(offset = ?last, "rabbitmq stream subscription restored");
                        backoff = Duration::from_millis(100);
                        if last.is_none() {
                            // Nothing received, so no offset to go on from: the hub reads what
                            // was published since the subscription began.
                            let since = started.checked_sub(GAP_MARGIN).unwrap_or(started);
                            if tx.send(Received::Gap { since }).await.is_err() {
                                break 'reconnect;
                            }
                        }
                        session
                    }
                    Err(error) => {
                        tracing::debug!(%error, "rabbitmq stream reconnect attempt failed");
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
            let offset = offset_of(&delivery.properties);
            let earlier = matches!((offset, last), (Some(o), Some(l)) if o <= l);
            // History readers' end markers and a chunk's offsets before ours are not events.
            if !earlier
                && marker_of(&delivery.properties).is_none()
                && tx
                    .send(Received::Envelope(Bytes::from(std::mem::take(
                        &mut delivery.data,
                    ))))
                    .await
                    .is_err()
            {
                let _ = connection.close(200, "bye".into()).await;
                break 'reconnect;
            }
            if offset.is_some() && !earlier {
                last = offset;
            }
            if let Err(error) = delivery.ack(BasicAckOptions::default()).await {
                break error.to_string();
            }
        };
        state.lost();
        tracing::warn!(reason = %lost, offset = ?last, "rabbitmq stream subscription lost; reconnecting");
    }
}
