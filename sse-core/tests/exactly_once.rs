//! The hub's side of exactly-once delivery, deterministic: a scripted backend decides what each
//! hub receives live, what its history holds and when a subscription reports a gap, so each
//! interleaving that once broke (the exactly-once issue's findings) is replayed step by step.
//! The same findings run against real brokers in the workspace's `tests/`.

#![allow(clippy::unwrap_used)]

use std::collections::HashSet;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::StreamExt;
use serde_json::json;
use sse_core::backend::Lane;
use sse_core::history::{BrokerHistory, HistoryStream};
use sse_core::route::SessionRoutes;
use sse_core::{
    BackendError, BackendStream, Envelope, EventFilter, EventStream, FanoutBackend, Health, Hub,
    OpenError, Received, Routing, SendSseEvent,
};
use tokio::sync::mpsc;

/// A broker whose every step the test takes by hand: [`Script::record`] stores an envelope in
/// the history only (published, not yet received live), [`Script::deliver`] hands an item to the
/// live subscription.
#[derive(Debug, Default)]
struct Script {
    /// Shared by the instances of one test: the broker's one history.
    history: std::sync::Arc<Mutex<Vec<Bytes>>>,
    history_down: AtomicBool,
    /// The subscription is lost (the backend reports itself down) and not back yet.
    subscription_down: AtomicBool,
    live: Mutex<Option<mpsc::UnboundedSender<Received>>>,
    routes: Mutex<HashSet<String>>,
    /// The lane of each envelope recorded on another lane than 0 (see [`Script::laned`]).
    lanes: Mutex<std::collections::HashMap<Bytes, Lane>>,
    /// Routes travel on lane 1, as the partitions of a Redis Cluster do: broadcasts and
    /// routed envelopes then have no order between them.
    laned: AtomicBool,
}

impl Script {
    fn record(&self, envelope: &Bytes) {
        self.history.lock().unwrap().push(envelope.clone());
    }

    /// Records a routed envelope: on lane 1 when the script is laned.
    fn record_routed(&self, envelope: &Bytes) {
        if self.laned.load(Ordering::Relaxed) {
            self.lanes.lock().unwrap().insert(envelope.clone(), 1);
        }
        self.record(envelope);
    }

    /// Hands a routed envelope to the live subscription, on its lane.
    fn deliver_routed(&self, envelope: &Bytes) {
        match self.lanes.lock().unwrap().get(envelope) {
            Some(&lane) => self.deliver(Received::OnLane {
                lane,
                envelope: envelope.clone(),
            }),
            None => self.deliver(Received::Envelope(envelope.clone())),
        }
    }

    fn lane(&self, envelope: &Bytes) -> Lane {
        self.lanes
            .lock()
            .unwrap()
            .get(envelope)
            .copied()
            .unwrap_or(0)
    }

    fn deliver(&self, item: Received) {
        let live = self.live.lock().unwrap();
        live.as_ref().unwrap().send(item).unwrap();
    }

    fn publish_live(&self, envelope: &Bytes) {
        self.record(envelope);
        self.deliver(Received::Envelope(envelope.clone()));
    }
}

#[async_trait]
impl FanoutBackend for Script {
    fn name(&self) -> &'static str {
        "script"
    }

    async fn publish(&self, envelope: Bytes) -> Result<(), BackendError> {
        self.publish_live(&envelope);
        Ok(())
    }

    async fn subscribe(&self) -> Result<BackendStream, BackendError> {
        let (tx, mut rx) = mpsc::unbounded_channel();
        *self.live.lock().unwrap() = Some(tx);
        Ok(futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx)).boxed())
    }

    async fn health(&self) -> Health {
        if self.subscription_down.load(Ordering::Relaxed) {
            return Health::down("the subscription is reconnecting");
        }
        Health::up()
    }

    fn history(&self) -> Option<&dyn BrokerHistory> {
        Some(self)
    }

    fn routes(&self) -> Option<&dyn SessionRoutes> {
        Some(self)
    }
}

