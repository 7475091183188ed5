//! An existing axum application adopts sse-fanout: it mounts the event-stream endpoint in its own
//! `Router` beside its routes, finds the session with its own authentication, and publishes from a
//! handler through the hub.
//!
//! ```sh
//! cargo run --example axum_app
//! curl -N -H 'authorization: Bearer alice-token' 'http://127.0.0.1:3000/sse/event-stream?eventName=order-update'
//! curl -X POST -H 'authorization: Bearer alice-token' http://127.0.0.1:3000/orders/17/ship
//! ```

use async_trait::async_trait;
use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, StatusCode, request::Parts};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::json;
use sse_fanout::hyper::{ApiError, SseRouter};
use sse_fanout::{Hub, LocalBackend, SendSseEvent, SessionResolver};

/// The application's own authentication: a bearer token names the user.
fn user_of(headers: &HeaderMap) -> Option<String> {
    let token = headers
        .get("authorization")?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")?;
    match token {
        "alice-token" => Some("alice".to_owned()),
        "bob-token" => Some("bob".to_owned()),
        _ => None,
    }
}

/// The same authentication, as the session of an event stream.
#[derive(Debug)]
struct AppSessions;

#[async_trait]
impl SessionResolver for AppSessions {
    async fn resolve(&self, request: &Parts) -> Result<Option<String>, ApiError> {
        user_of(&request.headers)
            .map(Some)
            .ok_or_else(|| ApiError::unauthorized("log in first"))
    }
}

#[derive(Clone)]
struct AppState {
    hub: Hub,
    sse: SseRouter,
}

/// The application's routes with the event stream mounted among them.
pub fn app(hub: Hub) -> Router {
    let sse = SseRouter::new(hub.clone()).resolver(AppSessions);
    Router::new()
        .route("/", get(|| async { "orders service" }))
        .route("/orders/{id}/ship", post(ship))
        .route("/sse/event-stream", get(event_stream))
        .with_state(AppState { hub, sse })
}

async fn event_stream(State(state): State<AppState>, request: Request) -> Response {
    let (parts, _) = request.into_parts();
    match state.sse.event_stream(&parts).await {
        Ok(response) => response.into_response(),
        Err(error) => error.into_response().into_response(),
    }
}

/// Business code: ships an order and tells its owner, wherever their stream is.
async fn ship(State(state): State<AppState>, Path(id): Path<u64>, headers: HeaderMap) -> Response {
    let Some(user) = user_of(&headers) else {
        return StatusCode::UNAUTHORIZED.into_response();
    };
    let event = SendSseEvent::new("order-update", json!({"order": id, "status": "shipped"}))
        .to_session(user);
    match state.hub.publish(event).await {
        Ok(event_id) => (StatusCode::ACCEPTED, Json(json!({"eventId": event_id}))).into_response(),
        Err(error) => (StatusCode::SERVICE_UNAVAILABLE, error.to_string()).into_response(),
    }
}

#[allow(dead_code)]
#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let hub = Hub::builder(LocalBackend::new())
        .app_name("orders")
        .start()
        .await?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:3000").await?;
    axum::serve(listener, app(hub)).await?;
    Ok(())
}
