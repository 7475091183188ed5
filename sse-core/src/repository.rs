//! Where an instance keeps its open streams: the [`EmitterRepository`] trait and the parts every
//! implementation shares ([`Subscription`], [`EventFilter`], [`Sink`], [`Emitter`]).
//!
//! Delivery never waits for a client: every stream has a bounded queue; when a frame does not fit,
//! the stream is closed with [`CloseReason::SlowClient`] (the client reconnects) instead of stalling
//! the others or growing memory.

use std::collections::VecDeque;
use std::fmt;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use tokio_util::sync::CancellationToken;

use crate::encode::{FieldError, check_event_name};

/// Which events a stream asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EventFilter {
    /// Every event name (`eventName=*`).
    Any,
    /// Only these event names.
    Names(Box<[Box<str>]>),
}

/// Why a list of event names was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FilterError {
    /// No event name at all.
    #[error("at least one event name is required")]
    Missing,
    /// More names than allowed.
    #[error("too many event names: {count} (at most {max})")]
    TooMany {
        /// Names given.
        count: usize,
        /// The limit.
        max: usize,
    },
    /// A name longer than allowed.
    #[error("event name too long: {len} bytes (at most {max})")]
    TooLong {
        /// The name's length in bytes.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A name that is not a valid SSE event name.
    #[error(transparent)]
    Invalid(#[from] FieldError),
}

impl EventFilter {
    /// At most this many names per stream.
    pub const MAX_NAMES: usize = 64;
    /// At most this many bytes per name.
    pub const MAX_NAME_LEN: usize = 256;

    /// Parses a comma-separated list (`a,b`); `*` means every name. Duplicates collapse.
    ///
    /// ```
    /// use sse_core::EventFilter;
    /// let f = EventFilter::parse("orders, invoices").unwrap();
    /// assert!(f.matches("orders") && f.matches("invoices") && !f.matches("other"));
    /// assert_eq!(EventFilter::parse("*").unwrap(), EventFilter::Any);
    /// assert!(EventFilter::parse(" , ").is_err());
    /// ```
    pub fn parse(list: &str) -> Result<EventFilter, FilterError> {
        Self::from_names(list.split(','))
    }

    /// Builds a filter from names; `*` among them means every name.
    pub fn from_names<'a>(names: impl IntoIterator<Item = &'a str>) -> Result<Self, FilterError> {
        Self::from_names_limited(names, Self::MAX_NAMES, Self::MAX_NAME_LEN)
    }

    /// Builds a filter from at most `max_names` names of at most `max_len` bytes each.
    pub fn from_names_limited<'a>(
        names: impl IntoIterator<Item = &'a str>,
        max_names: usize,
        max_len: usize,
    ) -> Result<Self, FilterError> {
        let mut out: Vec<Box<str>> = Vec::new();
        for name in names {
            let name = name.trim();
            if name.is_empty() {
                continue;
            }
            if name == "*" {
                return Ok(EventFilter::Any);
            }
            if name.len() > max_len {
                return Err(FilterError::TooLong {
                    len: name.len(),
                    max: max_len,
                });
            }
            check_event_name(name)?;
            if !out.iter().any(|n| &**n == name) {
                out.push(name.into());
            }
            if out.len() > max_names {
                return Err(FilterError::TooMany {
                    count: out.len(),
                    max: max_names,
                });
            }
        }
        if out.is_empty() {
            return Err(FilterError::Missing);
        }
        Ok(EventFilter::Names(out.into_boxed_slice()))
    }

    /// Whether an event of this name goes to the stream.
    pub fn matches(&self, event_name: &str) -> bool {
        match self {
            EventFilter::Any => true,
            EventFilter::Names(names) => names.iter().any(|n| &**n == event_name),
        }
    }
}

/// Who an event is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target<'a> {
    /// The streams of one session.
    Session(&'a str),
    /// Every stream.
    Broadcast,
}

/// Why a stream ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum CloseReason {
    /// The client went away.
    ClientGone,
    /// The emitter timeout passed; the client reconnects.
    Timeout,
    /// The stream's queue was full: the client did not keep up.
    SlowClient,
    /// The instance is shutting down.
    Shutdown,
    /// The session was disconnected (see [`crate::disconnect`]).
    Disconnected,
}

impl CloseReason {
    /// A short lowercase name, for logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            CloseReason::ClientGone => "client_gone",
            CloseReason::Timeout => "timeout",
            CloseReason::SlowClient => "slow_client",
            CloseReason::Shutdown => "shutdown",
            CloseReason::Disconnected => "disconnected",
        }
    }

    fn from_u8(v: u8) -> Option<Self> {
        Some(match v {
            1 => CloseReason::ClientGone,
            2 => CloseReason::Timeout,
            3 => CloseReason::SlowClient,
            4 => CloseReason::Shutdown,
            5 => CloseReason::Disconnected,
            _ => return None,
        })
    }

    fn to_u8(self) -> u8 {
        match self {
            CloseReason::ClientGone => 1,
            CloseReason::Timeout => 2,
            CloseReason::SlowClient => 3,
            CloseReason::Shutdown => 4,
            CloseReason::Disconnected => 5,
        }
    }
}

