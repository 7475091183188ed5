//! Who a stream belongs to: the [`SessionResolver`] trait and the built-in resolvers.
//!
//! A resolver answers `Ok(Some(session))` for a known session, `Ok(None)` for an anonymous client
//! (its stream receives broadcasts only), or an error, which the endpoint answers with `401`.

use std::fmt;

use crate::error::ApiError;
use crate::jwt::{EventGrant, JwtKeys, JwtVerifier};
use async_trait::async_trait;
use http::request::Parts;
use http::{HeaderMap, header};

/// Finds the session of a request to the event-stream endpoint.
///
/// Implement it to use your application's own authentication:
///
/// ```
/// use async_trait::async_trait;
/// use http::request::Parts;
/// use sse_hyper::{ApiError, SessionResolver};
///
/// #[derive(Debug)]
/// struct FromGatewayHeader;
///
/// #[async_trait]
/// impl SessionResolver for FromGatewayHeader {
///     async fn resolve(&self, request: &Parts) -> Result<Option<String>, ApiError> {
///         match request.headers.get("x-user-id").map(|v| v.to_str()) {
///             Some(Ok(user)) => Ok(Some(user.to_owned())),
///             Some(Err(_)) => Err(ApiError::unauthorized("x-user-id is not text")),
///             None => Ok(None),
///         }
///     }
/// }
/// ```
#[async_trait]
pub trait SessionResolver: Send + Sync + fmt::Debug + 'static {
    /// The session of `request`, `None` for an anonymous client, or the error to answer with.
    async fn resolve(&self, request: &Parts) -> Result<Option<String>, ApiError>;

    /// The session and the event names it may ask for. The default: [`resolve`](Self::resolve)'s
    /// session, any event name.
    async fn identify(&self, request: &Parts) -> Result<Identity, ApiError> {
        Ok(Identity {
            session: self.resolve(request).await?,
            events: None,
            expires: None,
        })
    }
}

/// Who a stream is: its session and which event names it may ask for.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct Identity {
    /// The session; `None` for an anonymous client (broadcasts only).
    pub session: Option<String>,
    /// The event names it may ask for; `None` for any.
    pub events: Option<EventGrant>,
    /// When its credentials expire: its stream ends then (the client reconnects and is asked
    /// again); `None` for never.
    pub expires: Option<std::time::SystemTime>,
}

/// Every client is anonymous: streams get broadcasts only.
#[derive(Debug, Clone, Copy, Default)]
pub struct AnonymousSessions;

#[async_trait]
impl SessionResolver for AnonymousSessions {
    async fn resolve(&self, _request: &Parts) -> Result<Option<String>, ApiError> {
        Ok(None)
    }
}

/// Development mode: the client names its session itself, in the `sessionId` query parameter, the
/// `X-Session-Id` header or the `sse_session` cookie (first found wins). Trusts the client
/// completely: use it behind a gateway that sets the header, or in development.
#[derive(Debug, Clone, Copy, Default)]
pub struct DevSessions;

#[async_trait]
impl SessionResolver for DevSessions {
    async fn resolve(&self, request: &Parts) -> Result<Option<String>, ApiError> {
        let session = query_param(request, "sessionId")
            .or_else(|| header_text(&request.headers, "x-session-id").map(str::to_owned))
            .or_else(|| cookie(&request.headers, "sse_session").map(str::to_owned));
        Ok(session.filter(|s| !s.is_empty()))
    }
}

/// Bearer JWT: the session is the token's `sub` claim, verified by a [`JwtVerifier`] (an HS256
/// secret or a JWKS of RS256, ES256 and EdDSA keys).
///
/// The token comes from `Authorization: Bearer …` or, because `EventSource` cannot set headers,
/// from the `access_token` query parameter. No token at all is an anonymous client unless
/// [`require_token`](Self::require_token) is set; a token that does not verify (bad signature,
/// expired, no `sub`) is always `401`. With [`events_claim`](Self::events_claim), a stream may
/// ask only for the event names that claim allows ([`EventGrant`]); others are `403`.
#[derive(Debug, Clone)]
pub struct JwtSessions {
    verifier: JwtVerifier,
    require_token: bool,
    events_claim: Option<String>,
}

impl JwtSessions {
    /// Verifies HS256 tokens with `secret`; `exp` is required and checked, and so is `nbf` when
    /// present (both with 60 s of leeway for clocks that differ).
    pub fn hs256(secret: impl AsRef<[u8]>) -> Self {
        Self::new(JwtVerifier::new(JwtKeys::hs256(secret)))
    }

    /// Sessions from tokens `verifier` accepts.
    pub fn new(verifier: JwtVerifier) -> Self {
        JwtSessions {
            verifier,
            require_token: false,
            events_claim: None,
        }
    }

    /// Answers requests without a token with `401` instead of treating them as anonymous.
    pub fn require_token(mut self, require: bool) -> Self {
        self.require_token = require;
        self
    }

    /// Lets a stream ask only for the event names the token's `claim` allows (see
    /// [`EventGrant`]); a token without the claim may ask for none.
    pub fn events_claim(mut self, claim: impl Into<String>) -> Self {
        self.events_claim = Some(claim.into());
        self
    }

    /// Checks `token` and returns its `sub`. A token whose header names `crit` (critical)
    /// extensions is refused: this verifier understands none (RFC 7515, 4.1.11).
    pub async fn verify(&self, token: &str) -> Result<String, ApiError> {
        let claims = self.verifier.verify(token).await?;
        claims
            .subject()
            .map(str::to_owned)
            .ok_or_else(|| ApiError::unauthorized("invalid token: no sub"))
    }
}

#[async_trait]
impl SessionResolver for JwtSessions {
    async fn resolve(&self, request: &Parts) -> Result<Option<String>, ApiError> {
        Ok(self.identify(request).await?.session)
    }