#[async_trait]
impl BrokerHistory for Script {
    fn lanes(&self) -> Lane {
        if self.laned.load(Ordering::Relaxed) {
            2
        } else {
            1
        }
    }

    async fn read_lane_since(
        &self,
        lane: Lane,
        since: SystemTime,
    ) -> Result<HistoryStream, BackendError> {
        let all: Vec<Result<Bytes, BackendError>> = self.read_since(since).await?.collect().await;
        let of_lane = all
            .into_iter()
            .filter(move |item| item.as_ref().map_or(true, |b| self.lane(b) == lane))
            .collect::<Vec<_>>();
        Ok(futures_util::stream::iter(of_lane).boxed())
    }

    async fn read_since(&self, since: SystemTime) -> Result<HistoryStream, BackendError> {
        if self.history_down.load(Ordering::Relaxed) {
            return Err(BackendError::unavailable("script", "the broker is down"));
        }
        // As a broker reads by time: what was published at or after `since`.
        let since = since
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64;
        let items: Vec<Result<Bytes, BackendError>> = self
            .history
            .lock()
            .unwrap()
            .iter()
            .filter(|b| {
                Envelope::decode_ref(b)
                    .unwrap()
                    .ts()
                    .is_none_or(|ts| ts >= since)
            })
            .cloned()
            .map(Ok)
            .collect();
        Ok(futures_util::stream::iter(items).boxed())
    }
}

#[async_trait]
impl SessionRoutes for Script {
    async fn publish_to(&self, session: &str, envelope: Bytes) -> Result<(), BackendError> {
        self.record_routed(&envelope);
        if self.routes.lock().unwrap().contains(session) {
            self.deliver_routed(&envelope);
        }
        Ok(())
    }

    async fn subscribe(&self, sessions: &[&str]) -> Result<(), BackendError> {
        let mut routes = self.routes.lock().unwrap();
        routes.extend(sessions.iter().map(|s| (*s).to_owned()));
        Ok(())
    }

    async fn unsubscribe(&self, sessions: &[&str]) -> Result<(), BackendError> {
        let mut routes = self.routes.lock().unwrap();
        for session in sessions {
            routes.remove(*session);
        }
        Ok(())
    }

    fn subscribed(&self) -> usize {
        self.routes.lock().unwrap().len()
    }
}

/// The `n`-th event of session `s1`, as an envelope another instance published.
fn event(n: u32) -> (String, Bytes) {
    let event = SendSseEvent::new("e", json!(n)).to_session("s1");
    let envelope = Envelope::from_event(&event, "sse-fanout", "elsewhere").unwrap();
    (envelope.id.clone(), envelope.encode().unwrap())
}

async fn hub() -> (Hub, std::sync::Arc<Script>) {
    hub_on(std::sync::Arc::default()).await
}

/// A hub whose broker history is `history` (shared with other hubs of the test).
async fn hub_on(history: std::sync::Arc<Mutex<Vec<Bytes>>>) -> (Hub, std::sync::Arc<Script>) {
    hub_routing(history, Routing::session()).await
}

async fn hub_routing(
    history: std::sync::Arc<Mutex<Vec<Bytes>>>,
    routing: Routing,
) -> (Hub, std::sync::Arc<Script>) {
    let script = std::sync::Arc::new(Script {
        history,
        ..Script::default()
    });
    let hub = Hub::builder_arc(script.clone())
        .routing(routing)
        .heartbeat(None)
        .start()
        .await
        .unwrap();
    (hub, script)
}

/// The payloads of the events `stream` holds now, waiting up to 200 ms for each.
async fn received(stream: &mut EventStream) -> Vec<u32> {
    received_with_ids(stream)
        .await
        .into_iter()
        .map(|(_, n)| n)
        .collect()
}

