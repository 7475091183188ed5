//! The single-instance product end to end: the real server on a loopback port, read by a real SSE
//! client, on the embedded local backend.
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{SseClient, TestServer, WAIT, client, router_config};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::json;
use sse_fanout::{JwtSessions, LocalBackend, SendSseEvent};
use tokio::io::AsyncWriteExt;

fn local() -> Arc<dyn sse_fanout::FanoutBackend> {
    Arc::new(LocalBackend::new())
}

async fn server() -> TestServer {
    TestServer::start(local(), |b| b).await
}

#[tokio::test]
async fn stream_opens_with_sse_headers_and_named_events_arrive() {
    let server = server().await;
    let mut s = server.stream("eventName=order-update&sessionId=s1").await;
    assert_eq!(s.status, 200);
    assert_eq!(s.headers["content-type"], "text/event-stream");
    assert_eq!(s.headers["cache-control"], "no-cache");
    assert_eq!(s.headers["x-accel-buffering"], "no");
    server.wait_for_streams(1).await;

    let (status, body) = server
        .publish(json!({"eventName": "order-update", "sessionId": "s1", "payload": {"status": "shipped"}}))
        .await;
    assert_eq!(status, 202);
    let event = s.next().await;
    assert_eq!(event.event, "order-update");
    assert_eq!(event.data, r#"{"status":"shipped"}"#);
    assert_eq!(event.id, body["id"].as_str().unwrap());

    // A text payload with every kind of line break arrives as its lines joined by LF.
    server
        .publish(json!({"eventName": "order-update", "sessionId": "s1", "payload": "a\r\nb\rc\nd"}))
        .await;
    assert_eq!(s.next().await.data, "a\nb\nc\nd");
}

#[tokio::test]
async fn a_session_never_sees_another_sessions_events_but_both_get_broadcasts() {
    let server = server().await;
    let mut s1 = server.stream("eventName=e&sessionId=s1").await;
    let mut s1_again = server.stream("eventName=e&sessionId=s1").await;
    let mut s2 = server.stream("eventName=e&sessionId=s2").await;
    let mut anonymous = server.stream("eventName=e").await;
    server.wait_for_streams(4).await;

    server
        .publish(json!({"eventName": "e", "sessionId": "s1", "payload": "for s1"}))
        .await;
    server
        .publish(json!({"eventName": "e", "payload": "for all"}))
        .await;

    assert_eq!(s1.next().await.data, "for s1");
    assert_eq!(s1_again.next().await.data, "for s1");
    assert_eq!(s1.next().await.data, "for all");
    assert_eq!(s1_again.next().await.data, "for all");
    // The first thing s2 and the anonymous stream see is the broadcast: never s1's event.
    assert_eq!(s2.next().await.data, "for all");
    assert_eq!(anonymous.next().await.data, "for all");
}

#[tokio::test]
async fn one_stream_may_ask_for_several_event_names() {
    let server = server().await;
    let mut ab = server.stream("eventName=a,b&sessionId=s").await;
    let mut all = server.stream("eventName=*&sessionId=s").await;
    server.wait_for_streams(2).await;
    for name in ["a", "c", "b"] {
        server
            .publish(json!({"eventName": name, "sessionId": "s", "payload": name}))
            .await;
    }
    assert_eq!(ab.next().await.event, "a");
    assert_eq!(ab.next().await.event, "b");
    let names: Vec<String> = [all.next().await, all.next().await, all.next().await]
        .into_iter()
        .map(|e| e.event)
        .collect();
    assert_eq!(names, ["a", "c", "b"]);
}

#[tokio::test]
async fn event_stream_requires_valid_event_names() {
    let server = server().await;
    for query in ["", "eventName=", "eventName=a%0Ab"] {
        let response = client()
            .get(server.url(&format!("/sse/event-stream?{query}")))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 400, "{query}");
        let body: serde_json::Value = response.json().await.unwrap();
        assert_eq!(body["error"], "bad_request");
    }
    assert_eq!(server.hub.open_streams(), 0);
}

#[tokio::test]
async fn heartbeat_comments_arrive_on_an_idle_stream() {
    let server =
        TestServer::start(local(), |b| b.heartbeat(Some(Duration::from_millis(200)))).await;
    let mut response = client()
        .get(server.url("/sse/event-stream?eventName=e"))
        .send()
        .await
        .unwrap();
    let mut seen = String::new();
    tokio::time::timeout(WAIT, async {
        while !seen.contains(": heartbeat\n: heartbeat\n") {
            let chunk = response.chunk().await.unwrap().unwrap();
            seen.push_str(std::str::from_utf8(&chunk).unwrap());
        }
    })
    .await
    .unwrap();
    assert!(seen.starts_with(": ok\nretry: 3000\n"), "{seen:?}");
}

