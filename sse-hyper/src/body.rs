//! [`SseBody`]: the one response body type of every endpoint.

use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures_core::Stream;
use http_body::{Body, Frame, SizeHint};
use sse_core::EventStream;
use tokio_util::sync::DropGuard;

/// A response body: either a whole buffer (JSON answers, pages) or an open event stream.
///
/// Implements [`http_body::Body`], so it works with hyper directly and with axum (which accepts
/// any `http::Response<B>` whose body yields `Bytes`).
#[derive(Debug)]
pub struct SseBody {
    kind: Kind,
    /// Dropped with the body: tells whoever waits that the body was let go.
    on_drop: Option<DropGuard>,
}

#[derive(Debug)]
enum Kind {
    Full(Option<Bytes>),
    Stream(Box<EventStream>),
}

impl SseBody {
    /// A body of one buffer.
    pub fn full(bytes: impl Into<Bytes>) -> Self {
        SseBody {
            kind: Kind::Full(Some(bytes.into())),
            on_drop: None,
        }
    }

    /// An empty body.
    pub fn empty() -> Self {
        SseBody {
            kind: Kind::Full(None),
            on_drop: None,
        }
    }

    /// A body that streams SSE frames until the stream ends.
    pub fn stream(stream: EventStream) -> Self {
        SseBody {
            kind: Kind::Stream(Box::new(stream)),
            on_drop: None,
        }
    }

    /// Cancels `guard`'s token when the body is dropped (sent, or let go by the HTTP layer).
    pub(crate) fn on_drop(&mut self, guard: DropGuard) {
        self.on_drop = Some(guard);
    }
}

impl SseBody {
    /// The next frame if one is ready now, without waiting or registering a waker (see
    /// [`EventStream::try_next`]).
    pub(crate) fn try_frame(&mut self) -> Option<Bytes> {
        match &mut self.kind {
            Kind::Full(_) => None,
            Kind::Stream(stream) => stream.try_next(),
        }
    }
}

impl Body for SseBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        match &mut self.kind {
            Kind::Full(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
            Kind::Stream(stream) => Pin::new(stream.as_mut())
                .poll_next(cx)
                .map(|frame| frame.map(|b| Ok(Frame::data(b)))),
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self.kind, Kind::Full(None))
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Full(Some(b)) => SizeHint::with_exact(b.len() as u64),
            Kind::Full(None) => SizeHint::with_exact(0),
            Kind::Stream(_) => SizeHint::default(),
        }
    }
}
