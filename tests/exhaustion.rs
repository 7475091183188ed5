//! What an anonymous client can take from the hub before anything is checked, probed with raw
//! sockets against the hub binary as an attacker would: unfinished request heads, unfinished
//! publish bodies, an oversized `Last-Event-ID` echoed back, a process out of file descriptors,
//! and refusals on keep-alive connections. Memory is the hub process's resident set.
#![cfg(feature = "cli")]
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::cluster::{HubProcess, free_port};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const CONNECTIONS: usize = 1000;

fn raise_nofile() {
    rlimit::increase_nofile_limit(u64::MAX).unwrap();
}

fn args(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| (*s).to_owned()).collect()
}

/// Opens `CONNECTIONS` connections that each send `head` and then `filler` bytes, and keep
/// them open; the writes may fail once the hub has answered and closed, which is the point.
async fn flood(port: u16, head: &'static [u8], filler: usize) -> Vec<TcpStream> {
    let mut tasks = Vec::new();
    for _ in 0..CONNECTIONS {
        tasks.push(tokio::spawn(async move {
            let mut socket = TcpStream::connect(("127.0.0.1", port)).await.ok()?;
            socket.write_all(head).await.ok()?;
            let chunk = vec![b'a'; 16 * 1024];
            let mut left = filler;
            while left > 0 {
                let n = left.min(chunk.len());
                if socket.write_all(&chunk[..n]).await.is_err() {
                    break;
                }
                left -= n;
            }
            Some(socket)
        }));
    }
    let mut sockets = Vec::new();
    for task in tasks {
        sockets.extend(task.await.unwrap());
    }
    sockets
}

