//! The default [`EmitterRepository`]: streams in a sharded in-memory map.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};

use bytes::Bytes;
use dashmap::DashMap;

use crate::repository::{
    CloseReason, DeliveryReport, Emitter, EmitterRepository, EventFilter, Offer, Sink,
    Subscription, Target,
};

mod listeners;

use listeners::Listeners;

/// Streams of one instance, kept in memory: a sharded map from session to its streams (so
/// delivering to one session locks one shard, briefly, for reading), a sharded map of the
/// session-less streams, and an index of every stream by the event names it listens to (so a
/// broadcast visits the streams it goes to, not every stream of the instance).
///
/// ```
/// use std::sync::Arc;
/// use bytes::Bytes;
/// use sse_core::{EmitterRepository, EventFilter, InMemoryEmitterRepository, Subscription, Target};
///
/// let repo = InMemoryEmitterRepository::new();
/// let emitter = repo.register(Subscription::new(Some(Arc::from("s1")), EventFilter::parse("news").unwrap(), 8));
/// let report = repo.deliver(Target::Session("s1"), "news", &Bytes::from_static(b"data: hi\n\n"));
/// assert_eq!(report.queued, 1);
/// drop(emitter);
/// assert_eq!(repo.count(), 0);
/// ```
#[derive(Debug, Clone, Default)]
pub struct InMemoryEmitterRepository {
    inner: Arc<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    sessions: DashMap<Arc<str>, Vec<Arc<Entry>>>,
    anonymous: DashMap<u64, Arc<Entry>>,
    listeners: Listeners,
    next_id: AtomicU64,
    count: AtomicUsize,
}

/// One stream, shared by its session's list (or the session-less map) and the index by name.
#[derive(Debug)]
struct Entry {
    id: u64,
    session: Option<Arc<str>>,
    events: EventFilter,
    sink: Sink,
}

impl InMemoryEmitterRepository {
    /// An empty repository.
    pub fn new() -> Self {
        Self::default()
    }
}

impl Inner {
    fn remove(&self, session: Option<&str>, id: u64) -> Option<Arc<Entry>> {
        let removed = match session {
            None => self.anonymous.remove(&id).map(|(_, entry)| entry),
            Some(session) => {
                let mut removed = None;
                self.sessions.remove_if_mut(session, |_, entries| {
                    if let Some(pos) = entries.iter().position(|e| e.id == id) {
                        removed = Some(entries.swap_remove(pos));
                    }
                    entries.is_empty()
                });
                removed
            }
        };
        if let Some(entry) = &removed {
            self.listeners.remove(entry);
            self.count.fetch_sub(1, Ordering::AcqRel);
        }
        removed
    }

    fn close_slow(&self, session: Option<&str>, id: u64) -> bool {
        match self.remove(session, id) {
            Some(entry) => {
                entry.sink.close(CloseReason::SlowClient);
                true
            }
            None => false,
        }
    }
}

/// Queues a frame for one stream, noting the outcome; false when the stream is too slow.
fn push(entry: &Entry, frame: &Bytes, report: &mut DeliveryReport) -> bool {
    match entry.sink.offer(frame) {
        Offer::Queued => {
            report.queued += 1;
            true
        }
        Offer::Full => false,
        // The stream is going away; its registration removes it.
        Offer::Closed => true,
    }
}

impl EmitterRepository for InMemoryEmitterRepository {
    fn register(&self, subscription: Subscription) -> Emitter {
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        let (sink, parts) = Emitter::channel(&subscription);
        let session = subscription.session_id;
        let entry = Arc::new(Entry {
            id,
            session: session.clone(),
            events: subscription.events,
            sink,
        });
        // Into the index first: whoever then takes the stream out of its session (a disconnect)
        // takes it out of the index too.
        self.inner.listeners.insert(&entry);
        match &session {
            None => {
                self.inner.anonymous.insert(id, entry);
            }
            Some(session) => self
                .inner
                .sessions
                .entry(session.clone())
                .or_default()
                .push(entry),
        }
        self.inner.count.fetch_add(1, Ordering::AcqRel);
        let inner: Weak<Inner> = Arc::downgrade(&self.inner);
        parts.into_emitter(move || {
            if let Some(inner) = inner.upgrade() {
                inner.remove(session.as_deref(), id);
            }
        })
    }

