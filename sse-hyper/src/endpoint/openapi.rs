//! `GET` OpenAPI: the API's document, made once from the configuration (see [`crate::openapi`]).

use bytes::Bytes;
use http::{HeaderValue, Response, header};

use crate::body::SseBody;

/// The OpenAPI document as served.
pub(crate) fn response(document: &Bytes) -> Response<SseBody> {
    let mut response = Response::new(SseBody::full(document.clone()));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}
