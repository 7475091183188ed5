//! [`SseRouter`]: the event-stream, publish and health endpoints over one [`Hub`].

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use http::request::Parts;
use http::{HeaderValue, Method, Request, Response, StatusCode, Version, header};
use http_body::Body;
use http_body_util::BodyExt;
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::value::RawValue;
use sse_core::{BackendError, EventFilter, Hub, OpenError, PublishError, SendSseEvent};
use tokio_util::sync::CancellationToken;

use crate::body::SseBody;
use crate::error::{ApiError, json_response};
use crate::jwt::{EventGrant, JwtVerifier};
use crate::session::{AnonymousSessions, SessionResolver, bearer_token};

/// Where the endpoints live and how they guard themselves.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct RouterConfig {
    /// The event-stream endpoint, default `/sse/event-stream`.
    pub stream_path: String,
    /// The publish endpoint, default `/sse/publish`.
    pub publish_path: String,
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
    /// The largest publish body accepted, default 1 MiB; larger ones get `413`.
    pub max_publish_body: usize,
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
            health_path: "/healthz".to_owned(),
            metrics_path: None,
            openapi_path: None,
            cors: None,
            publish_token: None,
            max_publish_body: 1024 * 1024,
            max_event_names: EventFilter::MAX_NAMES,
            max_event_name_len: EventFilter::MAX_NAME_LEN,
            max_id_len: 256,
            retry_after_secs: 5,
        }
    }
}

/// Which other origins may open streams and publish (CORS), and whether with credentials
/// (`new EventSource(url, {withCredentials: true})`, cookies).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Cors {
    /// Allowed origins (`https://app.example.com`); `*` allows any but the opaque `null`
    /// origin (sandboxed frames, `file:` pages), which only an explicit `null` entry allows.
    pub allowed_origins: Vec<String>,
    /// Sends `Access-Control-Allow-Credentials: true` to the origins listed by name, never to
    /// one let in by `*` only: a `*` with credentials would let any site read a visitor's stream.
    pub allow_credentials: bool,
}

impl Cors {
    fn listed(&self, origin: &str) -> bool {
        self.allowed_origins.iter().any(|o| o == origin)
    }

    fn allows(&self, origin: &str) -> bool {
        self.listed(origin) || (origin != "null" && self.allowed_origins.iter().any(|o| o == "*"))
    }

    /// Whether `origin` gets `Access-Control-Allow-Credentials`.
    fn credentials_for(&self, origin: &str) -> bool {
        self.allow_credentials && self.listed(origin)
    }
}

/// Handed to each request by [`serve`](crate::serve) for HTTP/1 connections: cancelling it drops the
/// connection. A stream closed as too slow cancels it, since its body would otherwise wait for a
/// socket that no longer drains.
#[derive(Debug, Clone)]
pub struct ConnectionAbort(pub CancellationToken);

/// The HTTP face of a [`Hub`]: routes requests to the event-stream, publish and health endpoints
/// (and to static pages added with [`static_page`](Self::static_page)). Cheap to clone.
///
/// Works with raw hyper through [`serve`](crate::serve), and inside axum or any other framework
/// through [`handle`](Self::handle) or the single endpoints, which all return `http::Response`.
#[derive(Clone)]
pub struct SseRouter {
    inner: Arc<Inner>,
}

#[derive(Clone)]
struct Inner {
    counters: Arc<Counters>,
    hub: Hub,
    resolver: Arc<dyn SessionResolver>,
    config: RouterConfig,
    /// Publishing with a JWT whose claim names the event names it may publish.
    publish_jwt: Option<(JwtVerifier, String)>,
    /// The OpenAPI document, made when the configuration is set.
    openapi: Bytes,
    pages: Vec<StaticPage>,
}

#[derive(Debug, Default)]
struct Counters {
    publish_too_large: AtomicU64,
    bad_event_names: AtomicU64,
}

/// Requests the router refused for its own limits (the hub counts the rest).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
#[non_exhaustive]
pub struct RouterStats {
    /// Publish bodies over the size limit (`413`).
    pub publish_too_large: u64,
    /// Event-stream requests whose event names were missing, too many, too long or invalid (`400`).
    pub bad_event_names: u64,
}

