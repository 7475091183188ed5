//! `GET` metrics: the Prometheus text of the hub and the router (see [`crate::metrics`]).

use http::{HeaderValue, Response, StatusCode, header};

use crate::body::SseBody;
use crate::error::ApiError;
use crate::router::SseRouter;

impl SseRouter {
    /// `GET` metrics: the Prometheus text of the hub and this router.
    pub async fn metrics(&self) -> Result<Response<SseBody>, ApiError> {
        let text = crate::metrics::render(&self.inner.hub, self.stats())
            .await
            .ok_or_else(|| {
                ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "metrics_unavailable",
                    "another metrics recorder is installed in this process",
                )
            })?;
        let mut response = Response::new(SseBody::full(text));
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4"),
        );
        Ok(response)
    }
}
