//! What goes over the socket, read byte by byte: the HTTP/1.1 framing of event streams served
//! directly on their connection, HTTP/1.0 clients, and the connections left to hyper.
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{SseClient, TestServer, WAIT};
use serde_json::json;
use sse_fanout::LocalBackend;
use sse_fanout::hyper::ServeOptions;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

async fn server_with(options: ServeOptions) -> TestServer {
    TestServer::start_serving(
        Arc::new(LocalBackend::new()),
        |b| b,
        |r| r.resolver(sse_fanout::DevSessions),
        options,
    )
    .await
}

async fn server() -> TestServer {
    server_with(ServeOptions::default()).await
}

/// A raw HTTP/1 client: what it sent and everything it has read.
struct Raw {
    socket: TcpStream,
    read: Vec<u8>,
}

impl Raw {
    async fn connect(server: &TestServer) -> Raw {
        Raw {
            socket: TcpStream::connect(server.addr).await.unwrap(),
            read: Vec::new(),
        }
    }

    async fn send(&mut self, bytes: &[u8]) {
        self.socket.write_all(bytes).await.unwrap();
    }

    /// Reads until `pattern` has been read; returns everything read so far.
    async fn until(&mut self, pattern: &str) -> String {
        tokio::time::timeout(WAIT, async {
            while !String::from_utf8_lossy(&self.read).contains(pattern) {
                let mut buf = [0; 4096];
                let n = self.socket.read(&mut buf).await.unwrap();
                assert!(
                    n > 0,
                    "the connection ended before {pattern:?}: {}",
                    self.text()
                );
                self.read.extend_from_slice(&buf[..n]);
            }
        })
        .await
        .unwrap_or_else(|_| panic!("no {pattern:?} within the wait: {}", self.text()));
        self.text()
    }

    /// Reads until the server closes the connection.
    async fn until_closed(&mut self) -> String {
        tokio::time::timeout(WAIT, async {
            loop {
                let mut buf = [0; 4096];
                match self.socket.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => self.read.extend_from_slice(&buf[..n]),
                }
            }
        })
        .await
        .expect("the server did not close the connection");
        self.text()
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.read).into_owned()
    }
}

/// The response head and the body after it.
fn split(response: &str) -> (&str, &str) {
    response.split_once("\r\n\r\n").unwrap()
}

/// Decodes a chunked body; returns the chunks and whether the last (empty) chunk came.
fn dechunk(mut body: &str) -> (Vec<String>, bool) {
    let mut chunks = Vec::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let len = usize::from_str_radix(size, 16).unwrap();
        if len == 0 {
            assert_eq!(rest, "\r\n", "after the last chunk");
            return (chunks, true);
        }
        chunks.push(rest[..len].to_owned());
        assert_eq!(&rest[len..len + 2], "\r\n");
        body = &rest[len + 2..];
    }
    assert!(body.is_empty(), "a partial chunk: {body:?}");
    (chunks, false)
}

#[tokio::test]
async fn an_event_stream_is_http_1_1_chunks_one_frame_each_ending_with_the_last_chunk() {
    let server = server().await;
    let mut raw = Raw::connect(&server).await;
    raw.send(b"GET /sse/event-stream?eventName=e&sessionId=s HTTP/1.1\r\nHost: x\r\n\r\n")
        .await;
    let response = raw.until("retry: 3000\n\r\n").await;
    let (head, body) = split(&response);
    let mut lines = head.lines();
    assert_eq!(lines.next(), Some("HTTP/1.1 200 OK"));
    let headers: Vec<&str> = lines.collect();
    for expected in [
        "content-type: text/event-stream",
        "cache-control: no-cache",
        "transfer-encoding: chunked",
        "connection: close",
    ] {
        assert!(headers.contains(&expected), "{expected} in {headers:?}");
    }
    assert!(
        headers.iter().any(|h| h.starts_with("date: ")),
        "{headers:?}"
    );
    assert_eq!(
        dechunk(body),
        (vec![": ok\nretry: 3000\n".to_owned()], false)
    );
    server.wait_for_streams(1).await;

    let (_, answer) = server
        .publish(json!({"eventName": "e", "sessionId": "s", "payload": "line 1\nline 2"}))
        .await;
    let id = answer["id"].as_str().unwrap().to_owned();
    let event = format!("id: {id}\nevent: e\ndata: line 1\ndata: line 2\n\n");
    raw.until(&event).await;

    server.stop().await;
    let response = raw.until_closed().await;
    let (chunks, ended) = dechunk(split(&response).1);
    assert_eq!(
        chunks,
        vec![
            ": ok\nretry: 3000\n".to_owned(),
            event,
            "retry: 1000\n".to_owned()
        ]
    );
    assert!(ended, "the body ends with the last chunk: {response:?}");
}