/// The ids and payloads of the events `stream` holds now, waiting up to 200 ms for each.
async fn received_with_ids(stream: &mut EventStream) -> Vec<(String, u32)> {
    let mut got = Vec::new();
    while let Ok(Some(frame)) =
        tokio::time::timeout(Duration::from_millis(200), stream.next()).await
    {
        let text = String::from_utf8(frame.to_vec()).unwrap();
        let id = text.lines().find_map(|l| l.strip_prefix("id: "));
        if let Some(data) = text.lines().find_map(|l| l.strip_prefix("data: ")) {
            got.push((id.unwrap().to_owned(), data.parse().unwrap()));
        }
    }
    got
}

/// A broadcast numbered `n`, as another instance published it.
fn broadcast(n: u32) -> Bytes {
    let event = SendSseEvent::new("e", json!(n));
    Envelope::from_event(&event, "sse-fanout", "elsewhere")
        .unwrap()
        .encode()
        .unwrap()
}

async fn resume(hub: &Hub, last: &str) -> Result<EventStream, OpenError> {
    let subscription = hub.subscription(Some("s1".into()), EventFilter::Any);
    hub.open_after(subscription, Some(last)).await
}

/// Finding 1: a client moved to this hub with nothing missed (`Last-Event-ID` of n=2), then
/// received n=3 live; the subscription lost its connection and n=4 went by meanwhile. The
/// catch-up after the gap delivers n=4 only: n=0..2 were published before this hub held the
/// session's route, so its replay log does not hold them, but the client does.
#[tokio::test]
async fn a_catch_up_delivers_only_what_came_after_the_last_envelope_received() {
    let (hub, script) = hub().await;
    let events: Vec<(String, Bytes)> = (0..6).map(event).collect();
    for (_, envelope) in &events[..3] {
        script.record(envelope); // published while the client was on another hub
    }
    let mut stream = resume(&hub, &events[2].0).await.unwrap();
    script.publish_live(&events[3].1);
    assert_eq!(received(&mut stream).await, vec![3]);

    script.record(&events[4].1); // missed: the connection was down
    script.deliver(Received::Gap {
        since: SystemTime::now() - Duration::from_secs(60),
    });
    script.publish_live(&events[5].1);
    assert_eq!(received(&mut stream).await, vec![4, 5]);
    assert_eq!(hub.stats().gaps, 1);
}

/// On a broker of several lanes (a Redis Cluster's partitions) a routed event (n=1) was
/// published, and missed when its lane's connection broke, while a broadcast (n=100) published
/// after it was received live on lane 0. The catch-up reads each lane on its own and finds its
/// place in each: one merged read, with its place after the last envelope received (n=100),
/// would skip n=1.
#[tokio::test]
async fn a_catch_up_finds_its_place_in_each_lane_on_its_own() {
    let (hub, script) = laned_hub().await;
    let subscription = hub.subscription(Some("s1".into()), EventFilter::Any);
    let mut stream = hub.open_after(subscription, None).await.unwrap();
    let events: Vec<(String, Bytes)> = (0..3).map(event).collect();
    script.record_routed(&events[0].1);
    script.deliver_routed(&events[0].1);
    assert_eq!(received(&mut stream).await, vec![0]);

    script.record_routed(&events[1].1); // missed: lane 1's connection broke
    script.publish_live(&broadcast(100)); // lane 0 goes on
    assert_eq!(received(&mut stream).await, vec![100]);
    script.deliver(Received::Gap {
        since: SystemTime::now() - Duration::from_secs(60),
    });
    script.record_routed(&events[2].1);
    script.deliver_routed(&events[2].1);
    assert_eq!(received(&mut stream).await, vec![1, 2]);
    assert_eq!(hub.stats().gaps, 1);
}

/// A hub in session routing on a laned script (routes on lane 1).
async fn laned_hub() -> (Hub, std::sync::Arc<Script>) {
    let script = std::sync::Arc::new(Script::default());
    script.laned.store(true, Ordering::Relaxed);
    let hub = Hub::builder_arc(script.clone())
        .routing(Routing::session())
        .heartbeat(None)
        .start()
        .await
        .unwrap();
    (hub, script)
}

