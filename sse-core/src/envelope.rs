//! The wire envelope: the one JSON document every backend carries between instances.
//!
//! A service in any language publishes an event by writing this JSON to the broker:
//!
//! ```json
//! {"v":1,"id":"0192f0c4-7d3a-7b1e-9f00-3c1d2e4f5a6b","app":"orders","origin":"orders-1",
//!  "eventName":"order-update","sessionId":"s-42","payload":{"status":"shipped"},"ts":1732300000000}
//! ```
//!
//! | field | required | meaning |
//! |---|---|---|
//! | `v` | yes | envelope version, `1` |
//! | `id` | yes | unique event id, sent to clients as `id:`; time-ordered (UUIDv7) recommended |
//! | `app` | yes | the sending application; instances drop envelopes of other apps (by default) |
//! | `origin` | no | the publishing instance, for logs |
//! | `eventName` | yes | the SSE `event:` name |
//! | `sessionId` | no | target session; absent or `null` broadcasts to every stream of the app |
//! | `payload` | yes | any JSON: a string is sent as its text, anything else as its JSON text as written, whitespace between tokens removed |
//! | `ts` | no | publish time, milliseconds since the Unix epoch |
//! | `kind` | no | `"event"` (the default) or `"disconnect"` (below) |
//!
//! A **disconnect** (`"kind":"disconnect"`) is not an event: it ends every stream of its
//! `sessionId` (required) on every instance (see [`crate::disconnect`]). Its `eventName` and
//! `payload`, both optional, are the last event those streams get before they close (a
//! "do not come back" the client handles); without an `eventName` the streams just close:
//!
//! ```json
//! {"v":1,"id":"0192f0c4-7d3a-7b1e-9f00-3c1d2e4f5a6c","app":"orders","kind":"disconnect",
//!  "sessionId":"s-42","eventName":"logged-out","payload":{"reason":"logout"},"ts":1732300000000}
//! ```
//!
//! Unknown fields are ignored, so later minor additions stay readable by older instances.

use std::borrow::Cow;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::encode::{self, FieldError};
use crate::event::{EventId, SendSseEvent};

/// The envelope version this crate writes and reads.
pub const ENVELOPE_VERSION: u32 = 1;

/// What an envelope carries: an event for streams, or the end of a session's streams.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EnvelopeKind {
    /// An event (the default when `kind` is absent).
    #[default]
    Event,
    /// Ends every stream of the envelope's session, after its optional goodbye event (see
    /// [`crate::disconnect`]).
    Disconnect,
}

impl EnvelopeKind {
    fn is_event(&self) -> bool {
        *self == EnvelopeKind::Event
    }
}

/// An event on its way between instances. Built by [`Envelope::from_event`] or
/// [`Envelope::decode`], both of which validate it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Envelope {
    /// Envelope version, [`ENVELOPE_VERSION`].
    pub v: u32,
    /// The event id, written as the SSE `id:` field.
    pub id: String,
    /// The sending application's name.
    pub app: String,
    /// The publishing instance.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub origin: Option<String>,
    /// The SSE `event:` name (a disconnect's goodbye event; empty for none).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub event_name: String,
    /// The target session; `None` is a broadcast.
    #[serde(default)]
    pub session_id: Option<String>,
    /// The payload, kept as the JSON text it arrived as (`null` when a disconnect has none).
    #[serde(default = "null_payload")]
    pub payload: Box<RawValue>,
    /// Publish time in milliseconds since the Unix epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ts: Option<u64>,
    /// An event, or a disconnect.
    #[serde(default, skip_serializing_if = "EnvelopeKind::is_event")]
    pub kind: EnvelopeKind,
}

fn null_payload() -> Box<RawValue> {
    RawValue::NULL.to_owned()
}

/// `Some` whenever the field is present, even as `null`.
fn present_payload<'de: 'a, 'a, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<&'a RawValue>, D::Error> {
    <&'a RawValue>::deserialize(deserializer).map(Some)
}

