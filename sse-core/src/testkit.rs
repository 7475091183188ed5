//! The conformance suite every [`FanoutBackend`] runs, and a spec-following SSE parser to read
//! what a hub writes ([`EventStreamParser`], [`parse_event_stream`]); feature `testkit`.
//!
//! Each check is a plain `async fn` that panics with a message saying what broke. Give it a
//! [`Factory`]: something that connects a new instance of your backend to one shared channel
//! (a closure returning a future works). Every check makes the instances it needs.
//!
//! ```no_run
//! # async fn doc() {
//! use std::sync::Arc;
//! use sse_core::{FanoutBackend, LocalBackend, testkit};
//!
//! let shared = LocalBackend::new();
//! testkit::run_all(&move || {
//!     let b = shared.clone();
//!     async move { Arc::new(b) as Arc<dyn FanoutBackend> }
//! })
//! .await;
//! # }
//! ```
#![allow(clippy::unwrap_used, clippy::panic)]

pub mod broker;
mod client;
pub mod history;
pub mod hubs;
mod parse;
pub mod routes;

pub use client::Client;
pub use parse::{Dispatched, EventStreamParser, ParsedEvent, ParsedStream, parse_event_stream};

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_core::future::BoxFuture;
use futures_util::{FutureExt, StreamExt};
use serde_json::json;

use crate::backend::{BackendStream, FanoutBackend, Received};
use crate::envelope::Envelope;
use crate::event::SendSseEvent;
use crate::hub::Hub;
use crate::repository::EventFilter;

/// How long a check waits for something that should happen promptly.
pub const WAIT: Duration = Duration::from_secs(10);

/// Connects a new instance of a backend to the channel under test.
pub trait Factory: Send + Sync {
    /// A new instance: its own connection, the shared channel.
    fn instance(&self) -> BoxFuture<'static, Arc<dyn FanoutBackend>>;
}

impl<F, Fut> Factory for F
where
    F: Fn() -> Fut + Send + Sync,
    Fut: Future<Output = Arc<dyn FanoutBackend>> + Send + 'static,
{
    fn instance(&self) -> BoxFuture<'static, Arc<dyn FanoutBackend>> {
        self().boxed()
    }
}

/// Runs every check that needs no broker outage, the [`history`] checks included (they pass at
/// once for a backend without history).
pub async fn run_all(factory: &dyn Factory) {
    health_is_up(factory).await;
    every_instance_receives_every_event(factory).await;
    an_event_published_as_subscribe_returns_is_received(factory).await;
    no_duplicates_and_per_publisher_order(factory).await;
    every_instance_receives_one_order(factory).await;
    large_payloads_arrive_intact(factory).await;
    a_malformed_message_is_skipped_and_counted(factory).await;
    history::run_all(factory).await;
    routes::run_all(factory).await;
    hubs::run_all(factory).await;
}

