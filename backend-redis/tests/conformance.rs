//! The conformance suite of `sse_core::testkit` (every check that needs no outage: delivery,
//! order, history, routes, hubs on it) against a real Redis, on a channel of its own. The broker
//! is found as in every backend crate (`sse_core::testkit::broker`): `SSE_TEST_REDIS_URL`, else the standard
//! port; none is a loud skip, or a failure with `SSE_FANOUT_REQUIRE_BROKERS=1`.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;

use sse_core::FanoutBackend;
use sse_core::testkit::{self, broker};
use sse_fanout_redis::{RedisBackend, RedisConfig};

#[tokio::test]
async fn conformance() {
    let Some(url) = broker::url("SSE_TEST_REDIS_URL", "redis://127.0.0.1:6379", 6379) else {
        return;
    };
    // The history stream expires by itself after the history's age.
    let config = RedisConfig::new(url, broker::unique("conformance"));
    testkit::run_all(&move || {
        let config = config.clone();
        async move { Arc::new(RedisBackend::connect(config).await.unwrap()) as Arc<dyn FanoutBackend> }
    })
    .await;
}
