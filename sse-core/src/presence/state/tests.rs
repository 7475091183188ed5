#![allow(clippy::unwrap_used)]

//! The state machine run by several instances over one shared, ordered log: what the broker's
//! broadcast channel is to them.

use std::collections::HashMap;

use super::*;
use crate::presence::wire::Message;

/// One effective presence event: (session, online, transition).
type Event = (String, bool, u64);

struct Node {
    id: String,
    inc: u64,
    state: State,
    /// Where it has read the log up to.
    read: usize,
    /// Its own streams per session.
    local: HashMap<String, u32>,
    /// Offline events waiting for their linger.
    lingers: Vec<(Arc<str>, u64)>,
    /// Announcements it delivered, in order.
    delivered: Vec<Event>,
    alive: bool,
}

#[derive(Default)]
struct Cluster {
    log: Vec<Input>,
    nodes: Vec<Node>,
}

impl Cluster {
    fn with(names: &[&str]) -> Cluster {
        let mut cluster = Cluster::default();
        for name in names {
            cluster.join(name);
            cluster.settle();
        }
        cluster
    }

    /// A node starts: it asks for the state, and declares it when nobody answers.
    fn join(&mut self, name: &str) -> usize {
        let inc = self.nodes.len() as u64 + 100;
        self.nodes.push(Node {
            id: name.to_owned(),
            inc,
            state: State::new(name, inc, true),
            read: self.log.len(),
            local: HashMap::new(),
            lingers: Vec::new(),
            delivered: Vec::new(),
            alive: true,
        });
        let n = self.nodes.len() - 1;
        self.publish(n, Body::Sync);
        n
    }

    fn publish(&mut self, n: usize, body: Body) {
        let node = &self.nodes[n];
        self.log.push(Input::Control(Message {
            app: "a".into(),
            from: node.id.clone(),
            inc: node.inc,
            body,
        }));
    }

    /// Node `by` publishes the eviction of node `who` (its current incarnation).
    fn evict(&mut self, by: usize, who: usize) {
        let (id, inc) = (self.nodes[who].id.clone(), self.nodes[who].inc);
        self.publish(
            by,
            Body::Evict {
                who: id,
                who_inc: inc,
            },
        );
    }

    fn delta(&mut self, n: usize, session: &str) {
        let streams = self.nodes[n].local.get(session).copied().unwrap_or(0);
        self.publish(
            n,
            Body::Delta {
                sessions: vec![Entry {
                    s: session.to_owned(),
                    n: streams,
                    since: 1,
                    e: None,
                }],
            },
        );
    }

    fn open(&mut self, n: usize, session: &str) {
        *self.nodes[n].local.entry(session.to_owned()).or_default() += 1;
        self.delta(n, session);
    }

    fn close(&mut self, n: usize, session: &str) {
        let count = self.nodes[n].local.get_mut(session).unwrap();
        *count -= 1;
        self.delta(n, session);
    }

    /// Node `n` reads the log up to `upto` and does what it says.
    fn read(&mut self, n: usize, upto: usize) {
        while self.nodes[n].alive && self.nodes[n].read < upto.min(self.log.len()) {
            let input = self.log[self.nodes[n].read].clone();
            self.nodes[n].read += 1;
            let mut actions = Vec::new();
            let node = &mut self.nodes[n];
            let announced = match &input {
                Input::Announcement {
                    session,
                    online,
                    transition,
                } => Some((session.clone(), *online, *transition)),
                Input::Control(_) => None,
            };
            let delivered = node.state.apply(input, &mut actions);
            if let (Some(event), true) = (announced, delivered) {
                node.delivered.push(event);
            }
            self.act(n, actions);
        }
    }

    fn act(&mut self, n: usize, actions: Vec<Action>) {
        for action in actions {
            match action {
                Action::Announce {
                    session,
                    online,
                    transition,
                } => self.log.push(Input::Announcement {
                    session: session.to_string(),
                    online,
                    transition,
                }),
                Action::Linger {
                    session,
                    transition,
                } => self.nodes[n].lingers.push((session, transition)),
                Action::Publish(body) => self.publish(n, body),
                Action::RepublishLocal => {
                    let sessions: Vec<String> = self.nodes[n].local.keys().cloned().collect();
                    for session in sessions {
                        self.delta(n, &session);
                    }
                }
                Action::Resync => {
                    self.nodes[n].state.rejoin();
                    self.publish(n, Body::Sync);
                    self.act(n, vec![Action::RepublishLocal]);
                }
            }
        }
    }

    /// Node `n`'s lingers end: each offline still its to announce is published.
    fn linger_ends(&mut self, n: usize) {
        for (session, transition) in std::mem::take(&mut self.nodes[n].lingers) {
            if self.nodes[n]
                .state
                .still_pending(&session, false, transition)
            {
                self.log.push(Input::Announcement {
                    session: session.to_string(),
                    online: false,
                    transition,
                });
            }
        }
    }

