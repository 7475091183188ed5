//! Ending a session's streams on every instance: logout, a revoked account, a changed permission.
//!
//! [`Hub::disconnect`](crate::Hub::disconnect) publishes a disconnect envelope
//! (`"kind":"disconnect"`, see [`crate::envelope`]) on the broadcast channel, so it reaches every
//! instance whatever the routing. Each instance ends the streams of that session it holds: the
//! optional goodbye event is queued after whatever the stream was already sent (even when its
//! filter does not ask for that name), then the stream closes once the client has read it. A
//! client that handles the goodbye event (`source.close()`) does not come back; one that does
//! not reconnects as after any close, and is let in again only if its credentials still are
//! (an auth callout's cached answer for the session is dropped on every instance; see
//! [`Hub::disconnected`](crate::Hub::disconnected)).
//!
//! A disconnect ends the streams that opened before it was published, by the publisher's clock
//! (`ts`), allowing [`CLOCK_SKEW`] between instances' clocks: delivered twice, or late after a
//! gap in the subscription (from the broker's history), it does not end a stream the session
//! opened afterwards. It is never replayed to a resuming stream, and it is not kept in the
//! replay log.
//!
//! In [session routing](crate::route) a disconnect travels the broadcast channel, not the
//! session's route: it is not ordered after events published to the session just before it,
//! which may still be on their way when the stream closes.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;

use crate::encode::{self, FieldError};
use crate::envelope::{ENVELOPE_VERSION, Envelope, EnvelopeError, EnvelopeKind, EnvelopeRef};
use crate::event::{EventId, Payload};
use crate::history;

/// How far apart instances' clocks may be for a disconnect to still end a stream that opened
/// just before it was published.
pub const CLOCK_SKEW: Duration = Duration::from_secs(5);

/// The end of a session's streams, with the event they get last.
///
/// ```
/// # use serde_json::json;
/// use sse_core::Disconnect;
/// let logout = Disconnect::session("u-42").goodbye("logged-out", json!({"reason": "logout"}));
/// assert_eq!(logout.session_id, "u-42");
/// ```
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Disconnect {
    /// The session whose streams end, on every instance.
    pub session_id: String,
    /// The last event those streams get before they close: its name and payload.
    pub goodbye: Option<(String, Payload)>,
}

impl Disconnect {
    /// Ends the streams of `session_id`, with no goodbye event.
    pub fn session(session_id: impl Into<String>) -> Disconnect {
        Disconnect {
            session_id: session_id.into(),
            goodbye: None,
        }
    }

    /// Sends the event `event_name` with `payload` to each stream before it closes.
    pub fn goodbye(
        mut self,
        event_name: impl Into<String>,
        payload: impl Into<serde_json::Value>,
    ) -> Disconnect {
        self.goodbye = Some((event_name.into(), Payload::from(payload.into())));
        self
    }

    /// The envelope that carries this disconnect, under a new id.
    pub(crate) fn encode(
        &self,
        app: &str,
        origin: &str,
    ) -> Result<(EventId, Bytes), EnvelopeError> {
        let id = EventId::generate();
        if self
            .goodbye
            .as_ref()
            .is_some_and(|(name, _)| name.is_empty())
        {
            return Err(FieldError::Empty { field: "eventName" }.into());
        }
        let (event_name, payload) = match &self.goodbye {
            Some((name, payload)) => (name.clone(), payload.as_raw().to_owned()),
            None => (String::new(), serde_json::value::RawValue::NULL.to_owned()),
        };
        let envelope = Envelope {
            v: ENVELOPE_VERSION,
            id: id.as_str().to_owned(),
            app: app.to_owned(),
            origin: Some(origin.to_owned()),
            event_name,
            session_id: Some(self.session_id.clone()),
            payload,
            ts: Some(history::unix_millis(SystemTime::now())),
            kind: EnvelopeKind::Disconnect,
        };
        envelope.validate()?;
        Ok((id, envelope.encode()?))
    }
}

/// What an instance does with a disconnect it received: the session, which of its streams end
/// (those opened before `opened_before`, in milliseconds since the Unix epoch), and the
/// goodbye frame they get first.
#[derive(Debug)]
pub(crate) struct Received {
    pub(crate) session: Arc<str>,
    pub(crate) opened_before: u64,
    pub(crate) goodbye: Option<Bytes>,
}

