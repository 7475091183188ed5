//! Soak test: thousands of clients connect to a hub, receive events, and drop abruptly, round after
//! round; afterwards the hub must hold no stream and its resident memory must be back within 10 %
//! of where it started. The first round is the warm-up: a process that never served a connection
//! has not yet grown its runtime's and allocator's structures, so "where it started" is the
//! resident memory after that round. After each round the soak waits until the hub's RSS settles.
//!
//! ```sh
//! cargo build --release && cargo run --release --example soak -- --clients 3000 --rounds 8
//! ```
//!
//! It starts `target/release/sse-fanout` on 127.0.0.1:18990 (or `--hub-bin`), talks to it over
//! loopback only, and stops by itself: bounded in rounds and in time (`--max-seconds`). It prints one
//! JSON line and exits non-zero when a check fails.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use clap::Parser;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[derive(Debug, Parser)]
struct Args {
    /// Clients per round.
    #[arg(long, default_value_t = 2000)]
    clients: usize,
    /// Rounds.
    #[arg(long, default_value_t = 6)]
    rounds: usize,
    /// Broadcast events each client must receive per round.
    #[arg(long, default_value_t = 5)]
    events: usize,
    /// The hub binary to start.
    #[arg(long, default_value = "target/release/sse-fanout")]
    hub_bin: String,
    /// Address for the hub.
    #[arg(long, default_value = "127.0.0.1:18990")]
    addr: String,
    /// Give up after this many seconds in all.
    #[arg(long, default_value_t = 300)]
    max_seconds: u64,
    /// More arguments for the hub (repeatable), e.g. `--hub-arg=--replay-events=0`.
    #[arg(long = "hub-arg", allow_hyphen_values = true)]
    hub_args: Vec<String>,
}

struct Hub(Child);

impl Drop for Hub {
    /// SIGTERM (the hub drains and exits), SIGKILL if it is still there 10 s later.
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.0.id().to_string()])
            .status();
        for _ in 0..100 {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

async fn http(addr: &str, request: String) -> std::io::Result<String> {
    let mut stream = TcpStream::connect(addr).await?;
    stream.write_all(request.as_bytes()).await?;
    let mut out = String::new();
    stream.read_to_string(&mut out).await?;
    Ok(out)
}

async fn open_streams(addr: &str) -> u64 {
    let response = http(
        addr,
        format!("GET /healthz HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\n\r\n"),
    )
    .await
    .unwrap_or_default();
    let body = response.split("\r\n\r\n").nth(1).unwrap_or("{}");
    serde_json::from_str::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v["streams"].as_u64())
        .unwrap_or(u64::MAX)
}

