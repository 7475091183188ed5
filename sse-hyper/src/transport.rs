//! The server's transport policy for a stream closed as too slow. On HTTP/1 the connection is
//! the stream, so it is dropped at once ([`ConnectionAbort`]); on HTTP/2 other streams share it,
//! so it is dropped only if the closed stream stays unread ([`UNREAD_STREAM_GRACE`]).

use http::Version;
use http::request::Parts;
use sse_core::Subscription;
use tokio_util::sync::CancellationToken;

use crate::body::SseBody;

/// Handed to each request by [`serve`](crate::serve) for HTTP/1 connections: cancelling it drops the
/// connection. A stream closed as too slow cancels it, since its body would otherwise wait for a
/// socket that no longer drains.
#[derive(Debug, Clone)]
pub struct ConnectionAbort(pub CancellationToken);

/// How one stream's request lets go of its connection when the stream is closed as slow.
#[derive(Debug)]
pub(crate) struct SlowStream {
    /// HTTP/2: the stream's overflow signal and its connection's abort.
    unread: Option<(CancellationToken, CancellationToken)>,
}

impl SlowStream {
    /// Sets what `subscription` cancels when it overflows, by the request's HTTP version.
    pub(crate) fn arm(request: &Parts, subscription: &mut Subscription) -> SlowStream {
        let connection = request.extensions.get::<ConnectionAbort>();
        if request.version < Version::HTTP_2 {
            subscription.abort_on_overflow = connection.map(|abort| abort.0.clone());
            return SlowStream { unread: None };
        }
        let unread = connection.map(|connection| {
            let overflow = CancellationToken::new();
            subscription.abort_on_overflow = Some(overflow.clone());
            (overflow, connection.0.clone())
        });
        SlowStream { unread }
    }

    /// Watches the stream's `body` (HTTP/2): see [`release_unread_stream`].
    pub(crate) fn watch(self, body: &mut SseBody) {
        if let Some((overflow, connection)) = self.unread {
            let released = CancellationToken::new();
            body.on_drop(released.clone().drop_guard());
            tokio::spawn(release_unread_stream(overflow, released, connection));
        }
    }
}

/// How long an HTTP/2 stream closed as slow may stay unread before its connection is dropped.
pub(crate) const UNREAD_STREAM_GRACE: std::time::Duration = std::time::Duration::from_secs(10);

/// An HTTP/2 stream closed as slow: its queue is let go at once, but hyper polls its body (and
/// so ends it) only once the client opens its flow-control window, and gives no handle to reset
/// one stream. If the body is still held [`UNREAD_STREAM_GRACE`] later, the connection is
/// dropped: every stream on it ends, and their clients come back with `Last-Event-ID`.
async fn release_unread_stream(
    overflow: CancellationToken,
    released: CancellationToken,
    connection: CancellationToken,
) {
    tokio::select! {
        () = released.cancelled() => return,
        () = overflow.cancelled() => {}
    }
    tokio::select! {
        () = released.cancelled() => {}
        () = tokio::time::sleep(UNREAD_STREAM_GRACE) => {
            tracing::debug!("an HTTP/2 stream closed as slow is still unread: dropping its connection");
            connection.cancel();
        }
    }
}
