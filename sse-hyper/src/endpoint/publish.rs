//! `POST` publish: an event as JSON, answered `202 {"id"}` once the backend holds it.

use std::sync::atomic::Ordering;

use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode, Version, header};
use http_body::Body;
use http_body_util::BodyExt;
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::value::RawValue;
use sse_core::{BackendError, Disconnect, Payload, PublishError, SendSseEvent};

use crate::body::SseBody;
use crate::budget::{BodyBudget, Held};
use crate::error::{ApiError, json_response};
use crate::jwt::EventGrant;
use crate::router::SseRouter;
use crate::session::bearer_token;

impl SseRouter {
    /// `POST` publish: the JSON body `{"eventName", "sessionId"?, "payload", "id"?}`; answers `202
    /// {"id": ...}` once the backend holds the event.
    ///
    /// A request refused before its body was read (no credentials, wrong content type, too
    /// large, no room in the [body budget](crate::RouterConfig::publish_body_budget)) is
    /// answered with `Connection: close` on HTTP/1: the unread body cannot be told from the next
    /// request, so the connection always ends (never in some cases only, as a race would decide).
    pub async fn publish<B>(&self, request: Request<B>) -> Result<Response<SseBody>, ApiError>
    where
        B: Body<Data = Bytes>,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        self.posted(request, Posted::Event).await
    }

    /// `POST` disconnect: the JSON body `{"sessionId", "eventName"?, "payload"?}` ends every
    /// stream of the session on every instance, each after the goodbye event when `eventName`
    /// is given (see [`sse_core::disconnect`]); answers `202 {"id": ...}` once the backend holds
    /// the disconnect. Guarded as publishing is, and a publish JWT must grant every event name
    /// (`*`): ending any session's streams is not a right of a publisher of some events.
    pub async fn disconnect<B>(&self, request: Request<B>) -> Result<Response<SseBody>, ApiError>
    where
        B: Body<Data = Bytes>,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        self.posted(request, Posted::Disconnect).await
    }

    /// A publisher's `POST`: guarded, read within the limits and the body budget, then
    /// published or disconnected.
    async fn posted<B>(
        &self,
        request: Request<B>,
        what: Posted,
    ) -> Result<Response<SseBody>, ApiError>
    where
        B: Body<Data = Bytes>,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let closes = request.version() < Version::HTTP_2 && carries_body(request.headers());
        match self.read_posted(request, what).await {
            Err(Refused::Unread(error)) if closes => Ok(closing(error.into_response())),
            Err(Refused::Unread(error) | Refused::Read(error)) => Err(error),
            Ok(response) => Ok(response),
        }
    }

    async fn read_posted<B>(
        &self,
        request: Request<B>,
        what: Posted,
    ) -> Result<Response<SseBody>, Refused>
    where
        B: Body<Data = Bytes>,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let config = &self.inner.config;
        if config.publish_client_certificate
            && request
                .extensions()
                .get::<crate::tls::ClientCertificate>()
                .is_none()
        {
            return Err(Refused::Unread(ApiError::unauthorized(
                "publishing needs a TLS client certificate signed by the publisher CA",
            )));
        }
        let grant = self
            .publish_grant(request.headers())
            .await
            .map_err(Refused::Unread)?;
        // A JSON content type is required: a body without one (or `text/plain`, a form) is what
        // any web page can send cross-origin without a preflight (CSRF).
        if !is_json(request.headers().get(header::CONTENT_TYPE)) {
            return Err(Refused::Unread(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "the body must be sent as Content-Type: application/json",
            )));
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
            return Err(Refused::Unread(too_large()));
        }
        let budget = &self.inner.body_budget;
        let limits = BodyLimits {
            max: config.max_publish_body,
            declared: declared.and_then(|len| usize::try_from(len).ok()),
            budget,
        };
        let body = match read_body(request.into_body(), limits).await {
            Ok(body) => body,
            Err(BodyError::TooLarge) => return Err(Refused::Read(too_large())),
            Err(BodyError::OverBudget) => {
                self.inner
                    .counters
                    .publish_over_budget
                    .fetch_add(1, Ordering::Relaxed);
                return Err(Refused::Unread(
                    ApiError::new(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "busy",
                        "too many publish bodies are being received right now; try again",
                    )
                    .retry_after(config.retry_after_secs),
                ));
            }
            Err(BodyError::Failed(error)) => {
                return Err(Refused::Read(ApiError::bad_request(format!(
                    "could not read the body: {error}"
                ))));
            }
        };
        match what {
            Posted::Event => self.publish_body(&body.bytes, grant).await,
            Posted::Disconnect => self.disconnect_body(&body.bytes, grant).await,
        }
        .map_err(Refused::Read)
    }

    /// Disconnects as a body that was read whole asks.
    async fn disconnect_body(
        &self,
        body: &[u8],
        grant: Option<EventGrant>,
    ) -> Result<Response<SseBody>, ApiError> {
        if grant.is_some_and(|grant| !grant.allows_all()) {
            return Err(ApiError::forbidden(
                "disconnecting a session needs the publish token, or a grant of every event \
                 name (*)",
            ));
        }
        let config = &self.inner.config;
        let disconnect = parse_disconnect_body(body)?;
        if disconnect.session_id.len() > config.max_id_len {
            return Err(ApiError::bad_request(format!(
                "sessionId is {} bytes long; at most {} are allowed",
                disconnect.session_id.len(),
                config.max_id_len
            )));
        }
        if let Some((name, _)) = &disconnect.goodbye
            && name.len() > config.max_event_name_len
        {
            return Err(ApiError::bad_request(format!(
                "eventName is {} bytes long; at most {} are allowed",
                name.len(),
                config.max_event_name_len
            )));
        }
        published(self.inner.hub.disconnect(disconnect).await)
    }

    /// Publishes a body that was read whole.
    async fn publish_body(
        &self,
        body: &[u8],
        grant: Option<EventGrant>,
    ) -> Result<Response<SseBody>, ApiError> {
        let config = &self.inner.config;
        let event = parse_publish_body(body)?;
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
        published(self.inner.hub.publish(event).await)
    }

    /// Who may publish: `Ok(None)` for any event name (no credentials configured, or the publish
    /// token), `Ok(Some(grant))` for a JWT's grant or the application's answer, or the refusal.
    pub(crate) async fn publish_grant(
        &self,
        headers: &http::HeaderMap,
    ) -> Result<Option<EventGrant>, ApiError> {
        let config = &self.inner.config;
        let bearer = bearer_token(headers);
        if let (Some(expected), Some(Ok(token))) = (&config.publish_token, &bearer)
            && constant_time_eq(token.as_bytes(), expected.as_bytes())
        {
            return Ok(None);
        }
        if let Some(callout) = &self.inner.publish_callout {
            return callout.publisher_grant(headers).await;
        }
        if config.publish_token.is_none() && self.inner.publish_jwt.is_none() {
            return Ok(None);
        }
        let token = match bearer {
            Some(Ok(token)) => token,
            Some(Err(error)) => return Err(error),
            None => return Err(ApiError::unauthorized("a publish token is required")),
        };
        match &self.inner.publish_jwt {
            Some((verifier, claim)) => {
                let claims = verifier.verify(token).await?;
                Ok(Some(EventGrant::from_claim(&claims, claim)))
            }
            None => Err(ApiError::unauthorized("a valid publish token is required")),
        }
    }
}

