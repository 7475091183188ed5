//! Properties of the encoder, the envelope decoder and the event-name parser, checked on generated
//! input against the spec's own parsing algorithm (`sse_core::testkit::parse_event_stream`).
#![cfg(feature = "testkit")]
#![allow(clippy::unwrap_used, missing_docs)]

use proptest::prelude::*;
use sse_core::encode::{self, Event};
use sse_core::testkit::parse_event_stream;
use sse_core::{Envelope, EventFilter, SendSseEvent};

/// A string that can be a single-line field: anything but CR, LF and NUL.
fn single_line() -> impl Strategy<Value = String> {
    "[^\r\n\u{0}]{1,40}"
}

/// Any text, with line breaks of every kind likely.
fn any_text() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<String>(),
        proptest::collection::vec(
            prop_oneof!["\r", "\n", "\r\n", "[a-z :]{0,5}", "\u{feff}"],
            0..20
        )
        .prop_map(|parts| parts.concat()),
    ]
}

fn normalized(data: &str) -> String {
    data.replace("\r\n", "\n").replace('\r', "\n")
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    /// What the encoder writes, a spec-following client reads back as the original event.
    #[test]
    fn encoder_round_trips_through_the_spec_parser(
        id in single_line(),
        name in single_line(),
        data in any_text(),
        retry in proptest::option::of(0u64..10_000_000),
    ) {
        let mut event = Event::new(&data).id(&id).name(&name);
        if let Some(ms) = retry {
            event = event.retry(std::time::Duration::from_millis(ms));
        }
        let frame = event.encode().unwrap();
        let parsed = parse_event_stream(std::str::from_utf8(&frame).unwrap());
        prop_assert_eq!(parsed.events.len(), 1);
        let got = &parsed.events[0];
        prop_assert_eq!(&got.event_type, &name);
        prop_assert_eq!(&got.last_event_id, &id);
        prop_assert_eq!(&got.data, &normalized(&data));
        prop_assert_eq!(parsed.retry, retry);
    }

    /// Several frames in a row stay separate events; comments in between change nothing.
    #[test]
    fn consecutive_frames_stay_separate(datas in proptest::collection::vec(any_text(), 1..5)) {
        let mut stream = String::new();
        stream.push_str(std::str::from_utf8(&encode::comment("ok").unwrap()).unwrap());
        for data in &datas {
            stream.push_str(std::str::from_utf8(&Event::new(data).name("e").encode().unwrap()).unwrap());
            stream.push_str(": heartbeat\n\n");
        }
        let parsed = parse_event_stream(&stream);
        let got: Vec<String> = parsed.events.iter().map(|e| e.data.clone()).collect();
        let want: Vec<String> = datas.iter().map(|d| normalized(d)).collect();
        prop_assert_eq!(got, want);
    }

    /// A field value that could inject another field is refused, never written.
    #[test]
    fn single_line_fields_with_line_breaks_are_refused(
        a in "[a-z]{0,5}", b in "[a-z]{0,5}", brk in prop_oneof!["\r", "\n", "\u{0}"],
    ) {
        let bad = format!("{a}{brk}{b}");
        prop_assert!(Event::new("d").name(&bad).encode().is_err());
        prop_assert!(Event::new("d").id(&bad).encode().is_err());
        prop_assert!(encode::comment(&bad).is_err());
    }

    /// Any bytes: decoding gives an envelope or an error, never a panic; a decoded envelope
    /// always encodes into one event whose name and id are the envelope's.
    #[test]
    fn envelope_decoding_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
        // The hub reads envelopes borrowed; it must accept exactly what the owned reader does
        // and make the same frame of it.
        let borrowed = Envelope::decode_ref(&bytes);
        prop_assert_eq!(borrowed.is_ok(), Envelope::decode(&bytes).is_ok());
        if let Ok(envelope) = Envelope::decode(&bytes) {
            prop_assert_eq!(borrowed.unwrap().to_sse().unwrap(), envelope.to_sse().unwrap());
            let frame = envelope.to_sse().unwrap();
            let parsed = parse_event_stream(std::str::from_utf8(&frame).unwrap());
            prop_assert_eq!(parsed.events.len(), 1);
            prop_assert_eq!(&parsed.events[0].event_type, &envelope.event_name);
            prop_assert_eq!(&parsed.events[0].last_event_id, &envelope.id);
        }
    }

    /// Envelopes of published events survive the wire, and their frame carries their payload.
    #[test]
    fn published_events_round_trip(
        name in single_line(), session in proptest::option::of(single_line()), text in any_text(),
    ) {
        let mut event = SendSseEvent::new(name.clone(), serde_json::Value::String(text.clone()));
        if let Some(s) = &session {
            event = event.to_session(s.clone());
        }
        let envelope = Envelope::from_event(&event, "app", "origin").unwrap();
        let decoded = Envelope::decode(&envelope.encode().unwrap()).unwrap();
        prop_assert_eq!(&decoded.session_id, &session);
        let parsed = parse_event_stream(std::str::from_utf8(&decoded.to_sse().unwrap()).unwrap());
        prop_assert_eq!(&parsed.events[0].data, &normalized(&text));
    }

    /// Any list of event names parses or is refused; a parsed filter matches exactly its names.
    #[test]
    fn event_name_lists_never_panic(list in any_text()) {
        if let Ok(EventFilter::Names(names)) = EventFilter::parse(&list) {
            for name in names.iter() {
                prop_assert!(encode::check_event_name(name).is_ok());
                prop_assert!(EventFilter::parse(&list).unwrap().matches(name));
            }
        }
    }
}
