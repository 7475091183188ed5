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

use lapin::BasicProperties;
use lapin::options::{BasicConsumeOptions, BasicQosOptions};
use lapin::types::{AMQPValue, FieldTable};
use sse_core::BackendError;

use crate::subscription::Session;
use crate::{Inner, unavailable};

/// The header in which RabbitMQ gives a stream message's offset.
const OFFSET: &str = "x-stream-offset";

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
pub(crate) fn offset_of(properties: &BasicProperties) -> Option<i64> {
    match properties.headers().as_ref()?.inner().get(OFFSET)? {
        AMQPValue::LongLongInt(offset) => Some(*offset),
        AMQPValue::LongInt(offset) => Some(i64::from(*offset)),
        _ => None,
    }
}