/// What a stream registers with: its session, its event names and its queue.
#[derive(Debug, Clone)]
pub struct Subscription {
    /// The stream's session; `None` receives broadcasts only.
    pub session_id: Option<Arc<str>>,
    /// The event names it receives.
    pub events: EventFilter,
    /// Frames that may wait for the client before it counts as slow (at least 1).
    pub queue_size: usize,
    /// Bytes that may wait for the client before it counts as slow: a frame that would take the
    /// queue past it closes the stream, unless the queue is empty (one frame of any size may
    /// wait). Default: no bound beyond `queue_size`.
    pub max_queued_bytes: usize,
    /// Cancelled when the stream is closed as slow: lets the HTTP layer drop a connection whose
    /// socket no longer drains, so its body is not left waiting to be polled.
    pub abort_on_overflow: Option<CancellationToken>,
    /// How long the stream may stay open at most, emitter timeout or not: the time left until
    /// the client's credentials expire (the hub sets it from an auth callout's `expiresAt`; a
    /// JWT's `exp` does not end a stream). The client reconnects after it and is asked for them
    /// again.
    pub lifetime: Option<std::time::Duration>,
}

impl Subscription {
    /// A subscription with a queue of `queue_size` frames (and no bound in bytes).
    pub fn new(session_id: Option<Arc<str>>, events: EventFilter, queue_size: usize) -> Self {
        Subscription {
            session_id,
            events,
            queue_size,
            max_queued_bytes: usize::MAX,
            abort_on_overflow: None,
            lifetime: None,
        }
    }
}

/// What a stream's two ends share: its bounded queue, and whether, and why, it was closed.
///
/// The queue holds only what is waiting (an idle stream's queue allocates nothing), which matters
/// when an instance holds tens of thousands of mostly idle streams.
#[derive(Debug)]
struct Shared {
    queue: Mutex<Queue>,
    capacity: usize,
    max_bytes: usize,
    reason: AtomicU8,
    abort_on_overflow: Option<CancellationToken>,
    /// When the stream opened, in milliseconds since the Unix epoch.
    opened: u64,
}

#[derive(Debug, Default)]
struct Queue {
    frames: VecDeque<Bytes>,
    /// The bytes of `frames`.
    bytes: usize,
    /// The repository let go of the stream: it ends once `frames` is empty.
    sink_gone: bool,
    /// The stream went away: nothing more is queued.
    emitter_gone: bool,
    waker: Option<Waker>,
}

impl Shared {
    fn queue(&self) -> MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn close(&self, reason: CloseReason) -> bool {
        let first = self
            .reason
            .compare_exchange(0, reason.to_u8(), Ordering::AcqRel, Ordering::Acquire)
            .is_ok();
        if first && reason == CloseReason::SlowClient {
            // The client will not read what waits: its memory goes now, not when the client
            // (or its HTTP/2 flow-control window) finally lets the stream be polled. It reconnects
            // with `Last-Event-ID` and gets these events replayed.
            let waker = {
                let mut queue = self.queue();
                queue.frames = VecDeque::new();
                queue.bytes = 0;
                queue.waker.take()
            };
            if let Some(waker) = waker {
                waker.wake();
            }
            if let Some(token) = &self.abort_on_overflow {
                token.cancel();
            }
        }
        first
    }

    fn reason(&self) -> Option<CloseReason> {
        CloseReason::from_u8(self.reason.load(Ordering::Acquire))
    }
}

/// What a repository keeps of a stream: the sending end of its bounded queue.
#[derive(Debug)]
pub struct Sink {
    shared: Arc<Shared>,
}

/// The outcome of [`Sink::offer`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Offer {
    /// The frame is queued for the client.
    Queued,
    /// The queue is full: the client is too slow. Remove the sink and [`close`](Sink::close) it.
    Full,
    /// The stream has ended already; remove the sink.
    Closed,
}

impl Sink {
    /// Queues a frame without waiting.
    pub fn offer(&self, frame: &Bytes) -> Offer {
        let waker = {
            let mut queue = self.shared.queue();
            if queue.emitter_gone {
                return Offer::Closed;
            }
            let over_bytes =
                queue.bytes > 0 && queue.bytes.saturating_add(frame.len()) > self.shared.max_bytes;
            if queue.frames.len() >= self.shared.capacity || over_bytes {
                return Offer::Full;
            }
            queue.bytes += frame.len();
            queue.frames.push_back(frame.clone());
            queue.waker.take()
        };
        if let Some(waker) = waker {
            waker.wake();
        }
        Offer::Queued
    }

