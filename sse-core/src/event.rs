//! What business code publishes: [`SendSseEvent`], and the [`EventId`] it gets back.

use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// "Send event X to session S", or to every connected client when there is no session.
///
/// Business code builds one and hands it to [`Hub::publish`](crate::Hub::publish); it never needs to
/// know which instance holds the session's stream.
///
/// ```
/// use serde_json::json;
/// use sse_core::SendSseEvent;
///
/// let to_one = SendSseEvent::new("order-update", json!({"status": "shipped"})).to_session("s-42");
/// let to_all = SendSseEvent::new("maintenance", json!("back in 5 minutes"));
/// let reference = SendSseEvent::resource_mutation("order-changed", "/api/orders/17");
/// assert_eq!(reference.payload, json!({"path": "/api/orders/17"}));
/// # let _ = (to_one, to_all);
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SendSseEvent {
    /// The SSE `event:` name clients listen for. Must be non-empty, without CR, LF or NUL.
    pub event_name: String,
    /// The session whose streams receive the event; `None` broadcasts to every stream of the app.
    #[serde(default)]
    pub session_id: Option<String>,
    /// The event's data. A JSON string is written as its text, any other value as compact JSON.
    pub payload: Value,
    /// The SSE `id:`; when `None`, the hub assigns a time-ordered UUIDv7 at publish time.
    #[serde(default)]
    pub id: Option<String>,
}

impl SendSseEvent {
    /// An event for every connected client (a broadcast) until [`to_session`](Self::to_session).
    pub fn new(event_name: impl Into<String>, payload: impl Into<Value>) -> Self {
        SendSseEvent {
            event_name: event_name.into(),
            session_id: None,
            payload: payload.into(),
            id: None,
        }
    }

    /// A reference-only notification, as jEAP's `ResourceMutationService` sends: the event is named
    /// after the kind of change and carries only `{"path": path}`; clients fetch the data over REST.
    pub fn resource_mutation(kind: impl Into<String>, path: impl Into<String>) -> Self {
        let mut payload = serde_json::Map::new();
        payload.insert("path".to_owned(), Value::String(path.into()));
        SendSseEvent::new(kind, Value::Object(payload))
    }

    /// Targets the streams of one session only.
    pub fn to_session(mut self, session_id: impl Into<String>) -> Self {
        self.session_id = Some(session_id.into());
        self
    }

    /// Uses `id` as the event id instead of a generated one.
    pub fn with_id(mut self, id: impl Into<String>) -> Self {
        self.id = Some(id.into());
        self
    }
}

/// The id of a published event: the SSE `id:` every recipient sees.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct EventId(String);

impl EventId {
    /// A new time-ordered id (UUIDv7): unique across instances, sortable by publish time.
    pub fn generate() -> Self {
        EventId(uuid::Uuid::now_v7().to_string())
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl From<String> for EventId {
    fn from(id: String) -> Self {
        EventId(id)
    }
}

impl From<EventId> for String {
    fn from(id: EventId) -> Self {
        id.0
    }
}

impl fmt::Display for EventId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_ids_are_unique_and_time_ordered() {
        let ids: Vec<EventId> = (0..1000).map(|_| EventId::generate()).collect();
        let mut sorted = ids.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(sorted, ids);
    }
}
