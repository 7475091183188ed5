//! Shedding load when the process is out of file descriptors. `accept` then fails with `EMFILE`
//! and a new connection waits in the listen backlog until some descriptor is freed, however
//! little it asks for: a health check behind hundreds of idle sockets would wait for their
//! timeouts. Instead, one descriptor is kept in reserve (an open `/dev/null`): on `EMFILE` it is
//! given up to accept the waiting connection, which is answered from the head it sends within a
//! few milliseconds (having waited in the backlog, a real client's request is there; one that
//! has just connected gets [`HEAD_GRACE`] for its first bytes) and closed, and the reserve is
//! taken again. The health check is answered by the router; everything else gets `503` with
//! `Retry-After`, so the backlog drains fast (at most `HEAD_GRACE` per idle socket in it).

use std::fs::File;
use std::io;
use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Empty};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::router::SseRouter;

/// How long the health check of a shed connection may take.
const HEALTH_TIMEOUT: Duration = Duration::from_secs(2);

/// How long a shed connection has to send its request head: a client writes its request right
/// after connecting, so this covers one that was accepted before its first bytes arrived.
const HEAD_GRACE: Duration = Duration::from_millis(10);

/// The most of a shed connection's head that is read.
const HEAD_BYTES: usize = 2048;

/// What every other shed request gets.
const REFUSAL: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\n\
content-type: application/json\r\n\
retry-after: 1\r\n\
connection: close\r\n\
content-length: 88\r\n\
\r\n\
{\"error\":\"overloaded\",\"message\":\"this instance has no file descriptors free; try again\"}";

/// The descriptor kept for accepting while the process is out of them.
#[derive(Debug)]
pub(crate) struct Reserve(Option<File>);

impl Reserve {
    /// Opens the reserve (none if even that fails; shedding is then off until it can be opened).
    pub(crate) fn new() -> Reserve {
        Reserve(File::open("/dev/null").ok())
    }

    /// Gives the reserve up when `error` says the process is out of descriptors; `true` when
    /// one was freed, so that an `accept` may now succeed.
    pub(crate) fn release_for(&mut self, error: &io::Error) -> bool {
        error.raw_os_error().is_some_and(is_fd_exhaustion) && self.0.take().is_some()
    }

    /// Takes the reserve again if it was given up and a descriptor is free.
    pub(crate) fn restore(&mut self) {
        if self.0.is_none() {
            self.0 = File::open("/dev/null").ok();
        }
    }
}

/// `EMFILE` (the process's limit) or `ENFILE` (the system's).
fn is_fd_exhaustion(errno: i32) -> bool {
    const ENFILE: i32 = 23;
    const EMFILE: i32 = 24;
    errno == EMFILE || errno == ENFILE
}

/// Answers a connection accepted on the reserve from the head it sends within [`HEAD_GRACE`]:
/// a health check in a task (it may ask the broker), anything else with `503` now; either way
/// the connection is closed after the answer.
pub(crate) async fn answer(socket: TcpStream, router: &SseRouter) {
    let mut head = [0; HEAD_BYTES];
    let mut n = 0;
    let grace = tokio::time::sleep(HEAD_GRACE);
    let mut grace = std::pin::pin!(grace);
    let request = loop {
        match socket.try_read(&mut head[n..]) {
            Ok(0) => break None,
            Ok(read) => n += read,
            Err(error) if error.kind() == io::ErrorKind::WouldBlock => {}
            Err(_) => break None,
        }
        match health_check(&head[..n], router.health_path()) {
            Head::Health(target) => break Request::get(target).body(Empty::new()).ok(),
            Head::Other => break None,
            Head::Incomplete if n == HEAD_BYTES => break None,
            Head::Incomplete => {}
        }
        tokio::select! {
            ready = socket.readable() => if ready.is_err() { break None },
            () = &mut grace => break None,
        }
    };
    match request {
        Some(request) => {
            tokio::spawn(answer_health(socket, request, router.clone()));
        }
        None => {
            // Fits any send buffer: written whole or not at all, never waited for.
            let _ = socket.try_write(REFUSAL);
        }
    }
}

/// What a shed connection's head is so far.
enum Head {
    /// A complete `GET` of the health path, with this target.
    Health(String),
    /// Any other request (or bytes that are no request).
    Other,
    /// Not a whole head yet.
    Incomplete,
}

/// Reads a shed connection's head: a health check, another request, or not complete yet.
fn health_check(head: &[u8], health_path: &str) -> Head {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut request = httparse::Request::new(&mut headers);
    match request.parse(head) {
        Ok(httparse::Status::Complete(_)) => {}
        Ok(httparse::Status::Partial) => return Head::Incomplete,
        Err(_) => return Head::Other,
    }
    let (Some(method), Some(target)) = (request.method, request.path) else {
        return Head::Other;
    };
    let path = target.split_once('?').map_or(target, |(path, _)| path);
    if method != "GET" || path != health_path {
        return Head::Other;
    }
    Head::Health(target.to_owned())
}

async fn answer_health(mut socket: TcpStream, request: Request<Empty<Bytes>>, router: SseRouter) {
    let Ok(response) = tokio::time::timeout(HEALTH_TIMEOUT, router.handle(request)).await else {
        let _ = socket.write_all(REFUSAL).await;
        return;
    };
    let (parts, body) = response.into_parts();
    let Ok(body) = body.collect().await.map(|b| b.to_bytes());
    let mut out = format!("HTTP/1.1 {}\r\n", parts.status).into_bytes();
    for (name, value) in &parts.headers {
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(
        format!(
            "connection: close\r\ncontent-length: {}\r\n\r\n",
            body.len()
        )
        .as_bytes(),
    );
    out.extend_from_slice(&body);
    let _ = tokio::time::timeout(HEALTH_TIMEOUT, socket.write_all(&out)).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_refusal_is_a_complete_response() {
        let mut headers = [httparse::EMPTY_HEADER; 8];
        let mut response = httparse::Response::new(&mut headers);
        let httparse::Status::Complete(len) = response.parse(REFUSAL).expect("parses") else {
            panic!("incomplete");
        };
        let body = &REFUSAL[len..];
        let declared = response
            .headers
            .iter()
            .find(|h| h.name == "content-length")
            .map(|h| std::str::from_utf8(h.value).expect("ascii"));
        assert_eq!(declared, Some(body.len().to_string().as_str()));
        let json: serde_json::Value = serde_json::from_slice(body).expect("JSON");
        assert_eq!(json["error"], "overloaded");
    }

    #[test]
    fn only_a_complete_get_of_the_health_path_is_a_health_check() {
        let is = |head: &[u8]| match health_check(head, "/healthz") {
            Head::Health(_) => "health",
            Head::Other => "other",
            Head::Incomplete => "incomplete",
        };
        assert_eq!(is(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n"), "health");
        assert_eq!(is(b"GET /healthz?x=1 HTTP/1.1\r\n\r\n"), "health");
        assert_eq!(is(b"GET /healthz HTTP/1.1\r\nhost: x\r\n"), "incomplete");
        assert_eq!(is(b""), "incomplete");
        assert_eq!(is(b"POST /healthz HTTP/1.1\r\n\r\n"), "other");
        assert_eq!(is(b"GET /sse/event-stream HTTP/1.1\r\n\r\n"), "other");
        assert_eq!(is(b"\x16\x03\x01 not http"), "other");
    }
}
