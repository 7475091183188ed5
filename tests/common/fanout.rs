//! Multi-instance scenarios every broker backend passes: several hubs (each a real server on its
//! own port, with its own broker connection) on one channel.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::future::BoxFuture;
use serde_json::json;
use sse_fanout::{FanoutBackend, Routing, SendSseEvent};

use super::brokers::{self, Broker, Outage};
use super::{TestServer, client};

/// Connects a new backend instance to the test's channel.
pub type Connect = Arc<dyn Fn() -> BoxFuture<'static, Arc<dyn FanoutBackend>> + Send + Sync>;

/// Writes raw bytes to the test's channel with the broker's plain client, as another program would.
pub type RawPublish = Arc<dyn Fn(Bytes) -> BoxFuture<'static, ()> + Send + Sync>;

async fn hub(connect: &Connect, app: &str) -> TestServer {
    let app = app.to_owned();
    TestServer::start(connect().await, move |b| b.app_name(app)).await
}

/// Three hubs: session targeting across instances and broadcast to the clients of every instance.
pub async fn targeting_and_broadcast_across_instances(connect: Connect) {
    let a = hub(&connect, "orders").await;
    let b = hub(&connect, "orders").await;
    let c = hub(&connect, "orders").await;
    let mut s1_on_a = a.stream("eventName=e&sessionId=s1").await;
    let mut s1_on_c = c.stream("eventName=e&sessionId=s1").await;
    let mut s2_on_b = b.stream("eventName=e&sessionId=s2").await;
    let mut anonymous_on_b = b.stream("eventName=e").await;
    for (server, n) in [(&a, 1), (&b, 2), (&c, 1)] {
        server.wait_for_streams(n).await;
    }

    // Published over HTTP on B, which holds no stream of s1.
    let (status, body) = b
        .publish(json!({"eventName": "e", "sessionId": "s1", "payload": "to s1"}))
        .await;
    assert_eq!(status, 202, "{body}");
    let id = body["id"].as_str().unwrap().to_owned();
    for s in [&mut s1_on_a, &mut s1_on_c] {
        let event = s.next().await;
        assert_eq!(
            (event.data.as_str(), event.id.as_str()),
            ("to s1", id.as_str())
        );
    }
    // Published through the Rust API on C: a broadcast reaches every instance's clients.
    c.hub
        .publish(SendSseEvent::new("e", json!("to all")))
        .await
        .unwrap();
    for s in [
        &mut s1_on_a,
        &mut s1_on_c,
        &mut s2_on_b,
        &mut anonymous_on_b,
    ] {
        assert_eq!(s.next().await.data, "to all");
    }
    // s2 and the anonymous client saw the broadcast first: never s1's event.
    assert_eq!(a.hub.stats().received, 2);
}

