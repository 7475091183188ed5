//! Where the broker tests find their brokers.
//!
//! 1. The environment: `SSE_TEST_REDIS_URL`, `SSE_TEST_NATS_URL`, `SSE_TEST_RABBIT_URL`,
//!    `SSE_TEST_KAFKA_BROKERS` (`eval "$(bash scripts/brokers.sh)"` sets them on the project's machines).
//! 2. Otherwise the broker on its standard loopback port, if one answers (Redis 6379, NATS 4222,
//!    RabbitMQ 5672 as guest, Kafka 19092 (Nisshi on the project's machines) or 9092,
//!    PostgreSQL 5432).
//! 3. Otherwise, where a Docker engine answers, a container started with testcontainers (the
//!    public images). With `SSE_TEST_BROKERS=containers`, always a container, of the project's
//!    own images built from Debian's packages by `scripts/containers.sh`, on the host's network.
//! 4. Otherwise the test prints one line saying which broker is missing and how to provide it,
//!    straight to the terminal (past the harness's capture), and skips; with
//!    `SSE_FANOUT_REQUIRE_BROKERS=1` (as in CI) it fails instead.
//!
//! Tests that stop a broker stop one of their own ([`super::own`]), never these.

use std::collections::HashMap;
use std::time::Duration;

use testcontainers_modules::testcontainers::runners::AsyncRunner;

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

fn required() -> bool {
    std::env::var("SSE_FANOUT_REQUIRE_BROKERS").is_ok_and(|v| v == "1" || v == "true")
}

/// Says loudly that a test cannot run for want of a broker; panics when brokers are required.
pub fn missing(what: &str) {
    skip(&format!(
        "BROKER MISSING: {what}. Run `eval \"$(bash scripts/brokers.sh)\"` or start a Docker engine."
    ));
}

/// Says loudly that a test cannot run for want of a program it drives (a browser, Node, a broker
/// server to run one of its own); panics when brokers are required, as in CI.
pub fn not_installed(what: &str) {
    skip(&format!(
        "NOT INSTALLED: {what}. Run `bash scripts/setup.sh`."
    ));
}

fn skip(line: &str) {
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
    let answers = |port: u16| {
        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
        std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
    };
    let url = match broker {
        Broker::Redis => "redis://127.0.0.1:6379",
        Broker::Nats => "nats://127.0.0.1:4222",
        Broker::Rabbit => "amqp://guest:guest@127.0.0.1:5672/%2f",
        // Nisshi on these machines' 19092 first: the Tansu that may answer on 9092 forgets its
        // topics when it restarts, which librdkafka does not survive.
        Broker::Kafka if answers(19092) => return Some("127.0.0.1:19092".to_owned()),
        Broker::Kafka => "127.0.0.1:9092",
        Broker::Postgres => "postgres://postgres@127.0.0.1:5432/test",
    };
    answers(broker.port()).then(|| url.to_owned())
}

