//! A RabbitMQ cluster of the test's own: three nodes (each its own name, ports and data
//! directory, as [`OwnBroker`] starts one) joined with `rabbitmqctl join_cluster`. An outage kills
//! one node's VM by its pid (in turn) and starts it again; it rejoins from its data. The
//! machine's shared RabbitMQ is never touched.

use super::brokers::{Broker, Outage};
use super::own::OwnBroker;

/// Three clustered RabbitMQ nodes.
pub struct OwnRabbitCluster {
    nodes: Vec<OwnBroker>,
    /// The node the next outage kills.
    next: usize,
}

impl OwnRabbitCluster {
    /// Starts three nodes and joins the second and third to the first; `None` (after saying
    /// so, or failing when brokers are required) without RabbitMQ.
    pub async fn start() -> Option<OwnRabbitCluster> {
        let mut nodes = Vec::new();
        for _ in 0..3 {
            nodes.push(OwnBroker::start(Broker::Rabbit).await?);
        }
        let first = nodes[0].rabbit_node();
        for node in &nodes[1..] {
            node.rabbitmqctl("stop_app");
            node.rabbitmqctl_args(&["join_cluster", &first]);
            node.rabbitmqctl("start_app");
        }
        for node in &nodes {
            node.rabbitmqctl("await_startup");
        }
        Some(OwnRabbitCluster { nodes, next: 0 })
    }

    /// Every node's URL, comma-separated, as a hub is given a cluster.
    pub fn url(&self) -> String {
        self.nodes
            .iter()
            .map(OwnBroker::url)
            .collect::<Vec<_>>()
            .join(",")
    }
}

impl Outage for OwnRabbitCluster {
    /// Kills one node (each in turn), runs `while_down`, starts it again.
    fn run<'a>(
        &'a mut self,
        while_down: futures_util::future::BoxFuture<'a, ()>,
    ) -> futures_util::future::BoxFuture<'a, ()> {
        Box::pin(async move {
            let node = &mut self.nodes[self.next];
            self.next = (self.next + 1) % 3;
            node.stop().await;
            while_down.await;
            node.launch().await;
            node.rabbitmqctl("await_startup");
        })
    }
}
