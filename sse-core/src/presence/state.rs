//! The cluster's presence as every instance replicates it: the same inputs in the same order (the
//! broadcast channel's one order, see [`crate::presence`]) give every synced instance the same
//! state, so each one can tell on its own, at the same input, which transition a session makes
//! and which instance announces it.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::SystemTime;

use super::wire::{Body, Entry, MemberState, PendingState, SessionState, SnapshotPart};

/// Sessions one snapshot message carries at most.
const SNAPSHOT_PART: usize = 1000;

/// Inputs a joining instance keeps until its snapshot is complete, at most; past that it asks
/// again.
const MAX_BUFFERED: usize = 500_000;

/// One input of the state machine, in the broadcast channel's order.
#[derive(Debug, Clone)]
pub(crate) enum Input {
    /// A presence message (already checked to be of this app).
    Control(super::wire::Message),
    /// A presence event: `session` went `online` (or offline) as transition `transition`.
    Announcement {
        session: String,
        online: bool,
        transition: u64,
    },
}

/// What this instance has to do after an input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Action {
    /// Publish the presence event of a transition this instance decided.
    Announce {
        session: Arc<str>,
        online: bool,
        transition: u64,
    },
    /// Publish the offline event of this transition after the linger, unless it is undone.
    Linger { session: Arc<str>, transition: u64 },
    /// Publish this message.
    Publish(Body),
    /// Publish this instance's own streams again, whole (another instance's state began
    /// without them).
    RepublishLocal,
    /// Ask for the state again (this instance was evicted, or its start of the state refused).
    Resync,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Member {
    inc: u64,
    synced: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Stake {
    streams: u32,
    since: u64,
    /// `None`: every event name.
    events: Option<Box<[Box<str>]>>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Pending {
    online: bool,
    cause: Arc<str>,
    transition: u64,
}

#[derive(Debug, Clone, Default)]
struct Session {
    on: Vec<(Arc<str>, Stake)>,
    announced: bool,
    pending: Option<Pending>,
}

impl Session {
    fn streams(&self) -> u64 {
        self.on.iter().map(|(_, s)| u64::from(s.streams)).sum()
    }

    /// The event names its streams listen to: `None` for every name.
    fn names(&self) -> Option<BTreeSet<&str>> {
        let mut names = BTreeSet::new();
        for (_, stake) in &self.on {
            names.extend(stake.events.as_ref()?.iter().map(|n| &**n));
        }
        Some(names)
    }
}

/// What a query sees of one session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionPresence {
    /// The session id.
    pub session_id: Arc<str>,
    /// Whether it has a stream open on any instance.
    pub online: bool,
    /// Its open streams, cluster-wide.
    pub streams: u64,
    /// Instances holding one of them.
    pub instances: usize,
    /// Since when its longest-held stream's instance has had it.
    pub since: Option<SystemTime>,
}

/// Counts over the whole cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PresenceCounts {
    /// Sessions with a stream open anywhere.
    pub sessions: usize,
    /// Streams of sessions, cluster-wide.
    pub streams: u64,
    /// Instances known to be alive.
    pub instances: usize,
}

#[derive(Debug)]
enum Phase {
    /// Waiting for the state as of this instance's sync request; inputs after it are kept.
    Joining {
        own_sync_seen: bool,
        buffered: Vec<Input>,
        parts: BTreeMap<u32, SnapshotPart>,
        /// Instances heard from while joining, and whether they said they were synced.
        seen: BTreeMap<Arc<str>, bool>,
    },
    Synced,
}

/// What a joining instance decides when no snapshot came in time.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Unanswered {
    /// Ask again.
    AskAgain,
    /// No synced instance exists: this one starts the state (it has published `Synced`).
    Declared,
    /// Nobody else heard of, but not for long enough to be sure: wait.
    Wait,
}

