//! The endpoints, one module each; [`SseRouter::handle`](crate::SseRouter::handle) picks one by
//! path and method. Each is also a method of [`SseRouter`](crate::SseRouter), to mount alone in
//! another framework.

mod health;
mod metrics;
pub(crate) mod openapi;
pub(crate) mod page;
mod presence;
mod publish;
mod stream;

pub use publish::parse_publish_body;
pub use stream::parse_event_names;
