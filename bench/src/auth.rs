//! What a stream open carries to name its session, for the `opens` scenario: the development
//! `sessionId`, a JWT, or an application's cookie that the hub's auth callout asks about; and
//! the application the callout asks (`loadgen auth-app`), answering at once.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use clap::ValueEnum;

/// How a stream open names its session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Credential {
    /// `?sessionId=` (the hub in development mode).
    Dev,
    /// `?access_token=` with an HS256 JWT whose `sub` is the session (`--jwt-secret`).
    Jwt,
    /// One cookie for every open: after the first, the auth callout's answer comes from its
    /// cache.
    CookieShared,
    /// A cookie of its own for each open: a callout each.
    CookieEach,
}

/// The query parameter and request header lines of open `n` of session `session`.
pub fn open_request(
    credential: Credential,
    session: &str,
    jwt_secret: &str,
) -> anyhow::Result<(String, String)> {
    Ok(match credential {
        Credential::Dev => (format!("&sessionId={session}"), String::new()),
        Credential::Jwt => (
            format!("&access_token={}", jwt(session, jwt_secret)?),
            String::new(),
        ),
        Credential::CookieShared => (String::new(), "cookie: app_session=shared\r\n".to_owned()),
        Credential::CookieEach => (String::new(), format!("cookie: app_session={session}\r\n")),
    })
}

/// An HS256 JWT for `sub`, valid for an hour.
fn jwt(sub: &str, secret: &str) -> anyhow::Result<String> {
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs()
        + 3600;
    Ok(jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &serde_json::json!({"sub": sub, "exp": exp}),
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )?)
}

/// The application an auth callout asks, on `listener`: `GET /auth` answers
/// `{"sessionId": <the app_session cookie>}` at once (`401` without the cookie), and
/// `GET /calls` how many it answered. Runs until the process ends.
pub async fn serve_app(listener: tokio::net::TcpListener) -> anyhow::Result<()> {
    let calls = Arc::new(AtomicU64::new(0));
    let router = axum::Router::new()
        .route(
            "/auth",
            axum::routing::get({
                let calls = calls.clone();
                move |headers: http::HeaderMap| async move {
                    calls.fetch_add(1, Ordering::Relaxed);
                    let session = headers
                        .get(http::header::COOKIE)
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| {
                            v.split(';')
                                .filter_map(|pair| pair.trim().split_once('='))
                                .find(|(name, _)| *name == "app_session")
                                .map(|(_, value)| value.to_owned())
                        });
                    match session {
                        Some(session) => (
                            http::StatusCode::OK,
                            axum::Json(serde_json::json!({"sessionId": session})),
                        ),
                        None => (
                            http::StatusCode::UNAUTHORIZED,
                            axum::Json(serde_json::json!({"message": "no cookie"})),
                        ),
                    }
                }
            }),
        )
        .route(
            "/calls",
            axum::routing::get(move || async move { calls.load(Ordering::Relaxed).to_string() }),
        );
    axum::serve(listener, router).await?;
    Ok(())
}
