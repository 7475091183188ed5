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
//!
//! A connection that dies is made again: the publisher's at the next publish, the listener's by
//! its task, with backoff. The listener then reports [`Received::Gap`] and the hub reads what
//! went by meanwhile from the table: the backend never reads its history for itself.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::StreamExt;
use sse_fanout::backend::{Reconnects, channel_stream};
use sse_fanout::history::{BrokerHistory, HistoryStream, paged};
use sse_fanout::{BackendError, BackendStream, FanoutBackend, Health, Received, ReplayConfig};
use tokio::sync::{Mutex, MutexGuard, mpsc};
use tokio_postgres::{AsyncMessage, Client, NoTls, Notification};

const NAME: &str = "postgres";
/// Envelopes up to this size travel inside the notification.
const INLINE_MAX: usize = 7000;
/// Rows one history read fetches at a time.
const PAGE: i64 = 1000;
/// How far before its last sign of life a restored listener's gap begins (clocks differ).
const GAP_MARGIN: Duration = Duration::from_secs(5);
/// The longest wait between two attempts to listen again.
const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// Fans envelopes out with PostgreSQL LISTEN/NOTIFY on one channel.
#[derive(Debug, Clone)]
pub struct PostgresBackend {
    url: String,
    channel: String,
    /// Publishes and reads the history; made again when it died.
    publisher: Arc<Mutex<Client>>,
    /// The listeners' reconnects (health is down while one is reconnecting).
    reconnects: Arc<Reconnects>,
    /// How long rows stay in the history table.
    history: ReplayConfig,
}

fn unavailable(error: tokio_postgres::Error) -> BackendError {
    BackendError::unavailable(NAME, error)
}

/// A connection whose driver runs in a task; notifications go to `notify` when given, which is
/// dropped when the connection ends.
async fn connect(
    url: &str,
    notify: Option<mpsc::Sender<Notification>>,
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
        let client = connect(url, None).await?;
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
            reconnects: Arc::default(),
            history: ReplayConfig::default(),
        })
    }

    /// The publisher's connection, made again if it died.
    async fn publisher(&self) -> Result<MutexGuard<'_, Client>, BackendError> {
        let mut client = self.publisher.lock().await;
        if client.is_closed() {
            *client = connect(&self.url, None).await?;
        }
        Ok(client)
    }

    /// A connection that listens on the channel; LISTEN has taken effect when this returns.
    async fn listen(&self, notify: mpsc::Sender<Notification>) -> Result<Client, BackendError> {
        let client = connect(&self.url, Some(notify)).await?;
        client
            .batch_execute(&format!("LISTEN {}", self.channel))
            .await
            .map_err(unavailable)?;
        Ok(client)
    }
}

/// A notification's envelope: inline, or read from its row (`None` if it is gone or the read
/// failed); someone else's NOTIFY on the channel is handed on as it is (the hub counts it).
async fn envelope(client: &Client, notification: &Notification) -> Option<Bytes> {
    let payload = notification.payload();
    if let Some(inline) = payload.strip_prefix('i') {
        return Some(Bytes::copy_from_slice(inline.as_bytes()));
    }
    let Some(seq) = payload
        .strip_prefix('r')
        .and_then(|s| s.parse::<i64>().ok())
    else {
        return Some(Bytes::copy_from_slice(payload.as_bytes()));
    };
    match client
        .query_opt(
            "SELECT body FROM sse_fanout_history WHERE seq = $1",
            &[&seq],
        )
        .await
    {
        Ok(row) => row.map(|row| Bytes::from(row.get::<_, Vec<u8>>(0))),
        Err(error) => {
            // Lost with the connection: the gap reported after it covers this one.
            tracing::warn!(%error, "could not read a stored envelope");
            None
        }
    }
}

#[async_trait]
impl FanoutBackend for PostgresBackend {
    fn name(&self) -> &'static str {
        NAME
    }

    async fn publish(&self, envelope: Bytes) -> Result<(), BackendError> {
        let mut client = self.publisher().await?;
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
        let mut client = self.listen(notify_tx).await?;
        let (tx, rx) = mpsc::channel(1024);
        let backend = self.clone();
        tokio::spawn(async move {
            let mut state = backend.reconnects.subscription();
            loop {
                // When this listener last proved it was receiving.
                let mut alive_at = SystemTime::now();
                while let Some(notification) = notify_rx.recv().await {
                    alive_at = SystemTime::now();
                    if let Some(envelope) = envelope(&client, &notification).await
                        && tx.send(Received::Envelope(envelope)).await.is_err()
                    {
                        return; // nobody is listening any more
                    }
                }
                // The connection ended: listen again, then report what may have gone by.
                state.lost();
                tracing::warn!(channel = %backend.channel, "postgres listener lost; reconnecting");
                let mut backoff = Duration::from_millis(50);
                loop {
                    tokio::select! {
                        () = tx.closed() => return,
                        () = tokio::time::sleep(backoff) => {}
                    }
                    let (notify_tx, rx) = mpsc::channel(1024);
                    match backend.listen(notify_tx).await {
                        Ok(listening) => {
                            (client, notify_rx) = (listening, rx);
                            break;
                        }
                        Err(error) => {
                            tracing::debug!(%error, "listening again failed");
                            backoff = (backoff * 2).min(MAX_BACKOFF);
                        }
                    }
                }
                state.restored();
                let since = alive_at.checked_sub(GAP_MARGIN).unwrap_or(alive_at);
                if tx.send(Received::Gap { since }).await.is_err() {
                    return;
                }
            }
        });
        Ok(channel_stream(rx))
    }

    async fn health(&self) -> Health {
        if let Some(down) = self.reconnects.health() {
            return down;
        }
        let checked = match self.publisher().await {
            Ok(client) => client.simple_query("SELECT 1").await.map_err(unavailable),
            Err(error) => Err(error),
        };
        match checked {
            Ok(_) => Health::up(),
            Err(error) => Health::down(error.to_string()),
        }
    }

    fn reconnects(&self) -> u64 {
        self.reconnects.restored()
    }
}

#[async_trait]
impl BrokerHistory for PostgresBackend {
    async fn read_since(
        &self,
        since: std::time::SystemTime,
    ) -> Result<HistoryStream, BackendError> {
        drop(self.publisher().await?); // made again if it died
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
