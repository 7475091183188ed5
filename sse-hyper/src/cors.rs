//! Cross-origin access ([`Cors`]): which other origins may open streams and publish, the
//! preflight answer, and the headers added to every answer for an allowed origin.

use http::{HeaderMap, HeaderValue, Response, StatusCode, header};

use crate::body::SseBody;

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

    pub(crate) fn allows(&self, origin: &str) -> bool {
        self.listed(origin) || (origin != "null" && self.allowed_origins.iter().any(|o| o == "*"))
    }

    /// Whether `origin` gets `Access-Control-Allow-Credentials`.
    pub(crate) fn credentials_for(&self, origin: &str) -> bool {
        self.allow_credentials && self.listed(origin)
    }

    /// The request's `Origin` when this configuration allows it.
    pub(crate) fn allowed_origin(cors: Option<&Cors>, headers: &HeaderMap) -> Option<HeaderValue> {
        headers
            .get(header::ORIGIN)
            .filter(|o| cors.is_some_and(|c| c.allows(o.to_str().unwrap_or(""))))
            .cloned()
    }

    /// Whether the cookies of `request` must not be used: it comes from another site (an
    /// `Origin` whose host is not the request's `Host` or HTTP/2 authority) that `cors` does
    /// not let send credentials.
    pub(crate) fn cookies_refused(cors: Option<&Cors>, request: &http::request::Parts) -> bool {
        let headers = &request.headers;
        let Some(origin) = headers.get(header::ORIGIN).and_then(|o| o.to_str().ok()) else {
            return false;
        };
        if !headers.contains_key(header::COOKIE) {
            return false;
        }
        let origin_host = origin.split_once("://").map_or(origin, |(_, host)| host);
        let host = headers
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .or_else(|| request.uri.authority().map(|a| a.as_str()));
        let same_site = host.is_some_and(|host| host.eq_ignore_ascii_case(origin_host));
        !same_site && !cors.is_some_and(|c| c.credentials_for(origin))
    }

    /// The answer to a preflight (`OPTIONS`) from an allowed origin.
    pub(crate) fn preflight() -> Response<SseBody> {
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
        response
    }

    /// Adds the CORS headers for an allowed `origin`.
    pub(crate) fn apply(
        &self,
        mut response: Response<SseBody>,
        origin: HeaderValue,
    ) -> Response<SseBody> {
        let credentials = origin.to_str().is_ok_and(|o| self.credentials_for(o));
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
}