/// Waits until `hub` has received at least `n` envelopes.
pub async fn wait_received(hub: &Hub, n: u64) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while hub.stats().received < n {
        assert!(
            tokio::time::Instant::now() < deadline,
            "a hub received {} envelope(s), not {n}, within {WAIT:?}",
            hub.stats().received
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// An envelope carrying `payload`, as the hub would publish it.
pub fn envelope(event_name: &str, payload: serde_json::Value) -> Bytes {
    Envelope::from_event(
        &SendSseEvent::new(event_name, payload),
        "testkit",
        "testkit",
    )
    .and_then(|e| e.encode())
    .unwrap()
}

/// The next item of `stream` (an envelope or a gap), if one arrives within `within`.
pub async fn next_item_within(stream: &mut BackendStream, within: Duration) -> Option<Received> {
    tokio::time::timeout(within, stream.next())
        .await
        .ok()
        .flatten()
}

/// The next envelope of `stream`, if one arrives within `within`. A [`Received::Gap`] fails the
/// test: a subscription in calm weather has not missed anything.
pub async fn next_within(stream: &mut BackendStream, within: Duration) -> Option<Bytes> {
    match next_item_within(stream, within).await? {
        gap @ Received::Gap { .. } => {
            panic!("the subscription reported {gap:?} without an outage")
        }
        envelope => envelope.into_envelope(),
    }
}

async fn expect_next(stream: &mut BackendStream, what: &str) -> Envelope {
    match tokio::time::timeout(WAIT, stream.next()).await {
        Err(_) => panic!("{what}: nothing received within {WAIT:?}"),
        Ok(None) => panic!("{what}: the subscription ended"),
        Ok(Some(gap @ Received::Gap { .. })) => {
            panic!("{what}: the subscription reported {gap:?} without an outage")
        }
        Ok(Some(item)) => Envelope::decode(&item.into_envelope().unwrap_or_default())
            .unwrap_or_else(|e| panic!("{what}: received bytes that are not our envelope: {e}")),
    }
}

/// `health` reports up on a freshly connected instance.
pub async fn health_is_up(factory: &dyn Factory) {
    let backend = factory.instance().await;
    let health = backend.health().await;
    assert!(
        health.up,
        "health of a connected {} backend: {health:?}",
        backend.name()
    );
}

/// Three instances on one channel: what any of them publishes, all three receive.
pub async fn every_instance_receives_every_event(factory: &dyn Factory) {
    let mut instances = Vec::new();
    for _ in 0..3 {
        let backend = factory.instance().await;
        let stream = backend.subscribe().await.unwrap();
        instances.push((backend, stream));
    }
    for from in 0..instances.len() {
        let payload = json!({"from": from});
        instances[from]
            .0
            .publish(envelope("fanout", payload.clone()))
            .await
            .unwrap();
        for (to, (_, stream)) in instances.iter_mut().enumerate() {
            let got = expect_next(stream, &format!("instance {to}, event from {from}")).await;
            assert_eq!(got.payload.get(), payload.to_string());
        }
    }
}

/// Subscribe returns only once the broker holds the subscription: an event published the moment
/// it returns is received (tried on several fresh subscriptions).
pub async fn an_event_published_as_subscribe_returns_is_received(factory: &dyn Factory) {
    let publisher = factory.instance().await;
    for round in 0..5 {
        let subscriber = factory.instance().await;
        let mut stream = subscriber.subscribe().await.unwrap();
        publisher
            .publish(envelope("ready", json!(round)))
            .await
            .unwrap();
        let got = expect_next(&mut stream, &format!("round {round}")).await;
        assert_eq!(got.payload.get(), round.to_string());
    }
}

/// Two publishers, 200 events each: a subscriber gets each exactly once, each publisher's in order.
pub async fn no_duplicates_and_per_publisher_order(factory: &dyn Factory) {
    const EACH: u64 = 200;
    let subscriber = factory.instance().await;
    let mut stream = subscriber.subscribe().await.unwrap();
    let a = factory.instance().await;
    let b = factory.instance().await;
    let send = |backend: Arc<dyn FanoutBackend>, name: &'static str| async move {
        for seq in 0..EACH {
            backend
                .publish(envelope("order", json!({"p": name, "seq": seq})))
                .await
                .unwrap();
        }
    };
    tokio::join!(send(a, "a"), send(b, "b"));
    let mut next_seq: HashMap<String, u64> = HashMap::new();
    for n in 0..2 * EACH {
        let got = expect_next(&mut stream, &format!("message {n} of {}", 2 * EACH)).await;
        let value: serde_json::Value = serde_json::from_str(got.payload.get()).unwrap();
        let publisher = value["p"].as_str().unwrap().to_owned();
        let seq = value["seq"].as_u64().unwrap();
        let expected = next_seq.entry(publisher.clone()).or_insert(0);
        assert_eq!(
            seq, *expected,
            "publisher {publisher}: out of order or duplicated"
        );
        *expected += 1;
    }
    if let Some(extra) = next_within(&mut stream, Duration::from_millis(300)).await {
        panic!("a message beyond the {} published: {extra:?}", 2 * EACH);
    }
}

/// Two publishers publishing at once: every subscribing instance receives the broadcasts in one
/// order, and a session's routed envelopes (on a backend with routes) in one order, the order in
/// which the backend's history reads them back (on a backend with history). A hub's
/// `Last-Event-ID` is a place in what it received: were two instances' orders different, a
/// client moving from one to the other would get an event twice, or never.
pub async fn every_instance_receives_one_order(factory: &dyn Factory) {
    const EACH: usize = 200;
    let (x, y) = (factory.instance().await, factory.instance().await);
    let (mut sx, mut sy) = (x.subscribe().await.unwrap(), y.subscribe().await.unwrap());
    let session = format!("order-{}", uuid::Uuid::new_v4().simple());
    let routed = x.routes().is_some();
    for backend in [&x, &y] {
        if let Some(routes) = backend.routes() {
            routes.subscribe(&[&session]).await.unwrap();
        }
    }
    let (a, b) = (factory.instance().await, factory.instance().await);
    let started = std::time::SystemTime::now() - Duration::from_secs(1);
    // Every third event is the session's, on a backend with routes.
    let send = |backend: &Arc<dyn FanoutBackend>, name: &'static str, seq: usize| {
        let mut event = SendSseEvent::new("order", json!({"p": name, "seq": seq}));
        let targeted = routed && seq.is_multiple_of(3);
        if targeted {
            event = event.to_session(&session);
        }
        let bytes = Envelope::from_event(&event, "testkit", "testkit")
            .and_then(|e| e.encode())
            .unwrap();
        let (backend, session) = (backend.clone(), session.clone());
        async move {
            match backend.routes() {
                Some(routes) if targeted => routes.publish_to(&session, bytes).await.unwrap(),
                _ => backend.publish(bytes).await.unwrap(),
            }
        }
    };
    // All at once, from both: where a broker has no one order, they race.
    let sends = (0..EACH).flat_map(|seq| [send(&a, "a", seq), send(&b, "b", seq)]);
    futures_util::future::join_all(sends).await;
    // Each instance's order, per source: (broadcasts, the session's); then the history's.
    let mut orders = Vec::new();
    for (name, stream) in [("x", &mut sx), ("y", &mut sy)] {
        let mut envelopes = Vec::new();
        while envelopes.len() < 2 * EACH {
            envelopes.push(expect_next(stream, &format!("instance {name}")).await);
        }
        orders.push((name, by_source(envelopes)));
    }
    if let Some(history) = x.history() {
        let mut read = history.read_since(started).await.unwrap();
        let mut envelopes = Vec::new();
        while let Some(bytes) = read.next().await {
            let envelope = Envelope::decode(&bytes.unwrap()).unwrap();
            if envelope.event_name == "order" && envelope.payload.get().contains("seq") {
                envelopes.push(envelope);
            }
        }
        let mine: std::collections::HashSet<&String> =
            orders[0].1.0.iter().chain(&orders[0].1.1).collect();
        envelopes.retain(|e| mine.contains(&e.id));
        orders.push(("the history", by_source(envelopes)));
    }
    let (first, (broadcasts, targeted)) = &orders[0];
    for (other, (b, t)) in &orders[1..] {
        for (source, left, right) in [
            ("broadcasts", broadcasts, b),
            ("the session's events", targeted, t),
        ] {
            let differ = left.iter().zip(right).filter(|(l, r)| l != r).count();
            assert!(
                differ == 0 && left.len() == right.len(),
                "instance {first} and {other} have {source} in different orders ({differ} of {} \
                 places differ, {} against {})",
                left.len(),
                left.len(),
                right.len()
            );
        }
    }
    for backend in [&x, &y] {
        if let Some(routes) = backend.routes() {
            routes.unsubscribe(&[&session]).await.unwrap();
        }
    }
}

