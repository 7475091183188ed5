//! Nothing lost when instances come and go: the history kept in the broker, tried with real hub
//! processes, a load balancer whose instances are replaced under the clients, and clients that
//! reconnect with `Last-Event-ID` as browsers do. Every backend with history runs every scenario:
//! a rolling deploy, a crash, a restart in place, scale to zero, and retention.
#![cfg(any(
    feature = "redis",
    feature = "nats",
    feature = "kafka",
    feature = "rabbit"
))]
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use common::brokers::{self, Broker};
use common::cluster::{Balancer, HubProcess, NodeEventSource, Reconnecting, Seen, free_port};
use common::fanout::{Connect, RawPublish};
use common::unique;
use serde_json::json;
use sse_fanout::{Hub, RESET_EVENT, SendSseEvent};

const APP: &str = "history";
/// How long a reconnecting client waits before it comes back (browsers wait what `retry:` says).
const RETRY: Duration = Duration::from_millis(200);
const WITHIN: Duration = Duration::from_secs(20);

/// One backend with history, as the scenarios need it.
struct Cluster {
    /// The hub binary's arguments for this backend and the test's channel.
    args: Vec<String>,
    /// A backend instance of the library on the same channel (the publishing service).
    connect: Connect,
    /// Writes an envelope with the broker's own client, as a service in another language would.
    raw: RawPublish,
}

impl Cluster {
    fn hub_args(&self, extra: &[&str]) -> Vec<String> {
        let mut args = self.args.clone();
        args.extend(extra.iter().map(|s| s.to_string()));
        args
    }

    async fn hub(&self) -> HubProcess {
        HubProcess::ready(free_port(), &self.hub_args(&[])).await
    }

    /// The publishing service: a hub of the library with no streams.
    async fn publisher(&self) -> Hub {
        Hub::builder_arc((self.connect)().await)
            .app_name(APP)
            .start()
            .await
            .unwrap()
    }
}

/// What each session should see: the events published to it and every broadcast, in order.
#[derive(Default)]
struct Expected {
    per_session: HashMap<String, Vec<String>>,
}

impl Expected {
    fn record(&mut self, sessions: &[String], target: Option<&str>, id: String) {
        for s in sessions {
            if target.is_none_or(|t| t == s) {
                self.per_session
                    .entry(s.clone())
                    .or_default()
                    .push(id.clone());
            }
        }
    }
}

fn ids(seen: &[Seen]) -> Vec<String> {
    seen.iter()
        .filter(|s| s.event != RESET_EVENT)
        .map(|s| s.id.clone())
        .collect()
}

fn resets(seen: &[Seen]) -> usize {
    seen.iter().filter(|s| s.event == RESET_EVENT).count()
}

#[derive(Clone, Copy, PartialEq)]
enum Stop {
    /// SIGTERM: the graceful drain of a rolling deploy.
    Term,
    /// SIGKILL: a crash.
    Kill,
}

