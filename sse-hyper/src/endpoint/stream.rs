//! `GET` event stream: the stream of a session's (or everyone's) events, resumed after
//! `Last-Event-ID`.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use http::request::Parts;
use http::{HeaderValue, Response, StatusCode, header};
use sse_core::{EventFilter, OpenError};

use crate::body::SseBody;
use crate::config::RouterConfig;
use crate::cors::Cors;
use crate::error::ApiError;
use crate::jwt::EventGrant;
use crate::router::SseRouter;
use crate::transport::SlowStream;

impl SseRouter {
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
        // A cross-site request's cookies name no session unless CORS lets that origin send
        // credentials: a page elsewhere cannot open a visitor's stream with the visitor's
        // cookie (which an auth callout or the development cookie would take).
        let without_cookies;
        let request = if Cors::cookies_refused(config.cors.as_ref(), request) {
            let mut parts = request.clone();
            parts.headers.remove(http::header::COOKIE);
            without_cookies = parts;
            &without_cookies
        } else {
            request
        };
        let identity = self.inner.resolver.identify(request).await?;
        if let Some(grant) = &identity.events {
            allowed(&events, grant)?;
        }
        let session = identity.session;
        let last_event_id = last_event_id(request);
        let hub = &self.inner.hub;
        let mut subscription = hub.subscription(session.map(Arc::from), events);
        subscription.lifetime = identity.expires.map(|at| {
            at.duration_since(std::time::SystemTime::now())
                .unwrap_or_default()
        });
        let slow = SlowStream::arm(request, &mut subscription);
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
        slow.watch(&mut body);
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