/// The ids of `envelopes`, in their order, split by source: (broadcasts, targeted).
fn by_source(envelopes: Vec<Envelope>) -> (Vec<String>, Vec<String>) {
    let (targeted, broadcasts): (Vec<Envelope>, Vec<Envelope>) =
        envelopes.into_iter().partition(|e| e.session_id.is_some());
    let ids = |list: Vec<Envelope>| list.into_iter().map(|e| e.id).collect();
    (ids(broadcasts), ids(targeted))
}

/// An envelope of exactly the largest size the backend declares
/// ([`FanoutBackend::max_envelope`]; 1 MiB, the default message limit of NATS, when it declares
/// none) arrives byte for byte, and one byte more is refused as too large.
pub async fn large_payloads_arrive_intact(factory: &dyn Factory) {
    let backend = factory.instance().await;
    let declared = backend.max_envelope();
    let size = declared.unwrap_or(1024 * 1024);
    let mut stream = backend.subscribe().await.unwrap();
    let overhead = envelope("large", json!("")).len();
    let large = |size: usize| {
        let text: String = (0..size - overhead)
            .map(|i| (b'a' + (i % 26) as u8) as char)
            .collect();
        envelope("large", json!(text))
    };
    let bytes = large(size);
    assert_eq!(bytes.len(), size);
    backend.publish(bytes.clone()).await.unwrap();
    if declared.is_some() {
        let refused = backend.publish(large(size + 1)).await;
        assert!(
            matches!(refused, Err(crate::BackendError::TooLarge { max, .. }) if max == size),
            "one byte over the declared limit of {size}: {refused:?}"
        );
    }
    let got = next_within(&mut stream, WAIT)
        .await
        .expect("the large envelope did not arrive");
    assert_eq!(got.len(), bytes.len(), "size of the large envelope");
    assert!(got == bytes, "the large envelope arrived altered");
}

