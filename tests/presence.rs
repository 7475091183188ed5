//! Presence across a cluster (`--presence-events`): three real hub processes on a real broker,
//! sessions spread over them, a listener of presence events on one of them. A query on any hub
//! sees every session; a session with streams on two hubs stays online when one closes; two hubs
//! opening a session's first streams at once give one `online` event; a reconnect within the
//! linger gives none; a hub killed with SIGKILL takes its sessions offline within the bound the
//! flags give, with one `offline` event each at the listener on another hub, and nothing else
//! is ever announced. In broadcast and in session routing.
#![cfg(any(
    feature = "redis",
    feature = "nats",
    feature = "rabbit",
    feature = "kafka"
))]
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use common::brokers;
use common::cluster::{HubProcess, free_port};
use common::{SseClient, client};
use serde_json::{Value, json};

const TOKEN: &str = "presence-test-token";
/// The presence flags of every hub: beats every 0.5 s, a linger of 1 s.
const FLAGS: [&str; 6] = [
    "--presence-events",
    "presence",
    "--presence-interval",
    "500ms",
    "--presence-linger",
    "1",
];
/// From a crash to the offline events, as `PresenceConfig::offline_within` gives it for these
/// flags: four intervals and the linger.
const OFFLINE_WITHIN: Duration = Duration::from_millis(4 * 500 + 1000);
/// What the test allows beyond that: the trip through the broker and the test's own polling.
const SLACK: Duration = Duration::from_secs(2);

/// What a failing run shows of each hub's log.
const HUB_LOG: &str = "warn,sse_core::presence=debug";

/// `GET /sse/presence?<query>` on `hub`: the status and the JSON answer.
async fn query(hub: &HubProcess, query: &str, token: Option<&str>) -> (u16, Value) {
    let mut request = client().get(hub.url(&format!("/sse/presence?{query}")));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// Waits until `check` holds of the answer to `q` on `hub`.
async fn until(hub: &HubProcess, q: &str, what: &str, check: impl Fn(&Value) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let (status, answer) = query(hub, q, Some(TOKEN)).await;
        if status == 200 && check(&answer) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: hub :{} answers {status} {answer}",
            hub.addr().port()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn session<'a>(answer: &'a Value, id: &str) -> &'a Value {
    answer["sessions"]
        .as_array()
        .and_then(|all| all.iter().find(|s| s["sessionId"] == id))
        .unwrap_or(&Value::Null)
}

async fn stream(hub: &HubProcess, session: &str, names: &str) -> SseClient {
    let client = SseClient::connect(
        &hub.url(&format!(
            "/sse/event-stream?eventName={names}&sessionId={session}"
        )),
        &[],
    )
    .await;
    assert_eq!(client.status, 200);
    client
}

/// The presence events a listener got: (session, state).
struct Listener {
    client: SseClient,
    got: Vec<(String, String, Instant)>,
}

impl Listener {
    async fn open(hub: &HubProcess) -> Listener {
        let client =
            SseClient::connect(&hub.url("/sse/event-stream?eventName=presence"), &[]).await;
        assert_eq!(client.status, 200);
        Listener {
            client,
            got: Vec::new(),
        }
    }

    /// Reads events until `want` are there, or `within` passes.
    async fn read(&mut self, want: usize, within: Duration) {
        let deadline = Instant::now() + within;
        while self.got.len() < want {
            let left = deadline.saturating_duration_since(Instant::now());
            let Some(event) = self.client.next_within(left).await else {
                return;
            };
            assert_eq!(event.event, "presence");
            let payload: Value = serde_json::from_str(&event.data).unwrap();
            self.got.push((
                payload["sessionId"].as_str().unwrap().to_owned(),
                payload["state"].as_str().unwrap().to_owned(),
                Instant::now(),
            ));
        }
    }

    fn states(&self, session: &str) -> Vec<&str> {
        self.got
            .iter()
            .filter(|(s, _, _)| s == session)
            .map(|(_, state, _)| state.as_str())
            .collect()
    }
}

