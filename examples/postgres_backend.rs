//! A custom backend written outside the workspace's backend crates: PostgreSQL LISTEN/NOTIFY.
//! The README's "Write your own backend" walks through it; `tests/postgres.rs` runs the shared
//! conformance suite against it.
//!
//! ```sh
//! cargo run --example postgres_backend -- postgres://postgres@127.0.0.1:5432/test
//! ```
//!
//! Every envelope is stored in a history table (`sse_fanout_history`) and notified in the same
//! transaction: a small one travels inline in the NOTIFY, a larger one (NOTIFY payloads are
//! limited to 8000 bytes) as its row's sequence number. Publishes on one channel take a
//! transaction-scoped advisory lock, so the table's order is the order notifications arrive in.
//! The table is the backend's [`BrokerHistory`]: a hub reads it when it starts, so
//! `Last-Event-ID` works on an instance started after the event went by. Rows older than the
//! history's age are deleted as publishing goes on.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::StreamExt;
use sse_fanout::backend::channel_stream;
use sse_fanout::history::{BrokerHistory, HistoryStream, paged};
use sse_fanout::{BackendError, BackendStream, FanoutBackend, Health, ReplayConfig};
use tokio::sync::{Mutex, mpsc};
use tokio_postgres::{AsyncMessage, Client, NoTls};

const NAME: &str = "postgres";
/// Envelopes up to this size travel inside the notification.
const INLINE_MAX: usize = 7000;
/// Rows one history read fetches at a time.
const PAGE: i64 = 1000;

/// Fans envelopes out with PostgreSQL LISTEN/NOTIFY on one channel.
#[derive(Debug, Clone)]
pub struct PostgresBackend {
    url: String,
    channel: String,
    publisher: Arc<Mutex<Client>>,
    up: Arc<AtomicBool>,
    /// How long rows stay in the history table.
    history: ReplayConfig,
}

fn unavailable(error: tokio_postgres::Error) -> BackendError {
    BackendError::unavailable(NAME, error)
}

/// A connection whose driver runs in a task; notifications go to `notify` when given.
async fn connect(
    url: &str,
    notify: Option<mpsc::Sender<tokio_postgres::Notification>>,
    up: Arc<AtomicBool>,
) -> Result<Client, BackendError> {
    let (client, mut connection) = tokio_postgres::connect(url, NoTls)
        .await
        .map_err(unavailable)?;
    tokio::spawn(async move {
        let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
        while let Some(message) = messages.next().await {
            match message {
                Ok(AsyncMessage::Notification(n)) => {
                    if let Some(tx) = &notify
                        && tx.send(n).await.is_err()
                    {
                        break;
                    }
                }
                Ok(_) => {}
                Err(error) => {
                    tracing::warn!(%error, "postgres connection failed");
                    break;
                }
            }
        }
        up.store(false, Ordering::Relaxed);
    });
    Ok(client)
}

impl PostgresBackend {
    /// Connects, creates the overflow table if needed, and uses `channel`.
    pub async fn connect(url: &str, channel: &str) -> Result<Self, BackendError> {
        if !channel
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_')
        {
            return Err(BackendError::Config {
                backend: NAME,
                message: format!("channel `{channel}`: use letters, digits and `_` only"),
            });
        }
        let up = Arc::new(AtomicBool::new(true));
        let client = connect(url, None, up.clone()).await?;
        client
            // Instances starting together would race on CREATE TABLE IF NOT EXISTS: serialise.
            .batch_execute(
                "BEGIN;
                 SELECT pg_advisory_xact_lock(hashtext('sse_fanout_history'));
                 CREATE TABLE IF NOT EXISTS sse_fanout_history (
                     seq bigserial PRIMARY KEY,
                     channel text NOT NULL,
                     body bytea NOT NULL,
                     at timestamptz NOT NULL DEFAULT clock_timestamp());
                 CREATE INDEX IF NOT EXISTS sse_fanout_history_by_time
                     ON sse_fanout_history (channel, at);
                 COMMIT;",
            )
            .await
            .map_err(unavailable)?;
        Ok(PostgresBackend {
            url: url.to_owned(),
            channel: channel.to_owned(),
            publisher: Arc::new(Mutex::new(client)),
            up,
            history: ReplayConfig::default(),
        })
    }
}