/// Found by the fault test on a Redis Cluster: a client had n=0 and n=1 of its session (lane 1)
/// and broadcast n=100 (lane 0) from another hub, and resumed here, where n=100 had arrived
/// live but n=0 and n=1 had not (this hub did not hold the session's route). Then this hub's
/// subscription had a gap; lane 1 had brought it nothing since, so its catch-up found no place
/// there and delivered n=0 and n=1. The resume's read holds them before n=100, the last envelope
/// here in the read's merged order: the stream skips them all the same.
#[tokio::test]
async fn a_lane_caught_up_without_a_place_repeats_nothing_a_resumed_stream_had() {
    let (hub, script) = laned_hub().await;
    let routed: Vec<(String, Bytes)> = (0..3).map(event).collect();
    for (_, envelope) in &routed[..2] {
        script.record_routed(envelope); // to the hub the client was on
    }
    let (b_id, b) = {
        let b = broadcast(100);
        (Envelope::decode(&b).unwrap().id, b)
    };
    script.publish_live(&b);
    let cursor = format!("{b_id}~{}", routed[1].0);
    let mut stream = resume(&hub, &cursor).await.unwrap();
    assert_eq!(received(&mut stream).await, Vec::<u32>::new());
    script.deliver(Received::Gap {
        since: SystemTime::now() - Duration::from_secs(60),
    });
    script.record_routed(&routed[2].1);
    script.deliver_routed(&routed[2].1);
    assert_eq!(received(&mut stream).await, vec![2]);
}

/// A routed event published well before its session's route came to this hub went to the hubs
/// that held the route then. A catch-up whose lane brought this hub nothing since the gap began
/// finds no place there, and must not deliver it to a stream of the session that opened here
/// since (the client connected after it was published).
#[tokio::test]
async fn a_catch_up_does_not_deliver_what_was_routed_before_the_route_was_here() {
    let (hub, script) = laned_hub().await;
    let (_, old) = aged(
        SendSseEvent::new("e", json!(0)).to_session("s1"),
        Duration::from_secs(30),
    );
    script.record_routed(&old);
    let subscription = hub.subscription(Some("s1".into()), EventFilter::Any);
    let mut stream = hub.open_after(subscription, None).await.unwrap();
    script.deliver(Received::Gap {
        since: SystemTime::now() - Duration::from_secs(60),
    });
    let (_, now) = event(1);
    script.record_routed(&now);
    script.deliver_routed(&now);
    assert_eq!(received(&mut stream).await, vec![1]);
}

/// One publisher published a routed event (lane 1), then a broadcast (lane 0), and this hub
/// missed both in a gap: its catch-up delivers them in the order they were published, not lane
/// after lane (found by the fault test on a Redis Cluster: a publisher's events out of order).
#[tokio::test]
async fn a_catch_up_of_several_lanes_keeps_each_publishers_order() {
    let (hub, script) = laned_hub().await;
    let subscription = hub.subscription(Some("s1".into()), EventFilter::Any);
    let mut stream = hub.open_after(subscription, None).await.unwrap();
    let (_, first) = aged(
        SendSseEvent::new("e", json!(1)).to_session("s1"),
        Duration::from_secs(2),
    );
    let (_, second) = broadcast_aged(2, Duration::from_secs(1));
    script.record_routed(&first);
    script.record(&second);
    script.deliver(Received::Gap {
        since: SystemTime::now() - Duration::from_secs(60),
    });
    assert_eq!(received(&mut stream).await, vec![1, 2]);
}

/// Finding 4: a resume replayed n=2 from a read of the broker's history before n=2 reached this
/// hub live; its live copy, arriving after the stream opened, is not delivered again.
#[tokio::test]
async fn an_event_replayed_from_the_history_and_then_received_live_is_delivered_once() {
    let (hub, script) = hub().await;
    let events: Vec<(String, Bytes)> = (0..4).map(event).collect();
    for (_, envelope) in &events[..3] {
        script.record(envelope);
    }
    let mut stream = resume(&hub, &events[1].0).await.unwrap();
    script.deliver(Received::Envelope(events[2].1.clone())); // n=2, in flight until now
    script.publish_live(&events[3].1);
    assert_eq!(received(&mut stream).await, vec![2, 3]);
}

