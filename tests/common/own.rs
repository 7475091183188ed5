//! Brokers of a test's own, for the tests that stop one: a process started by the test on a free
//! loopback port with a data directory of its own, stopped by its pid and started again on the
//! same port. The machine's shared brokers are never stopped, so the outage tests run beside the
//! others in the normal test command.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::brokers::{self, Broker};
use super::cluster::free_port;

/// A broker process this test started.
pub struct OwnBroker {
    pub kind: Broker,
    pub port: u16,
    dir: PathBuf,
    child: Option<Child>,
    /// Redis: keeps its data across a kill (append-only file), as a production Redis does.
    durable: bool,
}

impl OwnBroker {
    /// Starts a `kind` broker of this test's own; `None` (after saying so, or failing when
    /// brokers are required) when its server is not installed here.
    pub async fn start(kind: Broker) -> Option<OwnBroker> {
        Self::start_with(kind, false).await
    }

    /// As [`start`](Self::start); a `durable` Redis keeps its data across a kill (every write
    /// goes to its append-only file before it answers). The other brokers keep theirs anyway.
    pub async fn start_with(kind: Broker, durable: bool) -> Option<OwnBroker> {
        let program = program(kind)?;
        if Command::new(program)
            .arg(if kind == Broker::Kafka {
                "--help"
            } else {
                "--version"
            })
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_err()
        {
            brokers::not_installed(&format!("`{program}`, to run a {kind:?} of the test's own"));
            return None;
        }
        if kind == Broker::Kafka
            && let Err(error) = nisshi_database().await
        {
            brokers::missing(&error);
            return None;
        }
        let dir = std::env::temp_dir().join(super::unique(&format!("sse-own-{kind:?}")));
        std::fs::create_dir_all(&dir).unwrap();
        let mut own = OwnBroker {
            kind,
            port: free_port(),
            dir,
            child: None,
            durable,
        };
        own.launch().await;
        Some(own)
    }

