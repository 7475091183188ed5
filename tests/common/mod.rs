//! Shared parts of the integration tests: a real server on an ephemeral port, a real SSE client
//! (reqwest + eventsource-stream), and the broker harness.

#![allow(dead_code, unreachable_pub, missing_docs, clippy::unwrap_used)]

pub mod backends;
pub mod brokers;
pub mod cluster;
pub mod fanout;
pub mod kafka_cluster;
pub mod nats_cluster;
pub mod own;
pub mod proxy;
pub mod rabbit_cluster;
pub mod redis_cluster;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use eventsource_stream::{Event, Eventsource};
use futures_util::{Stream, StreamExt};
use serde_json::Value;
use sse_fanout::hyper::{RouterConfig, ServeOptions, SseRouter};
use sse_fanout::{DevSessions, FanoutBackend, Hub, HubBuilder};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// How long a test waits for something that should happen promptly.
pub const WAIT: Duration = Duration::from_secs(10);

/// A running server: real hyper on a loopback port.
pub struct TestServer {
    pub addr: SocketAddr,
    pub hub: Hub,
    pub router: SseRouter,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<std::io::Result<()>>>,
}

impl TestServer {
    /// A server over a hub built by `configure` on `backend`, sessions in development mode.
    pub async fn start(
        backend: Arc<dyn FanoutBackend>,
        configure: impl FnOnce(HubBuilder) -> HubBuilder,
    ) -> TestServer {
        Self::start_with(backend, configure, |r| r.resolver(DevSessions)).await
    }

    /// Like [`start`](Self::start), with the router adjusted by `router`.
    pub async fn start_with(
        backend: Arc<dyn FanoutBackend>,
        configure: impl FnOnce(HubBuilder) -> HubBuilder,
        router: impl FnOnce(SseRouter) -> SseRouter,
    ) -> TestServer {
        Self::start_serving(backend, configure, router, ServeOptions::default()).await
    }

