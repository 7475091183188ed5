//! Hub processes (the real binary), a load balancer whose instances change while it runs, and a
//! client that reconnects with `Last-Event-ID` as a browser's EventSource does: the parts of the
//! tests where instances come and go.

use std::net::SocketAddr;
use std::process::{Child, Command};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use eventsource_stream::Eventsource;
use futures_util::StreamExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

use super::client;

/// A free loopback port (bound and released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A hub process on a loopback port, killed when dropped (a failing test leaves none behind).
pub struct HubProcess {
    pub port: u16,
    child: Child,
}

impl HubProcess {
    /// Starts the `sse-fanout` binary on `port` with `args` (backend, channel, ...).
    pub fn start(port: u16, args: &[String]) -> HubProcess {
        HubProcess::start_under(&[], port, args)
    }

    /// As [`start`](Self::start), logging what `filter` selects (unless `SSE_TEST_HUB_LOG`
    /// says otherwise) into the test's captured output, each line after `[hub :<port>]`: a
    /// failing test shows what each of its hubs did, a passing one nothing (`--nocapture`
    /// shows it always).
    pub fn start_logged(port: u16, args: &[String], filter: &str) -> HubProcess {
        let filter = std::env::var("SSE_TEST_HUB_LOG").unwrap_or_else(|_| filter.to_owned());
        let mut child = Command::new(env!("CARGO_BIN_EXE_sse-fanout"))
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .args(args)
            .env("RUST_LOG", filter)
            .env("NO_COLOR", "1")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        // The log goes to stdout, a failed start's error to stderr. A thread spawned here
        // inherits the test's output capture.
        let stdout = child.stdout.take().unwrap();
        let stderr = child.stderr.take().unwrap();
        fn relay(port: u16, from: impl std::io::Read + Send + 'static) {
            std::thread::spawn(move || {
                use std::io::BufRead;
                for line in std::io::BufReader::new(from).lines() {
                    let Ok(line) = line else { break };
                    eprintln!("[hub :{port}] {line}");
                }
            });
        }
        relay(port, stdout);
        relay(port, stderr);
        HubProcess { port, child }
    }

    /// As [`start`](Self::start), run by `wrapper` (a program that execs its arguments, such as
    /// `prlimit --nofile=128:128`), so that the process is still the hub.
    pub fn start_under(wrapper: &[&str], port: u16, args: &[String]) -> HubProcess {
        let listen = format!("127.0.0.1:{port}");
        let hub = env!("CARGO_BIN_EXE_sse-fanout");
        let mut command = match wrapper.split_first() {
            Some((program, wrapper_args)) => {
                let mut c = Command::new(program);
                c.args(wrapper_args).arg(hub);
                c
            }
            None => Command::new(hub),
        };
        let child = command
            .args(["--listen", &listen])
            .args(args)
            // `SSE_TEST_HUB_LOG=sse_core=debug,warn`, say, to see what the hubs did.
            .env(
                "RUST_LOG",
                std::env::var("SSE_TEST_HUB_LOG").unwrap_or_else(|_| "warn".to_owned()),
            )
            .spawn()
            .unwrap();
        HubProcess { port, child }
    }

    /// Whether the process has exited (a hub whose start failed, say).
    pub fn exited(&mut self) -> bool {
        self.child.try_wait().is_ok_and(|status| status.is_some())
    }