/// The answer to a publish or a disconnect: `202 {"id"}`, or the error's status.
fn published(
    result: Result<sse_core::EventId, PublishError>,
) -> Result<Response<SseBody>, ApiError> {
    match result {
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
        Err(error @ PublishError::Reserved(_)) => Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "reserved_event_name",
            error.to_string(),
        )),
        Err(PublishError::Backend(error @ BackendError::TooLarge { .. })) => Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            error.to_string(),
        )),
        Err(error) => Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "backend_unavailable",
            error.to_string(),
        )),
    }
}

/// The publish body. Unknown fields are refused: a misspelt `sessionId` must not turn a targeted
/// event into a broadcast.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct PublishBody {
    event_name: Option<String>,
    /// `Some(None)` when the body says `"sessionId": null`.
    #[serde(default, deserialize_with = "present_or_null")]
    session_id: Option<Option<String>>,
    /// Kept as the JSON text it was posted as (see [`sse_core::Payload`]).
    #[serde(default, deserialize_with = "present")]
    payload: Option<Box<RawValue>>,
    id: Option<String>,
}

/// `Some` whenever the field is present, `Some(None)` when it is `null`.
fn present_or_null<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Option<String>>, D::Error> {
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

/// The disconnect body. Unknown fields are refused, as in a publish.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct DisconnectBody {
    session_id: Option<String>,
    /// `Some(None)` when the body says `"eventName": null`.
    #[serde(default, deserialize_with = "present_or_null")]
    event_name: Option<Option<String>>,
    #[serde(default, deserialize_with = "present")]
    payload: Option<Box<RawValue>>,
}