    /// Every live node reads everything; when nothing more comes, lingers end; when still
    /// nothing comes, unanswered sync requests time out; until all is quiet.
    fn settle(&mut self) {
        for _ in 0..1000 {
            let before = self.log.len();
            for n in 0..self.nodes.len() {
                self.read(n, usize::MAX);
            }
            if self.log.len() > before {
                continue;
            }
            for n in 0..self.nodes.len() {
                if self.nodes[n].alive {
                    self.linger_ends(n);
                }
            }
            if self.log.len() > before {
                continue;
            }
            if self.nodes.iter().all(|n| !n.alive || n.state.synced()) {
                return;
            }
            // An interval passes: every node beats, and what they hear decides the timeouts.
            for n in 0..self.nodes.len() {
                if self.nodes[n].alive {
                    let synced = self.nodes[n].state.synced();
                    self.publish(n, Body::Beat { synced });
                }
            }
            for n in 0..self.nodes.len() {
                self.read(n, usize::MAX);
            }
            for n in 0..self.nodes.len() {
                if self.nodes[n].alive && !self.nodes[n].state.synced() {
                    let mut actions = Vec::new();
                    let joining = matches!(self.nodes[n].state.phase, Phase::Joining { .. });
                    if joining
                        && self.nodes[n].state.unanswered(true, &mut actions)
                            == Unanswered::AskAgain
                    {
                        self.publish(n, Body::Sync);
                    }
                    self.act(n, actions);
                }
            }
        }
        panic!("the cluster did not settle");
    }

    fn events_of(&self, n: usize, session: &str) -> Vec<bool> {
        self.nodes[n]
            .delivered
            .iter()
            .filter(|(s, _, _)| s == session)
            .map(|(_, online, _)| *online)
            .collect()
    }
}

#[test]
fn one_instance_announces_online_then_offline_after_the_linger() {
    let mut c = Cluster::with(&["a"]);
    assert!(c.nodes[0].state.synced());
    c.open(0, "u1");
    c.settle();
    assert_eq!(c.events_of(0, "u1"), [true]);
    assert!(c.nodes[0].state.session("u1").online);
    c.open(0, "u1");
    c.close(0, "u1");
    c.close(0, "u1");
    c.settle();
    assert_eq!(c.events_of(0, "u1"), [true, false]);
    assert!(!c.nodes[0].state.session("u1").online);
    assert!(
        c.nodes[0].state.sessions.is_empty(),
        "an offline session is forgotten"
    );
}

#[test]
fn racing_opens_on_two_instances_give_one_online_event() {
    let mut c = Cluster::with(&["a", "b", "c"]);
    c.open(0, "u1");
    c.open(1, "u1");
    c.settle();
    for n in 0..3 {
        assert_eq!(c.events_of(n, "u1"), [true], "node {n}");
        assert_eq!(c.nodes[n].state.session("u1").streams, 2);
    }
    // One closes: still online.
    c.close(0, "u1");
    c.settle();
    assert_eq!(c.events_of(2, "u1"), [true]);
    assert!(c.nodes[2].state.session("u1").online);
}

#[test]
fn a_reconnect_within_the_linger_gives_no_event() {
    let mut c = Cluster::with(&["a", "b"]);
    c.open(0, "u1");
    c.settle();
    c.close(0, "u1");
    for n in 0..2 {
        c.read(n, usize::MAX);
    }
    assert_eq!(c.nodes[0].lingers.len(), 1, "a lingers");
    c.open(1, "u1");
    c.settle();
    for n in 0..2 {
        assert_eq!(c.events_of(n, "u1"), [true], "node {n}");
    }
}

#[test]
fn an_offline_event_published_as_the_client_came_back_is_dropped_everywhere() {
    let mut c = Cluster::with(&["a", "b"]);
    c.open(0, "u1");
    c.settle();
    c.close(0, "u1");
    for n in 0..2 {
        c.read(n, usize::MAX);
    }
    c.open(1, "u1"); // the reopen is ordered before the linger's end
    c.linger_ends(0);
    c.settle();
    for n in 0..2 {
        assert_eq!(c.events_of(n, "u1"), [true], "node {n}");
    }
}

#[test]
fn an_evicted_instance_takes_its_sessions_offline_once() {
    let mut c = Cluster::with(&["a", "b", "c"]);
    c.open(0, "u1");
    c.open(0, "u2");
    c.open(1, "u2");
    c.settle();
    c.nodes[0].alive = false;
    // Two instances notice at once.
    c.evict(1, 0);
    c.evict(2, 0);
    c.settle();
    for n in 1..3 {
        assert_eq!(c.events_of(n, "u1"), [true, false], "node {n}");
        assert_eq!(c.events_of(n, "u2"), [true], "node {n}");
        assert_eq!(c.nodes[n].state.counts().instances, 2);
    }
}

