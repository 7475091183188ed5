//! Each broker backend as the tests use it: `connect` makes a new instance of the library's
//! backend on a channel, `raw` writes an envelope with the broker's own client (as a service in
//! another language would, the way README tells it to), and `hub_args` runs the hub binary on it.

#![allow(unused_imports)]

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use sse_fanout::FanoutBackend;

use super::fanout::{Connect, RawPublish, boxed};

/// The hub binary's arguments for `backend` on `url` and `channel`.
pub fn hub_args(backend: &str, url: &str, channel: &str, extra: &[&str]) -> Vec<String> {
    [
        "--backend",
        backend,
        "--backend-url",
        url,
        "--channel",
        channel,
    ]
    .iter()
    .chain(extra)
    .map(|s| s.to_string())
    .collect()
}

/// Removes what a test's channel left in the broker when dropped, also when the test fails:
/// `Forget::new(url, channel, backend::forget)`.
pub struct Forget {
    run: Option<Box<dyn FnOnce() + Send>>,
}

impl Forget {
    pub fn new<F, Fut>(url: &str, channel: &str, forget: F) -> Forget
    where
        F: FnOnce(String, String) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        let (url, channel) = (url.to_owned(), channel.to_owned());
        Forget {
            run: Some(Box::new(move || {
                // A runtime of its own on a thread of its own: Drop cannot await, and may run
                // inside the test's runtime.
                let _ = std::thread::spawn(move || {
                    let runtime = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .unwrap();
                    runtime.block_on(async move {
                        let _ = tokio::time::timeout(Duration::from_secs(10), forget(url, channel))
                            .await;
                    });
                })
                .join();
            })),
        }
    }
}

impl Drop for Forget {
    fn drop(&mut self) {
        if let Some(run) = self.run.take() {
            run();
        }
    }
}

#[cfg(feature = "redis")]
pub mod redis {
    use super::*;
    use sse_fanout::redis::{RedisBackend, RedisConfig};

    pub fn connect(url: &str, channel: &str) -> Connect {
        let (url, channel) = (url.to_owned(), channel.to_owned());
        Arc::new(move || {
            let (url, channel) = (url.clone(), channel.clone());
            boxed(async move {
                Arc::new(
                    RedisBackend::connect(RedisConfig::new(url, channel))
                        .await
                        .unwrap(),
                ) as Arc<dyn FanoutBackend>
            })
        })
    }

    /// `MULTI`, `XADD {channel}:history … * e envelope`, `PUBLISH channel envelope`, `EXEC`.
    pub fn raw(url: &str, channel: &str) -> RawPublish {
        let (url, channel) = (url.to_owned(), channel.to_owned());
        Arc::new(move |bytes: Bytes| {
            let (url, channel) = (url.clone(), channel.clone());
            boxed(async move {
                let client = ::redis::Client::open(url).unwrap();
                let mut conn = client.get_multiplexed_async_connection().await.unwrap();
                let _: () = ::redis::pipe()
                    .atomic()
                    .cmd("XADD")
                    .arg(format!("{channel}:history"))
                    .arg(&["MAXLEN", "~", "10000", "*", "e"][..])
                    .arg(bytes.as_ref())
                    .ignore()
                    .cmd("PUBLISH")
                    .arg(&channel)
                    .arg(bytes.as_ref())
                    .ignore()
                    .query_async(&mut conn)
                    .await
                    .unwrap();
            })
        })
    }

    /// Deletes the channel's history stream (it would expire by itself after its age).
    pub async fn forget(url: String, channel: String) {
        let Ok(client) = ::redis::Client::open(url) else {
            return;
        };
        let Ok(mut conn) = client.get_multiplexed_async_connection().await else {
            return;
        };
        let _: Result<(), _> = ::redis::cmd("DEL")
            .arg(format!("{channel}:history"))
            .query_async(&mut conn)
            .await;
    }
}

#[cfg(feature = "nats")]
pub mod nats {
    use super::*;
    use sse_fanout::nats::{NatsBackend, NatsConfig};

    pub fn connect(url: &str, subject: &str) -> Connect {
        let (url, subject) = (url.to_owned(), subject.to_owned());
        Arc::new(move || {
            let (url, subject) = (url.clone(), subject.clone());
            boxed(async move {
                Arc::new(
                    NatsBackend::connect(NatsConfig::new(url, subject))
                        .await
                        .unwrap(),
                ) as Arc<dyn FanoutBackend>
            })
        })
    }

    /// `nats pub subject envelope` with the plain client (the JetStream stream keeps it).
    pub fn raw(url: &str, subject: &str) -> RawPublish {
        let (url, subject) = (url.to_owned(), subject.to_owned());
        Arc::new(move |bytes: Bytes| {
            let (url, subject) = (url.clone(), subject.clone());
            boxed(async move {
                let client = async_nats::connect(url).await.unwrap();
                client.publish(subject, bytes).await.unwrap();
                client.flush().await.unwrap();
            })
        })
    }

