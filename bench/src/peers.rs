//! How the load tool publishes to each server it compares: the hub's `POST /sse/publish`, nchan's
//! publisher location and Pushpin's publish endpoint (configurations in `bench/peers/`). Streams
//! need no form of their own: every server reads the session from the stream's `sessionId` query
//! parameter (nchan by `$arg_sessionId`, Pushpin's origin by parsing it).

use bytes::Bytes;
use clap::ValueEnum;
use serde_json::{Value, json};

/// The channel every stream of nchan and Pushpin listens to besides its session's: a broadcast.
pub const BROADCAST_CHANNEL: &str = "all";

/// A server's publish request form.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, ValueEnum)]
pub enum PublishForm {
    /// sse-fanout: `POST <path>` with the JSON envelope request, answered `202`.
    #[default]
    Hub,
    /// nchan: `POST /pub/<channel>` with the event's data as the body, answered `201` or `202`.
    Nchan,
    /// Pushpin: `POST /publish/` of its HTTP control API with an item for the channel whose
    /// `http-stream` content is the whole SSE frame, answered `200`.
    Pushpin,
}

impl PublishForm {
    /// The path and body that publish `payload` under `event_name` to `session`'s streams, or
    /// to every stream (`None`); `hub_path` is the hub's publish path.
    pub fn request(
        self,
        hub_path: &str,
        event_name: &str,
        session: Option<&str>,
        payload: &Value,
    ) -> (String, Bytes) {
        let channel = session.unwrap_or(BROADCAST_CHANNEL);
        match self {
            PublishForm::Hub => {
                let mut body = json!({"eventName": event_name, "payload": payload});
                if let Some(session) = session {
                    body["sessionId"] = json!(session);
                }
                (hub_path.to_owned(), Bytes::from(body.to_string()))
            }
            PublishForm::Nchan => (format!("/pub/{channel}"), Bytes::from(payload.to_string())),
            PublishForm::Pushpin => {
                let content = format!("event: {event_name}\ndata: {payload}\n\n");
                let body = json!({"items": [{
                    "channel": channel,
                    "formats": {"http-stream": {"content": content}},
                }]});
                ("/publish/".to_owned(), Bytes::from(body.to_string()))
            }
        }
    }

    /// Whether `status` means the server took the event.
    pub fn accepted(self, status: u16) -> bool {
        match self {
            PublishForm::Hub => status == 202,
            PublishForm::Nchan => status == 201 || status == 202,
            PublishForm::Pushpin => status == 200,
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn each_form_names_its_channel_and_carries_the_payload() {
        let payload = json!({"t": 1, "n": 2});
        let (path, body) = PublishForm::Hub.request("/sse/publish", "bench", Some("s1"), &payload);
        assert_eq!(path, "/sse/publish");
        let body: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(body["sessionId"], "s1");
        assert_eq!(body["payload"], payload);

        let (path, body) = PublishForm::Nchan.request("/sse/publish", "bench", None, &payload);
        assert_eq!(path, "/pub/all");
        assert_eq!(body, payload.to_string());

        let (path, body) =
            PublishForm::Pushpin.request("/sse/publish", "bench", Some("s7"), &payload);
        assert_eq!(path, "/publish/");
        let body: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(body["items"][0]["channel"], "s7");
        assert_eq!(
            body["items"][0]["formats"]["http-stream"]["content"],
            format!("event: bench\ndata: {payload}\n\n")
        );
    }
}