/// The replicated presence state (see the module docs).
#[derive(Debug)]
pub(crate) struct State {
    me: Arc<str>,
    inc: u64,
    events: bool,
    phase: Phase,
    members: BTreeMap<Arc<str>, Member>,
    sessions: HashMap<Arc<str>, Session>,
    transitions: u64,
    /// Sessions whose streams name an event, by name.
    listeners: HashMap<Box<str>, BTreeSet<Arc<str>>>,
    /// Sessions with a stream that listens to every name.
    any: BTreeSet<Arc<str>>,
    online: usize,
    streams: u64,
}

impl State {
    /// The state of instance `me` (incarnation `inc`) before it has asked for the cluster's;
    /// `events` when presence events are on (the same on every instance).
    pub(crate) fn new(me: &str, inc: u64, events: bool) -> State {
        State {
            me: me.into(),
            inc,
            events,
            phase: Phase::Joining {
                own_sync_seen: false,
                buffered: Vec::new(),
                parts: BTreeMap::new(),
                seen: BTreeMap::new(),
            },
            members: BTreeMap::new(),
            sessions: HashMap::new(),
            transitions: 0,
            listeners: HashMap::new(),
            any: BTreeSet::new(),
            online: 0,
            streams: 0,
        }
    }

    /// Whether this instance holds the cluster's state.
    pub(crate) fn synced(&self) -> bool {
        matches!(self.phase, Phase::Synced) && self.members.get(&self.me).is_some_and(|m| m.synced)
    }

    /// Whether this instance started the state itself and the others have not seen it say so
    /// (its `synced` was lost on the way): it says it again.
    pub(crate) fn declared_unconfirmed(&self) -> bool {
        matches!(self.phase, Phase::Synced) && self.members.get(&self.me).is_some_and(|m| !m.synced)
    }

    /// Forgets the state and waits for the answer to a new sync request.
    pub(crate) fn rejoin(&mut self) {
        *self = State::new(&self.me, self.inc, self.events);
    }

    /// Applies one input; returns whether an announcement is delivered to streams (one that
    /// is stale, a duplicate or undone, is dropped on every synced instance alike).
    pub(crate) fn apply(&mut self, input: Input, actions: &mut Vec<Action>) -> bool {
        let Phase::Joining {
            own_sync_seen,
            buffered,
            parts,
            seen,
        } = &mut self.phase
        else {
            return self.step(input, actions);
        };
        if let Input::Control(message) = &input {
            if message.from != *self.me {
                let synced = match message.body {
                    Body::Beat { synced } => synced,
                    Body::Synced | Body::Snapshot { .. } => true,
                    _ => false,
                };
                let was = seen.entry(message.from.as_str().into()).or_default();
                *was |= synced;
            }
            if message.from == *self.me && message.inc == self.inc && message.body == Body::Sync {
                *own_sync_seen = true;
                buffered.clear();
                parts.clear();
                return true;
            }
        }
        if !*own_sync_seen {
            return true;
        }
        let complete = match &input {
            Input::Control(super::wire::Message {
                body:
                    Body::Snapshot {
                        to,
                        to_inc,
                        part,
                        parts: total,
                        state,
                    },
                ..
            }) if **to == *self.me && *to_inc == self.inc => {
                parts.insert(*part, (**state).clone());
                parts.len() == *total as usize
            }
            _ => false,
        };
        buffered.push(input);
        if complete {
            let parts = std::mem::take(parts);
            let buffered = std::mem::take(buffered);
            self.install(parts.into_values());
            for input in buffered {
                self.step(input, actions);
            }
            // What it published before its request was applied the others may have missed (they
            // were joining themselves, say): it says it all again, now in the order.
            actions.push(Action::RepublishLocal);
        } else if buffered.len() > MAX_BUFFERED {
            self.rejoin();
            actions.push(Action::Resync);
        }
        true
    }

