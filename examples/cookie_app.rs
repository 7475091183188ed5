//! A cookie-session application that pushes events through the hub without minting a token for
//! its browsers: the hub asks it who a stream request is (the auth callout), it publishes over
//! the hub's HTTP API, and its logout ends the user's streams on every instance.
//!
//! ```sh
//! # the hub, asking this application about stream requests and letting its page's origin in
//! cargo run -- --auth-url http://127.0.0.1:3000/internal/sse-auth --publish-token dev-token \
//!   --cors-origin http://127.0.0.1:3000 --cors-credentials
//! # the application (then open http://127.0.0.1:3000/ and log in)
//! HUB_URL=http://127.0.0.1:8080 HUB_TOKEN=dev-token cargo run --example cookie_app
//! ```
//!
//! The contract the hub relies on is `GET /internal/sse-auth`: `200 {"sessionId", "eventNames",
//! "cacheSeconds"}` for a logged-in cookie, `401` otherwise (README, "Sessions from the
//! application"). The page's stream is opened `withCredentials`, so the browser sends this
//! application's cookie to the hub, which forwards it here.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::extract::{Form, Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{Value, json};

/// Where the hub is and the token it takes from publishers.
#[derive(Debug, Clone)]
pub struct Hub {
    /// The hub's origin, `http://127.0.0.1:8080`.
    pub url: String,
    /// Its `--publish-token`.
    pub token: String,
}

#[derive(Clone)]
struct AppState {
    hub: Hub,
    http: reqwest::Client,
    /// Login cookie value to user name.
    logins: Arc<Mutex<HashMap<String, String>>>,
}

/// The application's routes: its pages, its login and logout, an action that publishes, and the
/// endpoint the hub asks.
pub fn app(hub: Hub) -> Router {
    let state = AppState {
        hub,
        http: reqwest::Client::new(),
        logins: Arc::default(),
    };
    Router::new()
        .route("/", get(login_page))
        .route("/login", post(login))
        .route("/logout", post(logout))
        .route("/app", get(app_page))
        .route("/orders/{id}/ship", post(ship))
        .route("/internal/sse-auth", get(sse_auth))
        .with_state(state)
}

const LOGIN_PAGE: &str = r#"<!doctype html><title>orders: log in</title>
<form method="post" action="/login"><input name="user" value="dora"> <button id="login">Log in</button></form>"#;

async fn login_page() -> Html<&'static str> {
    Html(LOGIN_PAGE)
}

#[derive(serde::Deserialize)]
struct Login {
    user: String,
}

/// Logs `user` in (a real application checks a password): a random cookie names the login.
async fn login(State(state): State<AppState>, Form(login): Form<Login>) -> Response {
    let cookie = uuid::Uuid::new_v4().simple().to_string();
    state
        .logins
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .insert(cookie.clone(), login.user);
    (
        StatusCode::SEE_OTHER,
        [
            (header::LOCATION, "/app".to_owned()),
            (
                header::SET_COOKIE,
                format!("app_session={cookie}; Path=/; HttpOnly; SameSite=Lax"),
            ),
        ],
    )
        .into_response()
}

/// The user of the request's login cookie.
fn user(state: &AppState, headers: &HeaderMap) -> Option<String> {
    let cookie = headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == "app_session")?
        .1;
    state
        .logins
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .get(cookie)
        .cloned()
}

/// What the hub asks on each stream request (with the browser's cookie): who this is, and the
/// event names they may receive.
async fn sse_auth(State(state): State<AppState>, headers: HeaderMap) -> Response {
    match user(&state, &headers) {
        Some(user) => Json(json!({
            "sessionId": user,
            "eventNames": ["orders.*"],
            "cacheSeconds": 60,
        }))
        .into_response(),
        None => (
            StatusCode::UNAUTHORIZED,
            Json(json!({"message": "log in first"})),
        )
            .into_response(),
    }
}

/// Business code: ships an order and tells its user's open pages, through the hub.
async fn ship(State(state): State<AppState>, Path(id): Path<u64>, headers: HeaderMap) -> Response {
    let Some(user) = user(&state, &headers) else {
        return StatusCode::UNAUTHORIZED.into_response();
    };
    let event = json!({"eventName": "orders.shipped", "sessionId": user, "payload": {"order": id}});
    hub_post(&state, "/sse/publish", event).await
}

/// Logs out and ends the user's streams on every hub instance; the pages get `logged-out` and
/// do not come back.
async fn logout(State(state): State<AppState>, headers: HeaderMap) -> Response {
    let Some(user) = user(&state, &headers) else {
        return StatusCode::UNAUTHORIZED.into_response();
    };
    state
        .logins
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .retain(|_, u| *u != user);
    let disconnect =
        json!({"sessionId": user, "eventName": "logged-out", "payload": {"reason": "logout"}});
    hub_post(&state, "/sse/disconnect", disconnect).await
}

/// Posts `body` to the hub's `path`; the hub's status is the answer.
async fn hub_post(state: &AppState, path: &str, body: Value) -> Response {
    let sent = state
        .http
        .post(format!("{}{path}", state.hub.url))
        .bearer_auth(&state.hub.token)
        .json(&body)
        .send()
        .await;
    match sent {
        Ok(answer) => StatusCode::from_u16(answer.status().as_u16())
            .unwrap_or(StatusCode::BAD_GATEWAY)
            .into_response(),
        Err(_) => StatusCode::BAD_GATEWAY.into_response(),
    }
}

/// The page: its stream from the hub (with this application's cookie), what it received, and
/// two buttons.
async fn app_page(State(state): State<AppState>) -> Html<String> {
    Html(format!(
        r#"<!doctype html><title>orders</title>
<button id="ship">Ship order 7</button> <button id="logout">Log out</button>
<pre id="log"></pre>
<script>
window.seen = {{ events: [], errors: 0, open: false, state: 0, goodbye: null }};
const log = (line) => document.getElementById("log").textContent += line + "\n";
const source = new EventSource("{hub}/sse/event-stream?eventName=orders.shipped", {{ withCredentials: true }});
source.onopen = () => {{ seen.open = true; seen.state = source.readyState; log("open"); }};
source.onerror = () => {{ seen.errors++; seen.state = source.readyState; log("error"); }};
source.addEventListener("orders.shipped", (e) => {{ seen.events.push(e.data); log(e.data); }});
source.addEventListener("logged-out", (e) => {{
  source.close(); seen.state = source.readyState; seen.goodbye = e.data; log("logged out");
}});
document.getElementById("ship").onclick = () => fetch("/orders/7/ship", {{ method: "POST" }});
document.getElementById("logout").onclick = () => fetch("/logout", {{ method: "POST" }});
</script>"#,
        hub = state.hub.url
    ))
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let hub = Hub {
        url: std::env::var("HUB_URL").unwrap_or_else(|_| "http://127.0.0.1:8080".to_owned()),
        token: std::env::var("HUB_TOKEN").unwrap_or_else(|_| "dev-token".to_owned()),
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:3000").await?;
    println!(
        "orders app on http://127.0.0.1:3000/, its hub at {}",
        hub.url
    );
    axum::serve(listener, app(hub)).await?;
    Ok(())
}