    /// Deletes the subject's JetStream history stream (streams outlive their messages).
    pub async fn forget(url: String, subject: String) {
        let Ok(client) = async_nats::connect(url.as_str()).await else {
            return;
        };
        let jetstream = async_nats::jetstream::new(client);
        let name = NatsConfig::new(url.as_str(), subject).history_stream;
        let _ = jetstream.delete_stream(name).await;
    }
}

#[cfg(feature = "kafka")]
pub mod kafka {
    use super::*;
    use rdkafka::ClientConfig;
    use rdkafka::producer::{FutureProducer, FutureRecord};
    use sse_fanout::kafka::{KafkaBackend, KafkaConfig};

    /// The backend's settings for `topic` (created with one partition when missing, as the hub
    /// creates it: across several partitions Kafka keeps no one order, which the conformance
    /// suite checks), with any `SSE_TEST_KAFKA_CONFIG=k=v,k=v` settings.
    pub fn config(brokers: &str, topic: &str) -> KafkaConfig {
        let mut c = KafkaConfig::new(brokers, topic, "sse-test").create_topic(1, 1);
        if let Ok(extra) = std::env::var("SSE_TEST_KAFKA_CONFIG") {
            for kv in extra.split(',') {
                if let Some((k, v)) = kv.split_once('=') {
                    c = c.set(k, v);
                }
            }
        }
        c
    }

    pub fn connect(brokers: &str, topic: &str) -> Connect {
        let (brokers, topic) = (brokers.to_owned(), topic.to_owned());
        Arc::new(move || {
            let config = config(&brokers, &topic);
            boxed(async move {
                Arc::new(KafkaBackend::connect(config).await.unwrap()) as Arc<dyn FanoutBackend>
            })
        })
    }

    /// A plain producer writing the envelope to the topic.
    pub fn raw(brokers: &str, topic: &str) -> RawPublish {
        let (brokers, topic) = (brokers.to_owned(), topic.to_owned());
        Arc::new(move |bytes: Bytes| {
            let (brokers, topic) = (brokers.clone(), topic.clone());
            boxed(async move {
                let producer: FutureProducer = ClientConfig::new()
                    .set("bootstrap.servers", &brokers)
                    .create()
                    .unwrap();
                producer
                    .send(
                        FutureRecord::<(), [u8]>::to(&topic).payload(&bytes),
                        Duration::from_secs(5),
                    )
                    .await
                    .unwrap();
            })
        })
    }

    /// Topics are kept (deleting one under running clients is what librdkafka handles worst);
    /// their history is the topic's retention.
    pub async fn forget(_brokers: String, _topic: String) {}
}

#[cfg(feature = "rabbit")]
pub mod rabbit {
    use super::*;
    use lapin::options::BasicPublishOptions;
    use lapin::{BasicProperties, Connection, ConnectionProperties};
    use sse_fanout::rabbit::{RabbitBackend, RabbitConfig};

    pub fn connect(url: &str, exchange: &str) -> Connect {
        let (url, exchange) = (url.to_owned(), exchange.to_owned());
        Arc::new(move || {
            let (url, exchange) = (url.clone(), exchange.clone());
            boxed(async move {
                let queue = super::super::unique("sse-test-queue");
                let config = RabbitConfig::new(url, exchange, queue);
                Arc::new(RabbitBackend::connect(config).await.unwrap()) as Arc<dyn FanoutBackend>
            })
        })
    }

    /// A plain AMQP client publishing to the exchange.
    pub fn raw(url: &str, exchange: &str) -> RawPublish {
        let (url, exchange) = (url.to_owned(), exchange.to_owned());
        Arc::new(move |bytes: Bytes| {
            let (url, exchange) = (url.clone(), exchange.clone());
            boxed(async move {
                let conn = Connection::connect(&url, ConnectionProperties::default())
                    .await
                    .unwrap();
                let channel = conn.create_channel().await.unwrap();
                channel
                    .basic_publish(
                        exchange.into(),
                        "".into(),
                        BasicPublishOptions::default(),
                        &bytes,
                        BasicProperties::default(),
                    )
                    .await
                    .unwrap()
                    .await
                    .unwrap();
                conn.close(200, "bye".into()).await.unwrap();
            })
        })
    }

    /// Deletes the exchange's history stream queue (durable: it outlives every hub).
    pub async fn forget(url: String, exchange: String) {
        use lapin::options::QueueDeleteOptions;
        let Ok(conn) = Connection::connect(&url, ConnectionProperties::default()).await else {
            return;
        };
        let Ok(channel) = conn.create_channel().await else {
            return;
        };
        let queue = format!("{exchange}.history");
        let _ = channel
            .queue_delete(queue.into(), QueueDeleteOptions::default())
            .await;
        let _ = conn.close(200, "bye".into()).await;
    }
}
