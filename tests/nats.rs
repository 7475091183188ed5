//! The NATS backend under running hubs, beyond the conformance suite its crate runs: typed URL
//! errors, subscriptions that hold before they return, a broker restart (a server of the test's
//! own), a cut connection caught up from the history, reconnect counting, a silent
//! subscription found by the delivery probe, and a catch-up that waits out a NATS cluster
//! refusing reads for over 30 s.
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

/// A hub whose catch-up meets a history refused for over 30 s (a CI fault run on a NATS cluster
/// once lost 49 routed events so: the catch-up gave up after 30 s and the hub's log kept the
/// hole). Its connection to its server (through a proxy; the other servers unknown to it) is
/// cut while events are published; then two of the cluster's three servers stop, so JetStream
/// has no quorum and refuses every read, and the connection comes back. The catch-up keeps
/// reading, `/healthz` goes down once reads have been refused for 30 s, and when the servers are
/// back the client gets every event once, in order, and health comes back. A catch-up that gave
/// up would leave the client without them.
#[tokio::test]
async fn a_catch_up_waits_out_a_history_refused_for_over_30_s() {
    let Some(mut cluster) = common::nats_cluster::OwnNatsCluster::start().await else {
        return;
    };
    let subject = common::unique("refused");
    let port = cluster.client_port(0);
    let proxy = common::cluster::CutProxy::start(([127, 0, 0, 1], port).into()).await;
    let config = |url: String| NatsConfig::new(url, subject.as_str()).history_replicas(3);
    let through_proxy = config(proxy.url(&format!("nats://127.0.0.1:{port}"), port))
        .options(async_nats::ConnectOptions::new().ignore_discovered_servers());
    let cut_off = NatsBackend::connect(through_proxy).await.unwrap();
    let server =
        common::TestServer::start(std::sync::Arc::new(cut_off), |b| b.app_name("refused")).await;
    let mut stream = server.stream("eventName=e&sessionId=s1").await;
    server.wait_for_streams(1).await;
    let publisher =
        sse_fanout::Hub::builder(NatsBackend::connect(config(cluster.url())).await.unwrap())
            .app_name("refused")
            .start()
            .await
            .unwrap();
    let publish = |n: u32| {
        publisher.publish(sse_fanout::SendSseEvent::new("e", serde_json::json!(n)).to_session("s1"))
    };
    publish(0).await.unwrap();
    assert_eq!(stream.next().await.data, "0");

    proxy.cut();
    for n in 1..=3 {
        publish(n).await.unwrap();
    }
    cluster.stop(&[1, 2]);
    proxy.restore();
    let refused_since = tokio::time::Instant::now();
    let deadline = refused_since + Duration::from_secs(60);
    // Down at once while the connection comes back, then for the refused reads.
    let reason = loop {
        let (status, body) = server.health().await;
        if status != 200 && body.to_string().contains("refused reads") {
            break body.to_string();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "health never said the history refused reads: {body}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(
        refused_since.elapsed() >= Duration::from_secs(25),
        "down after {:?}: {reason}",
        refused_since.elapsed()
    );
    // Past the 30 s a catch-up once gave up after.
    tokio::time::sleep(Duration::from_secs(5)).await;
    cluster.start_again(&[1, 2]).await;
    for n in 1..=3 {
        assert_eq!(
            stream.next().await.data,
            n.to_string(),
            "event {n}, published while the connection was cut"
        );
    }
    // Up again. (It may go down once more for a moment: the delivery probe finds the
    // subscription silent through the catch-up, and subscribes again.)
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while server.health().await.0 != 200 {
        assert!(tokio::time::Instant::now() < deadline, "health stayed down");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        stream
            .next_within(Duration::from_millis(500))
            .await
            .is_none(),
        "nothing twice"
    );
}
