//! The streams of a repository by the event names they listen to, so that a broadcast visits its
//! listeners only, not every stream of the instance.

use std::borrow::Borrow;
use std::collections::HashSet;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use dashmap::DashMap;

use super::Entry;
use crate::repository::EventFilter;

/// Each name's listeners are split over this many stripes (by stream id), so that a broadcast to a
/// name most streams listen to holds one stripe's lock at a time, and streams of that name still
/// open and close in the other stripes meanwhile.
const STRIPES: usize = 8;

/// One stripe: each name's listeners of that stripe.
type Stripe = DashMap<Box<str>, HashSet<ById>>;

/// A stream in a set, known by its id (the set's slot holds one pointer, not the id beside it).
#[derive(Debug)]
struct ById(Arc<Entry>);

impl PartialEq for ById {
    fn eq(&self, other: &Self) -> bool {
        self.0.id == other.0.id
    }
}

impl Eq for ById {}

impl Hash for ById {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.0.id.hash(state);
    }
}

impl Borrow<u64> for ById {
    fn borrow(&self) -> &u64 {
        &self.0.id
    }
}

/// Streams by event name, and the streams that take every name.
#[derive(Debug)]
pub(super) struct Listeners {
    any: DashMap<u64, Arc<Entry>>,
    names: Box<[Stripe]>,
}

impl Default for Listeners {
    fn default() -> Self {
        Self {
            any: DashMap::new(),
            names: (0..STRIPES).map(|_| DashMap::new()).collect(),
        }
    }
}

impl Listeners {
    fn stripe(&self, id: u64) -> &Stripe {
        &self.names[id as usize % STRIPES]
    }

    /// Files `entry` under each name of its filter.
    pub(super) fn insert(&self, entry: &Arc<Entry>) {
        match &entry.events {
            EventFilter::Any => {
                self.any.insert(entry.id, entry.clone());
            }
            EventFilter::Names(names) => {
                let stripe = self.stripe(entry.id);
                for name in names.iter() {
                    match stripe.get_mut(&**name) {
                        Some(mut listeners) => {
                            listeners.insert(ById(entry.clone()));
                        }
                        None => {
                            stripe
                                .entry(name.clone())
                                .or_default()
                                .insert(ById(entry.clone()));
                        }
                    }
                }
            }
        }
    }

    /// Takes `entry` out; once this returns, no broadcast offers it a frame.
    pub(super) fn remove(&self, entry: &Entry) {
        match &entry.events {
            EventFilter::Any => {
                self.any.remove(&entry.id);
            }
            EventFilter::Names(names) => {
                let stripe = self.stripe(entry.id);
                for name in names.iter() {
                    stripe.remove_if_mut(&**name, |_, listeners| {
                        listeners.remove(&entry.id);
                        listeners.is_empty()
                    });
                }
            }
        }
    }

    /// Calls `visit` once for each stream an event of this name goes to.
    pub(super) fn for_each(&self, event_name: &str, mut visit: impl FnMut(&Entry)) {
        for entry in self.any.iter() {
            visit(entry.value());
        }
        for stripe in self.names.iter() {
            if let Some(listeners) = stripe.get(event_name) {
                for entry in listeners.iter() {
                    visit(&entry.0);
                }
            }
        }
    }

    /// Whether no stream is filed (for tests).
    #[cfg(test)]
    pub(super) fn is_empty(&self) -> bool {
        self.any.is_empty() && self.names.iter().all(DashMap::is_empty)
    }
}