    /// A joining instance's sync request went unanswered: with no synced instance heard of
    /// (and no lower id among those joining), it starts the state itself once `may_declare`.
    pub(crate) fn unanswered(
        &mut self,
        may_declare: bool,
        actions: &mut Vec<Action>,
    ) -> Unanswered {
        let Phase::Joining {
            own_sync_seen,
            buffered,
            seen,
            ..
        } = &mut self.phase
        else {
            // Synced meanwhile, or evicted and about to ask again: nothing to decide here.
            return Unanswered::Wait;
        };
        let alone = *own_sync_seen
            && !seen.values().any(|&synced| synced)
            && seen.keys().all(|other| *other > self.me);
        if !alone {
            self.rejoin();
            return Unanswered::AskAgain;
        }
        if !may_declare {
            return Unanswered::Wait;
        }
        let buffered = std::mem::take(buffered);
        self.phase = Phase::Synced;
        self.members.insert(
            self.me.clone(),
            Member {
                inc: self.inc,
                synced: false,
            },
        );
        for input in buffered {
            self.step(input, actions);
        }
        actions.push(Action::Publish(Body::Synced));
        actions.push(Action::RepublishLocal);
        Unanswered::Declared
    }

    fn step(&mut self, input: Input, actions: &mut Vec<Action>) -> bool {
        match input {
            Input::Control(message) => {
                self.control(message, actions);
                true
            }
            Input::Announcement {
                session,
                online,
                transition,
            } => self.announcement(&session, online, transition, actions),
        }
    }

    fn control(&mut self, message: super::wire::Message, actions: &mut Vec<Action>) {
        let from: Arc<str> = message.from.as_str().into();
        match self.members.get(&from) {
            Some(member) if member.inc == message.inc => {}
            Some(_) => {
                // A new incarnation: the old one is gone, with its streams.
                self.remove_member(&from, &from, actions);
                self.add_member(&from, message.inc);
            }
            None => self.add_member(&from, message.inc),
        }
        match message.body {
            Body::Delta { sessions } => {
                for entry in sessions {
                    self.set_stake(&from, entry, actions);
                }
            }
            Body::Beat { .. } => {}
            Body::Sync => {
                if let Some(member) = self.members.get_mut(&from) {
                    member.synced = false;
                }
                let responder = self
                    .members
                    .iter()
                    .find(|(id, m)| m.synced && **id != from)
                    .map(|(id, _)| id.clone());
                if responder.as_deref() == Some(&*self.me) {
                    let parts = self.snapshot();
                    let total = u32::try_from(parts.len()).unwrap_or(u32::MAX);
                    for (part, state) in parts.into_iter().enumerate() {
                        actions.push(Action::Publish(Body::Snapshot {
                            to: from.to_string(),
                            to_inc: message.inc,
                            part: u32::try_from(part).unwrap_or(u32::MAX),
                            parts: total,
                            state: Box::new(state),
                        }));
                    }
                }
            }
            Body::Synced => {
                // Only the first to start the state does: one that started it too, not having
                // heard of the first, is refused alike everywhere, and asks for the state.
                if self.members.iter().any(|(id, m)| m.synced && *id != from) {
                    if from == self.me {
                        actions.push(Action::Resync);
                    }
                    return;
                }
                if let Some(member) = self.members.get_mut(&from) {
                    member.synced = true;
                }
                if from != self.me {
                    actions.push(Action::RepublishLocal);
                }
                let mut sessions: Vec<Arc<str>> = self.sessions.keys().cloned().collect();
                sessions.sort_unstable();
                for session in sessions {
                    self.reconcile(&session, Some(from.clone()), actions);
                }
            }
            Body::Snapshot {
                to,
                to_inc,
                part,
                parts,
                ..
            } => {
                if part + 1 == parts
                    && let Some(member) = self.members.get_mut(to.as_str())
                    && member.inc == to_inc
                {
                    member.synced = true;
                }
            }
            Body::Evict { who, who_inc: inc } => {
                let who: Arc<str> = who.into();
                if self.members.get(&who).is_some_and(|m| m.inc == inc) {
                    self.remove_member(&who, &from, actions);
                    if who == self.me && inc == self.inc {
                        actions.push(Action::Resync);
                    }
                }
            }
            Body::Leave => self.remove_member(&from, &from, actions),
        }
    }

    fn add_member(&mut self, id: &Arc<str>, inc: u64) {
        self.members
            .insert(id.clone(), Member { inc, synced: false });
    }