/// Why an event or an envelope was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EnvelopeError {
    /// Not JSON, or not an envelope's JSON (a required field missing or of the wrong type).
    #[error("malformed envelope: {0}")]
    Malformed(#[from] serde_json::Error),
    /// An envelope version this build does not read.
    #[error("unsupported envelope version {0} (this build reads version {ENVELOPE_VERSION})")]
    UnsupportedVersion(u32),
    /// A field that cannot be written to an SSE stream as it is.
    #[error("invalid {0}")]
    InvalidField(#[from] FieldError),
    /// An event without its `payload` (which may be `null`, but not absent).
    #[error("malformed envelope: an event needs a payload (null is one)")]
    MissingPayload,
    /// A disconnect without the session it ends.
    #[error("a disconnect needs the sessionId whose streams it ends")]
    DisconnectWithoutSession,
}

impl Envelope {
    /// Wraps a published event for the wire, assigning its id when it has none.
    pub fn from_event(
        event: &SendSseEvent,
        app: &str,
        origin: &str,
    ) -> Result<Envelope, EnvelopeError> {
        let id = match &event.id {
            Some(id) => id.clone(),
            None => EventId::generate().into(),
        };
        let envelope = Envelope {
            v: ENVELOPE_VERSION,
            id,
            app: app.to_owned(),
            origin: Some(origin.to_owned()),
            event_name: event.event_name.clone(),
            session_id: event.session_id.clone(),
            payload: event.payload.as_raw().to_owned(),
            ts: Some(now_millis()),
            kind: EnvelopeKind::Event,
        };
        envelope.validate()?;
        Ok(envelope)
    }

    /// Reads an envelope from the bytes a backend delivered. Never panics on bad input.
    pub fn decode(bytes: &[u8]) -> Result<Envelope, EnvelopeError> {
        // The borrowed reading checks what the owned one cannot see (an absent payload).
        Self::decode_ref(bytes)?;
        Ok(serde_json::from_slice(bytes)?)
    }

    /// Reads an envelope without copying its text out of `bytes` (see [`EnvelopeRef`]).
    pub fn decode_ref(bytes: &[u8]) -> Result<EnvelopeRef<'_>, EnvelopeError> {
        let envelope: EnvelopeRef<'_> = serde_json::from_slice(bytes)?;
        envelope.validate()?;
        Ok(envelope)
    }

    /// The JSON bytes a backend carries.
    pub fn encode(&self) -> Result<Bytes, EnvelopeError> {
        Ok(Bytes::from(serde_json::to_vec(self)?))
    }

    /// Checks every rule the SSE encoder and the hub rely on.
    pub fn validate(&self) -> Result<(), EnvelopeError> {
        validate(
            self.v,
            self.kind,
            &self.id,
            &self.app,
            &self.event_name,
            self.session_id.as_deref(),
        )
    }

    /// Encodes `event` straight into the wire bytes, in one pass and without copying its fields
    /// into an [`Envelope`] first (what [`Hub::publish`](crate::Hub::publish) does); assigns an id
    /// when the event has none and returns it with the bytes.
    ///
    /// ```
    /// # use serde_json::json;
    /// use sse_core::{Envelope, SendSseEvent};
    /// let event = SendSseEvent::new("order-update", json!({"status": "shipped"})).to_session("s-42");
    /// let (id, bytes) = Envelope::encode_event(&event, "orders", "orders-1").unwrap();
    /// let envelope = Envelope::decode(&bytes).unwrap();
    /// assert_eq!((envelope.id.as_str(), envelope.session_id.as_deref()), (id.as_str(), Some("s-42")));
    /// ```
    pub fn encode_event(
        event: &SendSseEvent,
        app: &str,
        origin: &str,
    ) -> Result<(EventId, Bytes), EnvelopeError> {
        #[derive(Serialize)]
        #[serde(rename_all = "camelCase")]
        struct Outgoing<'a> {
            v: u32,
            id: &'a str,
            app: &'a str,
            origin: &'a str,
            event_name: &'a str,
            session_id: Option<&'a str>,
            payload: &'a RawValue,
            ts: u64,
        }
        let id = match &event.id {
            Some(id) => EventId::from(id.clone()),
            None => EventId::generate(),
        };
        let session_id = event.session_id.as_deref();
        validate(
            ENVELOPE_VERSION,
            EnvelopeKind::Event,
            id.as_str(),
            app,
            &event.event_name,
            session_id,
        )?;
        let outgoing = Outgoing {
            v: ENVELOPE_VERSION,
            id: id.as_str(),
            app,
            origin,
            event_name: &event.event_name,
            session_id,
            payload: event.payload.as_raw(),
            ts: now_millis(),
        };
        let mut bytes = Vec::with_capacity(
            160 + id.as_str().len() + app.len() + origin.len() + event.event_name.len(),
        );
        serde_json::to_writer(&mut bytes, &outgoing)?;
        Ok((id, Bytes::from(bytes)))
    }

    /// This envelope as an [`EnvelopeRef`] borrowing its fields.
    fn borrowed(&self) -> EnvelopeRef<'_> {
        EnvelopeRef {
            v: self.v,
            id: Text(Cow::Borrowed(&self.id)),
            app: Text(Cow::Borrowed(&self.app)),
            origin: self.origin.as_deref().map(|o| Text(Cow::Borrowed(o))),
            event_name: Text(Cow::Borrowed(&self.event_name)),
            session_id: self.session_id.as_deref().map(|s| Text(Cow::Borrowed(s))),
            payload: Some(&self.payload),
            ts: self.ts,
            kind: self.kind,
        }
    }

    /// The payload as the SSE `data` text: a JSON string's own text, any other value as its JSON
    /// text without whitespace between tokens.
    pub fn data(&self) -> Cow<'_, str> {
        data(&self.payload)
    }

    /// The SSE frame for this envelope, encoded once and shared by every recipient.
    pub fn to_sse(&self) -> Result<Bytes, EnvelopeError> {
        self.borrowed().to_sse()
    }
}