async fn publish(addr: &str, n: usize) {
    let body = format!(r#"{{"eventName":"soak","payload":{n}}}"#);
    let request = format!(
        "POST /sse/publish HTTP/1.1\r\nhost: {addr}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    let response = http(addr, request).await.unwrap_or_default();
    assert!(
        response.starts_with("HTTP/1.1 202"),
        "publish failed: {response}"
    );
}

/// One client: opens a stream, waits for `events` soak events, then drops the socket with a reset.
async fn client(
    addr: String,
    events: usize,
    ready: tokio::sync::mpsc::Sender<()>,
    mut connecting: Option<tokio::sync::OwnedSemaphorePermit>,
) -> bool {
    let Ok(mut stream) = TcpStream::connect(&addr).await else {
        return false;
    };
    let request = format!("GET /sse/event-stream?eventName=soak HTTP/1.1\r\nhost: {addr}\r\n\r\n");
    if stream.write_all(request.as_bytes()).await.is_err() {
        return false;
    }
    let mut seen = String::new();
    let mut buf = vec![0u8; 4096];
    let mut announced = false;
    loop {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return false,
            Ok(n) => seen.push_str(&String::from_utf8_lossy(&buf[..n])),
        }
        if !announced && seen.contains(": ok") {
            announced = true;
            connecting.take();
            let _ = ready.send(()).await;
        }
        if seen.matches("event: soak").count() >= events {
            break;
        }
    }
    // Abruptly: a reset instead of a clean close.
    let _ = stream.set_zero_linger();
    drop(stream);
    true
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let args = Args::parse();
    let _ = rlimit::increase_nofile_limit(u64::MAX);
    let started = Instant::now();
    let child = Command::new(&args.hub_bin)
        .args([
            "--listen",
            &args.addr,
            "--heartbeat",
            "0",
            "--emitter-timeout",
            "0",
        ])
        .args(&args.hub_args)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn();
    let hub = match child {
        Ok(child) => Hub(child),
        Err(e) => {
            eprintln!(
                "soak: cannot start {}: {e} (cargo build --release first)",
                args.hub_bin
            );
            return std::process::ExitCode::FAILURE;
        }
    };
    let pid = hub.0.id();
    while open_streams(&args.addr).await == u64::MAX {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let rss_start = rss_kib(pid);
    let mut rss_after_first = 0;
    let mut rss_peak = rss_start;
    let mut failed_clients = 0usize;
    for round in 0..args.rounds {
        if started.elapsed() > Duration::from_secs(args.max_seconds) {
            eprintln!("soak: time limit reached after {round} rounds");
            break;
        }
        let (ready_tx, mut ready_rx) = tokio::sync::mpsc::channel(args.clients);
        // At most 256 connects in flight: a burst of thousands overflows the listen backlog and
        // leaves clients in SYN retransmission for seconds.
        let connecting = std::sync::Arc::new(tokio::sync::Semaphore::new(256));
        let tasks: Vec<_> = (0..args.clients)
            .map(|_| {
                let (addr, ready, connecting) =
                    (args.addr.clone(), ready_tx.clone(), connecting.clone());
                let events = args.events;
                tokio::spawn(async move {
                    let permit = connecting.acquire_owned().await.ok();
                    let within = Duration::from_secs(60);
                    tokio::time::timeout(within, client(addr, events, ready, permit))
                        .await
                        .unwrap_or(false)
                })
            })
            .collect();
        drop(ready_tx);
        let mut connected = 0;
        while connected < args.clients {
            match tokio::time::timeout(Duration::from_secs(10), ready_rx.recv()).await {
                Ok(Some(())) => connected += 1,
                _ => break,
            }
        }
        if connected < args.clients {
            eprintln!(
                "soak: round {round}: only {connected} of {} clients connected",
                args.clients
            );
        }
        rss_peak = rss_peak.max(rss_kib(pid));
        for n in 0..args.events {
            publish(&args.addr, n).await;
        }
        for task in tasks {
            if !task.await.unwrap_or(false) {
                failed_clients += 1;
            }
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while open_streams(&args.addr).await != 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // Let the hub give memory back (it trims every 5 s after a burst), until RSS settles.
        let mut rss = rss_kib(pid);
        for _ in 0..24 {
            tokio::time::sleep(Duration::from_millis(500)).await;
            let now = rss_kib(pid);
            if now == rss && now < rss_peak / 2 {
                break;
            }
            rss = now;
        }
        if round == 0 {
            rss_after_first = rss;
        }
        let what = if round == 0 { " (warm-up)" } else { "" };
        eprintln!("soak: round {round}{what}: {connected} clients, RSS {rss} KiB");
    }
    let streams_left = open_streams(&args.addr).await;
    let rss_end = rss_kib(pid);
    let growth = (rss_end as f64 / rss_after_first.max(1) as f64 - 1.0) * 100.0;
    let ok = streams_left == 0 && failed_clients == 0 && growth <= 10.0 && args.rounds > 1;
    println!(
        "{}",
        serde_json::json!({
            "clients_per_round": args.clients,
            "rounds": args.rounds,
            "events_per_client": args.events,
            "failed_clients": failed_clients,
            "streams_left": streams_left,
            "rss_kib": {"before_warmup": rss_start, "start": rss_after_first, "peak": rss_peak, "end": rss_end},
            "rss_growth_pct": (growth * 10.0).round() / 10.0,
            "seconds": started.elapsed().as_secs_f64(),
            "ok": ok,
        })
    );
    drop(hub);
    if ok {
        std::process::ExitCode::SUCCESS
    } else {
        std::process::ExitCode::FAILURE
    }
}
