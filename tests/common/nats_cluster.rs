//! A NATS cluster of the test's own: three `nats-server` processes on free loopback ports, joined
//! by routes, with JetStream clustered over them (each its own store directory). An outage kills
//! one server by its pid (in turn), deletes its store and starts a new, empty server under its
//! name: a node lost with its disk and replaced, which gets the streams back from the others
//! only where they are replicated. The machine's shared NATS is never touched.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::brokers::{self, Outage};
use super::cluster::free_port;

const NODES: usize = 3;

/// Three clustered NATS servers with JetStream.
pub struct OwnNatsCluster {
    dir: PathBuf,
    client_ports: Vec<u16>,
    cluster_ports: Vec<u16>,
    nodes: Vec<Option<Child>>,
    /// The node the next outage kills.
    next: usize,
}

impl OwnNatsCluster {
    /// Starts the cluster and waits until JetStream can keep a stream on all three servers;
    /// `None` (after saying so, or failing when brokers are required) without `nats-server`.
    pub async fn start() -> Option<OwnNatsCluster> {
        let program = program();
        if Command::new(program)
            .arg("--version")
            .stdout(Stdio::null())
            .status()
            .is_err()
        {
            brokers::not_installed("`nats-server`, to run a NATS cluster of the test's own");
            return None;
        }
        let dir = std::env::temp_dir().join(super::unique("sse-own-nats-cluster"));
        std::fs::create_dir_all(&dir).unwrap();
        let mut cluster = OwnNatsCluster {
            dir,
            client_ports: (0..NODES).map(|_| free_port()).collect(),
            cluster_ports: (0..NODES).map(|_| free_port()).collect(),
            nodes: (0..NODES).map(|_| None).collect(),
            next: 0,
        };
        for node in 0..NODES {
            cluster.launch(node);
        }
        for node in 0..NODES {
            cluster.wait_serving(node).await;
        }
        cluster.wait_replicated().await;
        Some(cluster)
    }

    /// The URL of every server, comma-separated, as a hub is given a cluster.
    pub fn url(&self) -> String {
        self.servers().join(",")
    }

    /// The client port of server `node` (0, 1 or 2).
    pub fn client_port(&self, node: usize) -> u16 {
        self.client_ports[node]
    }

    /// Kills the servers `nodes`, their stores kept: with two of the three gone, JetStream has
    /// no quorum and refuses every read and write of a replicated stream.
    pub fn stop(&mut self, nodes: &[usize]) {
        for &node in nodes {
            self.kill(node);
        }
    }

    /// Starts the servers `nodes` again on their stores and waits until the cluster keeps
    /// replicated streams again.
    pub async fn start_again(&mut self, nodes: &[usize]) {
        for &node in nodes {
            self.launch(node);
        }
        for &node in nodes {
            self.wait_serving(node).await;
        }
        self.wait_replicated().await;
    }

    fn servers(&self) -> Vec<String> {
        self.client_ports
            .iter()
            .map(|port| format!("nats://127.0.0.1:{port}"))
            .collect()
    }

    fn launch(&mut self, node: usize) {
        let routes: Vec<String> = self
            .cluster_ports
            .iter()
            .map(|port| format!("nats-route://127.0.0.1:{port}"))
            .collect();
        let store = self.dir.join(format!("n{node}"));
        let config = format!(
            "server_name: n{node}\n\
             listen: 127.0.0.1:{client}\n\
             jetstream {{ store_dir: {store:?} }}\n\
             cluster {{\n  name: sse\n  listen: 127.0.0.1:{cluster}\n  routes: [{routes}]\n}}\n",
            client = self.client_ports[node],
            cluster = self.cluster_ports[node],
            store = store.to_str().unwrap(),
            routes = routes.join(", "),
        );
        let file = self.dir.join(format!("n{node}.conf"));
        std::fs::write(&file, config).unwrap();
        let log = std::fs::File::create(self.dir.join(format!("n{node}.log"))).unwrap();
        let child = Command::new(program())
            .args(["-c", file.to_str().unwrap()])
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        self.nodes[node] = Some(child);
    }

    async fn wait_serving(&self, node: usize) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while !port_open(self.client_ports[node]) {
            assert!(
                tokio::time::Instant::now() < deadline,
                "NATS node {node} did not start; see {}",
                self.dir.join(format!("n{node}.log")).display()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits until a stream with three replicas can be made (the cluster has elected its
    /// JetStream leader and every server takes part), then removes it.
    async fn wait_replicated(&self) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        let name = super::unique("SETTLE").replace('-', "_");
        loop {
            let attempt = async {
                let client = async_nats::connect(self.servers()).await.ok()?;
                let js = async_nats::jetstream::new(client);
                js.get_or_create_stream(async_nats::jetstream::stream::Config {
                    name: name.clone(),
                    subjects: vec![format!("settle.{name}")],
                    num_replicas: NODES,
                    ..Default::default()
                })
                .await
                .ok()?;
                js.delete_stream(&name).await.ok()
            };
            if tokio::time::timeout(Duration::from_secs(5), attempt)
                .await
                .ok()
                .flatten()
                .is_some()
            {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the NATS cluster did not settle; see {}",
                self.dir.display()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    fn kill(&mut self, node: usize) {
        if let Some(mut child) = self.nodes[node].take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Outage for OwnNatsCluster {
    /// Kills one server (each in turn) and deletes its store, runs `while_down`, starts an empty
    /// server in its place and waits until the cluster keeps replicated streams again.
    fn run<'a>(
        &'a mut self,
        while_down: futures_util::future::BoxFuture<'a, ()>,
    ) -> futures_util::future::BoxFuture<'a, ()> {
        Box::pin(async move {
            let node = self.next;
            self.next = (self.next + 1) % NODES;
            self.kill(node);
            let _ = std::fs::remove_dir_all(self.dir.join(format!("n{node}")));
            while_down.await;
            self.launch(node);
            self.wait_serving(node).await;
            self.wait_replicated().await;
        })
    }
}

impl Drop for OwnNatsCluster {
    fn drop(&mut self) {
        for node in 0..NODES {
            self.kill(node);
        }
        // A failed test keeps the servers' logs, which its message points to.
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

fn program() -> &'static str {
    if std::path::Path::new("/usr/sbin/nats-server").exists() {
        "/usr/sbin/nats-server"
    } else {
        "nats-server"
    }
}

fn port_open(port: u16) -> bool {
    std::net::TcpStream::connect_timeout(
        &std::net::SocketAddr::from(([127, 0, 0, 1], port)),
        Duration::from_millis(200),
    )
    .is_ok()
}