#[async_trait]
impl FanoutBackend for PostgresBackend {
    fn name(&self) -> &'static str {
        NAME
    }

    async fn publish(&self, envelope: Bytes) -> Result<(), BackendError> {
        let mut client = self.publisher.lock().await;
        let tx = client.transaction().await.map_err(unavailable)?;
        // One publisher at a time per channel: the history's order is the notifications' order.
        tx.execute(
            "SELECT pg_advisory_xact_lock(hashtext($1))",
            &[&self.channel],
        )
        .await
        .map_err(unavailable)?;
        let row = tx
            .query_one(
                "INSERT INTO sse_fanout_history (channel, body) VALUES ($1, $2) RETURNING seq",
                &[&self.channel, &envelope.as_ref()],
            )
            .await
            .map_err(unavailable)?;
        let seq: i64 = row.get(0);
        let payload = match std::str::from_utf8(&envelope) {
            Ok(text) if envelope.len() <= INLINE_MAX && !text.contains('\0') => format!("i{text}"),
            // Too large (or not text PostgreSQL accepts) for a notification: notify the row.
            _ => format!("r{seq}"),
        };
        tx.execute("SELECT pg_notify($1, $2)", &[&self.channel, &payload])
            .await
            .map_err(unavailable)?;
        let age = self.history.max_age.as_secs_f64();
        tx.execute(
            "DELETE FROM sse_fanout_history
              WHERE channel = $1 AND at < now() - make_interval(secs => $2)",
            &[&self.channel, &age],
        )
        .await
        .map_err(unavailable)?;
        tx.commit().await.map_err(unavailable)
    }

    fn history(&self) -> Option<&dyn BrokerHistory> {
        Some(self)
    }

    async fn subscribe(&self) -> Result<BackendStream, BackendError> {
        let (notify_tx, mut notify_rx) = mpsc::channel(1024);
        let client = connect(&self.url, Some(notify_tx), self.up.clone()).await?;
        // LISTEN has taken effect when it returns: what is published afterwards is received.
        client
            .batch_execute(&format!("LISTEN {}", self.channel))
            .await
            .map_err(unavailable)?;
        let (tx, rx) = mpsc::channel(1024);
        tokio::spawn(async move {
            while let Some(notification) = notify_rx.recv().await {
                let payload = notification.payload();
                let envelope = if let Some(inline) = payload.strip_prefix('i') {
                    Bytes::copy_from_slice(inline.as_bytes())
                } else if let Some(id) = payload
                    .strip_prefix('r')
                    .and_then(|id| id.parse::<i64>().ok())
                {
                    match client
                        .query_opt("SELECT body FROM sse_fanout_history WHERE seq = $1", &[&id])
                        .await
                    {
                        Ok(Some(row)) => Bytes::from(row.get::<_, Vec<u8>>(0)),
                        Ok(None) => continue,
                        Err(error) => {
                            tracing::warn!(%error, "could not read a stored envelope");
                            continue;
                        }
                    }
                } else {
                    // Someone else's NOTIFY on our channel: hand it on, the hub counts it.
                    Bytes::copy_from_slice(payload.as_bytes())
                };
                if tx.send(envelope).await.is_err() {
                    break;
                }
            }
        });
        Ok(channel_stream(rx))
    }

    async fn health(&self) -> Health {
        if !self.up.load(Ordering::Relaxed) {
            return Health::down("connection lost");
        }
        match self.publisher.lock().await.simple_query("SELECT 1").await {
            Ok(_) => Health::up(),
            Err(error) => Health::down(error.to_string()),
        }
    }
}

#[async_trait]
impl BrokerHistory for PostgresBackend {
    async fn read_since(
        &self,
        since: std::time::SystemTime,
    ) -> Result<HistoryStream, BackendError> {
        let client = self.publisher.clone();
        let channel = self.channel.clone();
        // The first row at or after `since`, then the rows after the last one read, in pages;
        // the read ends at the newest row there was when it began.
        let bounds = client
            .lock()
            .await
            .query_one(
                "SELECT (SELECT coalesce(min(seq), 0) FROM sse_fanout_history
                          WHERE channel = $1 AND at >= $2),
                        (SELECT coalesce(max(seq), 0) FROM sse_fanout_history WHERE channel = $1)",
                &[&channel, &since],
            )
            .await
            .map_err(unavailable)?;
        let (first, last): (i64, i64) = (bounds.get(0), bounds.get(1));
        if first == 0 {
            return Ok(Box::pin(futures_util::stream::empty()));
        }
        Ok(paged(first, move |from: i64| {
            let (client, channel) = (client.clone(), channel.clone());
            async move {
                let rows = client
                    .lock()
                    .await
                    .query(
                        "SELECT seq, body FROM sse_fanout_history
                          WHERE channel = $1 AND seq >= $2 AND seq <= $3 ORDER BY seq LIMIT $4",
                        &[&channel, &from, &last, &PAGE],
                    )
                    .await
                    .map_err(unavailable)?;
                let next = rows.last().map(|r| r.get::<_, i64>(0) + 1);
                let more = rows.len() as i64 == PAGE;
                let envelopes = rows
                    .into_iter()
                    .map(|r| Bytes::from(r.get::<_, Vec<u8>>(1)))
                    .collect();
                Ok((envelopes, next.filter(|_| more)))
            }
        }))
    }
}

#[allow(dead_code)]
#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let url = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "postgres://postgres@127.0.0.1:5432/test".to_owned());
    let backend = PostgresBackend::connect(&url, "send_sse_event").await?;
    let hub = sse_fanout::Hub::builder(backend).start().await?;
    let router = sse_fanout::SseRouter::new(hub.clone()).resolver(sse_fanout::DevSessions);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:8080").await?;
    println!("serving on 127.0.0.1:8080 with the PostgreSQL backend");
    sse_fanout::serve(listener, router, async {
        let _ = tokio::signal::ctrl_c().await;
    })
    .await?;
    hub.shutdown().await?;
    Ok(())
}
