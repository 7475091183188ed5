//! The subscription on a Redis Cluster: sharded pub/sub (`SSUBSCRIBE`) on one connection of its
//! own to each master that serves a [lane](sse_core::backend::Lane) (the shared channel's slot,
//! and the slots of the route partitions, see [`Names`](crate::names::Names)), each lane's
//! channels on its master's connection, in the one order in which that master runs the publish
//! scripts of the lane. What the connections receive is tagged with its lane.
//!
//! The connections are lost and found again together, as one server's connection is, with one
//! more way to be lost: Redis unsubscribes a shard channel by itself (an unsolicited
//! `sunsubscribe`) when its slot moves to another master. An unsubscribe of a route this
//! instance let go of is told apart by [`Inner::intends`]; a route subscribed on a master that
//! no longer serves its slot is refused (`MOVED`), which counts as a loss too. Whatever the loss
//! (a master died and its replica took over, a slot moved, a connection or a ping failed), the
//! subscription finds the lanes' masters again (`CLUSTER SLOTS`), connects to them, subscribes
//! every channel again and reports a [gap](sse_core::Received::Gap) from a little before its
//! last sign of life, which the hub catches up lane by lane: the loop of `subscribe`, which
//! drives a server's connection the same way.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;
use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, ConnectionAddr, ProtocolVersion, PushInfo, PushKind, Value};
use sse_core::backend::Lane;
use sse_core::{BackendError, BackendStream};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::link::{Shards, Subscriber, shard_command};
use crate::names::slot;
use crate::subscribe::Feed;
use crate::{Inner, NAME, unavailable};

/// The subscribed connections to the lanes' masters and the pushes they receive.
pub(crate) struct Sharded {
    shards: Arc<Shards>,
    /// Every connection's pushes, tagged with the index of its connection.
    pushes: mpsc::Receiver<(usize, PushInfo)>,
    /// Set when a push was dropped because the queue was full (the hub fell behind).
    overflowed: Arc<AtomicBool>,
    /// The address of each connection, for the logs.
    addresses: Vec<(String, u16)>,
}

/// Subscribes on the cluster whose nodes are `nodes` (the first one gives the connection
/// settings; the cluster says where the masters are).
pub(crate) async fn subscribe(
    inner: Arc<Inner>,
    nodes: &[String],
) -> Result<BackendStream, BackendError> {
    let seed =
        redis::IntoConnectionInfo::into_connection_info(nodes[0].as_str()).map_err(unavailable)?;
    crate::subscribe::subscribe::<Sharded>(inner, seed).await
}

impl Feed for Sharded {
    type Target = redis::ConnectionInfo;

    /// Connects to the master of each lane's slot and subscribes the shared channel.
    async fn connect(inner: &Inner, seed: &redis::ConnectionInfo) -> Result<Sharded, BackendError> {
        let after = inner.config.connect_timeout * 2;
        tokio::time::timeout(after, connect(inner, seed))
            .await
            .map_err(|_| BackendError::Timeout {
                backend: NAME,
                after,
            })?
    }

    fn subscriber(&self) -> Subscriber {
        Subscriber::Cluster(self.shards.clone())
    }

    async fn next(&mut self, inner: &Inner) -> Result<Option<(Lane, Bytes)>, String> {
        let (connection, push) = tokio::select! {
            () = self.shards.stale.cancelled() => {
                return Err("a route's master refused it (its slot moved)".to_owned());
            }
            push = self.pushes.recv() => match push {
                Some(push) => push,
                None => return Err("connections closed".to_owned()),
            },
        };
        let (host, port) = &self.addresses[connection];
        match push.kind {
            // Envelopes were dropped after those still queued: these too are read from the
            // history, after the gap, in their order.
            _ if self.overflowed.load(Ordering::Relaxed) => {
                Err("the hub fell behind; envelopes were dropped".to_owned())
            }
            PushKind::SMessage => match (push.data.first(), push.data.get(1)) {
                (Some(Value::BulkString(channel)), Some(Value::BulkString(payload))) => Ok(Some((
                    self.shards.names.lane_of(channel),
                    Bytes::copy_from_slice(payload),
                ))),
                _ => Ok(None),
            },
            PushKind::Disconnection => Err(format!("the connection to {host}:{port} closed")),
            PushKind::SUnsubscribe => match push.data.first() {
                Some(Value::BulkString(channel)) if inner.intends(channel) => Err(format!(
                    "Redis ({host}:{port}) unsubscribed a channel (its slot moved)"
                )),
                _ => Ok(None),
            },
            _ => Ok(None),
        }
    }

    const ONE_CONNECTION: bool = false;
}

