//! What business code publishes: [`SendSseEvent`], and the [`EventId`] it gets back.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};
use serde_json::Value;
use serde_json::value::RawValue;

/// An event's payload: JSON, kept as the text it was given rather than as a parsed tree, so a
/// payload posted over HTTP or written by another service reaches clients as it was written
/// (its keys in their order, its numbers as spelled) and is never parsed twice.
///
/// Built from a [`Value`] (`SendSseEvent::new`) or from JSON text
/// ([`SendSseEvent::with_json`]); compares equal to a `Value` holding the same JSON.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Payload(Box<RawValue>);

impl Payload {
    /// The payload's JSON text.
    pub fn get(&self) -> &str {
        self.0.get()
    }

    /// The payload as JSON text in a box, as envelopes carry it.
    pub fn as_raw(&self) -> &RawValue {
        &self.0
    }

    /// The payload parsed into a [`Value`].
    pub fn to_value(&self) -> Value {
        serde_json::from_str(self.0.get()).unwrap_or(Value::Null)
    }
}

impl From<Value> for Payload {
    fn from(value: Value) -> Self {
        // A `Value` always serializes; `null` would be the answer to the impossible.
        Payload(serde_json::value::to_raw_value(&value).unwrap_or_default())
    }
}

impl From<Box<RawValue>> for Payload {
    fn from(raw: Box<RawValue>) -> Self {
        Payload(raw)
    }
}

impl PartialEq for Payload {
    fn eq(&self, other: &Self) -> bool {
        self.get() == other.get() || self.to_value() == other.to_value()
    }
}

impl PartialEq<Value> for Payload {
    fn eq(&self, other: &Value) -> bool {
        self.to_value() == *other
    }
}

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
    /// The event's data. A JSON string is written as its text, any other value as its JSON text
    /// (kept as given, whitespace between tokens removed).
    pub payload: Payload,
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
            payload: Payload::from(payload.into()),
            id: None,
        }
    }

    /// An event whose payload is JSON text taken as it is, e.g. the body of a request: clients
    /// receive its keys in its order and its numbers as they were written.
    ///
    /// ```
    /// use serde_json::value::RawValue;
    /// use sse_core::SendSseEvent;
    ///
    /// let raw = RawValue::from_string(r#"{"order":17,"status":"shipped","price":1.50}"#.into())?;
    /// let event = SendSseEvent::with_json("order-update", raw);
    /// assert_eq!(event.payload.get(), r#"{"order":17,"status":"shipped","price":1.50}"#);
    /// # Ok::<(), serde_json::Error>(())
    /// ```
    pub fn with_json(event_name: impl Into<String>, payload: Box<RawValue>) -> Self {
        SendSseEvent {
            event_name: event_name.into(),
            session_id: None,
            payload: Payload(payload),
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
    /// A new time-ordered id (UUIDv7): unique across instances, sortable by publish time, and
    /// strictly increasing within this process (RFC 9562's counter method: a 22-bit counter in
    /// the bits after the millisecond timestamp, 50 random bits after it). Costs no system call.
    pub fn generate() -> Self {
        const COUNTER_BITS: u32 = 22;
        static LAST: AtomicU64 = AtomicU64::new(0);
        let now = now_millis() << COUNTER_BITS;
        let mut last = LAST.load(Ordering::Relaxed);
        let packed = loop {
            // A new millisecond restarts the counter; within one (or if the clock went back) it
            // counts on, carrying into the millisecond should it ever overflow.
            let next = if now > last { now } else { last + 1 };
            match LAST.compare_exchange_weak(last, next, Ordering::AcqRel, Ordering::Relaxed) {
                Ok(_) => break next,
                Err(current) => last = current,
            }
        };
        let (millis, counter) = (packed >> COUNTER_BITS, packed & ((1 << COUNTER_BITS) - 1));
        let random = fastrand::u64(..).to_le_bytes();
        // The builder keeps 12 bits of byte 0-1 (after the version) and 6 bits of byte 2 (after
        // the variant): 22 bits of counter in order, then the random bits.
        let bytes = [
            (counter >> 18) as u8 & 0x0f,
            (counter >> 10) as u8,
            (counter >> 4) as u8 & 0x3f,
            ((counter as u8 & 0x0f) << 4) | (random[0] & 0x0f),
            random[1],
            random[2],
            random[3],
            random[4],
            random[5],
            random[6],
        ];
        let id = uuid::Builder::from_unix_timestamp_millis(millis, &bytes).into_uuid();
        EventId(id.hyphenated().to_string())
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

fn now_millis() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn generated_ids_are_unique_and_time_ordered() {
        let ids: Vec<EventId> = (0..100_000).map(|_| EventId::generate()).collect();
        let mut sorted = ids.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(sorted, ids);
        for id in [&ids[0], &ids[99_999]] {
            let uuid = uuid::Uuid::parse_str(id.as_str()).unwrap();
            assert_eq!(uuid.get_version_num(), 7);
            assert_eq!(uuid.get_variant(), uuid::Variant::RFC4122);
            let (secs, _) = uuid.get_timestamp().unwrap().to_unix();
            assert!(secs.abs_diff(now_millis() / 1000) < 60, "{id}");
        }
    }

    #[test]
    fn ids_from_many_threads_are_unique() {
        let ids: Vec<EventId> = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..4)
                .map(|_| {
                    scope.spawn(|| (0..20_000).map(|_| EventId::generate()).collect::<Vec<_>>())
                })
                .collect();
            handles
                .into_iter()
                .flat_map(|h| h.join().unwrap())
                .collect()
        });
        let mut unique = ids.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), ids.len());
    }
}
