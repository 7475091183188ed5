//! Routed delivery (`--routing session`) with real hub processes on real brokers: three hubs,
//! clients on some of them, events published over HTTP. Each instance's `/metrics` tells what it
//! received, so the tests see that a targeted event reaches only the instances holding its
//! session, and that churn leaves no route behind. Redis, NATS and RabbitMQ route; Kafka refuses.
#![cfg(any(
    feature = "redis",
    feature = "nats",
    feature = "kafka",
    feature = "rabbit"
))]
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use common::SseClient;
use common::brokers;
use common::cluster::{Balancer, HubProcess, Reconnecting, free_port};
use serde_json::json;
use sse_fanout::RESET_EVENT;

const APP: &str = "routing";
const LINGER: &str = "300ms";
const WITHIN: Duration = Duration::from_secs(20);

/// Waits until `series` on `hub` reaches `value` (counters only grow), then returns it.
async fn reaches(hub: &HubProcess, series: &str, value: f64) -> f64 {
    let deadline = tokio::time::Instant::now() + WITHIN;
    loop {
        let now = hub.metric(series).await;
        if now >= value {
            return now;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{series} on hub {}: {now}, not {value}",
            hub.port
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Three hubs; `alpha` has a stream on hub 0, `beta` one on hub 1 and one on hub 2. Targeted
/// events reach each session's streams, in order; broadcasts reach all; and each hub's
/// `received` counter grows by exactly the events of its own sessions plus the broadcasts.
async fn targeted_events_reach_only_their_holders(hubs: &[HubProcess], exact: bool) {
    let (alpha, beta) = ("alpha", "beta");
    let stream = |hub: &HubProcess, s: &str| {
        let url = hub.url(&format!("/sse/event-stream?eventName=e&sessionId={s}"));
        async move { SseClient::connect(&url, &[]).await }
    };
    let mut clients = [
        stream(&hubs[0], alpha).await,
        stream(&hubs[1], beta).await,
        stream(&hubs[2], beta).await,
    ];
    let mut before = Vec::new();
    for hub in hubs {
        before.push(hub.metric("sse_events_received_total").await);
    }
    let (targeted, broadcasts) = (10, 3);
    for i in 0..targeted {
        hubs[2]
            .publish("e", Some(alpha), json!(format!("a{i}")))
            .await;
        hubs[2]
            .publish("e", Some(beta), json!(format!("b{i}")))
            .await;
        if i % 4 == 0 {
            hubs[0].publish("e", None, json!(format!("all{i}"))).await;
        }
    }
    let want = |s: char| -> Vec<String> {
        let mut want = Vec::new();
        for i in 0..targeted {
            want.push(format!("{s}{i}"));
            if i % 4 == 0 {
                want.push(format!("all{i}"));
            }
        }
        want
    };
    // A broadcast and a targeted event travel on different routes; each keeps its own order.
    // (A string payload is written as its text.)
    let split = |data: &[String]| -> (Vec<String>, Vec<String>) {
        data.iter().cloned().partition(|d| d.starts_with("all"))
    };
    for (n, (client, s)) in clients.iter_mut().zip(['a', 'b', 'b']).enumerate() {
        let mut data = Vec::new();
        for _ in 0..want(s).len() {
            data.push(client.next().await.data);
        }
        assert_eq!(split(&data), split(&want(s)), "client {n}");
        let extra = client.next_within(Duration::from_millis(200)).await;
        assert!(extra.is_none(), "client {n} got more: {extra:?}");
    }
    let each = f64::from(targeted + broadcasts);
    for (hub, before) in hubs.iter().zip(&before) {
        reaches(hub, "sse_events_received_total", before + each).await;
    }
    // Anything routed where it should not be would have arrived by now.
    tokio::time::sleep(Duration::from_millis(300)).await;
    for (i, (hub, before)) in hubs.iter().zip(&before).enumerate() {
        let received = hub.metric("sse_events_received_total").await - before;
        let unmatched = hub.metric("sse_events_received_unmatched_total").await;
        if exact {
            assert_eq!(received, each, "hub {i} received other sessions' events");
            assert_eq!(unmatched, 0.0, "hub {i}");
        } else {
            // Partitions: another session sharing one is received and dropped, and counted.
            assert_eq!(received - unmatched, each, "hub {i}");
        }
        assert_eq!(hub.metric("sse_routes_sessions").await, 1.0, "hub {i}");
    }
}

/// A fresh session's first stream, and at once (no pause after the `200`) a targeted event
/// published through another hub: it arrives, twenty times over.
async fn an_event_right_after_the_200_arrives(hubs: &[HubProcess]) {
    for i in 0..20 {
        let session = format!("fresh-{i}-{}", common::unique("s"));
        let holder = &hubs[i % hubs.len()];
        let publisher = &hubs[(i + 1) % hubs.len()];
        let mut client = SseClient::connect(
            &holder.url(&format!(
                "/sse/event-stream?eventName=e&sessionId={session}"
            )),
            &[],
        )
        .await;
        assert_eq!(client.status, 200);
        publisher.publish("e", Some(&session), json!(i)).await;
        let event = client.next().await;
        assert_eq!(event.data, i.to_string(), "round {i}");
    }
}

/// One session's client reconnects through a balancer every second (the emitter timeout) while
/// other streams of the same session open and close on every hub and events keep coming: the
/// client gets every event exactly once, in order, with no reset; afterwards every hub's routes
/// go back to zero.
async fn churn_without_loss_or_leak(hubs: &[HubProcess]) {
    let session = common::unique("churn");
    let balancer = Balancer::start(hubs.iter().map(HubProcess::addr).collect()).await;
    let path = format!("/sse/event-stream?eventName=e&sessionId={session}");
    let client = Reconnecting::spawn(balancer.url(&path), Duration::from_millis(50));
    let deadline = tokio::time::Instant::now() + WITHIN;
    while client.connects() == 0 {
        assert!(tokio::time::Instant::now() < deadline, "never connected");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let churning = Arc::new(AtomicBool::new(true));
    let mut churners = Vec::new();
    for c in 0..6 {
        let urls: Vec<String> = hubs.iter().map(|h| h.url(&path)).collect();
        let churning = churning.clone();
        churners.push(tokio::spawn(async move {
            let mut n = c;
            let mut opened = 0;
            while churning.load(Ordering::Relaxed) {
                let response = common::client()
                    .get(&urls[n % urls.len()])
                    .header("accept", "text/event-stream")
                    .send()
                    .await
                    .unwrap();
                assert_eq!(response.status(), 200);
                opened += 1;
                tokio::time::sleep(Duration::from_millis(7 * (n as u64 % 9))).await;
                drop(response);
                n += 1;
            }
            opened
        }));
    }
    let events = 150;
    for i in 0..events {
        hubs[i % hubs.len()]
            .publish("e", Some(&session), json!(i))
            .await;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    churning.store(false, Ordering::Relaxed);
    let mut opened = 0;
    for churner in churners {
        opened += churner.await.unwrap();
    }
    client
        .wait_until(WITHIN, "every event", |seen| seen.len() >= events)
        .await;
    let seen = client.seen();
    assert!(
        seen.iter().all(|s| s.event != RESET_EVENT),
        "a reset: {:?}",
        seen.iter().map(|s| &s.event).collect::<Vec<_>>()
    );
    let data: Vec<String> = seen.iter().map(|s| s.data.clone()).collect();
    let want: Vec<String> = (0..events).map(|i| i.to_string()).collect();
    assert_eq!(data, want, "every event once, in order");
    let connects = client.connects();
    assert!(connects >= 3, "the client moved {connects} times");
    drop(client);
    eprintln!("churn: {opened} short streams, the client connected {connects} times");
    // Streams gone, the linger passed: no route is left on any hub, in the hub or the broker.
    for (i, hub) in hubs.iter().enumerate() {
        let deadline = tokio::time::Instant::now() + WITHIN;
        loop {
            let sessions = hub.metric("sse_routes_sessions").await;
            let subscribed = hub.metric("sse_routes_subscribed").await;
            let streams = hub.metric("sse_open_streams").await;
            if sessions == 0.0 && subscribed == 0.0 && streams == 0.0 {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "hub {i} keeps {sessions} session route(s), {subscribed} broker route(s), \
                 {streams} stream(s)"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(hub.metric("sse_route_changes_total").await > 0.0);
        assert_eq!(hub.metric("sse_route_failures_total").await, 0.0);
    }
}

/// Three hubs in session routing on `args`.
async fn three_hubs(args: &[String]) -> Vec<HubProcess> {
    let mut hubs = Vec::new();
    for _ in 0..3 {
        hubs.push(HubProcess::ready(free_port(), args).await);
    }
    hubs
}

macro_rules! routing_scenarios {
    ($module:ident, $feature:literal, $broker:expr, $exact:expr $(, $flag:literal)*) => {
        #[cfg(feature = $feature)]
        mod $module {
            use super::*;

            use common::backends::$module as backend;

            /// The hub's arguments on a channel of the test's own, forgotten when it ends.
            async fn args(extra: &[&str]) -> Option<(Vec<String>, common::backends::Forget)> {
                let url = brokers::url($broker).await?;
                let channel = common::unique("routing");
                let mut all = vec![
                    "--app-name",
                    APP,
                    "--routing",
                    "session",
                    "--route-linger",
                    LINGER,
                    $($flag,)*
                ];
                all.extend_from_slice(extra);
                let args = common::backends::hub_args($feature, &url, &channel, &all);
                let forget = common::backends::Forget::new(&url, &channel, backend::forget);
                Some((args, forget))
            }

            #[tokio::test]
            async fn targeted_events_reach_only_the_instances_holding_the_session() {
                let Some((args, _forget)) = args(&[]).await else {
                    return;
                };
                targeted_events_reach_only_their_holders(&three_hubs(&args).await, $exact).await;
            }

            #[tokio::test]
            async fn an_event_published_right_after_the_200_arrives() {
                let Some((args, _forget)) = args(&[]).await else {
                    return;
                };
                an_event_right_after_the_200_arrives(&three_hubs(&args).await).await;
            }

            #[tokio::test]
            async fn churn_loses_nothing_and_leaks_no_route() {
                let Some((args, _forget)) = args(&["--emitter-timeout", "1"]).await else {
                    return;
                };
                churn_without_loss_or_leak(&three_hubs(&args).await).await;
            }
        }
    };
}

routing_scenarios!(redis, "redis", brokers::Broker::Redis, true);
routing_scenarios!(nats, "nats", brokers::Broker::Nats, true);
// RabbitMQ delivers from the history stream by default, where every instance reads every
// event: routed delivery is its queue mode.
routing_scenarios!(
    rabbit,
    "rabbit",
    brokers::Broker::Rabbit,
    false,
    "--rabbit-delivery",
    "queue"
);

/// `--routing session` on Kafka stops the hub at once with an error that says why.
#[cfg(feature = "kafka")]
#[test]
fn kafka_refuses_session_routing() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_sse-fanout"))
        .args(["--backend", "kafka", "--backend-url", "127.0.0.1:1"])
        .args(["--routing", "session", "--listen", "127.0.0.1:0"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("session routing does not work with Kafka"),
        "{stderr}"
    );
}
