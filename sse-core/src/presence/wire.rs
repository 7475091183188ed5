//! Presence messages on the broadcast channel: `{"ssePresence":{…}}`, read by hubs before any
//! envelope decoding (as probes are) and never delivered to a stream.
//!
//! ```json
//! {"ssePresence":{"app":"orders","from":"hub-1","inc":7,"t":"delta",
//!   "sessions":[{"s":"u-42","n":2,"since":1732300000000,"e":["chat"]}]}}
//! ```
//!
//! `from` and `inc` name the sending instance and its incarnation (a random number drawn at each
//! start, so a restarted instance with the same id is a new member). A `delta` gives the
//! sender's **absolute** count of streams per session (`n`, 0 when the last one closed), since
//! when the session has had one there (`since`, Unix ms) and the event names its streams listen
//! to (`e`, absent for all): applying one twice changes nothing.

use serde::{Deserialize, Serialize};

/// What every presence message begins with.
pub(crate) const PREFIX: &[u8] = b"{\"ssePresence\":";

/// Whether `message` is a presence message (of any app).
pub(crate) fn is_presence(message: &[u8]) -> bool {
    message.starts_with(PREFIX)
}

/// One presence message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Message {
    pub(crate) app: String,
    pub(crate) from: String,
    pub(crate) inc: u64,
    #[serde(flatten)]
    pub(crate) body: Body,
}

/// What a presence message says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "t", rename_all = "lowercase")]
pub(crate) enum Body {
    /// The sender's streams of these sessions now.
    Delta { sessions: Vec<Entry> },
    /// The sender is alive; `synced` when it holds the cluster's whole state.
    Beat { synced: bool },
    /// The sender (just started, or lost its state) asks for the cluster's state.
    Sync,
    /// The sender found no instance to ask and starts the cluster's state itself.
    Synced,
    /// One part of the state as it was when `to`'s sync request was applied.
    Snapshot {
        to: String,
        to_inc: u64,
        part: u32,
        parts: u32,
        state: Box<SnapshotPart>,
    },
    /// `who` (in incarnation `who_inc`) has been silent too long: it is gone, with its streams.
    Evict {
        who: String,
        #[serde(rename = "whoInc")]
        who_inc: u64,
    },
    /// The sender is shutting down: it is gone, with its streams.
    Leave,
}

/// One instance's streams of one session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Entry {
    /// The session.
    pub(crate) s: String,
    /// Streams open.
    pub(crate) n: u32,
    /// Since when (Unix ms) the instance has had a stream of it.
    #[serde(default)]
    pub(crate) since: u64,
    /// The event names its streams listen to; `None` for every name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) e: Option<Vec<String>>,
}

/// A member as a snapshot carries it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct MemberState {
    pub(crate) id: String,
    pub(crate) inc: u64,
    pub(crate) synced: bool,
}

/// A session as a snapshot carries it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct SessionState {
    pub(crate) s: String,
    /// `(instance, its entry)`; the entry's `s` is empty.
    pub(crate) on: Vec<(String, Entry)>,
    pub(crate) announced: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) pending: Option<PendingState>,
}

/// A transition decided and not announced yet.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct PendingState {
    pub(crate) online: bool,
    pub(crate) cause: String,
    pub(crate) transition: u64,
}

/// Part of a snapshot: the members (in every part) and some of the sessions.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct SnapshotPart {
    pub(crate) members: Vec<MemberState>,
    pub(crate) transitions: u64,
    pub(crate) sessions: Vec<SessionState>,
}

#[derive(Serialize)]
struct Outer<'a> {
    #[serde(rename = "ssePresence")]
    presence: &'a Message,
}

#[derive(Deserialize)]
struct Inner {
    #[serde(rename = "ssePresence")]
    presence: Message,
}

impl Message {
    /// The bytes on the wire.
    pub(crate) fn encode(&self) -> bytes::Bytes {
        // Only strings, numbers and lists: serializing cannot fail.
        bytes::Bytes::from(serde_json::to_vec(&Outer { presence: self }).unwrap_or_default())
    }

    /// Reads a presence message; `None` when it is not one this build reads.
    pub(crate) fn decode(bytes: &[u8]) -> Option<Message> {
        serde_json::from_slice::<Inner>(bytes)
            .ok()
            .map(|inner| inner.presence)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn messages_round_trip_and_are_recognised() {
        let message = Message {
            app: "orders".into(),
            from: "hub-1".into(),
            inc: 7,
            body: Body::Delta {
                sessions: vec![Entry {
                    s: "u-42".into(),
                    n: 2,
                    since: 1,
                    e: Some(vec!["chat".into()]),
                }],
            },
        };
        let bytes = message.encode();
        assert!(is_presence(&bytes), "{}", String::from_utf8_lossy(&bytes));
        assert_eq!(Message::decode(&bytes), Some(message.clone()));
        assert_eq!(Message::decode(b"{\"ssePresence\":{\"t\":\"new\"}}"), None);
        // Every kind reads back (a field of the kind's named like one of the message's would not).
        for body in [
            Body::Beat { synced: true },
            Body::Sync,
            Body::Synced,
            Body::Leave,
            Body::Evict {
                who: "hub-2".into(),
                who_inc: 9,
            },
        ] {
            let message = Message {
                body,
                ..message.clone()
            };
            assert_eq!(Message::decode(&message.encode()), Some(message));
        }
    }
}
