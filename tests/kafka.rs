//! The Kafka backend against a real Kafka API (Tansu on the project's machines): the conformance
//! suite, several hubs on one topic, two apps on one topic, the missing-topic error, readiness,
//! and a broker restart under running hubs.
#![cfg(feature = "kafka")]
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::brokers::{self, Broker};
use common::fanout::{self, Connect};
use common::{TestServer, unique};
use serde_json::json;
use sse_fanout::BackendError;
use sse_fanout::kafka::{KafkaBackend, KafkaConfig};

use common::backends::kafka::{config, connect, forget, raw};

common::fanout::broker_suite!(Broker::Kafka);

#[tokio::test]
async fn a_missing_topic_is_a_clear_error_unless_creation_is_enabled() {
    let _shared = brokers::shared().await;
    let Some(brokers) = brokers::url(Broker::Kafka).await else {
        return;
    };
    let topic = unique("missing");
    let err = KafkaBackend::connect(KafkaConfig::new(&brokers, &topic, "sse-test"))
        .await
        .unwrap_err();
    assert!(matches!(err, BackendError::Config { .. }), "{err}");
    assert!(err.to_string().contains(&topic), "{err}");
    KafkaBackend::connect(config(&brokers, &topic))
        .await
        .unwrap();
    KafkaBackend::connect(KafkaConfig::new(&brokers, &topic, "sse-test"))
        .await
        .unwrap();
}

/// An event published over HTTP the moment a freshly started hub is ready reaches its streams.
#[tokio::test]
async fn an_event_published_the_moment_a_hub_is_ready_is_delivered() {
    let _shared = brokers::shared().await;
    let Some(brokers) = brokers::url(Broker::Kafka).await else {
        return;
    };
    let topic = unique("ready");
    let publisher = TestServer::start(connect(&brokers, &topic)().await, |b| b).await;
    for round in 0..3 {
        let fresh = TestServer::start(connect(&brokers, &topic)().await, |b| b).await;
        let mut stream = fresh.stream("eventName=e").await;
        fresh.wait_for_streams(1).await;
        let (status, _) = publisher
            .publish(json!({"eventName": "e", "payload": round}))
            .await;
        assert_eq!(status, 202);
        assert_eq!(stream.next().await.data, round.to_string());
    }
}

/// Ignored for now: against Tansu 0.6 (memory storage), librdkafka 2.12.1 (bundled by rdkafka
/// 0.39) crashes with SIGSEGV after the broker restarts (`strcmp` on a NULL topic name in
/// `rd_kafka_metadata_update_op`, from `rd_kafka_metadata_cache_find`), taking the test process
/// with it. Run it with `--ignored` against a real Kafka.
#[tokio::test]
#[ignore = "librdkafka 2.12.1 segfaults when Tansu restarts; see the doc comment"]
async fn delivery_resumes_after_a_broker_restart() {
    let Some(brokers) = brokers::url(Broker::Kafka).await else {
        return;
    };
    let topic = unique("restart");
    // Tansu keeps topics in memory: whoever connects after the restart creates the topic again.
    let recreate = {
        let (brokers, topic) = (brokers.clone(), topic.clone());
        move || {
            let config = config(&brokers, &topic);
            async move {
                let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
                while let Err(error) = KafkaBackend::connect(config.clone()).await {
                    assert!(
                        tokio::time::Instant::now() < deadline,
                        "topic not recreated: {error}"
                    );
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
    };
    let connect = connect(&brokers, &topic);
    let with_recreate: Connect = Arc::new(move || connect());
    fanout::delivery_resumes_after_a_broker_restart_then(
        Broker::Kafka,
        with_recreate,
        Duration::from_secs(15),
        recreate,
    )
    .await;
}

#[tokio::test]
async fn an_unreachable_broker_is_a_typed_error_within_the_timeout() {
    let started = std::time::Instant::now();
    let mut config = KafkaConfig::new("127.0.0.1:1", "t", "sse-test");
    config.timeout = Duration::from_secs(2);
    let err = KafkaBackend::connect(config).await.unwrap_err();
    assert!(err.is_temporary(), "{err}");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
}
