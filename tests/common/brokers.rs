//! Where the broker tests find their brokers.
//!
//! 1. The environment: `SSE_TEST_REDIS_URL`, `SSE_TEST_NATS_URL`, `SSE_TEST_RABBIT_URL`,
//!    `SSE_TEST_KAFKA_BROKERS` (`eval "$(bash scripts/brokers.sh)"` sets them on the project's machines).
//! 2. Otherwise the broker on its standard loopback port, if one answers (Redis 6379, NATS 4222,
//!    RabbitMQ 5672 as guest, Kafka 9092, PostgreSQL 5432).
//! 3. Otherwise, where a Docker engine answers, a container started with testcontainers.
//! 4. Otherwise the test prints one line saying which broker is missing and how to provide it,
//!    straight to the terminal (past the harness's capture), and skips; with
//!    `SSE_FANOUT_REQUIRE_BROKERS=1` (as in CI) it fails instead.
//!
//! Tests that stop and start a broker take [`exclusive`]; the others take [`shared`], so an outage
//! never hits a test that does not expect it.

use std::collections::HashMap;
use std::future::Future;
use std::path::PathBuf;
use std::process::Command;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use testcontainers_modules::testcontainers::runners::AsyncRunner;
use tokio::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Broker {
    Redis,
    Nats,
    Rabbit,
    Kafka,
    Postgres,
}

impl Broker {
    pub fn var(self) -> &'static str {
        match self {
            Broker::Redis => "SSE_TEST_REDIS_URL",
            Broker::Nats => "SSE_TEST_NATS_URL",
            Broker::Rabbit => "SSE_TEST_RABBIT_URL",
            Broker::Kafka => "SSE_TEST_KAFKA_BROKERS",
            Broker::Postgres => "SSE_TEST_POSTGRES_URL",
        }
    }

    fn ensure_name(self) -> &'static str {
        match self {
            Broker::Redis => "redis",
            Broker::Nats => "nats",
            Broker::Rabbit => "rabbitmq",
            Broker::Kafka => "kafka",
            Broker::Postgres => "postgres",
        }
    }

    fn port(self) -> u16 {
        match self {
            Broker::Redis => 6379,
            Broker::Nats => 4222,
            Broker::Rabbit => 5672,
            Broker::Kafka => 9092,
            Broker::Postgres => 5432,
        }
    }
}

static BROKER_LOCK: RwLock<()> = RwLock::const_new(());

/// Taken by tests that only use a broker.
pub async fn shared() -> RwLockReadGuard<'static, ()> {
    BROKER_LOCK.read().await
}

/// Taken by tests that stop and start a broker.
pub async fn exclusive() -> RwLockWriteGuard<'static, ()> {
    BROKER_LOCK.write().await
}

fn required() -> bool {
    std::env::var("SSE_FANOUT_REQUIRE_BROKERS").is_ok_and(|v| v == "1" || v == "true")
}

/// Says loudly that a test cannot run; panics when brokers are required.
pub fn missing(what: &str) {
    let line = format!(
        "BROKER MISSING: {what}. Run `eval \"$(bash scripts/brokers.sh)\"` or start a Docker engine."
    );
    if required() {
        panic!("{line} (SSE_FANOUT_REQUIRE_BROKERS=1)");
    }
    // Straight to the process's stderr: `eprintln!` would be captured by the test harness and
    // shown only for a failing test, and a skip must be seen in a passing run.
    use std::io::Write;
    let _ = writeln!(std::io::stderr().lock(), "SKIPPED: {line}");
}

/// The URL of a broker that answers on its standard loopback port, if one does.
fn on_standard_port(broker: Broker) -> Option<String> {
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], broker.port()));
    std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).ok()?;
    Some(match broker {
        Broker::Redis => "redis://127.0.0.1:6379".to_owned(),
        Broker::Nats => "nats://127.0.0.1:4222".to_owned(),
        Broker::Rabbit => "amqp://guest:guest@127.0.0.1:5672/%2f".to_owned(),
        Broker::Kafka => "127.0.0.1:9092".to_owned(),
        Broker::Postgres => "postgres://postgres@127.0.0.1:5432/test".to_owned(),
    })
}

/// The broker's URL: from the environment, else the broker on its standard loopback port, else a
/// testcontainers container, else `None` after saying so (or a panic when brokers are required).
pub async fn url(broker: Broker) -> Option<String> {
    if let Ok(url) = std::env::var(broker.var())
        && !url.is_empty()
    {
        return Some(url);
    }
    if let Some(url) = on_standard_port(broker) {
        return Some(url);
    }
    static STARTED: OnceLock<Mutex<HashMap<Broker, String>>> = OnceLock::new();
    let started = STARTED.get_or_init(Default::default);
    if let Some(url) = started.lock().unwrap().get(&broker) {
        return Some(url.clone());
    }
    match start_container(broker).await {
        Ok(url) => {
            started.lock().unwrap().insert(broker, url.clone());
            Some(url)
        }
        Err(error) => {
            missing(&format!(
                "{} is unset and no container could be started ({error})",
                broker.var()
            ));
            None
        }
    }
}

