//! The randomized fault test of exactly-once delivery: three hub processes on a broker of the
//! test's own, clients that move between random hubs with `Last-Event-ID` (as a browser's
//! EventSource does), two publishers mixing targeted events and broadcasts, and faults drawn from
//! a seed: hubs killed (SIGKILL) or drained (SIGTERM) and started again, the broker killed and
//! started again with its data. At the end a checker compares, per client, everything it
//! received across its reconnects with every publish that got `202`: lost, duplicated, another
//! session's, reordered within a publisher, or a reset.
//!
//! A failing run prints its seed; `SSE_FAULT_SEED=<seed>` replays the same draws (the timing of
//! a real system still varies). `SSE_FAULT_SECONDS` sets how long faults go on (default 20 s per
//! run); `bash scripts/faults.sh` runs longer ones with fresh seeds.
#![cfg(any(
    feature = "redis",
    feature = "nats",
    feature = "rabbit",
    feature = "kafka"
))]
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::backends::hub_args;
use common::brokers::{Broker, Outage};
use common::cluster::{HubProcess, free_port};
use common::kafka_cluster::OwnKafkaCluster;
use common::nats_cluster::OwnNatsCluster;
use common::own::OwnBroker;
use common::rabbit_cluster::OwnRabbitCluster;
use common::redis_cluster::OwnRedisCluster;
use eventsource_stream::Eventsource;
use futures_util::StreamExt;
use serde_json::{Value, json};
use tokio::time::Instant;

const HUBS: usize = 3;
const SESSIONS: usize = 8;
/// Clients per session (on different hubs, most of the time).
const PER_SESSION: usize = 2;
const PUBLISHERS: usize = 2;
/// Pause between one publisher's publishes (about 60 events/s from two publishers).
const PUBLISH_EVERY: Duration = Duration::from_millis(30);
/// What the hubs log, shown when a run fails (`SSE_TEST_HUB_LOG` overrides it): warnings, each
/// resume's decision, and the backends' reconnects.
const HUB_LOG: &str = "warn,sse_core::resume=debug,sse_core::hub=info,sse_fanout_redis=info,\
    sse_fanout_nats=info,sse_fanout_rabbit=info,sse_fanout_kafka=info";

/// One publish attempt, as its publisher saw it.
#[derive(Debug, Clone)]
struct Publish {
    publisher: usize,
    n: u64,
    session: Option<String>,
    /// When the request was sent.
    sent: Instant,
    /// The event's id when the hub answered `202`; `None` for any other outcome (the event may
    /// or may not have gone out).
    acked: Option<String>,
    /// The hub it was sent to (its port).
    hub: u16,
    /// What the hub answered (a status and its error code, a transport error, no answer), and
    /// after how long: for a person reading a failed run.
    answer: String,
    took: Duration,
}

impl Publish {
    /// When, where and how it was answered, with times in seconds since `start`.
    fn describe(&self, start: Instant) -> String {
        format!(
            "sent at {:.3}s to {}, {} after {} ms",
            self.sent.saturating_duration_since(start).as_secs_f64(),
            self.hub,
            self.answer,
            self.took.as_millis()
        )
    }
}

/// What one client received, across all its streams.
#[derive(Debug, Default)]
struct History {
    /// When its first stream was answered `200`.
    first_open: Option<Instant>,
    /// When its last stream opened without `Last-Event-ID` was answered `200` (a client that
    /// had no event yet when its stream ended comes back without one, as a browser does): events
    /// published after it are its to receive; what was published before, while it was away, it
    /// had no id to ask for.
    fresh_open: Option<Instant>,
    events: Vec<Seen>,
    /// Each stream it opened, in order (to tell where a duplicate came from and where a lost
    /// event should have come).
    streams: Vec<Opened>,
    opens: usize,
    refused: usize,
}

/// One stream a client opened.
#[derive(Debug, Clone)]
struct Opened {
    /// Where its events begin in [`History::events`].
    at: usize,
    /// The hub's port.
    port: u16,
    /// The `Last-Event-ID` it sent.
    last_id: Option<String>,
    /// When it was answered `200`.
    when: Instant,
}

impl std::fmt::Display for Opened {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "on {} after {:?}", self.port, self.last_id)
    }
}

#[derive(Debug, Clone)]
struct Seen {
    id: String,
    event: String,
    data: String,
}

/// The hub processes, by slot: a slot is empty while its hub is down.
struct Hubs {
    ports: Vec<u16>,
    args: Vec<String>,
    slots: Vec<Mutex<Option<HubProcess>>>,
}