    /// Whether `/healthz` answers 200 now.
    pub async fn healthy(&self) -> bool {
        client()
            .get(self.url("/healthz"))
            .send()
            .await
            .is_ok_and(|r| r.status() == 200)
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The process's resident memory now, in bytes (`VmRSS`).
    pub fn rss(&self) -> u64 {
        rss_of(self.pid()).expect("the hub's VmRSS")
    }

    /// Starts a hub and waits until `/healthz` answers 200.
    pub async fn ready(port: u16, args: &[String]) -> HubProcess {
        let hub = HubProcess::start(port, args);
        wait_healthy(port).await;
        hub
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// Waits until the hub holds `n` open streams (its `/healthz` says so).
    pub async fn wait_streams(&self, n: u64) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let streams = match client().get(self.url("/healthz")).send().await {
                Ok(r) => r
                    .json::<serde_json::Value>()
                    .await
                    .ok()
                    .and_then(|v| v["streams"].as_u64()),
                Err(_) => None,
            };
            if streams == Some(n) {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "hub on {} holds {streams:?} streams, not {n}",
                self.port
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The sum of a series' samples on `/metrics` (every label set of `name`), 0 when absent.
    pub async fn metric(&self, name: &str) -> f64 {
        let text = super::get_text(&self.url("/metrics")).await;
        text.lines()
            .filter(|l| {
                l.strip_prefix(name)
                    .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }

    /// Publishes through the hub's HTTP endpoint; `session` `None` broadcasts.
    pub async fn publish(&self, event: &str, session: Option<&str>, payload: serde_json::Value) {
        let mut body = serde_json::json!({"eventName": event, "payload": payload});
        if let Some(s) = session {
            body["sessionId"] = s.into();
        }
        let r = client()
            .post(self.url("/sse/publish"))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 202, "publish through {}", self.port);
    }

    /// SIGTERM, then waits for a clean exit (the graceful drain).
    pub fn terminate(mut self) {
        signal(&self.child, "-TERM");
        let exit = self.child.wait().unwrap();
        assert!(exit.success(), "hub on {} exited with {exit}", self.port);
    }

    /// SIGKILL: a crash, no drain.
    pub fn kill(mut self) {
        signal(&self.child, "-KILL");
        let _ = self.child.wait();
    }
}

fn signal(child: &Child, signal: &str) {
    Command::new("kill")
        .args([signal, &child.id().to_string()])
        .status()
        .unwrap();
}

impl Drop for HubProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The resident memory of process `pid` in bytes (`VmRSS`); `None` once it has ended.
pub fn rss_of(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse::<u64>()
        .ok()?;
    Some(kib * 1024)
}

/// Waits until the hub on `port` answers `/healthz` with 200.
pub async fn wait_healthy(port: u16) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let ok = client()
            .get(format!("http://127.0.0.1:{port}/healthz"))
            .send()
            .await
            .is_ok_and(|r| r.status() == 200);
        if ok {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "hub on {port} not healthy"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A TCP load balancer over a set of instances that may change while it runs: each connection
/// goes to the next instance in turn (or, [`in_order`](Self::in_order), to the first), or the
/// one after it when that one refuses.
#[derive(Clone)]
pub struct Balancer {
    pub addr: SocketAddr,
    instances: Arc<Mutex<Vec<SocketAddr>>>,
}

impl Balancer {
    /// Round robin.
    pub async fn start(instances: Vec<SocketAddr>) -> Balancer {
        Self::with(instances, true).await
    }

    /// Each connection to the first instance that accepts it.
    pub async fn in_order(instances: Vec<SocketAddr>) -> Balancer {
        Self::with(instances, false).await
    }

    async fn with(instances: Vec<SocketAddr>, rotate: bool) -> Balancer {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let instances = Arc::new(Mutex::new(instances));
        let shared = instances.clone();
        tokio::spawn(async move {
            let mut turn = 0usize;
            while let Ok((mut inbound, _)) = listener.accept().await {
                turn += 1;
                let mut order = shared.lock().unwrap().clone();
                if rotate && !order.is_empty() {
                    let at = turn % order.len();
                    order.rotate_left(at);
                }
                tokio::spawn(async move {
                    for instance in order {
                        if let Ok(mut outbound) = TcpStream::connect(instance).await {
                            let _ =
                                tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                            return;
                        }
                    }
                });
            }
        });
        Balancer { addr, instances }
    }

    pub fn add(&self, instance: SocketAddr) {
        self.instances.lock().unwrap().push(instance);
    }

    pub fn remove(&self, instance: SocketAddr) {
        self.instances.lock().unwrap().retain(|i| *i != instance);
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }
}

/// One event as a reconnecting client saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seen {
    pub id: String,
    pub event: String,
    pub data: String,
}

/// A client that keeps an event stream open as a browser's EventSource does: when the stream
/// ends or breaks, it reconnects after a short delay with `Last-Event-ID` set to the last id it
/// received. Everything it receives is kept, in order.
pub struct Reconnecting {
    seen: Arc<Mutex<Vec<Seen>>>,
    connects: Arc<std::sync::atomic::AtomicUsize>,
    task: JoinHandle<()>,
}

impl Reconnecting {
    /// Connects to `url` (through a balancer, say), reconnecting every `retry` after a loss.
    pub fn spawn(url: String, retry: Duration) -> Reconnecting {
        Self::spawn_after(url, retry, None)
    }

    /// As [`spawn`](Self::spawn), first connecting with `Last-Event-ID: last`.
    pub fn spawn_after(url: String, retry: Duration, last: Option<String>) -> Reconnecting {
        let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
        let connects: Arc<std::sync::atomic::AtomicUsize> = Arc::default();
        let (seen_in, connects_in) = (seen.clone(), connects.clone());
        let task = tokio::spawn(async move {
            let mut last_id = last;
            let http = client();
            loop {
                let mut request = http.get(&url).header("accept", "text/event-stream");
                if let Some(id) = &last_id {
                    request = request.header("last-event-id", id);
                }
                if let Ok(response) = request.send().await
                    && response.status() == 200
                {
                    connects_in.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let mut events = response.bytes_stream().eventsource();
                    while let Some(Ok(event)) = events.next().await {
                        if !event.id.is_empty() {
                            last_id = Some(event.id.clone());
                        }
                        seen_in.lock().unwrap().push(Seen {
                            id: event.id,
                            event: event.event,
                            data: event.data,
                        });
                    }
                }
                tokio::time::sleep(retry).await;
            }
        });
        Reconnecting {
            seen,
            connects,
            task,
        }
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    /// How many times a stream was opened.
    pub fn connects(&self) -> usize {
        self.connects.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Waits until `done` holds for what was seen, or panics after `within` saying what was.
    pub async fn wait_until(&self, within: Duration, what: &str, done: impl Fn(&[Seen]) -> bool) {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            if done(&self.seen()) {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{what}: not within {within:?}; seen {:?}",
                self.seen()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Reconnecting {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Node's `eventsource` package (tests/browser/eventsource-client.mjs) as a client: it reconnects
/// by itself, with `Last-Event-ID`, after the `retry:` the server sent, as a browser does.
pub struct NodeEventSource {
    child: Child,
    lines: tokio::sync::mpsc::UnboundedReceiver<String>,
    pub events: Vec<Seen>,
}

impl NodeEventSource {
    /// Opens `url`, listening for `names`; `None` (after saying so) when Node or the package
    /// is not installed (`bash scripts/setup.sh` installs them).
    pub fn open(url: &str, names: &str) -> Option<NodeEventSource> {
        use std::io::{BufRead, BufReader};
        let dir = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/browser");
        if !dir.join("node_modules/eventsource").exists() {
            super::brokers::not_installed("Node's eventsource package in tests/browser");
            return None;
        }
        let mut child = Command::new("node")
            .arg(dir.join("eventsource-client.mjs"))
            .env("STREAM_URL", url)
            .env("EVENT_NAMES", names)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = tokio::sync::mpsc::unbounded_channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        Some(NodeEventSource {
            child,
            lines,
            events: Vec::new(),
        })
    }

    /// Waits for the next line starting with `OPEN` (a connection opened).
    pub async fn opened(&mut self) {
        while !self.line().await.starts_with("OPEN") {}
    }

    /// Waits until `n` events in all were received; returns them.
    pub async fn events(&mut self, n: usize) -> &[Seen] {
        while self.events.len() < n {
            let line = self.line().await;
            if let Some(json) = line.strip_prefix("EVENT ") {
                let v: serde_json::Value = serde_json::from_str(json).unwrap();
                self.events.push(Seen {
                    id: v["id"].as_str().unwrap_or("").to_owned(),
                    event: v["type"].as_str().unwrap_or("").to_owned(),
                    data: v["data"].as_str().unwrap_or("").to_owned(),
                });
            }
        }
        &self.events
    }

    async fn line(&mut self) -> String {
        tokio::time::timeout(Duration::from_secs(30), self.lines.recv())
            .await
            .ok()
            .flatten()
            .unwrap_or_else(|| {
                panic!(
                    "the eventsource client said nothing more; seen {:?}",
                    self.events
                )
            })
    }
}

impl Drop for NodeEventSource {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A TCP proxy to a broker whose connections the test can cut: `cut` drops every connection and
/// refuses new ones until `restore`, as a network partition between one instance and its broker
/// would, while the broker itself stays up for everyone else.
pub struct CutProxy {
    pub port: u16,
    cut: Arc<std::sync::atomic::AtomicBool>,
    connections: Arc<Mutex<Vec<JoinHandle<()>>>>,
    accept: JoinHandle<()>,
}

impl CutProxy {
    pub async fn start(target: SocketAddr) -> CutProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let cut: Arc<std::sync::atomic::AtomicBool> = Arc::default();
        let connections: Arc<Mutex<Vec<JoinHandle<()>>>> = Arc::default();
        let (is_cut, tasks) = (cut.clone(), connections.clone());
        let accept = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                if is_cut.load(std::sync::atomic::Ordering::SeqCst) {
                    continue; // dropped: refused
                }
                let task = tokio::spawn(async move {
                    if let Ok(mut outbound) = TcpStream::connect(target).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
                tasks.lock().unwrap().push(task);
            }
        });
        CutProxy {
            port,
            cut,
            connections,
            accept,
        }
    }

    /// `url` with the broker's `127.0.0.1:<port>` replaced by this proxy's.
    pub fn url(&self, url: &str, broker_port: u16) -> String {
        url.replace(
            &format!("127.0.0.1:{broker_port}"),
            &format!("127.0.0.1:{}", self.port),
        )
    }

    /// Drops every connection through the proxy and refuses new ones.
    pub fn cut(&self) {
        self.cut.store(true, std::sync::atomic::Ordering::SeqCst);
        for task in self.connections.lock().unwrap().drain(..) {
            task.abort();
        }
    }

    /// Lets connections through again.
    pub fn restore(&self) {
        self.cut.store(false, std::sync::atomic::Ordering::SeqCst);
    }
}

impl Drop for CutProxy {
    fn drop(&mut self) {
        self.accept.abort();
        for task in self.connections.lock().unwrap().drain(..) {
            task.abort();
        }
    }
}