/// The broker's URL: from the environment, else the broker on its standard loopback port, else a
/// testcontainers container, else `None` after saying so (or a panic when brokers are required).
pub async fn url(broker: Broker) -> Option<String> {
    let forced = containers_forced();
    if let Ok(url) = std::env::var(broker.var())
        && !url.is_empty()
        && !forced
    {
        return Some(url);
    }
    if !forced && let Some(url) = on_standard_port(broker) {
        return Some(url);
    }
    // One container per broker and test process, however many tests ask at once.
    static STARTED: tokio::sync::Mutex<Option<HashMap<Broker, String>>> =
        tokio::sync::Mutex::const_new(None);
    let mut started = STARTED.lock().await;
    let started = started.get_or_insert_with(HashMap::new);
    if let Some(url) = started.get(&broker) {
        return Some(url.clone());
    }
    match start_container(broker).await {
        Ok(url) => {
            started.insert(broker, url.clone());
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

/// `SSE_TEST_BROKERS=containers`: every broker from a container of the project's own images
/// (`bash scripts/containers.sh` builds them), even where local brokers answer.
pub fn containers_forced() -> bool {
    std::env::var("SSE_TEST_BROKERS").is_ok_and(|v| v == "containers")
}

/// A container of the project's own image for `broker` (`sse-fanout-test/<broker>`, built from
/// Debian's packages by `scripts/containers.sh`), on the host's network: its broker listens on
/// a free loopback port given on its command line, so nothing goes through Docker's bridge.
async fn start_own_image(broker: Broker) -> Result<String, String> {
    use testcontainers_modules::testcontainers::core::WaitFor;
    use testcontainers_modules::testcontainers::{GenericImage, ImageExt};
    let port = super::cluster::free_port();
    let p = port.to_string();
    let (name, wait, url) = match broker {
        Broker::Redis => (
            "sse-fanout-test/redis",
            WaitFor::message_on_stdout("Ready to accept connections"),
            format!("redis://127.0.0.1:{port}"),
        ),
        Broker::Nats => (
            "sse-fanout-test/nats",
            WaitFor::message_on_stderr("Server is ready"),
            format!("nats://127.0.0.1:{port}"),
        ),
        Broker::Rabbit => (
            "sse-fanout-test/rabbitmq",
            WaitFor::message_on_stdout("Starting broker... completed"),
            format!("amqp://guest:guest@127.0.0.1:{port}/%2f"),
        ),
        other => return Err(format!("no image of the project's own for {other:?}")),
    };
    let request = GenericImage::new(name, "latest")
        .with_wait_for(wait)
        .with_network("host")
        .with_label("sse-fanout-test", "broker")
        .with_startup_timeout(Duration::from_secs(120));
    let request = match broker {
        Broker::Redis => request.with_cmd(
            ["redis-server".to_owned()]
                .into_iter()
                .chain(super::own::redis_args(&p)),
        ),
        Broker::Nats => request.with_cmd([
            "nats-server",
            "-a",
            "127.0.0.1",
            "-p",
            &p,
            "-js",
            "-sd",
            "/tmp/nats",
        ]),
        _ => request
            .with_env_var("RABBITMQ_NODE_PORT", &p)
            .with_env_var(
                "RABBITMQ_DIST_PORT",
                super::cluster::free_port().to_string(),
            )
            .with_env_var("RABBITMQ_NODENAME", format!("sse{port}@localhost"))
            .with_env_var("ERL_EPMD_PORT", super::cluster::free_port().to_string()),
    };
    let container = request.start().await.map_err(|e| e.to_string())?;
    use std::io::Write;
    let _ = writeln!(
        std::io::stderr().lock(),
        "CONTAINER STARTED: {name} ({}) for {broker:?} on {url}",
        container.id()
    );
    // Kept until the process ends; `.ci/run` removes the containers labelled `sse-fanout-test`.
    std::mem::forget(container);
    Ok(url)
}

/// Starts a container for `broker`; it lives until the test process ends.
async fn start_container(broker: Broker) -> Result<String, String> {
    if containers_forced() {
        return start_own_image(broker).await;
    }
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

/// Waits until the broker carries a message end to end: an open port is not yet a settled broker.
pub async fn settle(broker: Broker) {
    if let Ok(url) = std::env::var(broker.var()) {
        settle_at(broker, &url).await;
    }
}

/// [`settle`] for the broker at `url`.
pub async fn settle_at(broker: Broker, url: &str) {
    if broker != Broker::Nats {
        tokio::time::sleep(Duration::from_millis(500)).await;
        return;
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let mut clean_rounds = 0;
    while clean_rounds < 3 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "NATS did not settle"
        );
        let probe = async {
            use futures_util::StreamExt;
            let client = async_nats::connect(url).await.ok()?;
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

/// A way to take a broker down for a while, for the outage tests.
pub trait Outage: Send {
    /// Takes the broker down, runs `while_down`, and brings it back (settled).
    fn run<'a>(
        &'a mut self,
        while_down: futures_util::future::BoxFuture<'a, ()>,
    ) -> futures_util::future::BoxFuture<'a, ()>;
}