#[derive(Clone)]
struct StaticPage {
    path: String,
    content_type: HeaderValue,
    body: Bytes,
}

impl fmt::Debug for SseRouter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SseRouter")
            .field("resolver", &self.inner.resolver)
            .field("config", &self.inner.config)
            .finish_non_exhaustive()
    }
}

impl SseRouter {
    /// Endpoints over `hub` with the default [`RouterConfig`] and anonymous sessions.
    pub fn new(hub: Hub) -> Self {
        SseRouter {
            inner: Arc::new(Inner {
                counters: Arc::default(),
                hub,
                resolver: Arc::new(AnonymousSessions),
                config: RouterConfig::default(),
                publish_jwt: None,
                openapi: Bytes::new(),
                pages: Vec::new(),
            }),
        }
    }

    fn inner_mut(&mut self) -> &mut Inner {
        Arc::make_mut(&mut self.inner)
    }

    /// Sets how sessions are found (see [`SessionResolver`]).
    pub fn resolver(mut self, resolver: impl SessionResolver) -> Self {
        self.inner_mut().resolver = Arc::new(resolver);
        self
    }

    /// Replaces the configuration. With a metrics path, installs the Prometheus recorder now, so
    /// that the publish latency histogram counts from the first event.
    pub fn config(mut self, config: RouterConfig) -> Self {
        if config.metrics_path.is_some() {
            crate::metrics::prometheus();
        }
        let inner = self.inner_mut();
        inner.openapi = match &config.openapi_path {
            Some(_) => Bytes::from(crate::openapi::document(&config)),
            None => Bytes::new(),
        };
        inner.config = config;
        self
    }

    /// Lets publishers authenticate with a JWT that `verifier` accepts, publishing only the event
    /// names its `claim` allows ([`EventGrant`]; others are `403`), as Mercure's publishers do. A
    /// configured [`RouterConfig::publish_token`] is still accepted, for every event name.
    pub fn publish_jwt(mut self, verifier: JwtVerifier, claim: impl Into<String>) -> Self {
        self.inner_mut().publish_jwt = Some((verifier, claim.into()));
        self
    }

    /// Serves a fixed body at `path` (for `GET` and `HEAD`), such as a demo page.
    pub fn static_page(
        mut self,
        path: impl Into<String>,
        content_type: &'static str,
        body: impl Into<Bytes>,
    ) -> Self {
        self.inner_mut().pages.push(StaticPage {
            path: path.into(),
            content_type: HeaderValue::from_static(content_type),
            body: body.into(),
        });
        self
    }

    /// What the router refused for its own limits.
    pub fn stats(&self) -> RouterStats {
        let c = &self.inner.counters;
        RouterStats {
            publish_too_large: c.publish_too_large.load(Ordering::Relaxed),
            bad_event_names: c.bad_event_names.load(Ordering::Relaxed),
        }
    }

    /// The hub behind the endpoints.
    pub fn hub(&self) -> &Hub {
        &self.inner.hub
    }

    /// The event-stream endpoint's path.
    pub(crate) fn stream_path(&self) -> &str {
        &self.inner.config.stream_path
    }