    fn deliver(&self, target: Target<'_>, event_name: &str, frame: &Bytes) -> DeliveryReport {
        let mut report = DeliveryReport::default();
        let mut slow: Vec<(Option<Arc<str>>, u64)> = Vec::new();
        let mut visit = |entry: &Entry| {
            if !push(entry, frame, &mut report) {
                slow.push((entry.session.clone(), entry.id));
            }
        };
        match target {
            Target::Session(session) => {
                if let Some(entries) = self.inner.sessions.get(session) {
                    for entry in entries.iter().filter(|e| e.events.matches(event_name)) {
                        visit(entry);
                    }
                }
            }
            Target::Broadcast => self.inner.listeners.for_each(event_name, visit),
        }
        // The read guards are released: now the slow streams can be taken out.
        for (session, id) in slow {
            if self.inner.close_slow(session.as_deref(), id) {
                report.closed_slow += 1;
            }
        }
        report
    }

    fn count(&self) -> usize {
        self.inner.count.load(Ordering::Acquire)
    }

    fn count_session(&self, session: &str) -> usize {
        self.inner.sessions.get(session).map_or(0, |e| e.len())
    }

    fn close_all(&self, reason: CloseReason) {
        let mut ending = Vec::new();
        self.inner.sessions.retain(|_, entries| {
            ending.append(entries);
            false
        });
        self.inner.anonymous.retain(|_, entry| {
            ending.push(entry.clone());
            false
        });
        self.inner.count.fetch_sub(ending.len(), Ordering::AcqRel);
        // Out of the index before the close: no broadcast queues a frame behind it.
        for entry in &ending {
            self.inner.listeners.remove(entry);
            entry.sink.close(reason);
        }
    }

