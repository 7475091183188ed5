//! Checks of several hubs on one backend, through the hub's API: what an application and its
//! clients see across instances (targeting, apps, replay after a move, a drain). The project's
//! own broker backends run them from their crates' tests, so a custom backend's author runs the
//! same checks by calling [`run_all`](super::run_all).
//!
//! Each check starts its own hubs, of an app name of its own, and shuts them down at the end.
//! Those that depend on routing run in broadcast routing and, when the backend offers
//! [routes](crate::route::SessionRoutes), in session routing too.

use std::time::Duration;

use serde_json::json;

use super::Client;
use super::{Factory, wait_received};
use crate::event::SendSseEvent;
use crate::hub::Hub;
use crate::probe::ProbeConfig;
use crate::replay::RESET_EVENT;
use crate::route::{Routing, SessionRoutes};

/// Runs every hub-level check, in each routing the backend supports.
pub async fn run_all(factory: &dyn Factory) {
    apps_see_only_their_own_events(factory).await;
    an_idle_hub_hears_its_probes(factory).await;
    for routing in routings(factory).await {
        targeting_and_broadcast_across_instances(factory, routing).await;
        replay_across_instances(factory, routing).await;
        drain_then_resume_elsewhere_loses_nothing(factory, routing).await;
    }
}

/// Broadcast routing, and session routing when the backend offers routes.
pub async fn routings(factory: &dyn Factory) -> Vec<Routing> {
    let backend = factory.instance().await;
    let mut routings = vec![Routing::Broadcast];
    if backend.routes().is_some() {
        routings.push(Routing::session());
    }
    backend.close().await.ok();
    routings
}

/// `n` hubs of one new app name in `routing`, each on an instance of its own.
pub async fn start_hubs(factory: &dyn Factory, routing: Routing, n: usize) -> Vec<Hub> {
    let app = unique("app");
    let mut hubs = Vec::with_capacity(n);
    for _ in 0..n {
        let hub = Hub::builder_arc(factory.instance().await)
            .app_name(app.clone())
            .routing(routing)
            .start()
            .await
            .unwrap_or_else(|e| panic!("a hub in {routing:?} did not start: {e}"));
        hubs.push(hub);
    }
    hubs
}

async fn shut_down(hubs: Vec<Hub>) {
    for hub in hubs {
        hub.shutdown().await.ok();
    }
}

fn unique(prefix: &str) -> String {
    format!("{prefix}-{}", uuid::Uuid::new_v4().simple())
}

/// An idle hub probes its subscription through the broker (see [`crate::probe`]) and hears the
/// probes back: none fails, health stays up, and none reaches a client or counts as malformed.
pub async fn an_idle_hub_hears_its_probes(factory: &dyn Factory) {
    let hub = Hub::builder_arc(factory.instance().await)
        .app_name(unique("probe"))
        .probe(Some(ProbeConfig::new(
            Duration::from_millis(200),
            Duration::from_secs(5),
        )))
        .start()
        .await
        .unwrap_or_else(|e| panic!("a hub with probes did not start: {e}"));
    let mut client = Client::open(&hub, None, None).await;
    // What the hub found malformed in the broker's history (the channel's earlier traffic).
    let malformed = hub.stats().malformed;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while hub.stats().probes < 3 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "an idle hub sent {} probes in 15 s",
            hub.stats().probes
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let stats = hub.stats();
    assert_eq!(stats.probe_failures, 0, "a probe did not come back");
    assert_eq!(
        stats.malformed, malformed,
        "a probe was taken for a malformed envelope"
    );
    assert!(hub.health().await.up, "{:?}", hub.health().await);
    assert!(
        client
            .next_within(Duration::from_millis(100))
            .await
            .is_none(),
        "a probe reached a client"
    );
    hub.shutdown().await.ok();
}

