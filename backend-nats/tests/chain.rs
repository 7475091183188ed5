//! A republished message lost on the way (as when a cluster's stream leader moves) is noticed
//! from the stream's sequence chain: the next message of the subject names a predecessor that
//! never came, and after waiting for it the subscription reports a gap before letting the
//! message out, so the hub reads the lost one from the history. The loss is made by publishing
//! a message on the live subject by hand, stamped two sequence numbers past the stream's last.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use async_nats::{HeaderMap, header};
use sse_core::FanoutBackend;
use sse_core::Received;
use sse_core::testkit::{self, broker};
use sse_fanout_nats::{LIVE_PREFIX, NatsBackend, NatsConfig};

#[tokio::test]
async fn a_broken_chain_is_reported_as_a_gap_before_what_follows() {
    let Some(url) = broker::url("SSE_TEST_NATS_URL", "nats://127.0.0.1:4222", 4222) else {
        return;
    };
    let config = NatsConfig::new(url, broker::unique("chain"));
    let backend = NatsBackend::connect(config.clone()).await.unwrap();
    let mut stream = backend.subscribe().await.unwrap();
    backend
        .publish(testkit::envelope("first", serde_json::json!(1)))
        .await
        .unwrap();
    let first = testkit::next_item_within(&mut stream, testkit::WAIT).await;
    assert!(matches!(first, Some(Received::Envelope(_))), "{first:?}");

    let jetstream = async_nats::jetstream::new(backend.client().clone());
    let mut history = jetstream.get_stream(&config.history_stream).await.unwrap();
    let last = history.info().await.unwrap().state.last_sequence;
    // The message after a lost one: its predecessor, `last + 1`, never comes.
    let mut headers = HeaderMap::new();
    headers.insert(header::NATS_SEQUENCE, (last + 2).to_string().as_str());
    headers.insert(header::NATS_LAST_SEQUENCE, (last + 1).to_string().as_str());
    let after_loss = testkit::envelope("after-loss", serde_json::json!(3));
    backend
        .client()
        .publish_with_headers(
            format!("{LIVE_PREFIX}.{}", config.subject),
            headers,
            after_loss.clone(),
        )
        .await
        .unwrap();
    backend.client().flush().await.unwrap();

    let within = Duration::from_secs(5);
    let gap = testkit::next_item_within(&mut stream, within).await;
    assert!(
        matches!(gap, Some(Received::Gap { .. })),
        "a gap first, not {gap:?}"
    );
    let next = testkit::next_item_within(&mut stream, within).await;
    assert_eq!(next, Some(Received::Envelope(after_loss)));
    jetstream
        .delete_stream(&config.history_stream)
        .await
        .unwrap();
}