#[test]
fn an_eviction_numbers_its_transitions_alike_on_every_instance() {
    let mut c = Cluster::with(&["a", "b", "c"]);
    let sessions: Vec<String> = (0..20).map(|i| format!("u{i}")).collect();
    for s in &sessions {
        c.open(0, s);
    }
    c.settle();
    c.nodes[0].alive = false;
    c.evict(1, 0);
    c.settle();
    assert_eq!(c.nodes[1].delivered, c.nodes[2].delivered);
    for s in &sessions {
        assert_eq!(c.events_of(2, s), [true, false], "{s}");
    }
}

#[test]
fn a_transition_whose_instance_died_is_announced_by_its_heir() {
    let mut c = Cluster::with(&["a", "b"]);
    c.open(0, "u1");
    c.settle();
    c.close(0, "u1");
    c.read(0, usize::MAX);
    c.read(1, usize::MAX);
    c.nodes[0].alive = false; // dies during the linger
    c.evict(1, 0);
    c.settle();
    assert_eq!(c.events_of(1, "u1"), [true, false]);
}

#[test]
fn an_evicted_instance_back_within_the_linger_gives_no_event() {
    let mut c = Cluster::with(&["a", "b"]);
    c.open(0, "u1");
    c.settle();
    c.evict(1, 0);
    c.settle();
    for n in 0..2 {
        assert_eq!(c.events_of(n, "u1"), [true], "node {n}");
        assert!(c.nodes[n].state.session("u1").online);
    }
}

#[test]
fn an_evicted_instance_that_comes_back_restores_its_sessions() {
    let mut c = Cluster::with(&["a", "b"]);
    c.open(0, "u1");
    c.settle();
    // a is cut off, not dead: evicted, and its session goes offline after the linger.
    c.nodes[0].alive = false;
    c.evict(1, 0);
    c.settle();
    assert_eq!(c.events_of(1, "u1"), [true, false]);
    // Back: it reads what it missed, sees its eviction, and says again what it holds.
    c.nodes[0].alive = true;
    c.settle();
    for n in 0..2 {
        assert_eq!(c.events_of(n, "u1"), [true, false, true], "node {n}");
        assert!(c.nodes[n].state.session("u1").online);
    }
    assert!(c.nodes[0].state.synced());
}

#[test]
fn a_joiner_gets_the_state_and_decides_like_the_others() {
    let mut c = Cluster::with(&["b", "c"]);
    c.open(0, "u1");
    c.open(1, "u2");
    c.settle();
    let a = c.join("a"); // lowest id: the decider once synced
    c.settle();
    assert!(c.nodes[a].state.synced());
    assert!(c.nodes[a].state.session("u1").online);
    assert_eq!(c.nodes[a].state.counts().sessions, 2);
    c.open(a, "u3");
    c.close(0, "u1");
    c.settle();
    for n in 0..3 {
        assert_eq!(c.events_of(n, "u3"), [true], "node {n}");
    }
    assert_eq!(c.events_of(1, "u1"), [true, false]);
    assert_eq!(
        c.events_of(a, "u1"),
        [false],
        "a joined after u1's online event"
    );
}

#[test]
fn instances_starting_together_with_streams_open_end_up_seeing_them_all() {
    let mut c = Cluster::default();
    for (name, session) in [("c", "u3"), ("a", "u1"), ("b", "u2")] {
        let n = c.join(name);
        c.open(n, session); // before anyone holds the state
    }
    c.settle();
    for n in 0..3 {
        assert!(c.nodes[n].state.synced(), "node {n}");
        assert_eq!(c.nodes[n].state.counts().sessions, 3, "node {n}");
        for s in ["u1", "u2", "u3"] {
            assert_eq!(
                c.events_of(n, s).last(),
                Some(&true),
                "node {n} {s}: {:#?}",
                c.log
            );
        }
    }
}

#[test]
fn duplicates_of_an_announcement_are_dropped() {
    let mut c = Cluster::with(&["a"]);
    c.open(0, "u1");
    c.settle();
    let first = c
        .log
        .iter()
        .find(|i| matches!(i, Input::Announcement { .. }))
        .cloned()
        .unwrap();
    c.log.push(first);
    c.settle();
    assert_eq!(c.events_of(0, "u1"), [true]);
}