async fn connect(inner: &Inner, seed: &redis::ConnectionInfo) -> Result<Sharded, BackendError> {
    let masters = masters(inner).await?;
    let mut addresses: Vec<(String, u16)> = Vec::new();
    let mut lane_connection = Vec::new();
    for lane in 0..inner.names.lanes() {
        let slot = slot(inner.names.history_key(lane));
        let master = masters
            .iter()
            .find_map(|range| master_in(range, i64::from(slot)))
            .ok_or_else(|| {
                BackendError::unavailable(NAME, format!("no master serves slot {slot}"))
            })?;
        let index = match addresses.iter().position(|a| *a == master) {
            Some(index) => index,
            None => {
                addresses.push(master);
                addresses.len() - 1
            }
        };
        lane_connection.push(index);
    }
    // The library's push senders must not block: a full queue drops the push and says so, and
    // the subscription starts again from the history.
    let (push_tx, pushes) = mpsc::channel(inner.config.buffer.max(1));
    let overflowed = Arc::new(AtomicBool::new(false));
    let connecting = addresses.iter().enumerate().map(|(index, (host, port))| {
        let sender = {
            let (push_tx, overflow) = (push_tx.clone(), overflowed.clone());
            move |push: PushInfo| {
                if push_tx.try_send((index, push)).is_err() {
                    overflow.store(true, Ordering::Relaxed);
                }
                Ok::<(), std::convert::Infallible>(())
            }
        };
        connect_to(inner, seed, host.clone(), *port, sender)
    });
    let connections = futures_util::future::try_join_all(connecting).await?;
    let shards = Arc::new(Shards {
        connections,
        lane_connection,
        names: inner.names.clone(),
        stale: CancellationToken::new(),
    });
    let mut broadcast = shards.connections[shards.lane_connection[0]].clone();
    shard_command(
        &mut broadcast,
        "SSUBSCRIBE",
        std::slice::from_ref(&inner.names.channel),
    )
    .await
    .map_err(unavailable)?;
    Ok(Sharded {
        shards,
        pushes,
        overflowed,
        addresses,
    })
}

/// A RESP3 connection to the master at `host:port` with the seed's settings (and TLS), whose
/// pushes go to `sender`.
async fn connect_to(
    inner: &Inner,
    seed: &redis::ConnectionInfo,
    host: String,
    port: u16,
    sender: impl Fn(PushInfo) -> Result<(), std::convert::Infallible> + Send + Sync + 'static,
) -> Result<MultiplexedConnection, BackendError> {
    let addr = match seed.addr() {
        ConnectionAddr::TcpTls {
            insecure,
            tls_params,
            ..
        } => ConnectionAddr::TcpTls {
            host,
            port,
            insecure: *insecure,
            tls_params: tls_params.clone(),
        },
        _ => ConnectionAddr::Tcp(host, port),
    };
    let info = seed.clone().set_addr(addr).set_redis_settings(
        seed.redis_settings()
            .clone()
            .set_protocol(ProtocolVersion::RESP3),
    );
    let client = redis::Client::open(info).map_err(unavailable)?;
    let config = AsyncConnectionConfig::new()
        .set_connection_timeout(Some(inner.config.connect_timeout))
        .set_response_timeout(Some(inner.config.response_timeout))
        .set_push_sender(sender);
    client
        .get_multiplexed_async_connection_with_config(&config)
        .await
        .map_err(unavailable)
}

/// The cluster's slot ranges and their masters, as it says now (`CLUSTER SLOTS`).
async fn masters(inner: &Inner) -> Result<Vec<Value>, BackendError> {
    let mut connection = inner.publisher.clone();
    redis::cmd("CLUSTER")
        .arg("SLOTS")
        .query_async(&mut connection)
        .await
        .map_err(unavailable)
}

/// The master of one `CLUSTER SLOTS` entry (`[start, end, [host, port, id, …], replicas…]`) when
/// it covers `slot`.
fn master_in(range: &Value, slot: i64) -> Option<(String, u16)> {
    let Value::Array(fields) = range else {
        return None;
    };
    let (Some(Value::Int(start)), Some(Value::Int(end)), Some(Value::Array(master))) =
        (fields.first(), fields.get(1), fields.get(2))
    else {
        return None;
    };
    if !(*start..=*end).contains(&slot) {
        return None;
    }
    let host = match master.first()? {
        Value::BulkString(host) => String::from_utf8(host.clone()).ok()?,
        Value::SimpleString(host) => host.clone(),
        _ => return None,
    };
    let Value::Int(port) = master.get(1)? else {
        return None;
    };
    Some((host, u16::try_from(*port).ok()?))
}
