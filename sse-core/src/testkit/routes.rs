//! Conformance checks of [routed delivery](crate::route) ([`SessionRoutes`]). A backend without
//! routes passes them by refusing a hub that asks for session routing.

use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use serde_json::json;

use super::{Factory, WAIT, envelope, expect_next, wait_received};
use crate::backend::{BackendStream, FanoutBackend};
use crate::envelope::Envelope;
use crate::event::SendSseEvent;
use crate::hub::Hub;
use crate::replay::RESET_EVENT;
use crate::repository::{EventFilter, Subscription};
use crate::route::{Routing, SessionRoutes};

/// Runs every routed-delivery check.
pub async fn run_all(factory: &dyn Factory) {
    let backend = factory.instance().await;
    if backend.routes().is_none() {
        a_hub_refuses_session_routing_without_routes(factory).await;
        return;
    }
    routed_events_reach_the_subscribed_instances(factory).await;
    an_unsubscribed_route_stops(factory).await;
    hostile_session_ids_stay_in_their_route(factory).await;
    routed_events_are_kept_in_the_history(factory).await;
    hubs_route_targeted_events_to_their_sessions(factory).await;
    a_resume_where_the_route_lapsed_misses_nothing(factory).await;
}

fn routes(backend: &dyn FanoutBackend) -> &dyn SessionRoutes {
    backend
        .routes()
        .unwrap_or_else(|| panic!("{} offers no routes", backend.name()))
}

fn session() -> String {
    format!("conf-{}", uuid::Uuid::new_v4().simple())
}

/// Publishes a broadcast marker and reads `stream` up to it: what came before it.
async fn until_marker(
    publisher: &dyn FanoutBackend,
    stream: &mut BackendStream,
    what: &str,
) -> Vec<Envelope> {
    let marker = uuid::Uuid::new_v4().simple().to_string();
    publisher
        .publish(envelope("marker", json!(marker)))
        .await
        .unwrap();
    let expected = json!(marker).to_string();
    let mut before = Vec::new();
    loop {
        let got = expect_next(stream, what).await;
        if got.event_name == "marker" {
            if got.payload.get() == expected {
                return before;
            }
            continue; // an earlier check's marker
        }
        before.push(got);
    }
}

fn routed(event: &str, session: &str) -> Bytes {
    Envelope::from_event(
        &SendSseEvent::new(event, json!(session)).to_session(session),
        "testkit",
        "testkit",
    )
    .and_then(|e| e.encode())
    .unwrap()
}

/// A hub asked for [`Routing::Session`] on a backend without routes does not start.
pub async fn a_hub_refuses_session_routing_without_routes(factory: &dyn Factory) {
    let started = Hub::builder_arc(factory.instance().await)
        .routing(Routing::session())
        .start()
        .await;
    assert!(
        matches!(started, Err(crate::BackendError::Config { .. })),
        "session routing on a backend without routes: {started:?}"
    );
}

/// An event published to a session's route reaches the instances subscribed to it, the moment
/// `subscribe` returned, and (on a backend with exact routes) no other instance.
pub async fn routed_events_reach_the_subscribed_instances(factory: &dyn Factory) {
    let (a, b, c) = (
        factory.instance().await,
        factory.instance().await,
        factory.instance().await,
    );
    let (mut sa, mut sb, mut sc) = (
        a.subscribe().await.unwrap(),
        b.subscribe().await.unwrap(),
        c.subscribe().await.unwrap(),
    );
    let s = session();
    routes(&*a).subscribe(&[&s]).await.unwrap();
    routes(&*b).subscribe(&[&s]).await.unwrap();
    assert!(routes(&*a).subscribed() >= 1, "a route counted");
    routes(&*c)
        .publish_to(&s, routed("to-s", &s))
        .await
        .unwrap();
    for (name, stream) in [("a", &mut sa), ("b", &mut sb)] {
        let got = expect_next(stream, &format!("instance {name}, routed event")).await;
        assert_eq!(got.event_name, "to-s");
        assert_eq!(got.session_id.as_deref(), Some(s.as_str()));
    }
    let at_c = until_marker(&*a, &mut sc, "instance c, the marker").await;
    if routes(&*c).exact() {
        assert!(
            at_c.is_empty(),
            "an instance without the route received {} routed event(s)",
            at_c.len()
        );
    }
    for (name, stream) in [("a", &mut sa), ("b", &mut sb)] {
        let extra = until_marker(&*a, stream, name).await;
        assert!(
            extra.is_empty(),
            "instance {name} received a routed event twice"
        );
    }
    for backend in [&a, &b] {
        routes(&**backend).unsubscribe(&[&s]).await.unwrap();
        assert_eq!(
            routes(&**backend).subscribed(),
            0,
            "routes after unsubscribing"
        );
    }
}