    /// Routes one request; unknown paths get a `404` JSON error.
    pub async fn handle<B>(&self, request: Request<B>) -> Response<SseBody>
    where
        B: Body<Data = Bytes>,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let path = request.uri().path();
        let config = &self.inner.config;
        let method = request.method().clone();
        let origin = request
            .headers()
            .get(header::ORIGIN)
            .filter(|o| {
                config
                    .cors
                    .as_ref()
                    .is_some_and(|c| c.allows(o.to_str().unwrap_or("")))
            })
            .cloned();
        let is_endpoint = path == config.stream_path || path == config.publish_path;
        if method == Method::OPTIONS && is_endpoint && origin.is_some() {
            let mut response = Response::new(SseBody::empty());
            *response.status_mut() = StatusCode::NO_CONTENT;
            let headers = response.headers_mut();
            headers.insert(
                header::ACCESS_CONTROL_ALLOW_METHODS,
                HeaderValue::from_static("GET, POST, OPTIONS"),
            );
            headers.insert(
                header::ACCESS_CONTROL_ALLOW_HEADERS,
                HeaderValue::from_static("content-type, authorization, last-event-id"),
            );
            headers.insert(
                header::ACCESS_CONTROL_MAX_AGE,
                HeaderValue::from_static("600"),
            );
            return self.with_cors(response, origin);
        }
        let result = if path == config.stream_path {
            match method {
                Method::GET => {
                    let (parts, _) = request.into_parts();
                    self.event_stream(&parts).await
                }
                _ => Err(ApiError::method_not_allowed("GET")),
            }
        } else if path == config.publish_path {
            match method {
                Method::POST => self.publish(request).await,
                _ => Err(ApiError::method_not_allowed("POST")),
            }
        } else if path == config.health_path {
            match method {
                Method::GET => Ok(self.health().await),
                _ => Err(ApiError::method_not_allowed("GET")),
            }
        } else if config.metrics_path.as_deref() == Some(path) {
            match method {
                Method::GET => self.metrics().await,
                _ => Err(ApiError::method_not_allowed("GET")),
            }
        } else if config.openapi_path.as_deref() == Some(path) {
            match method {
                Method::GET => {
                    let mut response = Response::new(SseBody::full(self.inner.openapi.clone()));
                    response.headers_mut().insert(
                        header::CONTENT_TYPE,
                        HeaderValue::from_static("application/json"),
                    );
                    Ok(response)
                }
                _ => Err(ApiError::method_not_allowed("GET")),
            }
        } else if let Some(page) = self.inner.pages.iter().find(|p| p.path == path) {
            match method {
                Method::GET | Method::HEAD => {
                    let mut response = Response::new(SseBody::full(page.body.clone()));
                    response
                        .headers_mut()
                        .insert(header::CONTENT_TYPE, page.content_type.clone());
                    Ok(response)
                }
                _ => Err(ApiError::method_not_allowed("GET, HEAD")),
            }
        } else {
            Err(ApiError::new(
                StatusCode::NOT_FOUND,
                "not_found",
                format!("no endpoint at {path}"),
            ))
        };
        let response = result.unwrap_or_else(ApiError::into_response);
        self.with_cors(response, origin)
    }

    /// Adds the CORS headers for an allowed `origin`.
    fn with_cors(
        &self,
        mut response: Response<SseBody>,
        origin: Option<HeaderValue>,
    ) -> Response<SseBody> {
        let (Some(origin), Some(cors)) = (origin, &self.inner.config.cors) else {
            return response;
        };
        let credentials = origin.to_str().is_ok_and(|o| cors.credentials_for(o));
        let headers = response.headers_mut();
        headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
        headers.append(header::VARY, HeaderValue::from_static("origin"));
        if credentials {
            headers.insert(
                header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
                HeaderValue::from_static("true"),
            );
        }
        response
    }

    /// `GET` event stream: `?eventName=a,b` (or `*`), session from the resolver. Answers `200
    /// text/event-stream` at once and keeps streaming until the client leaves, the emitter timeout,
    /// or shutdown. A `Last-Event-ID` header (sent by browsers when they reconnect) or a
    /// `lastEventId` query parameter replays what the client missed first. `503` when the
    /// instance is at its stream limit, `429` when the session is; both with `Retry-After`.
    pub async fn event_stream(&self, request: &Parts) -> Result<Response<SseBody>, ApiError> {
        let config = &self.inner.config;
        let events = event_filter(request, config).inspect_err(|_| {
            self.inner
                .counters
                .bad_event_names
                .fetch_add(1, Ordering::Relaxed);
        })?;
        let identity = self.inner.resolver.identify(request).await?;
        if let Some(grant) = &identity.events {
            allowed(&events, grant)?;
        }
        let session = identity.session;
        let last_event_id = last_event_id(request);
        let hub = &self.inner.hub;
        let mut subscription = hub.subscription(session.map(Arc::from), events);
        let connection = request.extensions.get::<ConnectionAbort>();
        // HTTP/2: see `release_unread_stream`.
        let mut unread_watch = None;
        if request.version < Version::HTTP_2 {
            subscription.abort_on_overflow = connection.map(|abort| abort.0.clone());
        } else if let Some(connection) = connection {
            let overflow = CancellationToken::new();
            subscription.abort_on_overflow = Some(overflow.clone());
            unread_watch = Some((overflow, connection.0.clone()));
        }
        let stream = hub
            .open_after(subscription, last_event_id.as_deref())
            .await
            .map_err(|error| {
                match error {
                    OpenError::TooManyForSession { .. } => ApiError::new(
                        StatusCode::TOO_MANY_REQUESTS,
                        "too_many_streams",
                        error.to_string(),
                    ),
                    OpenError::RouteUnavailable(_) => ApiError::new(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "route_unavailable",
                        error.to_string(),
                    ),
                    OpenError::HistoryUnavailable(_) => ApiError::new(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "history_unavailable",
                        error.to_string(),
                    ),
                    _ => ApiError::new(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "too_many_streams",
                        error.to_string(),
                    ),
                }
                .retry_after(config.retry_after_secs)
            })?;
        let mut body = SseBody::stream(stream);
        if let Some((overflow, connection)) = unread_watch {
            let released = CancellationToken::new();
            body.on_drop(released.clone().drop_guard());
            tokio::spawn(release_unread_stream(overflow, released, connection));
        }
        let mut response = Response::new(body);
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/event-stream"),
        );
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
        headers.insert("x-accel-buffering", HeaderValue::from_static("no"));
        Ok(response)
    }

    /// `POST` publish: the JSON body `{"eventName", "sessionId"?, "payload", "id"?}`; answers `202
    /// {"id": ...}` once the backend holds the event.
    pub async fn publish<B>(&self, request: Request<B>) -> Result<Response<SseBody>, ApiError>
    where
        B: Body<Data = Bytes>,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let config = &self.inner.config;
        let grant = self.publish_grant(request.headers()).await?;
        // A JSON content type is required: a body without one (or `text/plain`, a form) is what
        // any web page can send cross-origin without a preflight (CSRF).
        if !is_json(request.headers().get(header::CONTENT_TYPE)) {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "the body must be sent as Content-Type: application/json",
            ));
        }
        let too_large = || {
            self.inner
                .counters
                .publish_too_large
                .fetch_add(1, Ordering::Relaxed);
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                format!("the body is larger than {} bytes", config.max_publish_body),
            )
        };
        let declared = request
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
        if declared.is_some_and(|len| len > DRAIN_AT_MOST as u64) {
            // Too large to read on: answered at once, and the connection closes.
            return Err(too_large());
        }
        let body = match read_body(request.into_body(), config.max_publish_body).await {
            Ok(body) => body,
            Err(BodyError::TooLarge) => return Err(too_large()),
            Err(BodyError::Failed(error)) => {
                return Err(ApiError::bad_request(format!(
                    "could not read the body: {error}"
                )));
            }
        };
        let event = parse_publish_body(&body)?;
        if let Some(grant) = grant
            && !grant.allows(&event.event_name)
        {
            return Err(ApiError::forbidden(format!(
                "the token does not allow publishing {:?}",
                event.event_name
            )));
        }
        let too_long = |what: &str, len: usize, max: usize| {
            ApiError::bad_request(format!(
                "{what} is {len} bytes long; at most {max} are allowed"
            ))
        };
        if event.event_name.len() > config.max_event_name_len {
            let len = event.event_name.len();
            return Err(too_long("eventName", len, config.max_event_name_len));
        }
        for (what, value) in [("id", &event.id), ("sessionId", &event.session_id)] {
            if let Some(len) = value
                .as_ref()
                .map(String::len)
                .filter(|&l| l > config.max_id_len)
            {
                return Err(too_long(what, len, config.max_id_len));
            }
        }
        match self.inner.hub.publish(event).await {
            Ok(id) => {
                #[derive(Serialize)]
                struct Accepted {
                    id: String,
                }
                Ok(json_response(
                    StatusCode::ACCEPTED,
                    &Accepted { id: id.into() },
                ))
            }
            Err(PublishError::Invalid(error)) => Err(ApiError::bad_request(error.to_string())),
            Err(error @ PublishError::DuplicateId(_)) => Err(ApiError::new(
                StatusCode::CONFLICT,
                "duplicate_id",
                error.to_string(),
            )),
            Err(PublishError::Backend(error @ BackendError::TooLarge { .. })) => {
                Err(ApiError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "payload_too_large",
                    error.to_string(),
                ))
            }
            Err(error) => Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "backend_unavailable",
                error.to_string(),
            )),
        }
    }

    /// Who may publish: `Ok(None)` for any event name (no credentials configured, or the publish
    /// token), `Ok(Some(grant))` for a JWT's grant, or `401`.
    async fn publish_grant(
        &self,
        headers: &http::HeaderMap,
    ) -> Result<Option<EventGrant>, ApiError> {
        let config = &self.inner.config;
        if config.publish_token.is_none() && self.inner.publish_jwt.is_none() {
            return Ok(None);
        }
        let token = match bearer_token(headers) {
            Some(Ok(token)) => token,
            Some(Err(error)) => return Err(error),
            None => return Err(ApiError::unauthorized("a publish token is required")),
        };
        if let Some(expected) = &config.publish_token
            && constant_time_eq(token.as_bytes(), expected.as_bytes())
        {
            return Ok(None);
        }
        match &self.inner.publish_jwt {
            Some((verifier, claim)) => {
                let claims = verifier.verify(token).await?;
                Ok(Some(EventGrant::from_claim(&claims, claim)))
            }
            None => Err(ApiError::unauthorized("a valid publish token is required")),
        }
    }

    /// `GET` metrics: the Prometheus text of the hub and this router.
    pub async fn metrics(&self) -> Result<Response<SseBody>, ApiError> {
        let text = crate::metrics::render(&self.inner.hub, self.stats())
            .await
            .ok_or_else(|| {
                ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "metrics_unavailable",
                    "another metrics recorder is installed in this process",
                )
            })?;
        let mut response = Response::new(SseBody::full(text));
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4"),
        );
        Ok(response)
    }

    /// `GET` health: `200 {"status":"ok",...}` or `503 {"status":"down",...}`.
    pub async fn health(&self) -> Response<SseBody> {
        #[derive(Serialize)]
        struct HealthBody<'a> {
            status: &'static str,
            backend: &'static str,
            instance: &'a str,
            app: &'a str,
            streams: usize,
            #[serde(skip_serializing_if = "Option::is_none")]
            detail: Option<String>,
        }
        let hub = &self.inner.hub;
        let health = hub.health().await;
        let body = HealthBody {
            status: if health.up { "ok" } else { "down" },
            backend: hub.backend_name(),
            instance: &hub.config().instance_id,
            app: &hub.config().app_name,
            streams: hub.open_streams(),
            detail: health.detail,
        };
        let status = if health.up {
            StatusCode::OK
        } else {
            StatusCode::SERVICE_UNAVAILABLE
        };
        json_response(status, &body)
    }
}

