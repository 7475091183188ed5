//! The hub's side of routed delivery: which sessions hold a route on this instance, counted by
//! streams, subscribed and unsubscribed in batches by one task.
//!
//! One task makes every call to the backend's [`SessionRoutes`], a batch at a time (the
//! unsubscribes whose linger ran out, then the subscribes asked for meanwhile), so the calls for
//! one session are never in flight together and always reach the broker in the order they were
//! decided. Opening a stream waits for its batch; closing one only counts down.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::sync::{Notify, oneshot};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::backend::FanoutBackend;
use crate::stats::Stats;

/// Sessions one backend call subscribes or unsubscribes at most.
const BATCH: usize = 1000;

type Waiter = oneshot::Sender<Result<(), String>>;

/// The routes this instance holds.
#[derive(Debug)]
pub(crate) struct RouteTable {
    state: Mutex<State>,
    wake: Notify,
    linger: Duration,
    stats: Arc<Stats>,
}

#[derive(Debug, Default)]
struct State {
    sessions: HashMap<Arc<str>, Entry>,
    /// Sessions whose last stream closed, oldest first (the linger is the same for all).
    lingering: VecDeque<(Instant, Arc<str>)>,
    /// Sessions to subscribe in the next batch.
    pending: Vec<Arc<str>>,
    next_generation: u64,
}

#[derive(Debug)]
struct Entry {
    streams: usize,
    /// Tells this entry from a later one of the same session, for leases of a failed subscribe.
    generation: u64,
    phase: Phase,
    /// Since when every envelope of the session reaches this instance (its route's subscribe
    /// returned); `None` while subscribing.
    covered_since: Option<Instant>,
}

#[derive(Debug)]
enum Phase {
    /// Queued for the next batch, or in it: the streams waiting for the route.
    Subscribing(Vec<Waiter>),
    Subscribed,
    /// No stream left; unsubscribed at this deadline unless one comes back.
    Lingering(Instant),
}

/// One stream's hold on its session's route; dropping it lets the route go (after the linger).
#[derive(Debug)]
pub(crate) struct RouteLease {
    table: Arc<RouteTable>,
    session: Arc<str>,
    generation: u64,
    covered_since: Instant,
}

impl RouteLease {
    /// Since when this instance has received every envelope of the session: what its replay
    /// log holds of the session from then on is complete.
    pub(crate) fn covered_since(&self) -> Instant {
        self.covered_since
    }
}

impl Drop for RouteLease {
    fn drop(&mut self) {
        self.table.release(&self.session, self.generation);
    }
}