/// After `unsubscribe`, a route's events no longer arrive (on a backend with exact routes);
/// subscribing again brings them back.
pub async fn an_unsubscribed_route_stops(factory: &dyn Factory) {
    let (a, publisher) = (factory.instance().await, factory.instance().await);
    let mut stream = a.subscribe().await.unwrap();
    let s = session();
    routes(&*a).subscribe(&[&s]).await.unwrap();
    routes(&*a).unsubscribe(&[&s]).await.unwrap();
    routes(&*publisher)
        .publish_to(&s, routed("gone", &s))
        .await
        .unwrap();
    let got = until_marker(&*publisher, &mut stream, "after unsubscribing").await;
    // A backend without exact routes may receive any session's envelopes (the hub keeps its own).
    if routes(&*a).exact() {
        assert!(got.is_empty(), "received after unsubscribing: {got:?}");
    }
    routes(&*a).subscribe(&[&s]).await.unwrap();
    routes(&*publisher)
        .publish_to(&s, routed("back", &s))
        .await
        .unwrap();
    assert_eq!(
        expect_next(&mut stream, "subscribed again")
            .await
            .event_name,
        "back"
    );
    routes(&*a).unsubscribe(&[&s]).await.unwrap();
}

/// Session ids with separators, wildcards and great length reach their own route and no other:
/// a route subscribed for `a.*` does not receive `a.b`'s events, and a 10 000-byte id works.
pub async fn hostile_session_ids_stay_in_their_route(factory: &dyn Factory) {
    let (a, publisher) = (factory.instance().await, factory.instance().await);
    let mut stream = a.subscribe().await.unwrap();
    let tag = uuid::Uuid::new_v4().simple().to_string();
    let wild = [
        format!("{tag}.*"),
        format!("{tag}.>"),
        format!("{tag} #"),
        format!("{tag}*"),
    ];
    let long = format!("{tag}{}", "x".repeat(10_000));
    let mut subscribed: Vec<&str> = wild.iter().map(String::as_str).collect();
    subscribed.push(&long);
    routes(&*a).subscribe(&subscribed).await.unwrap();
    let others = [
        format!("{tag}.b"),
        format!("{tag}.b.c"),
        format!("{tag} x"),
        format!("{tag}x"),
    ];
    if routes(&*a).exact() {
        for other in &others {
            routes(&*publisher)
                .publish_to(other, routed("other", other))
                .await
                .unwrap();
        }
        let got = until_marker(&*publisher, &mut stream, "ids under a wildcard").await;
        assert!(
            got.is_empty(),
            "a wildcard-looking session id received other sessions' events: {:?}",
            got.iter().map(|e| &e.session_id).collect::<Vec<_>>()
        );
    }
    for s in &subscribed {
        routes(&*publisher)
            .publish_to(s, routed("own", s))
            .await
            .unwrap();
        let got = expect_next(&mut stream, "a hostile id's own event").await;
        assert_eq!(got.session_id.as_deref(), Some(*s));
    }
    routes(&*a).unsubscribe(&subscribed).await.unwrap();
    assert_eq!(routes(&*a).subscribed(), 0);
}

/// On a backend with history, an event published to a route is in the history like a broadcast.
pub async fn routed_events_are_kept_in_the_history(factory: &dyn Factory) {
    let backend = factory.instance().await;
    let Some(history) = backend.history() else {
        return;
    };
    let s = session();
    let bytes = routed("kept", &s);
    let since = std::time::SystemTime::now() - Duration::from_secs(2);
    routes(&*backend)
        .publish_to(&s, bytes.clone())
        .await
        .unwrap();
    let mut read = history.read_since(since).await.unwrap();
    let mut found = false;
    while let Some(item) = read.next().await {
        found |= item.unwrap() == bytes;
    }
    assert!(found, "a routed event is missing from the history");
}

