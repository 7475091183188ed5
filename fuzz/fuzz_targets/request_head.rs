//! Any first bytes of a connection: `serve` takes them as an event-stream request it answers
//! itself, or leaves them to hyper; never a panic, and what it takes is a complete GET of the
//! stream path within the bytes given.
#![no_main]
use libfuzzer_sys::fuzz_target;
use sse_hyper::__fuzz::parse_head;

fuzz_target!(|data: &[u8]| {
    if let Some((parts, len)) = parse_head(data, "/sse/event-stream") {
        assert!(len <= data.len());
        assert_eq!(parts.method, "GET");
        assert_eq!(parts.uri.path(), "/sse/event-stream");
    }
});