/// Three hubs behind a balancer, 24 clients spread over them, a publisher sending targeted and
/// broadcast events; every instance is replaced one by one (a new one started, the old one
/// stopped with `stop`). Publishing pauses while an instance is replaced, so the clients that
/// move then (a third of them to the new instance, on average) come back with the id of an event
/// the new instance never saw live. Every client receives every event meant for it exactly once,
/// in order, and never the reset event.
async fn replace_every_instance(cluster: Cluster, stop: Stop) {
    let mut hubs = Vec::new();
    for _ in 0..3 {
        hubs.push(cluster.hub().await);
    }
    let balancer = Balancer::start(hubs.iter().map(HubProcess::addr).collect()).await;
    let sessions: Vec<String> = (0..24).map(|i| format!("s{i}")).collect();
    let clients: Vec<Reconnecting> = sessions
        .iter()
        .map(|s| {
            let url = balancer.url(&format!("/sse/event-stream?eventName=e&sessionId={s}"));
            Reconnecting::spawn(url, RETRY)
        })
        .collect();
    for (client, session) in clients.iter().zip(&sessions) {
        let deadline = tokio::time::Instant::now() + WITHIN;
        while client.connects() == 0 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "{session} never connected"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    // Connected means registered: the hub registers a stream before it answers 200.

    let publisher = cluster.publisher().await;
    let expected = Arc::new(std::sync::Mutex::new(Expected::default()));
    let publishing = Arc::new(AtomicBool::new(true));
    // Held while an instance is replaced: the clients that move then last saw an event published
    // before the new instance started, so the new one knows it only from the broker.
    let gate = Arc::new(tokio::sync::Mutex::new(()));
    let task = {
        let (expected, publishing, sessions, gate) = (
            expected.clone(),
            publishing.clone(),
            sessions.clone(),
            gate.clone(),
        );
        tokio::spawn(async move {
            let mut n = 0usize;
            while publishing.load(Ordering::Relaxed) {
                let _open = gate.lock().await;
                let target = (n % 3 != 2).then(|| sessions[n % sessions.len()].clone());
                let mut event = SendSseEvent::new("e", json!(n));
                if let Some(t) = &target {
                    event = event.to_session(t.clone());
                }
                let id = publisher.publish(event).await.unwrap();
                expected
                    .lock()
                    .unwrap()
                    .record(&sessions, target.as_deref(), id.to_string());
                n += 1;
                tokio::time::sleep(Duration::from_millis(15)).await;
            }
            n
        })
    };

    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(600)).await;
        let quiet = gate.lock().await;
        let fresh = cluster.hub().await;
        balancer.add(fresh.addr());
        let old = hubs.remove(0);
        balancer.remove(old.addr());
        match stop {
            Stop::Term => old.terminate(),
            Stop::Kill => old.kill(),
        }
        hubs.push(fresh);
        // The old instance's clients come back (to any instance) before publishing goes on.
        tokio::time::sleep(RETRY + Duration::from_millis(500)).await;
        drop(quiet);
    }
    tokio::time::sleep(Duration::from_millis(600)).await;
    publishing.store(false, Ordering::Relaxed);
    let published = task.await.unwrap();

    let expected = std::mem::take(&mut expected.lock().unwrap().per_session);
    for (client, session) in clients.iter().zip(&sessions) {
        let want = expected.get(session).cloned().unwrap_or_default();
        client
            .wait_until(WITHIN, &format!("{session}'s events"), |seen| {
                ids(seen).len() >= want.len()
            })
            .await;
        let seen = client.seen();
        assert_eq!(resets(&seen), 0, "{session} got a reset: {seen:?}");
        assert_eq!(
            ids(&seen),
            want,
            "{session}: every event meant for it exactly once, in order"
        );
        assert!(client.connects() >= 2, "{session} was never moved");
    }
    eprintln!(
        "{published} events published while 3 instances were replaced ({}); clients reconnected {:?} times",
        if stop == Stop::Term {
            "SIGTERM"
        } else {
            "SIGKILL"
        },
        clients
            .iter()
            .map(Reconnecting::connects)
            .collect::<Vec<_>>()
    );
}

/// One hub, no balancer: a Node `eventsource` client is on hub A; A stops and starts again on
/// the same port while three events are published through hub B; the client comes back to the
/// new A by itself, with `Last-Event-ID`, and gets the three.
async fn restart_in_place(cluster: Cluster) {
    let port = free_port();
    let a = HubProcess::ready(port, &cluster.hub_args(&[])).await;
    let b = cluster.hub().await;
    let Some(mut client) =
        NodeEventSource::open(&a.url("/sse/event-stream?eventName=e&sessionId=s1"), "e")
    else {
        return;
    };
    let publish = |n: u32| {
        let url = b.url("/sse/publish");
        async move {
            let r = common::client()
                .post(url)
                .json(&json!({"eventName": "e", "sessionId": "s1", "payload": n}))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 202);
        }
    };
    client.opened().await;
    a.wait_streams(1).await;
    publish(0).await;
    client.events(1).await;
    a.terminate();
    for n in 1..=3 {
        publish(n).await;
    }
    let _a = HubProcess::ready(port, &cluster.hub_args(&[])).await;
    let seen = client.events(4).await.to_vec();
    let data: Vec<&str> = seen.iter().map(|s| s.data.as_str()).collect();
    assert_eq!(data, ["0", "1", "2", "3"], "{seen:?}");
    assert_eq!(resets(&seen), 0);
}