/// A payload reaches the client as it was posted: keys in their order, numbers as spelled, only
/// the whitespace between tokens gone; a string's CR and CRLF arrive as LF (SSE cannot carry CR).
#[tokio::test]
async fn payloads_arrive_as_they_were_posted() {
    let server = TestServer::start(local(), |b| b).await;
    let mut stream = server.stream("eventName=e&sessionId=s1").await;
    server.wait_for_streams(1).await;
    let bodies = [
        r#"{"eventName":"e","sessionId":"s1","payload":{"order":17,"status":"shipped","note":"zwölf €"}}"#,
        "{\"eventName\":\"e\",\"sessionId\":\"s1\",\"payload\":{\n  \"zeta\": 1.50,\n  \"alpha\": [1e2, 12345678901234567890123]\n}}",
        r#"{"eventName":"e","sessionId":"s1","payload":"line 1\r\nline 2\rline 3"}"#,
    ];
    for body in bodies {
        let response = client()
            .post(server.url("/sse/publish"))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 202, "{body}");
    }
    for want in [
        r#"{"order":17,"status":"shipped","note":"zwölf €"}"#,
        r#"{"zeta":1.50,"alpha":[1e2,12345678901234567890123]}"#,
        "line 1\nline 2\nline 3",
    ] {
        assert_eq!(stream.next().await.data, want);
    }
}

/// What a lax client makes of a stream: one that dispatches at every blank line once any field
/// was seen, even with no data, as Python's `httpx-sse` 0.4 does (its decoder keeps the last
/// event id across events, so after the first event with an id every blank line dispatches).
fn lax_events(stream: &str) -> Vec<(String, String)> {
    let (mut events, mut name, mut data, mut last_id, mut retry) = (
        Vec::new(),
        String::new(),
        Vec::<&str>::new(),
        String::new(),
        false,
    );
    // Complete lines only: what follows the last LF is not a line yet.
    for line in stream
        .split_inclusive('\n')
        .filter_map(|l| l.strip_suffix('\n'))
    {
        if line.is_empty() {
            if !name.is_empty() || !data.is_empty() || !last_id.is_empty() || retry {
                events.push((std::mem::take(&mut name), data.join("\n")));
                data.clear();
                retry = false;
            }
            continue;
        }
        let (field, value) = line.split_once(':').unwrap_or((line, ""));
        let value = value.strip_prefix(' ').unwrap_or(value);
        match field {
            "event" => name = value.to_owned(),
            "data" => data.push(value),
            "id" => last_id = value.to_owned(),
            "retry" => retry = true,
            _ => {}
        }
    }
    events
}

/// The opening `retry:`, heartbeats and the farewell carry no blank line, so a lax client (see
/// [`lax_events`]) sees exactly the events published, none empty.
#[tokio::test]
async fn a_lax_client_sees_no_empty_events() {
    let server =
        TestServer::start(local(), |b| b.heartbeat(Some(Duration::from_millis(100)))).await;
    let mut response = client()
        .get(server.url("/sse/event-stream?eventName=e&sessionId=s1"))
        .send()
        .await
        .unwrap();
    server.wait_for_streams(1).await;
    let mut seen = String::new();
    // Heartbeats before, between and after the two events.
    let pause = Duration::from_millis(350);
    for n in 0..2 {
        let deadline = tokio::time::Instant::now() + pause;
        while let Ok(Some(chunk)) = tokio::time::timeout_at(deadline, response.chunk())
            .await
            .unwrap_or(Ok(None))
        {
            seen.push_str(std::str::from_utf8(&chunk).unwrap());
        }
        server
            .publish(json!({"eventName": "e", "sessionId": "s1", "payload": n}))
            .await;
    }
    let deadline = tokio::time::Instant::now() + pause;
    while !seen.contains("data: 1\n\n") || tokio::time::Instant::now() < deadline {
        match tokio::time::timeout(WAIT, response.chunk()).await {
            Ok(Ok(Some(chunk))) => seen.push_str(std::str::from_utf8(&chunk).unwrap()),
            other => panic!("the stream broke off: {other:?}; seen {seen:?}"),
        }
    }
    server.stop().await;
    while let Ok(Some(chunk)) = response.chunk().await {
        seen.push_str(std::str::from_utf8(&chunk).unwrap());
    }
    assert!(seen.matches(": heartbeat").count() >= 4, "{seen:?}");
    assert!(seen.ends_with("retry: 1000\n"), "{seen:?}");
    let events = lax_events(&seen);
    let data: Vec<&str> = events.iter().map(|(_, d)| d.as_str()).collect();
    assert_eq!(data, ["0", "1"], "what a lax client saw in {seen:?}");
}

#[tokio::test]
async fn the_emitter_timeout_ends_the_stream() {
    let server = TestServer::start(local(), |b| {
        b.emitter_timeout(Some(Duration::from_millis(500)))
    })
    .await;
    let started = std::time::Instant::now();
    let mut s = server.stream("eventName=e").await;
    s.until_end().await;
    let lived = started.elapsed();
    assert!(lived >= Duration::from_millis(440), "{lived:?}");
    server.wait_for_streams(0).await;
    assert_eq!(server.hub.stats().closed_timeout, 1);
}