    /// The URL the backends connect to.
    pub fn url(&self) -> String {
        match self.kind {
            Broker::Redis => format!("redis://127.0.0.1:{}", self.port),
            Broker::Nats => format!("nats://127.0.0.1:{}", self.port),
            Broker::Kafka => format!("127.0.0.1:{}", self.port),
            Broker::Rabbit => format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.port),
            other => unreachable!("no own {other:?}"),
        }
    }

    /// Runs `rabbitmqctl -n <this node> <command>`.
    pub fn rabbitmqctl(&self, command: &str) {
        self.rabbitmqctl_args(&[command]);
    }

    /// Runs `rabbitmqctl -n <this node> <args…>`.
    pub fn rabbitmqctl_args(&self, args: &[&str]) {
        let command = args.join(" ");
        let status = Command::new("rabbitmqctl")
            .args(["-n", &self.rabbit_node()])
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        assert!(
            status.is_ok_and(|s| s.success()),
            "rabbitmqctl {command} on the test's own node failed"
        );
    }

    /// The Erlang node name of an own RabbitMQ.
    pub fn rabbit_node(&self) -> String {
        format!("sse{}@localhost", self.port)
    }

    /// Starts the broker's process (again, on its port and data directory) and waits until it
    /// serves.
    pub async fn launch(&mut self) {
        let port = self.port.to_string();
        let dir = self.dir.to_str().unwrap().to_owned();
        let mut command = Command::new(program(self.kind).unwrap());
        match self.kind {
            Broker::Redis if self.durable => command.args(redis_args(&port)).args([
                "--dir",
                &dir,
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
            ]),
            Broker::Redis => command.args(redis_args(&port)).args(["--dir", &dir]),
            Broker::Nats => command.args(["-a", "127.0.0.1", "-p", &port, "-js", "-sd", &dir]),
            // Nisshi keeps its topics in PostgreSQL (a database of the tests' own), so they
            // survive a restart as on a real Kafka.
            Broker::Kafka => command.args(nisshi_broker_args(self.port)),
            // A node of its own: its own name, ports, database, logs and no plugins.
            Broker::Rabbit => {
                let path = |name: &str| self.dir.join(name).to_str().unwrap().to_owned();
                for sub in ["mnesia", "log"] {
                    std::fs::create_dir_all(self.dir.join(sub)).unwrap();
                }
                std::fs::write(self.dir.join("enabled_plugins"), "[].").unwrap();
                // The server drops to the `rabbitmq` user when started as root.
                let _ = Command::new("chown")
                    .args(["-R", "rabbitmq", &dir])
                    .stderr(Stdio::null())
                    .status();
                command
                    .env("RABBITMQ_NODENAME", self.rabbit_node())
                    .env("RABBITMQ_NODE_PORT", &port)
                    .env("RABBITMQ_DIST_PORT", free_port().to_string())
                    .env("RABBITMQ_MNESIA_BASE", path("mnesia"))
                    .env("RABBITMQ_LOG_BASE", path("log"))
                    .env("RABBITMQ_PID_FILE", path("pid"))
                    .env("RABBITMQ_ENABLED_PLUGINS_FILE", path("enabled_plugins"))
                    .env("RABBITMQ_FEATURE_FLAGS_FILE", path("feature_flags"))
                    .env("RABBITMQ_CONFIG_FILE", path("none"))
            }
            other => unreachable!("no own {other:?}"),
        };
        let log = std::fs::File::create(self.dir.join("broker.log")).unwrap();
        let child = command
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        while !port_open(self.port) {
            assert!(
                tokio::time::Instant::now() < deadline,
                "own {:?} did not start; see {}",
                self.kind,
                self.dir.join("broker.log").display()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        brokers::settle_at(self.kind, &self.url()).await;
    }

    /// Kills the broker by its pid (SIGKILL: nats-server goes on serving its open connections for
    /// a while after SIGTERM) and waits until its port is closed.
    pub async fn stop(&mut self) {
        self.kill();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while port_open(self.port) {
            assert!(
                tokio::time::Instant::now() < deadline,
                "own broker did not stop"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl brokers::Outage for OwnBroker {
    /// Stops the broker, runs `while_down`, starts it again on the same port and data directory.
    fn run<'a>(
        &'a mut self,
        while_down: futures_util::future::BoxFuture<'a, ()>,
    ) -> futures_util::future::BoxFuture<'a, ()> {
        Box::pin(async move {
            if self.kind == Broker::Rabbit {
                // RabbitMQ: the application stops and starts in its node (`stop_app`), as an
                // operator restarts it; the node is this test's own.
                self.rabbitmqctl("stop_app");
                while_down.await;
                self.rabbitmqctl("start_app");
                brokers::settle_at(self.kind, &self.url()).await;
                return;
            }
            self.stop().await;
            while_down.await;
            self.launch().await;
        })
    }
}

impl OwnBroker {
    /// Sends `signal` (`STOP`, `CONT`) to the broker's process, by its pid.
    pub fn signal(&self, signal: &str) {
        let child = self.child.as_ref().expect("the broker runs");
        let status = Command::new("kill")
            .args([format!("-{signal}"), child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success(), "kill -{signal}");
    }

    /// Kills the broker's process by its pid (for RabbitMQ, the Erlang VM's, from its pid file:
    /// the process this test started is the script that runs it).
    fn kill(&mut self) {
        if self.kind == Broker::Rabbit
            && let Ok(pid) = std::fs::read_to_string(self.dir.join("pid"))
        {
            let _ = Command::new("kill").args(["-KILL", pid.trim()]).status();
            let _ = std::fs::remove_file(self.dir.join("pid"));
        }
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for OwnBroker {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A test Redis's arguments: `port` on loopback, nothing saved.
pub fn redis_args(port: &str) -> Vec<String> {
    let args = [
        "--port",
        port,
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        "no",
    ];
    args.map(str::to_owned).to_vec()
}

/// The PostgreSQL database an own Nisshi stores its topics in.
const NISSHI_DATABASE: &str = "sse_kafka_own";

/// A Nisshi broker's arguments: listening (and advertised) on 127.0.0.1:`port`, its topics in
/// the tests' own PostgreSQL database.
pub(crate) fn nisshi_broker_args(port: u16) -> Vec<String> {
    let listener = format!("tcp://127.0.0.1:{port}");
    [
        "broker",
        "--listener-url",
        &listener,
        "--advertised-listener-url",
        &listener,
        "--storage-engine",
        &nisshi_storage(),
    ]
    .map(str::to_owned)
    .to_vec()
}

pub(crate) fn nisshi_storage() -> String {
    format!("postgres://postgres@localhost:5432/{NISSHI_DATABASE}?sslmode=disable")
}

/// Creates the own Nisshi's database if it is missing.
pub(crate) async fn nisshi_database() -> Result<(), String> {
    let url = std::env::var("SSE_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned());
    let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .map_err(|e| format!("PostgreSQL for Nisshi's storage: {e}"))?;
    tokio::spawn(connection);
    let exists = client
        .query_opt(
            "SELECT 1 FROM pg_database WHERE datname = $1",
            &[&NISSHI_DATABASE],
        )
        .await
        .map_err(|e| e.to_string())?
        .is_some();
    if !exists {
        // Two tests may race to create it; the loser's error is harmless.
        let _ = client
            .batch_execute(&format!("CREATE DATABASE {NISSHI_DATABASE}"))
            .await;
    }
    Ok(())
}

pub(crate) fn nisshi_bin() -> String {
    std::env::var("NISSHI_BIN")
        .unwrap_or_else(|_| concat!(env!("CARGO_MANIFEST_DIR"), "/../shared/bin/nisshi").to_owned())
}

fn program(kind: Broker) -> Option<&'static str> {
    match kind {
        Broker::Kafka => Some(Box::leak(nisshi_bin().into_boxed_str())),
        Broker::Redis => Some("redis-server"),
        Broker::Rabbit => Some("rabbitmq-server"),
        Broker::Nats => Some(if std::path::Path::new("/usr/sbin/nats-server").exists() {
            "/usr/sbin/nats-server"
        } else {
            "nats-server"
        }),
        _ => None,
    }
}

fn which(program: &str) -> bool {
    std::env::var_os("PATH").is_some_and(|paths| {
        std::env::split_paths(&paths)
            .chain(["/usr/sbin".into()])
            .any(|dir| dir.join(program).is_file())
    })
}

pub(crate) fn port_open(port: u16) -> bool {
    std::net::TcpStream::connect_timeout(
        &std::net::SocketAddr::from(([127, 0, 0, 1], port)),
        Duration::from_millis(200),
    )
    .is_ok()
}
