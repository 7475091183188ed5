//! [`SseRouter`]: the event-stream, publish and health endpoints over one [`Hub`].

use std::fmt;
use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode};
use http_body::Body;
use sse_core::Hub;

use crate::body::SseBody;
use crate::budget::BodyBudget;
use crate::callout::CalloutSessions;
use crate::config::RouterConfig;
use crate::cors::Cors;
use crate::endpoint::{openapi, page::StaticPage};
use crate::error::ApiError;
use crate::jwt::JwtVerifier;
use crate::session::{AnonymousSessions, SessionResolver};
use crate::stats::{Counters, RouterStats};

/// The HTTP face of a [`Hub`]: routes requests to the event-stream, publish and health endpoints
/// (and to static pages added with [`static_page`](Self::static_page)). Cheap to clone.
///
/// Works with raw hyper through [`serve`](crate::serve), and inside axum or any other framework
/// through [`handle`](Self::handle) or the single endpoints, which all return `http::Response`.
#[derive(Clone)]
pub struct SseRouter {
    pub(crate) inner: Arc<Inner>,
}

#[derive(Clone)]
pub(crate) struct Inner {
    pub(crate) counters: Arc<Counters>,
    pub(crate) hub: Hub,
    pub(crate) resolver: Arc<dyn SessionResolver>,
    pub(crate) config: RouterConfig,
    /// Shared by the publish bodies being read (see [`RouterConfig::publish_body_budget`]).
    pub(crate) body_budget: BodyBudget,
    /// Publishing with a JWT whose claim names the event names it may publish.
    pub(crate) publish_jwt: Option<(JwtVerifier, String)>,
    /// The auth callout, when it is the resolver (its counts go to `/metrics`).
    pub(crate) callout: Option<CalloutSessions>,
    /// The application's callout for publishers.
    pub(crate) publish_callout: Option<CalloutSessions>,
    /// The OpenAPI document, made when the configuration is set.
    openapi: Bytes,
    pages: Vec<StaticPage>,
}

impl fmt::Debug for SseRouter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SseRouter")
            .field("resolver", &self.inner.resolver)
            .field("config", &self.inner.config)
            .finish_non_exhaustive()
    }
}

impl SseRouter {
    /// Endpoints over `hub` with the default [`RouterConfig`] and anonymous sessions.
    pub fn new(hub: Hub) -> Self {
        SseRouter {
            inner: Arc::new(Inner {
                counters: Arc::default(),
                hub,
                resolver: Arc::new(AnonymousSessions),
                config: RouterConfig::default(),
                body_budget: BodyBudget::new(RouterConfig::default().publish_body_budget),
                publish_jwt: None,
                callout: None,
                publish_callout: None,
                openapi: Bytes::new(),
                pages: Vec::new(),
            }),
        }
    }

    fn inner_mut(&mut self) -> &mut Inner {
        Arc::make_mut(&mut self.inner)
    }

    /// Sets how sessions are found (see [`SessionResolver`]).
    pub fn resolver(mut self, resolver: impl SessionResolver) -> Self {
        let inner = self.inner_mut();
        inner.resolver = Arc::new(resolver);
        inner.callout = None;
        self
    }

    /// Finds sessions by asking the application ([`CalloutSessions`]), and counts its answers in
    /// `/metrics`.
    /// Its cached answers for a session are dropped when the session is disconnected (see
    /// [`Hub::disconnect`](sse_core::Hub::disconnect)).
    pub fn callout(mut self, callout: CalloutSessions) -> Self {
        callout.forget_disconnected(self.inner.hub.disconnected());
        let inner = self.inner_mut();
        inner.resolver = Arc::new(callout.clone());
        inner.callout = Some(callout);
        self
    }

    /// Replaces the configuration. With a metrics path, installs the Prometheus recorder now, so
    /// that the publish latency histogram counts from the first event.
    pub fn config(mut self, config: RouterConfig) -> Self {
        if config.metrics_path.is_some() {
            crate::metrics::prometheus();
        }
        let inner = self.inner_mut();
        inner.openapi = match &config.openapi_path {
            Some(_) => Bytes::from(crate::openapi::document(&config)),
            None => Bytes::new(),
        };
        // A body of the largest size accepted always fits.
        inner.body_budget =
            BodyBudget::new(config.publish_body_budget.max(config.max_publish_body));
        inner.config = config;
        self
    }

    /// Lets publishers authenticate with a JWT that `verifier` accepts, publishing only the event
    /// names its `claim` allows ([`EventGrant`](crate::EventGrant); others are `403`), as Mercure's publishers do. A
    /// configured [`RouterConfig::publish_token`] is still accepted, for every event name.
    pub fn publish_jwt(mut self, verifier: JwtVerifier, claim: impl Into<String>) -> Self {
        self.inner_mut().publish_jwt = Some((verifier, claim.into()));
        self
    }