    async fn identify(&self, request: &Parts) -> Result<Identity, ApiError> {
        let token = match bearer_token(&request.headers) {
            Some(Ok(token)) => Some(token.to_owned()),
            Some(Err(error)) => return Err(error),
            None => query_param(request, "access_token"),
        };
        let Some(token) = token else {
            if self.require_token {
                return Err(ApiError::unauthorized("a bearer token is required"));
            }
            // Anonymous: broadcasts only, and with an events claim, no event at all.
            return Ok(Identity {
                session: None,
                events: self
                    .events_claim
                    .as_ref()
                    .map(|_| EventGrant::new(Vec::<String>::new())),
                expires: None,
            });
        };
        let claims = self.verifier.verify(&token).await?;
        let session = claims
            .subject()
            .map(str::to_owned)
            .ok_or_else(|| ApiError::unauthorized("invalid token: no sub"))?;
        Ok(Identity {
            session: Some(session),
            events: self
                .events_claim
                .as_ref()
                .map(|claim| EventGrant::from_claim(&claims, claim)),
            expires: None,
        })
    }
}

/// The token of an `Authorization: Bearer` header: `None` without the header.
pub(crate) fn bearer_token(headers: &HeaderMap) -> Option<Result<&str, ApiError>> {
    let value = headers.get(header::AUTHORIZATION)?;
    let text = match value.to_str() {
        Ok(text) => text,
        Err(_) => return Some(Err(ApiError::unauthorized("Authorization is not text"))),
    };
    match text.split_once(' ') {
        Some((scheme, token)) if scheme.eq_ignore_ascii_case("bearer") => Some(Ok(token.trim())),
        _ => Some(Err(ApiError::unauthorized(
            "Authorization must use the Bearer scheme",
        ))),
    }
}

/// The first value of query parameter `name`, percent-decoded.
pub(crate) fn query_param(request: &Parts, name: &str) -> Option<String> {
    let query = request.uri.query()?;
    form_urlencoded::parse(query.as_bytes())
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
}

/// Every value of query parameter `name`, percent-decoded.
pub(crate) fn query_values(request: &Parts, name: &str) -> Vec<String> {
    let Some(query) = request.uri.query() else {
        return Vec::new();
    };
    form_urlencoded::parse(query.as_bytes())
        .filter(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
        .collect()
}

/// The cookies of one `Cookie` header value: each cookie's name and its whole `name=value` pair.
pub(crate) fn cookie_pairs(value: &[u8]) -> impl Iterator<Item = (&str, &str)> {
    std::str::from_utf8(value)
        .unwrap_or("")
        .split(';')
        .map(str::trim)
        .filter_map(|pair| Some((pair.split_once('=')?.0.trim(), pair)))
}

fn header_text<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name)?.to_str().ok().map(str::trim)
}

fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .flat_map(|v| cookie_pairs(v.as_bytes()))
        .find(|(k, _)| *k == name)
        .and_then(|(_, pair)| pair.split_once('='))
        .map(|(_, v)| v.trim().trim_matches('"'))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use http::Request;
    use jsonwebtoken::{Algorithm, EncodingKey, Header};

    fn parts(uri: &str, headers: &[(&str, &str)]) -> Parts {
        let mut req = Request::builder().uri(uri);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        req.body(()).unwrap().into_parts().0
    }

    #[tokio::test]
    async fn dev_sessions_from_query_header_or_cookie() {
        let r = DevSessions;
        let got = |p: Parts| async move { r.resolve(&p).await.unwrap() };
        assert_eq!(
            got(parts("/x?sessionId=a%20b", &[])).await.as_deref(),
            Some("a b")
        );
        assert_eq!(
            got(parts("/x", &[("x-session-id", "h")])).await.as_deref(),
            Some("h")
        );
        assert_eq!(
            got(parts("/x", &[("cookie", "other=1; sse_session=c; z=2")]))
                .await
                .as_deref(),
            Some("c")
        );
        assert_eq!(got(parts("/x?sessionId=", &[])).await, None);
        assert_eq!(got(parts("/x", &[])).await, None);
    }

    fn token(sub: &str, secret: &[u8], exp_from_now: i64) -> String {
        let exp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64
            + exp_from_now;
        jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &serde_json::json!({"sub": sub, "exp": exp}),
            &EncodingKey::from_secret(secret),
        )
        .unwrap()
    }

    #[tokio::test]
    async fn jwt_sessions() {
        let r = JwtSessions::hs256("secret");
        let good = token("user-1", b"secret", 600);
        let header = format!("Bearer {good}");
        assert_eq!(
            r.resolve(&parts("/x", &[("authorization", &header)]))
                .await
                .unwrap()
                .as_deref(),
            Some("user-1")
        );
        assert_eq!(
            r.resolve(&parts(&format!("/x?access_token={good}"), &[]))
                .await
                .unwrap()
                .as_deref(),
            Some("user-1")
        );
        assert_eq!(r.resolve(&parts("/x", &[])).await.unwrap(), None);
        let wrong_key = token("user-1", b"other", 600);
        let expired = token("user-1", b"secret", -3600);
        for bad in [wrong_key.as_str(), expired.as_str(), "not.a.jwt"] {
            let err = r
                .resolve(&parts(&format!("/x?access_token={bad}"), &[]))
                .await
                .unwrap_err();
            assert_eq!(err.status, http::StatusCode::UNAUTHORIZED);
        }
        assert!(
            r.resolve(&parts("/x", &[("authorization", "Basic abc")]))
                .await
                .is_err()
        );
        let strict = JwtSessions::hs256("secret").require_token(true);
        assert!(strict.resolve(&parts("/x", &[])).await.is_err());
    }
}
