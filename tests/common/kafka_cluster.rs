//! A Kafka-API cluster of the test's own: three Nisshi brokers on free loopback ports sharing one
//! store (the PostgreSQL database of the test's own Nisshi), as a Kafka cluster's brokers share
//! its topics. An outage kills one broker by its pid (in turn) and starts it again: the clients
//! of the lost one move to the others. The machine's shared Kafka is never touched.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::brokers::{self, Outage};
use super::cluster::free_port;
use super::own::{nisshi_bin, nisshi_broker_args, nisshi_database, port_open};

const BROKERS: usize = 3;

/// Three Nisshi brokers on one store.
pub struct OwnKafkaCluster {
    dir: PathBuf,
    ports: Vec<u16>,
    brokers: Vec<Option<Child>>,
    /// The broker the next outage kills.
    next: usize,
}

impl OwnKafkaCluster {
    /// Starts the brokers; `None` (after saying so, or failing when brokers are required) when
    /// Nisshi or its PostgreSQL is missing.
    pub async fn start() -> Option<OwnKafkaCluster> {
        let program = nisshi_bin();
        if Command::new(&program)
            .arg("--help")
            .stdout(Stdio::null())
            .status()
            .is_err()
        {
            brokers::not_installed(&format!(
                "`{program}`, to run a Kafka cluster of the test's own"
            ));
            return None;
        }
        if let Err(error) = nisshi_database().await {
            brokers::missing(&error);
            return None;
        }
        let dir = std::env::temp_dir().join(super::unique("sse-own-kafka-cluster"));
        std::fs::create_dir_all(&dir).unwrap();
        let mut cluster = OwnKafkaCluster {
            dir,
            ports: (0..BROKERS).map(|_| free_port()).collect(),
            brokers: (0..BROKERS).map(|_| None).collect(),
            next: 0,
        };
        for broker in 0..BROKERS {
            cluster.launch(broker).await;
        }
        Some(cluster)
    }

    /// Every broker's address, comma-separated: the hub's bootstrap list.
    pub fn url(&self) -> String {
        self.ports
            .iter()
            .map(|port| format!("127.0.0.1:{port}"))
            .collect::<Vec<_>>()
            .join(",")
    }

    async fn launch(&mut self, broker: usize) {
        let log = std::fs::File::create(self.dir.join(format!("b{broker}.log"))).unwrap();
        let child = Command::new(nisshi_bin())
            .args(nisshi_broker_args(self.ports[broker]))
            .args(["--cluster-id", "sse-own-cluster"])
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        self.brokers[broker] = Some(child);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while !port_open(self.ports[broker]) {
            assert!(
                tokio::time::Instant::now() < deadline,
                "Nisshi broker {broker} did not start; see {}",
                self.dir.join(format!("b{broker}.log")).display()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn kill(&mut self, broker: usize) {
        if let Some(mut child) = self.brokers[broker].take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Outage for OwnKafkaCluster {
    /// Kills one broker (each in turn), runs `while_down`, starts it again.
    fn run<'a>(
        &'a mut self,
        while_down: futures_util::future::BoxFuture<'a, ()>,
    ) -> futures_util::future::BoxFuture<'a, ()> {
        Box::pin(async move {
            let broker = self.next;
            self.next = (self.next + 1) % BROKERS;
            self.kill(broker);
            while_down.await;
            self.launch(broker).await;
        })
    }
}

impl Drop for OwnKafkaCluster {
    fn drop(&mut self) {
        for broker in 0..BROKERS {
            self.kill(broker);
        }
        // A failed test keeps the servers' logs, which its message points to.
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}