    /// Like [`start_with`](Self::start_with), served with `options`.
    pub async fn start_serving(
        backend: Arc<dyn FanoutBackend>,
        configure: impl FnOnce(HubBuilder) -> HubBuilder,
        router: impl FnOnce(SseRouter) -> SseRouter,
        options: ServeOptions,
    ) -> TestServer {
        let hub = configure(Hub::builder_arc(backend)).start().await.unwrap();
        let router = router(SseRouter::new(hub.clone()));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(sse_fanout::hyper::serve_with(
            listener,
            router.clone(),
            async move {
                let _ = stopped.await;
            },
            options,
        ));
        TestServer {
            addr,
            hub,
            router,
            stop: Some(stop),
            task: Some(task),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// Opens an event stream: `query` without the `?`.
    pub async fn stream(&self, query: &str) -> SseClient {
        SseClient::connect(&self.url(&format!("/sse/event-stream?{query}")), &[]).await
    }

    /// Publishes through the HTTP endpoint; returns the status and the JSON answer.
    pub async fn publish(&self, body: Value) -> (u16, Value) {
        let response = client()
            .post(self.url("/sse/publish"))
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    /// `/healthz` as JSON.
    pub async fn health(&self) -> (u16, Value) {
        let response = client().get(self.url("/healthz")).send().await.unwrap();
        let status = response.status().as_u16();
        (status, response.json().await.unwrap())
    }

    /// Waits until this instance has `n` open streams.
    pub async fn wait_for_streams(&self, n: usize) {
        let deadline = tokio::time::Instant::now() + WAIT;
        while self.hub.open_streams() != n {
            assert!(
                tokio::time::Instant::now() < deadline,
                "expected {n} open streams, have {}",
                self.hub.open_streams()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Stops serving (graceful) and shuts the hub down; returns how long the drain took.
    pub async fn stop(mut self) -> Duration {
        let started = std::time::Instant::now();
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            tokio::time::timeout(WAIT, task)
                .await
                .unwrap()
                .unwrap()
                .unwrap();
        }
        self.hub.shutdown().await.unwrap();
        started.elapsed()
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// A server's health check, asked every 50 ms while a cluster changes: the states it went
/// through.
pub struct HealthWatch {
    watching: tokio_util::sync::CancellationToken,
    states: tokio::task::JoinHandle<Vec<bool>>,
}

impl HealthWatch {
    pub fn start(server: &TestServer) -> HealthWatch {
        let watching = tokio_util::sync::CancellationToken::new();
        let (url, stop) = (server.url("/healthz"), watching.clone());
        let states = tokio::spawn(async move {
            let mut states = Vec::new();
            while !stop.is_cancelled() {
                if let Ok(answer) = client().get(&url).send().await {
                    let up = answer.status() == 200;
                    if states.last() != Some(&up) {
                        states.push(up);
                    }
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            states
        });
        HealthWatch { watching, states }
    }

    /// Asserts that health went down and was up again when asked last.
    pub async fn went_down_and_came_back(self) {
        self.watching.cancel();
        let states = self.states.await.unwrap();
        assert!(
            states.contains(&false) && states.last() == Some(&true),
            "health went down and came back: {states:?}"
        );
    }
}

pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .unwrap()
}

/// A real SSE client: an HTTP response parsed by a spec-following event-stream parser.
pub struct SseClient {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    events: std::pin::Pin<Box<dyn Stream<Item = Event> + Send>>,
}

impl SseClient {
    pub async fn connect(url: &str, headers: &[(&str, &str)]) -> SseClient {
        Self::connect_with(&client(), url, headers).await
    }

    pub async fn connect_with(
        client: &reqwest::Client,
        url: &str,
        headers: &[(&str, &str)],
    ) -> SseClient {
        let mut request = client.get(url).header("accept", "text/event-stream");
        for (k, v) in headers {
            request = request.header(*k, *v);
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let events = response
            .bytes_stream()
            .eventsource()
            .take_while(|e| std::future::ready(e.is_ok()))
            .filter_map(|e| std::future::ready(e.ok()))
            .boxed();
        SseClient {
            status,
            headers,
            events,
        }
    }

    /// The next event, or a panic after [`WAIT`].
    pub async fn next(&mut self) -> Event {
        tokio::time::timeout(WAIT, self.events.next())
            .await
            .expect("no event within the wait")
            .expect("the stream ended")
    }

    /// The next event, if one comes within `within`.
    pub async fn next_within(&mut self, within: Duration) -> Option<Event> {
        tokio::time::timeout(within, self.events.next())
            .await
            .ok()
            .flatten()
    }

    /// Waits for the stream to end; panics if it does not within [`WAIT`]. Returns events seen.
    pub async fn until_end(&mut self) -> Vec<Event> {
        let mut seen = Vec::new();
        tokio::time::timeout(WAIT, async {
            while let Some(e) = self.events.next().await {
                seen.push(e);
            }
        })
        .await
        .expect("the stream did not end");
        seen
    }
}

/// A client that stopped reading its stream of session `s` (`stalled`, on `server`) is closed as
/// slow and its connection dropped, while `reader`, a stream of the same session, gets every one
/// of 600 events of 64 KiB (37.5 MiB: more than the stalled socket's buffers and a 128-frame
/// queue hold).
pub async fn a_stalled_client_is_dropped_while_a_reader_gets_everything(
    server: &TestServer,
    reader: &mut SseClient,
    stalled: &mut (impl tokio::io::AsyncRead + Unpin),
) {
    use tokio::io::AsyncReadExt;
    let payload = "x".repeat(64 * 1024);
    let count = 600;
    let publisher = {
        let hub = server.hub.clone();
        let payload = payload.clone();
        tokio::spawn(async move {
            for i in 0..count {
                hub.publish(
                    sse_fanout::SendSseEvent::new("e", serde_json::json!(payload))
                        .to_session("s")
                        .with_id(i.to_string()),
                )
                .await
                .unwrap();
                // Paced like a real producer, so that the reading client keeps up.
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        })
    };
    for i in 0..count {
        let event = reader.next().await;
        assert_eq!(event.id, i.to_string());
        assert_eq!(event.data.len(), payload.len());
    }
    publisher.await.unwrap();
    server.wait_for_streams(1).await;
    assert_eq!(server.hub.stats().closed_slow_client, 1);
    // The server dropped the stalled connection: reading it finds its end (or an error).
    let mut sink = vec![0u8; 1 << 20];
    tokio::time::timeout(WAIT, async {
        while stalled.read(&mut sink).await.unwrap_or(0) > 0 {}
    })
    .await
    .expect("the stalled connection was not closed");
}

/// The body of `GET url` as text (a hub's `/metrics`, say).
pub async fn get_text(url: &str) -> String {
    client()
        .get(url)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// A unique name for this test's channel, subject, exchange, topic or session.
pub fn unique(prefix: &str) -> String {
    format!("{prefix}-{}", uuid_like())
}

fn uuid_like() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!(
        "{}-{}-{}",
        std::process::id(),
        nanos,
        N.fetch_add(1, Ordering::Relaxed)
    )
}

pub fn router_config(f: impl FnOnce(&mut RouterConfig)) -> RouterConfig {
    let mut config = RouterConfig::default();
    f(&mut config);
    config
}