fn event_filter(request: &Parts, config: &RouterConfig) -> Result<EventFilter, ApiError> {
    parse_event_names(request.uri.query().unwrap_or(""), config)
}

/// The event names of a query string's `eventName=a,b` (repeated parameters add up), within the
/// limits of `config`; `400` when there is none or one is invalid.
pub fn parse_event_names(query: &str, config: &RouterConfig) -> Result<EventFilter, ApiError> {
    let values: Vec<String> = form_urlencoded::parse(query.as_bytes())
        .filter(|(k, _)| k == "eventName")
        .map(|(_, v)| v.into_owned())
        .collect();
    EventFilter::from_names_limited(
        values.iter().flat_map(|v| v.split(',')),
        config.max_event_names,
        config.max_event_name_len,
    )
    .map_err(|e| ApiError::bad_request(format!("eventName: {e}")))
}

/// How long an HTTP/2 stream closed as slow may stay unread before its connection is dropped.
pub(crate) const UNREAD_STREAM_GRACE: std::time::Duration = std::time::Duration::from_secs(10);

/// An HTTP/2 stream closed as slow: its queue is let go at once, but hyper polls its body (and
/// so ends it) only once the client opens its flow-control window, and gives no handle to reset
/// one stream. If the body is still held [`UNREAD_STREAM_GRACE`] later, the connection is
/// dropped: every stream on it ends, and their clients come back with `Last-Event-ID`.
async fn release_unread_stream(
    overflow: CancellationToken,
    released: CancellationToken,
    connection: CancellationToken,
) {
    tokio::select! {
        () = released.cancelled() => return,
        () = overflow.cancelled() => {}
    }
    tokio::select! {
        () = released.cancelled() => {}
        () = tokio::time::sleep(UNREAD_STREAM_GRACE) => {
            tracing::debug!("an HTTP/2 stream closed as slow is still unread: dropping its connection");
            connection.cancel();
        }
    }
}

