//! Routed delivery: targeted events go only to the instances that hold a stream of their session.
//!
//! In the default [`Routing::Broadcast`] mode every instance receives every envelope and keeps
//! the ones for its own streams (the seeds' design): simple, but each instance decodes every
//! targeted event of the cluster, so adding instances adds connection capacity and no event
//! capacity. In [`Routing::Session`] mode the hub publishes a targeted event to its session's
//! **route**, and an instance receives a route only while it holds a stream of that session:
//!
//! - the first stream of a session on an instance subscribes the route before the stream opens
//!   (so an event published the moment the client is connected is delivered);
//! - the last one leaving unsubscribes it after a short linger, so a client that reconnects at
//!   once does not churn the broker;
//! - broadcasts (and envelopes other programs publish to the backend's broadcast channel) still
//!   reach every instance.
//!
//! A backend offers routes through [`FanoutBackend::routes`](crate::FanoutBackend::routes) with
//! the [`SessionRoutes`] capability; the default, `None`, means broadcast only, and a hub asked
//! to route on such a backend refuses to start. Routed envelopes arrive on the backend's one
//! [`subscribe`](crate::FanoutBackend::subscribe) stream, beside the broadcasts.
//!
//! An instance's replay log then holds a session's events only while it held the session's
//! route, so a `Last-Event-ID` resume is served from the broker's history whenever the log may
//! have a gap (the crate-private `route::resume` module says how).
//!
//! Session ids are chosen by clients or an identity provider, so they never reach a broker's
//! names as they are: [`route_token`] keeps short, plain ids readable and hashes every other one,
//! and [`partition`] hashes an id into a fixed number of partitions for brokers where one route
//! per session costs too much.

use std::borrow::Cow;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use sha2::{Digest, Sha256};

use crate::error::BackendError;

pub(crate) mod cursor;
pub(crate) mod resume;
mod table;
pub(crate) use table::{RouteLease, RouteTable};

/// How targeted events travel between instances.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Routing {
    /// Every instance receives every envelope and filters (the default; works on every backend).
    #[default]
    Broadcast,
    /// A targeted event goes only to instances holding a stream of its session (see the
    /// [module docs](self)); needs a backend with [`SessionRoutes`].
    Session {
        /// How long a route stays subscribed after its session's last stream on this instance
        /// closed, so that a reconnecting client does not unsubscribe and subscribe again.
        linger: Duration,
    },
}

impl Routing {
    /// Session routing with the default linger of 5 s.
    pub const fn session() -> Self {
        Routing::Session {
            linger: Duration::from_secs(5),
        }
    }
}

/// A backend's routed-delivery capability (see the [module docs](self)).
///
/// The hub calls [`subscribe`](Self::subscribe) and [`unsubscribe`](Self::unsubscribe) from one
/// task, one batch at a time, never both for one session at once, and only for sessions whose
/// state changed: the backend need not count references. What a route receives goes out on the
/// stream [`subscribe`](crate::FanoutBackend::subscribe) returned; after a broker reconnect the
/// backend subscribes every route it holds again by itself.
#[async_trait]
pub trait SessionRoutes: Send + Sync {
    /// Publishes an envelope for `session` to that session's route (and to the history, when the
    /// backend keeps one). `Ok` means the broker holds it, as for
    /// [`publish`](crate::FanoutBackend::publish).
    async fn publish_to(&self, session: &str, envelope: Bytes) -> Result<(), BackendError>;

    /// Starts receiving the routes of `sessions`. Returns once anything published to them from
    /// now on is received; while the broker is unreachable it may return `Ok` after recording
    /// them, to be subscribed when the connection is back (and caught up from the history).
    async fn subscribe(&self, sessions: &[&str]) -> Result<(), BackendError>;

    /// Stops receiving the routes of `sessions`.
    async fn unsubscribe(&self, sessions: &[&str]) -> Result<(), BackendError>;

    /// Routes this backend is subscribed to now (sessions, or partitions for a partitioned
    /// backend), for metrics and leak checks.
    fn subscribed(&self) -> usize;

    /// Whether a route carries its own session's envelopes only. A backend that hashes sessions
    /// into partitions answers `false`: an instance receives the other sessions of its
    /// partitions too, and the hub keeps only its own.
    fn exact(&self) -> bool {
        true
    }
}

/// The longest session id [`route_token`] keeps readable.
pub const READABLE_MAX: usize = 64;

/// A session id as one token of a broker name: `s-` and the id itself when it is at most
/// [`READABLE_MAX`] ASCII letters, digits, `_` and `-`; otherwise `h-` and the first 32 hex
/// digits of its SHA-256. No session id can produce a separator, a wildcard or a long name, and
/// the two forms cannot collide.
///
/// ```
/// use sse_core::route::route_token;
///
/// assert_eq!(route_token("user-42"), "s-user-42");
/// assert!(route_token("a.b.>").starts_with("h-"));
/// assert_eq!(route_token(&"x".repeat(1000)).len(), 34);
/// ```
pub fn route_token(session: &str) -> Cow<'static, str> {
    let plain = !session.is_empty()
        && session.len() <= READABLE_MAX
        && session
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if plain {
        Cow::Owned(format!("s-{session}"))
    } else {
        let digest = Sha256::digest(session.as_bytes());
        let mut token = String::with_capacity(34);
        token.push_str("h-");
        for byte in &digest[..16] {
            token.push_str(&format!("{byte:02x}"));
        }
        Cow::Owned(token)
    }
}

/// The partition, among `partitions`, of a session id: the first eight bytes of its SHA-256 as
/// a big-endian integer, modulo `partitions`. Stable across processes, versions and languages.
///
/// ```
/// use sse_core::route::partition;
///
/// assert!(partition("user-42", 1024) < 1024);
/// assert_eq!(partition("user-42", 1024), partition("user-42", 1024));
/// ```
pub fn partition(session: &str, partitions: u32) -> u32 {
    let digest = Sha256::digest(session.as_bytes());
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    (u64::from_be_bytes(first) % u64::from(partitions.max(1))) as u32
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn tokens_never_carry_separators_wildcards_or_length() {
        for id in [
            "a.b", "*", ">", "a b", "x\ny", "{tag}", "ü", "", "s-x", "h-x", "#", "a/b",
        ] {
            let token = route_token(id);
            assert!(
                token
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-'),
                "{id:?} -> {token}"
            );
            assert!(token.len() <= READABLE_MAX + 2);
        }
        assert_eq!(route_token("ok_1-2"), "s-ok_1-2");
        assert_ne!(route_token("a.b"), route_token("a:b"));
        assert_eq!(route_token(&"y".repeat(65)).len(), 34);
        assert_eq!(route_token(&"y".repeat(64)).len(), 66);
    }

    #[test]
    fn partitions_spread_evenly() {
        let mut counts = [0u32; 16];
        for i in 0..16_000 {
            counts[partition(&format!("session-{i}"), 16) as usize] += 1;
        }
        assert!(
            counts.iter().all(|&c| (800..1200).contains(&c)),
            "{counts:?}"
        );
    }
}
