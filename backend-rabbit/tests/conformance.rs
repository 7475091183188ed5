//! The conformance suite of `sse_core::testkit` (every check that needs no outage: delivery,
//! order, history, routes, hubs on it) against a real RabbitMQ, on a channel of its own. The broker
//! is found as in every backend crate (`sse_core::testkit::broker`): `SSE_TEST_RABBIT_URL`, else the standard
//! port; none is a loud skip, or a failure with `SSE_FANOUT_REQUIRE_BROKERS=1`.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;

use lapin::options::QueueDeleteOptions;
use lapin::{Connection, ConnectionProperties};
use sse_core::FanoutBackend;
use sse_core::testkit::{self, broker};
use sse_fanout_rabbit::{RabbitBackend, RabbitConfig};

#[tokio::test]
async fn conformance() {
    let standard = "amqp://guest:guest@127.0.0.1:5672/%2f";
    let Some(url) = broker::url("SSE_TEST_RABBIT_URL", standard, 5672) else {
        return;
    };
    let exchange = broker::unique("conformance");
    let factory = {
        let (url, exchange) = (url.clone(), exchange.clone());
        move || {
            // Each instance its own queue, as each hub has.
            let config = RabbitConfig::new(url.clone(), exchange.clone(), broker::unique("queue"));
            async move {
                Arc::new(RabbitBackend::connect(config).await.unwrap()) as Arc<dyn FanoutBackend>
            }
        }
    };
    testkit::run_all(&factory).await;
    // The history stream queue is durable: remove it.
    let connection = Connection::connect(&url, ConnectionProperties::default())
        .await
        .unwrap();
    let channel = connection.create_channel().await.unwrap();
    let queue = format!("{exchange}.history");
    channel
        .queue_delete(queue.into(), QueueDeleteOptions::default())
        .await
        .unwrap();
    let _ = connection.close(200, "bye".into()).await;
}
