//! Any publish body: an event or a 400, never a panic.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Err(error) = sse_hyper::parse_publish_body(data) {
        assert_eq!(error.status.as_u16(), 400);
    }
});