    /// Records why the stream is closed (the first reason wins). The stream ends once the repository
    /// drops this sink and the client has read what was queued before.
    pub fn close(&self, reason: CloseReason) -> bool {
        self.shared.close(reason)
    }

    /// Closes the stream with `reason` after a last frame, queued whatever the queue's bounds
    /// (it is one frame, and nothing follows it). The repository drops the sink afterwards.
    pub fn finish(&self, last: Option<&Bytes>, reason: CloseReason) {
        if !self.shared.close(reason) {
            return;
        }
        let waker = {
            let mut queue = self.shared.queue();
            if let Some(frame) = last.filter(|_| !queue.emitter_gone) {
                queue.bytes += frame.len();
                queue.frames.push_back(frame.clone());
            }
            queue.waker.take()
        };
        if let Some(waker) = waker {
            waker.wake();
        }
    }

    /// When the stream opened, in milliseconds since the Unix epoch.
    pub fn opened_millis(&self) -> u64 {
        self.shared.opened
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        let waker = {
            let mut queue = self.shared.queue();
            queue.sink_gone = true;
            queue.waker.take()
        };
        if let Some(waker) = waker {
            waker.wake();
        }
    }
}

/// The receiving end of a stream's queue, as a repository hands it out.
#[derive(Debug)]
pub struct Emitter {
    shared: Arc<Shared>,
    _registration: Registration,
}

impl Emitter {
    /// A bounded queue for `subscription`: the [`Sink`] the repository keeps and a function that
    /// turns the receiving end into an [`Emitter`] whose drop runs `unregister`.
    pub fn channel(subscription: &Subscription) -> (Sink, EmitterParts) {
        let shared = Arc::new(Shared {
            queue: Mutex::default(),
            capacity: subscription.queue_size.max(1),
            max_bytes: subscription.max_queued_bytes,
            reason: AtomicU8::new(0),
            abort_on_overflow: subscription.abort_on_overflow.clone(),
            opened: crate::history::unix_millis(std::time::SystemTime::now()),
        });
        (
            Sink {
                shared: shared.clone(),
            },
            EmitterParts { shared },
        )
    }

    /// Waits for the next frame; `None` once the repository has dropped the sink and the queue is empty.
    pub async fn recv(&mut self) -> Option<Bytes> {
        std::future::poll_fn(|cx| self.poll_recv(cx)).await
    }

    /// Polls for the next frame (see [`recv`](Self::recv)).
    pub fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Option<Bytes>> {
        let mut queue = self.shared.queue();
        if let Some(frame) = queue.frames.pop_front() {
            queue.bytes -= frame.len();
            if queue.frames.is_empty() && queue.frames.capacity() > 16 {
                // A burst is over: give its memory back.
                queue.frames = VecDeque::new();
            }
            return Poll::Ready(Some(frame));
        }
        if queue.sink_gone {
            return Poll::Ready(None);
        }
        if !queue
            .waker
            .as_ref()
            .is_some_and(|w| w.will_wake(cx.waker()))
        {
            queue.waker = Some(cx.waker().clone());
        }
        Poll::Pending
    }

    /// The next frame if one is waiting; never waits (and never registers a waker).
    pub fn try_recv(&mut self) -> Option<Bytes> {
        let mut queue = self.shared.queue();
        let frame = queue.frames.pop_front()?;
        queue.bytes -= frame.len();
        Some(frame)
    }

    /// Frames waiting for the client.
    pub fn queued(&self) -> usize {
        self.shared.queue().frames.len()
    }

    /// Bytes of the frames waiting for the client.
    pub fn queued_bytes(&self) -> usize {
        self.shared.queue().bytes
    }

    /// Why the stream was closed, if it was.
    pub fn close_reason(&self) -> Option<CloseReason> {
        self.shared.reason()
    }

    /// Records a close reason from the consuming side (timeout, client gone); the first one wins.
    pub fn close(&self, reason: CloseReason) -> bool {
        self.shared.close(reason)
    }
}

impl Drop for Emitter {
    fn drop(&mut self) {
        let mut queue = self.shared.queue();
        queue.emitter_gone = true;
        queue.frames = VecDeque::new();
        queue.bytes = 0;
        queue.waker = None;
    }
}

/// The receiving half from [`Emitter::channel`], before it is registered.
#[derive(Debug)]
pub struct EmitterParts {
    shared: Arc<Shared>,
}