#[tokio::test]
async fn an_http_1_0_client_gets_the_stream_unchunked_until_the_connection_closes() {
    let server = server().await;
    let mut raw = Raw::connect(&server).await;
    raw.send(b"GET /sse/event-stream?eventName=e HTTP/1.0\r\n\r\n")
        .await;
    let response = raw.until("retry: 3000\n").await;
    let (head, body) = split(&response);
    assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
    assert!(!head.contains("transfer-encoding"), "{head}");
    assert!(head.contains("connection: close"), "{head}");
    assert_eq!(body, ": ok\nretry: 3000\n");
    server.wait_for_streams(1).await;
    server
        .publish(json!({"eventName": "e", "payload": "to all"}))
        .await;
    raw.until("event: e\ndata: to all\n\n").await;
    server.stop().await;
    assert!(
        raw.until_closed()
            .await
            .ends_with("data: to all\n\nretry: 1000\n")
    );
}

#[tokio::test]
async fn an_error_on_a_stream_request_is_a_whole_json_response_then_the_connection_closes() {
    let server = server().await;
    let mut raw = Raw::connect(&server).await;
    raw.send(b"GET /sse/event-stream HTTP/1.1\r\nHost: x\r\n\r\n")
        .await;
    let response = raw.until_closed().await;
    let (head, body) = split(&response);
    assert!(head.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{head}");
    assert!(head.contains("content-type: application/json"), "{head}");
    assert!(
        head.contains(&format!("content-length: {}", body.len())),
        "{head}"
    );
    let body: serde_json::Value = serde_json::from_str(body).unwrap();
    assert_eq!(body["error"], "bad_request");
}

#[tokio::test]
async fn a_keep_alive_connection_may_ask_for_a_stream_after_another_request() {
    let server = server().await;
    let mut raw = Raw::connect(&server).await;
    raw.send(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").await;
    raw.until("\"status\":\"ok\"").await;
    // Same connection, now served by hyper: the stream works all the same.
    raw.send(b"GET /sse/event-stream?eventName=e HTTP/1.1\r\nHost: x\r\n\r\n")
        .await;
    raw.until(": ok\nretry: 3000\n").await;
    server.wait_for_streams(1).await;
    server
        .publish(json!({"eventName": "e", "payload": "after health"}))
        .await;
    raw.until("data: after health\n\n").await;
}

#[tokio::test]
async fn a_request_head_that_arrives_in_pieces_is_served_by_hyper() {
    let server = server().await;
    let mut raw = Raw::connect(&server).await;
    raw.send(b"GET /sse/event-stream?eventName=e HTTP/1.1\r\nHo")
        .await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    raw.send(b"st: x\r\n\r\n").await;
    let response = raw.until(": ok\nretry: 3000\n").await;
    assert!(response.starts_with("HTTP/1.1 200 OK\r\n"));
    assert!(
        !split(&response).0.contains("connection: close"),
        "{response}"
    );
    server.wait_for_streams(1).await;
    server
        .publish(json!({"eventName": "e", "payload": "whole"}))
        .await;
    raw.until("data: whole\n\n").await;
}

#[tokio::test]
async fn a_connection_that_sends_nothing_is_dropped_after_the_first_request_timeout() {
    let mut options = ServeOptions::default();
    options.first_request_timeout = Duration::from_millis(200);
    let server = server_with(options).await;
    let mut raw = Raw::connect(&server).await;
    let started = std::time::Instant::now();
    assert_eq!(raw.until_closed().await, "");
    assert!(started.elapsed() >= Duration::from_millis(150));
    // A connection that does send its request is served.
    let mut s = server.stream("eventName=e").await;
    assert_eq!(s.status, 200);
    server.wait_for_streams(1).await;
    server
        .publish(json!({"eventName": "e", "payload": 1}))
        .await;
    assert_eq!(s.next().await.data, "1");
}

#[tokio::test]
async fn with_direct_streams_off_hyper_serves_every_stream() {
    let mut options = ServeOptions::default();
    options.direct_streams = false;
    let server = server_with(options).await;
    let mut s = server.stream("eventName=e&sessionId=s").await;
    assert_eq!(s.status, 200);
    // hyper keeps the connection open after a response; the direct path says it will close it.
    assert!(s.headers.get("connection").is_none(), "{:?}", s.headers);
    server.wait_for_streams(1).await;
    server
        .publish(json!({"eventName": "e", "sessionId": "s", "payload": "via hyper"}))
        .await;
    assert_eq!(s.next().await.data, "via hyper");

    let direct = server_with(ServeOptions::default()).await;
    let d = SseClient::connect(&direct.url("/sse/event-stream?eventName=e"), &[]).await;
    assert_eq!(d.headers["connection"], "close");
}

/// A client that pushes bytes up its open event stream (nothing an event-stream client does) has
/// them read in bulk and dropped, and once it has sent more than 1 MiB its stream ends; the
/// server's other streams are untouched.
#[tokio::test]
async fn junk_sent_up_a_direct_stream_is_dropped_and_ends_it_past_a_bound() {
    let server = server().await;
    let mut other = server.stream("eventName=e").await;
    let mut raw = Raw::connect(&server).await;
    raw.send(b"GET /sse/event-stream?eventName=e HTTP/1.1\r\nHost: x\r\n\r\n")
        .await;
    raw.until("retry: 3000\n\r\n").await;
    server.wait_for_streams(2).await;
    // A little junk is ignored: the stream stays and still delivers.
    raw.send(&[b'x'; 4096]).await;
    server
        .publish(json!({"eventName": "e", "payload": "still here"}))
        .await;
    raw.until("data: still here\n\n").await;
    assert_eq!(other.next().await.data, "still here");
    // More than 1 MiB: the server ends the stream (the writes may fail once it has).
    let junk = vec![b'x'; 64 * 1024];
    for _ in 0..32 {
        if raw.socket.write_all(&junk).await.is_err() {
            break;
        }
    }
    raw.until_closed().await;
    server.wait_for_streams(1).await;
    server
        .publish(json!({"eventName": "e", "payload": "others go on"}))
        .await;
    assert_eq!(other.next().await.data, "others go on");
}

/// A publish body over the limit, sent whole without `Expect: 100-continue` (as most HTTP
/// clients do): the client reads the `413` answer rather than a reset connection, every time.
#[tokio::test]
async fn an_oversized_publish_sent_whole_gets_its_413() {
    let server = server().await; // max_publish_body: 1 MiB
    for attempt in 0..3 {
        let mut raw = Raw::connect(&server).await;
        let body = format!(
            r#"{{"eventName":"e","payload":"{}"}}"#,
            "x".repeat(8 * 1024 * 1024)
        );
        let head = format!(
            "POST /sse/publish HTTP/1.1\r\nHost: x\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
            body.len()
        );
        raw.send(head.as_bytes()).await;
        raw.send(body.as_bytes()).await;
        let response = raw.until("payload_too_large").await;
        assert!(
            response.starts_with("HTTP/1.1 413 "),
            "attempt {attempt}: {response}"
        );
    }
}

/// Connections that never finish a request head (one byte, or a byte at a time), and keep-alive
/// connections left idle after a request, are closed once the head timeout has passed, while
/// the server goes on answering others.
#[tokio::test]
async fn unfinished_heads_and_idle_keep_alive_connections_are_closed_at_the_head_timeout() {
    let mut options = ServeOptions::default();
    options.head_timeout = Duration::from_millis(500);
    let server = server_with(options).await;
    let mut stuck = Vec::new();
    // Issue 16's case: 1 000 connections that send one byte.
    for _ in 0..1000 {
        let mut socket = TcpStream::connect(server.addr).await.unwrap();
        socket.write_all(b"G").await.unwrap();
        stuck.push(socket);
    }
    for _ in 0..20 {
        let mut raw = Raw::connect(&server).await;
        raw.send(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").await;
        raw.until("\"status\":\"ok\"").await;
        stuck.push(raw.socket);
    }
    let mut trickle = TcpStream::connect(server.addr).await.unwrap();
    let started = tokio::time::Instant::now();
    for byte in b"GET /healthz HTTP/1.1\r\nHost: x\r\n" {
        if trickle.write_all(&[*byte]).await.is_err() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stuck.push(trickle);
    let (status, _) = server.health().await;
    assert_eq!(status, 200, "the server answers while they wait");
    for (n, mut socket) in stuck.into_iter().enumerate() {
        let mut buf = [0; 1024];
        let closed = tokio::time::timeout(Duration::from_secs(5), async {
            loop {
                match socket.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {} // an error answer (408) before the close is fine
                }
            }
        })
        .await;
        assert!(closed.is_ok(), "connection {n} is still open");
    }
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "closed after {:?}",
        started.elapsed()
    );
    eprintln!(
        "1 000 one-byte connections, 20 idle keep-alive, 1 trickling: all closed {:?} after the trickle began",
        started.elapsed()
    );
}

/// `GET url` on an HTTP/2 connection, answered.
async fn h2_get(
    h2: &h2::client::SendRequest<bytes::Bytes>,
    url: String,
) -> http::Response<h2::RecvStream> {
    let request = http::Request::get(url).body(()).unwrap();
    let mut h2 = h2.clone().ready().await.unwrap();
    let (response, _) = h2.send_request(request, true).unwrap();
    response.await.unwrap()
}

/// An HTTP/2 connection that answers PINGs but holds no stream is closed at the idle timeout; one
/// with an open event stream is not.
#[tokio::test]
async fn http2_connections_without_streams_are_closed_at_the_idle_timeout() {
    let mut options = ServeOptions::default();
    options.idle_timeout = Duration::from_millis(500);
    options.http2_keep_alive = Duration::from_millis(200);
    let server = server_with(options).await;
    let h2_connection = || async {
        let tcp = TcpStream::connect(server.addr).await.unwrap();
        let (h2, connection) = h2::client::handshake(tcp).await.unwrap();
        (h2, tokio::spawn(connection))
    };
    // One request, answered; then nothing, while the client answers the server's PINGs.
    let (idle_h2, idle_connection) = h2_connection().await;
    let response = h2_get(&idle_h2, server.url("/healthz")).await;
    assert_eq!(response.status(), 200);
    // Another connection holds an event stream.
    let (busy_h2, busy_connection) = h2_connection().await;
    let mut body = h2_get(&busy_h2, server.url("/sse/event-stream?eventName=e"))
        .await
        .into_body();
    let started = tokio::time::Instant::now();
    let ended = tokio::time::timeout(Duration::from_secs(5), idle_connection)
        .await
        .expect("the idle connection is still open");
    assert!(ended.is_ok());
    eprintln!(
        "idle HTTP/2 connection closed after {:?}",
        started.elapsed()
    );
    assert!(
        !busy_connection.is_finished(),
        "the connection with a stream stays"
    );
    server
        .publish(json!({"eventName": "e", "payload": "still here"}))
        .await;
    let mut seen = Vec::new();
    while !String::from_utf8_lossy(&seen).contains("still here") {
        let chunk = tokio::time::timeout(Duration::from_secs(5), body.data())
            .await
            .expect("the stream delivers")
            .unwrap()
            .unwrap();
        seen.extend_from_slice(&chunk);
        let _ = body.flow_control().release_capacity(chunk.len());
    }
    drop(busy_h2);
}

/// The head timeout bounds reading a request, never a response being sent: an event stream
/// served by hyper (HTTP/1 and HTTP/2) stays open and delivers well past it.
#[tokio::test]
async fn an_event_stream_outlives_the_head_timeout() {
    let mut options = ServeOptions::default();
    options.head_timeout = Duration::from_millis(300);
    options.direct_streams = false;
    let server = server_with(options).await;
    let mut h1 = server.stream("eventName=e").await;
    let h2 = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    let mut h2_stream =
        SseClient::connect_with(&h2, &server.url("/sse/event-stream?eventName=e"), &[]).await;
    server.wait_for_streams(2).await;
    tokio::time::sleep(Duration::from_millis(1200)).await;
    server
        .publish(json!({"eventName": "e", "payload": "later"}))
        .await;
    assert_eq!(h1.next().await.data, "later");
    assert_eq!(h2_stream.next().await.data, "later");
}
