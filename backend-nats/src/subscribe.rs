//! The subscription: one task forwards the shared subject's messages and the session routes',
//! per subject in the stream's order (the `order` module), and reports a gap where the
//! connection came back or the client dropped messages.

use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use futures_util::stream::{BoxStream, SelectAll};
use sse_core::Received;

use crate::order::{Sequencer, Stamp};

/// How far before its last sign of life the gap of a subscription that may have missed messages
/// begins (this host's and the server's clocks may differ by this much).
const GAP_MARGIN: Duration = Duration::from_secs(5);

/// What a route's subscription yields to the forwarding task.
pub(crate) enum Incoming {
    Message(async_nats::Message),
    /// The route was unsubscribed: its subject's chain is forgotten.
    Ended(String),
}

/// Forwards a subscription's messages, per subject in the stream's order (see the `order`
/// module); when messages may have been missed (a reconnect, a slow consumer), first lets out
/// what waited and reports a [gap](Received::Gap) from a little before the last message
/// received, which the hub reads from the history.
///
/// The session routes' subscriptions join the shared subject's here, as they are subscribed.
pub(crate) async fn forward(
    subscriber: async_nats::Subscriber,
    mut routes: tokio::sync::mpsc::Receiver<BoxStream<'static, Incoming>>,
    mut missed: tokio::sync::watch::Receiver<u64>,
    tx: tokio::sync::mpsc::Sender<Received>,
) {
    let mut alive_at = std::time::SystemTime::now();
    let mut subscriber = subscriber;
    let mut incoming: SelectAll<BoxStream<'static, Incoming>> = SelectAll::new();
    let mut order = Sequencer::default();
    let mut out = Vec::new();
    loop {
        let deadline = order.deadline();
        let message = tokio::select! {
            Some(route) = routes.recv() => {
                incoming.push(route);
                continue;
            }
            message = subscriber.next() => match message {
                Some(message) => message,
                None => return,
            },
            Some(item) = incoming.next(), if !incoming.is_empty() => match item {
                Incoming::Message(message) => message,
                Incoming::Ended(subject) => {
                    order.forget(&subject);
                    continue;
                }
            },
            () = sleep_until(deadline), if deadline.is_some() => {
                if order.expire(tokio::time::Instant::now(), &mut out) {
                    // A message before those let out now never came: the hub reads it (and
                    // them) from the history first.
                    let since = alive_at.checked_sub(GAP_MARGIN).unwrap_or(alive_at);
                    if tx.send(Received::Gap { since }).await.is_err() {
                        return;
                    }
                }
                if !send_all(&tx, &mut out).await {
                    return;
                }
                continue;
            }
            changed = missed.changed() => {
                if changed.is_err() {
                    return;
                }
                order.gap(&mut out);
                if !send_all(&tx, &mut out).await {
                    return;
                }
                // The hub reads what this subscription missed from the history.
                let since = alive_at.checked_sub(GAP_MARGIN).unwrap_or(alive_at);
                if tx.send(Received::Gap { since }).await.is_err() {
                    return;
                }
                continue;
            }
            () = tx.closed() => return,
        };
        let stamp = Stamp::of(message.headers.as_ref());
        let now = tokio::time::Instant::now();
        order.push(
            message.subject.as_str(),
            stamp,
            message.payload,
            now,
            &mut out,
        );
        if !send_all(&tx, &mut out).await {
            return;
        }
        alive_at = std::time::SystemTime::now();
    }
}

/// Sleeps until `deadline` (forever without one; the branch is off then).
async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

/// Sends and empties `out`; `false` when the hub is gone.
async fn send_all(tx: &tokio::sync::mpsc::Sender<Received>, out: &mut Vec<Bytes>) -> bool {
    for payload in out.drain(..) {
        if tx.send(Received::Envelope(payload)).await.is_err() {
            return false;
        }
    }
    true
}
