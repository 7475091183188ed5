//! The request parsers on generated input: an answer or a 400, never a panic.
#![allow(clippy::unwrap_used, missing_docs)]

use proptest::prelude::*;
use sse_hyper::__fuzz::parse_head;
use sse_hyper::{RouterConfig, parse_event_names, parse_publish_body};

const PATH: &str = "/sse/event-stream";

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

    /// Any first bytes of a connection: taken as an event-stream request or left to hyper, never
    /// a panic; what is taken is a complete `GET` of the stream path, within the bytes given.
    #[test]
    fn request_heads_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
        if let Some((parts, len)) = parse_head(&bytes, PATH) {
            prop_assert!(len <= bytes.len());
            prop_assert_eq!(parts.method, http::Method::GET);
            prop_assert_eq!(parts.uri.path(), PATH);
        }
    }

    /// What `EventSource` sends is taken, with its query and headers as they were.
    #[test]
    fn event_source_heads_are_taken(
        names in "[a-z]{1,8}(,[a-z]{1,8}){0,3}",
        last_id in proptest::option::of("[!-~]{1,40}"),
        cookie in "[ -~]{0,200}",
        extra in "[ -~]{0,40}",
    ) {
        let mut head = format!("GET {PATH}?eventName={names} HTTP/1.1\r\nHost: h\r\nAccept: text/event-stream\r\n");
        if let Some(id) = &last_id {
            head.push_str(&format!("Last-Event-ID: {id}\r\n"));
        }
        head.push_str(&format!("Cookie: {}\r\n\r\n", cookie.trim()));
        let bytes = format!("{head}{extra}");
        let (parts, len) = parse_head(bytes.as_bytes(), PATH).expect("taken");
        prop_assert_eq!(len, head.len());
        let query = format!("eventName={names}");
        prop_assert_eq!(parts.uri.query(), Some(query.as_str()));
        let got = parts.headers.get("last-event-id").map(|v| v.to_str().unwrap().to_owned());
        prop_assert_eq!(got, last_id.map(|id| id.trim().to_owned()));
    }
}
