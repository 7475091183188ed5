//! sse-fanout as a library user serves it (`Hub` on the local backend, `SseRouter`, `serve`), plus
//! a control port whose `POST /bench/pump` publishes at a fixed rate through `Hub::publish`
//! inside this process: the in-process side of the targeted scenario.
//!
//! ```sh
//! cargo run --release -p sse-fanout-bench --bin fanout-server -- --listen 127.0.0.1:8092 --control 127.0.0.1:8093
//! ```

/// The hub binary's allocator and settings (see `src/main.rs`), so this server is the hub's twin.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's settings, as the hub's.
#[allow(unsafe_code, non_upper_case_globals)]
#[unsafe(export_name = "_rjem_malloc_conf")]
pub static malloc_conf: &[u8] = b"background_thread:true,dirty_decay_ms:1000,muzzy_decay_ms:0\0";

use std::time::Duration;

use axum::extract::State;
use axum::routing::post;
use axum::{Json, Router};
use clap::Parser;
use serde_json::{Value, json};
use sse_fanout::{DevSessions, Hub, HubConfig, LocalBackend, ReplayConfig, SseRouter};
use sse_fanout_bench::pump::{self, PumpSpec};

#[derive(Debug, Parser)]
struct Args {
    /// Address of the SSE endpoints.
    #[arg(long, default_value = "127.0.0.1:8092")]
    listen: String,
    /// Address of the control endpoint (`POST /bench/pump`).
    #[arg(long, default_value = "127.0.0.1:8093")]
    control: String,
    /// Events kept for replay (0: none), as the hub's `--replay-events`.
    #[arg(long, default_value_t = 10_000)]
    replay_events: usize,
    /// Serve TLS with this certificate chain (PEM), as the hub's `--tls-cert`.
    #[arg(long, requires = "tls_key")]
    tls_cert: Option<std::path::PathBuf>,
    /// The key of `--tls-cert` (PEM).
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<std::path::PathBuf>,
}

async fn pump(
    State((hub, backend)): State<(Hub, LocalBackend)>,
    Json(spec): Json<PumpSpec>,
) -> Json<Value> {
    let lagged = backend.lagged();
    let report = pump::through_hub(&spec, &hub).await;
    // Give the receiving side a moment, then say whether it fell behind the publisher.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut answer = json!(report);
    answer["lostInBackend"] = json!(backend.lagged() - lagged);
    Json(answer)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    sse_fanout_bench::sys::raise_fd_limit();
    let mut config = HubConfig::new("sse-fanout");
    // As the hub binary, but streams stay open for the whole run.
    config.emitter_timeout = None;
    config.heartbeat = Some(Duration::from_secs(15));
    config.replay = (args.replay_events > 0).then(|| {
        let mut replay = ReplayConfig::default();
        replay.max_events = args.replay_events;
        replay
    });
    let backend = LocalBackend::new();
    let hub = Hub::builder(backend.clone()).config(config).start().await?;
    let control = tokio::net::TcpListener::bind(&args.control).await?;
    let app = Router::new()
        .route("/bench/pump", post(pump))
        .with_state((hub.clone(), backend));
    tokio::spawn(async move { axum::serve(control, app).await });
    let listener = tokio::net::TcpListener::bind(&args.listen).await?;
    eprintln!("fanout-server listening on {}", listener.local_addr()?);
    let router = SseRouter::new(hub.clone()).resolver(DevSessions);
    let mut options = sse_fanout::hyper::ServeOptions::default();
    if let (Some(cert), Some(key)) = (&args.tls_cert, &args.tls_key) {
        options.tls = Some(sse_fanout::hyper::Tls::load(
            sse_fanout::hyper::TlsFiles::new(cert, key),
        )?);
    }
    sse_fanout::hyper::serve_with(listener, router, std::future::pending(), options).await?;
    Ok(())
}
