//! Ending a session everywhere (`POST /sse/disconnect`): three real hub processes on a real
//! broker, a session with a stream on each, others beside it. A disconnect posted to one hub
//! ends that session's three streams, each after the goodbye event, within a bound measured
//! here; the other streams go on; a stream the session opens afterwards stays. In broadcast and
//! in session routing (where the disconnect still reaches every instance); Kafka in broadcast
//! routing, the one it has.
#![cfg(any(
    feature = "redis",
    feature = "nats",
    feature = "rabbit",
    feature = "kafka"
))]
#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use common::brokers;
use common::cluster::{HubProcess, free_port};
use common::{SseClient, client};
use serde_json::{Value, json};

const TOKEN: &str = "disconnect-test-token";
/// How long the three streams may take to end after the disconnect's `202`.
const BOUND: Duration = Duration::from_secs(2);

/// `POST /sse/disconnect` on `hub` with `body` and `token`: the status and the JSON answer.
async fn disconnect(hub: &HubProcess, body: Value, token: Option<&str>) -> (u16, Value) {
    let mut request = client().post(hub.url("/sse/disconnect")).json(&body);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

async fn publish(hub: &HubProcess, event: &str, session: Option<&str>, payload: Value) {
    let mut body = json!({"eventName": event, "payload": payload});
    if let Some(s) = session {
        body["sessionId"] = s.into();
    }
    let r = client()
        .post(hub.url("/sse/publish"))
        .bearer_auth(TOKEN)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
}

async fn stream(hub: &HubProcess, session: Option<&str>) -> SseClient {
    let session = session.map_or(String::new(), |s| format!("&sessionId={s}"));
    let client = SseClient::connect(
        &hub.url(&format!("/sse/event-stream?eventName=e{session}")),
        &[],
    )
    .await;
    assert_eq!(client.status, 200);
    client
}

async fn session_ends_on_every_hub(args: &[String]) {
    let mut hubs = Vec::new();
    for _ in 0..3 {
        hubs.push(HubProcess::ready(free_port(), args).await);
    }
    let (target, other) = ("leaving", "staying");
    let mut leaving = Vec::new();
    for hub in &hubs {
        leaving.push(stream(hub, Some(target)).await);
    }
    let mut staying = stream(&hubs[2], Some(other)).await;
    let mut anonymous = stream(&hubs[1], None).await;
    for (i, hub) in hubs.iter().enumerate() {
        hub.wait_streams([1, 2, 2][i]).await;
    }
    // Every stream is live (in session routing, its route is subscribed).
    publish(&hubs[0], "e", Some(target), json!("before")).await;
    let mut last_ids = Vec::new();
    for client in &mut leaving {
        let before = client.next().await;
        assert_eq!(before.data, "before");
        last_ids.push(before.id);
    }

    // Guarded as publishing is, and checked before anything goes out.
    let refused = [
        (json!({"sessionId": target}), None, 401, "no publish token"),
        (json!({}), Some(TOKEN), 400, "no sessionId"),
        (
            json!({"sessionId": target, "payload": 1}),
            Some(TOKEN),
            400,
            "a payload without the goodbye's eventName",
        ),
        (
            json!({"sessionId": target, "eventName": null}),
            Some(TOKEN),
            400,
            "a null eventName (left out, it means no goodbye)",
        ),
        (
            json!({"sessionId": target, "sesionId": "x"}),
            Some(TOKEN),
            400,
            "an unknown field",
        ),
        (
            json!({"sessionId": target, "eventName": "bye\nevent: e"}),
            Some(TOKEN),
            400,
            "a line break in the name",
        ),
        (
            json!({"sessionId": target, "eventName": ""}),
            Some(TOKEN),
            400,
            "an empty name",
        ),
    ];
    for (body, token, expected, why) in refused {
        let (status, answer) = disconnect(&hubs[0], body, token).await;
        assert_eq!(status, expected, "{why}: {answer}");
        assert!(answer["error"].is_string(), "{why}: a JSON error, {answer}");
    }

    let posted = Instant::now();
    let (status, body) = disconnect(
        &hubs[0],
        json!({"sessionId": target, "eventName": "logged-out", "payload": {"reason": "logout"}}),
        Some(TOKEN),
    )
    .await;
    assert_eq!(status, 202, "{body}");
    assert!(body["id"].as_str().is_some_and(|id| !id.is_empty()));
    let accepted = posted.elapsed();
    let mut slowest = Duration::ZERO;
    for (i, client) in leaving.iter_mut().enumerate() {
        let goodbye = client.next().await;
        assert_eq!(
            (
                goodbye.event.as_str(),
                goodbye.data.as_str(),
                goodbye.id.as_str()
            ),
            ("logged-out", r#"{"reason":"logout"}"#, last_ids[i].as_str()),
            "hub {i}: the goodbye, without an id of its own (the last event id stays)"
        );
        assert!(
            client.until_end().await.is_empty(),
            "hub {i}: nothing after the goodbye"
        );
        slowest = slowest.max(posted.elapsed());
    }
    println!(
        "disconnect: 202 after {:.1} ms; the session's streams on 3 hubs ended within {:.1} ms",
        accepted.as_secs_f64() * 1000.0,
        slowest.as_secs_f64() * 1000.0
    );
    assert!(slowest < BOUND, "the streams ended after {slowest:?}");

    // The others go on; the session's next stream is not ended by the disconnect before it.
    let mut back = stream(&hubs[1], Some(target)).await;
    hubs[1].wait_streams(2).await;
    publish(&hubs[0], "e", Some(other), json!("still")).await;
    publish(&hubs[0], "e", Some(target), json!("again")).await;
    publish(&hubs[2], "e", None, json!("all")).await;
    assert_eq!(staying.next().await.data, "still");
    assert_eq!(staying.next().await.data, "all");
    assert_eq!(anonymous.next().await.data, "all");
    assert_eq!(back.next().await.data, "again");
    assert_eq!(back.next().await.data, "all");

    for (i, hub) in hubs.iter().enumerate() {
        assert_eq!(
            hub.metric("sse_disconnects_received_total").await,
            1.0,
            "hub {i}"
        );
        // Counted when the HTTP layer lets the stream go, just after its last bytes.
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let metrics = common::get_text(&hub.url("/metrics")).await;
            if metrics.lines().any(|l| {
                l.starts_with("sse_streams_closed_total")
                    && l.contains("reason=\"disconnected\"")
                    && l.ends_with(" 1")
            }) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "hub {i}: no stream counted as closed by the disconnect:\n{metrics}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

macro_rules! disconnect_scenarios {
    ($module:ident, $feature:literal, $broker:expr, $($flag:literal),*) => {
        #[cfg(feature = $feature)]
        mod $module {
            use super::*;
            use common::backends::$module as backend;

            #[tokio::test]
            async fn a_disconnect_ends_the_sessions_streams_on_every_hub() {
                let Some(url) = brokers::url($broker).await else {
                    return;
                };
                let channel = common::unique("disconnect");
                let _forget = common::backends::Forget::new(&url, &channel, backend::forget);
                let extra = ["--publish-token", TOKEN, "--app-name", "disconnect", $($flag),*];
                let args = common::backends::hub_args($feature, &url, &channel, &extra);
                session_ends_on_every_hub(&args).await;
            }
        }
    };
}

disconnect_scenarios!(
    redis,
    "redis",
    brokers::Broker::Redis,
    "--routing",
    "broadcast"
);
disconnect_scenarios!(
    kafka,
    "kafka",
    brokers::Broker::Kafka,
    "--routing",
    "broadcast",
    "--create-topic"
);
mod routed {
    use super::*;
    disconnect_scenarios!(
        redis,
        "redis",
        brokers::Broker::Redis,
        "--routing",
        "session"
    );
    disconnect_scenarios!(nats, "nats", brokers::Broker::Nats, "--routing", "session");
    disconnect_scenarios!(
        rabbit,
        "rabbit",
        brokers::Broker::Rabbit,
        "--routing",
        "session",
        "--rabbit-delivery",
        "queue"
    );
}
