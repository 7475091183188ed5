//! The demo page in a real browser (headless Chromium driven by `tests/browser/e2e.mjs`): it opens
//! an EventSource through a load balancer onto hub A, receives named events published through hub
//! B (a real Redis between them), then hub A is restarted; the page reconnects by itself (to B,
//! the balancer's other instance, with `Last-Event-ID`) and shows the events published while it was
//! away, then hub A is back. The screenshot is kept in `target/browser-e2e.png`. And the page
//! asked for every event name (`eventName=*`) shows every event: a reset, a broadcast, a targeted
//! event, a long one folded (`target/browser-every-event.png`).
#![cfg(feature = "redis")]
#![allow(clippy::unwrap_used)]

mod common;

use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::Duration;

use common::brokers::{self, Broker};
use common::cluster::{Balancer, HubProcess, free_port, wait_healthy};
use common::{client, unique};
use serde_json::json;

/// A hub process on `port`, sharing `channel` on Redis.
fn start_hub(port: u16, redis: &str, channel: &str) -> HubProcess {
    let args: Vec<String> = [
        "--backend",
        "redis",
        "--backend-url",
        redis,
        "--channel",
        channel,
        "--app-name",
        "e2e",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    HubProcess::start(port, &args)
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

/// Whether Chromium and the Node modules are there; says loudly that the test cannot run if not.
fn browser_ready() -> bool {
    let modules = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/browser/node_modules");
    let ready = std::path::Path::new("/usr/bin/chromium").exists() && modules.exists();
    if !ready {
        brokers::not_installed("a browser: /usr/bin/chromium and tests/browser/node_modules");
    }
    ready
}

#[tokio::test]
async fn the_demo_page_survives_a_restart_of_its_hub_without_losing_events() {
    let Some(redis) = brokers::url(Broker::Redis).await else {
        return;
    };
    if !browser_ready() {
        return;
    }
    let channel = unique("e2e");
    let (port_a, port_b) = (free_port(), free_port());
    let hub_a = start_hub(port_a, &redis, &channel);
    let hub_b = start_hub(port_b, &redis, &channel);
    wait_healthy(port_a).await;
    wait_healthy(port_b).await;
    let lb = Balancer::in_order(vec![hub_a.addr(), hub_b.addr()])
        .await
        .addr;
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
    hub_a.terminate();
    publish(3).await;
    publish(4).await;
    page.expect("SEEN 4").await;
    // A is back; the page stays on B until its next reconnect.
    let hub_a = start_hub(port_a, &redis, &channel);
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
    hub_a.terminate();
    hub_b.terminate();
}

/// `?eventName=*` with an id the hub does not know: the page shows the reset event first, then a
/// broadcast, a targeted event and a 100 KiB one (folded), each under its own name.
#[tokio::test]
async fn the_demo_page_shows_every_event_name_resets_included() {
    let Some(redis) = brokers::url(Broker::Redis).await else {
        return;
    };
    if !browser_ready() {
        return;
    }
    let channel = unique("e2e");
    let port = free_port();
    let hub = start_hub(port, &redis, &channel);
    wait_healthy(port).await;
    let screenshot =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/browser-every-event.png");
    let mut page = Page::open(
        &format!("http://127.0.0.1:{port}/?eventName=*&sessionId=s1&lastEventId=gone-id"),
        &screenshot,
    );
    page.expect("READY").await;
    page.expect("SEEN 1").await;
    let long = "x".repeat(100 * 1024);
    for body in [
        json!({"eventName": "news", "payload": "to everyone"}),
        json!({"eventName": "order-update", "sessionId": "s1", "payload": {"order": 17, "status": "shipped"}}),
        json!({"eventName": "order-update", "sessionId": "s2", "payload": "not for this page"}),
        json!({"eventName": "bulk", "sessionId": "s1", "payload": long}),
    ] {
        let r = client()
            .post(format!("http://127.0.0.1:{port}/sse/publish"))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 202);
    }
    writeln!(page.stdin, "DONE 4").unwrap();
    let folded = page.expect("FOLDED ").await;
    let names = page.expect("NAMES ").await;
    let rows = page.expect("ROWS ").await;
    let names: Vec<String> = serde_json::from_str(&names["NAMES ".len()..]).unwrap();
    let rows: Vec<String> = serde_json::from_str(&rows["ROWS ".len()..]).unwrap();
    assert_eq!(
        names,
        ["sse-fanout-reset", "news", "order-update", "bulk"],
        "{rows:?}"
    );
    assert!(rows[0].contains("gone-id"), "{rows:?}");
    assert_eq!(rows[1], "to everyone");
    assert_eq!(rows[2], r#"{"order":17,"status":"shipped"}"#);
    assert_eq!(rows[3].len(), long.len(), "the long payload is all there");
    assert_eq!(folded, "FOLDED 1", "only the long payload is folded");
    assert!(screenshot.exists());
    eprintln!("screenshot: {}", screenshot.display());
    hub.terminate();
}
