//! The presence benchmark's parts (`scripts/bench-presence.sh`, BENCHMARKS.md "Presence").
//!
//! `node`: one hub as a library user runs it, on Redis, with presence on or off, serving the
//! endpoints (so presence is queried over HTTP), holding `--sessions` streams of its own opened
//! in this process (one per session, none listening to presence events), and, once every node
//! has settled (sees every session), from the time `--churn-at-file` gives
//! closing its oldest stream and opening one of a new session `--churn` times a second for
//! `--churn-secs`. It prints JSON lines: when its streams are open, what the churn cost it
//! (CPU seconds of the process, resident memory before), then its view of the cluster whenever
//! it changes (sessions online, presence events a listener of its own received).
//!
//! `query`: `GET /sse/presence` over keep-alive connections, as fast as answered; p50/p99.
//!
//! ```sh
//! cargo run --release -p sse-fanout-bench --bin presence-node -- node --redis redis://127.0.0.1:6392 \
//!     --listen 127.0.0.1:8201 --prefix n1 --sessions 33334 --presence
//! ```

/// The hub binary's allocator and settings (see `src/main.rs`), so a node is the hub's twin.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's settings, as the hub's.
#[allow(unsafe_code, non_upper_case_globals)]
#[unsafe(export_name = "_rjem_malloc_conf")]
pub static malloc_conf: &[u8] = b"background_thread:true,dirty_decay_ms:1000,muzzy_decay_ms:0\0";

use std::collections::VecDeque;
use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use clap::{Args, Parser, Subcommand};
use futures_util::StreamExt;
use serde_json::json;
use sse_fanout::connect::BackendSettings;
use sse_fanout::presence::PresenceConfig;
use sse_fanout::{DevSessions, EventFilter, Hub, SseRouter};
use sse_fanout_bench::client::{Publisher, Server};
use sse_fanout_bench::record::{histogram, percentiles_ms};
use sse_fanout_bench::sys::{cpu_secs, now_micros, raise_fd_limit, rss_kib};

#[derive(Debug, Parser)]
#[command(
    name = "presence-node",
    about = "The presence benchmark's hub and query client"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// One hub holding sessions and churning them.
    Node(NodeArgs),
    /// Presence queries as fast as answered.
    Query(QueryArgs),
}

#[derive(Debug, Args)]
struct NodeArgs {
    /// The Redis the hubs share.
    #[arg(long)]
    redis: String,
    /// The channel on it.
    #[arg(long, default_value = "presence-bench")]
    channel: String,
    /// Where the endpoints listen.
    #[arg(long)]
    listen: String,
    /// This node's instance id and the prefix of its session ids.
    #[arg(long)]
    prefix: String,
    /// Sessions (one stream each) this node holds.
    #[arg(long)]
    sessions: usize,
    /// Track presence; without it, the same hub with none.
    #[arg(long)]
    presence: bool,
    /// With `--presence`: send presence events too, under `presence`.
    #[arg(long)]
    events: bool,
    /// Sessions of the whole cluster: the node says it has settled once it sees them all (and,
    /// with `--events`, as many `online` events).
    #[arg(long)]
    total: u64,
    /// A file that says when the churn starts (Unix ms), written once every node has settled.
    #[arg(long)]
    churn_at_file: std::path::PathBuf,
    /// Streams closed (and as many opened, of new sessions) per second.
    #[arg(long, default_value_t = 333)]
    churn: u32,
    /// How long the churn lasts.
    #[arg(long, default_value_t = 20)]
    churn_secs: u64,
}

#[derive(Debug, Args)]
struct QueryArgs {
    /// A node's base URL.
    #[arg(long)]
    url: String,
    /// The query after `/sse/presence?`.
    #[arg(long)]
    query: String,
    /// Queries in all.
    #[arg(long, default_value_t = 20_000)]
    queries: usize,
    /// Keep-alive connections sending them.
    #[arg(long, default_value_t = 4)]
    connections: usize,
}

fn line(value: serde_json::Value) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{value}");
    let _ = out.flush();
}

fn unix_ms() -> u64 {
    now_micros() / 1000
}