impl EmitterParts {
    /// The emitter; `unregister` runs when it is dropped.
    pub fn into_emitter(self, unregister: impl FnOnce() + Send + Sync + 'static) -> Emitter {
        Emitter {
            shared: self.shared,
            _registration: Registration(Some(Box::new(unregister))),
        }
    }
}

struct Registration(Option<Box<dyn FnOnce() + Send + Sync>>);

impl Drop for Registration {
    fn drop(&mut self) {
        if let Some(unregister) = self.0.take() {
            unregister();
        }
    }
}

impl fmt::Debug for Registration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Registration")
    }
}

/// What one delivery did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DeliveryReport {
    /// Streams the frame was queued for.
    pub queued: usize,
    /// Streams closed because their queue was full.
    pub closed_slow: usize,
}

/// The open streams of one instance.
///
/// Implementations must be thread-safe without a global lock on the delivery path, and must never
/// wait for a client inside [`deliver`](Self::deliver).
pub trait EmitterRepository: Send + Sync + fmt::Debug + 'static {
    /// Registers a stream; dropping the returned [`Emitter`] unregisters it.
    fn register(&self, subscription: Subscription) -> Emitter;

    /// Queues `frame` for every stream of `target` whose filter matches `event_name`. Streams whose
    /// queue is full are removed and closed as [`CloseReason::SlowClient`].
    fn deliver(&self, target: Target<'_>, event_name: &str, frame: &Bytes) -> DeliveryReport;

    /// Open streams.
    fn count(&self) -> usize;

    /// Open streams of one session.
    fn count_session(&self, session: &str) -> usize;

    /// Closes every stream with `reason`; each ends after the client has read what was queued.
    fn close_all(&self, reason: CloseReason);

    /// Ends the streams of `session` that opened before `opened_before` (milliseconds since the
    /// Unix epoch, see [`Sink::opened_millis`]) as [`CloseReason::Disconnected`], each after
    /// `goodbye` (whatever its filter; see [`Sink::finish`]); returns how many.
    fn close_session(&self, session: &str, opened_before: u64, goodbye: Option<&Bytes>) -> usize;
}

impl<T: EmitterRepository + ?Sized> EmitterRepository for Arc<T> {
    fn register(&self, subscription: Subscription) -> Emitter {
        (**self).register(subscription)
    }
    fn deliver(&self, target: Target<'_>, event_name: &str, frame: &Bytes) -> DeliveryReport {
        (**self).deliver(target, event_name, frame)
    }
    fn count(&self) -> usize {
        (**self).count()
    }
    fn count_session(&self, session: &str) -> usize {
        (**self).count_session(session)
    }
    fn close_all(&self, reason: CloseReason) {
        (**self).close_all(reason)
    }
    fn close_session(&self, session: &str, opened_before: u64, goodbye: Option<&Bytes>) -> usize {
        (**self).close_session(session, opened_before, goodbye)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn filter_parsing() {
        assert_eq!(
            EventFilter::parse("a,b,a").unwrap(),
            EventFilter::Names(vec!["a".into(), "b".into()].into_boxed_slice())
        );
        assert_eq!(EventFilter::parse("a,*").unwrap(), EventFilter::Any);
        assert_eq!(EventFilter::parse(""), Err(FilterError::Missing));
        assert!(matches!(
            EventFilter::parse("a\rb"),
            Err(FilterError::Invalid(_))
        ));
        let many = (0..65).map(|i| i.to_string()).collect::<Vec<_>>().join(",");
        assert!(matches!(
            EventFilter::parse(&many),
            Err(FilterError::TooMany { .. })
        ));
        assert!(matches!(
            EventFilter::parse(&"x".repeat(257)),
            Err(FilterError::TooLong { .. })
        ));
    }

    #[test]
    fn first_close_reason_wins_and_slow_close_aborts() {
        let token = CancellationToken::new();
        let mut sub = Subscription::new(None, EventFilter::Any, 1);
        sub.abort_on_overflow = Some(token.clone());
        let (sink, parts) = Emitter::channel(&sub);
        let emitter = parts.into_emitter(|| {});
        assert!(sink.close(CloseReason::SlowClient));
        assert!(!emitter.close(CloseReason::Timeout));
        assert_eq!(emitter.close_reason(), Some(CloseReason::SlowClient));
        assert!(token.is_cancelled());
    }

    #[test]
    fn offer_reports_full_and_closed() {
        let (sink, parts) = Emitter::channel(&Subscription::new(None, EventFilter::Any, 1));
        let emitter = parts.into_emitter(|| {});
        let frame = Bytes::from_static(b"data: x\n\n");
        assert_eq!(sink.offer(&frame), Offer::Queued);
        assert_eq!(sink.offer(&frame), Offer::Full);
        drop(emitter);
        assert_eq!(sink.offer(&frame), Offer::Closed);
    }
}