impl Hubs {
    async fn start(args: Vec<String>) -> Hubs {
        let ports: Vec<u16> = (0..HUBS).map(|_| free_port()).collect();
        let slots = ports.iter().map(|_| Mutex::new(None)).collect();
        let hubs = Hubs { ports, args, slots };
        for slot in 0..HUBS {
            hubs.restore(slot).await;
        }
        hubs
    }

    fn start_hub(&self, slot: usize) -> HubProcess {
        HubProcess::start_logged(self.ports[slot], &self.args, HUB_LOG)
    }

    fn take(&self, slot: usize) -> Option<HubProcess> {
        self.slots[slot].lock().unwrap().take()
    }

    /// Starts the hub of `slot` again, if it is down, and waits until it is ready. A hub whose
    /// start fails (the broker was electing a leader, say) exits, and is started again, as an
    /// orchestrator would.
    async fn restore(&self, slot: usize) {
        if self.slots[slot].lock().unwrap().is_some() {
            return;
        }
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut hub = self.start_hub(slot);
        while !hub.healthy().await {
            assert!(
                Instant::now() < deadline,
                "hub {slot} did not become healthy"
            );
            if hub.exited() {
                eprintln!("hub {slot} exited while starting; starting it again");
                hub = self.start_hub(slot);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        *self.slots[slot].lock().unwrap() = Some(hub);
    }
}

/// The faults of one run, for the summary.
#[derive(Debug, Default)]
struct Faults {
    kills: usize,
    drains: usize,
    broker_restarts: usize,
}

struct Run {
    broker: Broker,
    /// A cluster of the broker (three servers, one killed at a time) instead of one server.
    cluster: bool,
    backend: &'static str,
    routing: &'static str,
    seed: u64,
    seconds: u64,
    /// The backend's own hub flags.
    flags: &'static [&'static str],
}

impl Run {
    /// What order the run's clients must see. On a Redis Cluster in session routing the routes
    /// are spread over partitions on other masters than the broadcasts' (README, "A Redis
    /// Cluster"): a publisher's broadcast and its next targeted event have no order between
    /// them, and each keeps its own.
    fn order(&self) -> Order {
        if self.cluster && self.broker == Broker::Redis && self.routing == "session" {
            Order::Source
        } else {
            Order::Publisher
        }
    }
}

fn seed() -> u64 {
    std::env::var("SSE_FAULT_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| fastrand::u64(..))
}

fn seconds() -> u64 {
    std::env::var("SSE_FAULT_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20)
}

/// One client: opens a stream on a random hub (again after every loss, or when it decides to
/// move), with the last id it received, and keeps everything it gets.
async fn client(
    session: String,
    ports: Vec<u16>,
    mut rng: fastrand::Rng,
    history: Arc<Mutex<History>>,
    stop: tokio_util::sync::CancellationToken,
) {
    let http = common::client();
    let mut last_id: Option<String> = None;
    while !stop.is_cancelled() {
        let port = ports[rng.usize(..ports.len())];
        let url =
            format!("http://127.0.0.1:{port}/sse/event-stream?eventName=e&sessionId={session}");
        let mut request = http.get(&url).header("accept", "text/event-stream");
        if let Some(id) = &last_id {
            request = request.header("last-event-id", id);
        }
        let stay = Duration::from_millis(rng.u64(500..5_000));
        match tokio::time::timeout(Duration::from_secs(5), request.send()).await {
            Ok(Ok(response)) if response.status() == 200 => {
                {
                    let mut h = history.lock().unwrap();
                    h.opens += 1;
                    let now = Instant::now();
                    h.first_open.get_or_insert(now);
                    if last_id.is_none() {
                        h.fresh_open = Some(now);
                    }
                    let at = h.events.len();
                    h.streams.push(Opened {
                        at,
                        port,
                        last_id: last_id.clone(),
                        when: now,
                    });
                }
                let mut events = response.bytes_stream().eventsource();
                let until = tokio::time::sleep(stay);
                tokio::pin!(until);
                loop {
                    let event = tokio::select! {
                        () = &mut until => break,
                        () = stop.cancelled() => break,
                        event = events.next() => event,
                    };
                    let Some(Ok(event)) = event else { break };
                    if !event.id.is_empty() {
                        last_id = Some(event.id.clone());
                    }
                    history.lock().unwrap().events.push(Seen {
                        id: event.id,
                        event: event.event,
                        data: event.data,
                    });
                }
            }
            Ok(Ok(_)) => history.lock().unwrap().refused += 1,
            _ => {}
        }
        tokio::time::sleep(Duration::from_millis(rng.u64(50..300))).await;
    }
}

/// One publisher: targeted events (to a random session) and broadcasts, through random hubs.
async fn publisher(
    me: usize,
    ports: Vec<u16>,
    sessions: Vec<String>,
    mut rng: fastrand::Rng,
    log: Arc<Mutex<Vec<Publish>>>,
    stop: tokio_util::sync::CancellationToken,
) {
    let http = common::client();
    let mut n = 0;
    while !stop.is_cancelled() {
        // Seven in ten targeted, the rest broadcasts.
        let session = (rng.u8(..10) < 7).then(|| sessions[rng.usize(..sessions.len())].clone());
        let mut body = json!({"eventName": "e", "payload": {"p": me, "n": n}});
        if let Some(s) = &session {
            body["sessionId"] = s.clone().into();
        }
        let port = ports[rng.usize(..ports.len())];
        let sent = Instant::now();
        let answer = tokio::time::timeout(
            Duration::from_secs(5),
            http.post(format!("http://127.0.0.1:{port}/sse/publish"))
                .json(&body)
                .send(),
        )
        .await;
        let (acked, answer) = match answer {
            Ok(Ok(response)) => {
                let status = response.status();
                let body = response.json::<Value>().await.unwrap_or_default();
                let acked = (status == 202)
                    .then(|| body["id"].as_str().map(str::to_owned))
                    .flatten();
                let code = body["error"].as_str().unwrap_or_default().to_owned();
                (
                    acked,
                    format!("{} {code}", status.as_u16()).trim_end().to_owned(),
                )
            }
            Ok(Err(error)) => (None, format!("error: {error}")),
            Err(_) => (None, "no answer".to_owned()),
        };
        log.lock().unwrap().push(Publish {
            publisher: me,
            n,
            session,
            sent,
            acked,
            hub: port,
            answer,
            took: sent.elapsed(),
        });
        n += 1;
        tokio::time::sleep(PUBLISH_EVERY).await;
    }
}

/// Draws faults until `until`: a hub killed or drained and started again, now and then the
/// broker killed and started again.
async fn faults(
    hubs: &Hubs,
    broker: &mut dyn Outage,
    broker_faults: u8,
    rng: &mut fastrand::Rng,
    until: Instant,
) -> Faults {
    let mut done = Faults::default();
    while Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(rng.u64(1_000..3_000))).await;
        match rng.u8(..10) {
            draw if draw < broker_faults => {
                let down = Duration::from_millis(rng.u64(500..3_000));
                broker.run(Box::pin(tokio::time::sleep(down))).await;
                done.broker_restarts += 1;
            }
            2..=5 => {
                let slot = rng.usize(..HUBS);
                if let Some(hub) = hubs.take(slot) {
                    hub.kill();
                    done.kills += 1;
                }
                tokio::time::sleep(Duration::from_millis(rng.u64(200..1_500))).await;
                hubs.restore(slot).await;
            }
            _ => {
                let slot = rng.usize(..HUBS);
                if let Some(hub) = hubs.take(slot) {
                    // The drain takes up to a few seconds; clients move meanwhile.
                    tokio::task::spawn_blocking(move || hub.terminate())
                        .await
                        .unwrap();
                    done.drains += 1;
                }
                hubs.restore(slot).await;
            }
        }
    }
    done
}

/// The event id an SSE `id` names: in session routing the id is a cursor, `<event>~<other>`,
/// with `~` and `\` in the event id escaped by `\` (see `sse_core::route`'s cursor).
fn event_id(sse_id: &str) -> String {
    let mut id = String::new();
    let mut chars = sse_id.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => id.extend(chars.next()),
            '~' => break,
            c => id.push(c),
        }
    }
    id
}