/// Found by the fault test on Kafka, in broadcast routing: a client had n=2 from a quicker
/// instance and resumes here before n=2 arrived. The event is in the broker's history, so the
/// resume replays from there (no reset), and the live copies of what it replayed are not
/// delivered again when they come.
#[tokio::test]
async fn a_resume_for_an_event_still_on_its_way_here_is_read_from_the_broker() {
    let script = std::sync::Arc::new(Script::default());
    let hub = Hub::builder_arc(script.clone())
        .heartbeat(None)
        .start()
        .await
        .unwrap();
    let events: Vec<(String, Bytes)> = (0..5).map(event).collect();
    for (_, envelope) in &events[..4] {
        script.record(envelope);
    }
    for (_, envelope) in &events[..2] {
        script.deliver(Received::Envelope(envelope.clone()));
    }
    let mut stream = resume(&hub, &events[2].0).await.unwrap();
    // Its own id: broadcast routing writes no cursors.
    assert_eq!(
        received_with_ids(&mut stream).await,
        vec![(events[3].0.clone(), 3)]
    );
    for (_, envelope) in &events[2..4] {
        script.deliver(Received::Envelope(envelope.clone())); // late, here
    }
    script.publish_live(&events[4].1);
    assert_eq!(received(&mut stream).await, vec![4]);
    assert_eq!(hub.stats().replay_unknown, 0);
}

/// Found by the fault test on a Kafka cluster: the broker held n=0 twice (a publish its
/// client sent again after a broker was lost), before and after n=1. A client that had both
/// resumes after n=1 here, where neither had arrived: the replay read from the broker gives it
/// nothing again, as n=0 is where it came first.
#[tokio::test]
async fn an_event_the_broker_holds_twice_is_replayed_from_where_it_came_first() {
    let (hub, script) = hub_routing(std::sync::Arc::default(), Routing::Broadcast).await;
    let events: Vec<(String, Bytes)> = (0..3).map(event).collect();
    for envelope in [&events[0].1, &events[1].1, &events[0].1] {
        script.record(envelope);
    }
    let mut stream = resume(&hub, &events[1].0).await.unwrap();
    assert_eq!(received(&mut stream).await, Vec::<u32>::new());
    script.publish_live(&events[2].1);
    assert_eq!(received(&mut stream).await, vec![2]);
}

/// Finding 5: while the history cannot be read, a resume that needs it is refused as
/// unavailable (the client tries again), never answered with the reset event.
#[tokio::test]
async fn a_resume_while_the_history_is_unreadable_is_refused_not_reset() {
    let (hub, script) = hub().await;
    let (id, envelope) = event(0);
    script.record(&envelope);
    script.history_down.store(true, Ordering::Relaxed);
    let refused = resume(&hub, &id).await.unwrap_err();
    assert!(
        matches!(refused, OpenError::HistoryUnavailable(_)),
        "{refused:?}"
    );
    assert_eq!(hub.stats().replay_unknown, 0);

    script.history_down.store(false, Ordering::Relaxed);
    let (_, next) = event(1);
    script.record(&next);
    let mut stream = resume(&hub, &id).await.unwrap();
    assert_eq!(received(&mut stream).await, vec![1]);
}

/// Hubs A and B on one broker history, and a stream of session `s1` on A.
async fn two_hubs_and_a_stream_on_the_first() -> (Hub, std::sync::Arc<Script>, Hub, EventStream) {
    let history: std::sync::Arc<Mutex<Vec<Bytes>>> = std::sync::Arc::default();
    let (a, on_a) = hub_on(history.clone()).await;
    let (b, _) = hub_on(history).await;
    let stream = a
        .open_stream(Some("s1".into()), EventFilter::Any)
        .await
        .unwrap();
    (a, on_a, b, stream)
}