/// The highest resident memory of a process since sampling began (every 50 ms).
struct Peak {
    peak: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

fn sample_peak(pid: u32) -> Peak {
    let peak = Arc::new(AtomicU64::new(0));
    let task = {
        let peak = peak.clone();
        tokio::spawn(async move {
            while let Some(rss) = common::cluster::rss_of(pid) {
                peak.fetch_max(rss, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    };
    Peak { peak, task }
}

impl Peak {
    /// The peak so far.
    fn peak(&self) -> u64 {
        self.peak.load(Ordering::Relaxed)
    }
}

impl Drop for Peak {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Sends `request` on a new connection and reads until the hub closes it (or `within`):
/// everything read, and whether the connection was closed.
async fn exchange(port: u16, request: &[u8], within: Duration) -> (String, bool) {
    exchange_after(Duration::ZERO, port, request, within).await
}

/// As [`exchange`], with a pause between connecting and sending the request.
async fn exchange_after(
    pause: Duration,
    port: u16,
    request: &[u8],
    within: Duration,
) -> (String, bool) {
    let mut socket = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    tokio::time::sleep(pause).await;
    socket.write_all(request).await.unwrap();
    let mut read = Vec::new();
    let closed = tokio::time::timeout(within, async {
        let mut buf = [0; 8192];
        loop {
            match socket.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => read.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await
    .is_ok();
    (String::from_utf8_lossy(&read).into_owned(), closed)
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

/// Says how resident memory went from `before` to `peak` under `CONNECTIONS` connections doing
/// `what`, and fails if it grew by `ceiling` bytes or more.
fn assert_grew_at_most(what: &str, before: u64, peak: u64, ceiling: usize) {
    let (grew, ceiling) = (peak.saturating_sub(before), ceiling as u64);
    eprintln!(
        "{CONNECTIONS} {what}: RSS {:.1} -> peak {:.1} MiB, ceiling +{:.1} MiB",
        mib(before),
        mib(peak),
        mib(ceiling)
    );
    assert!(
        grew < ceiling,
        "{what}: grew {:.1} MiB, over {:.1} MiB",
        mib(grew),
        mib(ceiling)
    );
}

/// 1 000 connections that each send 380 KiB of a request head and never end it hold at most
/// the head limit each (hyper's default buffer, ~400 KiB each, took 400 MB here); a single
/// header of 64 KiB is refused with `431`. A publish token changes nothing: the head is read
/// before anything is checked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unfinished_request_heads_hold_at_most_the_head_limit() {
    raise_nofile();
    let port = free_port();
    let hub = HubProcess::ready(port, &args(&["--publish-token", "secret"])).await;

    let long_header = format!(
        "GET /healthz HTTP/1.1\r\nhost: x\r\nx-pad: {}\r\n\r\n",
        "a".repeat(64 * 1024)
    );
    let (answer, _) = exchange(port, long_header.as_bytes(), Duration::from_secs(5)).await;
    assert!(answer.starts_with("HTTP/1.1 431 "), "{answer:.200}");

    let before = hub.rss();
    let sampling = sample_peak(hub.pid());
    let held = flood(
        port,
        b"POST /sse/publish HTTP/1.1\r\nhost: x\r\nx-pad: ",
        380 * 1024,
    )
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let peak = sampling.peak();
    // The head buffer, and what hyper and the socket's task take besides.
    let ceiling = CONNECTIONS * (sse_fanout::hyper::DEFAULT_MAX_HEAD_BYTES + 32 * 1024);
    let what = format!("unfinished 380 KiB heads ({} still open)", held.len());
    assert_grew_at_most(&what, before, peak, ceiling);
    drop(held);
    hub.terminate();
}

/// On a hub without a publish token, 1 000 connections that each send most of a 1000 KiB
/// body and stop hold at most the body budget together (1.5 GB here before it); while the
/// budget is spent, a publish gets `503` with `Retry-After`; publishing works again once the
/// bodies are gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unfinished_publish_bodies_hold_at_most_the_body_budget() {
    raise_nofile();
    let port = free_port();
    let budget: usize = 8 * 1024 * 1024;
    let largest: usize = 2 * 1024 * 1024;
    let hub = HubProcess::ready(
        port,
        &args(&[
            "--publish-body-budget",
            &budget.to_string(),
            "--max-publish-body",
            &largest.to_string(),
        ]),
    )
    .await;
    let before = hub.rss();
    let sampling = sample_peak(hub.pid());
    let held = flood(
        port,
        b"POST /sse/publish HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n\
          content-length: 1024000\r\n\r\n",
        1024000 - 1,
    )
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    drop(held);
    publishes_again(port).await;

    // Four bodies one byte short of the largest: the budget is spent until they time out.
    let head = format!(
        "POST /sse/publish HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n\
         content-length: {largest}\r\n\r\n"
    );
    let mut holders = Vec::new();
    for _ in 0..4 {
        let mut socket = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        socket.write_all(head.as_bytes()).await.unwrap();
        socket.write_all(&vec![b' '; largest - 1]).await.unwrap();
        holders.push(socket);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (answer, closed) = exchange(port, PUBLISH, Duration::from_secs(5)).await;
    assert!(
        answer.starts_with("HTTP/1.1 503 ") && answer.contains("retry-after: "),
        "a publish while the budget is spent: {answer}"
    );
    assert!(answer.contains(r#""error":"busy""#), "{answer}");
    assert!(closed, "the refused publish's connection stayed open");
    drop(holders);
    publishes_again(port).await;
    let peak = sampling.peak();
    hub.terminate();
    let what = "unfinished 1000 KiB bodies, then the budget held";
    assert_grew_at_most(what, before, peak, budget + CONNECTIONS * 64 * 1024);
}

/// A small publish.
const PUBLISH: &[u8] =
    b"POST /sse/publish HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n\
    content-length: 36\r\n\r\n{\"eventName\":\"e\",\"payload\":\"probe\"}\n";

/// Waits until a publish is accepted again.
async fn publishes_again(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let (answer, _) = exchange(port, PUBLISH, Duration::from_secs(5)).await;
        if answer.starts_with("HTTP/1.1 202 ") {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "publishing did not come back: {answer}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A `Last-Event-ID` of 20 KB (no hub writes one) is not reflected in the reset event.
#[tokio::test]
async fn an_oversized_last_event_id_is_not_echoed() {
    let port = free_port();
    let hub = HubProcess::ready(port, &[]).await;
    let id = "x".repeat(20_000);
    let request = format!(
        "GET /sse/event-stream?eventName=e HTTP/1.1\r\nhost: x\r\nlast-event-id: {id}\r\n\r\n"
    );
    let mut socket = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    socket.write_all(request.as_bytes()).await.unwrap();
    let mut read = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), async {
        while !String::from_utf8_lossy(&read).contains("\n\n\n") {
            let mut buf = [0; 4096];
            let n = socket.read(&mut buf).await.unwrap();
            assert!(n > 0, "closed: {}", String::from_utf8_lossy(&read));
            read.extend_from_slice(&buf[..n]);
            if String::from_utf8_lossy(&read).contains("lastEventId") {
                break;
            }
        }
    })
    .await
    .unwrap();
    let text = String::from_utf8_lossy(&read);
    assert!(
        text.contains(r#"data: {"lastEventId":null}"#),
        "{text:.500}"
    );
    assert!(!text.contains(&id[..100]), "the id was echoed");
    drop(socket);
    hub.terminate();
}

/// Out of file descriptors (128 for the process, 200 idle sockets): the health check is
/// answered at once, a stream request gets `503` at once, and once the idle sockets are gone
/// the hub serves streams again. Without the reserved descriptor the health check waited for
/// the idle sockets' timeouts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_descriptors_the_health_check_still_answers() {
    let port = free_port();
    let hub = HubProcess::start_under(&["prlimit", "--nofile=128:128"], port, &[]);
    common::cluster::wait_healthy(port).await;
    let mut idle = Vec::new();
    for _ in 0..200 {
        idle.push(TcpStream::connect(("127.0.0.1", port)).await.unwrap());
    }
    // The idle sockets beyond the limit are shed from the backlog, each after at most the
    // 10 ms it is given to send a head: about a second for these.
    tokio::time::sleep(Duration::from_secs(2)).await;

    let started = Instant::now();
    let (health, closed) = exchange(
        port,
        b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n",
        Duration::from_secs(5),
    )
    .await;
    let took = started.elapsed();
    eprintln!("health check out of descriptors: {took:?}");
    assert!(health.starts_with("HTTP/1.1 200 "), "{health}");
    assert!(health.contains(r#""status":"ok""#), "{health}");
    assert!(closed && took < Duration::from_secs(2), "took {took:?}");
    // A client whose request comes a moment after its connection was accepted.
    let (health, _) = exchange_after(
        Duration::from_millis(3),
        port,
        b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n",
        Duration::from_secs(5),
    )
    .await;
    assert!(health.starts_with("HTTP/1.1 200 "), "{health}");

    let (stream, closed) = exchange(
        port,
        b"GET /sse/event-stream?eventName=e HTTP/1.1\r\nhost: x\r\n\r\n",
        Duration::from_secs(5),
    )
    .await;
    assert!(stream.starts_with("HTTP/1.1 503 "), "{stream}");
    assert!(stream.contains("retry-after: 1"), "{stream}");
    assert!(closed);

    drop(idle);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (answer, _) = exchange(
            port,
            b"GET /sse/event-stream?eventName=e HTTP/1.1\r\nhost: x\r\n\r\n",
            Duration::from_millis(500),
        )
        .await;
        if answer.starts_with("HTTP/1.1 200 ") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "streams did not come back: {answer}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    hub.terminate();
}

/// A publish refused before its body is read (`401` here) always ends its connection and says
/// so (`Connection: close`): the unread body cannot be told from the next request, and whether
/// the connection was kept used to depend on a race.
#[tokio::test]
async fn a_refused_publish_always_closes_its_connection() {
    let port = free_port();
    let hub = HubProcess::ready(port, &args(&["--publish-token", "secret"])).await;
    let body = format!(r#"{{"eventName":"e","payload":"{}"}}"#, "p".repeat(4000));
    let request = format!(
        "POST /sse/publish HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n\
         content-length: {}\r\n\r\n{body}",
        body.len()
    );
    for attempt in 0..50 {
        let (answer, closed) = exchange(port, request.as_bytes(), Duration::from_secs(5)).await;
        assert!(answer.starts_with("HTTP/1.1 401 "), "{answer}");
        assert!(
            answer.to_ascii_lowercase().contains("connection: close"),
            "attempt {attempt}: {answer}"
        );
        assert!(closed, "attempt {attempt}: the connection stayed open");
    }
    hub.terminate();
}
