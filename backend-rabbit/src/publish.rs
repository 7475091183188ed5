//! Publishing: one connection with a confirm-mode channel, opened again on the next publish
//! after it failed; `Ok` once the broker confirmed.

use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Confirmation, Connection};
use sse_core::BackendError;

use crate::{Inner, NAME, unavailable};

impl Inner {
    pub(crate) async fn publishing_session(&self) -> Result<(Connection, Channel), BackendError> {
        let connection = self.connection("publisher").await?;
        self.timed(async {
            let channel = connection.create_channel().await.map_err(unavailable)?;
            channel
                .confirm_select(ConfirmSelectOptions::default())
                .await
                .map_err(unavailable)?;
            self.declare_exchange(&channel).await?;
            if let Some(history) = &self.config.history {
                let declaring = connection.create_channel().await.map_err(unavailable)?;
                self.declare_history(&connection, &declaring, history)
                    .await?;
                let _ = declaring.close(200, "declared".into()).await;
            }
            Ok(channel)
        })
        .await
        .map(|channel| (connection, channel))
    }

    /// The publishing channel, reconnected first when its connection is gone.
    pub(crate) async fn publisher(
        &self,
    ) -> Result<tokio::sync::MutexGuard<'_, Option<(Connection, Channel)>>, BackendError> {
        let mut publisher = self.publisher.lock().await;
        if publisher
            .as_ref()
            .is_none_or(|(connection, _)| !connection.status().connected())
        {
            *publisher = None;
            *publisher = Some(self.publishing_session().await?);
        }
        Ok(publisher)
    }

    pub(crate) async fn publish(&self, envelope: &[u8]) -> Result<(), BackendError> {
        self.publish_to(&self.config.exchange, "", FieldTable::default(), envelope)
            .await
    }

    /// Publishes to `exchange` with a routing key and headers, waiting for the confirm.
    pub(crate) async fn publish_to(
        &self,
        exchange: &str,
        key: &str,
        headers: FieldTable,
        envelope: &[u8],
    ) -> Result<(), BackendError> {
        let mut publisher = self.publisher().await?;
        let Some((_, channel)) = publisher.as_ref() else {
            return Err(BackendError::unavailable(NAME, "no publishing channel"));
        };
        let properties = BasicProperties::default()
            .with_delivery_mode(if self.config.persistent { 2 } else { 1 })
            .with_headers(headers);
        let result = self
            .timed(async {
                let confirm = channel
                    .basic_publish(
                        exchange.into(),
                        key.into(),
                        BasicPublishOptions::default(),
                        envelope,
                        properties,
                    )
                    .await
                    .map_err(unavailable)?;
                match confirm.await.map_err(unavailable)? {
                    Confirmation::Nack(_) => Err(BackendError::Other {
                        backend: NAME,
                        source: "the broker refused the message (nack)".into(),
                    }),
                    _ => Ok(()),
                }
            })
            .await;
        if result.as_ref().is_err_and(BackendError::is_temporary) {
            // Reconnect on the next publish.
            *publisher = None;
        }
        result
    }
}
