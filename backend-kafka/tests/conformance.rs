//! The conformance suite of `sse_core::testkit` (every check that needs no outage: delivery,
//! order, history, routes, hubs on it) against a real Kafka-API broker, on a channel of its own. The broker
//! is found as in every backend crate (`sse_core::testkit::broker`): `SSE_TEST_KAFKA_BROKERS`, else the standard
//! port; none is a loud skip, or a failure with `SSE_FANOUT_REQUIRE_BROKERS=1`.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;

use sse_core::FanoutBackend;
use sse_core::testkit::{self, broker};
use sse_fanout_kafka::{KafkaBackend, KafkaConfig};

#[tokio::test]
async fn conformance() {
    let Some(brokers) = broker::url("SSE_TEST_KAFKA_BROKERS", "127.0.0.1:9092", 9092) else {
        return;
    };
    // One partition, as the hub creates its topic: across several Kafka keeps no one order,
    // which the suite checks. Topics are kept (the topic's retention is its history).
    let config =
        KafkaConfig::new(brokers, broker::unique("conformance"), "sse-test").create_topic(1, 1);
    testkit::run_all(&move || {
        let config = config.clone();
        async move { Arc::new(KafkaBackend::connect(config).await.unwrap()) as Arc<dyn FanoutBackend> }
    })
    .await;
}
