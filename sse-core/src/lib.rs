//! The core of sse-fanout: everything that does not depend on an HTTP server or a broker.
//!
//! - [`SendSseEvent`]: what business code publishes ("send event X to session S", or to everyone).
//! - [`envelope`]: the versioned JSON document that carries an event between instances.
//! - [`encode`]: the spec-exact SSE encoder; one event is encoded once into shared [`bytes::Bytes`].
//! - [`EmitterRepository`] and [`InMemoryEmitterRepository`]: the open streams of one instance.
//! - [`FanoutBackend`] and [`LocalBackend`]: how envelopes travel between instances.
//! - [`history`]: the optional history a backend keeps in its broker, so `Last-Event-ID` works on
//!   any instance, including one started after the event went by.
//! - [`route`]: routed delivery, where a targeted event reaches only the instances holding its
//!   session, so event capacity grows with instances.
//! - [`presence`]: who is online, cluster-wide, and online/offline events once per transition.
//! - [`Hub`]: ties them together; the one handle business code keeps.
//!
//! # Testkit
//!
//! With the `testkit` feature, [`testkit`] holds the conformance suite every backend runs: call
//! `sse_core::testkit::run_all` from a test with a factory for your backend.

pub mod backend;
mod catch_up;
pub mod connect;
pub mod disconnect;
pub mod encode;
pub mod envelope;
pub mod error;
pub mod event;
pub mod history;
mod hub;
mod local;
mod memory;
pub mod presence;
pub mod probe;
pub mod replay;
pub mod repository;
pub mod route;
mod stats;
mod stream;
#[cfg(feature = "testkit")]
pub mod testkit;

pub use backend::{BackendStream, FanoutBackend, Health, Received};
pub use disconnect::Disconnect;
pub use envelope::{Envelope, EnvelopeError, EnvelopeKind, EnvelopeRef};
pub use error::{BackendError, BoxError};
pub use event::{EventId, Payload, SendSseEvent};
pub use history::{BrokerHistory, HistoryStream};
pub use hub::{AcceptApps, Hub, HubBuilder, HubConfig, OpenError, PublishError};
pub use local::LocalBackend;
pub use memory::InMemoryEmitterRepository;
pub use probe::ProbeConfig;
pub use replay::{RESET_EVENT, ReplayConfig};
pub use repository::{
    CloseReason, DeliveryReport, Emitter, EmitterRepository, EventFilter, Subscription, Target,
};
pub use route::{Routing, SessionRoutes};
pub use stats::{LatencySnapshot, PUBLISH_LATENCY_BUCKETS, StatsSnapshot};
pub use stream::EventStream;