/// An envelope borrowed from the bytes it was read from: its text is copied only where JSON
/// escapes made that necessary. What the hub reads every received envelope as.
///
/// ```
/// use sse_core::Envelope;
/// let bytes = br#"{"v":1,"id":"7","app":"orders","eventName":"e","sessionId":"s1","payload":{"a":1}}"#;
/// let envelope = Envelope::decode_ref(bytes).unwrap();
/// assert_eq!((envelope.id(), envelope.session_id()), ("7", Some("s1")));
/// assert_eq!(&envelope.to_sse().unwrap()[..], b"id: 7\nevent: e\ndata: {\"a\":1}\n\n");
/// ```
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EnvelopeRef<'a> {
    v: u32,
    #[serde(borrow)]
    id: Text<'a>,
    #[serde(borrow)]
    app: Text<'a>,
    #[serde(borrow, default)]
    origin: Option<Text<'a>>,
    #[serde(borrow, default)]
    event_name: Text<'a>,
    #[serde(borrow, default)]
    session_id: Option<Text<'a>>,
    /// `None` only when absent (a `null` payload is `Some`): an event needs one.
    #[serde(borrow, default, deserialize_with = "present_payload")]
    payload: Option<&'a RawValue>,
    #[serde(default)]
    ts: Option<u64>,
    #[serde(default)]
    kind: EnvelopeKind,
}

impl<'a> EnvelopeRef<'a> {
    /// The publish time the publisher wrote, milliseconds since the Unix epoch.
    pub fn ts(&self) -> Option<u64> {
        self.ts
    }

    /// The event id.
    pub fn id(&self) -> &str {
        &self.id.0
    }

    /// The sending application.
    pub fn app(&self) -> &str {
        &self.app.0
    }

    /// The publishing instance, if given.
    pub fn origin(&self) -> Option<&str> {
        self.origin.as_ref().map(|o| &*o.0)
    }

    /// The SSE `event:` name (a disconnect's goodbye event; empty for none).
    pub fn event_name(&self) -> &str {
        &self.event_name.0
    }

    /// An event, or a disconnect.
    pub fn kind(&self) -> EnvelopeKind {
        self.kind
    }

    /// The target session; `None` is a broadcast.
    pub fn session_id(&self) -> Option<&str> {
        self.session_id.as_ref().map(|s| &*s.0)
    }