/// Finding 3: a routed event and a broadcast reach two instances in opposite orders. A client
/// on hub A leaves right after the broadcast, before A received the routed event; hub B had
/// the routed event first. With ids that are positions in one instance's interleaving, B
/// replayed nothing after the broadcast: the routed event was lost. And a client that had both
/// on A got the routed event twice on B. The cursor ids name a place in each source.
#[tokio::test]
async fn a_client_moving_between_instances_that_ordered_two_sources_differently_gets_each_once() {
    // Lost: A delivers b10 first; the history (and B) have r11 first.
    let (_a, on_a, b, mut stream) = two_hubs_and_a_stream_on_the_first().await;
    let (_, routed) = event(11);
    on_a.record(&routed);
    on_a.publish_live(&broadcast(10));
    let got = received_with_ids(&mut stream).await;
    assert_eq!(got.iter().map(|(_, n)| *n).collect::<Vec<_>>(), vec![10]);
    drop(stream); // left before r11 reached A
    let mut moved = resume(&b, &got[0].0).await.unwrap();
    assert_eq!(
        received(&mut moved).await,
        vec![11],
        "on B after {}",
        got[0].0
    );

    // Twice: A delivers r21 then b20; the history (and B) have b20 first.
    let (_a, on_a, b, mut stream) = two_hubs_and_a_stream_on_the_first().await;
    let (_, routed) = event(21);
    let all = broadcast(20);
    on_a.record(&all);
    on_a.record(&routed);
    on_a.deliver(Received::Envelope(routed));
    on_a.deliver(Received::Envelope(all));
    let got = received_with_ids(&mut stream).await;
    assert_eq!(
        got.iter().map(|(_, n)| *n).collect::<Vec<_>>(),
        vec![21, 20]
    );
    drop(stream);
    let mut moved = resume(&b, &got[1].0).await.unwrap();
    assert_eq!(
        received(&mut moved).await,
        Vec::<u32>::new(),
        "on B after {}",
        got[1].0
    );
}

/// Found by the fault test (a seed on Redis, session routing): a client resumed on a hub whose
/// subscription had stopped receiving (its broker was going down) with the id of an event the
/// hub had never received; the read of the history served the resume; then the subscription
/// reported the gap, and catching up delivered what came after its last envelope, which held
/// the client's own last event, a second time. The stream drops every event the hub may still
/// receive that it had.
#[tokio::test]
async fn catching_up_after_a_resume_repeats_nothing_the_stream_had() {
    let (hub, script) = hub().await;
    script.publish_live(&broadcast(0));
    let events: Vec<(String, Bytes)> = (1..4).map(event).collect();
    for (_, envelope) in &events {
        script.record(envelope); // published while this hub's subscription was down
    }
    let mut stream = resume(&hub, &events[1].0).await.unwrap();
    assert_eq!(received(&mut stream).await, vec![3]);
    script.deliver(Received::Gap {
        since: SystemTime::now() - Duration::from_secs(60),
    });
    let (_, after) = event(4);
    script.publish_live(&after);
    assert_eq!(received(&mut stream).await, vec![4]);
}

/// A broadcast numbered `n`, published `age` ago (its id a UUIDv7 of that time, as hubs make).
fn broadcast_aged(n: u32, age: Duration) -> (String, Bytes) {
    aged(SendSseEvent::new("e", json!(n)), age)
}

/// `event` as another instance published it `age` ago.
fn aged(event: SendSseEvent, age: Duration) -> (String, Bytes) {
    let at = SystemTime::now() - age;
    let since_epoch = at.duration_since(SystemTime::UNIX_EPOCH).unwrap();
    let mut envelope = Envelope::from_event(&event, "sse-fanout", "elsewhere").unwrap();
    envelope.id = uuid::Uuid::new_v7(uuid::Timestamp::from_unix(
        uuid::NoContext,
        since_epoch.as_secs(),
        since_epoch.subsec_nanos(),
    ))
    .to_string();
    envelope.ts = Some(since_epoch.as_millis() as u64);
    (envelope.id.clone(), envelope.encode().unwrap())
}