#[test]
fn queries_see_sessions_by_event_name_in_pages() {
    let mut c = Cluster::with(&["a", "b"]);
    c.publish(
        0,
        Body::Delta {
            sessions: vec![
                Entry {
                    s: "u1".into(),
                    n: 1,
                    since: 5,
                    e: Some(vec!["chat".into()]),
                },
                Entry {
                    s: "u2".into(),
                    n: 1,
                    since: 6,
                    e: None,
                },
                Entry {
                    s: "u3".into(),
                    n: 1,
                    since: 7,
                    e: Some(vec!["news".into()]),
                },
            ],
        },
    );
    c.publish(
        1,
        Body::Delta {
            sessions: vec![Entry {
                s: "u1".into(),
                n: 2,
                since: 3,
                e: Some(vec!["news".into()]),
            }],
        },
    );
    c.settle();
    let state = &c.nodes[1].state;
    let ids = |v: Vec<SessionPresence>| {
        v.iter()
            .map(|s| s.session_id.to_string())
            .collect::<Vec<_>>()
    };
    assert_eq!(ids(state.listening("chat", None, 10)), ["u1", "u2"]);
    assert_eq!(ids(state.listening("news", None, 10)), ["u1", "u2", "u3"]);
    assert_eq!(ids(state.listening("news", Some("u1"), 1)), ["u2"]);
    assert_eq!(ids(state.listening("other", None, 10)), ["u2"]);
    let u1 = state.session("u1");
    assert_eq!((u1.streams, u1.instances), (3, 2));
    assert_eq!(
        u1.since,
        Some(SystemTime::UNIX_EPOCH + std::time::Duration::from_millis(3))
    );
    assert_eq!(
        state.counts(),
        PresenceCounts {
            sessions: 3,
            streams: 5,
            instances: 2
        }
    );
}

/// Random opens, closes, lingers, deaths and reads at random paces, checked against what the
/// streams really were: every instance delivers the same presence events; per session they
/// alternate, online first; the last one says what is true once all is settled.
#[test]
fn random_interleavings_give_one_event_per_transition() {
    for seed in 0..300u64 {
        let mut rng = fastrand::Rng::with_seed(seed);
        let mut c = Cluster::with(&["a", "b", "c"]);
        let sessions = ["u1", "u2", "u3"];
        for _ in 0..80 {
            let n = rng.usize(0..3);
            if !c.nodes[n].alive {
                continue;
            }
            match rng.u8(0..10) {
                0..=3 => c.open(n, sessions[rng.usize(0..3)]),
                4..=6 => {
                    let open: Vec<String> = c.nodes[n]
                        .local
                        .iter()
                        .filter(|&(_, &k)| k > 0)
                        .map(|(s, _)| s.clone())
                        .collect();
                    if !open.is_empty() {
                        let s = open[rng.usize(0..open.len())].clone();
                        c.close(n, &s);
                    }
                }
                7 if rng.bool() => c.linger_ends(n),
                7 => {
                    // A publish that landed twice: an announcement again, later.
                    let earlier: Vec<Input> = c
                        .log
                        .iter()
                        .filter(|i| matches!(i, Input::Announcement { .. }))
                        .cloned()
                        .collect();
                    if !earlier.is_empty() {
                        c.log.push(earlier[rng.usize(0..earlier.len())].clone());
                    }
                }
                8 => {
                    let upto = c.nodes[n].read + rng.usize(0..6);
                    c.read(n, upto);
                }
                _ if seed % 3 == 0 && c.nodes.iter().filter(|x| x.alive).count() > 2 => {
                    // One instance dies; another evicts it when it notices.
                    c.nodes[n].alive = false;
                    c.nodes[n].local.clear();
                    c.evict((n + 1) % 3, n);
                }
                _ => {}
            }
        }
        c.settle();
        let live: Vec<usize> = (0..3).filter(|&n| c.nodes[n].alive).collect();
        for &n in &live {
            assert_eq!(
                c.nodes[n].delivered, c.nodes[live[0]].delivered,
                "seed {seed}"
            );
        }
        for s in sessions {
            let first = c.events_of(live[0], s);
            for &n in &live {
                // A node that read the log from its start saw every event.
                assert_eq!(c.events_of(n, s), first, "seed {seed} {s} node {n}");
            }
            for pair in first.windows(2) {
                assert_ne!(pair[0], pair[1], "seed {seed} {s}: {first:?}");
            }
            assert!(
                first.first().is_none_or(|&online| online),
                "seed {seed} {s}"
            );
            let open: u32 = live
                .iter()
                .map(|&n| c.nodes[n].local.get(s).copied().unwrap_or(0))
                .sum();
            assert_eq!(
                first.last().copied().unwrap_or(false),
                open > 0,
                "seed {seed} {s}: events {first:?}, streams {open}"
            );
            assert_eq!(
                c.nodes[live[0]].state.session(s).streams,
                u64::from(open),
                "seed {seed}"
            );
        }
    }
}