    /// Lets the application authorize publishers ([`CalloutSessions::for_publishers`]): a publish
    /// or disconnect without the publish token is allowed as the application answers for its
    /// forwarded headers, publishing only the event names its answer lists (others are `403`;
    /// disconnecting needs all of them). Not beside [`publish_jwt`](Self::publish_jwt), which it
    /// replaces.
    pub fn publish_callout(mut self, callout: CalloutSessions) -> Self {
        let inner = self.inner_mut();
        inner.publish_jwt = None;
        inner.publish_callout = Some(callout);
        self
    }

    /// Serves a fixed body at `path` (for `GET` and `HEAD`), such as a demo page.
    pub fn static_page(
        mut self,
        path: impl Into<String>,
        content_type: &'static str,
        body: impl Into<Bytes>,
    ) -> Self {
        self.inner_mut().pages.push(StaticPage {
            path: path.into(),
            content_type: HeaderValue::from_static(content_type),
            body: body.into(),
        });
        self
    }

    /// What the router refused for its own limits.
    pub fn stats(&self) -> RouterStats {
        let mut stats = self.inner.counters.snapshot();
        stats.auth_callout = self.inner.callout.as_ref().map(CalloutSessions::stats);
        stats.publish_callout = self
            .inner
            .publish_callout
            .as_ref()
            .map(CalloutSessions::stats);
        stats
    }

    /// The hub behind the endpoints.
    pub fn hub(&self) -> &Hub {
        &self.inner.hub
    }

    /// The event-stream endpoint's path.
    pub(crate) fn stream_path(&self) -> &str {
        &self.inner.config.stream_path
    }

    /// The health endpoint's path.
    pub(crate) fn health_path(&self) -> &str {
        &self.inner.config.health_path
    }

    /// Counts a connection answered at once for want of file descriptors.
    pub(crate) fn count_shed(&self) {
        self.inner
            .counters
            .connections_shed
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    /// Counts a TLS handshake that failed.
    pub(crate) fn count_handshake_failure(&self, reason: crate::tls::HandshakeFailure) {
        self.inner.counters.tls_handshake_failures[reason as usize]
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    /// Routes one request by path and method to its endpoint (`405` for another method, `404`
    /// JSON error for an unknown path), with the CORS headers for an allowed origin.
    pub async fn handle<B>(&self, request: Request<B>) -> Response<SseBody>
    where
        B: Body<Data = Bytes>,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let config = &self.inner.config;
        let path = request.uri().path();
        let origin = Cors::allowed_origin(config.cors.as_ref(), request.headers());
        let is_endpoint = path == config.stream_path
            || path == config.publish_path
            || path == config.disconnect_path
            || path == config.presence_path;
        let response = if request.method() == Method::OPTIONS && is_endpoint && origin.is_some() {
            Cors::preflight()
        } else {
            self.route(request)
                .await
                .unwrap_or_else(ApiError::into_response)
        };
        match (origin, &config.cors) {
            (Some(origin), Some(cors)) => cors.apply(response, origin),
            _ => response,
        }
    }

    async fn route<B>(&self, request: Request<B>) -> Result<Response<SseBody>, ApiError>
    where
        B: Body<Data = Bytes>,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let config = &self.inner.config;
        let path = request.uri().path();
        let method = request.method();
        let only = |allowed: &[Method], answer: &'static str| {
            if allowed.contains(method) {
                Ok(())
            } else {
                Err(ApiError::method_not_allowed(answer))
            }
        };
        if path == config.stream_path {
            only(&[Method::GET], "GET")?;
            let (parts, _) = request.into_parts();
            self.event_stream(&parts).await
        } else if path == config.publish_path {
            only(&[Method::POST], "POST")?;
            self.publish(request).await
        } else if path == config.disconnect_path {
            only(&[Method::POST], "POST")?;
            self.disconnect(request).await
        } else if path == config.presence_path {
            only(&[Method::GET], "GET")?;
            let (parts, _) = request.into_parts();
            self.presence(&parts).await
        } else if path == config.health_path {
            only(&[Method::GET], "GET")?;
            Ok(self.health().await)
        } else if config.metrics_path.as_deref() == Some(path) {
            only(&[Method::GET], "GET")?;
            self.metrics().await
        } else if config.openapi_path.as_deref() == Some(path) {
            only(&[Method::GET], "GET")?;
            Ok(openapi::response(&self.inner.openapi))
        } else if let Some(page) = self.inner.pages.iter().find(|p| p.path == path) {
            only(&[Method::GET, Method::HEAD], "GET, HEAD")?;
            Ok(page.response())
        } else {
            Err(ApiError::new(
                StatusCode::NOT_FOUND,
                "not_found",
                format!("no endpoint at {path}"),
            ))
        }
    }
}
