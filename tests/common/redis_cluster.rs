//! A Redis Cluster of the test's own: six `redis-server` processes in cluster mode on free
//! loopback ports (three masters, a replica each, a node timeout of one second), made one cluster
//! by `redis-cli --cluster create`. Its faults are what a cluster's users meet, done to the
//! master of the slot a test [focuses](OwnRedisCluster::focus) on (the channel's and its
//! history's, or a route partition's): that master killed by `SIGKILL` (its replica takes over, and it
//! comes back as a replica), or the slot migrated to another master while traffic flows
//! (`CLUSTER SETSLOT … IMPORTING/MIGRATING`, `MIGRATE`, `SETSLOT … NODE`). Nothing is saved to
//! disk but each node's cluster configuration. The machine's shared Redis is never touched.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::brokers::{self, Outage};
use super::cluster::free_port;

const NODES: usize = 6;

/// Three masters and three replicas.
pub struct OwnRedisCluster {
    dir: PathBuf,
    ports: Vec<u16>,
    nodes: Vec<Option<Child>>,
    /// The key whose slot the faults are done to.
    key: String,
    /// The keys [`Outage::run`] aims its faults at, one after the other.
    keys: Vec<String>,
    /// Faults done so far (they alternate: a master killed, a slot migrated).
    faults: usize,
}

/// One line of `CLUSTER NODES`.
#[derive(Debug, Clone)]
struct Node {
    id: String,
    port: u16,
    master: bool,
    failed: bool,
    slots: Vec<(u16, u16)>,
}

