//! Any query string: an event filter of valid names or a 400, never a panic.
#![no_main]
use libfuzzer_sys::fuzz_target;
use sse_core::EventFilter;

fuzz_target!(|query: &str| {
    match sse_hyper::parse_event_names(query, &sse_hyper::RouterConfig::default()) {
        Ok(EventFilter::Names(names)) => {
            for name in names.iter() {
                assert!(sse_core::encode::check_event_name(name).is_ok());
            }
        }
        Ok(_) => {}
        Err(error) => assert_eq!(error.status.as_u16(), 400),
    }
});
