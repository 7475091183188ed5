//! Publishing: a plain `PUBLISH` (`SPUBLISH` on a cluster), or with history one script that
//! appends to the history stream and publishes, atomically; then, when asked, `WAIT` for
//! replicas.
//!
//! A publish has a deadline ([`RedisConfig::publish_timeout`](crate::RedisConfig)), and the
//! script refuses to run after it (by the Redis server's clock). The client library may send a
//! script again after a failover or a moved slot, and a command it queued runs even when its
//! caller has stopped waiting: without the deadline, a publish answered as failed could still go
//! out later, after the publisher's next event (out of its order). The answer "failed" is given
//! [`CLOCK_SKEW`] after the deadline, so it holds while the clocks of the hub's host and the
//! Redis servers agree within that.

use std::time::{Duration, SystemTime};

use bytes::Bytes;
use sse_core::BackendError;
use sse_core::backend::Lane;

use crate::link::Conn;
use crate::{Inner, NAME, unavailable};

/// How far the clocks of the hub's host and the Redis servers may differ for a publish answered
/// as failed to be sure not to go out later (see the module docs).
pub(crate) const CLOCK_SKEW: Duration = Duration::from_millis(500);

/// Unless the deadline (`ARGV[5]`, Unix milliseconds) has passed, appends the envelope
/// (`ARGV[1]`) to the history stream (`KEYS[1]`), trims the stream to `ARGV[3]` entries and
/// `ARGV[4]` milliseconds, and publishes it to the channel (`ARGV[2]`): one atomic step, so
/// subscribers and the stream see the same order. `PUBLISH` is replaced by `SPUBLISH` on a
/// cluster.
const PUBLISH_SCRIPT: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
if now > tonumber(ARGV[5]) then
  return redis.error_reply('SSEDEADLINE the publish deadline has passed')
end
redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[3], '*', 'e', ARGV[1])
local oldest = now - tonumber(ARGV[4])
if oldest > 0 then
  redis.call('XTRIM', KEYS[1], 'MINID', '~', oldest)
end
redis.call('PEXPIRE', KEYS[1], ARGV[4])
return redis.call('PUBLISH', ARGV[2], ARGV[1])
";

/// The publish script, sharded (`SPUBLISH`) or not. The sharded one answers the id of the node it
/// ran on (`CLUSTER MYID`): while a slot moves, the cluster client sends a publish whose key has
/// moved to the node the slot is moving to (`ASKING`), and the replica wait must be made there.
pub(crate) fn publish_script(sharded: bool) -> String {
    if sharded {
        PUBLISH_SCRIPT.replace(
            "return redis.call('PUBLISH', ARGV[2], ARGV[1])",
            "redis.call('SPUBLISH', ARGV[2], ARGV[1])\nreturn redis.call('CLUSTER', 'MYID')",
        )
    } else {
        PUBLISH_SCRIPT.to_owned()
    }
}

impl Inner {
    /// Publishes to `channel` (the shared one, or a session's) on `lane`, through the history
    /// script (to that lane's history) when history is on.
    pub(crate) async fn publish_on(
        &self,
        channel: &str,
        lane: Lane,
        envelope: Bytes,
    ) -> Result<(), BackendError> {
        let history_key = self.names.history_key(lane);
        if self.closed.is_cancelled() {
            return Err(BackendError::Closed { backend: NAME });
        }
        let config = &self.config;
        let deadline = SystemTime::now() + config.publish_timeout;
        let deadline_ms = sse_core::history::unix_millis(deadline);
        let attempt = async {
            let mut connection = self.publisher.clone();
            let result: Result<redis::Value, _> = match &config.history {
                None => {
                    redis::cmd(if self.names.sharded {
                        "SPUBLISH"
                    } else {
                        "PUBLISH"
                    })
                    .arg(channel)
                    .arg(envelope.as_ref())
                    .query_async(&mut connection)
                    .await
                }
                Some(history) => {
                    self.script
                        .key(history_key)
                        .arg(envelope.as_ref())
                        .arg(channel)
                        .arg(history.max_events.max(1))
                        .arg(
                            u64::try_from(history.max_age.as_millis())
                                .unwrap_or(u64::MAX)
                                .max(1),
                        )
                        .arg(deadline_ms)
                        .invoke_async::<redis::Value>(&mut connection)
                        .await
                }
            };
            let answer = result.map_err(unavailable)?;
            // The node the publish ran on, where the sharded script tells it and a replica wait
            // needs it.
            let ran_on =
                if self.names.sharded && config.history.is_some() && config.wait_replicas > 0 {
                    let id = redis::from_redis_value::<String>(answer)
                        .map_err(|e| BackendError::unavailable(NAME, e))?;
                    Some(id)
                } else {
                    None
                };
            if config.wait_replicas > 0 {
                self.wait_for_replicas(connection, history_key, ran_on)
                    .await?;
            }
            Ok(())
        };
        let after = config.publish_timeout + CLOCK_SKEW;
        tokio::time::timeout(after, attempt)
            .await
            .map_err(|_| BackendError::Timeout {
                backend: NAME,
                after,
            })?
    }

    /// Waits until [`RedisConfig::wait_replicas`](crate::RedisConfig::wait_replicas) replicas
    /// have what `connection` wrote (`WAIT` on the master of `key`, the history stream written),
    /// failing after the wait's timeout: the publish then may or may not survive a failover. On
    /// a cluster, a publish that ran on another node than the one waited on (`ran_on`: its slot
    /// was moving) fails too, as whether a replica has it is not known.
    async fn wait_for_replicas(
        &self,
        mut connection: Conn,
        key: &str,
        ran_on: Option<String>,
    ) -> Result<(), BackendError> {
        let config = &self.config;
        let timeout = u64::try_from(config.wait_timeout.as_millis()).unwrap_or(u64::MAX);
        let mut wait = redis::cmd("WAIT");
        wait.arg(config.wait_replicas).arg(timeout.max(1));
        let (acked, waited_on) = connection
            .wait_on_master_of(key, wait)
            .await
            .map_err(unavailable)?;
        if let (Some(ran_on), Some(waited_on)) = (ran_on, waited_on)
            && ran_on != waited_on
        {
            return Err(BackendError::unavailable(
                NAME,
                format!(
                    "the publish ran on node {ran_on}, where its slot is moving, and its master \
                     {waited_on} cannot tell whether a replica has it"
                ),
            ));
        }
        let acked: u32 =
            redis::from_redis_value(acked).map_err(|e| BackendError::unavailable(NAME, e))?;
        if acked < config.wait_replicas {
            return Err(BackendError::Timeout {
                backend: NAME,
                after: config.wait_timeout,
            });
        }
        Ok(())
    }
}
