//! sse-fanout's HTTP layer on raw hyper 1.x: the event-stream endpoint, the publish and health
//! endpoints, session resolvers, and [`serve`] with a graceful shutdown.
//!
//! | endpoint | answer |
//! |---|---|
//! | `GET /sse/event-stream?eventName=a,b` | `200 text/event-stream`, open until the client leaves |
//! | `POST /sse/publish` `{"eventName","sessionId"?,"payload","id"?}` | `202 {"id": ...}` |
//! | `GET /healthz` | `200 {"status":"ok",...}` or `503 {"status":"down",...}` |
//! | `GET /openapi.json` (when [`RouterConfig::openapi_path`] is set) | this API as OpenAPI 3.0 ([`openapi`]) |
//!
//! Every endpoint returns `http::Response<SseBody>`, so they mount in axum too.

mod body;
mod budget;
pub mod callout;
mod config;
mod cors;
mod direct;
mod endpoint;
mod error;
mod idle;
pub mod jwt;
pub mod metrics;
pub mod openapi;
mod overload;
mod router;
mod serve;
pub mod session;
mod stats;
pub mod tls;
mod transport;

pub use body::SseBody;
pub use callout::{CalloutConfig, CalloutSessions, CalloutStats};
pub use config::RouterConfig;
pub use cors::Cors;
pub use endpoint::{parse_event_names, parse_publish_body};
pub use error::ApiError;
pub use jwt::{EventGrant, JwtKeys, JwtVerifier};
pub use router::SseRouter;
pub use serve::{DEFAULT_MAX_HEAD_BYTES, ServeOptions, serve, serve_with};
pub use session::{AnonymousSessions, DevSessions, Identity, JwtSessions, SessionResolver};
pub use stats::{RouterStats, TlsHandshakeFailures};
pub use tls::{ClientCertificate, Tls, TlsError, TlsFiles};
pub use transport::ConnectionAbort;

/// Internals reached by the fuzz targets and property tests; not part of the API.
#[doc(hidden)]
pub mod __fuzz {
    pub use crate::direct::parse_head;
}
