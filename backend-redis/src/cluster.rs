//! The subscription on a Redis Cluster: sharded pub/sub (`SSUBSCRIBE`) on one connection of its
//! own to the master of the channel's slot, where the route channels live too (see
//! [`Names`](crate::link::Names)), so that one connection carries the channel and the routes in
//! the one order in which that master runs the publish scripts.
//!
//! The connection is the same kind as on one server, and is lost and found again the same way,
//! with one more way to be lost: Redis unsubscribes a shard channel by itself (an unsolicited
//! `sunsubscribe`) when its slot moves to another master. An unsubscribe of a route this
//! instance let go of is told apart by [`Inner::intends`]. Whatever the loss (the master died and
//! its replica took over, the slot moved, the connection or a ping failed), the subscription
//! finds the slot's master again (`CLUSTER SLOTS`), connects to it, subscribes every channel
//! again and reports a [gap](sse_core::Received::Gap) from a little before its last sign of life:
//! the loop of `subscribe`, which drives a server's connection the same way.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;
use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, ConnectionAddr, ProtocolVersion, PushInfo, PushKind, Value};
use sse_core::{BackendError, BackendStream};
use tokio::sync::mpsc;

use crate::link::{Subscriber, shard_command};
use crate::subscribe::Feed;
use crate::{Inner, NAME, unavailable};

/// A subscribed connection to the slot's master and the pushes it receives.
pub(crate) struct Sharded {
    connection: MultiplexedConnection,
    pushes: mpsc::Receiver<PushInfo>,
    /// Set when a push was dropped because the queue was full (the hub fell behind).
    overflowed: Arc<AtomicBool>,
}

/// Subscribes on the cluster whose nodes are `nodes` (the first one is asked where the slot is).
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

    /// Connects to the master of the channel's slot and subscribes the channel there.
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
        Subscriber::Cluster(self.connection.clone())
    }

    async fn next(&mut self, inner: &Inner) -> Result<Option<Bytes>, String> {
        let Some(push) = self.pushes.recv().await else {
            return Err("connection closed".to_owned());
        };
        match push.kind {
            // Envelopes were dropped after those still queued: these too are read from the
            // history, after the gap, in their order.
            _ if self.overflowed.load(Ordering::Relaxed) => {
                Err("the hub fell behind; envelopes were dropped".to_owned())
            }
            PushKind::SMessage => match push.data.get(1) {
                Some(Value::BulkString(payload)) => Ok(Some(Bytes::copy_from_slice(payload))),
                _ => Ok(None),
            },
            PushKind::Disconnection => Err("connection closed".to_owned()),
            PushKind::SUnsubscribe => match push.data.first() {
                Some(Value::BulkString(channel)) if inner.intends(channel) => {
                    Err("Redis unsubscribed a channel (its slot moved)".to_owned())
                }
                _ => Ok(None),
            },
            _ => Ok(None),
        }
    }
}

async fn connect(inner: &Inner, seed: &redis::ConnectionInfo) -> Result<Sharded, BackendError> {
    let (host, port) = master_of_channel(inner).await?;
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
    // The library's push sender must not block: a full queue drops the push and says so, and
    // the subscription starts again from the history.
    let (push_tx, pushes) = mpsc::channel(inner.config.buffer.max(1));
    let overflowed = Arc::new(AtomicBool::new(false));
    let overflow = overflowed.clone();
    let sender = move |push: PushInfo| {
        if push_tx.try_send(push).is_err() {
            overflow.store(true, Ordering::Relaxed);
        }
        Ok::<(), std::convert::Infallible>(())
    };
    let config = AsyncConnectionConfig::new()
        .set_connection_timeout(Some(inner.config.connect_timeout))
        .set_response_timeout(Some(inner.config.response_timeout))
        .set_push_sender(sender);
    let mut connection = client
        .get_multiplexed_async_connection_with_config(&config)
        .await
        .map_err(unavailable)?;
    shard_command(
        &mut connection,
        "SSUBSCRIBE",
        std::slice::from_ref(&inner.names.channel),
    )
    .await
    .map_err(unavailable)?;
    Ok(Sharded {
        connection,
        pushes,
        overflowed,
    })
}

/// The address of the master that serves the channel's slot, as the cluster says now.
async fn master_of_channel(inner: &Inner) -> Result<(String, u16), BackendError> {
    let mut connection = inner.publisher.clone();
    let slot: i64 = redis::cmd("CLUSTER")
        .arg("KEYSLOT")
        .arg(&inner.names.channel)
        .query_async(&mut connection)
        .await
        .map_err(unavailable)?;
    let slots: Vec<Value> = redis::cmd("CLUSTER")
        .arg("SLOTS")
        .query_async(&mut connection)
        .await
        .map_err(unavailable)?;
    slots
        .iter()
        .find_map(|range| master_in(range, slot))
        .ok_or_else(|| BackendError::unavailable(NAME, format!("no master serves slot {slot}")))
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
