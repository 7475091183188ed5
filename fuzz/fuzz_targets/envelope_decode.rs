//! Any bytes from a broker: an envelope or an error, never a panic; a decoded envelope encodes to
//! exactly one event with its name and id.
#![no_main]
use libfuzzer_sys::fuzz_target;
use sse_core::Envelope;
use sse_core::testkit::parse_event_stream;

fuzz_target!(|data: &[u8]| {
    // The hub reads envelopes borrowed: the same ones, with the same frame.
    let borrowed = Envelope::decode_ref(data);
    assert_eq!(borrowed.is_ok(), Envelope::decode(data).is_ok());
    if let Ok(envelope) = Envelope::decode(data) {
        assert_eq!(
            borrowed.expect("checked").to_sse().expect("encodes"),
            envelope.to_sse().expect("encodes")
        );
        let frame = envelope.to_sse().expect("a decoded envelope encodes");
        let parsed = parse_event_stream(std::str::from_utf8(&frame).expect("frames are UTF-8"));
        assert_eq!(parsed.events.len(), 1);
        assert_eq!(parsed.events[0].event_type, envelope.event_name);
        assert_eq!(parsed.events[0].last_event_id, envelope.id);
    }
});
