//! Multi-instance scenarios over HTTP that need more than a broker: stopping and starting one of
//! the test's own (an outage under running hubs), or a proxy that cuts one instance's connection.
//! The scenarios that need only the broker (targeting, apps, replay, drain across hubs) are
//! `sse_core::testkit::hubs`, run by each backend crate's own tests.

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
    // Both routings where the backend has routes: in session routing the cut instance also
    // subscribes its routes again.
    let probe = connect(&url, &channel)().await;
    let mut routings = vec![Routing::Broadcast];
    if probe.routes().is_some() {
        routings.push(Routing::session());
    }
    probe.close().await.ok();
    for routing in routings {
        a_cut_connection_catches_up_from_the_history(&url, port, routing, |u| connect(u, &channel))
            .await;
    }
}

/// A subscription that stays connected but delivers nothing: the hub reaches its broker through
/// `proxy` (`through_proxy`), which stops forwarding and keeps its connections open; `direct`
/// publishes. `/healthz` goes down (with `down_reason` in its body, when given) and the delivery
/// probe fails; once the proxy forwards again, health comes back, what was published meanwhile
/// arrives once, and then live events.
pub async fn a_silent_subscription_recovers(
    proxy: &super::proxy::Proxy,
    through_proxy: Arc<dyn FanoutBackend>,
    direct: Arc<dyn FanoutBackend>,
    down_reason: Option<&str>,
) {
    let probe = sse_fanout::ProbeConfig::new(Duration::from_millis(500), Duration::from_secs(1));
    let server =
        TestServer::start(through_proxy, |b| b.app_name("silent").probe(Some(probe))).await;
    let mut stream = server.stream("eventName=e").await;
    server.wait_for_streams(1).await;
    let publisher = sse_fanout::Hub::builder_arc(direct)
        .app_name("silent")
        .probe(None)
        .start()
        .await
        .unwrap();
    let publish = |n: u32| publisher.publish(SendSseEvent::new("e", json!(n)));
    publish(0).await.unwrap();
    assert_eq!(stream.next().await.data, "0");
    assert_eq!(server.health().await.0, 200);

    proxy.freeze();
    publish(1).await.unwrap();
    let wait_for = |status: u16| {
        let server = &server;
        async move {
            let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
            loop {
                let (code, body) = server.health().await;
                if code == status {
                    return body;
                }
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "health stayed {code}: {body}"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    let down = wait_for(503).await;
    if let Some(reason) = down_reason {
        assert!(down.to_string().contains(reason), "{down}");
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while server.hub.stats().probe_failures == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the probe never failed"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    proxy.thaw();
    wait_for(200).await;
    assert_eq!(stream.next().await.data, "1", "published while silent");
    publish(2).await.unwrap();
    assert_eq!(stream.next().await.data, "2", "live again");
    let extra = stream.next_within(Duration::from_millis(500)).await;
    assert!(extra.is_none(), "delivered twice: {extra:?}");
}