/// Found by the fault test (CI, a NATS cluster, broadcast routing): a hub's subscription lost
/// its server; the catch-up after the gap waited 19 s for the history (JetStream had no leader).
/// Meanwhile (1) a client came back with the id of an event the hub had not caught up to, older
/// than an event's time in flight, and got the reset event although the event was not gone, and
/// (2) a client whose resume was read from the broker got, once the catch-up delivered, the
/// events it had had before its cursor: the read reached back from its cursor only, not to
/// where the hub's gap began. While a hub catches up, a resume it cannot serve from its log is
/// read from the broker, back to the gap (or refused while the broker cannot be read).
#[tokio::test]
async fn a_resume_while_catching_up_is_neither_reset_nor_repeats_what_it_had() {
    let (hub, script) = hub_routing(std::sync::Arc::default(), Routing::Broadcast).await;
    let aged = |n: u32, secs: u64| broadcast_aged(n, Duration::from_secs(secs));
    script.publish_live(&aged(0, 60).1);
    script.publish_live(&aged(1, 59).1);
    // The subscription is down: 2..5 and, later, 6 went by; the history cannot be read yet.
    script.history_down.store(true, Ordering::Relaxed);
    let mut last = String::new();
    for (n, age) in [(2, 58), (3, 57), (4, 56), (5, 55), (6, 30)] {
        let (id, envelope) = aged(n, age);
        script.record(&envelope);
        last = id;
    }
    script.deliver(Received::Gap {
        since: SystemTime::now() - Duration::from_secs(61),
    });
    tokio::time::sleep(Duration::from_millis(20)).await;
    // (1) The hub cannot tell yet whether it will have 6: not a reset, a refusal to retry.
    let refused = resume_any(&hub, &last).await;
    assert!(
        matches!(refused, Err(OpenError::HistoryUnavailable(_))),
        "{:?}",
        refused.map(|_| "a stream")
    );
    // (2) The broker answers again; the resume is read before the catch-up's next attempt.
    script.history_down.store(false, Ordering::Relaxed);
    let mut stream = resume_any(&hub, &last).await.unwrap();
    assert_eq!(received(&mut stream).await, Vec::<u32>::new());
    // The catch-up delivers 2..6 to the hub's other streams; this one had them.
    tokio::time::sleep(Duration::from_millis(400)).await;
    script.publish_live(&broadcast(7));
    assert_eq!(received(&mut stream).await, vec![7]);
    assert_eq!(hub.stats().gaps, 1);
}

async fn resume_any(hub: &Hub, last: &str) -> Result<EventStream, OpenError> {
    let subscription = hub.subscription(None, EventFilter::Any);
    hub.open_after(subscription, Some(last)).await
}

/// Found by the fault test (a NATS cluster, a server back with an empty store): a hub starting
/// while the broker refused history reads for a moment either exited or, with a read answered
/// from a replica still copying its store back, started with a log missing events, and then
/// replayed resumes with holes. The start reads again until the broker answers (the NATS backend
/// refuses a read from a replica behind its leader).
#[tokio::test]
async fn a_hub_starts_once_its_history_can_be_read_whole() {
    let script = std::sync::Arc::new(Script::default());
    let (first, first_bytes) = broadcast_aged(0, Duration::from_secs(20));
    script.record(&first_bytes);
    script.record(&broadcast_aged(1, Duration::from_secs(19)).1);
    script.history_down.store(true, Ordering::Relaxed);
    let start = tokio::spawn(
        Hub::builder_arc(script.clone())
            .routing(Routing::Broadcast)
            .heartbeat(None)
            .start(),
    );
    tokio::time::sleep(Duration::from_millis(250)).await;
    assert!(!start.is_finished(), "started without its history");
    script.history_down.store(false, Ordering::Relaxed);
    let hub = tokio::time::timeout(Duration::from_secs(5), start)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let mut stream = resume_any(&hub, &first).await.unwrap();
    assert_eq!(received(&mut stream).await, vec![1]);
}