/// Three hubs: an event for session `s1` published on the hub that holds none of its streams
/// reaches its streams on the two others, and nobody else; a broadcast reaches every client of
/// every hub, anonymous ones included.
pub async fn targeting_and_broadcast_across_instances(factory: &dyn Factory, routing: Routing) {
    let hubs = start_hubs(factory, routing, 3).await;
    let (s1, s2) = (unique("s1"), unique("s2"));
    let mut s1_on_a = Client::open(&hubs[0], Some(&s1), None).await;
    let mut s1_on_c = Client::open(&hubs[2], Some(&s1), None).await;
    let mut s2_on_b = Client::open(&hubs[1], Some(&s2), None).await;
    let mut anonymous_on_b = Client::open(&hubs[1], None, None).await;

    let id = hubs[1]
        .publish(SendSseEvent::new("e", json!("to s1")).to_session(&s1))
        .await
        .unwrap();
    for (name, client) in [("s1 on A", &mut s1_on_a), ("s1 on C", &mut s1_on_c)] {
        let event = client.next(&format!("{routing:?}: {name}")).await;
        assert_eq!(event.data, "to s1", "{routing:?}: {name}");
        if routing == Routing::Broadcast {
            assert_eq!(event.last_event_id, id.as_str(), "{name}: the published id");
        }
    }
    hubs[2]
        .publish(SendSseEvent::new("e", json!("to all")))
        .await
        .unwrap();
    for (name, client) in [
        ("s1 on A", &mut s1_on_a),
        ("s1 on C", &mut s1_on_c),
        ("s2 on B", &mut s2_on_b),
        ("anonymous on B", &mut anonymous_on_b),
    ] {
        // s2 and the anonymous client see the broadcast first: never s1's event.
        let event = client
            .next(&format!("{routing:?}: the broadcast, {name}"))
            .await;
        assert_eq!(event.data, "to all", "{routing:?}: {name}");
    }
    let exact = facts(factory).await.exact_routes;
    for (i, hub) in hubs.iter().enumerate() {
        let expected = match (routing, i) {
            (Routing::Session { .. }, 1) if exact => 1,
            _ => 2,
        };
        wait_received(hub, expected).await;
        if routing == Routing::Broadcast || exact {
            assert_eq!(hub.stats().received, expected, "{routing:?}: hub {i}");
        }
    }
    shut_down(hubs).await;
}

