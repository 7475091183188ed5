//! The load tool: drives any SSE server over real loopback sockets and prints one JSON line per run.
//!
//! ```sh
//! cargo build --release -p sse-fanout-bench
//! target/release/loadgen idle --url http://127.0.0.1:8080 --streams 19000 --server-pid "$PID"
//! target/release/loadgen broadcast --url http://127.0.0.1:8080 --streams 10000
//! target/release/loadgen targeted --url http://127.0.0.1:8092 --pump-url http://127.0.0.1:8093 --streams 1000 --rate 100000
//! target/release/loadgen publish --url http://127.0.0.1:8080 --streams 1000
//! target/release/loadgen cross --backend redis --backend-url redis://127.0.0.1:6379 --url http://127.0.0.1:8081
//! target/release/loadgen broker-rtt --backend redis --backend-url redis://127.0.0.1:6379
//! ```
//!
//! Streams are held by single-threaded worker processes (this binary again, `loadgen worker`), at
//! most `--per-proc` each, because one process may hold at most 20 000 open files here; their sockets
//! are bound to source addresses 127.0.0.2, 127.0.0.3, ... so that more connections can be opened
//! than one address has ephemeral ports. Stream `i` asks for `eventName=bench,x{i%4}` and, with
//! `--sessions S`, `sessionId=s{i%S}`. Every event carries its publish time (`{"t": µs, "n": seq}`);
//! latency is arrival minus publish time.

use std::net::Ipv4Addr;
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::Bytes;
use clap::{Args, Parser, Subcommand, ValueEnum};
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sse_fanout::connect::BackendSettings;
use sse_fanout::{FanoutBackend, Hub};
use sse_fanout_bench::auth::{Credential, open_request};
use sse_fanout_bench::client::{Publisher, Publishers, Server, open_stream, open_stream_with};
use sse_fanout_bench::peers::PublishForm;
use sse_fanout_bench::pump::{self, PumpReport, PumpSpec};
use sse_fanout_bench::record::{Merged, Recorder, Snapshot, histogram, percentiles_ms};
use sse_fanout_bench::sys::{
    context_switches_tree, cpu_secs_tree, now_micros, pss_kib_tree, raise_fd_limit, rss_kib,
};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};

#[derive(Debug, Parser)]
#[command(
    name = "loadgen",
    about = "Drives SSE servers over loopback and reports percentiles"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Scenario 1: N idle streams; the server's resident memory per stream and the connect rate.
    Idle(IdleArgs),
    /// Scenario 2: one event to N streams, repeated; the time until all N have it.
    Broadcast(BroadcastArgs),
    /// Scenario 3: events to distinct sessions at a fixed rate, published inside the server.
    Targeted(TargetedArgs),
    /// The HTTP publish path on its own: keep-alive connections POSTing as fast as answered.
    Publish(PublishArgs),
    /// Scenario 4: publish on instance A (a hub in this process), stream from instance B.
    Cross(CrossArgs),
    /// The broker's own round trip, measured with its plain client crate.
    BrokerRtt(BrokerRttArgs),
    /// What publishing costs through a hub on a broker (run with `--history on` and `off`).
    PublishCost(PublishCostArgs),
    /// A reconnect storm: N streams come back at once to a freshly started instance with a
    /// `Last-Event-ID` some events behind, which it knows only from the broker's history.
    Resume(ResumeArgs),
    /// Routed delivery: N hub processes on one broker, one stream per session spread evenly over
    /// them, targeted events published by a hub in this process; what each instance received
    /// and the CPU it spent (run with the hubs and this tool in `--routing broadcast` and
    /// `session`).
    Routing(RoutingArgs),
    /// Stream opens at a fixed rate, each of a new session: the time until each one's `200`
    /// (in session routing, the route's subscribe is part of it), named by `--credential`.
    Opens(OpensArgs),
    /// The application an auth callout asks, answering at once (for `opens --credential
    /// cookie-*`): `GET /auth`, and `GET /calls` counts its answers. Runs until stopped.
    AuthApp(AuthAppArgs),
    /// What subscribing and unsubscribing session routes costs the backend: N sessions in the
    /// hub's batches of 1 000 (what a hub does after a broker reconnect).
    RouteSubscribe(RouteSubscribeArgs),
    /// Turns the JSON lines of a benchmark run into BENCHMARKS.md's table.
    Report(ReportArgs),
    /// Internal: holds streams for the other commands.
    #[command(hide = true)]
    Worker(WorkerArgs),
}

/// Where the streams go and how they are spread.
#[derive(Debug, Clone, Args)]
struct StreamArgs {
    /// The SSE server, `http://host:port`; several, comma-separated, share the streams evenly
    /// (the first share on the first, and so on).
    #[arg(long)]
    url: String,
    /// The event-stream path.
    #[arg(long, default_value = "/sse/event-stream")]
    path: String,
    /// Streams to open.
    #[arg(long)]
    streams: usize,
    /// Spread the streams over this many sessions (0: no session).
    #[arg(long, default_value_t = 0)]
    sessions: usize,
    /// Streams per worker process at most (each holds its streams' sockets, and one process
    /// may hold at most 20 000 open files here).
    #[arg(long, default_value_t = 5000)]
    per_proc: usize,
    /// Source addresses (127.0.0.2 onwards) the connections are spread over.
    #[arg(long, default_value_t = 8)]
    sources: u8,
    /// Connects in flight per worker (64 stays within the accept backlog of a server that keeps
    /// tokio's default; more measures SYN retransmission more than the server).
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// A name for the server in the JSON line.
    #[arg(long, default_value = "")]
    label: String,
}

impl StreamArgs {
    /// The servers of `--url`.
    fn urls(&self) -> Vec<&str> {
        self.url.split(',').collect()
    }

    /// The first server of `--url`.
    fn first_url(&self) -> &str {
        self.urls()[0]
    }

    /// These streams with one session each, unless `--sessions` says otherwise.
    fn one_session_each(&self) -> StreamArgs {
        let mut args = self.clone();
        if args.sessions == 0 {
            args.sessions = args.streams;
        }
        args
    }
}

#[derive(Debug, Args)]
struct IdleArgs {
    #[command(flatten)]
    streams: StreamArgs,
    /// The server's process id, to read its resident memory.
    #[arg(long)]
    server_pid: Option<u32>,
    /// Seconds to wait after the last stream opened before reading the memory.
    #[arg(long, default_value_t = 3.0)]
    settle: f64,
}

#[derive(Debug, Args)]
struct BroadcastArgs {
    #[command(flatten)]
    streams: StreamArgs,
    /// Events to broadcast (after 3 for warm-up).
    #[arg(long, default_value_t = 30)]
    events: u64,
    /// Milliseconds between them.
    #[arg(long, default_value_t = 300)]
    interval_ms: u64,
    #[command(flatten)]
    publishing: PublishingArgs,
    /// The server's process id, to read the CPU time it (and its child processes) spent on the
    /// measured events.
    #[arg(long)]
    server_pid: Option<u32>,
}

/// Where and how events are published (the hub, or a peer in `bench/peers/`).
#[derive(Debug, Clone, Args)]
struct PublishingArgs {
    /// The hub's publish path.
    #[arg(long, default_value = "/sse/publish")]
    publish_path: String,
    /// The publish request's form: the hub's, nchan's or Pushpin's.
    #[arg(long, value_enum, default_value_t)]
    form: PublishForm,
    /// Where publishing goes when not to the first `--url` (Pushpin's publish endpoint);
    /// several, comma-separated, each get every publish (servers that share nothing, such as
    /// two Pushpin instances).
    #[arg(long)]
    publish_url: Option<String>,
}

impl PublishingArgs {
    fn servers(&self, streams: &StreamArgs) -> anyhow::Result<Vec<Server>> {
        self.publish_url
            .as_deref()
            .unwrap_or(streams.first_url())
            .split(',')
            .map(Server::parse)
            .collect()
    }

    /// The request that publishes event `n` to `session`, or to every stream.
    fn request(&self, n: u64, session: Option<&str>) -> (String, Bytes) {
        self.form
            .request(&self.publish_path, "bench", session, &pump::payload(n))
    }
}

#[derive(Debug, Args)]
struct TargetedArgs {
    #[command(flatten)]
    streams: StreamArgs,
    /// Events per second.
    #[arg(long, default_value_t = 10_000)]
    rate: u64,
    /// Seconds to publish for.
    #[arg(long, default_value_t = 5.0)]
    seconds: f64,
    /// Where the server's `POST /bench/pump` is (default: `--url`).
    #[arg(long)]
    pump_url: Option<String>,
    /// The server's process id, to read the CPU time it spent on the measured events.
    #[arg(long)]
    server_pid: Option<u32>,
}

