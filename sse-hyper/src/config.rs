//! [`RouterConfig`]: where the endpoints live and how they guard themselves.

use sse_core::EventFilter;

use crate::cors::Cors;

/// Where the endpoints live and how they guard themselves.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct RouterConfig {
    /// The event-stream endpoint, default `/sse/event-stream`.
    pub stream_path: String,
    /// The publish endpoint, default `/sse/publish`.
    pub publish_path: String,
    /// The disconnect endpoint (see [`SseRouter::disconnect`](crate::SseRouter::disconnect)),
    /// default `/sse/disconnect`.
    pub disconnect_path: String,
    /// The presence endpoint (see [`SseRouter::presence`](crate::SseRouter::presence)), default
    /// `/sse/presence`; it answers `404` when the hub tracks no presence.
    pub presence_path: String,
    /// The health endpoint, default `/healthz`.
    pub health_path: String,
    /// Where Prometheus metrics are served; `None` (the default) serves none.
    pub metrics_path: Option<String>,
    /// Where the API's OpenAPI document ([`crate::openapi`]) is served; `None` (the default)
    /// serves none.
    pub openapi_path: Option<String>,
    /// Cross-origin access for browsers on other origins; `None` (the default) allows none.
    pub cors: Option<Cors>,
    /// When set, publishing needs `Authorization: Bearer <token>`.
    pub publish_token: Option<String>,
    /// When set, publishing needs a TLS client certificate that the publisher CA signed
    /// ([`TlsFiles::publish_client_ca`](crate::TlsFiles::publish_client_ca)); a request without
    /// one gets `401`. A publish token or JWT, when configured, is needed as well.
    pub publish_client_certificate: bool,
    /// The largest publish body accepted, default 1 MiB; larger ones get `413`.
    pub max_publish_body: usize,
    /// Bytes of publish bodies all connections together may hold while they are being read,
    /// default 64 MiB (at least `max_publish_body`): a body that finds no room within a second
    /// gets `503` with `Retry-After`. This, not a token, is what bounds the memory of
    /// connections that send part of a body and stop.
    pub publish_body_budget: usize,
    /// Event names one stream may ask for, default 64; more get `400`.
    pub max_event_names: usize,
    /// Bytes of one event name, default 256; longer ones get `400` (asked for by a stream or
    /// published).
    pub max_event_name_len: usize,
    /// Bytes of a publisher-chosen event id and of a session id in a publish, default 256;
    /// longer ones get `400`.
    pub max_id_len: usize,
    /// `Retry-After` seconds sent with `503` and `429` when a stream limit is reached.
    pub retry_after_secs: u32,
}

impl Default for RouterConfig {
    fn default() -> Self {
        RouterConfig {
            stream_path: "/sse/event-stream".to_owned(),
            publish_path: "/sse/publish".to_owned(),
            disconnect_path: "/sse/disconnect".to_owned(),
            presence_path: "/sse/presence".to_owned(),
            health_path: "/healthz".to_owned(),
            metrics_path: None,
            openapi_path: None,
            cors: None,
            publish_token: None,
            publish_client_certificate: false,
            max_publish_body: 1024 * 1024,
            publish_body_budget: 64 * 1024 * 1024,
            max_event_names: EventFilter::MAX_NAMES,
            max_event_name_len: EventFilter::MAX_NAME_LEN,
            max_id_len: 256,
            retry_after_secs: 5,
        }
    }
}
