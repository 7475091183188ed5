//! The backend's connections to Redis: to one server, or to the nodes of a Redis Cluster. The
//! commands that write and read (the publish script, `XRANGE`, `WAIT`) are the same on both; what
//! differs is how they reach the node (a [`Conn`]), which pub/sub commands a subscription uses
//! (`SUBSCRIBE` or the sharded `SSUBSCRIBE`), and how keys are named (a [`Names`]).

use std::sync::Arc;

use redis::aio::{
    ConnectionLike, ConnectionManager, ConnectionManagerConfig, MultiplexedConnection, PubSubSink,
};
use redis::cluster::ClusterClientBuilder;
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{Route, RoutingInfo, SingleNodeRoutingInfo, SlotAddr};
use redis::{Cmd, RedisFuture, Value};
use sse_core::BackendError;
use tokio_util::sync::CancellationToken;

use crate::names::Names;
use crate::{NAME, RedisConfig, within};

/// What the backend talks to.
#[derive(Clone)]
pub(crate) enum Link {
    /// One Redis server.
    Single(Box<redis::Client>),
    /// A Redis Cluster, known by the URLs of some of its nodes.
    Cluster(Vec<String>),
}

impl Link {
    /// The link `config` names: a cluster when its URL lists several nodes, or when its one node
    /// says it is in cluster mode.
    pub(crate) async fn discover(config: &RedisConfig) -> Result<Link, BackendError> {
        let nodes = config.nodes()?;
        if nodes.len() > 1 {
            return Ok(Link::Cluster(nodes));
        }
        let client = redis::Client::open(nodes[0].as_str()).map_err(|e| BackendError::Config {
            backend: NAME,
            message: format!("invalid Redis URL: {e}"),
        })?;
        let asked = async {
            let mut connection = client.get_multiplexed_async_connection().await?;
            redis::cmd("INFO")
                .arg("cluster")
                .query_async::<String>(&mut connection)
                .await
        };
        let info = within(config.connect_timeout * 2, asked).await?;
        if info.lines().any(|line| line.trim() == "cluster_enabled:1") {
            Ok(Link::Cluster(nodes))
        } else {
            Ok(Link::Single(Box::new(client)))
        }
    }

    /// A connection for commands: reconnecting, and on a cluster following the slots.
    pub(crate) async fn commands(&self, config: &RedisConfig) -> Result<Conn, BackendError> {
        let after = config.connect_timeout * 2;
        let connecting = async {
            match self {
                Link::Single(client) => {
                    let manager = ConnectionManagerConfig::new()
                        .set_connection_timeout(Some(config.connect_timeout))
                        .set_response_timeout(Some(config.response_timeout))
                        .set_number_of_retries(1)
                        .set_max_delay(config.max_backoff);
                    ConnectionManager::new_with_config((**client).clone(), manager)
                        .await
                        .map(Conn::Single)
                }
                Link::Cluster(nodes) => cluster_builder(nodes, config)
                    .build()?
                    .get_async_connection()
                    .await
                    .map(Conn::Cluster),
            }
        };
        within(after, connecting).await
    }
}

/// A cluster client's settings from `config` (RESP3 where pub/sub pushes are wanted).
pub(crate) fn cluster_builder(nodes: &[String], config: &RedisConfig) -> ClusterClientBuilder {
    ClusterClientBuilder::new(nodes.to_vec())
        .connection_timeout(config.connect_timeout)
        .response_timeout(config.response_timeout)
        .retries(3)
        .max_retry_wait(
            config
                .max_backoff
                .as_millis()
                .try_into()
                .unwrap_or(u64::MAX),
        )
}

/// A connection for commands, to one server or to a cluster.
#[derive(Clone)]
pub(crate) enum Conn {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl Conn {
    /// Runs `cmd` on the master of `key`'s slot (on one server: on the server), for commands
    /// whose node their arguments do not tell (`PING`, `WAIT`).
    pub(crate) async fn on_master_of(&mut self, key: &str, cmd: Cmd) -> redis::RedisResult<Value> {
        match self {
            Conn::Single(manager) => cmd.query_async(manager).await,
            Conn::Cluster(cluster) => {
                let route = Route::with_key(key, SlotAddr::Master);
                cluster
                    .route_command(
                        cmd,
                        RoutingInfo::SingleNode(SingleNodeRoutingInfo::SpecificNode(route)),
                    )
                    .await
            }
        }
    }

