//! `GET` health: whether the hub and its backend are up, for load balancers and orchestrators.

use http::{Response, StatusCode};
use serde::Serialize;

use crate::body::SseBody;
use crate::error::json_response;
use crate::router::SseRouter;

impl SseRouter {
    /// `GET` health: `200 {"status":"ok",...}` or `503 {"status":"down",...}`.
    pub async fn health(&self) -> Response<SseBody> {
        #[derive(Serialize)]
        struct HealthBody<'a> {
            status: &'static str,
            backend: &'static str,
            instance: &'a str,
            app: &'a str,
            streams: usize,
            #[serde(skip_serializing_if = "Option::is_none")]
            detail: Option<String>,
        }
        let hub = &self.inner.hub;
        let health = hub.health().await;
        let body = HealthBody {
            status: if health.up { "ok" } else { "down" },
            backend: hub.backend_name(),
            instance: &hub.config().instance_id,
            app: &hub.config().app_name,
            streams: hub.open_streams(),
            detail: health.detail,
        };
        let status = if health.up {
            StatusCode::OK
        } else {
            StatusCode::SERVICE_UNAVAILABLE
        };
        json_response(status, &body)
    }
}
