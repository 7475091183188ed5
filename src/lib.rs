#![doc = include_str!("../README.md")]
//!
//! # Crates
//!
//! | module | crate | feature |
//! |---|---|---|
//! | [`core`] (also re-exported at the root) | `sse-core` | always |
//! | [`hyper`] | `sse-hyper` | always |
//! | `redis` | `sse-fanout-redis` | `redis` |
//! | `nats` | `sse-fanout-nats` | `nats` |
//! | `rabbit` | `sse-fanout-rabbit` | `rabbit` |
//! | `kafka` | `sse-fanout-kafka` | `kafka` |

#[doc(inline)]
pub use sse_core::*;

/// The core crate: envelope, encoder, repository, backend trait, hub.
pub use sse_core as core;

/// The hyper 1.x endpoints and server.
pub use sse_hyper as hyper;

pub use sse_hyper::{DevSessions, JwtSessions, SessionResolver, SseRouter, serve};

/// Redis pub/sub backend (feature `redis`).
#[cfg(feature = "redis")]
pub use sse_fanout_redis as redis;

/// NATS core pub/sub backend (feature `nats`).
#[cfg(feature = "nats")]
pub use sse_fanout_nats as nats;

/// RabbitMQ fanout-exchange backend (feature `rabbit`).
#[cfg(feature = "rabbit")]
pub use sse_fanout_rabbit as rabbit;

/// Kafka backend (feature `kafka`).
#[cfg(feature = "kafka")]
pub use sse_fanout_kafka as kafka;

/// The backends this build offers by name (`--backend`): the local one always, each broker's
/// with its cargo feature. A new backend is one line here and one feature in `Cargo.toml`.
pub const BACKENDS: &[sse_core::connect::Connector] = &[
    sse_core::connect::LOCAL,
    #[cfg(feature = "redis")]
    sse_fanout_redis::CONNECTOR,
    #[cfg(feature = "nats")]
    sse_fanout_nats::CONNECTOR,
    #[cfg(feature = "rabbit")]
    sse_fanout_rabbit::CONNECTOR,
    #[cfg(feature = "kafka")]
    sse_fanout_kafka::CONNECTOR,
];
