//! The baseline: what a Rust user writes without sse-fanout. A minimal axum server, one
//! `tokio::sync::broadcast` channel for every event, and each stream filtering it for its own
//! session and event names, encoded by axum's `Sse`.
//!
//! ```sh
//! cargo run --release -p sse-fanout-bench --bin baseline -- --listen 127.0.0.1:8091
//! ```
//!
//! Same endpoints as the hub, so the load tool drives both alike:
//! `GET /sse/event-stream?eventName=a,b&sessionId=s`, `POST /sse/publish`
//! `{"eventName","sessionId"?,"payload"}`, `GET /healthz` (`{"streams": N}`), and
//! `POST /bench/pump` (a `PumpSpec`) to publish at a fixed rate from inside the process.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::routing::{get, post};
use axum::{Json, Router};
use clap::Parser;
use futures_util::{Stream, StreamExt};
use serde::Deserialize;
use serde_json::{Value, json};
use sse_fanout_bench::pump::{self, PumpSpec};
use tokio::sync::broadcast;
use tokio_stream::wrappers::BroadcastStream;

#[derive(Debug, Parser)]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8091")]
    listen: String,
    /// Capacity of the broadcast channel.
    #[arg(long, default_value_t = 1024)]
    capacity: usize,
}

/// One published event, shared by every stream.
#[derive(Debug)]
struct Message {
    id: String,
    event_name: String,
    session_id: Option<String>,
    data: String,
}

#[derive(Clone)]
struct AppState {
    tx: broadcast::Sender<Arc<Message>>,
    open: Arc<AtomicUsize>,
}

impl AppState {
    fn send(&self, event_name: String, session_id: Option<String>, payload: &Value) {
        let data = match payload {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        let message = Message {
            id: uuid::Uuid::now_v7().to_string(),
            event_name,
            session_id,
            data,
        };
        // No receiver is not an error.
        let _ = self.tx.send(Arc::new(message));
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct StreamQuery {
    event_name: String,
    session_id: Option<String>,
}

/// Counts the stream as open while it lives.
struct OpenGuard(Arc<AtomicUsize>);

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

async fn event_stream(
    State(state): State<AppState>,
    Query(query): Query<StreamQuery>,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let names: Vec<String> = query.event_name.split(',').map(str::to_owned).collect();
    let session = query.session_id;
    state.open.fetch_add(1, Ordering::Relaxed);
    let guard = OpenGuard(state.open.clone());
    let stream = BroadcastStream::new(state.tx.subscribe()).filter_map(move |message| {
        let _open = &guard;
        let event = match message {
            Ok(m)
                if (m.session_id.is_none() || m.session_id == session)
                    && names.contains(&m.event_name) =>
            {
                Some(Ok(Event::default()
                    .id(&m.id)
                    .event(&m.event_name)
                    .data(&m.data)))
            }
            // Not for this stream, or it lagged behind and lost some.
            _ => None,
        };
        std::future::ready(event)
    });
    Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct PublishBody {
    event_name: String,
    session_id: Option<String>,
    payload: Value,
}

async fn publish(
    State(state): State<AppState>,
    Json(body): Json<PublishBody>,
) -> (StatusCode, Json<Value>) {
    state.send(body.event_name, body.session_id, &body.payload);
    (StatusCode::ACCEPTED, Json(json!({"ok": true})))
}

async fn pump(State(state): State<AppState>, Json(spec): Json<PumpSpec>) -> Json<Value> {
    let report = pump::run(&spec, 256, |n| {
        state.send(spec.event_name.clone(), spec.session(n), &pump::payload(n));
        std::future::ready(true)
    })
    .await;
    Json(json!(report))
}

async fn health(State(state): State<AppState>) -> Json<Value> {
    Json(json!({"status": "ok", "streams": state.open.load(Ordering::Relaxed)}))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    sse_fanout_bench::sys::raise_fd_limit();
    let (tx, _) = broadcast::channel(args.capacity);
    let state = AppState {
        tx,
        open: Arc::default(),
    };
    let app = Router::new()
        .route("/sse/event-stream", get(event_stream))
        .route("/sse/publish", post(publish))
        .route("/bench/pump", post(pump))
        .route("/healthz", get(health))
        .with_state(state);
    let listener = tokio::net::TcpListener::bind(&args.listen).await?;
    eprintln!("baseline listening on {}", listener.local_addr()?);
    axum::serve(listener, app).await?;
    Ok(())
}