/// Every hub stopped for 10 s while a service writes events to the broker with its own client;
/// a new hub starts; the client comes back with its last id and gets the events of the gap.
async fn scale_to_zero(cluster: Cluster) {
    let a = cluster.hub().await;
    let b = cluster.hub().await;
    let balancer = Balancer::start(vec![a.addr(), b.addr()]).await;
    let client = Reconnecting::spawn(
        balancer.url("/sse/event-stream?eventName=e&sessionId=s1"),
        RETRY,
    );
    let publisher = cluster.publisher().await;
    let deadline = tokio::time::Instant::now() + WITHIN;
    while client.connects() == 0 {
        assert!(tokio::time::Instant::now() < deadline, "never connected");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    publisher
        .publish(SendSseEvent::new("e", json!("before")).to_session("s1"))
        .await
        .unwrap();
    client
        .wait_until(WITHIN, "the first event", |s| s.len() == 1)
        .await;
    publisher.shutdown().await.unwrap();
    balancer.remove(a.addr());
    balancer.remove(b.addr());
    a.terminate();
    b.terminate();

    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis();
    for i in 0..3 {
        let envelope = json!({
            "v": 1, "id": unique("ext"), "app": APP, "eventName": "e",
            "sessionId": if i == 1 { None } else { Some("s1") }, "payload": format!("gap {i}"),
            "ts": now,
        });
        (cluster.raw)(envelope.to_string().into()).await;
    }
    tokio::time::sleep(Duration::from_secs(10)).await;

    let c = cluster.hub().await;
    balancer.add(c.addr());
    client.wait_until(WITHIN, "the gap", |s| s.len() >= 4).await;
    let seen = client.seen();
    let data: Vec<&str> = seen.iter().map(|s| s.data.as_str()).collect();
    assert_eq!(data, ["before", "gap 0", "gap 1", "gap 2"], "{seen:?}");
}

/// An id older than the history, or one that never existed, gets exactly one reset event, from
/// a hub that saw it and from one started after it was gone alike.
async fn retention(cluster: Cluster) {
    let short = ["--replay-age", "2"];
    let a = HubProcess::ready(free_port(), &cluster.hub_args(&short)).await;
    let mut first =
        common::SseClient::connect(&a.url("/sse/event-stream?eventName=e&sessionId=s1"), &[]).await;
    a.wait_streams(1).await;
    let publisher = cluster.publisher().await;
    let old = publisher
        .publish(SendSseEvent::new("e", json!("old")).to_session("s1"))
        .await
        .unwrap();
    assert_eq!(first.next().await.id, old.as_str());
    drop(first);
    tokio::time::sleep(Duration::from_secs(3)).await;
    publisher
        .publish(SendSseEvent::new("e", json!("new")).to_session("s1"))
        .await
        .unwrap();
    let fresh = HubProcess::ready(free_port(), &cluster.hub_args(&short)).await;
    for hub in [&a, &fresh] {
        for last in [old.as_str(), "never-published"] {
            let mut client = common::SseClient::connect(
                &hub.url("/sse/event-stream?eventName=e&sessionId=s1"),
                &[("last-event-id", last)],
            )
            .await;
            let reset = client.next().await;
            assert_eq!(reset.event, RESET_EVENT, "{last} on {}", hub.port);
            assert!(reset.data.contains(last));
            let after = client.next_within(Duration::from_millis(500)).await;
            assert!(after.is_none(), "only one reset for {last}: then {after:?}");
        }
    }
    // What the fresh instance says about it: one read of the broker, two resets.
    let metrics = common::get_text(&fresh.url("/metrics")).await;
    let value = |series: &str, label: &str| {
        metrics
            .lines()
            .find(|l| l.starts_with(series) && l.contains(label))
            .and_then(|l| l.rsplit(' ').next())
            .map(str::to_owned)
    };
    assert_eq!(
        value("sse_history_reads_total{", "").as_deref(),
        Some("1"),
        "{metrics}"
    );
    assert_eq!(
        value("sse_replays_total{", "source=\"reset\"").as_deref(),
        Some("2")
    );
    assert_eq!(
        value("sse_replays_total{", "source=\"broker\"").as_deref(),
        Some("0")
    );
}

macro_rules! history_scenarios {
    ($module:ident, $feature:literal, $broker:expr, $extra:expr) => {
        #[cfg(feature = $feature)]
        mod $module {
            use super::*;

            use common::backends::$module as backend;

            /// The backend on a channel of the test's own, forgotten when the test ends.
            async fn cluster() -> Option<(Cluster, common::backends::Forget)> {
                let url = brokers::url($broker).await?;
                let channel = unique("history");
                let mut extra = vec!["--app-name", APP];
                extra.extend_from_slice($extra);
                let cluster = Cluster {
                    args: common::backends::hub_args($feature, &url, &channel, &extra),
                    connect: backend::connect(&url, &channel),
                    raw: backend::raw(&url, &channel),
                };
                let forget = common::backends::Forget::new(&url, &channel, backend::forget);
                Some((cluster, forget))
            }

            #[tokio::test]
            async fn a_rolling_deploy_loses_nothing() {
                let Some((cluster, _forget)) = cluster().await else {
                    return;
                };
                replace_every_instance(cluster, Stop::Term).await;
            }

            #[tokio::test]
            async fn a_crash_loses_nothing() {
                let Some((cluster, _forget)) = cluster().await else {
                    return;
                };
                replace_every_instance(cluster, Stop::Kill).await;
            }

            #[tokio::test]
            async fn a_restart_in_place_loses_nothing() {
                let Some((cluster, _forget)) = cluster().await else {
                    return;
                };
                restart_in_place(cluster).await;
            }

            #[tokio::test]
            async fn scale_to_zero_loses_nothing() {
                let Some((cluster, _forget)) = cluster().await else {
                    return;
                };
                scale_to_zero(cluster).await;
            }

            #[tokio::test]
            async fn an_id_past_retention_gets_one_reset() {
                let Some((cluster, _forget)) = cluster().await else {
                    return;
                };
                retention(cluster).await;
            }
        }
    };
}

history_scenarios!(redis, "redis", Broker::Redis, &[]);
history_scenarios!(nats, "nats", Broker::Nats, &[]);
history_scenarios!(kafka, "kafka", Broker::Kafka, &["--create-topic"]);
history_scenarios!(rabbit, "rabbit", Broker::Rabbit, &[]);