/// `403` unless `grant` allows every event name of `events` (`*` needs a grant of `*`).
fn allowed(events: &EventFilter, grant: &EventGrant) -> Result<(), ApiError> {
    let refused = match events {
        EventFilter::Any => (!grant.allows_all()).then(|| "*".to_owned()),
        EventFilter::Names(names) => names
            .iter()
            .find(|n| !grant.allows(n))
            .map(|n| n.to_string()),
    };
    match refused {
        Some(name) => Err(ApiError::forbidden(format!(
            "the token does not allow the event name {name:?}"
        ))),
        None => Ok(()),
    }
}

/// Where a reconnecting client left off: the `Last-Event-ID` header, else `?lastEventId=`.
fn last_event_id(request: &Parts) -> Option<String> {
    request
        .headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
        .or_else(|| crate::session::query_param(request, "lastEventId"))
        .filter(|id| !id.is_empty())
}

/// The publish body. Unknown fields are refused: a misspelt `sessionId` must not turn a targeted
/// event into a broadcast.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct PublishBody {
    event_name: Option<String>,
    /// `Some(None)` when the body says `"sessionId": null`.
    #[serde(default, deserialize_with = "present_session")]
    session_id: Option<Option<String>>,
    /// Kept as the JSON text it was posted as (see [`sse_core::Payload`]).
    #[serde(default, deserialize_with = "present")]
    payload: Option<Box<RawValue>>,
    id: Option<String>,
}