#[derive(Debug, Args)]
struct PublishArgs {
    #[command(flatten)]
    streams: StreamArgs,
    /// Keep-alive publishing connections.
    #[arg(long, default_value_t = 16)]
    connections: usize,
    /// Seconds to publish for.
    #[arg(long, default_value_t = 5.0)]
    seconds: f64,
    /// Publish at this many requests per second over the connections (targeted at a fixed
    /// rate, as the `targeted` scenario's pump but over HTTP); 0: as fast as answered.
    #[arg(long, default_value_t = 0)]
    rate: u64,
    #[command(flatten)]
    publishing: PublishingArgs,
    /// Process ids (comma-separated) whose CPU time, with their child processes', is read over
    /// the measured run: the instances, and the broker when it runs here.
    #[arg(long, value_delimiter = ',')]
    server_pid: Vec<u32>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Backend {
    Redis,
    Nats,
    Rabbit,
    Kafka,
}

#[derive(Debug, Clone, Args)]
struct BrokerArgs {
    /// The broker.
    #[arg(long, value_enum)]
    backend: Backend,
    /// Its address (as the hub's `--backend-url`).
    #[arg(long)]
    backend_url: String,
    /// The channel, subject, exchange or topic.
    #[arg(long, default_value = "bench.sse")]
    channel: String,
    /// Events per second.
    #[arg(long, default_value_t = 1000)]
    rate: u64,
    /// Seconds to publish for.
    #[arg(long, default_value_t = 5.0)]
    seconds: f64,
    /// Whether the backend keeps its history in the broker: `on` or `off`.
    #[arg(long, default_value = "on", value_parser = ["on", "off"])]
    history: String,
    /// RabbitMQ: the hash partitions of session ids in session routing.
    #[arg(long, default_value_t = sse_fanout::rabbit::DEFAULT_ROUTE_PARTITIONS)]
    route_partitions: u32,
    /// A backend option, `key=value`, as the hub's `--backend-option` (repeatable; e.g. Redis
    /// `wait-replicas=1`).
    #[arg(long = "backend-option", value_parser = parse_option)]
    backend_options: Vec<(String, String)>,
}

/// `key=value`.
fn parse_option(text: &str) -> Result<(String, String), String> {
    let (key, value) = text
        .split_once('=')
        .ok_or_else(|| format!("`{text}` is not key=value"))?;
    Ok((key.to_owned(), value.to_owned()))
}

impl BrokerArgs {
    fn history(&self) -> Option<sse_fanout::ReplayConfig> {
        (self.history == "on").then(sse_fanout::ReplayConfig::default)
    }
}

#[derive(Debug, Args)]
struct PublishCostArgs {
    #[command(flatten)]
    broker: BrokerArgs,
}

#[derive(Debug, Args)]
struct ResumeArgs {
    #[command(flatten)]
    broker: BrokerArgs,
    #[command(flatten)]
    streams: StreamArgs,
    /// How many events behind each stream's `Last-Event-ID` is.
    #[arg(long, default_value_t = 100)]
    behind: u64,
    /// Events published before those, so that the broker's history is this much fuller (the
    /// fresh instance reads all of it when it starts).
    #[arg(long, default_value_t = 0)]
    preload: u64,
    /// The hub binary to start as the fresh instance (its `--listen` is `--url`'s address).
    #[arg(long)]
    hub_bin: std::path::PathBuf,
    /// `session`: the events behind are targeted to one session, whose every stream resumes on
    /// the fresh instance in session routing (its route is subscribed first, then the broker's
    /// history read once for them all); `broadcast`: broadcasts, in broadcast routing.
    #[arg(long, default_value = "broadcast")]
    routing: String,
}

#[derive(Debug, Args)]
struct CrossArgs {
    #[command(flatten)]
    broker: BrokerArgs,
    #[command(flatten)]
    streams: StreamArgs,
    /// The app name of the hubs.
    #[arg(long, default_value = "sse-fanout")]
    app_name: String,
}

#[derive(Debug, Args)]
struct RoutingArgs {
    #[command(flatten)]
    broker: BrokerArgs,
    /// The hubs, `http://host:port`, comma-separated.
    #[arg(long, value_delimiter = ',')]
    urls: Vec<String>,
    /// Their process ids, in the same order, to read their CPU time.
    #[arg(long, value_delimiter = ',')]
    pids: Vec<u32>,
    /// The broker's process ids (each node of a cluster), when it runs on this machine, to read
    /// their CPU time too; comma-separated.
    #[arg(long, value_delimiter = ',')]
    broker_pid: Vec<u32>,
    /// Sessions, one stream each, spread evenly over the hubs (the first third on the first...).
    #[arg(long, default_value_t = 3000)]
    sessions: usize,
    /// How the publishing hub in this process routes: `broadcast` or `session` (as the hubs').
    #[arg(long, default_value = "broadcast", value_parser = ["broadcast", "session"])]
    routing: String,
    /// A name for the run in the JSON line.
    #[arg(long, default_value = "sse-fanout")]
    label: String,
}

#[derive(Debug, Args)]
struct RouteSubscribeArgs {
    #[command(flatten)]
    broker: BrokerArgs,
    /// Sessions to subscribe.
    #[arg(long, default_value_t = 10_000)]
    sessions: usize,
}

#[derive(Debug, Args)]
struct OpensArgs {
    /// The hub, `http://host:port`.
    #[arg(long)]
    url: String,
    /// Opens per second.
    #[arg(long, default_value_t = 1000)]
    rate: u64,
    /// Seconds to open streams for.
    #[arg(long, default_value_t = 5.0)]
    seconds: f64,
    /// What the hub runs (for the JSON line), e.g. `redis session`.
    #[arg(long, default_value = "")]
    label: String,
    /// How each open names its session.
    #[arg(long, value_enum, default_value = "dev")]
    credential: Credential,
    /// The hub's `--jwt-secret`, for `--credential jwt`.
    #[arg(long, default_value = "")]
    jwt_secret: String,
    /// The application's `/calls` URL, to report the callouts the opens cost.
    #[arg(long)]
    app_calls: Option<String>,
    /// The server's process id: the CPU it spent per open is reported.
    #[arg(long)]
    server_pid: Option<u32>,
}

#[derive(Debug, Args)]
struct AuthAppArgs {
    /// Where to listen, `127.0.0.1:port`.
    #[arg(long)]
    listen: std::net::SocketAddr,
}

#[derive(Debug, Args)]
struct BrokerRttArgs {
    #[command(flatten)]
    broker: BrokerArgs,
}

#[derive(Debug, Args)]
struct ReportArgs {
    /// The JSON lines, one run each (what `scripts/bench.sh` collects).
    file: std::path::PathBuf,
}

#[derive(Debug, Clone, Args)]
struct WorkerArgs {
    #[arg(long)]
    url: String,
    #[arg(long)]
    path: String,
    #[arg(long)]
    first: usize,
    #[arg(long)]
    count: usize,
    #[arg(long)]
    sessions: usize,
    #[arg(long)]
    sources: u8,
    #[arg(long)]
    concurrency: usize,
    #[arg(long)]
    per_event: bool,
}

fn main() -> anyhow::Result<()> {
    raise_fd_limit();
    let cli = Cli::parse();
    let runtime = match &cli.command {
        // A worker is one thread: several worker processes use the cores with no cross-thread
        // wake-ups inside any of them, and leave the most CPU to the server being measured.
        Cmd::Worker(_) => tokio::runtime::Builder::new_current_thread(),
        _ => tokio::runtime::Builder::new_multi_thread(),
    }
    .enable_all()
    .build()?;
    runtime.block_on(run(cli))
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let line = match cli.command {
        Cmd::Idle(args) => idle(args).await?,
        Cmd::Broadcast(args) => broadcast(args).await?,
        Cmd::Targeted(args) => targeted(args).await?,
        Cmd::Publish(args) => publish(args).await?,
        Cmd::Cross(args) => cross(args).await?,
        Cmd::BrokerRtt(args) => broker_rtt(args).await?,
        Cmd::PublishCost(args) => publish_cost(args).await?,
        Cmd::Resume(args) => resume(args).await?,
        Cmd::Routing(args) => routing(args).await?,
        Cmd::Opens(args) => opens(args).await?,
        Cmd::AuthApp(args) => {
            let listener = tokio::net::TcpListener::bind(args.listen).await?;
            sse_fanout_bench::auth::serve_app(listener).await?;
            return Ok(());
        }
        Cmd::RouteSubscribe(args) => route_subscribe(args).await?,
        Cmd::Report(args) => {
            print!("{}", report::table(&std::fs::read_to_string(&args.file)?)?);
            return Ok(());
        }
        Cmd::Worker(args) => return worker(args).await,
    };
    println!("{line}");
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Workers: processes that hold streams and record what arrives.

/// What a worker says once every stream it was given is open or has failed.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Ready {
    open: usize,
    failed: usize,
    connect_secs: f64,
    error: Option<String>,
}

/// What a worker answers to `snapshot`.
#[derive(Debug, Default, Serialize, Deserialize)]
struct WorkerSnapshot {
    snapshot: Snapshot,
    ended: u64,
}

/// The query of stream `i` (added to the query `path` may have).
fn stream_query(path: &str, i: usize, sessions: usize) -> String {
    let sep = if path.contains('?') { '&' } else { '?' };
    let mut q = format!("{path}{sep}eventName=bench,x{}", i % 4);
    if sessions > 0 {
        q.push_str(&format!("&sessionId=s{}", i % sessions));
    }
    q
}

async fn worker(args: WorkerArgs) -> anyhow::Result<()> {
    let server = Server::parse(&args.url)?;
    let recorder = Arc::new(Mutex::new(Recorder::new(args.per_event)));
    let ended = Arc::new(AtomicU64::new(0));
    let permits = Arc::new(tokio::sync::Semaphore::new(args.concurrency.max(1)));
    let (done_tx, mut done_rx) = tokio::sync::mpsc::unbounded_channel::<Result<(), String>>();
    let started = Instant::now();
    for i in args.first..args.first + args.count {
        let (server, recorder, ended, permits, done) = (
            server.clone(),
            recorder.clone(),
            ended.clone(),
            permits.clone(),
            done_tx.clone(),
        );
        let query = stream_query(&args.path, i, args.sessions);
        let source = Ipv4Addr::new(127, 0, 0, 2 + (i % usize::from(args.sources.max(1))) as u8);
        tokio::spawn(async move {
            let mut attempt = 0;
            let mut events = loop {
                let permit = permits.acquire().await;
                let opened = tokio::time::timeout(
                    Duration::from_secs(30),
                    open_stream(&server, Some(source), &query),
                )
                .await
                .unwrap_or_else(|_| Err(anyhow::anyhow!("no response head within 30 s")));
                drop(permit);
                match opened {
                    Ok(events) => break events,
                    Err(error) if attempt >= 2 => {
                        let _ = done.send(Err(format!("{error:#}")));
                        return;
                    }
                    Err(_) => {
                        attempt += 1;
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                }
            };
            let _ = done.send(Ok(()));
            drop(done);
            let record = |event: &sse_core::testkit::ParsedEvent| {
                if let Some((t, n)) = pump::parse_payload(&event.data) {
                    let latency = now_micros().saturating_sub(t);
                    lock(&recorder).record(n, latency);
                }
            };
            while let Ok(true) = events.next_events(record).await {}
            ended.fetch_add(1, Ordering::Relaxed);
        });
    }
    drop(done_tx);
    let mut ready = Ready::default();
    while let Some(result) = done_rx.recv().await {
        match result {
            Ok(()) => ready.open += 1,
            Err(error) => {
                ready.failed += 1;
                ready.error.get_or_insert(error);
            }
        }
    }
    ready.connect_secs = started.elapsed().as_secs_f64();
    let mut out = tokio::io::stdout();
    out.write_all(format!("{}\n", serde_json::to_string(&ready)?).as_bytes())
        .await?;
    out.flush().await?;
    let mut commands = BufReader::new(tokio::io::stdin()).lines();
    while let Some(command) = commands.next_line().await? {
        let answer = {
            let mut recorder = recorder
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            match command.trim() {
                "snapshot" => serde_json::to_string(&WorkerSnapshot {
                    snapshot: recorder.snapshot(),
                    ended: ended.load(Ordering::Relaxed),
                })?,
                "clear" => {
                    recorder.clear();
                    "{}".to_owned()
                }
                _ => break,
            }
        };
        out.write_all(format!("{answer}\n").as_bytes()).await?;
        out.flush().await?;
    }
    // Exit without closing the streams one by one: the kernel resets them all.
    std::process::exit(0);
}

/// The worker processes of one run.
struct Workers {
    procs: Vec<(Child, ChildStdin, tokio::io::Lines<BufReader<ChildStdout>>)>,
}

impl Workers {
    /// Starts workers for `args.streams` streams and waits until every stream is open or failed.
    async fn start(args: &StreamArgs, per_event: bool) -> anyhow::Result<(Workers, Ready)> {
        let urls = args.urls();
        let ranges: Vec<(String, usize, usize)> = urls
            .iter()
            .enumerate()
            .map(|(i, url)| {
                let first = args.streams * i / urls.len();
                let end = args.streams * (i + 1) / urls.len();
                ((*url).to_owned(), first, end - first)
            })
            .collect();
        Self::start_ranges(args, &ranges, per_event).await
    }

    /// Like [`start`](Self::start), with streams `first..first + count` on each `(url, first,
    /// count)` (stream `i` is of session `s{i % sessions}`).
    async fn start_ranges(
        args: &StreamArgs,
        ranges: &[(String, usize, usize)],
        per_event: bool,
    ) -> anyhow::Result<(Workers, Ready)> {
        let exe = std::env::current_exe()?;
        let per_proc = args.per_proc.max(1);
        let mut procs = Vec::new();
        let chunks = ranges.iter().flat_map(|(url, start, total)| {
            (0..total.div_ceil(per_proc)).map(move |c| {
                let first = start + c * per_proc;
                (url, first, per_proc.min(start + total - first))
            })
        });
        for (url, first, count) in chunks {
            let mut command = Command::new(&exe);
            command
                .arg("worker")
                .args(["--url", url, "--path", &args.path])
                .args(["--first", &first.to_string(), "--count", &count.to_string()])
                .args(["--sessions", &args.sessions.to_string()])
                .args(["--sources", &args.sources.to_string()])
                .args(["--concurrency", &args.concurrency.to_string()])
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .kill_on_drop(true);
            if per_event {
                command.arg("--per-event");
            }
            let mut child = command.spawn().context("starting a worker")?;
            let stdin = child.stdin.take().context("worker stdin")?;
            let stdout = BufReader::new(child.stdout.take().context("worker stdout")?).lines();
            procs.push((child, stdin, stdout));
        }
        let mut workers = Workers { procs };
        let mut ready = Ready::default();
        for (_, _, lines) in &mut workers.procs {
            let line = lines
                .next_line()
                .await?
                .context("a worker ended before it was ready")?;
            let r: Ready = serde_json::from_str(&line)?;
            ready.open += r.open;
            ready.failed += r.failed;
            ready.connect_secs = ready.connect_secs.max(r.connect_secs);
            if ready.error.is_none() {
                ready.error = r.error;
            }
        }
        Ok((workers, ready))
    }

    /// [`start`](Self::start), failing when no stream opened and saying when some did not.
    async fn open(args: &StreamArgs, per_event: bool) -> anyhow::Result<(Workers, Ready)> {
        let (workers, ready) = Self::start(args, per_event).await?;
        check_ready(&ready, args.streams)?;
        Ok((workers, ready))
    }

    async fn ask(&mut self, command: &str) -> anyhow::Result<Vec<String>> {
        let mut answers = Vec::new();
        for (_, stdin, _) in &mut self.procs {
            stdin.write_all(format!("{command}\n").as_bytes()).await?;
            stdin.flush().await?;
        }
        for (_, _, lines) in &mut self.procs {
            answers.push(lines.next_line().await?.context("a worker ended")?);
        }
        Ok(answers)
    }

    /// Forgets what was recorded (after a warm-up).
    async fn clear(&mut self) -> anyhow::Result<()> {
        self.ask("clear").await.map(drop)
    }

    /// Everything recorded, merged; and how many streams ended early.
    async fn snapshot(&mut self) -> anyhow::Result<(Merged, u64)> {
        let mut snapshots = Vec::new();
        let mut ended = 0;
        for answer in self.ask("snapshot").await? {
            let s: WorkerSnapshot = serde_json::from_str(&answer)?;
            ended += s.ended;
            snapshots.push(s.snapshot);
        }
        Ok((Merged::new(&snapshots), ended))
    }

    /// Stops every worker (their streams are reset by the kernel).
    async fn stop(mut self) {
        for (child, stdin, _) in &mut self.procs {
            let _ = stdin.write_all(b"exit\n").await;
            let _ = tokio::time::timeout(Duration::from_secs(10), child.wait()).await;
        }
    }
}

fn check_ready(ready: &Ready, wanted: usize) -> anyhow::Result<()> {
    if ready.open == 0 {
        bail!(
            "no stream opened: {}",
            ready.error.as_deref().unwrap_or("no error reported")
        );
    }
    if ready.open < wanted {
        eprintln!(
            "loadgen: only {} of {wanted} streams opened; first error: {}",
            ready.open,
            ready.error.as_deref().unwrap_or("-")
        );
    }
    Ok(())
}

fn round(x: f64, digits: i32) -> f64 {
    let f = 10f64.powi(digits);
    (x * f).round() / f
}

/// Waits until `received` stops growing (or `max` passes).
async fn until_quiet(workers: &mut Workers, max: Duration) -> anyhow::Result<(Merged, u64)> {
    let deadline = Instant::now() + max;
    let mut last = u64::MAX;
    loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let (merged, ended) = workers.snapshot().await?;
        if merged.received == last || Instant::now() > deadline {
            return Ok((merged, ended));
        }
        last = merged.received;
    }
}

// ---------------------------------------------------------------------------------------------
// Scenarios.

async fn idle(args: IdleArgs) -> anyhow::Result<Value> {
    let s = &args.streams;
    let rss_before = args.server_pid.and_then(rss_kib);
    let pss_before = args.server_pid.and_then(pss_kib_tree);
    let (workers, ready) = Workers::open(s, false).await?;
    tokio::time::sleep(Duration::from_secs_f64(args.settle)).await;
    let rss_open = args.server_pid.and_then(rss_kib);
    let pss_open = args.server_pid.and_then(pss_kib_tree);
    let server_streams = server_streams(s.first_url()).await;
    workers.stop().await;
    let per_stream = |before: Option<u64>, open: Option<u64>| match (before, open) {
        (Some(before), Some(open)) if ready.open > 0 => {
            Some(round((open as f64 - before as f64) / ready.open as f64, 2))
        }
        _ => None,
    };
    Ok(json!({
        "scenario": "idle",
        "server": s.label,
        "streams": ready.open,
        "failed": ready.failed,
        "server_reports_streams": server_streams,
        "connect_secs": round(ready.connect_secs, 3),
        "connects_per_sec": round(ready.open as f64 / ready.connect_secs.max(1e-9), 0),
        "rss_before_kib": rss_before,
        "rss_open_kib": rss_open,
        "kib_per_stream": per_stream(rss_before, rss_open),
        "pss_before_kib": pss_before,
        "pss_open_kib": pss_open,
        "pss_kib_per_stream": per_stream(pss_before, pss_open),
    }))
}

/// The `streams` the server's `/healthz` reports, where it has one (within a second).
async fn server_streams(url: &str) -> Option<u64> {
    let ask = async {
        let server = Server::parse(url).ok()?;
        let mut publisher = Publisher::connect(&server).await.ok()?;
        let (_, body) = publisher.get("/healthz").await.ok()?;
        serde_json::from_slice::<Value>(&body).ok()?["streams"].as_u64()
    };
    tokio::time::timeout(Duration::from_secs(1), ask)
        .await
        .ok()
        .flatten()
}

async fn broadcast(args: BroadcastArgs) -> anyhow::Result<Value> {
    let s = &args.streams;
    let servers = args.publishing.servers(s)?;
    let (mut workers, ready) = Workers::open(s, true).await?;
    let mut publisher = Publishers::connect(&servers).await?;
    let interval = Duration::from_millis(args.interval_ms);
    for warm in 0..3 {
        let (path, body) = args.publishing.request(u64::MAX - warm, None);
        publisher.post(&path, body).await?;
        tokio::time::sleep(interval).await;
    }
    until_quiet(&mut workers, Duration::from_secs(30)).await?;
    workers.clear().await?;
    let cpu_before = args.server_pid.and_then(cpu_secs_tree);
    let started = Instant::now();
    for n in 0..args.events {
        let (path, body) = args.publishing.request(n, None);
        let (status, body) = publisher.post(&path, body).await?;
        if !args.publishing.form.accepted(status) {
            bail!(
                "publish answered {status}: {}",
                String::from_utf8_lossy(&body)
            );
        }
        tokio::time::sleep(interval).await;
    }
    let (merged, ended) = until_quiet(&mut workers, Duration::from_secs(30)).await?;
    let elapsed = started.elapsed().as_secs_f64();
    let server_cpu = server_cpu_since(args.server_pid, cpu_before);
    workers.stop().await;
    let mut until_all = histogram();
    let mut incomplete = 0;
    for n in 0..args.events {
        match merged.per_event.get(&n) {
            Some(&(count, max)) if count as usize >= ready.open => {
                until_all.saturating_record(max.max(1));
            }
            _ => incomplete += 1,
        }
    }
    Ok(json!({
        "scenario": "broadcast",
        "server": s.label,
        "streams": ready.open,
        "events": args.events,
        "time_until_all_ms": percentiles_ms(&until_all),
        "events_not_reaching_all": incomplete,
        "deliveries": merged.received,
        "lost": (ready.open as u64 * args.events).saturating_sub(merged.received),
        "delivery_ms": percentiles_ms(&merged.deliveries),
        "streams_ended": ended,
        "seconds": round(elapsed, 2),
        "server_cpu_secs": server_cpu.map(|c| round(c, 3)),
        "server_cpu_us_per_delivery": server_cpu
            .map(|c| round(c * 1e6 / merged.received.max(1) as f64, 3)),
    }))
}

/// CPU seconds the server (`pid` and its child processes) spent since `before`.
fn server_cpu_since(pid: Option<u32>, before: Option<f64>) -> Option<f64> {
    Some(cpu_secs_tree(pid?)? - before?)
}

async fn targeted(args: TargetedArgs) -> anyhow::Result<Value> {
    let s = &args.streams;
    let stream_args = s.one_session_each();
    let sessions = stream_args.sessions;
    let (mut workers, ready) = Workers::open(&stream_args, false).await?;
    let pump_server = Server::parse(args.pump_url.as_deref().unwrap_or(s.first_url()))?;
    let mut control = Publisher::connect(&pump_server).await?;
    let spec = |rate, seconds| PumpSpec::new(rate, seconds, sessions);
    let run = |spec: PumpSpec| Bytes::from(serde_json::to_vec(&spec).unwrap_or_default());
    // Warm-up at the measured rate (steady state, not the first second of a cold server), then
    // the measured run.
    control
        .post("/bench/pump", run(spec(args.rate, 1.0)))
        .await?;
    until_quiet(&mut workers, Duration::from_secs(30)).await?;
    workers.clear().await?;
    let cpu_before = args.server_pid.and_then(cpu_secs_tree);
    let (status, body) = control
        .post("/bench/pump", run(spec(args.rate, args.seconds)))
        .await?;
    if status != 200 {
        bail!("pump answered {status}: {}", String::from_utf8_lossy(&body));
    }
    let report: PumpReport = serde_json::from_slice(&body)?;
    let lost_in_backend = serde_json::from_slice::<Value>(&body)?["lostInBackend"].as_u64();
    let (merged, ended) = until_quiet(&mut workers, Duration::from_secs(30)).await?;
    let server_cpu = server_cpu_since(args.server_pid, cpu_before);
    workers.stop().await;
    Ok(json!({
        "scenario": "targeted",
        "server": s.label,
        "streams": ready.open,
        "sessions": sessions,
        "rate": args.rate,
        "published": report.published,
        "publish_failed": report.failed,
        "publish_secs": round(report.seconds, 3),
        "delivered": merged.received,
        "lost": report.published.saturating_sub(merged.received),
        "lost_in_backend": lost_in_backend,
        "delivered_per_sec": round(merged.received as f64 / report.seconds.max(1e-9), 0),
        "latency_ms": percentiles_ms(&merged.deliveries),
        "streams_ended": ended,
        "server_cpu_secs": server_cpu.map(|c| round(c, 3)),
        "server_cpu_us_per_event": server_cpu
            .map(|c| round(c * 1e6 / merged.received.max(1) as f64, 3)),
    }))
}

async fn publish(args: PublishArgs) -> anyhow::Result<Value> {
    let s = &args.streams;
    let stream_args = s.one_session_each();
    let sessions = stream_args.sessions;
    let servers = args.publishing.servers(s)?;
    let (mut workers, ready) = Workers::open(&stream_args, false).await?;
    let next = Arc::new(AtomicU64::new(0));
    let run = |seconds: f64| {
        let (servers, next, publishing) = (servers.clone(), next.clone(), args.publishing.clone());
        let (connections, rate) = (args.connections, args.rate);
        async move {
            if rate > 0 {
                let spec = PumpSpec::new(rate, seconds, sessions);
                at_rate(&servers, &publishing, connections, &spec).await
            } else {
                as_fast_as_answered(&servers, &publishing, connections, seconds, sessions, &next)
                    .await
            }
        }
    };
    run(0.5).await?;
    until_quiet(&mut workers, Duration::from_secs(30)).await?;
    workers.clear().await?;
    let cpu_before: Vec<Option<f64>> = args.server_pid.iter().map(|&p| cpu_secs_tree(p)).collect();
    let switches_before: Vec<Option<u64>> = args
        .server_pid
        .iter()
        .map(|&p| context_switches_tree(p))
        .collect();
    let started = Instant::now();
    let (requests, refused) = run(args.seconds).await?;
    let elapsed = started.elapsed().as_secs_f64();
    let (merged, ended) = until_quiet(&mut workers, Duration::from_secs(30)).await?;
    // Each process's CPU per event delivered, in the order of `--server-pid`.
    let cpu_us_per_event: Vec<Option<f64>> = args
        .server_pid
        .iter()
        .zip(cpu_before)
        .map(|(&pid, before)| {
            let used = server_cpu_since(Some(pid), before)?;
            (merged.received > 0).then(|| round(used * 1e6 / merged.received as f64, 2))
        })
        .collect();
    // And its context switches per event: how often its threads slept and were woken.
    let switches_per_event: Vec<Option<f64>> = args
        .server_pid
        .iter()
        .zip(switches_before)
        .map(|(&pid, before)| {
            let switches = context_switches_tree(pid)?.checked_sub(before?)?;
            (merged.received > 0).then(|| round(switches as f64 / merged.received as f64, 3))
        })
        .collect();
    workers.stop().await;
    let accepted = requests.len() - refused;
    Ok(json!({
        "scenario": "publish",
        "server": s.label,
        "streams": ready.open,
        "connections": args.connections,
        "requests": requests.len(),
        "refused": refused,
        "rate": args.rate,
        "requests_per_sec": round(requests.len() as f64 / elapsed, 0),
        "request_ms": percentiles_ms(&requests),
        "delivered": merged.received,
        "lost": accepted.saturating_sub(merged.received),
        "delivery_ms": percentiles_ms(&merged.deliveries),
        "streams_ended": ended,
        "server_pids": args.server_pid,
        "server_cpu_us_per_event": cpu_us_per_event,
        "server_switches_per_event": switches_per_event,
    }))
}

/// Requests over `connections` keep-alive connections, each sending the next as soon as the last
/// is answered, for `seconds`; their latencies and how many were refused.
async fn as_fast_as_answered(
    servers: &[Server],
    publishing: &PublishingArgs,
    connections: usize,
    seconds: f64,
    sessions: usize,
    next: &Arc<AtomicU64>,
) -> anyhow::Result<(hdrhistogram::Histogram<u64>, u64)> {
    let tasks: Vec<_> = (0..connections)
        .map(|_| {
            let (servers, next, publishing) = (servers.to_vec(), next.clone(), publishing.clone());
            tokio::spawn(async move {
                let mut publisher = Publishers::connect(&servers).await?;
                let mut latencies = histogram();
                let mut refused = 0u64;
                let until = Instant::now() + Duration::from_secs_f64(seconds);
                while Instant::now() < until {
                    let n = next.fetch_add(1, Ordering::Relaxed);
                    let session = format!("s{}", n % sessions as u64);
                    let (path, body) = publishing.request(n, Some(&session));
                    let sent = Instant::now();
                    let (status, _) = publisher.post(&path, body).await?;
                    latencies.saturating_record(sent.elapsed().as_micros() as u64);
                    if !publishing.form.accepted(status) {
                        refused += 1;
                    }
                }
                anyhow::Ok((latencies, refused))
            })
        })
        .collect();
    let mut latencies = histogram();
    let mut refused = 0;
    for task in tasks {
        let (h, r) = task.await??;
        latencies.add(&h)?;
        refused += r;
    }
    Ok((latencies, refused))
}

/// Requests at `spec`'s rate to its sessions in turn, over `connections` keep-alive connections
/// (at most one request waiting on each); their latencies and how many were refused (a request
/// that failed counts as refused).
async fn at_rate(
    servers: &[Server],
    publishing: &PublishingArgs,
    connections: usize,
    spec: &PumpSpec,
) -> anyhow::Result<(hdrhistogram::Histogram<u64>, u64)> {
    let (idle_tx, idle_rx) = tokio::sync::mpsc::unbounded_channel();
    for _ in 0..connections.max(1) {
        idle_tx.send(Publishers::connect(servers).await?)?;
    }
    let idle_rx = Arc::new(tokio::sync::Mutex::new(idle_rx));
    let latencies = Arc::new(Mutex::new(histogram()));
    let report = pump::run(spec, connections.max(1), |n| {
        let (idle_tx, idle_rx, latencies) = (idle_tx.clone(), idle_rx.clone(), latencies.clone());
        let (path, body) = publishing.request(n, spec.session(n).as_deref());
        let form = publishing.form;
        async move {
            // The pump keeps at most `connections` requests waiting: one is idle.
            let Some(mut publisher) = idle_rx.lock().await.recv().await else {
                return false;
            };
            let sent = Instant::now();
            let answered = publisher.post(&path, body).await;
            if let Ok(mut latencies) = latencies.lock() {
                latencies.saturating_record(sent.elapsed().as_micros() as u64);
            }
            let accepted = matches!(answered, Ok((status, _)) if form.accepted(status));
            let _ = idle_tx.send(publisher);
            accepted
        }
    })
    .await;
    let latencies = latencies
        .lock()
        .map(|h| h.clone())
        .unwrap_or_else(|_| histogram());
    Ok((latencies, report.failed))
}

async fn connect_backend(
    broker: &BrokerArgs,
    instance: &str,
    app: &str,
) -> anyhow::Result<Arc<dyn FanoutBackend>> {
    let name = format!("{:?}", broker.backend).to_lowercase();
    let connector = sse_fanout::BACKENDS
        .iter()
        .find(|c| c.name == name)
        .ok_or_else(|| anyhow::anyhow!("this build has no {name} backend"))?;
    let mut settings = BackendSettings::new(broker.channel.clone());
    settings.url = Some(broker.backend_url.clone());
    settings.app_name = app.to_owned();
    settings.instance_id = instance.to_owned();
    settings.history = broker.history();
    match broker.backend {
        Backend::Rabbit => {
            settings = settings.option("route-partitions", broker.route_partitions.to_string());
        }
        Backend::Kafka => {
            settings = settings
                .option("create-topic", "true")
                .option("topic-partitions", "3");
        }
        Backend::Redis | Backend::Nats => {}
    }
    for (key, value) in &broker.backend_options {
        settings = settings.option(key.clone(), value.clone());
    }
    Ok((connector.connect)(settings).await?)
}

async fn cross(args: CrossArgs) -> anyhow::Result<Value> {
    let s = &args.streams;
    let broker = &args.broker;
    let stream_args = s.one_session_each();
    let sessions = stream_args.sessions;
    let instance = format!("loadgen-{}", std::process::id());
    let backend = connect_backend(broker, &instance, &args.app_name).await?;
    let hub = Hub::builder_arc(backend)
        .app_name(args.app_name.clone())
        .instance_id(instance)
        .replay(None)
        .start()
        .await?;
    let (mut workers, ready) = Workers::open(&stream_args, false).await?;
    let spec = |rate, seconds| PumpSpec::new(rate, seconds, sessions);
    pump::through_hub(&spec(100, 1.0), &hub).await;
    until_quiet(&mut workers, Duration::from_secs(30)).await?;
    workers.clear().await?;
    let report = pump::through_hub(&spec(broker.rate, broker.seconds), &hub).await;
    let (merged, ended) = until_quiet(&mut workers, Duration::from_secs(30)).await?;
    workers.stop().await;
    hub.shutdown().await.ok();
    Ok(json!({
        "scenario": "cross",
        "server": s.label,
        "backend": format!("{:?}", broker.backend).to_lowercase(),
        "streams": ready.open,
        "rate": broker.rate,
        "published": report.published,
        "publish_failed": report.failed,
        "delivered": merged.received,
        "lost": report.published.saturating_sub(merged.received),
        "latency_ms": percentiles_ms(&merged.deliveries),
        "streams_ended": ended,
    }))
}

/// N hubs, a third of the sessions' streams on each (for N = 3), targeted events published at
/// `rate` by a hub in this process: per hub, envelopes received and CPU seconds spent from the
/// first publish until the last delivery.
async fn routing(args: RoutingArgs) -> anyhow::Result<Value> {
    let broker = &args.broker;
    let n = args.urls.len();
    if n == 0 || args.pids.len() != n {
        bail!("--urls and --pids need one entry per hub");
    }
    let stream_args = StreamArgs {
        url: args.urls[0].clone(),
        path: "/sse/event-stream".to_owned(),
        streams: args.sessions,
        sessions: args.sessions,
        per_proc: 5000,
        sources: 8,
        concurrency: 64,
        label: args.label.clone(),
    };
    let ranges: Vec<(String, usize, usize)> = args
        .urls
        .iter()
        .enumerate()
        .map(|(k, url)| {
            let first = k * args.sessions / n;
            (url.clone(), first, (k + 1) * args.sessions / n - first)
        })
        .collect();
    let instance = format!("loadgen-{}", std::process::id());
    let backend = connect_backend(broker, &instance, "sse-fanout").await?;
    let mut builder = Hub::builder_arc(backend)
        .app_name("sse-fanout")
        .instance_id(instance)
        .replay(None);
    if args.routing == "session" {
        builder = builder.routing(sse_fanout::Routing::session());
    }
    let hub = builder.start().await?;
    let (mut workers, ready) = Workers::start_ranges(&stream_args, &ranges, false).await?;
    check_ready(&ready, args.sessions)?;
    let spec = |rate, seconds| PumpSpec::new(rate, seconds, args.sessions);
    pump::through_hub(&spec(200, 1.0), &hub).await;
    until_quiet(&mut workers, Duration::from_secs(30)).await?;
    workers.clear().await?;
    let received = |url: &String| {
        let url = url.clone();
        async move { metric_sum(&url, "sse_events_received_total").await }
    };
    let mut before = Vec::new();
    for url in &args.urls {
        before.push((received(url).await?, 0.0));
    }
    for (b, &pid) in before.iter_mut().zip(&args.pids) {
        b.1 = sse_fanout_bench::sys::cpu_secs(pid).context("reading a hub's CPU time")?;
    }
    let cpu = sse_fanout_bench::sys::cpu_secs;
    let brokers_cpu = || {
        args.broker_pid
            .iter()
            .map(|&pid| cpu(pid))
            .collect::<Vec<_>>()
    };
    let broker_before = brokers_cpu();
    let started = Instant::now();
    let report = pump::through_hub(&spec(broker.rate, broker.seconds), &hub).await;
    let (merged, ended) = until_quiet(&mut workers, Duration::from_secs(60)).await?;
    let took = started.elapsed().as_secs_f64();
    // Each broker process's CPU seconds (null where it could not be read), and their sum.
    let broker_each: Vec<Option<f64>> = brokers_cpu()
        .into_iter()
        .zip(broker_before)
        .map(|(after, before)| Some(round(after? - before?, 2)))
        .collect();
    let broker_cpu = (!broker_each.is_empty())
        .then(|| broker_each.iter().copied().sum::<Option<f64>>())
        .flatten()
        .map(|sum| round(sum, 2));
    let mut per_instance = Vec::new();
    for ((url, &pid), (received_before, cpu_before)) in
        args.urls.iter().zip(&args.pids).zip(&before)
    {
        let cpu = sse_fanout_bench::sys::cpu_secs(pid).context("reading a hub's CPU time")?;
        let got = received(url).await? - received_before;
        per_instance.push(json!({
            "received": got,
            "cpu_secs": round(cpu - cpu_before, 2),
        }));
    }
    workers.stop().await;
    hub.shutdown().await.ok();
    Ok(json!({
        "scenario": "routing",
        "server": args.label,
        "backend": format!("{:?}", broker.backend).to_lowercase(),
        "routing": args.routing,
        "instances": n,
        "sessions": ready.open,
        "rate": broker.rate,
        "published": report.published,
        "publish_failed": report.failed,
        "delivered": merged.received,
        "lost": report.published.saturating_sub(merged.received),
        "per_instance": per_instance,
        "broker_cpu_secs": broker_cpu,
        "broker_cpu_secs_each": broker_each,
        "secs": round(took, 2),
        "latency_ms": percentiles_ms(&merged.deliveries),
        "streams_ended": ended,
    }))
}

/// Subscribes `sessions` routes in batches of 1 000, then unsubscribes them, timing both.
async fn route_subscribe(args: RouteSubscribeArgs) -> anyhow::Result<Value> {
    let broker = &args.broker;
    let instance = format!("loadgen-{}", std::process::id());
    let backend = connect_backend(broker, &instance, "bench").await?;
    // Routes belong to the subscription: open it as a hub does, and drain it.
    let mut stream = backend.subscribe().await?;
    let drain = tokio::spawn(async move { while stream.next().await.is_some() {} });
    tokio::time::sleep(Duration::from_millis(500)).await;
    let routes = backend.routes().context("this backend has no routes")?;
    let sessions: Vec<String> = (0..args.sessions).map(|i| format!("u{i}")).collect();
    let names: Vec<&str> = sessions.iter().map(String::as_str).collect();
    let started = Instant::now();
    for batch in names.chunks(1000) {
        routes.subscribe(batch).await?;
    }
    let subscribe = started.elapsed().as_secs_f64();
    let subscribed = routes.subscribed();
    let started = Instant::now();
    for batch in names.chunks(1000) {
        routes.unsubscribe(batch).await?;
    }
    let unsubscribe = started.elapsed().as_secs_f64();
    let left = routes.subscribed();
    backend.close().await.ok();
    drain.abort();
    Ok(json!({
        "scenario": "route_subscribe",
        "backend": format!("{:?}", broker.backend).to_lowercase(),
        "sessions": args.sessions,
        "route_partitions": (broker.backend == Backend::Rabbit).then_some(broker.route_partitions),
        "routes_subscribed": subscribed,
        "subscribe_secs": round(subscribe, 3),
        "unsubscribe_secs": round(unsubscribe, 3),
        "per_sec": round(args.sessions as f64 / subscribe.max(1e-9), 0),
        "left": left,
    }))
}

/// The sum over its label sets of `series` on the hub at `url`'s `/metrics`.
async fn metric_sum(url: &str, series: &str) -> anyhow::Result<f64> {
    let text = metrics_text(url)
        .await
        .with_context(|| format!("reading {url}/metrics"))?;
    Ok(text
        .lines()
        .filter(|l| {
            l.strip_prefix(series)
                .is_some_and(|r| r.starts_with('{') || r.starts_with(' '))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum())
}

/// Opens a stream of a new session every `1/rate` s for `seconds`, each on its own connection,
/// and records the time from connecting until the response head (the `200`).
async fn opens(args: OpensArgs) -> anyhow::Result<Value> {
    let server = Server::parse(&args.url)?;
    let total = (args.rate as f64 * args.seconds) as u64;
    let interval = Duration::from_secs_f64(1.0 / args.rate.max(1) as f64);
    let run = format!("o{}", std::process::id());
    // Credentials are made before the clock starts: signing is the client's cost, not the hub's.
    let requests = (0..total)
        .map(|i| open_request(args.credential, &format!("{run}-{i}"), &args.jwt_secret))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let calls_before = match &args.app_calls {
        Some(url) => Some(get_number(url).await?),
        None => None,
    };
    let cpu_before = args.server_pid.and_then(sse_fanout_bench::sys::cpu_secs);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for (i, (query, headers)) in requests.into_iter().enumerate() {
        tokio::time::sleep_until((started + interval.mul_f64(i as f64)).into()).await;
        let (server, query) = (
            server.clone(),
            format!("/sse/event-stream?eventName=bench{query}"),
        );
        let source = Ipv4Addr::new(127, 0, 0, 2 + (i % 8) as u8);
        tasks.push(tokio::spawn(async move {
            let at = Instant::now();
            let stream = open_stream_with(&server, Some(source), &query, &headers).await;
            let took = at.elapsed();
            let opened = stream.is_ok();
            // Held a moment, as a client would, then closed.
            tokio::time::sleep(Duration::from_millis(500)).await;
            drop(stream);
            opened.then_some(took)
        }));
    }
    let mut latencies = histogram();
    let mut failed = 0;
    for task in tasks {
        match task.await {
            Ok(Some(took)) => latencies.saturating_record(took.as_micros() as u64),
            _ => failed += 1,
        }
    }
    let server_cpu = server_cpu_since(args.server_pid, cpu_before);
    let callouts = match (&args.app_calls, calls_before) {
        (Some(url), Some(before)) => Some(get_number(url).await? - before),
        _ => None,
    };
    Ok(json!({
        "scenario": "opens",
        "server": args.label,
        "credential": format!("{:?}", args.credential),
        "rate": args.rate,
        "opened": latencies.len(),
        "failed": failed,
        "open_ms": percentiles_ms(&latencies),
        "callouts": callouts,
        "server_cpu_us_per_open": server_cpu
            .map(|c| round(c * 1e6 / latencies.len().max(1) as f64, 1)),
        "route_changes": metric_sum(&args.url, "sse_route_changes_total").await.ok(),
    }))
}

/// The number `http://host:port/path` answers with (the auth application's `/calls`).
async fn get_number(url: &str) -> anyhow::Result<u64> {
    let (base, path) = url
        .split_once("://")
        .and_then(|(scheme, rest)| {
            let at = rest.find('/')?;
            Some((format!("{scheme}://{}", &rest[..at]), &rest[at..]))
        })
        .context("a URL with a path")?;
    let mut client = Publisher::connect(&Server::parse(&base)?).await?;
    let (_, body) = client.get(path).await?;
    Ok(std::str::from_utf8(&body)?.trim().parse()?)
}

/// A hub of app `bench` inside the load tool, on `broker`.
async fn bench_hub(broker: &BrokerArgs) -> anyhow::Result<Hub> {
    bench_hub_routing(broker, sse_fanout::Routing::Broadcast).await
}

/// The load tool's own hub, routing as `routing` says.
async fn bench_hub_routing(
    broker: &BrokerArgs,
    routing: sse_fanout::Routing,
) -> anyhow::Result<Hub> {
    let instance = format!("loadgen-{}", std::process::id());
    let backend = connect_backend(broker, &instance, "bench").await?;
    Ok(Hub::builder_arc(backend)
        .app_name("bench")
        .instance_id(instance)
        .routing(routing)
        .start()
        .await?)
}

/// Publishes `rate` events per second for `seconds` through a hub (one at a time, as a request
/// handler would) and reports how long each publish took.
async fn publish_cost(args: PublishCostArgs) -> anyhow::Result<Value> {
    let broker = &args.broker;
    let hub = bench_hub(broker).await?;
    let mut latencies = histogram();
    let interval = Duration::from_secs_f64(1.0 / broker.rate.max(1) as f64);
    let total = (broker.rate as f64 * broker.seconds) as u64;
    let started = Instant::now();
    let mut failed = 0;
    for n in 0..total {
        let due = started + interval.mul_f64(n as f64);
        tokio::time::sleep_until(due.into()).await;
        let event = sse_fanout::SendSseEvent::new("cost", json!({"n": n})).to_session("s1");
        let at = Instant::now();
        match hub.publish(event).await {
            Ok(_) => latencies.saturating_record(at.elapsed().as_micros() as u64),
            Err(_) => failed += 1,
        }
    }
    hub.shutdown().await.ok();
    Ok(json!({
        "scenario": "publish_cost",
        "backend": format!("{:?}", broker.backend).to_lowercase(),
        "history": broker.history,
        "rate": broker.rate,
        "published": latencies.len(),
        "failed": failed,
        "latency_ms": percentiles_ms(&latencies),
    }))
}

/// Publishes `behind + 1` broadcasts through a hub in this process, then starts a fresh hub
/// process on the same broker and opens every stream on it at once with `lastEventId` set to the
/// first of them: the fresh hub has seen none of them live. Reports how long the fresh hub took
/// to be ready, how long until every stream had its `behind` replayed events, and the broker
/// reads it issued (from its `/metrics`).
async fn resume(args: ResumeArgs) -> anyhow::Result<Value> {
    let broker = &args.broker;
    let s = &args.streams;
    let routed = args.routing == "session";
    let routing = match routed {
        true => sse_fanout::Routing::session(),
        false => sse_fanout::Routing::Broadcast,
    };
    let hub = bench_hub_routing(broker, routing).await?;
    const SESSION: &str = "bench-resume";
    let filler = |n| sse_fanout::SendSseEvent::new("preload", pump::payload(n));
    for chunk in (0..args.preload).collect::<Vec<_>>().chunks(500) {
        let sends = chunk.iter().map(|&n| hub.publish(filler(n)));
        for result in futures_util::future::join_all(sends).await {
            result?;
        }
    }
    let mut first = None;
    for n in 0..=args.behind {
        let mut event = sse_fanout::SendSseEvent::new("bench", pump::payload(n));
        if routed {
            event = event.to_session(SESSION);
        }
        let id = hub.publish(event).await?;
        first.get_or_insert(id);
    }
    hub.shutdown().await.ok();
    let first = first.context("no event published")?;

    let listen = s
        .url
        .strip_prefix("http://")
        .context("--url must be http://host:port")?;
    let kind = format!("{:?}", broker.backend).to_lowercase();
    let started = Instant::now();
    let mut fresh = Command::new(&args.hub_bin)
        .args(["--listen", listen, "--backend", &kind])
        .args([
            "--backend-url",
            &broker.backend_url,
            "--channel",
            &broker.channel,
        ])
        .args(["--app-name", "bench", "--broker-history", &broker.history])
        .args(["--emitter-timeout", "0", "--queue-size", "1024"])
        .args(["--routing", &args.routing])
        .env("RUST_LOG", "warn")
        .kill_on_drop(true)
        .spawn()
        .context("starting the fresh hub")?;
    while server_streams(&s.url).await.is_none() {
        if started.elapsed() > Duration::from_secs(60) {
            bail!("the fresh hub did not answer /healthz within 60 s");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let ready_secs = started.elapsed().as_secs_f64();

    let mut streams = s.clone();
    streams.path = match routed {
        true => format!("{}?lastEventId={first}&sessionId={SESSION}", s.path),
        false => format!("{}?lastEventId={first}", s.path),
    };
    let opening = Instant::now();
    let (mut workers, ready) = Workers::open(&streams, false).await?;
    let want = ready.open as u64 * args.behind;
    let (received, ended) = loop {
        let (merged, ended) = workers.snapshot().await?;
        if merged.received >= want || opening.elapsed() > Duration::from_secs(120) {
            break (merged.received, ended);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let replayed_secs = opening.elapsed().as_secs_f64();
    let metrics = metrics_text(&s.url).await.unwrap_or_default();
    workers.stop().await;
    let _ = fresh.start_kill();
    let _ = fresh.wait().await;
    Ok(json!({
        "scenario": "resume",
        "backend": kind,
        "routing": args.routing,
        "history": broker.history,
        "streams": ready.open,
        "behind": args.behind,
        "preload": args.preload,
        "fresh_ready_s": round(ready_secs, 3),
        "all_replayed_s": round(replayed_secs, 3),
        "connect_s": round(ready.connect_secs, 3),
        "replayed": received,
        "expected": want,
        "streams_ended": ended,
        "broker_reads": metric(&metrics, "sse_history_reads_total"),
        "replays_from_broker": labelled_metric(&metrics, "sse_replays_total", "source=\"broker\""),
        "resets": labelled_metric(&metrics, "sse_replays_total", "source=\"reset\""),
    }))
}

/// A hub's `/metrics` text.
async fn metrics_text(url: &str) -> Option<String> {
    let server = Server::parse(url).ok()?;
    let mut publisher = Publisher::connect(&server).await.ok()?;
    let (_, body) = publisher.get("/metrics").await.ok()?;
    String::from_utf8(body.to_vec()).ok()
}

/// The value of the first series of `name` in Prometheus text.
fn metric(text: &str, name: &str) -> Option<f64> {
    labelled_metric(text, name, "")
}

/// The value of the first series of `name` whose labels contain `label`.
fn labelled_metric(text: &str, name: &str, label: &str) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with(['{', ' ']) && rest.contains(label))
        })?
        .rsplit(' ')
        .next()?
        .parse()
        .ok()
}

async fn broker_rtt(args: BrokerRttArgs) -> anyhow::Result<Value> {
    let broker = &args.broker;
    let recorder = Arc::new(Mutex::new(Recorder::new(false)));
    let channel = format!("{}.rtt3", broker.channel);
    let publish_fn: plain::PublishFn = match broker.backend {
        Backend::Redis => plain::redis(&broker.backend_url, &channel, recorder.clone()).await?,
        Backend::Nats => plain::nats(&broker.backend_url, &channel, recorder.clone()).await?,
        Backend::Rabbit => plain::rabbit(&broker.backend_url, &channel, recorder.clone()).await?,
        Backend::Kafka => plain::kafka(&broker.backend_url, &channel, recorder.clone()).await?,
    };
    // The same bytes the hub would carry, made and read as the hub does: an envelope around the
    // timestamped payload.
    let spec = |rate, seconds| PumpSpec::new(rate, seconds, 1000);
    let events = spec(0, 0.0);
    let message = |n: u64| {
        sse_fanout::Envelope::encode_event(&events.event(n), "sse-fanout", "loadgen")
            .map(|(_, bytes)| bytes.to_vec())
            .unwrap_or_default()
    };
    pump::run(&spec(100, 1.0), 256, |n| publish_fn(message(n))).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    lock(&recorder).clear();
    let report = pump::run(&spec(broker.rate, broker.seconds), 256, |n| {
        publish_fn(message(n))
    })
    .await;
    let mut last = u64::MAX;
    for _ in 0..60 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let received = lock(&recorder).snapshot().received;
        if received == last {
            break;
        }
        last = received;
    }
    let merged = Merged::new([&lock(&recorder).snapshot()]);
    Ok(json!({
        "scenario": "broker_rtt",
        "backend": format!("{:?}", broker.backend).to_lowercase(),
        "rate": broker.rate,
        "published": report.published,
        "publish_failed": report.failed,
        "delivered": merged.received,
        "lost": report.published.saturating_sub(merged.received),
        "latency_ms": percentiles_ms(&merged.deliveries),
    }))
}

fn lock(recorder: &Mutex<Recorder>) -> std::sync::MutexGuard<'_, Recorder> {
    recorder
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Records a message carrying an envelope whose payload is a timestamp.
fn record_envelope(recorder: &Mutex<Recorder>, bytes: &[u8]) {
    let arrived = now_micros();
    if let Ok(envelope) = sse_fanout::Envelope::decode_ref(bytes)
        && let Some((t, n)) = pump::parse_payload(envelope.payload().get())
    {
        lock(recorder).record(n, arrived.saturating_sub(t));
    }
}

/// Each broker's plain client: a subscriber that records, and a publish function.
mod plain {
    use super::*;
    use futures_util::FutureExt;
    use futures_util::future::BoxFuture;

    pub(super) type PublishFn = Box<dyn Fn(Vec<u8>) -> BoxFuture<'static, bool> + Send + Sync>;

    /// A [`PublishFn`] that gives `send` its own handle of `client` and the channel's name.
    fn publisher<C, Fut>(
        client: C,
        channel: &str,
        send: impl Fn(C, String, Vec<u8>) -> Fut + Send + Sync + 'static,
    ) -> PublishFn
    where
        C: Clone + Send + Sync + 'static,
        Fut: Future<Output = bool> + Send + 'static,
    {
        let channel = channel.to_owned();
        Box::new(move |bytes| send(client.clone(), channel.clone(), bytes).boxed())
    }

    pub(super) async fn redis(
        url: &str,
        channel: &str,
        recorder: Arc<Mutex<Recorder>>,
    ) -> anyhow::Result<PublishFn> {
        let client = ::redis::Client::open(url)?;
        let mut pubsub = client.get_async_pubsub().await?;
        pubsub.subscribe(channel).await?;
        tokio::spawn(async move {
            let mut messages = pubsub.on_message();
            while let Some(message) = messages.next().await {
                record_envelope(&recorder, message.get_payload_bytes());
            }
        });
        let connection = client.get_multiplexed_async_connection().await?;
        Ok(publisher(
            connection,
            channel,
            |mut connection, channel, bytes| async move {
                ::redis::cmd("PUBLISH")
                    .arg(&channel)
                    .arg(bytes)
                    .query_async::<i64>(&mut connection)
                    .await
                    .is_ok()
            },
        ))
    }

    pub(super) async fn nats(
        url: &str,
        subject: &str,
        recorder: Arc<Mutex<Recorder>>,
    ) -> anyhow::Result<PublishFn> {
        let client = async_nats::connect(url).await?;
        let mut subscriber = client.subscribe(subject.to_owned()).await?;
        // The server holds the SUB once a message to our own inbox, sent after it, comes back
        // (`flush` only writes the buffer out).
        let inbox = client.new_inbox();
        let mut probe = client.subscribe(inbox.clone()).await?;
        client.publish(inbox, Vec::new().into()).await?;
        client.flush().await?;
        probe.next().await.context("NATS closed the connection")?;
        tokio::spawn(async move {
            while let Some(message) = subscriber.next().await {
                record_envelope(&recorder, &message.payload);
            }
        });
        Ok(publisher(
            client,
            subject,
            |client, subject, bytes| async move {
                client.publish(subject, bytes.into()).await.is_ok() && client.flush().await.is_ok()
            },
        ))
    }

    pub(super) async fn rabbit(
        url: &str,
        exchange: &str,
        recorder: Arc<Mutex<Recorder>>,
    ) -> anyhow::Result<PublishFn> {
        use lapin::options::{
            BasicConsumeOptions, BasicPublishOptions, ExchangeDeclareOptions, QueueBindOptions,
            QueueDeclareOptions,
        };
        use lapin::types::FieldTable;
        use lapin::{BasicProperties, Connection, ConnectionProperties, ExchangeKind};
        let connection = Connection::connect(url, ConnectionProperties::default()).await?;
        let channel = connection.create_channel().await?;
        let options = ExchangeDeclareOptions {
            auto_delete: true,
            ..ExchangeDeclareOptions::default()
        };
        channel
            .exchange_declare(
                exchange.to_owned().into(),
                ExchangeKind::Fanout,
                options,
                FieldTable::default(),
            )
            .await?;
        let options = QueueDeclareOptions {
            exclusive: true,
            auto_delete: true,
            ..QueueDeclareOptions::default()
        };
        let queue = channel
            .queue_declare("".into(), options, FieldTable::default())
            .await?;
        channel
            .queue_bind(
                queue.name().clone(),
                exchange.to_owned().into(),
                "".into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;
        let options = BasicConsumeOptions {
            no_ack: true,
            ..BasicConsumeOptions::default()
        };
        let mut consumer = channel
            .basic_consume(
                queue.name().clone(),
                "loadgen".into(),
                options,
                FieldTable::default(),
            )
            .await?;
        tokio::spawn(async move {
            let _connection = connection;
            while let Some(Ok(delivery)) = consumer.next().await {
                record_envelope(&recorder, &delivery.data);
            }
        });
        Ok(publisher(
            channel,
            exchange,
            |channel, exchange, bytes| async move {
                channel
                    .basic_publish(
                        exchange.into(),
                        "".into(),
                        BasicPublishOptions::default(),
                        &bytes,
                        BasicProperties::default(),
                    )
                    .await
                    .is_ok()
            },
        ))
    }

    pub(super) async fn kafka(
        brokers: &str,
        topic: &str,
        recorder: Arc<Mutex<Recorder>>,
    ) -> anyhow::Result<PublishFn> {
        use rdkafka::ClientConfig;
        use rdkafka::Message;
        use rdkafka::Offset;
        use rdkafka::TopicPartitionList;
        use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
        use rdkafka::consumer::{Consumer, StreamConsumer};
        use rdkafka::producer::{FutureProducer, FutureRecord};
        // The settings the sse-fanout Kafka backend uses, so that only the client code differs.
        let config = |pairs: &[(&str, &str)]| {
            let mut c = ClientConfig::new();
            c.set("bootstrap.servers", brokers);
            c.set("socket.nagle.disable", "true");
            c.set("reconnect.backoff.ms", "50");
            c.set("reconnect.backoff.max.ms", "1000");
            for (k, v) in pairs {
                c.set(*k, *v);
            }
            c
        };
        // The topic as the backend lays it out: 3 partitions, records keyed by session.
        const PARTITIONS: i32 = 3;
        let admin: AdminClient<_> = config(&[]).create()?;
        let _ = admin
            .create_topics(
                [&NewTopic::new(
                    topic,
                    PARTITIONS,
                    TopicReplication::Fixed(1),
                )],
                &AdminOptions::new(),
            )
            .await?;
        let group = format!("loadgen-{}", uuid::Uuid::new_v4());
        let consumer: StreamConsumer = config(&[
            ("group.id", &group),
            ("fetch.wait.max.ms", "5"),
            ("fetch.error.backoff.ms", "50"),
            ("enable.auto.commit", "false"),
        ])
        .create()?;
        let timeout = Duration::from_secs(10);
        let mut assignment = TopicPartitionList::new();
        for partition in 0..PARTITIONS {
            let mut waited = 0;
            let high = loop {
                match consumer.fetch_watermarks(topic, partition, timeout) {
                    Ok((_, high)) => break high,
                    Err(error) if waited >= 50 => return Err(error.into()),
                    Err(_) => {
                        waited += 1;
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            };
            assignment.add_partition_offset(topic, partition, Offset::Offset(high))?;
        }
        consumer.assign(&assignment)?;
        tokio::spawn(async move {
            loop {
                match consumer.recv().await {
                    Ok(message) => {
                        if let Some(payload) = message.payload() {
                            record_envelope(&recorder, payload);
                        }
                    }
                    Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
                }
            }
        });
        let producer: FutureProducer = config(&[("linger.ms", "0")]).create()?;
        Ok(publisher(
            producer,
            topic,
            |producer, topic, bytes| async move {
                let key = sse_fanout::Envelope::decode_ref(&bytes)
                    .ok()
                    .and_then(|e| e.session_id().map(str::to_owned))
                    .unwrap_or_default();
                producer
                    .send(
                        FutureRecord::<str, [u8]>::to(&topic)
                            .key(&key)
                            .payload(&bytes),
                        Duration::from_secs(5),
                    )
                    .await
                    .is_ok()
            },
        ))
    }
}

/// BENCHMARKS.md's table from the JSON lines of one run.
mod report {
    use std::fmt::Write;

    use serde_json::Value;

    /// The servers compared, by the labels `scripts/bench.sh` gives them.
    const OURS: &str = "sse-fanout";
    const BASELINE: &str = "baseline";
    const FLOOR: &str = "floor";

    struct Runs(Vec<Value>);

    impl Runs {
        fn matching(
            &self,
            scenario: &str,
            server: &str,
            matches: impl Fn(&Value) -> bool,
        ) -> Vec<&Value> {
            self.0
                .iter()
                .filter(|r| r["scenario"] == scenario && r["server"] == server && matches(r))
                .collect()
        }

        /// Of the runs of `scenario` on `server` that `matches`, the one with the median `key`
        /// (the table shows a typical run when a scenario was run several times).
        fn median(
            &self,
            scenario: &str,
            server: &str,
            matches: impl Fn(&Value) -> bool,
            key: &[&str],
        ) -> Option<&Value> {
            let mut runs = self.matching(scenario, server, matches);
            runs.sort_by(|a, b| {
                let (a, b) = (num(Some(a), key), num(Some(b), key));
                a.partial_cmp(&b).unwrap_or(std::cmp::Ordering::Equal)
            });
            runs.get(runs.len().saturating_sub(1) / 2).copied()
        }

        fn count(&self, scenario: &str, server: &str, matches: impl Fn(&Value) -> bool) -> usize {
            self.matching(scenario, server, matches).len()
        }
    }

    /// ", median of N runs" when there were several.
    fn runs_note(n: usize) -> String {
        if n > 1 {
            format!(", median of {n} runs")
        } else {
            String::new()
        }
    }

    fn num(v: Option<&Value>, path: &[&str]) -> Option<f64> {
        let mut v = v?;
        for key in path {
            v = v.get(key)?;
        }
        v.as_f64()
    }

    fn fmt(x: Option<f64>) -> String {
        match x {
            None => "–".to_owned(),
            Some(x) if x.fract() == 0.0 => format!("{x:.0}"),
            Some(x) if x >= 1000.0 => format!("{:.0}", x),
            Some(x) if x >= 100.0 => format!("{x:.0}"),
            Some(x) if x >= 10.0 => format!("{x:.1}"),
            Some(x) => format!("{x:.2}"),
        }
    }

    fn ratio(ours: Option<f64>, theirs: Option<f64>) -> String {
        match (ours, theirs) {
            (Some(a), Some(b)) if b > 0.0 => format!("{:.2}", a / b),
            _ => "–".to_owned(),
        }
    }

    /// One row of the table: a figure at `path` in each server's run.
    type Figure<'a> = (&'a str, &'a [&'a str], &'a str);

    /// The rows of one scenario, from the runs of sse-fanout, the baseline and the floor.
    fn section(
        out: &mut String,
        name: &str,
        runs: [Option<&Value>; 3],
        figures: &[Figure<'_>],
    ) -> std::fmt::Result {
        let [ours, base, floor] = runs;
        for (figure, path, target) in figures {
            let (a, b) = (num(ours, path), num(base, path));
            writeln!(
                out,
                "| {name} | {figure} | {} | {} | {} | {} | {target} |",
                fmt(a),
                fmt(b),
                ratio(a, b),
                fmt(num(floor, path))
            )?;
        }
        Ok(())
    }

    /// The table, in Markdown.
    pub(super) fn table(lines: &str) -> anyhow::Result<String> {
        let runs = Runs(
            lines
                .lines()
                .filter(|l| !l.trim().is_empty())
                .map(serde_json::from_str)
                .collect::<Result<_, _>>()?,
        );
        let any = |_: &Value| true;
        let mut out = String::new();
        writeln!(
            out,
            "| scenario | figure | sse-fanout | baseline (axum) | sse-fanout / baseline | floor | target |"
        )?;
        writeln!(out, "|---|---|---|---|---|---|---|")?;
        // 1. Idle capacity.
        let idle = |server| runs.median("idle", server, any, &["kib_per_stream"]);
        let streams = num(idle(OURS), &["streams"]).unwrap_or(0.0);
        section(
            &mut out,
            &format!("1. idle, {streams:.0} streams"),
            [idle(OURS), idle(BASELINE), idle(FLOOR)],
            &[
                (
                    "KiB resident per stream",
                    &["kib_per_stream"],
                    "≤ 8; < baseline",
                ),
                ("connects per second", &["connects_per_sec"], ""),
            ],
        )?;
        // 2. Broadcast.
        let bc = |server| runs.median("broadcast", server, any, &["time_until_all_ms", "p99"]);
        let streams = num(bc(OURS), &["streams"]).unwrap_or(0.0);
        let note = runs_note(runs.count("broadcast", OURS, any));
        section(
            &mut out,
            &format!("2. broadcast to {streams:.0}{note}"),
            [bc(OURS), bc(BASELINE), bc(FLOOR)],
            &[
                (
                    "time until all have it, p50 ms",
                    &["time_until_all_ms", "p50"],
                    "",
                ),
                (
                    "time until all have it, p99 ms",
                    &["time_until_all_ms", "p99"],
                    "< 50; < baseline",
                ),
                (
                    "time until all have it, max ms",
                    &["time_until_all_ms", "max"],
                    "",
                ),
                ("one delivery, p50 ms", &["delivery_ms", "p50"], ""),
                ("one delivery, p99 ms", &["delivery_ms", "p99"], ""),
            ],
        )?;
        // 3. Targeted, published inside the server, at each rate that was run.
        let mut rates: Vec<u64> = runs
            .0
            .iter()
            .filter(|r| r["scenario"] == "targeted")
            .filter_map(|r| r["rate"].as_u64())
            .collect();
        rates.sort_unstable();
        rates.dedup();
        for rate in rates {
            let at = |r: &Value| r["rate"].as_u64() == Some(rate);
            let tg = |server| runs.median("targeted", server, at, &["latency_ms", "p99"]);
            let note = runs_note(runs.count("targeted", OURS, at));
            let (rate_target, p99_target) = if rate >= 100_000 {
                ("≥ 100 000", "< 10")
            } else {
                ("", "")
            };
            section(
                &mut out,
                &format!("3. targeted, {rate}/s in-process{note}"),
                [tg(OURS), tg(BASELINE), None],
                &[
                    ("delivered per second", &["delivered_per_sec"], rate_target),
                    ("lost", &["lost"], "0"),
                    ("latency p50 ms", &["latency_ms", "p50"], ""),
                    ("latency p99 ms", &["latency_ms", "p99"], p99_target),
                    ("latency p99.9 ms", &["latency_ms", "p999"], ""),
                ],
            )?;
        }
        // The HTTP publish path.
        let hp = |server| runs.median("publish", server, any, &["request_ms", "p99"]);
        let connections = num(hp(OURS), &["connections"]).unwrap_or(0.0);
        section(
            &mut out,
            &format!("HTTP publish, {connections:.0} keep-alive connections"),
            [hp(OURS), hp(BASELINE), None],
            &[
                ("requests per second", &["requests_per_sec"], ""),
                ("request p50 ms", &["request_ms", "p50"], ""),
                ("request p99 ms", &["request_ms", "p99"], ""),
                ("publish to arrival p99 ms", &["delivery_ms", "p99"], ""),
            ],
        )?;
        // 4. Cross-instance, against the broker's own round trip.
        writeln!(out)?;
        writeln!(
            out,
            "| 4. cross-instance | rate | sse-fanout A→B p50 / p99 ms | broker's own round trip p50 / p99 ms | added by sse-fanout p50 / p99 ms | lost | target |"
        )?;
        writeln!(out, "|---|---|---|---|---|---|---|")?;
        for backend in ["redis", "nats", "rabbit", "kafka"] {
            let by = |r: &Value| r["backend"] == backend;
            let cross = runs.0.iter().find(|r| r["scenario"] == "cross" && by(r));
            let rtt = runs
                .0
                .iter()
                .find(|r| r["scenario"] == "broker_rtt" && by(r));
            if cross.is_none() && rtt.is_none() {
                continue;
            }
            let p = |v: Option<&Value>, q: &str| num(v, &["latency_ms", q]);
            let added = |q: &str| match (p(cross, q), p(rtt, q)) {
                (Some(a), Some(b)) => format!("{:.2}", a - b),
                _ => "–".to_owned(),
            };
            let target = if matches!(backend, "redis" | "nats") {
                "p50 < 1 ms"
            } else {
                ""
            };
            writeln!(
                out,
                "| {backend} | {}/s | {} / {} | {} / {} | {} / {} | {} | {target} |",
                fmt(num(cross, &["rate"])),
                fmt(p(cross, "p50")),
                fmt(p(cross, "p99")),
                fmt(p(rtt, "p50")),
                fmt(p(rtt, "p99")),
                added("p50"),
                added("p99"),
                fmt(num(cross, &["lost"])),
            )?;
        }
        Ok(out)
    }
}
