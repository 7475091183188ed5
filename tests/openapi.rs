//! The hub's OpenAPI document (`GET /openapi.json`) against the hub itself: schemathesis (from
//! PyPI, in tests/python/.venv) generates requests from the document, within a time budget, and
//! checks every answer (status, headers, JSON bodies, the SSE events) against it.
#![allow(clippy::unwrap_used)]

mod common;

use std::process::Command;

use common::brokers;
use common::cluster::{HubProcess, free_port};
use common::get_text;

/// Seconds schemathesis may spend: its fuzzing phase repeats until the budget is spent.
const BUDGET_SECS: &str = "60";

#[tokio::test]
async fn schemathesis_finds_the_hub_true_to_its_openapi_document() {
    let schemathesis = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/python/.venv/bin/schemathesis");
    if !schemathesis.exists() {
        brokers::not_installed("schemathesis (tests/python/.venv)");
        return;
    }
    // Streams end after half a second, so that a generated stream request gets its whole answer
    // (and its events checked) within the request timeout. Presence on, so that its endpoint
    // answers rather than `404`.
    let args = [
        "--emitter-timeout",
        "500ms",
        "--heartbeat",
        "1",
        "--presence",
    ]
    .map(String::from);
    let hub = HubProcess::ready(free_port(), &args).await;
    let output = tokio::task::spawn_blocking({
        let document = hub.url("/openapi.json");
        move || {
            Command::new(schemathesis)
                .args(["run", &document, "--no-color", "--request-timeout", "5"])
                .args(["--max-time", BUDGET_SECS, "--seed", "1"])
                .args(["--generation-database", "none"])
                .output()
                .unwrap()
        }
    })
    .await
    .unwrap();
    let report = String::from_utf8_lossy(&output.stdout);
    let generated = report
        .lines()
        .find(|l| l.contains(" generated"))
        .unwrap_or("no count")
        .trim()
        .to_owned();
    assert!(
        output.status.success(),
        "schemathesis found the hub at odds with its document ({generated}):\n{report}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        report.contains("Operations:") && report.contains("6 selected / 6 total"),
        "{report}"
    );
    // Straight to stderr, so that the count is seen in a passing run too.
    use std::io::Write;
    let _ = writeln!(std::io::stderr().lock(), "schemathesis: {generated}");
}

#[tokio::test]
async fn the_document_names_the_paths_the_hub_was_started_with() {
    let args = [
        "--path",
        "/events/stream",
        "--publish-path",
        "/events",
        "--disconnect-path",
        "/events/disconnect",
    ]
    .map(String::from);
    let hub = HubProcess::ready(free_port(), &args).await;
    let document: serde_json::Value =
        serde_json::from_str(&get_text(&hub.url("/openapi.json")).await).unwrap();
    let mut paths: Vec<&str> = document["paths"]
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    paths.sort_unstable();
    assert_eq!(
        paths,
        [
            "/events",
            "/events/disconnect",
            "/events/stream",
            "/healthz",
            "/metrics",
            "/openapi.json",
            "/sse/presence"
        ]
    );
    assert_eq!(document["openapi"], "3.0.3");
}
