//! What the encoder writes, the spec's parsing algorithm reads back as the original event, for any
//! payload; fields that would inject others are refused.
#![no_main]
use libfuzzer_sys::fuzz_target;
use sse_core::encode::Event;
use sse_core::testkit::parse_event_stream;

fuzz_target!(|input: (&str, &str, &str)| {
    let (id, name, data) = input;
    match Event::new(data).id(id).name(name).encode() {
        Ok(frame) => {
            let parsed = parse_event_stream(std::str::from_utf8(&frame).expect("UTF-8"));
            assert_eq!(parsed.events.len(), 1);
            let event = &parsed.events[0];
            assert_eq!(event.event_type, name);
            assert_eq!(event.last_event_id, id);
            assert_eq!(event.data, data.replace("\r\n", "\n").replace('\r', "\n"));
        }
        Err(_) => {
            let bad = |s: &str| s.contains(['\r', '\n', '\0']);
            assert!(bad(id) || bad(name) || name.is_empty());
        }
    }
});