impl RouteTable {
    pub(crate) fn new(linger: Duration, stats: Arc<Stats>) -> Self {
        RouteTable {
            state: Mutex::default(),
            wake: Notify::new(),
            linger,
            stats,
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Sessions holding a route on this instance (lingering ones included).
    pub(crate) fn sessions(&self) -> usize {
        self.lock().sessions.len()
    }

    /// Since when `session`'s route has covered this instance (its subscribe returned); `None`
    /// when this instance holds no route of it, or is still subscribing it.
    pub(crate) fn covered_since(&self, session: &str) -> Option<Instant> {
        self.lock()
            .sessions
            .get(session)
            .and_then(|entry| entry.covered_since)
    }

    /// Holds `session`'s route for one stream; returns once the route is subscribed.
    pub(crate) async fn acquire(
        self: &Arc<Self>,
        session: &Arc<str>,
    ) -> Result<RouteLease, String> {
        let started = Instant::now();
        let (lease, wait) = {
            let mut state = self.lock();
            let state = &mut *state;
            let generation = state.next_generation + 1;
            let mut created = false;
            let entry = state.sessions.entry(session.clone()).or_insert_with(|| {
                created = true;
                Entry {
                    streams: 0,
                    generation,
                    phase: Phase::Subscribing(Vec::new()),
                    covered_since: None,
                }
            });
            if created {
                state.next_generation = generation;
                state.pending.push(session.clone());
                self.wake.notify_one();
            }
            entry.streams += 1;
            let held = (entry.generation, entry.covered_since);
            let wait = match &mut entry.phase {
                Phase::Subscribed => None,
                Phase::Lingering(_) => {
                    entry.phase = Phase::Subscribed;
                    None
                }
                Phase::Subscribing(waiters) => {
                    let (tx, rx) = oneshot::channel();
                    waiters.push(tx);
                    Some(rx)
                }
            };
            let lease = RouteLease {
                table: self.clone(),
                session: session.clone(),
                generation: held.0,
                // Replaced below once a route being subscribed is.
                covered_since: held.1.unwrap_or(started),
            };
            (lease, wait)
        };
        let mut lease = lease;
        if let Some(wait) = wait {
            // The lease is dropped (and counted down) if this future is, or the route failed.
            wait.await
                .map_err(|_| "the hub stopped".to_owned())
                .and_then(|result| result)?;
            self.stats.route_subscribe_latency.record(started.elapsed());
            // At or after the moment `settle` recorded: the later, the safer.
            lease.covered_since = Instant::now();
        }
        Ok(lease)
    }

    fn release(&self, session: &Arc<str>, generation: u64) {
        let mut state = self.lock();
        let state = &mut *state;
        let Some(entry) = state.sessions.get_mut(session) else {
            return;
        };
        if entry.generation != generation {
            return;
        }
        entry.streams -= 1;
        if entry.streams == 0 && matches!(entry.phase, Phase::Subscribed) {
            let deadline = Instant::now() + self.linger;
            entry.phase = Phase::Lingering(deadline);
            if state.lingering.is_empty() {
                self.wake.notify_one();
            }
            state.lingering.push_back((deadline, session.clone()));
        }
    }

    /// The batches due now, and when to look again.
    fn due(&self) -> (Vec<Arc<str>>, Vec<Arc<str>>, Option<Instant>) {
        let mut state = self.lock();
        let now = Instant::now();
        let mut expired = Vec::new();
        while expired.len() < BATCH {
            let Some((deadline, session)) = state.lingering.front().cloned() else {
                break;
            };
            if deadline > now {
                break;
            }
            state.lingering.pop_front();
            let still = state.sessions.get(&session).is_some_and(|e| {
                e.streams == 0 && matches!(e.phase, Phase::Lingering(d) if d == deadline)
            });
            if still {
                state.sessions.remove(&session);
                expired.push(session);
            }
        }
        let take = state.pending.len().min(BATCH);
        let subscribe: Vec<_> = state.pending.drain(..take).collect();
        let next = state.lingering.front().map(|(deadline, _)| *deadline);
        (expired, subscribe, next)
    }

    /// Runs the batches until `stop`.
    pub(crate) async fn run(
        self: Arc<Self>,
        backend: Arc<dyn FanoutBackend>,
        stop: CancellationToken,
    ) {
        let Some(routes) = backend.routes() else {
            return;
        };
        loop {
            let (expired, subscribe, next) = self.due();
            if expired.is_empty() && subscribe.is_empty() {
                let sleep = async {
                    match next {
                        Some(at) => tokio::time::sleep_until(at).await,
                        None => std::future::pending().await,
                    }
                };
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = self.wake.notified() => {}
                    () = sleep => {}
                }
                continue;
            }
            if !expired.is_empty() {
                let names: Vec<&str> = expired.iter().map(|s| &**s).collect();
                match routes.unsubscribe(&names).await {
                    Ok(()) => Stats::add(&self.stats.route_unsubscribes, names.len()),
                    Err(error) => {
                        Stats::add(&self.stats.route_failures, names.len());
                        tracing::warn!(%error, sessions = names.len(), "unsubscribing routes failed");
                    }
                }
            }
            if !subscribe.is_empty() {
                let names: Vec<&str> = subscribe.iter().map(|s| &**s).collect();
                let result = routes.subscribe(&names).await.map_err(|e| e.to_string());
                match &result {
                    Ok(()) => Stats::add(&self.stats.route_subscribes, names.len()),
                    Err(error) => {
                        Stats::add(&self.stats.route_failures, names.len());
                        tracing::warn!(%error, sessions = names.len(), "subscribing routes failed");
                    }
                }
                self.settle(&subscribe, &result);
            }
        }
    }

    /// Hands a subscribe batch's result to the streams waiting for it.
    fn settle(&self, sessions: &[Arc<str>], result: &Result<(), String>) {
        let mut state = self.lock();
        let state = &mut *state;
        let now = Instant::now();
        for session in sessions {
            let Some(entry) = state.sessions.get_mut(session) else {
                continue;
            };
            let Phase::Subscribing(waiters) = &mut entry.phase else {
                continue;
            };
            let waiters = std::mem::take(waiters);
            if result.is_ok() {
                if entry.streams == 0 {
                    // Every stream that asked for it left while it was being subscribed.
                    let deadline = now + self.linger;
                    entry.phase = Phase::Lingering(deadline);
                    state.lingering.push_back((deadline, session.clone()));
                } else {
                    entry.phase = Phase::Subscribed;
                }
                entry.covered_since = Some(now);
            } else {
                // Not subscribed: the entry goes, and the leases of its streams with it.
                state.sessions.remove(session);
            }
            for waiter in waiters {
                let _ = waiter.send(result.clone());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::{EventFilter, Hub, LocalBackend, Routing, SendSseEvent};
    use futures_util::StreamExt;
    use serde_json::json;

    const LINGER: Duration = Duration::from_secs(5);

    async fn hub(backend: &LocalBackend) -> Hub {
        Hub::builder(backend.instance())
            .routing(Routing::Session { linger: LINGER })
            .start()
            .await
            .unwrap()
    }

    #[tokio::test(start_paused = true)]
    async fn a_route_lingers_then_goes_and_a_quick_return_keeps_it() {
        let backend = LocalBackend::new();
        let hub = hub(&backend).await;
        let first = hub
            .open_stream(Some("s".into()), EventFilter::Any)
            .await
            .unwrap();
        let second = hub
            .open_stream(Some("s".into()), EventFilter::Any)
            .await
            .unwrap();
        assert_eq!((hub.routed_sessions(), hub.backend_routes()), (1, Some(1)));
        drop(first);
        drop(second);
        tokio::time::sleep(LINGER / 2).await;
        // Back within the linger: the route was never let go.
        let back = hub
            .open_stream(Some("s".into()), EventFilter::Any)
            .await
            .unwrap();
        tokio::time::sleep(LINGER * 2).await;
        assert_eq!(hub.backend_routes(), Some(1));
        drop(back);
        tokio::time::sleep(LINGER - Duration::from_millis(1)).await;
        assert_eq!(hub.backend_routes(), Some(1), "gone before the linger");
        tokio::time::sleep(Duration::from_millis(2)).await;
        tokio::task::yield_now().await;
        assert_eq!((hub.routed_sessions(), hub.backend_routes()), (0, Some(0)));
        let stats = hub.stats();
        assert_eq!((stats.route_subscribes, stats.route_unsubscribes), (1, 1));
    }

    /// Streams of many sessions opening and closing in overlapping waves on one hub while another
    /// publishes to them: every stream gets every event published while it was open, and no
    /// route is left once all are gone.
    #[tokio::test]
    async fn churn_loses_nothing_and_leaks_no_route() {
        let backend = LocalBackend::new();
        let holder = Hub::builder(backend.instance())
            .routing(Routing::Session {
                linger: Duration::from_millis(20),
            })
            .start()
            .await
            .unwrap();
        let publisher = hub(&backend).await;
        for round in 0..20 {
            let mut streams = Vec::new();
            for i in 0..50 {
                let session: Arc<str> = format!("s{}", (i + round) % 60).into();
                let mut stream = holder
                    .open_stream(Some(session.clone()), EventFilter::Any)
                    .await
                    .unwrap();
                stream.next().await;
                streams.push((session, stream));
            }
            for (session, _) in &streams {
                publisher
                    .publish(SendSseEvent::new("e", json!(round)).to_session(&**session))
                    .await
                    .unwrap();
            }
            for (session, stream) in &mut streams {
                let frame = tokio::time::timeout(Duration::from_secs(5), stream.next())
                    .await
                    .unwrap_or_else(|_| panic!("round {round}: {session} got nothing"))
                    .unwrap();
                assert!(frame.ends_with(format!("data: {round}\n\n").as_bytes()));
            }
            // Every other round leaves the streams open across the next round's opening.
            if round % 2 == 0 {
                drop(streams);
            } else {
                tokio::spawn(async move {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    drop(streams);
                });
            }
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while holder.backend_routes() != Some(0) || holder.routed_sessions() != 0 {
            assert!(
                Instant::now() < deadline,
                "routes left: {:?}",
                holder.backend_routes()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let stats = holder.stats();
        assert_eq!(stats.route_subscribes, stats.route_unsubscribes);
        assert_eq!(stats.route_failures, 0);
    }

    #[tokio::test]
    async fn a_stream_that_leaves_while_its_route_is_subscribed_does_not_leak_it() {
        let backend = LocalBackend::new();
        let hub = Hub::builder(backend.instance())
            .routing(Routing::Session {
                linger: Duration::from_millis(10),
            })
            .start()
            .await
            .unwrap();
        // The open is dropped before its route's batch ran.
        let open = hub.open_stream(Some("gone".into()), EventFilter::Any);
        drop(open);
        let mut opening = Box::pin(hub.open_stream(Some("gone".into()), EventFilter::Any));
        assert!(futures_util::FutureExt::now_or_never(&mut opening).is_none());
        drop(opening);
        let deadline = Instant::now() + Duration::from_secs(5);
        while hub.routed_sessions() != 0 || hub.backend_routes() != Some(0) {
            assert!(Instant::now() < deadline, "route leaked");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}