/// Three hubs in session routing: a targeted event published the moment a stream opened reaches
/// it, on the one hub holding the session (the others receive nothing on exact routes); a
/// broadcast reaches all three; the route goes once the stream has left and the linger passed.
pub async fn hubs_route_targeted_events_to_their_sessions(factory: &dyn Factory) {
    let linger = Duration::from_millis(300);
    let hubs = session_hubs(factory, linger).await;
    let exact = factory
        .instance()
        .await
        .routes()
        .is_some_and(SessionRoutes::exact);
    let s = session();
    let mut stream = hubs[0]
        .open_stream(Some(s.as_str().into()), EventFilter::Any)
        .await
        .unwrap();
    stream.next().await; // the opening comment
    hubs[2]
        .publish(SendSseEvent::new("routed", json!(1)).to_session(&s))
        .await
        .unwrap();
    let frame = tokio::time::timeout(WAIT, stream.next())
        .await
        .expect("the targeted event did not arrive")
        .unwrap();
    assert!(frame.ends_with(b"event: routed\ndata: 1\n\n"), "{frame:?}");
    hubs[1]
        .publish(SendSseEvent::new("all", json!(2)))
        .await
        .unwrap();
    let frame = tokio::time::timeout(WAIT, stream.next())
        .await
        .expect("the broadcast did not arrive")
        .unwrap();
    assert!(frame.ends_with(b"data: 2\n\n"), "{frame:?}");
    for (i, hub) in hubs.iter().enumerate() {
        wait_received(hub, if i == 0 { 2 } else { 1 }).await;
    }
    assert_eq!(hubs[0].stats().received, 2, "the holding hub's envelopes");
    if exact {
        for (i, hub) in hubs.iter().enumerate().skip(1) {
            assert_eq!(hub.stats().received, 1, "hub {i} got the targeted event");
        }
    }
    assert_eq!(hubs[0].routed_sessions(), 1);
    drop(stream);
    assert_eq!(hubs[0].routed_sessions(), 1, "the route lingers");
    tokio::time::sleep(linger).await;
    let deadline = tokio::time::Instant::now() + WAIT;
    while hubs[0].routed_sessions() != 0 || hubs[0].backend_routes() != Some(0) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the route was not released: {} session(s), backend {:?}",
            hubs[0].routed_sessions(),
            hubs[0].backend_routes()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Nothing reaches this hub for the session now: the probe after it comes alone.
    let before = hubs[0].stats().received;
    hubs[1]
        .publish(SendSseEvent::new("routed", json!(3)).to_session(&s))
        .await
        .unwrap();
    hubs[1]
        .publish(SendSseEvent::new("probe", json!(4)))
        .await
        .unwrap();
    wait_received(&hubs[0], before + 1).await;
    if exact {
        assert_eq!(
            hubs[0].stats().received,
            before + 1,
            "received after the route went"
        );
    }
    for hub in hubs {
        hub.shutdown().await.ok();
    }
}

/// A client resumes (`Last-Event-ID`) on a hub that did not receive everything its session got
/// since: one whose route lapsed between (it received the last event, not those after it) and
/// one that never held the session. With the backend's history both replay what followed, in
/// order; without it both send the reset event, never a replay with a hole.
pub async fn a_resume_where_the_route_lapsed_misses_nothing(factory: &dyn Factory) {
    let linger = Duration::from_millis(100);
    let hubs = session_hubs(factory, linger).await;
    let history = factory.instance().await.history().is_some();
    let s = session();
    let session_id: std::sync::Arc<str> = s.as_str().into();
    let mut first = hubs[1]
        .open_stream(Some(session_id.clone()), EventFilter::Any)
        .await
        .unwrap();
    first.next().await; // the opening comment
    let last = hubs[0]
        .publish(SendSseEvent::new("lapse", json!(1)).to_session(&s))
        .await
        .unwrap();
    let frame = tokio::time::timeout(WAIT, first.next())
        .await
        .expect("the first event did not arrive")
        .unwrap();
    assert!(frame.ends_with(b"data: 1\n\n"), "{frame:?}");
    drop(first);
    let deadline = tokio::time::Instant::now() + WAIT;
    while hubs[1].routed_sessions() != 0 {
        assert!(tokio::time::Instant::now() < deadline, "the route stayed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for n in 2..=4 {
        hubs[0]
            .publish(SendSseEvent::new("lapse", json!(n)).to_session(&s))
            .await
            .unwrap();
    }
    for (i, hub) in [(1, &hubs[1]), (2, &hubs[2])] {
        let subscription = Subscription::new(Some(session_id.clone()), EventFilter::Any, 64);
        let mut stream = hub
            .open_after(subscription, Some(last.as_str()))
            .await
            .unwrap();
        stream.next().await; // the opening comment
        let mut data = Vec::new();
        let mut reset = false;
        while data.len() < 3 && !reset {
            let frame = tokio::time::timeout(WAIT, stream.next())
                .await
                .unwrap_or_else(|_| panic!("hub {i}: only {data:?} replayed"))
                .unwrap();
            let text = String::from_utf8_lossy(&frame).into_owned();
            reset |= text.contains(&format!("event: {RESET_EVENT}\n"));
            if let Some(d) = text.lines().find_map(|l| l.strip_prefix("data: "))
                && !reset
            {
                data.push(d.to_owned());
            }
        }
        if history {
            assert!(!reset, "hub {i}: a reset although the broker keeps history");
            assert_eq!(
                data,
                ["2", "3", "4"],
                "hub {i}: what followed the last event"
            );
        } else {
            assert!(
                reset,
                "hub {i}: replayed {data:?} with a hole instead of a reset"
            );
        }
    }
    for hub in hubs {
        hub.shutdown().await.ok();
    }
}

/// Three hubs of app `testkit` in session routing with `linger`.
async fn session_hubs(factory: &dyn Factory, linger: Duration) -> Vec<Hub> {
    let mut hubs = Vec::new();
    for _ in 0..3 {
        let hub = Hub::builder_arc(factory.instance().await)
            .app_name("testkit")
            .routing(Routing::Session { linger })
            .start()
            .await
            .unwrap();
        hubs.push(hub);
    }
    hubs
}