async fn presence_across_three_hubs(args: &[String]) {
    let mut hubs = Vec::new();
    for _ in 0..3 {
        let port = free_port();
        hubs.push(HubProcess::start_logged(port, args, HUB_LOG));
        common::cluster::wait_healthy(port).await;
    }
    for hub in &hubs {
        until(hub, "sessionId=x", "every hub synced, seeing three", |a| {
            a["synced"] == true && a["counts"]["instances"] == 3
        })
        .await;
    }
    let mut listener = Listener::open(&hubs[2]).await;

    // Guarded as publishing is; the event name is the hub's own.
    assert_eq!(query(&hubs[0], "sessionId=a", None).await.0, 401);
    assert_eq!(query(&hubs[0], "eventName=", Some(TOKEN)).await.0, 400);
    let (status, counts) = query(&hubs[0], "", Some(TOKEN)).await;
    assert_eq!(
        (status, &counts["counts"]["instances"]),
        (200, &json!(3)),
        "{counts}"
    );
    let reserved = client()
        .post(hubs[0].url("/sse/publish"))
        .bearer_auth(TOKEN)
        .json(&json!({"eventName": "presence", "payload": {"sessionId": "u1", "state": "offline"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(reserved.status(), 403);

    // Sessions spread over the hubs; u4's first two streams open on two hubs at once.
    let u1 = stream(&hubs[0], "u1", "e").await;
    let u2 = stream(&hubs[1], "u2", "e").await;
    let _u3 = stream(&hubs[2], "u3", "e,room-42").await;
    let (u4a, _u4b) = tokio::join!(stream(&hubs[0], "u4", "e"), stream(&hubs[1], "u4", "*"));
    for hub in &hubs {
        until(
            hub,
            "sessionId=u1,u2,u3,u4",
            "every session seen on every hub",
            |a| {
                ["u1", "u2", "u3", "u4"]
                    .iter()
                    .all(|id| session(a, id)["online"] == true)
                    && session(a, "u4")["streams"] == 2
                    && session(a, "u4")["instances"] == 2
            },
        )
        .await;
        let (_, listening) = query(hub, "eventName=room-42", Some(TOKEN)).await;
        let ids: Vec<&str> = listening["sessions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["sessionId"].as_str().unwrap())
            .collect();
        assert_eq!(ids, ["u3", "u4"], "u3 by name, u4 listens to every name");
    }
    listener.read(4, Duration::from_secs(10)).await;
    let online: BTreeSet<&str> = listener.got.iter().map(|(s, _, _)| s.as_str()).collect();
    assert_eq!(
        online,
        BTreeSet::from(["u1", "u2", "u3", "u4"]),
        "{:?}",
        listener.got
    );

    // One of u4's two streams closes: still online, on one hub.
    drop(u4a);
    until(&hubs[2], "sessionId=u4", "u4 on one stream", |a| {
        session(a, "u4")["streams"] == 1 && session(a, "u4")["online"] == true
    })
    .await;

    // u1 moves from hub 0 to hub 2 within the linger: no event.
    drop(u1);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let _u1 = stream(&hubs[2], "u1", "e").await;

    // Hub 1 dies without a word: u2 (only there) and u4 (its last stream there) go offline.
    let killed_at = Instant::now();
    let victim = hubs.remove(1);
    victim.kill();
    drop(u2);
    listener.read(6, OFFLINE_WITHIN + SLACK).await;
    let took = listener
        .got
        .get(5)
        .map(|(_, _, at)| at.duration_since(killed_at));
    println!(
        "presence: offline events {took:?} after the kill (bound {OFFLINE_WITHIN:?}); events {:?}",
        listener
            .got
            .iter()
            .map(|(s, st, _)| format!("{s} {st}"))
            .collect::<Vec<_>>()
    );
    assert_eq!(listener.states("u2"), ["online", "offline"]);
    assert_eq!(listener.states("u4"), ["online", "offline"]);
    assert!(
        took.is_some_and(|t| t <= OFFLINE_WITHIN + SLACK),
        "{took:?}"
    );
    for hub in &hubs {
        until(
            hub,
            "sessionId=u1,u2,u3,u4",
            "the dead hub's sessions gone",
            |a| {
                a["counts"]["instances"] == 2
                    && session(a, "u2")["online"] == false
                    && session(a, "u4")["online"] == false
                    && session(a, "u1")["online"] == true
                    && session(a, "u3")["online"] == true
            },
        )
        .await;
    }

    assert_eq!(hubs[0].metric("sse_presence_instances").await, 2.0);
    assert_eq!(hubs[0].metric("sse_presence_synced").await, 1.0);

    // Nothing more: no flap for u1, no second event for anyone.
    listener.read(7, Duration::from_secs(3)).await;
    assert_eq!(
        listener.states("u1"),
        ["online"],
        "{:?}",
        listener.got.len()
    );
    assert_eq!(listener.states("u3"), ["online"]);
    assert_eq!(listener.got.len(), 6);
}

/// A hub cut from the broker (through a proxy) for longer than the eviction: its session goes
/// offline for the cluster, once; when the hub is back it reads what it missed, sees that it
/// was evicted, and the session comes back online, once; nothing else is announced and no
/// session is left behind as a ghost.
async fn a_cut_off_hub_comes_back_without_ghosts_or_doubles(
    url: &str,
    broker_port: u16,
    args: impl Fn(&str) -> Vec<String>,
) {
    let proxy = common::cluster::CutProxy::start(([127, 0, 0, 1], broker_port).into()).await;
    let mut hubs = Vec::new();
    for through in [proxy.url(url, broker_port), url.to_owned(), url.to_owned()] {
        let port = free_port();
        hubs.push(HubProcess::start_logged(port, &args(&through), HUB_LOG));
        common::cluster::wait_healthy(port).await;
    }
    for hub in &hubs {
        until(hub, "sessionId=x", "every hub synced, seeing three", |a| {
            a["synced"] == true && a["counts"]["instances"] == 3
        })
        .await;
    }
    let mut listener = Listener::open(&hubs[1]).await;
    let _s1 = stream(&hubs[0], "s1", "e").await;
    let _s2 = stream(&hubs[1], "s2", "e").await;
    listener.read(2, Duration::from_secs(10)).await;
    assert_eq!(listener.got.len(), 2, "{:?}", listener.states("s1"));

    let cut_at = Instant::now();
    proxy.cut();
    listener.read(3, OFFLINE_WITHIN + SLACK).await;
    assert_eq!(
        listener.states("s1"),
        ["online", "offline"],
        "cut off: s1 goes offline"
    );
    println!(
        "presence: a cut-off hub's session offline {:?} after the cut",
        listener
            .got
            .get(2)
            .map(|(_, _, at)| at.duration_since(cut_at))
    );
    until(
        &hubs[2],
        "sessionId=s1,s2",
        "the cut-off hub evicted",
        |a| a["counts"]["instances"] == 2 && session(a, "s1")["online"] == false,
    )
    .await;

    proxy.restore();
    listener.read(4, Duration::from_secs(20)).await;
    assert_eq!(listener.states("s1"), ["online", "offline", "online"]);
    for hub in &hubs {
        until(
            hub,
            "sessionId=s1,s2",
            "the hub back, with its session",
            |a| {
                a["synced"] == true
                    && a["counts"]["instances"] == 3
                    && a["counts"]["sessions"] == 2
                    && session(a, "s1")["streams"] == 1
                    && session(a, "s2")["streams"] == 1
            },
        )
        .await;
    }
    listener.read(5, Duration::from_secs(3)).await;
    assert_eq!(
        listener.states("s2"),
        ["online"],
        "the others were not evicted"
    );
    assert_eq!(listener.got.len(), 4);
}

/// The port of a broker URL on loopback (`redis://127.0.0.1:6379` gives 6379).
fn port_of(url: &str) -> u16 {
    let at = url.find("127.0.0.1:").expect("a loopback broker") + "127.0.0.1:".len();
    let digits: String = url[at..].chars().take_while(char::is_ascii_digit).collect();
    digits.parse().unwrap()
}

macro_rules! cut_off_scenarios {
    ($module:ident, $feature:literal, $broker:expr, $($flag:literal),*) => {
        #[cfg(feature = $feature)]
        mod $module {
            use super::*;
            use common::backends::$module as backend;

            #[tokio::test]
            async fn a_cut_off_hub_comes_back_without_ghosts_or_doubles() {
                let Some(url) = brokers::url($broker).await else {
                    return;
                };
                let channel = common::unique("presence-cut");
                let _forget = common::backends::Forget::new(&url, &channel, backend::forget);
                let args = |through: &str| {
                    let mut extra = vec!["--publish-token", TOKEN, "--app-name", "presence", $($flag),*];
                    extra.extend(FLAGS);
                    common::backends::hub_args($feature, through, &channel, &extra)
                };
                super::a_cut_off_hub_comes_back_without_ghosts_or_doubles(&url, port_of(&url), args)
                    .await;
            }
        }
    };
}

mod cut_off {
    use super::*;
    cut_off_scenarios!(
        redis,
        "redis",
        brokers::Broker::Redis,
        "--routing",
        "broadcast"
    );
    cut_off_scenarios!(nats, "nats", brokers::Broker::Nats, "--routing", "session");
}

macro_rules! presence_scenarios {
    ($module:ident, $feature:literal, $broker:expr, $($flag:literal),*) => {
        #[cfg(feature = $feature)]
        mod $module {
            use super::*;
            use common::backends::$module as backend;

            #[tokio::test]
            async fn presence_is_cluster_wide_and_each_transition_announced_once() {
                let Some(url) = brokers::url($broker).await else {
                    return;
                };
                let channel = common::unique("presence");
                let _forget = common::backends::Forget::new(&url, &channel, backend::forget);
                let mut extra = vec!["--publish-token", TOKEN, "--app-name", "presence", $($flag),*];
                extra.extend(FLAGS);
                let args = common::backends::hub_args($feature, &url, &channel, &extra);
                presence_across_three_hubs(&args).await;
            }
        }
    };
}

presence_scenarios!(
    redis,
    "redis",
    brokers::Broker::Redis,
    "--routing",
    "broadcast"
);
presence_scenarios!(
    kafka,
    "kafka",
    brokers::Broker::Kafka,
    "--routing",
    "broadcast",
    "--create-topic"
);
mod routed {
    use super::*;
    presence_scenarios!(
        redis,
        "redis",
        brokers::Broker::Redis,
        "--routing",
        "session"
    );
    presence_scenarios!(nats, "nats", brokers::Broker::Nats, "--routing", "session");
    presence_scenarios!(
        rabbit,
        "rabbit",
        brokers::Broker::Rabbit,
        "--routing",
        "session"
    );
}