    /// The payload's JSON text (`null` when a disconnect has none).
    pub fn payload(&self) -> &'a RawValue {
        self.payload.unwrap_or(RawValue::NULL)
    }

    /// The payload as the SSE `data` text (see [`Envelope::data`]).
    pub fn data(&self) -> Cow<'a, str> {
        data(self.payload())
    }

    /// Checks every rule the SSE encoder and the hub rely on.
    pub fn validate(&self) -> Result<(), EnvelopeError> {
        if self.payload.is_none() && self.kind == EnvelopeKind::Event {
            return Err(EnvelopeError::MissingPayload);
        }
        validate(
            self.v,
            self.kind,
            self.id(),
            self.app(),
            self.event_name(),
            self.session_id(),
        )
    }

    /// The SSE frame for this envelope, encoded once and shared by every recipient.
    pub fn to_sse(&self) -> Result<Bytes, EnvelopeError> {
        self.validate()?;
        Ok(self.frame())
    }

    /// [`to_sse`](Self::to_sse) for an envelope already validated (as
    /// [`Envelope::decode_ref`] does): the hub's receive path checks each envelope once.
    pub(crate) fn frame(&self) -> Bytes {
        self.frame_as(self.id())
    }

    /// The frame with `id` as its `id` field (a cursor, in session routing); `id` holds no CR,
    /// LF or NUL when the envelope's own id holds none.
    pub(crate) fn frame_as(&self, id: &str) -> Bytes {
        let data = self.data();
        encode::Event::new(&data)
            .id(id)
            .name(self.event_name())
            .encode_checked()
    }
}

/// A string field, borrowed from the input unless JSON escapes made a copy necessary (serde
/// borrows a `Cow` only as a direct field, not inside an `Option`).
#[derive(Debug, Default)]
struct Text<'a>(Cow<'a, str>);

impl<'de: 'a, 'a> Deserialize<'de> for Text<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = Cow<'de, str>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(Cow::Borrowed(v))
            }
            fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Cow::Owned(v.to_owned()))
            }
            fn visit_string<E>(self, v: String) -> Result<Self::Value, E> {
                Ok(Cow::Owned(v))
            }
        }
        deserializer.deserialize_str(Visitor).map(Text)
    }
}

fn validate(
    v: u32,
    kind: EnvelopeKind,
    id: &str,
    app: &str,
    event_name: &str,
    session: Option<&str>,
) -> Result<(), EnvelopeError> {
    if v != ENVELOPE_VERSION {
        return Err(EnvelopeError::UnsupportedVersion(v));
    }
    check_id(id)?;
    match kind {
        EnvelopeKind::Event => encode::check_event_name(event_name)?,
        EnvelopeKind::Disconnect => {
            if session.is_none() {
                return Err(EnvelopeError::DisconnectWithoutSession);
            }
            if !event_name.is_empty() {
                encode::check_event_name(event_name)?;
            }
        }
    }
    if app.is_empty() {
        return Err(FieldError::Empty { field: "app" }.into());
    }
    if let Some(session) = session {
        check_session(session)?;
    }
    Ok(())
}

/// A payload as SSE `data` text: a JSON string's own text, any other value as its JSON text
/// without whitespace between tokens.
fn data(payload: &RawValue) -> Cow<'_, str> {
    let raw = payload.get();
    if raw.starts_with('"') {
        if let Ok(text) = serde_json::from_str::<Cow<'_, str>>(raw) {
            return text;
        }
    } else if memchr::memchr2(b'\n', b'\r', raw.as_bytes()).is_some() {
        // Pretty-printed: compact it so it stays on one `data:` line.
        return Cow::Owned(compact(raw));
    }
    Cow::Borrowed(raw)
}

/// Valid JSON text without the whitespace between its tokens: keys keep their order and numbers
/// their spelling (a parse and re-serialization would sort the keys and respell the numbers).
fn compact(json: &str) -> String {
    let mut out = String::with_capacity(json.len());
    let (mut in_string, mut escaped) = (false, false);
    for c in json.chars() {
        if in_string {
            out.push(c);
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == '"' {
                in_string = false;
            }
        } else if c == '"' {
            in_string = true;
            out.push(c);
        } else if !matches!(c, ' ' | '\t' | '\n' | '\r') {
            out.push(c);
        }
    }
    out
}

