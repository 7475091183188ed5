//! The OpenAPI 3.0 document of the router's HTTP API, with the paths and limits of its
//! [`RouterConfig`]: served at [`RouterConfig::openapi_path`] when that is set.

use serde_json::{Map, Value, json};

use crate::RouterConfig;

/// The document's template, written for the default paths and limits.
const TEMPLATE: &str = include_str!("openapi.json");

/// The OpenAPI document (JSON) of a router started with `config`: its endpoint paths, its length
/// limits, and the metrics and document paths only where they are served.
///
/// ```
/// use sse_hyper::{RouterConfig, openapi};
///
/// let mut config = RouterConfig::default();
/// config.publish_path = "/events".to_owned();
/// let document: serde_json::Value = serde_json::from_str(&openapi::document(&config)).unwrap();
/// assert!(document["paths"]["/events"]["post"].is_object());
/// ```
pub fn document(config: &RouterConfig) -> String {
    let mut document: Value =
        serde_json::from_str(TEMPLATE).expect("the embedded OpenAPI template is valid JSON");
    let template_paths = document["paths"].as_object().cloned().unwrap_or_default();
    let mut paths = Map::new();
    let mut place = |template: &str, path: Option<&str>| {
        if let (Some(path), Some(item)) = (path, template_paths.get(template)) {
            paths.insert(path.to_owned(), item.clone());
        }
    };
    place("/sse/event-stream", Some(&config.stream_path));
    place("/sse/publish", Some(&config.publish_path));
    place("/sse/disconnect", Some(&config.disconnect_path));
    place("/sse/presence", Some(&config.presence_path));
    place("/healthz", Some(&config.health_path));
    place("/metrics", config.metrics_path.as_deref());
    place("/openapi.json", config.openapi_path.as_deref());
    document["paths"] = Value::Object(paths);

    let fields = &mut document["components"]["schemas"]["PublishRequest"]["properties"];
    fields["eventName"]["maxLength"] = json!(config.max_event_name_len);
    fields["sessionId"]["maxLength"] = json!(config.max_id_len);
    fields["id"]["maxLength"] = json!(config.max_id_len);
    let fields = &mut document["components"]["schemas"]["DisconnectRequest"]["properties"];
    fields["eventName"]["maxLength"] = json!(config.max_event_name_len);
    fields["sessionId"]["maxLength"] = json!(config.max_id_len);
    document.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_document_follows_the_configuration() {
        let config = RouterConfig {
            stream_path: "/events/stream".to_owned(),
            max_event_name_len: 40,
            ..RouterConfig::default()
        };
        let document: Value = serde_json::from_str(&document(&config)).expect("JSON");
        let paths = document["paths"].as_object().expect("paths");
        let mut listed: Vec<&str> = paths.keys().map(String::as_str).collect();
        listed.sort_unstable();
        // Metrics and the document itself are not served by default, so not listed.
        assert_eq!(
            listed,
            [
                "/events/stream",
                "/healthz",
                "/sse/disconnect",
                "/sse/presence",
                "/sse/publish"
            ]
        );
        let name = &document["components"]["schemas"]["PublishRequest"]["properties"]["eventName"];
        assert_eq!(name["maxLength"], 40);
    }
}