    /// Who decides the transitions an input of `sender` causes: the sender when it holds the
    /// state, else the synced member of lowest id.
    fn decider(&self, sender: &str) -> Option<Arc<str>> {
        match self.members.get_key_value(sender) {
            Some((id, m)) if m.synced => Some(id.clone()),
            _ => self
                .members
                .iter()
                .find(|(_, m)| m.synced)
                .map(|(id, _)| id.clone()),
        }
    }

    /// `who` is gone (evicted by `sender`, or left): its streams go, and the transitions it
    /// had decided are taken over.
    fn remove_member(&mut self, who: &Arc<str>, sender: &Arc<str>, actions: &mut Vec<Action>) {
        if self.members.remove(who).is_none() {
            return;
        }
        let heir = self.decider(sender);
        // In id order: every instance numbers the transitions alike.
        let mut touched: Vec<Arc<str>> = self
            .sessions
            .iter()
            .filter(|(_, s)| {
                s.on.iter().any(|(i, _)| i == who)
                    || s.pending.as_ref().is_some_and(|p| p.cause == *who)
            })
            .map(|(id, _)| id.clone())
            .collect();
        touched.sort_unstable();
        for id in touched {
            let me = self.me.clone();
            let Some(session) = self.sessions.get_mut(&id) else {
                continue;
            };
            if let Some(pending) = &mut session.pending
                && pending.cause == *who
            {
                match &heir {
                    Some(heir) => {
                        pending.cause = heir.clone();
                        if *heir == me {
                            actions.push(match pending.online {
                                true => Action::Announce {
                                    session: id.clone(),
                                    online: true,
                                    transition: pending.transition,
                                },
                                false => Action::Linger {
                                    session: id.clone(),
                                    transition: pending.transition,
                                },
                            });
                        }
                    }
                    None => session.pending = None,
                }
            }
            let before = session.clone();
            if let Some(at) = session.on.iter().position(|(i, _)| i == who) {
                session.on.swap_remove(at);
            }
            let left = before.streams() - session.streams();
            self.streams -= left;
            self.reindex(&id, &before);
            self.reconcile(&id, heir.clone(), actions);
        }
    }

    fn set_stake(&mut self, from: &Arc<str>, entry: Entry, actions: &mut Vec<Action>) {
        let id: Arc<str> = match self.sessions.get_key_value(entry.s.as_str()) {
            Some((id, _)) => id.clone(),
            None => entry.s.as_str().into(),
        };
        let session = self.sessions.entry(id.clone()).or_default();
        let before = session.clone();
        let stake = Stake {
            streams: entry.n,
            since: entry.since,
            events: entry
                .e
                .map(|names| names.into_iter().map(String::into_boxed_str).collect()),
        };
        match session.on.iter().position(|(i, _)| i == from) {
            Some(at) if entry.n == 0 => {
                session.on.swap_remove(at);
            }
            Some(at) => session.on[at].1 = stake,
            None if entry.n == 0 => {}
            None => session.on.push((from.clone(), stake)),
        }
        self.streams = self.streams + session.streams() - before.streams();
        self.reindex(&id, &before);
        let cause = self.decider(from);
        self.reconcile(&id, cause, actions);
    }

    /// Moves a session in the event-name index and the online count from what `before` gave
    /// to what it gives now.
    fn reindex(&mut self, id: &Arc<str>, before: &Session) {
        let empty = Session::default();
        let now = self.sessions.get(id).unwrap_or(&empty);
        let (was_online, is_online) = (before.streams() > 0, now.streams() > 0);
        let old = before.names();
        let new = now.names();
        if old != new || before.on.is_empty() != now.on.is_empty() {
            let old: Option<Option<Vec<Box<str>>>> = (!before.on.is_empty())
                .then(|| old.map(|n| n.into_iter().map(Box::from).collect()));
            let new: Option<Option<Vec<Box<str>>>> =
                (!now.on.is_empty()).then(|| new.map(|n| n.into_iter().map(Box::from).collect()));
            match old {
                Some(None) => {
                    self.any.remove(id);
                }
                Some(Some(names)) => {
                    for name in names {
                        if let Some(set) = self.listeners.get_mut(&name) {
                            set.remove(id);
                            if set.is_empty() {
                                self.listeners.remove(&name);
                            }
                        }
                    }
                }
                None => {}
            }
            match new {
                Some(None) => {
                    self.any.insert(id.clone());
                }
                Some(Some(names)) => {
                    for name in names {
                        self.listeners.entry(name).or_default().insert(id.clone());
                    }
                }
                None => {}
            }
        }
        match (was_online, is_online) {
            (false, true) => self.online += 1,
            (true, false) => self.online -= 1,
            _ => {}
        }
    }