/// Two apps on one channel each see only their own events; a raw envelope another program wrote
/// to the channel is delivered to the app it names.
pub async fn apps_see_only_their_own_events(connect: Connect, raw: RawPublish) {
    let orders = hub(&connect, "orders").await;
    let billing = hub(&connect, "billing").await;
    let mut o = orders.stream("eventName=*").await;
    let mut b = billing.stream("eventName=*").await;
    orders.wait_for_streams(1).await;
    billing.wait_for_streams(1).await;

    billing
        .hub
        .publish(SendSseEvent::new("invoice", json!("billing only")))
        .await
        .unwrap();
    raw(Bytes::from_static(
        br#"{"v":1,"id":"raw-1","app":"other","eventName":"x","payload":"other app"}"#,
    ))
    .await;
    raw(Bytes::from_static(
        br#"{"v":1,"id":"raw-2","app":"orders","eventName":"order","payload":{"from":"python"}}"#,
    ))
    .await;

    let first = o.next().await;
    assert_eq!(
        (first.id.as_str(), first.event.as_str(), first.data.as_str()),
        ("raw-2", "order", r#"{"from":"python"}"#)
    );
    assert_eq!(b.next().await.data, "billing only");
    assert!(b.next_within(Duration::from_millis(300)).await.is_none());
    assert!(o.next_within(Duration::from_millis(300)).await.is_none());
    assert_eq!(orders.hub.stats().dropped_other_app, 2);
    assert_eq!(billing.hub.stats().dropped_other_app, 2);
}

/// The broker stops under two running hubs: publishing fails with a typed error (HTTP 503) and
/// nothing panics; it comes back and delivery resumes `within` without restarting the hubs.
pub async fn delivery_resumes_after_a_broker_restart(
    outage: &mut dyn Outage,
    connect: Connect,
    within: Duration,
) {
    delivery_resumes_after_a_broker_restart_then(outage, connect, within, || async {}).await;
}

/// As [`delivery_resumes_after_a_broker_restart`], running `after_start` once the broker is back
/// (to recreate what a broker with in-memory storage lost).
pub async fn delivery_resumes_after_a_broker_restart_then<A, AF>(
    outage: &mut dyn Outage,
    connect: Connect,
    within: Duration,
    after_start: A,
) where
    A: FnOnce() -> AF,
    AF: Future<Output = ()>,
{
    let a = hub(&connect, "orders").await;
    let b = hub(&connect, "orders").await;
    let mut stream = a.stream("eventName=e&sessionId=s1").await;
    a.wait_for_streams(1).await;
    let publish =
        |payload: &str| b.publish(json!({"eventName": "e", "sessionId": "s1", "payload": payload}));
    assert_eq!(publish("before").await.0, 202);
    assert_eq!(stream.next().await.data, "before");

    outage
        .run(Box::pin(async {
            let started = Instant::now();
            let (status, body) = publish("while down").await;
            assert_eq!(status, 503, "{body}");
            assert_eq!(body["error"], "backend_unavailable");
            assert!(
                started.elapsed() < Duration::from_secs(8),
                "publish took {:?}",
                started.elapsed()
            );
            let health = client().get(b.url("/healthz")).send().await.unwrap();
            // Health may take a moment to notice; it must not hang.
            let _ = health.status();
        }))
        .await;
    after_start().await;

    let back = Instant::now();
    loop {
        let (status, _) = publish("after").await;
        if status == 202
            && let Some(event) = stream.next_within(Duration::from_millis(250)).await
        {
            assert_eq!(event.data, "after");
            break;
        }
        assert!(
            back.elapsed() < within,
            "no delivery within {within:?} after the broker came back"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!(
        "delivery resumed {:?} after the broker was back",
        back.elapsed()
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while a.health().await.0 != 200 || b.health().await.0 != 200 {
        assert!(Instant::now() < deadline, "health did not come back");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Closed while the broker is up: a client torn down with the runtime after the broker is
    // gone may wait for its sockets to time out (librdkafka does).
    a.stop().await;
    b.stop().await;
}

/// A client leaves instance A and comes back on instance B with `Last-Event-ID`: B replays what
/// was published meanwhile (on either instance), then goes on live.
pub async fn replay_across_instances(connect: Connect) {
    let a = hub(&connect, "orders").await;
    let b = hub(&connect, "orders").await;
    let mut on_a = a.stream("eventName=e&sessionId=s1").await;
    a.wait_for_streams(1).await;
    let body = |p: &str| json!({"eventName": "e", "sessionId": "s1", "payload": p});
    a.publish(body("1")).await;
    let last = on_a.next().await;
    drop(on_a);
    a.publish(body("2")).await;
    b.publish(body("3")).await;
    // B has received all three before the client comes back.
    let deadline = Instant::now() + super::WAIT;
    while b.hub.stats().received < 3 {
        assert!(Instant::now() < deadline, "B did not receive the events");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut on_b = super::SseClient::connect(
        &b.url("/sse/event-stream?eventName=e&sessionId=s1"),
        &[("last-event-id", &last.id)],
    )
    .await;
    assert_eq!(on_b.next().await.data, "2");
    assert_eq!(on_b.next().await.data, "3");
    b.wait_for_streams(1).await;
    a.publish(body("4")).await;
    assert_eq!(on_b.next().await.data, "4");
}

/// Instance A drains (as on SIGTERM) while events keep coming; its client reconnects to B as a
/// browser would (after the `retry:` it was sent, with `Last-Event-ID`) and misses nothing.
pub async fn drain_then_reconnect_elsewhere_loses_nothing(connect: Connect) {
    let a = hub(&connect, "orders").await;
    let b = hub(&connect, "orders").await;
    let mut client = a.stream("eventName=e&sessionId=s1").await;
    a.wait_for_streams(1).await;
    let publisher = b.hub.clone();
    let publishing = tokio::spawn(async move {
        let mut ids = Vec::new();
        for i in 0..50 {
            let event = SendSseEvent::new("e", json!(i)).to_session("s1");
            ids.push(publisher.publish(event).await.unwrap().to_string());
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        ids
    });
    tokio::time::sleep(Duration::from_millis(150)).await;
    let mut seen: Vec<String> = Vec::new();
    let stop = tokio::spawn(a.stop());
    for event in client.until_end().await {
        seen.push(event.id);
    }
    stop.await.unwrap();
    let last = seen.last().cloned().expect("some events before the drain");
    let mut again = super::SseClient::connect(
        &b.url("/sse/event-stream?eventName=e&sessionId=s1"),
        &[("last-event-id", &last)],
    )
    .await;
    let ids = publishing.await.unwrap();
    while seen.len() < ids.len() {
        seen.push(again.next().await.id);
    }
    assert_eq!(seen, ids, "every event exactly once, in order");
}

/// Runs the conformance suite's outage check with a real broker restart.
pub async fn conformance_outage(outage: &mut dyn Outage, connect: Connect) {
    let factory = move || connect();
    sse_core::testkit::delivery_resumes_after_an_outage(&factory, || async {
        outage
            .run(Box::pin(tokio::time::sleep(Duration::from_millis(500))))
            .await;
    })
    .await;
}

/// A future that resolves to the value, boxed: for building [`Connect`] closures.
pub fn boxed<T, F>(f: F) -> BoxFuture<'static, T>
where
    F: Future<Output = T> + Send + 'static,
{
    Box::pin(f)
}

/// Declares the hub-level scenarios every broker backend runs (its crate's own `tests/` run the
/// conformance suite), in a test file that has
/// `fn connect(url: &str, channel: &str) -> Connect`, `fn raw(url: &str, channel: &str) -> RawPublish`
/// and `async fn forget(url: String, channel: String)` (removes what the channel left in the broker)
/// in scope:
/// `broker_suite!(Broker::Redis);`. Each test takes the broker's URL from the harness.
#[allow(unused_macros)]
macro_rules! broker_suite {
    ($broker:expr) => {
        #[tokio::test]
        async fn targeting_and_broadcast_across_instances() {
            let Some(url) = common::brokers::url($broker).await else {
                return;
            };
            let channel = common::unique("cluster");
            let _forget = common::backends::Forget::new(&url, &channel, forget);
            common::fanout::targeting_and_broadcast_across_instances(connect(&url, &channel)).await;
        }

        #[tokio::test]
        async fn apps_see_only_their_own_events() {
            let Some(url) = common::brokers::url($broker).await else {
                return;
            };
            let channel = common::unique("apps");
            let _forget = common::backends::Forget::new(&url, &channel, forget);
            common::fanout::apps_see_only_their_own_events(
                connect(&url, &channel),
                raw(&url, &channel),
            )
            .await;
        }

        #[tokio::test]
        async fn replay_across_instances() {
            let Some(url) = common::brokers::url($broker).await else {
                return;
            };
            let channel = common::unique("replay");
            let _forget = common::backends::Forget::new(&url, &channel, forget);
            common::fanout::replay_across_instances(connect(&url, &channel)).await;
        }

        #[tokio::test]
        async fn drain_then_reconnect_elsewhere_loses_nothing() {
            let Some(url) = common::brokers::url($broker).await else {
                return;
            };
            let channel = common::unique("drain");
            let _forget = common::backends::Forget::new(&url, &channel, forget);
            common::fanout::drain_then_reconnect_elsewhere_loses_nothing(connect(&url, &channel))
                .await;
        }
    };
}
#[allow(unused_imports)]
pub(crate) use broker_suite;

/// Declares the tests that stop and start a broker: the conformance suite's outage check and a
/// restart under two running hubs, delivery resuming within `$within`. Each runs on a broker of
/// its own ([`OwnBroker`](super::own::OwnBroker)), never the machine's shared one, so they run in
/// the normal test command beside the other tests.
#[allow(unused_macros)]
macro_rules! restart_suite {
    ($broker:expr, $within:expr) => {
        #[tokio::test]
        async fn conformance_outage() {
            let Some(mut own) = common::own::OwnBroker::start($broker).await else {
                return;
            };
            let connect = connect(&own.url(), &common::unique("outage"));
            common::fanout::conformance_outage(&mut own, connect).await;
        }

        #[tokio::test]
        async fn delivery_resumes_after_a_broker_restart() {
            let Some(mut own) = common::own::OwnBroker::start($broker).await else {
                return;
            };
            let connect = connect(&own.url(), &common::unique("restart"));
            common::fanout::delivery_resumes_after_a_broker_restart(&mut own, connect, $within)
                .await;
        }
    };
}
#[allow(unused_imports)]
pub(crate) use restart_suite;

/// One instance's connection to the broker is cut (a proxy between them drops it and refuses new
/// ones for a while) while the broker stays up; events published meanwhile on another instance
/// are in the history, and the cut instance's subscription reads them from there once it is
/// back: its client misses nothing, in order, and live events reach it again (in session
/// routing, through its route subscribed again). `connect(url)` connects a backend to the test's
/// channel at `url`; `url` is the broker's, on 127.0.0.1 at `port`.
pub async fn a_cut_connection_catches_up_from_the_history(
    url: &str,
    port: u16,
    routing: Routing,
    connect: impl Fn(&str) -> Connect,
) {
    let proxy = super::cluster::CutProxy::start(([127, 0, 0, 1], port).into()).await;
    let cut_off = connect(&proxy.url(url, port))().await;
    let server = TestServer::start(cut_off, |b| b.app_name("catch-up").routing(routing)).await;
    let mut stream = server.stream("eventName=e&sessionId=s1").await;
    server.wait_for_streams(1).await;
    let publisher = crate::common::TestServer::start(connect(url)().await, |b| {
        b.app_name("catch-up").routing(routing)
    })
    .await;
    let publish = |n: u32| {
        publisher
            .hub
            .publish(SendSseEvent::new("e", json!(n)).to_session("s1"))
    };
    publish(0).await.unwrap();
    assert_eq!(stream.next().await.data, "0");

    proxy.cut();
    for n in 1..=5 {
        publish(n).await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(1000)).await;
    proxy.restore();
    for n in 1..=5 {
        assert_eq!(
            stream.next().await.data,
            n.to_string(),
            "event {n}, published while the connection was cut"
        );
    }
    for n in 6..=8 {
        publish(n).await.unwrap();
        assert_eq!(
            stream.next().await.data,
            n.to_string(),
            "live again: {routing:?}"
        );
    }
    assert!(
        server.hub.backend_reconnects() >= 1,
        "the connection was cut"
    );
}

/// [`a_cut_connection_catches_up_from_the_history`] on `broker`, on a channel of its own.
pub async fn cut_connection_on<F, Fut>(
    broker: Broker,
    connect: fn(&str, &str) -> Connect,
    forget: F,
) where
    F: FnOnce(String, String) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let Some(url) = brokers::url(broker).await else {
        return;
    };
    let Some(port) = url
        .split("127.0.0.1:")
        .nth(1)
        .and_then(|rest| rest.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|p| p.parse().ok())
    else {
        brokers::missing(&format!(
            "a {broker:?} on 127.0.0.1, to put a proxy in front of it"
        ));
        return;
    };
    let channel = super::unique("cut");
    let _forget = super::backends::Forget::new(&url, &channel, forget);
    // Both routings: in session routing the cut instance also subscribes its routes again.
    for routing in [Routing::Broadcast, Routing::session()] {
        a_cut_connection_catches_up_from_the_history(&url, port, routing, |u| connect(u, &channel))
            .await;
    }
}