/// Checks an event id: non-empty, no CR, LF or NUL.
pub fn check_id(id: &str) -> Result<(), FieldError> {
    if id.is_empty() {
        return Err(FieldError::Empty { field: "id" });
    }
    encode::check_single_line("id", id)
}

/// Checks a session id: non-empty, no CR, LF or NUL.
pub fn check_session(session: &str) -> Result<(), FieldError> {
    if session.is_empty() {
        return Err(FieldError::Empty { field: "sessionId" });
    }
    encode::check_single_line("sessionId", session)
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
    use serde_json::json;

    fn roundtrip(event: SendSseEvent) -> Envelope {
        let env = Envelope::from_event(&event, "orders", "i-1").unwrap();
        let decoded = Envelope::decode(&env.encode().unwrap()).unwrap();
        // The one-pass encoding says the same.
        let (id, bytes) = Envelope::encode_event(&event, "orders", "i-1").unwrap();
        let other = Envelope::decode(&bytes).unwrap();
        if event.id.is_some() {
            assert_eq!(id.as_str(), decoded.id);
        }
        assert_eq!(
            (
                &other.app,
                &other.origin,
                &other.event_name,
                &other.session_id
            ),
            (
                &decoded.app,
                &decoded.origin,
                &decoded.event_name,
                &decoded.session_id
            )
        );
        assert_eq!(other.payload.get(), decoded.payload.get());
        // And read without copying, it gives the same frame.
        let borrowed = Envelope::decode_ref(&bytes).unwrap();
        assert_eq!(borrowed.to_sse().unwrap(), other.to_sse().unwrap());
        decoded
    }

    #[test]
    fn roundtrip_keeps_every_field() {
        let env = roundtrip(
            SendSseEvent::new("order-update", json!({"a": [1, 2]}))
                .to_session("s1")
                .with_id("id-1"),
        );
        assert_eq!(env.v, 1);
        assert_eq!(env.id, "id-1");
        assert_eq!(env.app, "orders");
        assert_eq!(env.origin.as_deref(), Some("i-1"));
        assert_eq!(env.event_name, "order-update");
        assert_eq!(env.session_id.as_deref(), Some("s1"));
        assert_eq!(env.payload.get(), r#"{"a":[1,2]}"#);
        assert!(env.ts.is_some());
    }

    #[test]
    fn wire_format_uses_camel_case() {
        let env = Envelope::from_event(&SendSseEvent::new("e", json!(1)), "a", "o").unwrap();
        let value: serde_json::Value = serde_json::from_slice(&env.encode().unwrap()).unwrap();
        let obj = value.as_object().unwrap();
        for key in [
            "v",
            "id",
            "app",
            "origin",
            "eventName",
            "sessionId",
            "payload",
            "ts",
        ] {
            assert!(obj.contains_key(key), "{key} missing in {value}");
        }
    }

    #[test]
    fn a_generated_id_is_assigned() {
        let a = roundtrip(SendSseEvent::new("e", json!(null)));
        let b = roundtrip(SendSseEvent::new("e", json!(null)));
        assert_ne!(a.id, b.id);
        assert!(a.id < b.id, "ids are time ordered");
    }

    #[test]
    fn string_payload_is_written_as_text_other_values_as_compact_json() {
        let text = roundtrip(SendSseEvent::new("e", json!("two\nlines")));
        assert_eq!(
            &text.to_sse().unwrap()[..],
            format!("id: {}\nevent: e\ndata: two\ndata: lines\n\n", text.id).as_bytes()
        );
        let obj = roundtrip(SendSseEvent::new("e", json!({"k": "v w"})));
        assert_eq!(obj.data(), r#"{"k":"v w"}"#);
    }

    #[test]
    fn foreign_pretty_printed_payload_is_compacted() {
        let env = Envelope::decode(
            br#"{"v":1,"id":"x","app":"a","eventName":"e","payload":{
                "k" : [1, 2]
            }}"#,
        )
        .unwrap();
        assert_eq!(env.data(), r#"{"k":[1,2]}"#);
        assert!(env.session_id.is_none());
    }

    #[test]
    fn a_payload_keeps_its_key_order_and_number_spelling() {
        let env = Envelope::decode(
            br#"{"v":1,"id":"x","app":"a","eventName":"e","payload":{
                "zeta" : 1.50, "alpha": [1e2, 12345678901234567890123],
                "s": "a \" b  \\",  "t" : "x\ny"
            }}"#,
        )
        .unwrap();
        assert_eq!(
            env.data(),
            r#"{"zeta":1.50,"alpha":[1e2,12345678901234567890123],"s":"a \" b  \\","t":"x\ny"}"#
        );
        let raw = RawValue::from_string(r#"{"order":17,"status":"shipped"}"#.to_owned()).unwrap();
        let env = Envelope::from_event(&SendSseEvent::with_json("e", raw), "a", "o").unwrap();
        assert_eq!(env.data(), r#"{"order":17,"status":"shipped"}"#);
    }

    #[test]
    fn publishing_injection_is_refused() {
        for event in [
            SendSseEvent::new("a\nb", json!(1)),
            SendSseEvent::new("e", json!(1)).with_id("1\r2"),
            SendSseEvent::new("e", json!(1)).with_id("1\u{0}2"),
            SendSseEvent::new("", json!(1)),
            SendSseEvent::new("e", json!(1)).to_session(""),
        ] {
            assert!(
                matches!(
                    Envelope::from_event(&event, "a", "o"),
                    Err(EnvelopeError::InvalidField(_))
                ),
                "{event:?}"
            );
        }
    }

    #[test]
    fn malformed_input_is_an_error_not_a_panic() {
        let cases: &[&[u8]] = &[
            b"",
            b"not json",
            b"{}",
            b"[]",
            b"null",
            br#"{"v":1}"#,
            br#"{"v":"1","id":"x","app":"a","eventName":"e","payload":1}"#,
            br#"{"v":1,"id":"x","app":"a","eventName":"e"}"#,
            br#"{"v":1,"id":"","app":"a","eventName":"e","payload":1}"#,
            br#"{"v":1,"id":"x","app":"","eventName":"e","payload":1}"#,
            br#"{"v":1,"id":"x","app":"a","eventName":"e\n","payload":1}"#,
            br#"{"v":1,"id":"x","app":"a","eventName":"e","sessionId":5,"payload":1}"#,
            b"\xff\xfe",
        ];
        for case in cases {
            assert!(
                Envelope::decode(case).is_err(),
                "{:?}",
                String::from_utf8_lossy(case)
            );
            assert!(
                Envelope::decode_ref(case).is_err(),
                "{:?}",
                String::from_utf8_lossy(case)
            );
        }
        assert!(matches!(
            Envelope::decode(br#"{"v":2,"id":"x","app":"a","eventName":"e","payload":1}"#),
            Err(EnvelopeError::UnsupportedVersion(2))
        ));
    }

    #[test]
    fn a_borrowed_read_copies_only_escaped_text() {
        let bytes = br#"{"v":1,"id":"a\"b","app":"orders","origin":null,"eventName":"e\u00e9","sessionId":"plain","payload":"x\ny"}"#;
        let env = Envelope::decode_ref(bytes).unwrap();
        assert_eq!(env.id(), "a\"b");
        assert!(matches!(env.id.0, Cow::Owned(_)));
        assert_eq!(env.event_name(), "eé");
        assert_eq!(env.session_id(), Some("plain"));
        assert!(matches!(
            env.session_id.as_ref().unwrap().0,
            Cow::Borrowed(_)
        ));
        assert_eq!(env.origin(), None);
        assert_eq!(
            &env.to_sse().unwrap()[..],
            "id: a\"b\nevent: eé\ndata: x\ndata: y\n\n".as_bytes()
        );
        let sessionless =
            br#"{"v":1,"id":"1","app":"a","eventName":"e","sessionId":null,"payload":1}"#;
        assert_eq!(
            Envelope::decode_ref(sessionless).unwrap().session_id(),
            None
        );
    }

    #[test]
    fn unknown_fields_are_ignored() {
        let env = Envelope::decode(
            br#"{"v":1,"id":"x","app":"a","eventName":"e","payload":"p","future":true}"#,
        )
        .unwrap();
        assert_eq!(env.data(), "p");
    }
}
