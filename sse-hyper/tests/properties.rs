//! The request parsers on generated input: an answer or a 400, never a panic.
#![allow(clippy::unwrap_used, missing_docs)]

use proptest::prelude::*;
use sse_hyper::{RouterConfig, parse_event_names, parse_publish_body};

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn publish_bodies_parse_or_are_refused(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
        if let Err(error) = parse_publish_body(&bytes) {
            prop_assert_eq!(error.status.as_u16(), 400);
        }
    }

    #[test]
    fn json_shaped_publish_bodies(
        name in any::<String>(), session in proptest::option::of(any::<String>()), extra in any::<bool>(),
    ) {
        let mut body = serde_json::json!({"eventName": name, "payload": {"k": 1}});
        if let Some(s) = &session {
            body["sessionId"] = serde_json::Value::String(s.clone());
        }
        if extra {
            body["sessionID"] = serde_json::Value::Bool(true);
        }
        let parsed = parse_publish_body(body.to_string().as_bytes());
        prop_assert_eq!(parsed.is_ok(), !extra);
        if let Ok(event) = parsed {
            prop_assert_eq!(event.event_name, name);
            prop_assert_eq!(event.session_id, session);
        }
    }

    #[test]
    fn query_strings_parse_or_are_refused(query in any::<String>()) {
        let config = RouterConfig::default();
        match parse_event_names(&query, &config) {
            Ok(_) => {}
            Err(error) => prop_assert_eq!(error.status.as_u16(), 400),
        }
    }
}
