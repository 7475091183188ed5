//! Static pages (such as the hub's demo page): a fixed body at a path, for `GET` and `HEAD`.

use bytes::Bytes;
use http::{HeaderValue, Response, header};

use crate::body::SseBody;

/// A page added with [`SseRouter::static_page`](crate::SseRouter::static_page).
#[derive(Clone)]
pub(crate) struct StaticPage {
    pub(crate) path: String,
    pub(crate) content_type: HeaderValue,
    pub(crate) body: Bytes,
}

impl StaticPage {
    /// The page as served.
    pub(crate) fn response(&self) -> Response<SseBody> {
        let mut response = Response::new(SseBody::full(self.body.clone()));
        response
            .headers_mut()
            .insert(header::CONTENT_TYPE, self.content_type.clone());
        response
    }
}