/// Which of a publisher's events a client must receive in the order they were published.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Order {
    /// All of them: the broker gives one order to the broadcasts and every session's events.
    Publisher,
    /// Its broadcasts among themselves, and its events to the client's session among
    /// themselves: the two travel in different orders (a Redis Cluster's route partitions, on
    /// other masters than the broadcasts).
    Source,
}

/// Checks one client's history against the publishes: what is wrong goes to `problems`.
fn check(
    session: &str,
    history: &History,
    publishes: &[Publish],
    order: Order,
    problems: &mut Vec<String>,
    details: &mut Vec<String>,
) -> usize {
    let by_id: HashMap<&str, &Publish> = publishes
        .iter()
        .filter_map(|p| p.acked.as_deref().map(|id| (id, p)))
        .collect();
    // Payloads of publishes without an answer: they may have gone out.
    let unacked: HashSet<(usize, u64)> = publishes
        .iter()
        .filter(|p| p.acked.is_none())
        .map(|p| (p.publisher, p.n))
        .collect();
    let problems_before = problems.len();
    let mut seen_ids: HashSet<String> = HashSet::new();
    // Each publisher's (or each publisher's and source's) last event so far: its n and where
    // in the history it came.
    let mut last_n: HashMap<(usize, bool), (u64, usize)> = HashMap::new();
    let targeted: HashMap<(usize, u64), bool> = publishes
        .iter()
        .map(|p| ((p.publisher, p.n), p.session.is_some()))
        .collect();
    let start = publishes.iter().map(|p| p.sent).min();
    let mut received = 0;
    for (at, event) in history.events.iter().enumerate() {
        if event.event == sse_fanout::RESET_EVENT {
            // Whether the event the client named had been acknowledged.
            let named = serde_json::from_str::<Value>(&event.data)
                .ok()
                .and_then(|data| data["lastEventId"].as_str().map(event_id));
            let acked = named.as_deref().map(|id| by_id.contains_key(id));
            problems.push(format!(
                "{session}: reset {} ({})",
                event.data,
                match acked {
                    Some(true) => "after an acknowledged event",
                    Some(false) => "after an event not acknowledged",
                    None => "no id",
                }
            ));
            continue;
        }
        received += 1;
        let id = event_id(&event.id);
        if !seen_ids.insert(id.clone()) {
            // Which streams it came on.
            let on: Vec<String> = history
                .events
                .iter()
                .enumerate()
                .filter(|(_, e)| event_id(&e.id) == id)
                .map(|(i, _)| {
                    let stream = history.streams.iter().rev().find(|s| s.at <= i);
                    match stream {
                        Some(stream) => format!("#{i} {stream}"),
                        None => format!("#{i}"),
                    }
                })
                .collect();
            problems.push(format!(
                "{session}: {} ({}) twice: {}",
                event.id,
                event.data,
                on.join("; ")
            ));
            continue;
        }
        let data: Value = serde_json::from_str(&event.data).unwrap();
        let (p, n) = (
            data["p"].as_u64().unwrap() as usize,
            data["n"].as_u64().unwrap(),
        );
        match by_id.get(id.as_str()) {
            Some(publish) if publish.session.as_deref().is_some_and(|s| s != session) => {
                problems.push(format!("{session}: another session's event {}", event.id));
            }
            Some(_) => {}
            None if unacked.contains(&(p, n)) => {}
            None => problems.push(format!("{session}: an event nobody published: {event:?}")),
        }
        let source = order == Order::Source && targeted.get(&(p, n)).copied().unwrap_or(false);
        if let Some(&(before, before_at)) = last_n.get(&(p, source))
            && n <= before
        {
            let acked = if by_id.contains_key(id.as_str()) {
                "acknowledged"
            } else {
                "not acknowledged"
            };
            // Both publishes and the streams that brought them, so that the run explains itself.
            let publish = |n: u64| {
                publishes
                    .iter()
                    .find(|x| x.publisher == p && x.n == n)
                    .zip(start)
                    .map_or_else(String::new, |(x, start)| x.describe(start))
            };
            let stream = |i: usize| {
                history
                    .streams
                    .iter()
                    .rev()
                    .find(|s| s.at <= i)
                    .map_or_else(|| format!("#{i}"), |s| format!("#{i} {s}"))
            };
            problems.push(format!(
                "{session}: publisher {p}'s n={n} ({acked}; {}; came {}) after n={before} ({}; came {}) ({})",
                publish(n),
                stream(at),
                publish(before),
                stream(before_at),
                event.id
            ));
        }
        last_n.insert((p, source), (n, at));
    }
    let Some(fresh_open) = history.fresh_open else {
        problems.push(format!("{session}: never opened a stream"));
        return received;
    };
    for publish in publishes {
        let Some(id) = &publish.acked else { continue };
        let mine = publish.session.as_deref().is_none_or(|s| s == session);
        if mine && publish.sent > fresh_open && !seen_ids.contains(id.as_str()) {
            // The stream the client had opened last when it was published (it may have ended
            // since): the event should have come on it or on the next one, with its id.
            let stream = history
                .streams
                .iter()
                .enumerate()
                .rev()
                .find(|(_, s)| s.when <= publish.sent)
                .map_or_else(
                    || "before any stream".to_owned(),
                    |(i, s)| format!("stream #{i} {s}"),
                );
            problems.push(format!(
                "{session}: lost {id} (publisher {} n={}, {}), published during {stream}",
                publish.publisher,
                publish.n,
                publish.session.as_deref().unwrap_or("broadcast")
            ));
        }
    }
    if problems.len() > problems_before {
        details.push(streams_of(session, history, publishes));
    }
    received
}

