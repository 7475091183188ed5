//! Finding the broker a backend's tests run against, the same way in every backend crate: the
//! URL in an environment variable, else the broker on its standard loopback port. A test that
//! finds none says so on the process's stderr (`SKIPPED: …`, seen in a passing run too), or
//! fails when `SSE_FANOUT_REQUIRE_BROKERS=1` (as in CI): it never passes having tested nothing.

use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// The broker's URL: `var` from the environment, else `standard` when something answers on
/// 127.0.0.1:`port`; `None` (after saying so, or panicking when brokers are required) otherwise.
pub fn url(var: &str, standard: &str, port: u16) -> Option<String> {
    if let Ok(url) = std::env::var(var)
        && !url.is_empty()
    {
        return Some(url);
    }
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    if TcpStream::connect_timeout(&addr, Duration::from_millis(500)).is_ok() {
        return Some(standard.to_owned());
    }
    let line = format!(
        "BROKER MISSING: nothing in {var} and nothing on 127.0.0.1:{port}; run \
         `eval \"$(bash scripts/brokers.sh)\"`"
    );
    if std::env::var("SSE_FANOUT_REQUIRE_BROKERS").is_ok_and(|v| v == "1" || v == "true") {
        panic!("{line} (SSE_FANOUT_REQUIRE_BROKERS=1)");
    }
    // Straight to the process's stderr: the harness shows captured output of failing tests only.
    let _ = writeln!(std::io::stderr().lock(), "SKIPPED: {line}");
    None
}

/// A channel name no other test run uses: `prefix` and a random suffix.
pub fn unique(prefix: &str) -> String {
    format!("{prefix}-{}", uuid::Uuid::new_v4().simple())
}
