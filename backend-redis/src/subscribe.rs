//! The subscription: a connection of its own (on a cluster, one to each master that serves a
//! lane) that reconnects with backoff, subscribes the shared channel and the session routes
//! again, and reports the gap it may have left. One loop ([`run`]) drives both kinds, a server's
//! ([`Single`]) and a cluster's (`cluster::Sharded`), through [`Feed`].

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use futures_util::StreamExt;
use redis::aio::{PubSubSink, PubSubStream};
use sse_core::backend::Lane;
use sse_core::{BackendError, BackendStream, Received};
use tokio::sync::mpsc;

use crate::link::Subscriber;
use crate::{Inner, NAME, unavailable};

/// How far before its last sign of life a restored subscription's gap begins: the clocks of this
/// host and the Redis server may differ by this much.
pub(crate) const GAP_MARGIN: Duration = Duration::from_secs(5);

/// A subscribed connection, as [`run`] drives it.
pub(crate) trait Feed: Sized + Send + 'static {
    /// Where it connects again after a loss.
    type Target: Send + Sync + 'static;

    /// Connects to `target` and subscribes the shared channel.
    fn connect(
        inner: &Inner,
        target: &Self::Target,
    ) -> impl Future<Output = Result<Self, BackendError>> + Send;

    /// What the session routes subscribe on, and pings go through.
    fn subscriber(&self) -> Subscriber;

    /// The next envelope received and its lane, `Ok(None)` for anything else that arrived, or
    /// why the connection is lost.
    fn next(
        &mut self,
        inner: &Inner,
    ) -> impl Future<Output = Result<Option<(Lane, Bytes)>, String>> + Send;

    /// Whether an envelope received proves the whole feed alive (it has one connection); a feed
    /// of several connections is proven alive by pinging them all.
    const ONE_CONNECTION: bool;
}

/// A subscribed pub/sub connection to one server.
pub(crate) struct Single {
    sink: PubSubSink,
    stream: PubSubStream,
}

impl Feed for Single {
    type Target = redis::Client;

    async fn connect(inner: &Inner, client: &redis::Client) -> Result<Single, BackendError> {
        let timeout = inner.config.connect_timeout;
        let attempt = async {
            let pubsub = client.get_async_pubsub().await.map_err(unavailable)?;
            let (mut sink, stream) = pubsub.split();
            sink.subscribe(&inner.names.channel)
                .await
                .map_err(unavailable)?;
            Ok(Single { sink, stream })
        };
        tokio::time::timeout(timeout, attempt)
            .await
            .map_err(|_| BackendError::Timeout {
                backend: NAME,
                after: timeout,
            })?
    }

    fn subscriber(&self) -> Subscriber {
        Subscriber::Single(self.sink.clone())
    }

    async fn next(&mut self, _inner: &Inner) -> Result<Option<(Lane, Bytes)>, String> {
        match self.stream.next().await {
            Some(message) => Ok(Some((
                0,
                Bytes::copy_from_slice(message.get_payload_bytes()),
            ))),
            None => Err("connection closed".to_owned()),
        }
    }

    const ONE_CONNECTION: bool = true;
}

/// Subscribes at `target` and spawns [`run`]: the subscription's stream.
pub(crate) async fn subscribe<F: Feed>(
    inner: Arc<Inner>,
    target: F::Target,
) -> Result<BackendStream, BackendError> {
    let first = F::connect(&inner, &target).await?;
    let (tx, rx) = mpsc::channel(inner.config.buffer.max(1));
    tokio::spawn(run(inner, target, first, tx));
    Ok(sse_core::backend::channel_stream(rx))
}

/// Forwards what the subscription receives; connects and subscribes again when the connection
/// is lost, until the backend is closed or the hub stops listening.
async fn run<F: Feed>(inner: Arc<Inner>, target: F::Target, first: F, tx: mpsc::Sender<Received>) {
    let mut connection = Some(first);
    let mut backoff = Duration::from_millis(50);
    let mut state = inner.reconnects.subscription();
    // When this subscription last proved it was receiving (a message or a ping's answer).
    let mut alive_at = SystemTime::now();
    let mut lost = false;
    loop {
        let mut feed = match connection.take() {
            Some(feed) => feed,
            None => {
                tokio::select! {
                    () = inner.closed.cancelled() => return,
                    () = tx.closed() => return,
                    () = tokio::time::sleep(backoff) => {}
                }
                match F::connect(&inner, &target).await {
                    Ok(feed) => {
                        state.restored();
                        tracing::info!(channel = %inner.names.channel, "redis subscription restored");
                        backoff = Duration::from_millis(50);
                        feed
                    }
                    Err(error) => {
                        tracing::debug!(%error, "redis reconnect attempt failed");
                        backoff = (backoff * 2).min(inner.config.max_backoff);
                        continue;
                    }
                }
            }
        };
        if tx.is_closed() {
            return;
        }
        let mut subscriber = feed.subscriber();
        if let Err(error) = inner.resubscribe(&subscriber).await {
            tracing::warn!(%error, "subscribing the session routes again failed; reconnecting");
            state.lost();
            lost = true;
            inner.connection_lost();
            continue;
        }
        if std::mem::take(&mut lost) {
            // Subscribed again: what was published while this subscription was down is in the
            // history, which the hub reads for this gap.
            let since = alive_at.checked_sub(GAP_MARGIN).unwrap_or(alive_at);
            if tx.send(Received::Gap { since }).await.is_err() {
                return;
            }
        }
        let mut ping = tokio::time::interval(inner.config.ping_interval);
        ping.tick().await;
        let reason = loop {
            tokio::select! {
                () = inner.closed.cancelled() => return,
                // A subscription the hub let go of touches nothing shared any more.
                () = tx.closed() => return,
                next = feed.next(&inner) => match next {
                    Ok(Some((lane, envelope))) => {
                        let item = match lane {
                            0 => Received::Envelope(envelope),
                            lane => Received::OnLane { lane, envelope },
                        };
                        if tx.send(item).await.is_err() {
                            return; // nobody is listening any more
                        }
                        if F::ONE_CONNECTION {
                            alive_at = SystemTime::now();
                        }
                    }
                    Ok(None) => {}
                    Err(reason) => break reason,
                },
                _ = ping.tick() => {
                    let answer = tokio::time::timeout(
                        inner.config.response_timeout,
                        subscriber.ping(),
                    ).await;
                    match answer {
                        Ok(Ok(())) => alive_at = SystemTime::now(),
                        Ok(Err(error)) => break format!("ping failed: {error}"),
                        Err(_) => break "ping timed out".to_owned(),
                    }
                }
            }
        };
        state.lost();
        lost = true;
        inner.connection_lost();
        tracing::warn!(channel = %inner.names.channel, %reason, "redis subscription lost; reconnecting");
    }
}
