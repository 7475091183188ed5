//! [`EventStream`]: one client's stream of SSE frames, with heartbeats and the emitter timeout.

use std::collections::{HashSet, VecDeque};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures_core::Stream;
use tokio::time::{Instant, Sleep};

use crate::repository::{CloseReason, Emitter};
use crate::route::RouteLease;
use crate::route::cursor::Cursors;
use crate::stats::Stats;

/// The frames one client receives: an opening comment sent at once (so that proxies and clients see
/// the stream open) with the `retry:` delay, any replayed events, then its live events, a heartbeat comment whenever it has been idle for the
/// heartbeat interval, until the emitter timeout, a slow-client close, shutdown (which sends a
/// last short `retry:` first), or the client going away (dropping the stream unregisters it).
///
/// Framework-neutral: hand it to any HTTP server as a body of `Bytes` chunks.
#[derive(Debug)]
pub struct EventStream {
    /// The opening comment, then replayed events: sent before anything live.
    prelude: VecDeque<Bytes>,
    /// The last frame of a stream ended by shutdown: a short `retry:`.
    farewell: Option<Bytes>,
    emitter: Emitter,
    heartbeat: Option<Heartbeat>,
    deadline: Option<Pin<Box<Sleep>>>,
    stats: Arc<Stats>,
    ended: bool,
    /// The stream's hold on its session's route, in [routed delivery](crate::route).
    _route: Option<Box<RouteLease>>,
    /// The stream's part in its session's [presence](crate::presence), when tracked.
    _presence: Option<Box<crate::presence::Lease>>,
    /// Replayed events that may still arrive live, in a resume from the broker's history.
    replayed: Option<Box<Replayed>>,
    /// In session routing, a session's stream: its place in the routed source, written into
    /// broadcasts' ids (see [`crate::route::cursor`]).
    cursors: Option<Box<Cursors>>,
}

/// How long a replayed event may still arrive live: longer than any envelope spends between
/// its publisher and this instance, and than a broker outage the catch-up after it follows
/// (the catch-up tries for 30 s).
const REPLAYED_WINDOW: Duration = Duration::from_secs(60);

/// The ids of events a stream replayed from a read of the broker's history that this
/// instance's log did not hold yet: published while the read ran, they may arrive live after
/// the stream opened, and such a live copy is dropped, once, within [`REPLAYED_WINDOW`]. (Such
/// reads serve session routing, where a frame's id is a cursor whose event part is the id,
/// escaped: the set holds escaped ids.)
#[derive(Debug)]
struct Replayed {
    ids: HashSet<Box<[u8]>>,
    until: Instant,
}

impl Replayed {
    /// Whether `frame` is the live copy of a replayed event (forgotten once seen).
    fn takes(&mut self, frame: &[u8]) -> bool {
        frame
            .strip_prefix(b"id: ")
            .and_then(|rest| rest.split(|&b| b == b'\n').next())
            .is_some_and(|field| self.ids.remove(crate::route::cursor::event_part(field)))
    }
}

/// A heartbeat goes out when nothing did for `every`. The timer is not moved for every frame
/// (that would touch the timer wheel once per event per stream): it fires, and is put back to
/// `last_sent + every` if a frame went out meanwhile.
#[derive(Debug)]
struct Heartbeat {
    every: Duration,
    sleep: Pin<Box<Sleep>>,
    last_sent: Instant,
}

/// The heartbeat frame, built once: a comment line alone, with no blank line after it, so that
/// no client, however lax, takes it for an (empty) event.
const HEARTBEAT: Bytes = Bytes::from_static(b": heartbeat\n");

impl EventStream {
    pub(crate) fn new(
        emitter: Emitter,
        prelude: Vec<Bytes>,
        farewell: Bytes,
        heartbeat: Option<Duration>,
        timeout: Option<Duration>,
        stats: Arc<Stats>,
        route: Option<RouteLease>,
    ) -> Self {
        let now = Instant::now();
        stats
            .streams_held
            .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        EventStream {
            prelude: prelude.into(),
            farewell: Some(farewell),
            emitter,
            heartbeat: heartbeat.map(|every| Heartbeat {
                every,
                sleep: Box::pin(tokio::time::sleep_until(now + every)),
                last_sent: now,
            }),
            deadline: timeout.map(|t| Box::pin(tokio::time::sleep_until(now + t))),
            stats,
            ended: false,
            _route: route.map(Box::new),
            _presence: None,
            replayed: None,
            cursors: None,
        }
    }

    /// Counts the stream in its session's presence until it is dropped.
    pub(crate) fn hold(&mut self, presence: crate::presence::Lease) {
        self._presence = Some(Box::new(presence));
    }

    /// Writes the stream's cursors into its frames' ids (see [`Cursors`]).
    pub(crate) fn write_cursors(&mut self, cursors: Cursors) {
        self.cursors = Some(Box::new(cursors));
    }