    fn close_session(&self, session: &str, opened_before: u64, goodbye: Option<&Bytes>) -> usize {
        let mut ending = Vec::new();
        self.inner.sessions.remove_if_mut(session, |_, entries| {
            let mut i = 0;
            while i < entries.len() {
                if entries[i].sink.opened_millis() < opened_before {
                    ending.push(entries.swap_remove(i));
                } else {
                    i += 1;
                }
            }
            entries.is_empty()
        });
        self.inner.count.fetch_sub(ending.len(), Ordering::AcqRel);
        // Out of the map's lock: each stream leaves the index (so no broadcast follows the
        // goodbye), its sink is dropped after its last frame, and the stream ends once the client
        // has read it.
        for entry in &ending {
            self.inner.listeners.remove(entry);
            entry.sink.finish(goodbye, CloseReason::Disconnected);
        }
        ending.len()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn sub(session: Option<&str>, events: &str, queue: usize) -> Subscription {
        Subscription::new(
            session.map(Arc::from),
            EventFilter::parse(events).unwrap(),
            queue,
        )
    }

    fn frame(s: &'static str) -> Bytes {
        Bytes::from_static(s.as_bytes())
    }

    #[tokio::test]
    async fn session_targeting_and_filters() {
        let repo = InMemoryEmitterRepository::new();
        let mut s1_a = repo.register(sub(Some("s1"), "a", 8));
        let mut s1_ab = repo.register(sub(Some("s1"), "a,b", 8));
        let s2_a = repo.register(sub(Some("s2"), "a", 8));
        assert_eq!(repo.count(), 3);

        let r = repo.deliver(Target::Session("s1"), "a", &frame("1"));
        assert_eq!(r.queued, 2);
        let r = repo.deliver(Target::Session("s1"), "b", &frame("2"));
        assert_eq!(r.queued, 1);
        let r = repo.deliver(Target::Session("nobody"), "a", &frame("3"));
        assert_eq!(r, DeliveryReport::default());

        assert_eq!(s1_a.recv().await.unwrap(), frame("1"));
        assert_eq!(s1_ab.recv().await.unwrap(), frame("1"));
        assert_eq!(s1_ab.recv().await.unwrap(), frame("2"));
        assert!(s2_a.queued() == 0);
        assert!(s1_a.queued() == 0);
    }

    #[tokio::test]
    async fn broadcast_reaches_sessions_and_anonymous_streams() {
        let repo = InMemoryEmitterRepository::new();
        let mut a = repo.register(sub(Some("s1"), "news", 8));
        let mut b = repo.register(sub(None, "news", 8));
        let c = repo.register(sub(None, "other", 8));
        let r = repo.deliver(Target::Broadcast, "news", &frame("n"));
        assert_eq!(r.queued, 2);
        assert_eq!(a.recv().await.unwrap(), frame("n"));
        assert_eq!(b.recv().await.unwrap(), frame("n"));
        assert!(c.queued() == 0);
    }

    #[tokio::test]
    async fn drop_unregisters() {
        let repo = InMemoryEmitterRepository::new();
        let a = repo.register(sub(Some("s1"), "a", 8));
        let b = repo.register(sub(Some("s1"), "a", 8));
        let c = repo.register(sub(None, "a", 8));
        assert_eq!(repo.count(), 3);
        drop(a);
        assert_eq!(repo.count(), 2);
        assert_eq!(
            repo.deliver(Target::Session("s1"), "a", &frame("x")).queued,
            1
        );
        drop(b);
        drop(c);
        assert_eq!(repo.count(), 0);
        assert!(repo.inner.sessions.is_empty());
        assert!(repo.inner.anonymous.is_empty());
        assert!(repo.inner.listeners.is_empty());
    }

    #[tokio::test]
    async fn a_full_queue_closes_only_that_stream() {
        let repo = InMemoryEmitterRepository::new();
        let mut slow = repo.register(sub(Some("s1"), "a", 2));
        let mut fast = repo.register(sub(Some("s1"), "a", 64));
        for _ in 0..2 {
            assert_eq!(
                repo.deliver(Target::Session("s1"), "a", &frame("x")).queued,
                2
            );
            fast.recv().await.unwrap();
        }
        let r = repo.deliver(Target::Session("s1"), "a", &frame("y"));
        assert_eq!(
            r,
            DeliveryReport {
                queued: 1,
                closed_slow: 1
            }
        );
        assert_eq!(repo.count(), 1);
        assert_eq!(fast.recv().await.unwrap(), frame("y"));
        // The slow stream's queue is let go at once (the client replays it when it comes back):
        // it ends, knowing why.
        assert_eq!(slow.queued_bytes(), 0);
        assert_eq!(slow.recv().await, None);
        assert_eq!(slow.close_reason(), Some(CloseReason::SlowClient));
        drop(slow);
        assert_eq!(repo.count(), 1);
    }

    #[tokio::test]
    async fn a_queue_over_its_byte_bound_closes_the_stream() {
        let repo = InMemoryEmitterRepository::new();
        let mut bounded = sub(Some("s1"), "a", 64);
        bounded.max_queued_bytes = 10;
        let mut stream = repo.register(bounded);
        let big = Bytes::from(vec![b'x'; 25]);
        // One frame of any size may wait in an empty queue.
        assert_eq!(repo.deliver(Target::Session("s1"), "a", &big).queued, 1);
        assert_eq!(stream.queued_bytes(), 25);
        assert_eq!(stream.recv().await.unwrap(), big);
        assert_eq!(stream.queued_bytes(), 0);
        for _ in 0..2 {
            assert_eq!(
                repo.deliver(Target::Session("s1"), "a", &frame("12345"))
                    .queued,
                1
            );
        }
        // 2 x 5 bytes wait: one more is past the bound.
        let r = repo.deliver(Target::Session("s1"), "a", &frame("1"));
        assert_eq!(r.closed_slow, 1);
        assert_eq!(stream.queued_bytes(), 0);
        assert_eq!(stream.recv().await, None);
        assert_eq!(stream.close_reason(), Some(CloseReason::SlowClient));
    }

    #[tokio::test]
    async fn close_all_ends_every_stream() {
        let repo = InMemoryEmitterRepository::new();
        let mut a = repo.register(sub(Some("s1"), "a", 8));
        let mut b = repo.register(sub(None, "a", 8));
        repo.close_all(CloseReason::Shutdown);
        assert_eq!(repo.count(), 0);
        assert_eq!(a.recv().await, None);
        assert_eq!(b.recv().await, None);
        assert_eq!(a.close_reason(), Some(CloseReason::Shutdown));
        drop((a, b));
        assert_eq!(repo.count(), 0);
    }

    #[tokio::test]
    async fn close_session_ends_that_sessions_older_streams_after_the_goodbye() {
        let repo = InMemoryEmitterRepository::new();
        let mut a = repo.register(sub(Some("s1"), "a", 1));
        let mut b = repo.register(sub(Some("s1"), "other", 8));
        let mut c = repo.register(sub(Some("s2"), "a", 8));
        repo.deliver(Target::Session("s1"), "a", &frame("x"));
        // `a`'s queue is full: the goodbye is queued all the same.
        let bye = frame("bye");
        let now = crate::history::unix_millis(std::time::SystemTime::now());
        assert_eq!(repo.close_session("s1", now + 1, Some(&bye)), 2);
        assert_eq!(repo.count(), 1);
        assert_eq!(a.recv().await, Some(frame("x")));
        assert_eq!(a.recv().await, Some(bye.clone()));
        assert_eq!(a.recv().await, None);
        assert_eq!(b.recv().await, Some(bye), "whatever its filter");
        assert_eq!(b.recv().await, None);
        assert_eq!(a.close_reason(), Some(CloseReason::Disconnected));
        // A stream opened after the disconnect's time stays.
        assert_eq!(repo.close_session("s2", 0, None), 0);
        repo.deliver(Target::Session("s2"), "a", &frame("y"));
        assert_eq!(c.recv().await, Some(frame("y")));
        assert_eq!(repo.close_session("nobody", u64::MAX, None), 0);
    }

    #[tokio::test]
    async fn a_broadcast_visits_its_listeners_only() {
        let repo = InMemoryEmitterRepository::new();
        let quiet: Vec<_> = (0..100)
            .map(|i| repo.register(sub(Some(&format!("s{i}")), "other,more", 8)))
            .collect();
        let mut named = repo.register(sub(Some("s1"), "other,news", 8));
        let mut any = repo.register(sub(None, "*", 8));
        let mut anonymous = repo.register(sub(None, "news", 8));
        let r = repo.deliver(Target::Broadcast, "news", &frame("n"));
        assert_eq!(r.queued, 3);
        for stream in [&mut named, &mut any, &mut anonymous] {
            assert_eq!(stream.recv().await.unwrap(), frame("n"));
        }
        assert!(quiet.iter().all(|s| s.queued() == 0));
        // A stream listening to two names gets a broadcast of either once.
        assert_eq!(
            repo.deliver(Target::Broadcast, "other", &frame("o")).queued,
            102
        );
        assert_eq!(named.queued(), 1);
        drop(quiet);
        drop((named, any));
        assert_eq!(
            repo.deliver(Target::Broadcast, "news", &frame("n")).queued,
            1
        );
        drop(anonymous);
        assert!(repo.inner.listeners.is_empty());
    }

    #[tokio::test]
    async fn streams_closed_by_the_repository_leave_the_index() {
        let repo = InMemoryEmitterRepository::new();
        let slow = repo.register(sub(Some("s1"), "a", 1));
        let ended = repo.register(sub(Some("s2"), "a", 8));
        let mut stays = repo.register(sub(Some("s3"), "a", 8));
        assert_eq!(repo.deliver(Target::Broadcast, "a", &frame("1")).queued, 3);
        let r = repo.deliver(Target::Broadcast, "a", &frame("2"));
        assert_eq!((r.queued, r.closed_slow), (2, 1));
        assert_eq!(repo.close_session("s2", u64::MAX, None), 1);
        // Neither is offered a frame again, though their emitters are still held.
        assert_eq!(repo.deliver(Target::Broadcast, "a", &frame("3")).queued, 1);
        assert_eq!(ended.queued(), 2);
        assert_eq!(stays.recv().await.unwrap(), frame("1"));
        repo.close_all(CloseReason::Shutdown);
        assert!(repo.inner.listeners.is_empty());
        drop((slow, ended, stays));
        assert_eq!(repo.count(), 0);
    }

    #[test]
    fn concurrent_register_deliver_drop() {
        let repo = InMemoryEmitterRepository::new();
        std::thread::scope(|scope| {
            for t in 0..4 {
                let repo = repo.clone();
                scope.spawn(move || {
                    for i in 0..2000 {
                        let session = format!("s{}", (t * 7 + i) % 13);
                        let e = repo.register(sub(Some(&session), "a", 4));
                        repo.deliver(Target::Session(&session), "a", &frame("x"));
                        repo.deliver(Target::Broadcast, "a", &frame("y"));
                        if i % 5 == t {
                            repo.close_session(&session, u64::MAX, None);
                        }
                        drop(e);
                    }
                });
            }
        });
        assert_eq!(repo.count(), 0);
        assert!(repo.inner.sessions.is_empty());
        assert!(repo.inner.listeners.is_empty());
    }
}