    /// Decides the transition a session's change makes (`cause` decides it), and forgets a
    /// session with nothing left to tell.
    fn reconcile(&mut self, id: &Arc<str>, cause: Option<Arc<str>>, actions: &mut Vec<Action>) {
        let events = self.events;
        let Some(session) = self.sessions.get_mut(id) else {
            return;
        };
        if events {
            let open = session.streams() > 0;
            match (open, session.announced, &session.pending) {
                (true, false, None) | (false, true, None) => {
                    if let Some(cause) = cause {
                        self.transitions += 1;
                        let transition = self.transitions;
                        if cause == self.me {
                            actions.push(match open {
                                true => Action::Announce {
                                    session: id.clone(),
                                    online: true,
                                    transition,
                                },
                                false => Action::Linger {
                                    session: id.clone(),
                                    transition,
                                },
                            });
                        }
                        session.pending = Some(Pending {
                            online: open,
                            cause,
                            transition,
                        });
                    }
                }
                // Back within the linger: no offline event, no online event.
                (true, true, Some(pending)) if !pending.online => session.pending = None,
                _ => {}
            }
        }
        if session.on.is_empty() && !session.announced && session.pending.is_none() {
            self.sessions.remove(id);
        }
    }

    fn announcement(
        &mut self,
        session: &str,
        online: bool,
        transition: u64,
        actions: &mut Vec<Action>,
    ) -> bool {
        if !self.events {
            return true;
        }
        let Some((id, state)) = self.sessions.get_key_value(session) else {
            return false;
        };
        let id = id.clone();
        let Some(pending) = &state.pending else {
            return false;
        };
        if pending.online != online || pending.transition != transition {
            return false;
        }
        let cause = self.decider(&pending.cause.clone());
        if let Some(state) = self.sessions.get_mut(&id) {
            state.announced = online;
            state.pending = None;
        }
        self.reconcile(&id, cause, actions);
        true
    }

    /// Whether the transition `transition` of `session` is still this instance's to announce.
    pub(crate) fn still_pending(&self, session: &str, online: bool, transition: u64) -> bool {
        self.sessions
            .get(session)
            .and_then(|s| s.pending.as_ref())
            .is_some_and(|p| p.online == online && p.transition == transition && p.cause == self.me)
    }

    /// Members and their incarnations, to check who went silent.
    pub(crate) fn members(&self) -> Vec<(Arc<str>, u64)> {
        self.members
            .iter()
            .map(|(id, m)| (id.clone(), m.inc))
            .collect()
    }

    fn snapshot(&self) -> Vec<SnapshotPart> {
        let members: Vec<MemberState> = self
            .members
            .iter()
            .map(|(id, m)| MemberState {
                id: id.to_string(),
                inc: m.inc,
                synced: m.synced,
            })
            .collect();
        let sessions: Vec<SessionState> = self
            .sessions
            .iter()
            .map(|(id, s)| SessionState {
                s: id.to_string(),
                on: s
                    .on
                    .iter()
                    .map(|(i, stake)| {
                        (
                            i.to_string(),
                            Entry {
                                s: String::new(),
                                n: stake.streams,
                                since: stake.since,
                                e: stake
                                    .events
                                    .as_ref()
                                    .map(|e| e.iter().map(|n| n.to_string()).collect()),
                            },
                        )
                    })
                    .collect(),
                announced: s.announced,
                pending: s.pending.as_ref().map(|p| PendingState {
                    online: p.online,
                    cause: p.cause.to_string(),
                    transition: p.transition,
                }),
            })
            .collect();
        let mut parts: Vec<SnapshotPart> = sessions
            .chunks(SNAPSHOT_PART)
            .map(|chunk| SnapshotPart {
                members: members.clone(),
                transitions: self.transitions,
                sessions: chunk.to_vec(),
            })
            .collect();
        if parts.is_empty() {
            parts.push(SnapshotPart {
                members,
                transitions: self.transitions,
                sessions: Vec::new(),
            });
        }
        parts
    }