impl Received {
    /// Reads a validated disconnect envelope (`None` for an event).
    pub(crate) fn of(envelope: &EnvelopeRef<'_>) -> Option<Received> {
        if envelope.kind() != EnvelopeKind::Disconnect {
            return None;
        }
        let session = Arc::from(envelope.session_id()?);
        let published = envelope
            .ts()
            .unwrap_or_else(|| history::unix_millis(SystemTime::now()));
        let skew = u64::try_from(CLOCK_SKEW.as_millis()).unwrap_or(u64::MAX);
        let goodbye = (!envelope.event_name().is_empty()).then(|| {
            let data = envelope.data();
            // No `id:`: the goodbye is not an event to resume after.
            encode::Event::new(&data)
                .name(envelope.event_name())
                .encode_checked()
        });
        Some(Received {
            session,
            opened_before: published.saturating_add(skew),
            goodbye,
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use serde_json::json;

    #[test]
    fn a_disconnect_travels_as_an_envelope_and_reads_back() {
        let (id, bytes) = Disconnect::session("s-1")
            .goodbye("bye", json!({"why": "logout"}))
            .encode("orders", "i-1")
            .unwrap();
        let envelope = Envelope::decode_ref(&bytes).unwrap();
        assert_eq!(envelope.id(), id.as_str());
        assert_eq!(envelope.kind(), EnvelopeKind::Disconnect);
        let received = Received::of(&envelope).unwrap();
        assert_eq!(&*received.session, "s-1");
        assert_eq!(
            &received.goodbye.unwrap()[..],
            b"event: bye\ndata: {\"why\":\"logout\"}\n\n"
        );
        let published = envelope.ts().unwrap();
        assert_eq!(received.opened_before, published + 5000);
    }

    #[test]
    fn a_disconnect_without_goodbye_has_no_frame() {
        let (_, bytes) = Disconnect::session("s-1").encode("orders", "i-1").unwrap();
        assert!(!String::from_utf8_lossy(&bytes).contains("eventName\":\"\""));
        let envelope = Envelope::decode_ref(&bytes).unwrap();
        assert!(Received::of(&envelope).unwrap().goodbye.is_none());
        // Written by hand, as a service in another language would.
        let foreign = br#"{"v":1,"id":"d1","app":"orders","kind":"disconnect","sessionId":"s-2"}"#;
        let envelope = Envelope::decode_ref(foreign).unwrap();
        assert_eq!(&*Received::of(&envelope).unwrap().session, "s-2");
    }

    async fn next(stream: &mut crate::EventStream) -> Option<String> {
        use futures_util::StreamExt;
        tokio::time::timeout(Duration::from_secs(5), stream.next())
            .await
            .unwrap()
            .map(|frame| String::from_utf8(frame.to_vec()).unwrap())
    }

    #[tokio::test]
    async fn a_disconnect_ends_the_streams_opened_before_it_and_is_never_replayed() {
        use crate::{EventFilter, Hub, LocalBackend, SendSseEvent};
        let backend = LocalBackend::new();
        let hub = Hub::builder(backend.clone())
            .heartbeat(None)
            .start()
            .await
            .unwrap();
        let open = |session: &str| hub.open_stream(Some(session.into()), EventFilter::Any);
        let mut old = open("s1").await.unwrap();
        let mut other = open("s2").await.unwrap();
        next(&mut old).await; // the opening comment
        next(&mut other).await;
        let before = hub
            .publish(SendSseEvent::new("e", json!(1)).to_session("s1"))
            .await
            .unwrap();
        assert!(next(&mut old).await.unwrap().ends_with("data: 1\n\n"));

        // Published by another instance a minute ago (a late copy from the broker's history, or
        // one delivered twice): it ends no stream that opened since.
        let (_, late) = Disconnect::session("s1").encode("sse-fanout", "o").unwrap();
        let mut late: serde_json::Value = serde_json::from_slice(&late).unwrap();
        late["ts"] = json!(history::unix_millis(SystemTime::now()) - 60_000);
        crate::FanoutBackend::publish(&backend, Bytes::from(late.to_string()))
            .await
            .unwrap();
        hub.publish(SendSseEvent::new("e", json!(2)).to_session("s1"))
            .await
            .unwrap();
        assert!(next(&mut old).await.unwrap().ends_with("data: 2\n\n"));

        hub.disconnect(Disconnect::session("s1").goodbye("bye", json!("logout")))
            .await
            .unwrap();
        assert_eq!(
            next(&mut old).await.unwrap(),
            "event: bye\ndata: logout\n\n"
        );
        assert_eq!(next(&mut old).await, None);
        drop(old);
        // Another session's stream is untouched.
        hub.publish(SendSseEvent::new("e", json!(3)).to_session("s2"))
            .await
            .unwrap();
        assert!(next(&mut other).await.unwrap().ends_with("data: 3\n\n"));

        // Resuming after the event before it replays the event after it, not the disconnect.
        let resumed = hub.subscription(Some("s1".into()), EventFilter::Any);
        let mut resumed = hub
            .open_after(resumed, Some(before.as_str()))
            .await
            .unwrap();
        next(&mut resumed).await;
        assert!(next(&mut resumed).await.unwrap().ends_with("data: 2\n\n"));
        hub.publish(SendSseEvent::new("e", json!(4)).to_session("s1"))
            .await
            .unwrap();
        assert!(next(&mut resumed).await.unwrap().ends_with("data: 4\n\n"));
        let stats = hub.stats();
        assert_eq!((stats.disconnects, stats.closed_disconnected), (2, 1));
    }

    #[test]
    fn a_disconnect_needs_a_session_and_a_clean_goodbye_name() {
        assert!(matches!(
            Envelope::decode_ref(br#"{"v":1,"id":"d","app":"a","kind":"disconnect"}"#),
            Err(EnvelopeError::DisconnectWithoutSession)
        ));
        assert!(
            Envelope::decode_ref(
                br#"{"v":1,"id":"d","app":"a","kind":"disconnect","sessionId":"s","eventName":"a\nb"}"#
            )
            .is_err()
        );
        assert!(Disconnect::session("").encode("a", "o").is_err());
        assert!(
            Disconnect::session("s")
                .goodbye("", json!(1))
                .encode("a", "o")
                .is_err(),
            "an empty goodbye name is refused, not taken for no goodbye"
        );
        assert!(
            Envelope::decode_ref(br#"{"v":1,"id":"d","app":"a","kind":"leave","sessionId":"s"}"#)
                .is_err(),
            "an unknown kind is refused, not taken for an event"
        );
        // An event still needs its name.
        assert!(Envelope::decode_ref(br#"{"v":1,"id":"d","app":"a","payload":1}"#).is_err());
    }
}