#[tokio::test]
async fn streams_are_unregistered_when_clients_go_away() {
    let server = server().await;
    let clients: Vec<SseClient> = futures_util::future::join_all((0..5).map(|i| {
        let query = format!("eventName=e&sessionId=s{}", i % 2);
        let server = &server;
        async move { server.stream(&query).await }
    }))
    .await;
    server.wait_for_streams(5).await;
    assert_eq!(server.health().await.1["streams"], 5);
    drop(clients);
    server.wait_for_streams(0).await;
    assert_eq!(server.health().await.1["streams"], 0);
    assert_eq!(server.hub.stats().closed_client_gone, 5);
}

#[tokio::test]
async fn publish_errors_are_json_and_publish_nothing() {
    let server = TestServer::start_with(
        local(),
        |b| b,
        |r| r.config(router_config(|c| c.max_publish_body = 1024)),
    )
    .await;
    let mut s = server.stream("eventName=*").await;
    server.wait_for_streams(1).await;
    let raw = |body: &'static str| {
        let client = client();
        let url = server.url("/sse/publish");
        async move {
            let r = client
                .post(url)
                .header("content-type", "application/json")
                .body(body)
                .send()
                .await
                .unwrap();
            let status = r.status().as_u16();
            (status, r.json::<serde_json::Value>().await.unwrap())
        }
    };
    for (body, status) in [
        ("{not json", 400),
        (r#"{"payload": 1}"#, 400),
        (r#"{"eventName": "a\nb", "payload": 1}"#, 400),
        (r#"{"eventName": "e", "id": "1\r2", "payload": 1}"#, 400),
        (
            r#"{"eventName": "e", "payload": 1, "sessionID": "typo"}"#,
            400,
        ),
        (r#"{"eventName": "e"}"#, 400),
    ] {
        let (got, json) = raw(body).await;
        assert_eq!(got, status, "{body}: {json}");
        assert!(json["message"].is_string(), "{json}");
    }
    let big = format!(r#"{{"eventName":"e","payload":"{}"}}"#, "x".repeat(2000));
    let r = client()
        .post(server.url("/sse/publish"))
        .header("content-type", "application/json")
        .body(big)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);
    // Only JSON: no content type at all, or one that merely starts like JSON, is what a web page
    // can send cross-origin without a preflight.
    // Oversized names and ids, and a `null` session (a broadcast leaves the field out).
    for (body, what) in [
        (
            json!({"eventName": "e".repeat(300), "payload": 1}),
            "eventName",
        ),
        (
            json!({"eventName": "e", "id": "i".repeat(300), "payload": 1}),
            "id",
        ),
        (
            json!({"eventName": "e", "sessionId": "s".repeat(300), "payload": 1}),
            "sessionId",
        ),
        (
            json!({"eventName": "e", "sessionId": null, "payload": 1}),
            "sessionId is null",
        ),
    ] {
        let (status, answer) = server.publish(body).await;
        assert_eq!(status, 400, "{what}: {answer}");
        assert!(
            answer["message"].as_str().unwrap().contains(what),
            "{answer}"
        );
    }
    for content_type in [Some("text/plain"), None, Some("application/jsonp-evil")] {
        let mut request = client()
            .post(server.url("/sse/publish"))
            .body(r#"{"eventName":"e","payload":1}"#);
        if let Some(ct) = content_type {
            request = request.header("content-type", ct);
        }
        let r = request.send().await.unwrap();
        assert_eq!(r.status(), 415, "{content_type:?}");
    }
    let r = client()
        .get(server.url("/sse/publish"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 405);
    let r = client().get(server.url("/nope")).send().await.unwrap();
    assert_eq!(r.status(), 404);

    assert_eq!(server.hub.stats().published, 0);
    assert_eq!(server.router.stats().publish_too_large, 1);
    assert!(s.next_within(Duration::from_millis(300)).await.is_none());
    // The stream is still healthy: a good publish arrives.
    server
        .publish(json!({"eventName": "e", "payload": "ok"}))
        .await;
    assert_eq!(s.next().await.data, "ok");
}

#[tokio::test]
async fn the_publish_token_guards_publishing() {
    let server = TestServer::start_with(
        local(),
        |b| b,
        |r| r.config(router_config(|c| c.publish_token = Some("t0ken".into()))),
    )
    .await;
    let body = json!({"eventName": "e", "payload": 1});
    assert_eq!(server.publish(body.clone()).await.0, 401);
    for auth in ["Bearer wrong", "Basic dDBrZW4=", "Bearer t0ken"] {
        let r = client()
            .post(server.url("/sse/publish"))
            .header("authorization", auth)
            .json(&body)
            .send()
            .await
            .unwrap();
        let expected = if auth == "Bearer t0ken" { 202 } else { 401 };
        assert_eq!(r.status(), expected, "{auth}");
    }
    assert_eq!(server.hub.stats().published, 1);
}

fn jwt(sub: &str, secret: &[u8]) -> String {
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 600;
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &json!({"sub": sub, "exp": exp}),
        &EncodingKey::from_secret(secret),
    )
    .unwrap()
}

#[tokio::test]
async fn the_jwt_resolver_takes_the_session_from_sub() {
    let server =
        TestServer::start_with(local(), |b| b, |r| r.resolver(JwtSessions::hs256("s3cret"))).await;
    let token = jwt("user-7", b"s3cret");
    let mut by_query = server
        .stream(&format!("eventName=e&access_token={token}"))
        .await;
    let mut by_header = SseClient::connect(
        &server.url("/sse/event-stream?eventName=e"),
        &[("authorization", &format!("Bearer {token}"))],
    )
    .await;
    // sessionId in the query means nothing in JWT mode.
    let mut spoofing = server.stream("eventName=e&sessionId=user-7").await;
    server.wait_for_streams(3).await;
    server
        .hub
        .publish(SendSseEvent::new("e", json!("secret")).to_session("user-7"))
        .await
        .unwrap();
    assert_eq!(by_query.next().await.data, "secret");
    assert_eq!(by_header.next().await.data, "secret");
    assert!(
        spoofing
            .next_within(Duration::from_millis(300))
            .await
            .is_none()
    );

    // Not valid yet (`nbf` an hour ahead), or with a critical header extension nobody here
    // understands: refused like a forged one.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let early = jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &json!({"sub": "user-7", "exp": now + 7200, "nbf": now + 3600}),
        &EncodingKey::from_secret(b"s3cret"),
    )
    .unwrap();
    let mut critical = Header::new(Algorithm::HS256);
    critical.crit = Some(vec!["exp-extension".to_owned()]);
    let critical = jsonwebtoken::encode(
        &critical,
        &json!({"sub": "user-7", "exp": now + 600}),
        &EncodingKey::from_secret(b"s3cret"),
    )
    .unwrap();
    for (what, token) in [("nbf ahead", early), ("crit", critical)] {
        let r = client()
            .get(server.url(&format!(
                "/sse/event-stream?eventName=e&access_token={token}"
            )))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401, "{what}");
    }

    let forged = jwt("user-7", b"wrong");
    let r = client()
        .get(server.url(&format!(
            "/sse/event-stream?eventName=e&access_token={forged}"
        )))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["error"], "unauthorized");
}

#[tokio::test]
async fn http2_prior_knowledge_works() {
    let server = server().await;
    let h2 = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    let mut a = SseClient::connect_with(
        &h2,
        &server.url("/sse/event-stream?eventName=e&sessionId=a"),
        &[],
    )
    .await;
    let mut b = SseClient::connect_with(
        &h2,
        &server.url("/sse/event-stream?eventName=e&sessionId=b"),
        &[],
    )
    .await;
    server.wait_for_streams(2).await;
    let r = h2
        .post(server.url("/sse/publish"))
        .json(&json!({"eventName": "e", "sessionId": "b", "payload": "over h2"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.version(), reqwest::Version::HTTP_2);
    assert_eq!(r.status(), 202);
    assert_eq!(b.next().await.data, "over h2");
    assert!(a.next_within(Duration::from_millis(200)).await.is_none());
}

/// Issue 16, findings 2 and 9: HTTP/2 streams whose client never reads (a 1 KiB window, never
/// opened) and 200 KB events for each. A stream is closed as slow once 1 MiB waits for it, its
/// queue is let go at once, and it counts against `--max-streams` while hyper still holds it;
/// 10 s later, still unread, its connection is dropped.
#[tokio::test]
async fn http2_streams_nobody_reads_are_bounded_in_bytes_and_count_until_freed() {
    use common::cluster::{HubProcess, free_port};
    const STREAMS: usize = 20;
    const EVENTS_EACH: usize = 30;
    let args = [
        "--max-streams",
        "20",
        "--max-stream-bytes",
        "1048576",
        "--replay-events",
        "0",
    ]
    .map(String::from);
    let hub = HubProcess::ready(free_port(), &args).await;
    let rss_before = hub.metric("process_resident_memory_bytes").await;

    let tcp = tokio::net::TcpStream::connect(hub.addr()).await.unwrap();
    let (h2, connection) = h2::client::Builder::new()
        .initial_window_size(1024)
        .handshake::<_, bytes::Bytes>(tcp)
        .await
        .unwrap();
    let connection = tokio::spawn(connection);
    let mut unread = Vec::new();
    for n in 0..STREAMS {
        let mut h2 = h2.clone().ready().await.unwrap();
        let uri = hub.url(&format!("/sse/event-stream?eventName=big&sessionId=s{n}"));
        let request = http::Request::get(uri).body(()).unwrap();
        let (response, _) = h2.send_request(request, true).unwrap();
        let response = response.await.unwrap();
        assert_eq!(response.status(), 200);
        unread.push(response); // held, never read
    }
    hub.wait_streams(STREAMS as u64).await;

    let payload = "x".repeat(200_000);
    let http = reqwest::Client::new();
    for n in 0..STREAMS {
        for _ in 0..EVENTS_EACH {
            let r = http
                .post(hub.url("/sse/publish"))
                .json(
                    &json!({"eventName": "big", "sessionId": format!("s{n}"), "payload": payload}),
                )
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 202);
        }
    }
    // Delivery runs behind the publishes: wait until every event was either queued or found
    // its stream closed (20 sessions, each event delivered or dropped once its stream is gone).
    let deadline = std::time::Instant::now() + WAIT;
    while hub.metric("sse_events_received_total").await < (STREAMS * EVENTS_EACH) as f64 {
        assert!(
            std::time::Instant::now() < deadline,
            "events still in flight"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // A stream over its bound is closed by its own writer, a moment after the event that
    // filled it was received: wait (within the same deadline) for all of them.
    let slow = r#"sse_streams_closed_total{instance"#;
    let closed_slow = loop {
        let closed = common::get_text(&hub.url("/metrics"))
            .await
            .lines()
            .filter(|l| l.starts_with(slow) && l.contains(r#"reason="slow_client""#))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>();
        if closed >= STREAMS as f64 || std::time::Instant::now() >= deadline {
            break closed;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let rss_after = hub.metric("process_resident_memory_bytes").await;
    let grew = (rss_after - rss_before) / 1e6;
    eprintln!(
        "{STREAMS} unread HTTP/2 streams, {EVENTS_EACH} x 200 KB each: {closed_slow} closed as slow, resident memory {:.1} -> {:.1} MB",
        rss_before / 1e6,
        rss_after / 1e6
    );
    assert_eq!(
        closed_slow, STREAMS as f64,
        "every unread stream is closed as slow"
    );
    // Without the bound each stream would hold 30 x 200 KB = 6 MB (120 MB in all).
    assert!(grew < 40.0, "resident memory grew {grew:.1} MB");
    // Still held by hyper (not polled: the window is shut), so still counted: no 21st stream.
    let (body, _) = health(&hub.url("/healthz")).await;
    assert_eq!(body["streams"], STREAMS);
    let r = client()
        .get(hub.url("/sse/event-stream?eventName=big"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    // Still unread 10 s after being closed: the connection is dropped, and the streams go.
    let closed = std::time::Instant::now();
    let _ = tokio::time::timeout(Duration::from_secs(20), connection)
        .await
        .expect("the connection of unread streams is dropped");
    eprintln!(
        "the connection was dropped {:?} after the streams were closed",
        closed.elapsed()
    );
    hub.wait_streams(0).await;
    drop((unread, h2));
}

async fn health(url: &str) -> (serde_json::Value, u16) {
    let r = client().get(url).send().await.unwrap();
    let status = r.status().as_u16();
    (r.json().await.unwrap(), status)
}

#[tokio::test]
async fn graceful_shutdown_ends_open_streams_promptly() {
    let server = server().await;
    let mut streams = Vec::new();
    for i in 0..3 {
        streams.push(server.stream(&format!("eventName=e&sessionId=s{i}")).await);
    }
    server.wait_for_streams(3).await;
    let hub = server.hub.clone();
    let took = server.stop().await;
    assert!(took < Duration::from_secs(3), "drain took {took:?}");
    for s in &mut streams {
        s.until_end().await;
    }
    assert_eq!(hub.stats().closed_shutdown, 3);
}

#[tokio::test]
async fn a_client_that_stops_reading_is_closed_and_others_get_everything() {
    let server = TestServer::start(local(), |b| b.queue_size(128)).await;
    let mut reader = server.stream("eventName=e&sessionId=s").await;
    // A client that sends its request and then never reads a byte.
    let mut stalled = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    stalled
        .write_all(b"GET /sse/event-stream?eventName=e&sessionId=s HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    server.wait_for_streams(2).await;
    common::a_stalled_client_is_dropped_while_a_reader_gets_everything(
        &server,
        &mut reader,
        &mut stalled,
    )
    .await;
}

#[tokio::test]
async fn health_reports_backend_instance_and_streams() {
    let backend = LocalBackend::new();
    let server = TestServer::start(Arc::new(backend.clone()), |b| b.instance_id("i-1")).await;
    let _s = server.stream("eventName=e").await;
    server.wait_for_streams(1).await;
    let (status, body) = server.health().await;
    assert_eq!(status, 200);
    assert_eq!(
        body,
        json!({"status": "ok", "backend": "local", "instance": "i-1", "app": "sse-fanout", "streams": 1})
    );
    sse_fanout::FanoutBackend::close(&backend).await.unwrap();
    let (status, body) = server.health().await;
    assert_eq!(status, 503);
    assert_eq!(body["status"], "down");
}

#[tokio::test]
async fn the_demo_page_is_served_by_the_router() {
    let server = TestServer::start_with(
        local(),
        |b| b,
        |r| r.static_page("/", "text/html; charset=utf-8", "<h1>demo</h1>"),
    )
    .await;
    let r = client().get(server.url("/")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "text/html; charset=utf-8");
    assert_eq!(r.text().await.unwrap(), "<h1>demo</h1>");
}

#[tokio::test]
async fn a_reconnecting_client_gets_what_it_missed_then_live_events() {
    let server = server().await;
    let mut first = server.stream("eventName=e&sessionId=s1").await;
    server.wait_for_streams(1).await;
    let publish = |payload: &'static str| {
        server.publish(json!({"eventName": "e", "sessionId": "s1", "payload": payload}))
    };
    publish("1").await;
    let seen = first.next().await;
    drop(first);
    server.wait_for_streams(0).await;
    publish("2").await;
    publish("3").await;
    server
        .publish(json!({"eventName": "other", "sessionId": "s1", "payload": "x"}))
        .await;
    server
        .publish(json!({"eventName": "e", "sessionId": "s2", "payload": "x"}))
        .await;

    // The header a browser sends by itself on reconnect.
    let mut resumed = SseClient::connect(
        &server.url("/sse/event-stream?eventName=e&sessionId=s1"),
        &[("last-event-id", &seen.id)],
    )
    .await;
    assert_eq!(resumed.next().await.data, "2");
    assert_eq!(resumed.next().await.data, "3");
    server.wait_for_streams(1).await;
    publish("4").await;
    assert_eq!(resumed.next().await.data, "4");
    // The query parameter, for a first connection after a page load.
    let mut by_query = server
        .stream(&format!("eventName=e&sessionId=s1&lastEventId={}", seen.id))
        .await;
    for expected in ["2", "3", "4"] {
        assert_eq!(by_query.next().await.data, expected);
    }
}

#[tokio::test]
async fn an_unknown_last_event_id_is_signalled_once_at_the_start() {
    let server = server().await;
    let mut s = SseClient::connect(
        &server.url("/sse/event-stream?eventName=e"),
        &[("last-event-id", "no-such-id")],
    )
    .await;
    let reset = s.next().await;
    assert_eq!(reset.event, sse_fanout::RESET_EVENT);
    assert_eq!(reset.data, r#"{"lastEventId":"no-such-id"}"#);
    server.wait_for_streams(1).await;
    server
        .publish(json!({"eventName": "e", "payload": "live"}))
        .await;
    assert_eq!(s.next().await.data, "live");
}

/// Ids are unique: a second publish under an id this instance's history holds is refused with
/// 409 (it would be taken for a redelivery and dropped), and nothing in between is lost when a
/// client resumes after that id.
#[tokio::test]
async fn a_reused_publisher_id_is_refused_and_replay_loses_nothing() {
    let server = server().await;
    let body = |id: Option<&str>, payload: &str| {
        let mut body = json!({"eventName": "e", "sessionId": "s1", "payload": payload});
        if let Some(id) = id {
            body["id"] = json!(id);
        }
        body
    };
    assert_eq!(server.publish(body(Some("dup"), "first")).await.0, 202);
    assert_eq!(server.publish(body(None, "a")).await.0, 202);
    let (status, answer) = server.publish(body(Some("dup"), "again")).await;
    assert_eq!(status, 409, "{answer}");
    assert_eq!(answer["error"], "duplicate_id");
    assert_eq!(server.publish(body(None, "b")).await.0, 202);
    let mut resumed = SseClient::connect(
        &server.url("/sse/event-stream?eventName=e&sessionId=s1"),
        &[("last-event-id", "dup")],
    )
    .await;
    assert_eq!(resumed.next().await.data, "a");
    assert_eq!(resumed.next().await.data, "b");
    assert!(
        resumed
            .next_within(Duration::from_millis(300))
            .await
            .is_none()
    );
}

#[tokio::test]
async fn stream_limits_answer_503_429_and_400() {
    let server = TestServer::start_with(
        local(),
        |b| b.stream_limits(Some(3), Some(2)),
        |r| {
            r.resolver(sse_fanout::DevSessions)
                .config(router_config(|c| c.max_event_names = 2))
        },
    )
    .await;
    let _a = server.stream("eventName=e&sessionId=s").await;
    let _b = server.stream("eventName=e&sessionId=s").await;
    let third = client()
        .get(server.url("/sse/event-stream?eventName=e&sessionId=s"))
        .send()
        .await
        .unwrap();
    assert_eq!(third.status(), 429);
    assert_eq!(third.headers()["retry-after"], "5");
    let _c = server.stream("eventName=e&sessionId=t").await;
    let fourth = client()
        .get(server.url("/sse/event-stream?eventName=e&sessionId=u"))
        .send()
        .await
        .unwrap();
    assert_eq!(fourth.status(), 503);
    assert_eq!(fourth.headers()["retry-after"], "5");
    let body: serde_json::Value = fourth.json().await.unwrap();
    assert_eq!(body["error"], "too_many_streams");
    let names = client()
        .get(server.url("/sse/event-stream?eventName=a,b,c"))
        .send()
        .await
        .unwrap();
    assert_eq!(names.status(), 400);
    let stats = server.hub.stats();
    assert_eq!(
        (stats.rejected_instance_limit, stats.rejected_session_limit),
        (1, 1)
    );
}

#[tokio::test]
async fn shutdown_tells_clients_to_come_back_soon() {
    let server = server().await;
    let mut response = client()
        .get(server.url("/sse/event-stream?eventName=e"))
        .send()
        .await
        .unwrap();
    server.wait_for_streams(1).await;
    let stop = tokio::spawn(server.stop());
    let mut seen = String::new();
    while let Some(chunk) = tokio::time::timeout(WAIT, response.chunk())
        .await
        .unwrap()
        .unwrap()
    {
        seen.push_str(std::str::from_utf8(&chunk).unwrap());
    }
    assert!(seen.ends_with("retry: 1000\n"), "{seen:?}");
    stop.await.unwrap();
}

/// The hub says at startup what its configuration leaves open, and will not run in development
/// mode (clients name their own sessions) beyond loopback unless told it is meant.
#[tokio::test]
async fn the_hub_binary_warns_of_what_is_open_and_refuses_dev_mode_beyond_loopback() {
    let hub = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_sse-fanout"))
            .args(args)
            .env("RUST_LOG", "warn")
            .stderr(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    // Refused before it binds anything: nothing listens beyond loopback.
    let refused = hub(&["--listen", "0.0.0.0:0"]).wait_with_output().unwrap();
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("--allow-dev-sessions"), "{stderr}");

    let port = common::cluster::free_port();
    let addr = format!("127.0.0.1:{port}");
    let mut child = hub(&[
        "--listen",
        &addr,
        "--cors-origin",
        "*",
        "--cors-credentials",
    ]);
    common::cluster::wait_healthy(port).await;
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    // The log goes to standard output.
    let mut log = String::new();
    std::io::Read::read_to_string(child.stdout.as_mut().unwrap(), &mut log).unwrap();
    assert!(child.wait().unwrap().success());
    for warning in [
        "development mode",
        "no --publish-token",
        "--cors-origin '*' with --cors-credentials",
    ] {
        assert!(log.contains(warning), "{warning} not in {log}");
    }
}

/// The hub binary on SIGTERM: streams get their last `retry:` and end, the process exits 0 soon.
#[tokio::test]
async fn the_hub_binary_drains_on_sigterm_and_exits_zero() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let addr = format!("127.0.0.1:{port}");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_sse-fanout"))
        .args(["--listen", &addr])
        .env("RUST_LOG", "warn")
        .spawn()
        .unwrap();
    let url = format!("http://{addr}");
    let deadline = std::time::Instant::now() + WAIT;
    let mut response = loop {
        match client()
            .get(format!("{url}/sse/event-stream?eventName=e"))
            .send()
            .await
        {
            Ok(r) => break r,
            Err(_) if std::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("the hub did not come up: {e}"),
        }
    };
    let first = response.chunk().await.unwrap().unwrap();
    assert!(first.starts_with(b": ok"));
    let sent = std::time::Instant::now();
    let status = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let mut rest = Vec::new();
    while let Some(chunk) = tokio::time::timeout(WAIT, response.chunk())
        .await
        .unwrap()
        .unwrap()
    {
        rest.extend_from_slice(&chunk);
    }
    assert!(
        rest.ends_with(b"retry: 1000\n"),
        "{:?}",
        String::from_utf8_lossy(&rest)
    );
    let exit = loop {
        if let Some(exit) = child.try_wait().unwrap() {
            break exit;
        }
        assert!(
            sent.elapsed() < Duration::from_secs(12),
            "still running after SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(exit.success(), "{exit}");
}

#[tokio::test]
async fn prometheus_metrics_count_what_happened() {
    let server = TestServer::start_with(
        local(),
        |b| b.instance_id("metrics-test"),
        |r| r.config(router_config(|c| c.metrics_path = Some("/metrics".into()))),
    )
    .await;
    let mut s = server.stream("eventName=e").await;
    server.wait_for_streams(1).await;
    server
        .publish(json!({"eventName": "e", "payload": 1}))
        .await;
    s.next().await;
    let r = client().get(server.url("/metrics")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let text = r.text().await.unwrap();
    for line in [
        r#"sse_open_streams{instance="metrics-test"} 1"#,
        r#"sse_events_published_total{instance="metrics-test"} 1"#,
        r#"sse_events_delivered_total{instance="metrics-test"} 1"#,
        r#"sse_backend_up{instance="metrics-test",backend="local"} 1"#,
        r#"sse_backend_reconnects_total{instance="metrics-test",backend="local"} 0"#,
        r#"sse_publish_duration_seconds_count{instance="metrics-test"} 1"#,
        r#"sse_replays_total{instance="metrics-test",source="local"} 0"#,
        r#"sse_replays_total{instance="metrics-test",source="broker"} 0"#,
        r#"sse_replays_total{instance="metrics-test",source="reset"} 0"#,
        r#"sse_history_reads_total{instance="metrics-test"} 0"#,
        r#"sse_events_dropped_total{instance="metrics-test",reason="duplicate"} 0"#,
        "sse_history_read_duration_seconds_count{instance=\"metrics-test\"} 0",
    ] {
        assert!(text.contains(line), "{line} missing in:\n{text}");
    }
}

/// Every family on `/metrics` says what it is (`# HELP` beside `# TYPE`), and the process
/// metrics operators expect from any exporter are there, with the build's version.
#[tokio::test]
async fn metrics_have_help_text_process_metrics_and_build_info() {
    let server = TestServer::start_with(
        local(),
        |b| b.instance_id("help-test"),
        |r| r.config(router_config(|c| c.metrics_path = Some("/metrics".into()))),
    )
    .await;
    let text = common::get_text(&server.url("/metrics")).await;
    let families: Vec<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split(' ').next())
        .collect();
    assert!(families.len() > 20, "{text}");
    for family in &families {
        let help = format!("# HELP {family} ");
        assert!(
            text.lines()
                .any(|l| l.starts_with(&help) && l.len() > help.len()),
            "{family} has no help text in:\n{text}"
        );
    }
    for family in [
        "process_cpu_seconds_total",
        "process_resident_memory_bytes",
        "process_open_fds",
        "process_max_fds",
        "process_start_time_seconds",
        "sse_build_info",
        "sse_route_subscribe_duration_seconds",
    ] {
        assert!(families.contains(&family), "{family} missing in:\n{text}");
    }
    let version = format!(
        "sse_build_info{{instance=\"help-test\",version=\"{}\"}} 1",
        env!("CARGO_PKG_VERSION")
    );
    assert!(text.contains(&version), "{version} missing in:\n{text}");
    let rss = text
        .lines()
        .find_map(|l| l.strip_prefix("process_resident_memory_bytes "))
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or(0.0);
    assert!(rss > 1_000_000.0, "resident memory {rss} in:\n{text}");
}

#[tokio::test]
async fn cors_lets_allowed_origins_in_and_is_off_by_default() {
    let server = TestServer::start_with(
        local(),
        |b| b,
        |r| {
            r.config(router_config(|c| {
                c.cors = Some(sse_fanout::hyper::Cors {
                    allowed_origins: vec!["https://app.example".into()],
                    allow_credentials: true,
                })
            }))
        },
    )
    .await;
    let preflight = client()
        .request(reqwest::Method::OPTIONS, server.url("/sse/publish"))
        .header("origin", "https://app.example")
        .header("access-control-request-method", "POST")
        .send()
        .await
        .unwrap();
    assert_eq!(preflight.status(), 204);
    assert_eq!(
        preflight.headers()["access-control-allow-origin"],
        "https://app.example"
    );
    assert_eq!(
        preflight.headers()["access-control-allow-credentials"],
        "true"
    );
    assert!(
        preflight.headers()["access-control-allow-methods"]
            .to_str()
            .unwrap()
            .contains("POST")
    );
    let stream = SseClient::connect(
        &server.url("/sse/event-stream?eventName=e"),
        &[("origin", "https://app.example")],
    )
    .await;
    assert_eq!(
        stream.headers["access-control-allow-origin"],
        "https://app.example"
    );
    let other = SseClient::connect(
        &server.url("/sse/event-stream?eventName=e"),
        &[("origin", "https://evil.example")],
    )
    .await;
    assert!(other.headers.get("access-control-allow-origin").is_none());

    let plain = server_without_cors().await;
    let r = client()
        .get(plain.url("/healthz"))
        .header("origin", "https://app.example")
        .send()
        .await
        .unwrap();
    assert!(r.headers().get("access-control-allow-origin").is_none());
}

/// `*` with credentials: any origin may read without credentials, only a listed one with them,
/// and the opaque `null` origin (sandboxed frames, `file:` pages) not at all unless listed.
#[tokio::test]
async fn a_wildcard_origin_never_gets_credentials() {
    let server = TestServer::start_with(
        local(),
        |b| b,
        |r| {
            r.config(router_config(|c| {
                c.cors = Some(sse_fanout::hyper::Cors {
                    allowed_origins: vec!["*".into(), "https://app.example".into()],
                    allow_credentials: true,
                })
            }))
        },
    )
    .await;
    let headers = |origin: &'static str| {
        let url = server.url("/healthz");
        async move {
            client()
                .get(url)
                .header("origin", origin)
                .send()
                .await
                .unwrap()
                .headers()
                .clone()
        }
    };
    let listed = headers("https://app.example").await;
    assert_eq!(listed["access-control-allow-credentials"], "true");
    let any = headers("https://evil.example").await;
    assert_eq!(any["access-control-allow-origin"], "https://evil.example");
    assert!(
        any.get("access-control-allow-credentials").is_none(),
        "{any:?}"
    );
    let null = headers("null").await;
    assert!(
        null.get("access-control-allow-origin").is_none(),
        "{null:?}"
    );
}

async fn server_without_cors() -> TestServer {
    server().await
}