    /// A frame as this stream writes it.
    fn out(&mut self, frame: Bytes) -> Bytes {
        match &mut self.cursors {
            Some(cursors) => cursors.write(frame),
            None => frame,
        }
    }

    /// Drops the live copies of these replayed events (see [`Replayed`]).
    pub(crate) fn skip_replayed(&mut self, ids: Vec<Box<str>>) {
        if !ids.is_empty() {
            self.replayed = Some(Box::new(Replayed {
                ids: ids
                    .into_iter()
                    .map(|id| {
                        let escaped = crate::route::cursor::escape(&id).into_owned();
                        escaped.into_bytes().into_boxed_slice()
                    })
                    .collect(),
                until: Instant::now() + REPLAYED_WINDOW,
            }));
        }
    }

    /// Whether a live frame was replayed already; lets go of the ids once their window ended
    /// or all were seen.
    fn replayed_already(&mut self, frame: &[u8]) -> bool {
        let Some(replayed) = &mut self.replayed else {
            return false;
        };
        if Instant::now() > replayed.until {
            self.replayed = None;
            return false;
        }
        let taken = replayed.takes(frame);
        if replayed.ids.is_empty() {
            self.replayed = None;
        }
        taken
    }

    /// Why the stream ended, once it has.
    pub fn close_reason(&self) -> Option<CloseReason> {
        self.emitter.close_reason()
    }

    /// The next frame if one is ready now (the opening and replayed frames, then queued events);
    /// never waits and never registers a waker. Lets an HTTP layer write several frames at once.
    /// Heartbeats and the end of the stream come only through polling.
    pub fn try_next(&mut self) -> Option<Bytes> {
        if self.ended {
            return None;
        }
        if let Some(frame) = self.pop_prelude() {
            return Some(self.out(frame));
        }
        loop {
            let frame = self.emitter.try_recv()?;
            if !self.replayed_already(&frame) {
                self.sent_frame();
                return Some(self.out(frame));
            }
        }
    }

    fn pop_prelude(&mut self) -> Option<Bytes> {
        let frame = self.prelude.pop_front()?;
        if self.prelude.is_empty() {
            // Opened and replayed: the prelude's memory is not needed again.
            self.prelude = VecDeque::new();
        }
        Some(frame)
    }

    fn sent_frame(&mut self) {
        if let Some(hb) = &mut self.heartbeat {
            hb.last_sent = Instant::now();
        }
    }

    fn end(&mut self, reason: CloseReason) -> Poll<Option<Bytes>> {
        self.emitter.close(reason);
        self.ended = true;
        Poll::Ready(None)
    }
}

impl Stream for EventStream {
    type Item = Bytes;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Bytes>> {
        let this = &mut *self;
        if this.ended {
            return Poll::Ready(None);
        }
        if let Some(frame) = this.pop_prelude() {
            return Poll::Ready(Some(this.out(frame)));
        }
        let live = loop {
            match this.emitter.poll_recv(cx) {
                Poll::Ready(Some(frame)) if this.replayed_already(&frame) => {}
                live => break live,
            }
        };
        match live {
            Poll::Ready(Some(frame)) => {
                this.sent_frame();
                return Poll::Ready(Some(this.out(frame)));
            }
            // The repository let go of the stream: slow client or shutdown, already recorded.
            Poll::Ready(None) => {
                let reason = this.emitter.close_reason().unwrap_or(CloseReason::Shutdown);
                if reason == CloseReason::Shutdown
                    && let Some(farewell) = this.farewell.take()
                {
                    return Poll::Ready(Some(farewell));
                }
                return this.end(reason);
            }
            Poll::Pending => {}
        }
        if let Some(deadline) = &mut this.deadline
            && deadline.as_mut().poll(cx).is_ready()
        {
            return this.end(CloseReason::Timeout);
        }
        if let Some(hb) = &mut this.heartbeat {
            while hb.sleep.as_mut().poll(cx).is_ready() {
                let now = Instant::now();
                let due = hb.last_sent + hb.every;
                if due > now {
                    // A frame went out since the timer was set: wait for a whole idle interval.
                    hb.sleep.as_mut().reset(due);
                    continue;
                }
                hb.last_sent = now;
                hb.sleep.as_mut().reset(now + hb.every);
                // Register the new deadline's waker.
                let _ = hb.sleep.as_mut().poll(cx);
                return Poll::Ready(Some(HEARTBEAT));
            }
        }
        Poll::Pending
    }
}

impl Drop for EventStream {
    fn drop(&mut self) {
        // A stream dropped before it ended was dropped by the HTTP layer: the client went away.
        self.emitter.close(CloseReason::ClientGone);
        if let Some(reason) = self.emitter.close_reason() {
            self.stats.closed(reason);
        }
        self.stats
            .streams_held
            .fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
    }
}
