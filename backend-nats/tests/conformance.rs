//! The conformance suite of `sse_core::testkit` (every check that needs no outage: delivery,
//! order, history, routes, hubs on it) against a real NATS server with JetStream, on a channel of its own. The broker
//! is found as in every backend crate (`sse_core::testkit::broker`): `SSE_TEST_NATS_URL`, else the standard
//! port; none is a loud skip, or a failure with `SSE_FANOUT_REQUIRE_BROKERS=1`.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;

use sse_core::FanoutBackend;
use sse_core::testkit::{self, broker};
use sse_fanout_nats::{NatsBackend, NatsConfig};

#[tokio::test]
async fn conformance() {
    let Some(url) = broker::url("SSE_TEST_NATS_URL", "nats://127.0.0.1:4222", 4222) else {
        return;
    };
    let config = NatsConfig::new(url, broker::unique("conformance"));
    let factory = {
        let config = config.clone();
        move || {
            let config = config.clone();
            async move {
                Arc::new(NatsBackend::connect(config).await.unwrap()) as Arc<dyn FanoutBackend>
            }
        }
    };
    testkit::run_all(&factory).await;
    // The history stream outlives its messages: remove it.
    let backend = NatsBackend::connect(config.clone()).await.unwrap();
    let jetstream = async_nats::jetstream::new(backend.client().clone());
    jetstream
        .delete_stream(&config.history_stream)
        .await
        .unwrap();
}