/// Found by a CI fault run (a NATS cluster, servers replaced): JetStream refused history reads
/// for over 30 s, a hub's catch-up gave up, and its streams and its log kept the hole (49 routed
/// events lost). The catch-up waits the refusal out: the hub reports itself down meanwhile, and
/// then delivers what it missed, in order, before what came live after the gap.
#[tokio::test(start_paused = true)]
async fn a_catch_up_refused_for_long_waits_it_out_reporting_down() {
    let script = std::sync::Arc::new(Script::default());
    let hub = Hub::builder_arc(script.clone())
        .routing(Routing::Broadcast)
        .heartbeat(None)
        .probe(None)
        .start()
        .await
        .unwrap();
    let mut stream = hub.open_stream(None, EventFilter::Any).await.unwrap();
    script.publish_live(&broadcast(0));
    assert_eq!(received(&mut stream).await, vec![0]);
    // The subscription is lost; 1 and 2 go by; the history refuses reads for a minute.
    script.history_down.store(true, Ordering::Relaxed);
    script.record(&broadcast(1));
    script.record(&broadcast(2));
    script.deliver(Received::Gap {
        since: SystemTime::now() - Duration::from_secs(1),
    });
    script.publish_live(&broadcast(3));
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert_eq!(
        received(&mut stream).await,
        Vec::<u32>::new(),
        "3 waits for 1 and 2"
    );
    let health = hub.health().await;
    assert!(!health.up, "{health:?}");
    assert!(
        format!("{health:?}").contains("refused reads"),
        "{health:?}"
    );

    script.history_down.store(false, Ordering::Relaxed);
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(received(&mut stream).await, vec![1, 2, 3]);
    assert!(hub.health().await.up);
    assert_eq!(hub.stats().gaps_unrecovered, 0);
}

/// Found by a CI fault run (RabbitMQ, broadcast routing, the broker restarted): a client came
/// back with an event its hub had not received, older than an event's time in flight, while the
/// hub's subscription was lost and reconnecting, and got the reset event twice. The hub learns
/// it is behind only when the subscription is back and reports its gap; until then a resume it
/// cannot serve is refused while the hub is down, not reset.
#[tokio::test]
async fn a_resume_while_the_subscription_is_lost_is_refused_not_reset() {
    let (hub, script) = hub_routing(std::sync::Arc::default(), Routing::Broadcast).await;
    script.publish_live(&broadcast_aged(0, Duration::from_secs(30)).1);
    // The subscription is lost; 1 went by; another instance's client had it.
    script.subscription_down.store(true, Ordering::Relaxed);
    let (last, envelope) = broadcast_aged(1, Duration::from_secs(20));
    script.record(&envelope);
    let refused = resume_any(&hub, &last).await;
    assert!(
        matches!(refused, Err(OpenError::HistoryUnavailable(_))),
        "{:?}",
        refused.map(|_| "a stream")
    );
    // Back: the gap is reported and caught up; the resume is served from the log.
    script.subscription_down.store(false, Ordering::Relaxed);
    script.deliver(Received::Gap {
        since: SystemTime::now() - Duration::from_secs(25),
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut stream = resume_any(&hub, &last).await.unwrap();
    script.publish_live(&broadcast(2));
    assert_eq!(received(&mut stream).await, vec![2]);
    // An id that is gone, while the hub is up, still gets the reset event.
    let gone = broadcast_aged(9, Duration::from_secs(20)).0;
    let mut reset = resume_any(&hub, &gone).await.unwrap();
    let mut frames = String::new();
    while let Ok(Some(frame)) = tokio::time::timeout(Duration::from_millis(200), reset.next()).await
    {
        frames.push_str(std::str::from_utf8(&frame).unwrap());
    }
    assert!(frames.contains("lastEventId"), "{frames}");
}
