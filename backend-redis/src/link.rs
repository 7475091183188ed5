//! The backend's connections to Redis: to one server, or to the nodes of a Redis Cluster. The
//! commands that write and read (the publish script, `XRANGE`, `WAIT`) are the same on both; what
//! differs is how they reach the node (a [`Conn`]), which pub/sub commands a subscription uses
//! (`SUBSCRIBE` or the sharded `SSUBSCRIBE`), and how keys are named (a [`Names`]).

use redis::aio::{
    ConnectionLike, ConnectionManager, ConnectionManagerConfig, MultiplexedConnection, PubSubSink,
};
use redis::cluster::ClusterClientBuilder;
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{Route, RoutingInfo, SingleNodeRoutingInfo, Slot, SlotAddr};
use redis::{Cmd, RedisFuture, Value};
use sse_core::BackendError;

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

/// Where a subscription's channels are subscribed: a pub/sub connection to one server, or a
/// connection to the master of the channel's slot on a cluster (sharded pub/sub).
#[derive(Clone)]
pub(crate) enum Subscriber {
    Single(PubSubSink),
    Cluster(MultiplexedConnection),
}

impl Subscriber {
    pub(crate) async fn subscribe(&mut self, channels: &[String]) -> redis::RedisResult<()> {
        match self {
            Subscriber::Single(sink) => sink.subscribe(channels).await,
            Subscriber::Cluster(connection) => {
                shard_command(connection, "SSUBSCRIBE", channels).await
            }
        }
    }

    /// Pings the server through the subscription's connection.
    pub(crate) async fn ping(&mut self) -> redis::RedisResult<()> {
        match self {
            Subscriber::Single(sink) => sink.ping::<Value>().await.map(drop),
            Subscriber::Cluster(connection) => redis::cmd("PING")
                .query_async::<Value>(connection)
                .await
                .map(drop),
        }
    }

    pub(crate) async fn unsubscribe(&mut self, channels: &[String]) -> redis::RedisResult<()> {
        match self {
            Subscriber::Single(sink) => sink.unsubscribe(channels).await,
            Subscriber::Cluster(connection) => {
                shard_command(connection, "SUNSUBSCRIBE", channels).await
            }
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

/// The names of what the backend writes and subscribes to.
#[derive(Debug, Clone)]
pub(crate) struct Names {
    /// The channel every instance subscribes to.
    pub(crate) channel: String,
    /// The history stream.
    pub(crate) history_key: String,
    /// What a session's route channel begins with (its route token follows).
    route_prefix: String,
    /// Whether publishing is sharded (`SPUBLISH`).
    pub(crate) sharded: bool,
}

impl Names {
    /// The names `config` gives on `link`. On a cluster the history stream and the route
    /// channels are kept in the channel's slot (so that one script writes the history and
    /// publishes, and one connection carries the channel and the routes in one order): they
    /// begin with the channel's hash tag, `{channel}` when it has none.
    pub(crate) fn new(config: &RedisConfig, link: &Link) -> Result<Names, BackendError> {
        let channel = config.channel.clone();
        if matches!(link, Link::Single(_)) {
            return Ok(Names {
                route_prefix: format!("{channel}:"),
                history_key: config.history_key.clone(),
                channel,
                sharded: false,
            });
        }
        let prefix = if hash_tag(&channel).is_some() {
            format!("{channel}:")
        } else {
            format!("{{{channel}}}:")
        };
        if Slot::for_key(format!("{prefix}x")) != Slot::for_key(&channel) {
            return Err(BackendError::Config {
                backend: NAME,
                message: format!(
                    "on a Redis Cluster the channel `{channel}` needs a hash tag (`{{tag}}`) or \
                     no braces at all"
                ),
            });
        }
        let history_key = if config.history_key == format!("{channel}:history") {
            format!("{prefix}history")
        } else {
            config.history_key.clone()
        };
        if Slot::for_key(&history_key) != Slot::for_key(&channel) {
            return Err(BackendError::Config {
                backend: NAME,
                message: format!(
                    "on a Redis Cluster the history key `{history_key}` must be in the slot of \
                     the channel `{channel}`: begin it with `{prefix}`"
                ),
            });
        }
        Ok(Names {
            route_prefix: prefix,
            history_key,
            channel,
            sharded: true,
        })
    }

    /// The channel of the route whose token is `token`.
    pub(crate) fn route(&self, token: &str) -> String {
        format!("{}{token}", self.route_prefix)
    }
}

/// The hash tag of a key, as Redis Cluster finds it: what is between the first `{` and the
/// first `}` after it, when that is not empty.
fn hash_tag(key: &str) -> Option<&str> {
    let open = key.find('{')?;
    let close = key[open + 1..].find('}')?;
    (close > 0).then(|| &key[open + 1..open + 1 + close])
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn cluster_names(channel: &str) -> Names {
        let config = RedisConfig::new("redis://a:1,redis://b:2", channel);
        Names::new(&config, &Link::Cluster(config.nodes().unwrap())).unwrap()
    }

    #[test]
    fn on_a_cluster_history_and_routes_share_the_channels_slot() {
        for channel in ["send.sse.event", "{orders}.events", "x{a}{b}"] {
            let names = cluster_names(channel);
            let slot = Slot::for_key(channel);
            assert_eq!(Slot::for_key(&names.history_key), slot, "{channel}");
            assert_eq!(Slot::for_key(names.route("abc")), slot, "{channel}");
            assert_ne!(names.route("abc"), names.route("abd"));
        }
        assert_eq!(
            cluster_names("send.sse.event").history_key,
            "{send.sse.event}:history"
        );
    }

    #[test]
    fn a_history_key_outside_the_slot_is_refused_on_a_cluster() {
        let mut config = RedisConfig::new("redis://a:1,redis://b:2", "events");
        config.history_key = "elsewhere".into();
        let error = Names::new(&config, &Link::Cluster(config.nodes().unwrap())).unwrap_err();
        assert!(error.to_string().contains("{events}:"), "{error}");
    }

    #[test]
    fn a_channel_with_braces_but_no_hash_tag_is_refused_on_a_cluster() {
        let config = RedisConfig::new("redis://a:1,redis://b:2", "a{}b");
        assert!(Names::new(&config, &Link::Cluster(config.nodes().unwrap())).is_err());
    }

    #[test]
    fn one_server_keeps_the_names_it_always_had() {
        let config = RedisConfig::new("redis://a:1", "send.sse.event");
        let client = redis::Client::open("redis://a:1").unwrap();
        let names = Names::new(&config, &Link::Single(Box::new(client))).unwrap();
        assert_eq!(names.history_key, "send.sse.event:history");
        assert_eq!(names.route("t"), "send.sse.event:t");
    }

    #[test]
    fn hash_tags_are_found_as_redis_finds_them() {
        assert_eq!(hash_tag("{a}b"), Some("a"));
        assert_eq!(hash_tag("x{a}{b}"), Some("a"));
        assert_eq!(hash_tag("a{}b"), None);
        assert_eq!(hash_tag("a{b"), None);
        assert_eq!(hash_tag("plain"), None);
    }
}