/// Starts a container for `broker`; it lives until the test process ends.
async fn start_container(broker: Broker) -> Result<String, String> {
    use testcontainers_modules::{
        kafka::apache::Kafka, nats::Nats, postgres::Postgres, rabbitmq::RabbitMq, redis::Redis,
    };
    let err = |e: testcontainers_modules::testcontainers::TestcontainersError| e.to_string();
    let url = match broker {
        Broker::Redis => {
            let c = Redis::default().start().await.map_err(err)?;
            let url = format!(
                "redis://127.0.0.1:{}",
                c.get_host_port_ipv4(6379).await.map_err(err)?
            );
            std::mem::forget(c);
            url
        }
        Broker::Nats => {
            let c = Nats::default().start().await.map_err(err)?;
            let url = format!(
                "nats://127.0.0.1:{}",
                c.get_host_port_ipv4(4222).await.map_err(err)?
            );
            std::mem::forget(c);
            url
        }
        Broker::Rabbit => {
            let c = RabbitMq::default().start().await.map_err(err)?;
            let url = format!(
                "amqp://guest:guest@127.0.0.1:{}/%2f",
                c.get_host_port_ipv4(5672).await.map_err(err)?
            );
            std::mem::forget(c);
            url
        }
        Broker::Postgres => {
            let c = Postgres::default().start().await.map_err(err)?;
            let url = format!(
                "postgres://postgres:postgres@127.0.0.1:{}/postgres",
                c.get_host_port_ipv4(5432).await.map_err(err)?
            );
            std::mem::forget(c);
            url
        }
        Broker::Kafka => {
            let c = Kafka::default().start().await.map_err(err)?;
            let url = format!(
                "127.0.0.1:{}",
                c.get_host_port_ipv4(testcontainers_modules::kafka::apache::KAFKA_PORT)
                    .await
                    .map_err(err)?
            );
            std::mem::forget(c);
            url
        }
    };
    Ok(url)
}

/// The script that starts the brokers on the project's machines.
fn ensure_script() -> Option<PathBuf> {
    let path = std::env::var_os("SSE_BROKERS_ENSURE")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/services/ensure")
        });
    path.is_file().then_some(path)
}

/// Whether this test process can stop and start `broker`: it runs on loopback at its standard
/// port and the `ensure` script is there to start it again.
pub fn controllable(broker: Broker) -> bool {
    let url = std::env::var(broker.var()).unwrap_or_default();
    let on_loopback = url.contains("127.0.0.1") || url.contains("localhost");
    on_loopback && url.contains(&broker.port().to_string()) && ensure_script().is_some()
}

fn port_open(port: u16) -> bool {
    std::net::TcpStream::connect_timeout(
        &std::net::SocketAddr::from(([127, 0, 0, 1], port)),
        Duration::from_millis(200),
    )
    .is_ok()
}

fn run(cmd: &str, args: &[&str]) {
    match Command::new(cmd).args(args).output() {
        Ok(out) if out.status.success() => {}
        Ok(out) => eprintln!(
            "`{cmd} {}` exited {}: {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ),
        Err(e) => eprintln!("`{cmd}` could not run: {e}"),
    }
}

/// Stops the broker (the commands of `shared/services/README.md`) and waits until it is down.
pub async fn stop(broker: Broker) {
    match broker {
        Broker::Redis => run("redis-cli", &["-p", "6379", "shutdown", "nosave"]),
        // SIGKILL: on SIGTERM nats-server closes its listener first and goes on serving its open
        // connections for a while, so a new server could run beside the dying one.
        Broker::Nats => run("pkill", &["-KILL", "-x", "nats-server"]),
        Broker::Rabbit => run("rabbitmqctl", &["stop_app"]),
        Broker::Kafka => run("pkill", &["-f", "tansu broker"]),
        Broker::Postgres => run(
            "pg_ctlcluster",
            &["--skip-systemctl-redirect", "15", "main", "stop"],
        ),
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while port_open(broker.port()) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{broker:?} did not stop"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Starts the broker again and waits until it accepts connections.
pub async fn start(broker: Broker) {
    match broker {
        Broker::Rabbit => run("rabbitmqctl", &["start_app"]),
        _ => {
            let script = ensure_script().expect("the ensure script");
            run("bash", &[script.to_str().unwrap(), broker.ensure_name()]);
        }
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    while !port_open(broker.port()) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{broker:?} did not start"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    settle(broker).await;
}

/// Waits until the broker carries a message end to end: an open port is not yet a settled broker.
pub async fn settle(broker: Broker) {
    if broker != Broker::Nats {
        tokio::time::sleep(Duration::from_millis(500)).await;
        return;
    }
    let Ok(url) = std::env::var(broker.var()) else {
        return;
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let mut clean_rounds = 0;
    while clean_rounds < 3 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "NATS did not settle"
        );
        let probe = async {
            use futures_util::StreamExt;
            let client = async_nats::connect(url.as_str()).await.ok()?;
            let subject = format!("sse-test.settle.{}", super::unique("p"));
            let mut sub = client.subscribe(subject.clone()).await.ok()?;
            client.flush().await.ok()?;
            client.publish(subject, "ping".into()).await.ok()?;
            client.flush().await.ok()?;
            tokio::time::timeout(Duration::from_millis(500), sub.next())
                .await
                .ok()?
        };
        if probe.await.is_some() {
            clean_rounds += 1;
        } else {
            clean_rounds = 0;
        }
    }
}

/// Stops the broker, runs `while_down`, starts the broker again. The broker is started again even
/// when `while_down` panics, so that later tests find it up.
pub async fn outage<F: Future<Output = ()>>(broker: Broker, while_down: F) {
    struct Restart(Broker);
    impl Drop for Restart {
        fn drop(&mut self) {
            if !port_open(self.0.port())
                && let Some(script) = ensure_script()
            {
                run(
                    "bash",
                    &[script.to_str().unwrap_or_default(), self.0.ensure_name()],
                );
            }
        }
    }
    let guard = Restart(broker);
    stop(broker).await;
    while_down.await;
    start(broker).await;
    drop(guard);
}
