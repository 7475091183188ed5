//! The topic: its partitions from the metadata, and the check at connect that it exists (created
//! when the configuration says so, as jEAP's topic validator requires it).

use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::error::RDKafkaErrorCode;
use rdkafka::producer::Producer;
use sse_core::BackendError;

use crate::{Inner, NAME, blocking, config_error, kafka_error};

impl Inner {
    /// The topic's partition ids, or `None` when the broker does not know the topic.
    pub(crate) async fn partitions(&self) -> Result<Option<Vec<i32>>, BackendError> {
        let producer = self.producer.clone();
        let topic = self.config.topic.clone();
        let timeout = self.config.timeout;
        blocking(move || {
            // All topics: asking for one by name may make a broker auto-create it.
            let metadata = producer
                .client()
                .fetch_metadata(None, timeout)
                .map_err(kafka_error)?;
            Ok(metadata
                .topics()
                .iter()
                .find(|t| t.name() == topic && t.error().is_none())
                .map(|t| t.partitions().iter().map(|p| p.id()).collect::<Vec<_>>())
                .filter(|p| !p.is_empty()))
        })
        .await
    }

    pub(crate) async fn validate_topic(&self) -> Result<(), BackendError> {
        if self.partitions().await?.is_some() {
            return Ok(());
        }
        let topic = &self.config.topic;
        let Some((partitions, replication)) = self.config.create_topic else {
            return Err(config_error(format!(
                "topic `{topic}` does not exist; create it, or enable topic creation (--create-topic)"
            )));
        };
        let admin: AdminClient<DefaultClientContext> = self
            .config
            .client_config(&[])
            .create()
            .map_err(|e| config_error(format!("admin client: {e}")))?;
        let new_topic = NewTopic::new(topic, partitions, TopicReplication::Fixed(replication));
        let options = AdminOptions::new().operation_timeout(Some(self.config.timeout));
        let results = admin
            .create_topics([&new_topic], &options)
            .await
            .map_err(kafka_error)?;
        for result in results {
            match result {
                Ok(_) => tracing::info!(%topic, partitions, replication, "created the topic"),
                Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((name, code)) => {
                    return Err(BackendError::Other {
                        backend: NAME,
                        source: format!("creating topic {name}: {code}").into(),
                    });
                }
            }
        }
        // Wait until the metadata shows it, so that subscribe finds its partitions.
        let deadline = tokio::time::Instant::now() + self.config.timeout;
        while self.partitions().await?.is_none() {
            if tokio::time::Instant::now() > deadline {
                return Err(BackendError::Timeout {
                    backend: NAME,
                    after: self.config.timeout,
                });
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(())
    }
}
