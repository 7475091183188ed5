//! The demo page in a real browser (headless Chromium driven by `tests/browser/e2e.mjs`): it opens
//! an EventSource through a load balancer onto hub A, receives named events published through hub
//! B (a real Redis between them), then hub A is restarted; the page reconnects by itself (to B,
//! the balancer's other instance, with `Last-Event-ID`) and shows the events published while it was
//! away, then hub A is back. The screenshot is kept in `target/browser-e2e.png`.
#![cfg(feature = "redis")]
#![allow(clippy::unwrap_used)]

mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::Duration;

use common::brokers::{self, Broker};
use common::{client, unique};
use serde_json::json;
use tokio::net::{TcpListener, TcpStream};

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A hub process, killed when dropped (a failing test leaves none behind).
struct HubProcess(Child);

impl Drop for HubProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A hub process on `port`, sharing `channel` on Redis.
fn start_hub(port: u16, redis: &str, channel: &str) -> HubProcess {
    let listen = format!("127.0.0.1:{port}");
    HubProcess(
        Command::new(env!("CARGO_BIN_EXE_sse-fanout"))
            .args([
                "--listen",
                &listen,
                "--backend",
                "redis",
                "--backend-url",
                redis,
            ])
            .args(["--channel", channel, "--app-name", "e2e"])
            .env("RUST_LOG", "warn")
            .spawn()
            .unwrap(),
    )
}

async fn wait_healthy(port: u16) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
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

fn terminate(hub: &mut HubProcess) {
    let child = &mut hub.0;
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    let exit = child.wait().unwrap();
    assert!(exit.success(), "hub exited with {exit}");
}

/// A TCP load balancer: each connection goes to the first backend that accepts it.
async fn balancer(backends: Vec<SocketAddr>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut inbound, _)) = listener.accept().await {
            let backends = backends.clone();
            tokio::spawn(async move {
                for backend in backends {
                    if let Ok(mut outbound) = TcpStream::connect(backend).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                        return;
                    }
                }
            });
        }
    });
    addr
}

struct Page {
    child: Child,
    stdin: ChildStdin,
    lines: tokio::sync::mpsc::UnboundedReceiver<String>,
}

impl Page {
    fn open(url: &str, screenshot: &PathBuf) -> Page {
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/browser");
        let mut child = Command::new("node")
            .arg(dir.join("e2e.mjs"))
            .env("PAGE_URL", url)
            .env("SCREENSHOT", screenshot)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let stdin = child.stdin.take().unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = tokio::sync::mpsc::unbounded_channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        Page {
            child,
            stdin,
            lines,
        }
    }

    /// Waits for a line starting with `prefix` and returns it.
    async fn expect(&mut self, prefix: &str) -> String {
        loop {
            let line = tokio::time::timeout(Duration::from_secs(60), self.lines.recv())
                .await
                .ok()
                .flatten()
                .unwrap_or_else(|| panic!("the page never said {prefix}"));
            if line.starts_with(prefix) {
                return line;
            }
        }
    }
}

impl Drop for Page {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn browser_ready() -> bool {
    let modules = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/browser/node_modules");
    std::path::Path::new("/usr/bin/chromium").exists() && modules.exists()
}

#[tokio::test]
async fn the_demo_page_survives_a_restart_of_its_hub_without_losing_events() {
    let _exclusive = brokers::shared().await;
    let Some(redis) = brokers::url(Broker::Redis).await else {
        return;
    };
    if !browser_ready() {
        brokers::missing(
            "a browser: /usr/bin/chromium and tests/browser/node_modules (bash scripts/setup.sh)",
        );
        return;
    }
    let channel = unique("e2e");
    let (port_a, port_b) = (free_port(), free_port());
    let mut hub_a = start_hub(port_a, &redis, &channel);
    let mut hub_b = start_hub(port_b, &redis, &channel);
    wait_healthy(port_a).await;
    wait_healthy(port_b).await;
    let lb = balancer(vec![
        SocketAddr::from(([127, 0, 0, 1], port_a)),
        SocketAddr::from(([127, 0, 0, 1], port_b)),
    ])
    .await;
    let screenshot = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/browser-e2e.png");
    let mut page = Page::open(
        &format!("http://{lb}/?eventName=demo&sessionId=s1"),
        &screenshot,
    );
    page.expect("READY").await;

    let publish = |n: u32| async move {
        let r = client()
            .post(format!("http://127.0.0.1:{port_b}/sse/publish"))
            .json(&json!({"eventName": "demo", "sessionId": "s1", "payload": format!("event {n}")}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 202);
    };
    publish(1).await;
    publish(2).await;
    page.expect("SEEN 2").await;

    // Hub A goes down under the page; events keep coming through B.
    terminate(&mut hub_a);
    publish(3).await;
    publish(4).await;
    page.expect("SEEN 4").await;
    // A is back; the page stays on B until its next reconnect.
    let mut hub_a = start_hub(port_a, &redis, &channel);
    wait_healthy(port_a).await;
    publish(5).await;
    writeln!(page.stdin, "DONE 5").unwrap();
    let rows = page.expect("ROWS ").await;
    let rows: Vec<String> = serde_json::from_str(&rows["ROWS ".len()..]).unwrap();
    assert_eq!(
        rows,
        ["event 1", "event 2", "event 3", "event 4", "event 5"]
    );
    assert!(screenshot.exists());
    eprintln!("screenshot: {}", screenshot.display());
    terminate(&mut hub_a);
    terminate(&mut hub_b);
}