impl OwnRedisCluster {
    /// Starts the cluster and waits until every slot is served; `None` (after saying so, or
    /// failing when brokers are required) without `redis-server` and `redis-cli`.
    pub async fn start() -> Option<OwnRedisCluster> {
        for program in ["redis-server", "redis-cli"] {
            if Command::new(program)
                .arg("--version")
                .stdout(Stdio::null())
                .status()
                .is_err()
            {
                brokers::not_installed(&format!("`{program}`, to run a Redis Cluster"));
                return None;
            }
        }
        let dir = std::env::temp_dir().join(super::unique("sse-own-redis-cluster"));
        let mut cluster = OwnRedisCluster {
            dir,
            ports: (0..NODES).map(|_| free_port()).collect(),
            nodes: (0..NODES).map(|_| None).collect(),
            key: "send.sse.event".into(),
            keys: vec!["send.sse.event".into()],
            faults: 0,
        };
        for node in 0..NODES {
            cluster.launch(node);
        }
        for node in 0..NODES {
            cluster.wait_serving(node).await;
        }
        let mut create = Command::new("redis-cli");
        create.args(["--cluster", "create"]);
        for port in &cluster.ports {
            create.arg(format!("127.0.0.1:{port}"));
        }
        let out = create
            .args(["--cluster-replicas", "1", "--cluster-yes"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "redis-cli --cluster create failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        cluster.wait_settled().await;
        Some(cluster)
    }

    /// The URL of every node, comma-separated, as a hub is given a cluster.
    pub fn url(&self) -> String {
        self.ports
            .iter()
            .map(|port| format!("redis://127.0.0.1:{port}"))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Aims the faults at the slot of `key` (a channel and its history, or a route partition's
    /// channel and its history).
    pub fn focus(&mut self, key: &str) {
        self.focus_in_turn(vec![key.to_owned()]);
    }

    /// Aims the faults of [`Outage::run`] at the slots of `keys`, one after the other (the
    /// shared channel's, then route partitions'), so that a run meets each kind of master.
    pub fn focus_in_turn(&mut self, keys: Vec<String>) {
        assert!(!keys.is_empty());
        self.key.clone_from(&keys[0]);
        self.keys = keys;
    }

    /// The port of the master that serves `key`'s slot now.
    pub fn master_port_of(&self, key: &str) -> u16 {
        self.master_serving(key).1.port
    }

    fn launch(&mut self, node: usize) {
        let dir = self.dir.join(format!("n{node}"));
        std::fs::create_dir_all(&dir).unwrap();
        let port = self.ports[node].to_string();
        let log = std::fs::File::create(self.dir.join(format!("n{node}.log"))).unwrap();
        let child = Command::new("redis-server")
            .args(super::own::redis_args(&port))
            .args(["--cluster-enabled", "yes", "--cluster-node-timeout", "1000"])
            // A replica takes over however long it was cut from its master (the harness waits
            // for it to be in sync before the next fault).
            .args(["--cluster-replica-validity-factor", "0"])
            .args(["--cluster-config-file", "nodes.conf"])
            .args(["--dir", dir.to_str().unwrap()])
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        self.nodes[node] = Some(child);
    }

    fn kill(&mut self, node: usize) {
        if let Some(mut child) = self.nodes[node].take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    async fn wait_serving(&self, node: usize) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while cli(self.ports[node], &["PING"]).as_deref() != Some("PONG") {
            assert!(
                tokio::time::Instant::now() < deadline,
                "Redis node {node} did not start; see {}",
                self.dir.join(format!("n{node}.log")).display()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits until every running node says the cluster is `ok` and sees no node failed, and
    /// every replica is in sync with its master.
    async fn wait_settled(&self) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            if self.settled() {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the Redis Cluster did not settle; see {}",
                self.dir.display()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn settled(&self) -> bool {
        let running: Vec<u16> = (0..NODES)
            .filter(|&n| self.nodes[n].is_some())
            .map(|n| self.ports[n])
            .collect();
        running.iter().all(|&port| {
            cli(port, &["CLUSTER", "INFO"]).is_some_and(|info| info.contains("cluster_state:ok"))
                && nodes_seen_by(port).is_some_and(|nodes| {
                    nodes.len() == NODES
                        && nodes.iter().all(|n| !n.failed)
                        && nodes.iter().map(|n| n.slots.len()).sum::<usize>() > 0
                })
                && cli(port, &["INFO", "replication"]).is_some_and(|info| {
                    info.contains("role:master")
                        || (info.contains("master_link_status:up")
                            && info.contains("master_sync_in_progress:0"))
                })
        })
    }

    /// The running node that masters the focused key's slot, and that slot.
    fn master_of_key(&self) -> (usize, Node, u16) {
        self.master_serving(&self.key)
    }

    /// The running node that masters `key`'s slot, and that slot.
    fn master_serving(&self, key: &str) -> (usize, Node, u16) {
        let port = self.any_running_port();
        let slot: u16 = cli(port, &["CLUSTER", "KEYSLOT", key])
            .unwrap()
            .parse()
            .unwrap();
        let nodes = nodes_seen_by(port).unwrap();
        let master = nodes
            .into_iter()
            .find(|n| n.master && !n.failed && n.slots.iter().any(|&(a, b)| a <= slot && slot <= b))
            .expect("a master serves the slot");
        let index = self.ports.iter().position(|&p| p == master.port).unwrap();
        (index, master, slot)
    }

    /// The last lines of every node's log, to tell why the cluster did not do what it should.
    fn log_tails(&self) -> String {
        (0..NODES)
            .map(|node| {
                let log = std::fs::read_to_string(self.dir.join(format!("n{node}.log")))
                    .unwrap_or_default();
                let lines: Vec<&str> = log.lines().collect();
                let tail = lines[lines.len().saturating_sub(8)..].join("\n");
                format!("-- node {node} (port {}):\n{tail}", self.ports[node])
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    fn any_running_port(&self) -> u16 {
        (0..NODES)
            .find(|&n| self.nodes[n].is_some())
            .map(|n| self.ports[n])
            .unwrap()
    }

    /// Kills the focused slot's master, waits until its replica took over, runs `while_down`,
    /// and starts the node again (it comes back as a replica).
    pub async fn fail_over(&mut self, while_down: futures_util::future::BoxFuture<'_, ()>) {
        let (node, _, slot) = self.master_of_key();
        self.kill(node);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let port = self.any_running_port();
            let promoted = nodes_seen_by(port).is_some_and(|nodes| {
                nodes.iter().any(|n| {
                    n.master
                        && !n.failed
                        && n.port != self.ports[node]
                        && n.slots.iter().any(|&(a, b)| a <= slot && slot <= b)
                })
            });
            if promoted {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "no replica took over slot {slot} from {}: {}\n{}",
                self.ports[node],
                cli(port, &["CLUSTER", "NODES"]).unwrap_or_default(),
                self.log_tails()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        while_down.await;
        self.launch(node);
        self.wait_serving(node).await;
        self.wait_settled().await;
    }

    /// Moves the focused slot to another master, its keys with it, while traffic flows.
    pub async fn migrate(&mut self, while_down: futures_util::future::BoxFuture<'_, ()>) {
        let moving = self.begin_migration();
        self.finish_migration(&moving);
        while_down.await;
        self.wait_settled().await;
    }

    /// The first half of a migration: the focused slot is marked as moving to another master and
    /// its keys are moved there, but the old master still owns it (a command for a key it no
    /// longer has is sent on with `-ASK`).
    pub fn begin_migration(&mut self) -> Migration {
        let (_, source, slot) = self.master_of_key();
        let port = self.any_running_port();
        let target = nodes_seen_by(port)
            .unwrap()
            .into_iter()
            .find(|n| n.master && !n.failed && n.id != source.id && !n.slots.is_empty())
            .expect("another master");
        let slot_arg = slot.to_string();
        ok(
            target.port,
            &["CLUSTER", "SETSLOT", &slot_arg, "IMPORTING", &source.id],
        );
        ok(
            source.port,
            &["CLUSTER", "SETSLOT", &slot_arg, "MIGRATING", &target.id],
        );
        loop {
            let keys = cli(source.port, &["CLUSTER", "GETKEYSINSLOT", &slot_arg, "100"])
                .unwrap_or_default();
            let keys: Vec<&str> = keys.lines().filter(|k| !k.is_empty()).collect();
            if keys.is_empty() {
                break;
            }
            let target_port = target.port.to_string();
            let mut args = vec![
                "MIGRATE",
                "127.0.0.1",
                &target_port,
                "",
                "0",
                "5000",
                "KEYS",
            ];
            args.extend(keys);
            let answer = cli(source.port, &args).unwrap_or_default();
            assert!(
                answer == "OK" || answer == "NOKEY",
                "MIGRATE answered {answer}"
            );
        }
        Migration {
            slot,
            source,
            target,
        }
    }

    /// The second half: the slot is handed to its new master, and every master told.
    pub fn finish_migration(&mut self, moving: &Migration) {
        let slot_arg = moving.slot.to_string();
        let (source, target) = (&moving.source, &moving.target);
        // The new owner first, then the old one, then everyone else (as `redis-cli --cluster
        // reshard` does).
        ok(
            target.port,
            &["CLUSTER", "SETSLOT", &slot_arg, "NODE", &target.id],
        );
        ok(
            source.port,
            &["CLUSTER", "SETSLOT", &slot_arg, "NODE", &target.id],
        );
        for node in nodes_seen_by(self.any_running_port()).unwrap() {
            if node.master && !node.failed && node.id != source.id && node.id != target.id {
                ok(
                    node.port,
                    &["CLUSTER", "SETSLOT", &slot_arg, "NODE", &target.id],
                );
            }
        }
    }
}

/// A slot on its way from one master to another ([`OwnRedisCluster::begin_migration`]).
#[derive(Debug)]
pub struct Migration {
    slot: u16,
    source: Node,
    target: Node,
}

/// Runs a `redis-cli` command that must answer `OK`.
fn ok(port: u16, args: &[&str]) {
    let answer = cli(port, args);
    assert_eq!(answer.as_deref(), Some("OK"), "{args:?} on {port}");
}

impl Outage for OwnRedisCluster {
    /// In turn: kills the focused slot's master (its replica takes over; the node comes back as
    /// a replica), or migrates the slot to another master; each fault at the next of the keys
    /// [`focus_in_turn`](OwnRedisCluster::focus_in_turn) was given.
    fn run<'a>(
        &'a mut self,
        while_down: futures_util::future::BoxFuture<'a, ()>,
    ) -> futures_util::future::BoxFuture<'a, ()> {
        Box::pin(async move {
            self.key = self.keys[self.faults % self.keys.len()].clone();
            self.faults += 1;
            if self.faults % 2 == 1 {
                self.fail_over(while_down).await;
            } else {
                self.migrate(while_down).await;
            }
        })
    }
}

impl Drop for OwnRedisCluster {
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

/// `redis-cli -p port args…`, its answer trimmed; `None` when it could not ask.
fn cli(port: u16, args: &[&str]) -> Option<String> {
    let out = Command::new("redis-cli")
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(args)
        .stderr(Stdio::null())
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    let text = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    (!text.is_empty() && !text.starts_with("Could not connect")).then_some(text)
}

/// The cluster's nodes as the node on `port` sees them.
fn nodes_seen_by(port: u16) -> Option<Vec<Node>> {
    let text = cli(port, &["CLUSTER", "NODES"])?;
    text.lines().map(parse_node).collect()
}

/// `<id> <ip:port@cport> <flags> <master> <ping> <pong> <epoch> <link> <slot>…`
fn parse_node(line: &str) -> Option<Node> {
    let fields: Vec<&str> = line.split_whitespace().collect();
    let address = fields.get(1)?;
    let port = address
        .split('@')
        .next()?
        .rsplit(':')
        .next()?
        .parse()
        .ok()?;
    let flags = fields.get(2)?;
    let slots = fields
        .iter()
        .skip(8)
        .filter(|s| !s.starts_with('['))
        .filter_map(|range| match range.split_once('-') {
            Some((a, b)) => Some((a.parse().ok()?, b.parse().ok()?)),
            None => range.parse().ok().map(|s| (s, s)),
        })
        .collect();
    Some(Node {
        id: fields[0].to_owned(),
        port,
        master: flags.contains("master"),
        failed: flags.contains("fail"),
        slots,
    })
}
