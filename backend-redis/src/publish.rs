//! Publishing: a plain `PUBLISH`, or with history one script that appends to the history stream
//! and publishes, atomically.

use bytes::Bytes;
use sse_core::BackendError;

use crate::{Inner, NAME, unavailable};

/// Appends the envelope (`ARGV[1]`) to the history stream (`KEYS[1]`), trims the stream to
/// `ARGV[3]` entries and `ARGV[4]` milliseconds, and publishes it to the channel (`ARGV[2]`):
/// one atomic step, so subscribers and the stream see the same order.
pub(crate) const PUBLISH_SCRIPT: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[3], '*', 'e', ARGV[1])
local oldest = now - tonumber(ARGV[4])
if oldest > 0 then
  redis.call('XTRIM', KEYS[1], 'MINID', '~', oldest)
end
redis.call('PEXPIRE', KEYS[1], ARGV[4])
return redis.call('PUBLISH', ARGV[2], ARGV[1])
";

impl Inner {
    /// Publishes to `channel` (the shared one, or a session's), through the history script when
    /// history is on.
    pub(crate) async fn publish_on(
        &self,
        channel: &str,
        envelope: Bytes,
    ) -> Result<(), BackendError> {
        if self.closed.is_cancelled() {
            return Err(BackendError::Closed { backend: NAME });
        }
        let mut connection = self.publisher.clone();
        let config = &self.config;
        let result: Result<i64, _> = match &config.history {
            None => {
                redis::cmd("PUBLISH")
                    .arg(channel)
                    .arg(envelope.as_ref())
                    .query_async(&mut connection)
                    .await
            }
            Some(history) => {
                self.script
                    .key(&config.history_key)
                    .arg(envelope.as_ref())
                    .arg(channel)
                    .arg(history.max_events.max(1))
                    .arg(
                        u64::try_from(history.max_age.as_millis())
                            .unwrap_or(u64::MAX)
                            .max(1),
                    )
                    .invoke_async(&mut connection)
                    .await
            }
        };
        result.map(drop).map_err(unavailable)
    }
}