/// A client's streams, for a person reading a failed run: when each opened (seconds since the
/// first publish), on which hub, after which id, and the first and last event it brought.
fn streams_of(session: &str, history: &History, publishes: &[Publish]) -> String {
    let start = publishes.iter().map(|p| p.sent).min();
    let mut out = format!("{session}'s streams:");
    for (i, stream) in history.streams.iter().enumerate() {
        let end = history
            .streams
            .get(i + 1)
            .map_or(history.events.len(), |next| next.at);
        let events = &history.events[stream.at..end];
        let at = start.map_or(0.0, |start| {
            stream.when.saturating_duration_since(start).as_secs_f64()
        });
        let n = |seen: Option<&Seen>| seen.map_or_else(|| "-".to_owned(), |e| e.data.clone());
        out += &format!(
            "\n    #{i} at {at:.2}s {stream}: {} events, {} .. {}",
            events.len(),
            n(events.first()),
            n(events.last())
        );
    }
    out
}

async fn run(run: Run) {
    let Some(mut broker) = Brokers::start(run.broker, run.cluster).await else {
        return;
    };
    let mut rng = fastrand::Rng::with_seed(run.seed);
    let channel = common::unique("faults");
    #[cfg(feature = "redis")]
    if let Brokers::RedisCluster(cluster) = &mut broker {
        // The broker faults go to the channel's master, then to the masters of two sessions'
        // route partitions, in turn.
        use sse_fanout::redis::{RedisBackend, RedisConfig};
        let config = RedisConfig::new(cluster.url(), channel.as_str());
        let backend = RedisBackend::connect(config).await.unwrap();
        let mut keys = vec![channel.clone()];
        keys.extend(["s0", "s1"].map(|session| backend.route_channel(session)));
        cluster.focus_in_turn(keys);
    }
    let mut flags = vec![
        "--routing",
        run.routing,
        "--route-linger",
        "500ms",
        "--retry",
        "1",
        "--heartbeat",
        "2",
    ];
    flags.extend_from_slice(run.flags);
    let args = hub_args(run.backend, &broker.url(), &channel, &flags);
    // A cluster loses a node more often: that is what its runs are for.
    let broker_faults = if run.cluster { 4 } else { 2 };
    let hubs = Hubs::start(args).await;
    let sessions: Vec<String> = (0..SESSIONS).map(|i| format!("s{i}")).collect();
    let stop_clients = tokio_util::sync::CancellationToken::new();
    let stop_publishers = tokio_util::sync::CancellationToken::new();
    let mut clients = Vec::new();
    for session in &sessions {
        for _ in 0..PER_SESSION {
            let history = Arc::new(Mutex::new(History::default()));
            let task = tokio::spawn(client(
                session.clone(),
                hubs.ports.clone(),
                fastrand::Rng::with_seed(rng.u64(..)),
                history.clone(),
                stop_clients.clone(),
            ));
            clients.push((session.clone(), history, task));
        }
    }
    // Every client has a stream before anything is published or broken.
    let deadline = Instant::now() + Duration::from_secs(20);
    while clients
        .iter()
        .any(|(_, h, _)| h.lock().unwrap().first_open.is_none())
    {
        assert!(
            Instant::now() < deadline,
            "seed {}: clients did not connect",
            run.seed
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let log: Arc<Mutex<Vec<Publish>>> = Arc::default();
    let mut publishers = Vec::new();
    for me in 0..PUBLISHERS {
        publishers.push(tokio::spawn(publisher(
            me,
            hubs.ports.clone(),
            sessions.clone(),
            fastrand::Rng::with_seed(rng.u64(..)),
            log.clone(),
            stop_publishers.clone(),
        )));
    }
    let until = Instant::now() + Duration::from_secs(run.seconds);
    let faults = faults(&hubs, broker.outage(), broker_faults, &mut rng, until).await;
    // Calm again: every hub up, publishing stopped, then time for clients to come back and
    // hubs to catch up.
    for slot in 0..HUBS {
        hubs.restore(slot).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop_publishers.cancel();
    for p in publishers {
        p.await.unwrap();
    }
    tokio::time::sleep(Duration::from_secs(6)).await;
    stop_clients.cancel();
    let publishes = log.lock().unwrap().clone();
    let mut problems = Vec::new();
    let mut details = Vec::new();
    let mut received = 0;
    let (mut opens, mut refused) = (0, 0);
    for (session, history, task) in clients {
        task.await.unwrap();
        let history = history.lock().unwrap();
        received += check(
            &session,
            &history,
            &publishes,
            run.order(),
            &mut problems,
            &mut details,
        );
        opens += history.opens;
        refused += history.refused;
    }
    let acked = publishes.iter().filter(|p| p.acked.is_some()).count();
    // How long publishing was down at worst: the longest stretch between two publishes that
    // got `202` (how fast the hubs and the broker come back, measured, not asserted).
    let mut acked_at: Vec<Instant> = publishes
        .iter()
        .filter(|p| p.acked.is_some())
        .map(|p| p.sent)
        .collect();
    acked_at.sort();
    let longest_unacked = acked_at
        .windows(2)
        .map(|w| w[1] - w[0])
        .max()
        .unwrap_or_default();
    // Straight to the process's stderr (past the harness's capture): the seed and what was
    // found must be seen in a passing run too.
    use std::io::Write;
    let mut out = std::io::stderr().lock();
    let _ = writeln!(
        out,
        "faults: seed={} backend={}{} routing={} seconds={} publishes={} acked={acked} \
         received={received} opens={opens} refused={refused} kills={} drains={} \
         broker_restarts={} longest_unacked_ms={} problems={}",
        run.seed,
        run.backend,
        if run.cluster { " (cluster)" } else { "" },
        run.routing,
        run.seconds,
        publishes.len(),
        faults.kills,
        faults.drains,
        faults.broker_restarts,
        longest_unacked.as_millis(),
        problems.len()
    );
    for problem in problems.iter().take(40) {
        let _ = writeln!(out, "  {problem}");
    }
    for detail in &details {
        let _ = writeln!(out, "  {detail}");
    }
    drop(out);
    assert!(
        problems.is_empty(),
        "seed {} ({} {} routing): {} problems, the first: {}; replay with SSE_FAULT_SEED={}",
        run.seed,
        run.backend,
        run.routing,
        problems.len(),
        problems[0],
        run.seed
    );
    // Nothing published must have been nothing tested.
    assert!(
        acked > 100 && received > 100,
        "seed {}: too little traffic",
        run.seed
    );
}

/// The broker of a run: one server of the test's own, or a cluster of them.
enum Brokers {
    One(OwnBroker),
    NatsCluster(OwnNatsCluster),
    KafkaCluster(OwnKafkaCluster),
    RabbitCluster(OwnRabbitCluster),
    RedisCluster(OwnRedisCluster),
}

impl Brokers {
    async fn start(kind: Broker, cluster: bool) -> Option<Brokers> {
        match (kind, cluster) {
            (Broker::Nats, true) => OwnNatsCluster::start().await.map(Brokers::NatsCluster),
            (Broker::Kafka, true) => OwnKafkaCluster::start().await.map(Brokers::KafkaCluster),
            (Broker::Rabbit, true) => OwnRabbitCluster::start().await.map(Brokers::RabbitCluster),
            (Broker::Redis, true) => OwnRedisCluster::start().await.map(Brokers::RedisCluster),
            (kind, false) => OwnBroker::start_with(kind, true).await.map(Brokers::One),
            (kind, true) => unreachable!("no {kind:?} cluster yet"),
        }
    }

    fn url(&self) -> String {
        match self {
            Brokers::One(one) => one.url(),
            Brokers::NatsCluster(cluster) => cluster.url(),
            Brokers::KafkaCluster(cluster) => cluster.url(),
            Brokers::RabbitCluster(cluster) => cluster.url(),
            Brokers::RedisCluster(cluster) => cluster.url(),
        }
    }

    fn outage(&mut self) -> &mut dyn Outage {
        match self {
            Brokers::One(one) => one,
            Brokers::NatsCluster(cluster) => cluster,
            Brokers::KafkaCluster(cluster) => cluster,
            Brokers::RabbitCluster(cluster) => cluster,
            Brokers::RedisCluster(cluster) => cluster,
        }
    }
}

/// The runs share the machine's two cores: one at a time.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A fault run as a test: on one server of the broker, or (`cluster` first) on a cluster;
/// attributes before it (`#[ignore = "why"]`) go on the test.
macro_rules! fault_run {
    (@run [$($attr:tt)*] $cluster:literal, $feature:literal, $broker:expr, $backend:literal, $routing:literal, $name:ident $(, $flag:literal)*) => {
        #[cfg(feature = $feature)]
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        $($attr)*
        async fn $name() {
            let _one = ONE_AT_A_TIME.lock().await;
            run(Run {
                broker: $broker,
                cluster: $cluster,
                backend: $backend,
                routing: $routing,
                seed: seed(),
                seconds: seconds(),
                flags: &[$($flag),*],
            })
            .await;
        }
    };
    ($(#[$meta:meta])* cluster $($rest:tt)*) => {
        fault_run!(@run [$(#[$meta])*] true, $($rest)*);
    };
    ($(#[$meta:meta])* $feature:literal $($rest:tt)*) => {
        fault_run!(@run [$(#[$meta])*] false, $feature $($rest)*);
    };
}

// Every broker gives one order per source (Redis by being one thread, NATS and RabbitMQ by
// delivering from their history streams): nothing is explained away.
fault_run!(
    "redis",
    Broker::Redis,
    "redis",
    "broadcast",
    redis_broadcast
);
fault_run!("redis", Broker::Redis, "redis", "session", redis_session);
fault_run!("nats", Broker::Nats, "nats", "broadcast", nats_broadcast);
fault_run!("nats", Broker::Nats, "nats", "session", nats_session);
fault_run!(
    "rabbit",
    Broker::Rabbit,
    "rabbit",
    "broadcast",
    rabbit_broadcast
);
fault_run!(
    "rabbit",
    Broker::Rabbit,
    "rabbit",
    "session",
    rabbit_session
);
// Kafka: one partition (the hub's default for a topic it creates), so one order; session
// routing is refused there.
fault_run!(
    "kafka",
    Broker::Kafka,
    "kafka",
    "broadcast",
    kafka_broadcast,
    "--create-topic"
);

// A three-server NATS cluster, the history stream on all three: a server killed with its disk
// (each in turn, replaced by an empty one) under the hubs and clients, besides the hub faults.
// Every acknowledged publish is on two of three servers, so a client that comes back with
// `Last-Event-ID` misses nothing.
fault_run!(cluster "nats", Broker::Nats, "nats", "broadcast", nats_cluster_broadcast,
    "--backend-option", "history-replicas=3");
// The same in session routing. It once lost a routed event (CI seed 618131720278847050), most
// likely read from a server still copying its store back in (such reads are refused now,
// backend-nats's history); 12 of 12 runs passed after that, but a CI run (seed
// 7740276177186006192) lost 49 routed events: JetStream refused reads for over 30 s, a hub's
// catch-up gave up ("reading the history after a gap failed for 30s"), and its log kept the
// hole. A catch-up now waits a temporary refusal out (sse-core's catch_up); 16 of 16 runs passed
// since (8 of 30 s on 2026-12-07), none meeting a refusal of over 30 s, which tests/nats.rs
// `a_catch_up_waits_out_a_history_refused_for_over_30_s` brings about on purpose.
fault_run!(cluster "nats", Broker::Nats, "nats", "session", nats_cluster_session,
    "--backend-option", "history-replicas=3");
// Three Kafka-API brokers (Nisshi) on one store, the hubs given all three: a broker killed (each
// in turn) under traffic, its clients moving to another, besides the hub faults.
fault_run!(cluster "kafka", Broker::Kafka, "kafka", "broadcast", kafka_cluster_broadcast,
    "--create-topic");
// Three RabbitMQ nodes, the history stream on all three: a node's VM killed (each in turn) and
// started again under the hubs and clients, besides the hub faults. An instance whose node is
// lost connects to another, declares its queues again and catches up from the stream.
fault_run!(cluster "rabbit", Broker::Rabbit, "rabbit", "broadcast", rabbit_cluster_broadcast,
    "--backend-option", "history-replicas=3");
fault_run!(cluster "rabbit", Broker::Rabbit, "rabbit", "session", rabbit_cluster_session,
    "--backend-option", "history-replicas=3");
// A Redis Cluster of three masters with a replica each, the hubs given every node: a master
// killed and its replica promoted, or a slot migrated to another master, in turn, besides the
// hub faults; the channel's slot first, then those of two sessions' route partitions. A publish
// is answered once a replica has it (`WAIT`), so a failover loses none that got `202`.
fault_run!(cluster "redis", Broker::Redis, "redis", "broadcast", redis_cluster_broadcast,
    "--backend-option", "wait-replicas=1");
// Session routing on the Redis Cluster, the routes spread over 16 partitions on every master:
// its checker holds each publisher's order per source (`Run::order`). Before the partitions a CI
// run (seed 12119817236326987686) had one client get an unacknowledged routed event after the
// publisher's next event, never explained, and the run was kept out of the normal test command.
// With the partitions its first two runs found a resumed stream given again what it had (a
// lane's catch-up with no place in it) and a publisher's events out of order (a catch-up lane
// after lane, or a broadcast and a targeted event on two masters): the first two are fixed,
// each with a scripted test in sse-core/tests/exactly_once.rs, the third is what partitions
// allow. Since, 10 of 10 runs passed on 2026-12-07 (nine of 30 s, one of 90 s with 8 broker
// faults).
fault_run!(cluster "redis", Broker::Redis, "redis", "session", redis_cluster_session,
    "--backend-option", "wait-replicas=1");
// The same without waiting for a replica: a measurement of what asynchronous replication loses
// in a failover (events answered `202` by a master that died before its replica had them), not a
// guarantee. Run it with `cargo test --all-features --test faults redis_cluster_without_wait --
// --ignored`; README gives what it found.
fault_run!(#[ignore = "a measurement: without WAIT a failover may lose acknowledged events"]
    cluster "redis", Broker::Redis, "redis", "broadcast", redis_cluster_without_wait);

/// The checker itself: each kind of problem it exists for is found, and a history that has
/// everything once and in order has none.
#[test]
fn the_checker_finds_what_it_is_for() {
    let start = Instant::now();
    let publish = |n: u64, acked: bool, session: Option<&str>| Publish {
        publisher: 0,
        n,
        session: session.map(str::to_owned),
        sent: start + Duration::from_millis(10 * n + 10),
        acked: acked.then(|| format!("id{n}")),
        hub: 8000,
        answer: if acked {
            "202"
        } else {
            "503 backend_unavailable"
        }
        .to_owned(),
        took: Duration::from_millis(1),
    };
    let publishes = vec![
        publish(0, true, None),
        publish(1, false, Some("a")),
        publish(2, true, Some("a")),
        publish(3, true, Some("b")),
    ];
    let seen = |n: u64| Seen {
        id: format!("id{n}~"),
        event: "e".to_owned(),
        data: json!({"p": 0, "n": n}).to_string(),
    };
    let history = |ns: &[u64]| History {
        first_open: Some(start),
        fresh_open: Some(start),
        events: ns.iter().map(|&n| seen(n)).collect(),
        streams: vec![Opened {
            at: 0,
            port: 8001,
            last_id: None,
            when: start,
        }],
        ..History::default()
    };
    let checked = |publishes: &[Publish], ns: &[u64], order: Order| {
        let (mut problems, mut details) = (Vec::new(), Vec::new());
        check(
            "a",
            &history(ns),
            publishes,
            order,
            &mut problems,
            &mut details,
        );
        problems
    };
    let problems = |ns: &[u64]| checked(&publishes, ns, Order::Publisher);
    assert_eq!(problems(&[0, 2]), Vec::<String>::new());
    assert_eq!(
        problems(&[0, 1, 2]),
        Vec::<String>::new(),
        "an unacknowledged event may come"
    );
    let lost = problems(&[2]);
    assert!(lost.len() == 1 && lost[0].contains("lost id0"), "{lost:?}");
    let twice = problems(&[0, 2, 2]);
    assert!(twice.len() == 1 && twice[0].contains("twice"), "{twice:?}");
    let reordered = problems(&[0, 2, 1]);
    assert_eq!(reordered.len(), 1, "{reordered:?}");
    assert!(
        reordered[0]
            .contains("n=1 (not acknowledged; sent at 0.010s to 8000, 503 backend_unavailable")
            && reordered[0].contains("after n=2 (sent at 0.020s to 8000, 202 after 1 ms; came #1"),
        "{reordered:?}"
    );
    // Source by source, a broadcast may come after the publisher's next targeted event, but
    // targeted events keep their order.
    let later = [publish(4, true, None), publish(5, true, Some("a"))];
    let more: Vec<Publish> = publishes.iter().cloned().chain(later).collect();
    assert_eq!(
        checked(&more, &[0, 2, 5, 4], Order::Source),
        Vec::<String>::new()
    );
    assert_eq!(checked(&more, &[0, 2, 5, 4], Order::Publisher).len(), 1);
    assert_eq!(
        checked(&more, &[0, 5, 2, 4], Order::Source).len(),
        1,
        "within a source"
    );
    let foreign = problems(&[0, 2, 3]);
    assert!(
        foreign[0].contains("another session's event"),
        "{foreign:?}"
    );
}