/// Garbage on the channel is skipped and counted by the hub, and the events after it still arrive.
pub async fn a_malformed_message_is_skipped_and_counted(factory: &dyn Factory) {
    let hub = Hub::builder_arc(factory.instance().await)
        .app_name("testkit")
        .start()
        .await
        .unwrap();
    let mut events = hub.open_stream(None, EventFilter::Any).await.unwrap();
    events.next().await; // the opening comment
    let other = factory.instance().await;
    other
        .publish(Bytes::from_static(b"\x00not an envelope"))
        .await
        .unwrap();
    other.publish(Bytes::from_static(b"{}")).await.unwrap();
    other.publish(envelope("after", json!("ok"))).await.unwrap();
    let frame = tokio::time::timeout(WAIT, events.next())
        .await
        .expect("the event after the garbage did not arrive")
        .unwrap();
    assert!(
        frame.ends_with(b"event: after\ndata: ok\n\n"),
        "unexpected frame {frame:?}"
    );
    // A broker with several partitions may hand the garbage over after the event.
    let deadline = tokio::time::Instant::now() + WAIT;
    while hub.stats().malformed < 2 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(hub.stats().malformed, 2, "malformed messages counted");
    hub.shutdown().await.ok();
}

/// Delivery resumes after the broker connection is cut and comes back.
///
/// `outage` cuts the connection (stops the broker, kills the client connections) and returns once
/// the broker is back. While it is down, publishing may fail, but must not hang; afterwards the
/// *same* subscription receives again within [`WAIT`], and so does publishing. A subscription
/// that lost its connection may report a [`Received::Gap`] (the hub then reads the history); it
/// does not yield again what it had received before the outage.
pub async fn delivery_resumes_after_an_outage<F, Fut>(factory: &dyn Factory, outage: F)
where
    F: FnOnce() -> Fut,
    Fut: Future<Output = ()>,
{
    let subscriber = factory.instance().await;
    let publisher = factory.instance().await;
    let mut stream = subscriber.subscribe().await.unwrap();
    publisher
        .publish(envelope("before", json!(0)))
        .await
        .unwrap();
    expect_next(&mut stream, "before the outage").await;

    outage().await;

    let deadline = tokio::time::Instant::now() + WAIT;
    let mut attempt = 0u64;
    loop {
        attempt += 1;
        let published = tokio::time::timeout(
            Duration::from_secs(5),
            publisher.publish(envelope("after", json!(attempt))),
        )
        .await;
        match published {
            Err(_) => panic!("publish hung for 5 s after the outage"),
            Ok(Err(error)) => tracing::debug!(%error, "publish after the outage failed; retrying"),
            Ok(Ok(())) => {
                while let Some(item) =
                    next_item_within(&mut stream, Duration::from_millis(500)).await
                {
                    let Some(bytes) = item.into_envelope() else {
                        continue; // a gap: the hub catches up from the history
                    };
                    let got = Envelope::decode(&bytes).unwrap();
                    assert_eq!(got.event_name, "after", "received again after the outage");
                    return;
                }
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no delivery within {WAIT:?} after the broker came back ({attempt} attempts)"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