async fn node(args: NodeArgs) -> anyhow::Result<()> {
    raise_fd_limit();
    let connector = sse_fanout::BACKENDS
        .iter()
        .find(|c| c.name == "redis")
        .ok_or_else(|| anyhow::anyhow!("this build has no redis backend"))?;
    let mut settings = BackendSettings::new(args.channel.clone());
    settings.url = Some(args.redis.clone());
    settings.app_name = "presence-bench".to_owned();
    settings.instance_id = args.prefix.clone();
    settings.history = Some(sse_fanout::ReplayConfig::default());
    let backend = (connector.connect)(settings).await?;
    let presence = args.presence.then(|| match args.events {
        true => PresenceConfig::default().events("presence"),
        false => PresenceConfig::default(),
    });
    let hub = Hub::builder_arc(backend)
        .app_name("presence-bench")
        .instance_id(args.prefix.clone())
        .heartbeat(None)
        .emitter_timeout(None)
        .presence(presence)
        .start()
        .await?;
    let listener = tokio::net::TcpListener::bind(&args.listen).await?;
    let router = SseRouter::new(hub.clone()).resolver(DevSessions);
    tokio::spawn(sse_fanout::hyper::serve(
        listener,
        router,
        std::future::pending(),
    ));

    // The presence events a listener here receives.
    let (online, offline) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    if args.events {
        let mut events = hub
            .open_stream(None, EventFilter::parse("presence")?)
            .await?;
        let (on, off) = (online.clone(), offline.clone());
        tokio::spawn(async move {
            while let Some(frame) = events.next().await {
                let text = String::from_utf8_lossy(&frame);
                if text.contains(r#""state":"online""#) {
                    on.fetch_add(1, Ordering::Relaxed);
                } else if text.contains(r#""state":"offline""#) {
                    off.fetch_add(1, Ordering::Relaxed);
                }
            }
        });
    }

    let names = EventFilter::parse("e")?;
    let mut streams = VecDeque::with_capacity(args.sessions);
    for i in 0..args.sessions {
        let session = format!("{}-{i}", args.prefix);
        streams.push_back(hub.open_stream(Some(session.into()), names.clone()).await?);
    }
    let pid = std::process::id();
    line(json!({"ready": args.sessions, "t": unix_ms(), "rss_kib": rss_kib(pid)}));

    // Settled: this node sees every session of the cluster (and its online event).
    if let Some(presence) = hub.presence() {
        while !(presence.synced()
            && presence.counts().sessions as u64 >= args.total
            && (!args.events || online.load(Ordering::Relaxed) >= args.total))
        {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    line(json!({"settled": unix_ms(), "rss_kib": rss_kib(pid)}));
    let churn_at = loop {
        if let Some(at) = std::fs::read_to_string(&args.churn_at_file)
            .ok()
            .and_then(|text| text.trim().parse::<u64>().ok())
        {
            break at;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let wait = churn_at.saturating_sub(unix_ms());
    tokio::time::sleep(Duration::from_millis(wait)).await;
    let (cpu_before, rss_before) = (cpu_secs(pid), rss_kib(pid));
    let started = Instant::now();
    let every = Duration::from_secs(1) / args.churn.max(1);
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut next = args.sessions;
    let mut churned = 0u64;
    while started.elapsed() < Duration::from_secs(args.churn_secs) {
        tick.tick().await;
        streams.pop_front();
        let session = format!("{}-{next}", args.prefix);
        next += 1;
        streams.push_back(hub.open_stream(Some(session.into()), names.clone()).await?);
        churned += 1;
    }
    let secs = started.elapsed().as_secs_f64();
    line(json!({
        "churn": {
            "secs": secs,
            "closes": churned,
            "opens": churned,
            "cpu_secs": cpu_secs(pid).zip(cpu_before).map(|(after, before)| after - before),
            "rss_kib_before": rss_before,
            "rss_kib_after": rss_kib(pid),
        }
    }));

    // The cluster as seen from here, whenever it changes.
    let mut last = None;
    loop {
        let now = match hub.presence() {
            Some(p) => {
                let counts = p.counts();
                Some((
                    counts.sessions,
                    counts.instances,
                    online.load(Ordering::Relaxed),
                    offline.load(Ordering::Relaxed),
                ))
            }
            None => None,
        };
        if now != last {
            if let Some((sessions, instances, on, off)) = now {
                line(json!({
                    "t": unix_ms(), "sessions": sessions, "instances": instances,
                    "online_events": on, "offline_events": off,
                }));
            }
            last = now;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn query(args: QueryArgs) -> anyhow::Result<()> {
    let server = Server::parse(&args.url)?;
    let path = format!("/sse/presence?{}", args.query);
    let per = args.queries / args.connections.max(1);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..args.connections.max(1) {
        let (server, path) = (server.clone(), path.clone());
        tasks.push(tokio::spawn(async move {
            let mut publisher = Publisher::connect(&server).await?;
            let mut h = histogram();
            for _ in 0..per {
                let sent = Instant::now();
                let (status, _) = publisher.get(&path).await?;
                anyhow::ensure!(status == 200, "presence answered {status}");
                h.record(sent.elapsed().as_micros().max(1) as u64)?;
            }
            Ok::<_, anyhow::Error>(h)
        }));
    }
    let mut all = histogram();
    for task in tasks {
        all.add(task.await??)?;
    }
    let secs = started.elapsed().as_secs_f64();
    line(json!({
        "query": args.query,
        "queries": all.len(),
        "per_sec": (all.len() as f64 / secs).round(),
        "latency_ms": percentiles_ms(&all),
    }));
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Cmd::Node(args) => node(args).await,
        Cmd::Query(args) => query(args).await,
    }
}
