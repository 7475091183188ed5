//! The NATS backend under running hubs, beyond the conformance suite its crate runs: typed URL
//! errors, subscriptions that hold before they return, a broker restart (a server of the test's
//! own), a cut connection caught up from the history, reconnect counting, and a silent
//! subscription found by the delivery probe.
#![cfg(feature = "nats")]
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::brokers::Broker;
use sse_fanout::FanoutBackend;
use sse_fanout::nats::{NatsBackend, NatsConfig};

use common::backends::nats::{connect, forget};

common::fanout::restart_suite!(Broker::Nats, Duration::from_secs(5));

#[tokio::test]
async fn bad_urls_are_typed_errors() {
    // Nothing listens on port 1.
    let err = NatsBackend::connect(NatsConfig::new("nats://127.0.0.1:1", "c"))
        .await
        .unwrap_err();
    assert!(err.is_temporary(), "{err}");
    // A list with something that is no server address in it.
    let err = NatsBackend::connect(NatsConfig::new("nats://127.0.0.1:1,http://", "c"))
        .await
        .unwrap_err();
    assert!(
        matches!(err, sse_fanout::BackendError::Config { .. }),
        "{err}"
    );
}

/// `subscribe` returns only once the server holds the subscription, every time: an event
/// published on another connection right after it is received. (A flush alone does not prove it:
/// `Client::flush` only writes out the buffer, and 16 of 300 such events were lost that way.)
#[tokio::test]
async fn subscribe_holds_before_it_returns_every_time() {
    use futures_util::StreamExt;
    let Some(url) = common::brokers::url(Broker::Nats).await else {
        return;
    };
    let subject = common::unique("ready");
    let _forget = common::backends::Forget::new(&url, &subject, forget);
    let publisher = NatsBackend::connect(NatsConfig::new(url.as_str(), subject.as_str()))
        .await
        .unwrap();
    for round in 0..200 {
        let subscriber = NatsBackend::connect(NatsConfig::new(url.as_str(), subject.as_str()))
            .await
            .unwrap();
        let mut stream = subscriber.subscribe().await.unwrap();
        let envelope = sse_core::testkit::envelope("ready", serde_json::json!(round));
        publisher.publish(envelope.clone()).await.unwrap();
        let got = tokio::time::timeout(Duration::from_secs(5), stream.next())
            .await
            .unwrap_or_else(|_| panic!("round {round}: the event was missed"));
        assert_eq!(
            got,
            Some(sse_core::Received::Envelope(envelope)),
            "round {round}"
        );
        subscriber.close().await.unwrap();
    }
}

/// The connection to the broker is cut and comes back; what was published meanwhile is read from
/// the history (see `common::fanout::a_cut_connection_catches_up_from_the_history`).
#[tokio::test]
async fn a_cut_connection_catches_up_from_the_history() {
    common::fanout::cut_connection_on(Broker::Nats, connect, forget).await;
}

/// A backend that never lost its connection counts no reconnect (finding 6 of the exactly-once
/// issue: the first connection's own `Connected` event, which can come after `connect`
/// returned, was counted as one and set off a catch-up), and its subscription reports no gap;
/// a real disconnect is counted once it is back (`restart_suite` covers that).
#[tokio::test]
async fn a_fresh_connection_counts_no_reconnect() {
    let Some(url) = common::brokers::url(Broker::Nats).await else {
        return;
    };
    let subject = common::unique("fresh");
    let _forget = common::backends::Forget::new(&url, &subject, forget);
    for round in 0..20 {
        let backend = NatsBackend::connect(NatsConfig::new(url.as_str(), subject.as_str()))
            .await
            .unwrap();
        let mut stream = backend.subscribe().await.unwrap();
        // The client's events are delivered by a task of its own; give them time to arrive.
        let item =
            sse_core::testkit::next_item_within(&mut stream, Duration::from_millis(100)).await;
        assert!(item.is_none(), "round {round}: {item:?}");
        assert_eq!(backend.reconnects(), 0, "round {round}");
        backend.close().await.unwrap();
    }
}

/// A subscription that stays connected but delivers nothing: a proxy between the hub and NATS
/// stops forwarding and keeps the connection open. The NATS client still sees its connection as
/// up, so only the delivery probe can tell: `/healthz` goes down with the probe's reason, the
/// metric counts it, and once the proxy forwards again the hub subscribes again, the client gets
/// what was published meanwhile, and health comes back. Without the probe, health stayed up the
/// whole time.
#[tokio::test]
async fn a_silent_subscription_turns_health_down_and_recovers() {
    let Some(url) = common::brokers::url(Broker::Nats).await else {
        return;
    };
    let proxy = common::proxy::Proxy::start(url.trim_start_matches("nats://").to_owned()).await;
    let subject = common::unique("silent");
    let _forget = common::backends::Forget::new(&url, &subject, forget);
    let through_proxy = NatsBackend::connect(NatsConfig::new(
        format!("nats://127.0.0.1:{}", proxy.port()),
        subject.as_str(),
    ))
    .await
    .unwrap();
    let direct = NatsBackend::connect(NatsConfig::new(url.as_str(), subject.as_str()))
        .await
        .unwrap();
    common::fanout::a_silent_subscription_recovers(
        &proxy,
        std::sync::Arc::new(through_proxy),
        std::sync::Arc::new(direct),
        Some("probe"),
    )
    .await;
}