/// `Some` whenever the field is present, `Some(None)` when it is `null`.
fn present_session<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Option<String>>, D::Error> {
    Option::<String>::deserialize(d).map(Some)
}

/// `Some` whenever the field is present, even as `null`.
fn present<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Box<RawValue>>, D::Error> {
    Box::<RawValue>::deserialize(d).map(Some)
}

/// Reads a publish body, `{"eventName", "sessionId"?, "payload", "id"?}`; `400` for anything else.
/// (Event names and ids are checked for CR, LF and NUL when the event is published.)
pub fn parse_publish_body(body: &[u8]) -> Result<SendSseEvent, ApiError> {
    let body: PublishBody = serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("invalid JSON body: {e}")))?;
    let event_name = body
        .event_name
        .ok_or_else(|| ApiError::bad_request("eventName is required"))?;
    let payload = body
        .payload
        .ok_or_else(|| ApiError::bad_request("payload is required (it may be null)"))?;
    // A broadcast leaves `sessionId` out. An explicit `null` is most often a variable that was
    // meant to hold a session: refused rather than sent to everyone.
    let session_id = match body.session_id {
        None => None,
        Some(Some(session)) => Some(session),
        Some(None) => {
            return Err(ApiError::bad_request(
                "sessionId is null: leave it out to broadcast to every session",
            ));
        }
    };
    let mut event = SendSseEvent::with_json(event_name, payload);
    event.session_id = session_id;
    event.id = body.id;
    Ok(event)
}