    /// Runs `wait` (a `WAIT`) on the master of `key`'s slot, and on a cluster tells which node
    /// that was (`CLUSTER MYID`, in the same round trip): a `WAIT` counts the replicas of what
    /// this connection wrote to that node only.
    pub(crate) async fn wait_on_master_of(
        &mut self,
        key: &str,
        wait: Cmd,
    ) -> redis::RedisResult<(Value, Option<String>)> {
        match self {
            Conn::Single(manager) => Ok((wait.query_async(manager).await?, None)),
            Conn::Cluster(cluster) => {
                let mut pipeline = redis::pipe();
                pipeline.add_command(wait).cmd("CLUSTER").arg("MYID");
                let route = Route::with_key(key, SlotAddr::Master);
                let mut answers = cluster
                    .route_pipeline(pipeline, 0, 2, SingleNodeRoutingInfo::SpecificNode(route))
                    .await?
                    .into_iter();
                let acked = answers.next().unwrap_or(Value::Nil);
                let node = answers.next().map(redis::from_redis_value).transpose()?;
                Ok((acked, node))
            }
        }
    }
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Single(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}

/// Where a subscription's channels are subscribed: a pub/sub connection to one server, or on a
/// cluster the connections to the masters that serve the lanes (sharded pub/sub).
#[derive(Clone)]
pub(crate) enum Subscriber {
    Single(PubSubSink),
    Cluster(Arc<Shards>),
}

/// The subscribing connections on a cluster, one per master that serves a lane, and which lane
/// is subscribed on which.
pub(crate) struct Shards {
    pub(crate) connections: Vec<MultiplexedConnection>,
    /// The index in `connections` of each lane's master.
    pub(crate) lane_connection: Vec<usize>,
    pub(crate) names: Names,
    /// Cancelled when a subscribe failed (the slot of its lane may have moved): the
    /// subscription then finds the masters again and subscribes everything again.
    pub(crate) stale: CancellationToken,
}

impl Shards {
    /// `channels` grouped by the connection of their lane's master.
    fn by_connection(&self, channels: &[String]) -> Vec<(usize, Vec<String>)> {
        let mut groups: Vec<(usize, Vec<String>)> = Vec::new();
        for channel in channels {
            let lane = usize::from(self.names.lane_of(channel.as_bytes()));
            let connection = self.lane_connection.get(lane).copied().unwrap_or(0);
            match groups.iter_mut().find(|(c, _)| *c == connection) {
                Some((_, group)) => group.push(channel.clone()),
                None => groups.push((connection, vec![channel.clone()])),
            }
        }
        groups
    }

    async fn command(&self, command: &str, channels: &[String]) -> redis::RedisResult<()> {
        for (connection, group) in self.by_connection(channels) {
            let mut connection = self.connections[connection].clone();
            shard_command(&mut connection, command, &group).await?;
        }
        Ok(())
    }
}

impl Subscriber {
    pub(crate) async fn subscribe(&mut self, channels: &[String]) -> redis::RedisResult<()> {
        match self {
            Subscriber::Single(sink) => sink.subscribe(channels).await,
            Subscriber::Cluster(shards) => {
                let subscribed = shards.command("SSUBSCRIBE", channels).await;
                if subscribed.is_err() {
                    shards.stale.cancel();
                }
                subscribed
            }
        }
    }

    /// Pings the server (on a cluster, every master subscribed to) through the subscription's
    /// connections.
    pub(crate) async fn ping(&mut self) -> redis::RedisResult<()> {
        match self {
            Subscriber::Single(sink) => sink.ping::<Value>().await.map(drop),
            Subscriber::Cluster(shards) => {
                let pings = shards.connections.iter().map(|connection| {
                    let mut connection = connection.clone();
                    async move {
                        redis::cmd("PING")
                            .query_async::<Value>(&mut connection)
                            .await
                    }
                });
                futures_util::future::try_join_all(pings).await.map(drop)
            }
        }
    }

    pub(crate) async fn unsubscribe(&mut self, channels: &[String]) -> redis::RedisResult<()> {
        match self {
            Subscriber::Single(sink) => sink.unsubscribe(channels).await,
            Subscriber::Cluster(shards) => shards.command("SUNSUBSCRIBE", channels).await,
        }
    }
}

/// Channels one pipeline of [`shard_command`] names at most.
const BATCH: usize = 1000;

/// Runs `command` (`SSUBSCRIBE` or `SUNSUBSCRIBE`) for each channel, one channel per command and
/// a pipeline of them per batch: each is answered by one confirmation, so the replies stay in
/// step with the requests.
pub(crate) async fn shard_command(
    connection: &mut MultiplexedConnection,
    command: &str,
    channels: &[String],
) -> redis::RedisResult<()> {
    for batch in channels.chunks(BATCH) {
        let mut pipeline = redis::pipe();
        for channel in batch {
            pipeline.cmd(command).arg(channel);
        }
        let replies = connection
            .req_packed_commands(&pipeline, 0, batch.len())
            .await?;
        for reply in replies {
            if let Value::ServerError(error) = reply {
                return Err(error.into());
            }
        }
    }
    Ok(())
}