    fn install(&mut self, parts: impl Iterator<Item = SnapshotPart>) {
        let mut fresh = State::new(&self.me, self.inc, self.events);
        fresh.phase = Phase::Synced;
        for part in parts {
            fresh.transitions = part.transitions;
            for m in part.members {
                fresh.members.insert(
                    m.id.into(),
                    Member {
                        inc: m.inc,
                        synced: m.synced,
                    },
                );
            }
            for s in part.sessions {
                let id: Arc<str> = s.s.into();
                let session = Session {
                    on: s
                        .on
                        .into_iter()
                        .map(|(i, e)| {
                            (
                                Arc::from(i),
                                Stake {
                                    streams: e.n,
                                    since: e.since,
                                    events: e.e.map(|names| {
                                        names.into_iter().map(String::into_boxed_str).collect()
                                    }),
                                },
                            )
                        })
                        .collect(),
                    announced: s.announced,
                    pending: s.pending.map(|p| Pending {
                        online: p.online,
                        cause: p.cause.into(),
                        transition: p.transition,
                    }),
                };
                fresh.streams += session.streams();
                fresh.sessions.insert(id.clone(), session);
                fresh.reindex(&id, &Session::default());
            }
        }
        *self = fresh;
    }

    /// One session as the cluster has it.
    pub(crate) fn session(&self, id: &str) -> SessionPresence {
        match self.sessions.get_key_value(id) {
            Some((id, s)) => view(id, s),
            None => SessionPresence {
                session_id: id.into(),
                online: false,
                streams: 0,
                instances: 0,
                since: None,
            },
        }
    }

    /// Sessions with a stream that listens to `event_name` (by name or to every name), in id
    /// order after `after`, at most `limit`.
    pub(crate) fn listening(
        &self,
        event_name: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Vec<SessionPresence> {
        use std::ops::Bound;
        let from = after.map_or(Bound::Unbounded, Bound::Excluded);
        let named = self
            .listeners
            .get(event_name)
            .into_iter()
            .flat_map(|set| set.range::<str, _>((from, Bound::Unbounded)));
        let any = self.any.range::<str, _>((from, Bound::Unbounded));
        let mut merged: Vec<&Arc<str>> = Vec::with_capacity(limit);
        let (mut named, mut any) = (named.peekable(), any.peekable());
        while merged.len() < limit {
            let next = match (named.peek(), any.peek()) {
                (Some(a), Some(b)) if a < b => named.next(),
                (Some(a), Some(b)) if a > b => any.next(),
                (Some(_), Some(_)) => {
                    any.next();
                    named.next()
                }
                (Some(_), None) => named.next(),
                (None, Some(_)) => any.next(),
                (None, None) => None,
            };
            match next {
                Some(id) => merged.push(id),
                None => break,
            }
        }
        merged
            .into_iter()
            .filter_map(|id| self.sessions.get(id).map(|s| view(id, s)))
            .collect()
    }

    /// Counts over the cluster.
    pub(crate) fn counts(&self) -> PresenceCounts {
        PresenceCounts {
            sessions: self.online,
            streams: self.streams,
            instances: self.members.len(),
        }
    }
}

fn view(id: &Arc<str>, s: &Session) -> SessionPresence {
    let streams = s.streams();
    SessionPresence {
        session_id: id.clone(),
        online: streams > 0,
        streams,
        instances: s.on.len(),
        since: s
            .on
            .iter()
            .map(|(_, stake)| stake.since)
            .min()
            .map(|ms| SystemTime::UNIX_EPOCH + std::time::Duration::from_millis(ms)),
    }
}

#[cfg(test)]
mod tests;