/// A body over the limit is still read (and dropped) up to this many bytes, for at most
/// [`DRAIN_FOR`], before the `413` goes out: a client that sends its whole body before reading
/// (no `Expect: 100-continue`) then reads the answer instead of a reset connection.
const DRAIN_AT_MOST: usize = 16 * 1024 * 1024;
const DRAIN_FOR: std::time::Duration = std::time::Duration::from_secs(5);

enum BodyError {
    TooLarge,
    Failed(String),
}

/// Reads a body of at most `max` bytes; a larger one is drained (see [`DRAIN_AT_MOST`]) and
/// reported as too large.
async fn read_body<B>(body: B, max: usize) -> Result<Bytes, BodyError>
where
    B: Body<Data = Bytes>,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let mut body = std::pin::pin!(body);
    let mut collected = bytes::BytesMut::new();
    let mut seen = 0usize;
    let read = async {
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| BodyError::Failed(e.into().to_string()))?;
            let Ok(data) = frame.into_data() else {
                continue; // trailers
            };
            seen = seen.saturating_add(data.len());
            if seen <= max {
                collected.extend_from_slice(&data);
            } else if seen > DRAIN_AT_MOST {
                break;
            }
        }
        Ok(())
    };
    match tokio::time::timeout(DRAIN_FOR, read).await {
        Ok(Ok(())) if seen <= max => Ok(collected.freeze()),
        Ok(Ok(())) => Err(BodyError::TooLarge),
        Ok(Err(error)) => Err(error),
        Err(_) if seen > max => Err(BodyError::TooLarge),
        Err(_) => Err(BodyError::Failed(
            "the body did not arrive in time".to_owned(),
        )),
    }
}

/// Whether a `Content-Type` is `application/json` (parameters such as `charset` allowed).
fn is_json(content_type: Option<&HeaderValue>) -> bool {
    content_type
        .and_then(|ct| ct.to_str().ok())
        .and_then(|ct| ct.split(';').next())
        .is_some_and(|media| media.trim().eq_ignore_ascii_case("application/json"))
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use serde_json::Value;

    #[test]
    fn only_json_content_types_publish() {
        let ct = |v: &'static str| Some(HeaderValue::from_static(v));
        for good in [
            "application/json",
            "Application/JSON; charset=utf-8",
            " application/json ",
        ] {
            assert!(is_json(ct(good).as_ref()), "{good}");
        }
        for bad in [
            "application/jsonp-evil",
            "text/plain",
            "application/x-www-form-urlencoded",
            "",
        ] {
            assert!(!is_json(ct(bad).as_ref()), "{bad}");
        }
        assert!(!is_json(None));
    }

    #[test]
    fn publish_body_parsing() {
        let e =
            parse_publish_body(br#"{"eventName":"e","sessionId":"s","payload":{"a":1},"id":"x"}"#)
                .unwrap();
        assert_eq!(e.event_name, "e");
        assert_eq!(e.session_id.as_deref(), Some("s"));
        assert_eq!(e.id.as_deref(), Some("x"));
        assert_eq!(
            parse_publish_body(br#"{"eventName":"e","payload":null}"#)
                .unwrap()
                .payload,
            Value::Null
        );
        assert_eq!(
            parse_publish_body(br#"{"eventName":"e","payload":{"z":1, "a":1.50}}"#)
                .unwrap()
                .payload
                .get(),
            r#"{"z":1, "a":1.50}"#,
            "the payload as posted"
        );
        for bad in [
            &br#"{"payload":1}"#[..],
            br#"{"eventName":"e"}"#,
            br#"{"eventName":"e","payload":1,"sessionID":"typo"}"#,
            br#"{"eventName":5,"payload":1}"#,
            br#"{"eventName":"e","payload":1,"sessionId":null}"#,
            b"[]",
            b"",
            b"{",
        ] {
            assert!(
                parse_publish_body(bad).is_err(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn token_comparison() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
    }
}