/// Reads a disconnect body, `{"sessionId", "eventName"?, "payload"?}`; `400` for anything else.
fn parse_disconnect_body(body: &[u8]) -> Result<Disconnect, ApiError> {
    let body: DisconnectBody = serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("invalid JSON body: {e}")))?;
    let session_id = body
        .session_id
        .ok_or_else(|| ApiError::bad_request("sessionId is required"))?;
    let mut disconnect = Disconnect::session(session_id);
    let event_name = match body.event_name {
        Some(None) => {
            return Err(ApiError::bad_request(
                "eventName is the goodbye event's name: leave it out for none, not null",
            ));
        }
        Some(Some(name)) => Some(name),
        None => None,
    };
    match (event_name, body.payload) {
        (Some(name), payload) => {
            let payload = payload.unwrap_or_else(|| RawValue::NULL.to_owned());
            disconnect.goodbye = Some((name, Payload::from(payload)));
        }
        (None, Some(_)) => {
            return Err(ApiError::bad_request(
                "payload is the goodbye event's: it needs an eventName",
            ));
        }
        (None, None) => {}
    }
    Ok(disconnect)
}

/// What a publisher posted.
#[derive(Debug, Clone, Copy)]
enum Posted {
    Event,
    Disconnect,
}

/// A body over the limit is still read (and dropped) up to this many bytes, for at most
/// [`DRAIN_FOR`], before the `413` goes out: a client that sends its whole body before reading
/// (no `Expect: 100-continue`) then reads the answer instead of a reset connection.
const DRAIN_AT_MOST: usize = 16 * 1024 * 1024;
const DRAIN_FOR: std::time::Duration = std::time::Duration::from_secs(5);

/// Why a publish was refused, and whether its body was read (see [`SseRouter::publish`]).
enum Refused {
    /// Before the body was read.
    Unread(ApiError),
    /// After it was read (or drained).
    Read(ApiError),
}

/// Whether a request carries a body (a `Content-Length` other than 0, or chunks).
fn carries_body(headers: &http::HeaderMap) -> bool {
    headers.contains_key(header::TRANSFER_ENCODING)
        || headers
            .get(header::CONTENT_LENGTH)
            .is_some_and(|len| len.as_bytes() != b"0")
}

/// `response`, ending its HTTP/1 connection once sent.
fn closing(mut response: Response<SseBody>) -> Response<SseBody> {
    response
        .headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    response
}

enum BodyError {
    TooLarge,
    OverBudget,
    Failed(String),
}

/// A body read whole, holding its part of the body budget until dropped.
struct ReadBody {
    bytes: Bytes,
    _held: Held,
}

/// How much of a body may be read, and from which budget.
struct BodyLimits<'a> {
    /// The largest body accepted.
    max: usize,
    /// Its `Content-Length`, if it has one.
    declared: Option<usize>,
    budget: &'a BodyBudget,
}

/// Reads a body of at most `max` bytes; a larger one is drained (see [`DRAIN_AT_MOST`]) and
/// reported as too large. What it holds (the buffer's capacity: the declared length at once,
/// else as it grows) is taken from the budget first.
async fn read_body<B>(body: B, limits: BodyLimits<'_>) -> Result<ReadBody, BodyError>
where
    B: Body<Data = Bytes>,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let BodyLimits {
        max,
        declared,
        budget,
    } = limits;
    let mut body = std::pin::pin!(body);
    let mut collected = bytes::BytesMut::new();
    let mut held = Held::default();
    let mut held_bytes = 0usize;
    if let Some(len) = declared.filter(|&len| len <= max) {
        if !budget.take(&mut held, len).await {
            return Err(BodyError::OverBudget);
        }
        held_bytes = len;
        collected.reserve(len);
    }
    let mut seen = 0usize;
    let read = async {
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| BodyError::Failed(e.into().to_string()))?;
            let Ok(data) = frame.into_data() else {
                continue; // trailers
            };
            seen = seen.saturating_add(data.len());
            if seen <= max {
                collected.reserve(data.len());
                let grown = collected.capacity().saturating_sub(held_bytes);
                if grown > 0 {
                    if !budget.take(&mut held, grown).await {
                        return Err(BodyError::OverBudget);
                    }
                    held_bytes += grown;
                }
                collected.extend_from_slice(&data);
            } else if seen > DRAIN_AT_MOST {
                break;
            }
        }
        Ok(())
    };
    match tokio::time::timeout(DRAIN_FOR, read).await {
        Ok(Ok(())) if seen <= max => Ok(ReadBody {
            bytes: collected.freeze(),
            _held: held,
        }),
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