/// Two apps on one channel each see only their own events, and count the others' as dropped;
/// a raw envelope another program wrote to the channel reaches the app it names, with its id,
/// event name and payload.
pub async fn apps_see_only_their_own_events(factory: &dyn Factory) {
    let orders = start_hubs(factory, Routing::Broadcast, 1).await;
    let billing = start_hubs(factory, Routing::Broadcast, 1).await;
    let (orders, billing) = (&orders[0], &billing[0]);
    let mut o = Client::open(orders, None, None).await;
    let mut b = Client::open(billing, None, None).await;
    // What the hubs dropped when they loaded the broker's history (the channel's earlier traffic).
    let loaded = [orders, billing].map(|hub| hub.stats().dropped_other_app);

    billing
        .publish(SendSseEvent::new("invoice", json!("billing only")))
        .await
        .unwrap();
    let other_program = factory.instance().await;
    let raw = |id: &str, app: &str, name: &str, payload: serde_json::Value| {
        let envelope = json!({"v": 1, "id": id, "app": app, "eventName": name, "payload": payload});
        bytes::Bytes::from(envelope.to_string())
    };
    let raw_id = unique("raw");
    other_program
        .publish(raw(&unique("raw"), "other", "x", json!("other app")))
        .await
        .unwrap();
    other_program
        .publish(raw(
            &raw_id,
            orders.config().app_name.as_str(),
            "order",
            json!({"from": "python"}),
        ))
        .await
        .unwrap();

    let first = o.next("orders: the raw envelope").await;
    assert_eq!(
        (
            first.last_event_id.as_str(),
            first.event_type.as_str(),
            first.data.as_str()
        ),
        (raw_id.as_str(), "order", r#"{"from":"python"}"#)
    );
    assert_eq!(b.next("billing: its event").await.data, "billing only");
    let quiet = Duration::from_millis(300);
    assert_eq!(
        b.next_within(quiet).await,
        None,
        "billing saw another app's"
    );
    assert_eq!(o.next_within(quiet).await, None, "orders saw another app's");
    for (hub, loaded) in [orders, billing].into_iter().zip(loaded) {
        let dropped = || hub.stats().dropped_other_app - loaded;
        let deadline = tokio::time::Instant::now() + super::WAIT;
        while dropped() < 2 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "{}: {} of 2 other apps' envelopes dropped",
                hub.config().app_name,
                dropped()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(
            dropped(),
            2,
            "{}: other apps' envelopes dropped",
            hub.config().app_name
        );
    }
    other_program.close().await.ok();
    orders.shutdown().await.ok();
    billing.shutdown().await.ok();
}

/// A client leaves hub A and comes back on hub B with `Last-Event-ID`: B replays what was
/// published meanwhile (on either hub), in order, then goes on live. In session routing, where B
/// received none of the session's events, B reads them from the broker's history; a backend
/// without history sends the reset event instead, never a replay with a hole.
pub async fn replay_across_instances(factory: &dyn Factory, routing: Routing) {
    let hubs = start_hubs(factory, routing, 2).await;
    let (a, b) = (&hubs[0], &hubs[1]);
    let s = unique("s");
    let to_s = |n: u32| SendSseEvent::new("e", json!(n)).to_session(&s);
    let mut on_a = Client::open(a, Some(&s), None).await;
    a.publish(to_s(1)).await.unwrap();
    let last = on_a.next("the first event, on A").await;
    drop(on_a);
    a.publish(to_s(2)).await.unwrap();
    b.publish(to_s(3)).await.unwrap();
    if routing == Routing::Broadcast {
        // B has received all three before the client comes back.
        wait_received(b, 3).await;
    }
    let mut on_b = Client::open(b, Some(&s), Some(&last.last_event_id)).await;
    let first = on_b.next(&format!("{routing:?}: the resume on B")).await;
    if routing != Routing::Broadcast && !facts(factory).await.history {
        assert_eq!(first.event_type, RESET_EVENT, "{routing:?}: {first:?}");
        shut_down(hubs).await;
        return;
    }
    let second = on_b.next(&format!("{routing:?}: the resume on B")).await;
    assert_eq!(
        [first.data, second.data],
        ["2", "3"],
        "{routing:?}: what was published since"
    );
    a.publish(to_s(4)).await.unwrap();
    assert_eq!(on_b.next("live on B").await.data, "4", "{routing:?}");
    shut_down(hubs).await;
}

/// Hub A drains (as on SIGTERM: its streams end after a short `retry:`) while events for the
/// session keep coming from hub B; the client comes back on B with `Last-Event-ID` and has every
/// event exactly once, in order. (Where B cannot know the session's past, in session routing
/// without history, it gets the reset event instead.)
pub async fn drain_then_resume_elsewhere_loses_nothing(factory: &dyn Factory, routing: Routing) {
    const EVENTS: u32 = 50;
    let history = facts(factory).await.history;
    let hubs = start_hubs(factory, routing, 2).await;
    let (a, b) = (&hubs[0], &hubs[1]);
    let s = unique("s");
    let mut client = Client::open(a, Some(&s), None).await;
    let publisher = b.clone();
    let session = s.clone();
    let publishing = tokio::spawn(async move {
        for n in 0..EVENTS {
            let event = SendSseEvent::new("e", json!(n)).to_session(&session);
            publisher.publish(event).await.unwrap();
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    });
    tokio::time::sleep(Duration::from_millis(150)).await;
    a.close_streams();
    let before: Vec<_> = client.until_end().await;
    assert_eq!(
        client.retry(),
        Some(a.config().shutdown_retry.as_millis() as u64),
        "the drained stream's last retry:"
    );
    let last = before
        .last()
        .expect("some events before the drain")
        .last_event_id
        .clone();
    let mut seen: Vec<String> = before.into_iter().map(|e| e.data).collect();
    let mut again = Client::open(b, Some(&s), Some(&last)).await;
    publishing.await.unwrap();
    while seen.len() < EVENTS as usize {
        let event = again.next(&format!("{routing:?}: after {seen:?}")).await;
        if event.event_type == RESET_EVENT && routing != Routing::Broadcast && !history {
            shut_down(hubs).await;
            return;
        }
        seen.push(event.data);
    }
    let expected: Vec<String> = (0..EVENTS).map(|n| n.to_string()).collect();
    assert_eq!(
        seen, expected,
        "{routing:?}: every event exactly once, in order"
    );
    assert_eq!(
        again.next_within(Duration::from_millis(300)).await,
        None,
        "{routing:?}: an event after the last"
    );
    shut_down(hubs).await;
}

/// What a check needs to know of the backend.
struct Facts {
    /// Routes deliver a session's events to the instances subscribed to it only.
    exact_routes: bool,
    history: bool,
}

async fn facts(factory: &dyn Factory) -> Facts {
    let backend = factory.instance().await;
    let facts = Facts {
        exact_routes: backend.routes().is_some_and(SessionRoutes::exact),
        history: backend.history().is_some(),
    };
    backend.close().await.ok();
    facts
}
