//! The idle timeout of a connection served by hyper: closed once it has had no request in
//! progress (an open event stream is one) for [`ServeOptions::idle_timeout`](crate::ServeOptions).
//! HTTP/1 connections meet the head timeout first; this is what ends an HTTP/2 connection that
//! holds no stream but keeps answering the keep-alive PINGs.

use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use http_body::{Body, Frame, SizeHint};
use tokio::time::Instant;

/// Requests in progress on one connection, and since when it has had none.
#[derive(Debug)]
pub(crate) struct Activity {
    active: AtomicUsize,
    /// When the last request in progress ended (or the connection began); `None` while one runs.
    idle_since: Mutex<Option<Instant>>,
}

impl Activity {
    pub(crate) fn new() -> Arc<Activity> {
        Arc::new(Activity {
            active: AtomicUsize::new(0),
            idle_since: Mutex::new(Some(Instant::now())),
        })
    }

    /// A request begins; it is in progress until the returned guard (kept in its response body)
    /// is dropped.
    pub(crate) fn begin(self: &Arc<Self>) -> InProgress {
        let mut idle_since = self
            .idle_since
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        self.active.fetch_add(1, Ordering::AcqRel);
        *idle_since = None;
        InProgress(self.clone())
    }

    /// Completes once the connection has had no request in progress for `timeout`.
    pub(crate) async fn idle_for(&self, timeout: Duration) {
        loop {
            let since = *self
                .idle_since
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            match since {
                Some(since) if since.elapsed() >= timeout => return,
                Some(since) => tokio::time::sleep_until(since + timeout).await,
                None => tokio::time::sleep(timeout).await,
            }
        }
    }
}

/// A request in progress; its drop may start the connection's idle time.
#[derive(Debug)]
pub(crate) struct InProgress(Arc<Activity>);

impl Drop for InProgress {
    fn drop(&mut self) {
        let mut idle_since = self
            .0
            .idle_since
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if self.0.active.fetch_sub(1, Ordering::AcqRel) == 1 {
            *idle_since = Some(Instant::now());
        }
    }
}

/// A response body that keeps its request in progress until hyper has sent it, or dropped it.
#[derive(Debug)]
pub(crate) struct Tracked<B> {
    body: B,
    _in_progress: InProgress,
}

impl<B> Tracked<B> {
    pub(crate) fn new(body: B, in_progress: InProgress) -> Self {
        Tracked {
            body,
            _in_progress: in_progress,
        }
    }
}

impl<B: Body + Unpin> Body for Tracked<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn idle_only_without_requests_for_the_whole_timeout() {
        let activity = Activity::new();
        let timeout = Duration::from_secs(10);
        let request = activity.begin();
        let idle = tokio::spawn({
            let activity = activity.clone();
            async move { activity.idle_for(timeout).await }
        });
        tokio::time::sleep(Duration::from_secs(30)).await;
        assert!(!idle.is_finished(), "a request in progress keeps it busy");
        drop(request);
        tokio::time::sleep(Duration::from_secs(9)).await;
        assert!(!idle.is_finished());
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert!(idle.is_finished());
    }
}
