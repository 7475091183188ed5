//! Sessions from the application's own login: [`CalloutSessions`] asks the application who a
//! stream request is, from the cookies and headers the browser sent, and caches the answer.
//!
//! Most web applications that push events have a cookie session (Rails, Django, Spring Security,
//! Laravel, Express) and no JWTs for their browsers, and `EventSource` cannot set a header. With
//! a callout the hub asks the application instead: a `GET` of [`CalloutConfig::url`] carrying
//! the stream request's forwarded headers (by default `Cookie` and `Authorization`, so the
//! application's own session middleware reads them as usual) and the event names asked for in
//! `X-SSE-Event-Names` (comma-separated). The application answers:
//!
//! | answer | the stream request gets |
//! |---|---|
//! | `200` `{"sessionId": "u-42", "eventNames": ["orders.*"], "cacheSeconds": 60, "expiresAt": 1765000000}` | its stream, as session `u-42`, allowed the event names listed (wildcards as in JWT grants; absent: any). `sessionId` `null`: an anonymous stream (broadcasts only). `cacheSeconds` (optional): how long the answer may be reused, at most [`CalloutConfig::cache_ttl`]. `expiresAt` (optional, seconds since the Unix epoch): when the login ends; the stream ends then (the client reconnects and the application is asked again), and an `expiresAt` already past is a `401` |
//! | `401` or `403` | the same status, with the application's `message` when its body is JSON with one |
//! | `5xx`, no answer within [`CalloutConfig::timeout`], no connection | `503` with `Retry-After` |
//! | anything else (another status, a `200` that is not that JSON) | `502`: the application broke the contract |
//!
//! Answers are cached per credential: a SHA-256 of the forwarded values and the event names, for
//! the answer's `cacheSeconds` or [`CalloutConfig::cache_ttl`] (refusals for at most
//! [`REFUSAL_TTL`]), in at most [`CalloutConfig::max_entries`] entries. Requests with the same
//! credential while a callout for it is in flight wait for that one (10 000 browsers coming back
//! after a deploy with one cookie each cost one callout each, not one per retry), and at most
//! [`CalloutConfig::max_concurrent`] callouts are in flight at once: the application is never
//! flooded, and a slow or dead application costs each waiting request at most the timeout,
//! never the hub's other work. Failures are not cached: the next request asks again.
//!
//! Each callout also carries `X-SSE-Purpose`: `stream` here, `publish` for the publishers' callout
//! ([`CalloutSessions::for_publishers`]), so one endpoint of the application can answer both.
//!
//! A [disconnected](sse_core::disconnect) session's cached answers are dropped on every
//! instance as the disconnect arrives (see [`CalloutSessions::forget_disconnected`]): a logged
//! out browser coming back is asked about afresh.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use async_trait::async_trait;
use futures_util::FutureExt;
use futures_util::future::{BoxFuture, Shared};
use http::request::Parts;
use http::{HeaderName, StatusCode, header};
use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::error::ApiError;
use crate::jwt::EventGrant;
use crate::session::{Identity, SessionResolver, cookie_pairs, query_values};

/// How long a `401` or `403` from the application is reused for the same credential at most: a
/// client with a bad cookie retrying does not reach the application each time, and a user who
/// just logged in waits no longer than this.
pub const REFUSAL_TTL: Duration = Duration::from_secs(5);

/// The largest answer body read from the application.
const MAX_ANSWER: usize = 64 * 1024;

/// Seconds a client is told to wait when the application could not answer.
const RETRY_AFTER: u32 = 5;

/// Where the application answers and how the callout behaves.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct CalloutConfig {
    /// The application's endpoint (`http://app:3000/internal/sse-auth`).
    pub url: String,
    /// Request headers forwarded to the application (default `Cookie` and `Authorization`).
    pub forward_headers: Vec<HeaderName>,
    /// When not empty, only these cookies of the `Cookie` header are forwarded (the rest, which
    /// may be other applications' on the same site, are not).
    pub forward_cookies: Vec<String>,
    /// How long one callout may take, waiting for a free slot included (default 2 s).
    pub timeout: Duration,
    /// How long an answer is reused at most (default 30 s).
    pub cache_ttl: Duration,
    /// Answers kept at most (default 100 000; 0 keeps none).
    pub max_entries: usize,
    /// Callouts in flight at most (default 64).
    pub max_concurrent: usize,
}

impl CalloutConfig {
    /// Asks `url`, with the defaults.
    pub fn new(url: impl Into<String>) -> CalloutConfig {
        CalloutConfig {
            url: url.into(),
            forward_headers: vec![header::COOKIE, header::AUTHORIZATION],
            forward_cookies: Vec::new(),
            timeout: Duration::from_secs(2),
            cache_ttl: Duration::from_secs(30),
            max_entries: 100_000,
            max_concurrent: 64,
        }
    }

    /// Forwards the request headers named in `names` instead of the default ones.
    pub fn forward_header_names(
        mut self,
        names: &[impl AsRef<str>],
    ) -> Result<CalloutConfig, http::header::InvalidHeaderName> {
        self.forward_headers = names
            .iter()
            .map(|name| HeaderName::try_from(name.as_ref().trim()))
            .collect::<Result<_, _>>()?;
        Ok(self)
    }
}

/// How the callouts went, counted since the start (`sse_auth_callout_total{outcome}` and
/// `sse_auth_cache_total{result}`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
#[non_exhaustive]
pub struct CalloutStats {
    /// Callouts the application answered with a session.
    pub allowed: u64,
    /// Callouts it answered `401` or `403`.
    pub refused: u64,
    /// Callouts that timed out, could not connect, or got a `5xx`.
    pub unavailable: u64,
    /// Callouts answered outside the contract.
    pub bad_answer: u64,
    /// Requests answered from the cache.
    pub cache_hits: u64,
    /// Requests that waited for a callout another request had started.
    pub joined: u64,
}

/// Sessions from the application's answer (see the [module docs](self)). Cheap to clone.
#[derive(Clone)]
pub struct CalloutSessions {
    inner: Arc<Inner>,
}

impl fmt::Debug for CalloutSessions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CalloutSessions")
            .field("url", &self.inner.config.url)
            .finish_non_exhaustive()
    }
}

struct Inner {
    config: CalloutConfig,
    /// What the callout is asked for, sent as `X-SSE-Purpose`.
    purpose: &'static str,
    client: reqwest::Client,
    state: Mutex<State>,
    slots: tokio::sync::Semaphore,
    counts: Counts,
}

#[derive(Default)]
struct Counts {
    allowed: AtomicU64,
    refused: AtomicU64,
    unavailable: AtomicU64,
    bad_answer: AtomicU64,
    cache_hits: AtomicU64,
    joined: AtomicU64,
}

type Key = [u8; 32];

#[derive(Default)]
struct State {
    cache: HashMap<Key, Cached>,
    in_flight: HashMap<Key, Shared<BoxFuture<'static, Outcome>>>,
    /// The hub's disconnected sessions, read before each lookup.
    disconnected: Option<tokio::sync::broadcast::Receiver<Arc<str>>>,
}

impl State {
    /// Lets go of the cached answers of sessions disconnected since the last lookup (of every
    /// answer when too many came to tell which).
    fn forget_disconnected(&mut self) {
        use tokio::sync::broadcast::error::TryRecvError;
        let Some(receiver) = &mut self.disconnected else {
            return;
        };
        let mut gone: Vec<Arc<str>> = Vec::new();
        loop {
            match receiver.try_recv() {
                Ok(session) => gone.push(session),
                Err(TryRecvError::Lagged(_)) => {
                    self.cache.clear();
                    return;
                }
                Err(TryRecvError::Empty | TryRecvError::Closed) => break,
            }
        }
        if !gone.is_empty() {
            self.cache.retain(|_, cached| match &cached.outcome {
                Outcome::Allowed(identity) => identity
                    .session
                    .as_deref()
                    .is_none_or(|s| !gone.iter().any(|g| **g == *s)),
                _ => true,
            });
        }
    }
}

struct Cached {
    outcome: Outcome,
    until: Instant,
}

/// What a callout came to.
#[derive(Debug, Clone)]
enum Outcome {
    Allowed(Identity),
    Refused(ApiError),
    Failed(ApiError),
}

/// The application's `200` answer.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Answer {
    session_id: Option<String>,
    #[serde(default)]
    event_names: Option<Vec<String>>,
    #[serde(default)]
    cache_seconds: Option<u64>,
    #[serde(default)]
    expires_at: Option<u64>,
}

/// A `401`/`403` body's message, when it has one.
#[derive(Deserialize)]
struct Refusal {
    message: Option<String>,
}

impl CalloutSessions {
    /// Asks the application about stream requests as `config` says.
    pub fn new(config: CalloutConfig) -> CalloutSessions {
        Self::asking(config, "stream")
    }

    /// Asks the application about publishers (`POST` publish and disconnect) as `config` says,
    /// for [`SseRouter::publish_callout`](crate::SseRouter::publish_callout): a `200` answer's
    /// `eventNames` are the names the publisher may publish (absent: any; `sessionId` is not
    /// read), `401` and `403` are passed on.
    pub fn for_publishers(config: CalloutConfig) -> CalloutSessions {
        Self::asking(config, "publish")
    }

    fn asking(config: CalloutConfig, purpose: &'static str) -> CalloutSessions {
        let client = reqwest::Client::builder()
            .timeout(config.timeout)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap_or_default();
        CalloutSessions {
            inner: Arc::new(Inner {
                slots: tokio::sync::Semaphore::new(config.max_concurrent.max(1)),
                config,
                purpose,
                client,
                state: Mutex::default(),
                counts: Counts::default(),
            }),
        }
    }

    /// How the callouts went.
    pub fn stats(&self) -> CalloutStats {
        let c = &self.inner.counts;
        let load = |n: &AtomicU64| n.load(Ordering::Relaxed);
        CalloutStats {
            allowed: load(&c.allowed),
            refused: load(&c.refused),
            unavailable: load(&c.unavailable),
            bad_answer: load(&c.bad_answer),
            cache_hits: load(&c.cache_hits),
            joined: load(&c.joined),
        }
    }

    /// Drops the cached answers of each session `disconnected` names as it is named
    /// ([`Hub::disconnected`](sse_core::Hub::disconnected)); [`SseRouter::callout`](crate::SseRouter::callout)
    /// does this with its hub.
    pub fn forget_disconnected(&self, disconnected: tokio::sync::broadcast::Receiver<Arc<str>>) {
        self.inner.state().disconnected = Some(disconnected);
    }

    /// Who may publish, by the application's answer for the publish request's `headers`: `None`
    /// for any event name, else the names its `eventNames` lists; its refusal, or `503`/`502`
    /// when it could not answer.
    pub async fn publisher_grant(
        &self,
        headers: &http::HeaderMap,
    ) -> Result<Option<EventGrant>, ApiError> {
        match self.outcome(headers, String::new()).await {
            Outcome::Allowed(identity) => Ok(identity.events),
            Outcome::Refused(error) | Outcome::Failed(error) => Err(error),
        }
    }

    /// The application's answer for a request with `headers` asking for the event `names`: from
    /// the cache, from a callout in flight for the same credential, or from a new one.
    async fn outcome(&self, headers: &http::HeaderMap, names: String) -> Outcome {
        let forwarded = self.inner.forwarded(headers);
        let key = credential(&forwarded, &names);
        let pending = {
            let mut state = self.inner.state();
            state.forget_disconnected();
            let now = Instant::now();
            if let Some(cached) = state.cache.get(&key) {
                if cached.until > now {
                    self.inner.counts.cache_hits.fetch_add(1, Ordering::Relaxed);
                    return cached.outcome.clone();
                }
                state.cache.remove(&key);
            }
            if let Some(pending) = state.in_flight.get(&key) {
                self.inner.counts.joined.fetch_add(1, Ordering::Relaxed);
                pending.clone()
            } else {
                // The callout is a task of its own: it ends (and leaves the in-flight table)
                // whether or not the requests waiting for it are still there.
                let task = tokio::spawn(Inner::call(self.inner.clone(), key, forwarded, names));
                let pending = async move {
                    task.await.unwrap_or_else(|_| {
                        Outcome::Failed(unavailable("the auth callout's task failed"))
                    })
                }
                .boxed()
                .shared();
                state.in_flight.insert(key, pending.clone());
                pending
            }
        };
        pending.await
    }
}

impl Inner {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The headers to forward, in the configured order.
    fn forwarded(&self, headers: &http::HeaderMap) -> Vec<(HeaderName, Vec<u8>)> {
        let mut forwarded = Vec::new();
        for name in &self.config.forward_headers {
            for value in headers.get_all(name) {
                let value = if *name == header::COOKIE && !self.config.forward_cookies.is_empty() {
                    let kept: Vec<&str> = cookie_pairs(value.as_bytes())
                        .filter(|(cookie, _)| {
                            self.config.forward_cookies.iter().any(|k| k == cookie)
                        })
                        .map(|(_, pair)| pair)
                        .collect();
                    if kept.is_empty() {
                        continue;
                    }
                    kept.join("; ").into_bytes()
                } else {
                    value.as_bytes().to_vec()
                };
                forwarded.push((name.clone(), value));
            }
        }
        forwarded
    }

    /// One callout, its outcome cached as the answer allows.
    async fn call(
        inner: Arc<Inner>,
        key: Key,
        forwarded: Vec<(HeaderName, Vec<u8>)>,
        names: String,
    ) -> Outcome {
        let (outcome, ttl) = inner.ask(forwarded, names).await;
        let mut state = inner.state();
        state.in_flight.remove(&key);
        let keep = inner.config.max_entries > 0;
        if let Some(ttl) = ttl.filter(|ttl| keep && !ttl.is_zero()) {
            if state.cache.len() >= inner.config.max_entries {
                evict(&mut state.cache, inner.config.max_entries);
            }
            state.cache.insert(
                key,
                Cached {
                    outcome: outcome.clone(),
                    until: Instant::now() + ttl,
                },
            );
        }
        outcome
    }

    /// Asks the application; the outcome and how long it may be reused (`None`: not at all).
    async fn ask(
        &self,
        forwarded: Vec<(HeaderName, Vec<u8>)>,
        names: String,
    ) -> (Outcome, Option<Duration>) {
        let started = tokio::time::Instant::now();
        let Ok(Ok(_slot)) = tokio::time::timeout(self.config.timeout, self.slots.acquire()).await
        else {
            self.counts.unavailable.fetch_add(1, Ordering::Relaxed);
            return (
                Outcome::Failed(unavailable(
                    "the application's auth endpoint is busy (all callouts in flight)",
                )),
                None,
            );
        };
        let mut request = self.client.get(&self.config.url);
        for (name, value) in forwarded {
            request = request.header(name, value);
        }
        request = request
            .header("x-sse-event-names", names)
            .header("x-sse-purpose", self.purpose)
            .timeout(self.config.timeout.saturating_sub(started.elapsed()));
        let answer = async {
            let response = request.send().await?;
            let status = response.status();
            let body = read_limited(response).await?;
            Ok::<_, reqwest::Error>((status, body))
        }
        .await;
        let (status, body) = match answer {
            Ok(answer) => answer,
            Err(error) => {
                self.counts.unavailable.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(%error, url = %self.config.url, "the auth callout failed");
                let what = if error.is_timeout() {
                    format!("no answer within {:?}", self.config.timeout)
                } else {
                    "could not reach it".to_owned()
                };
                return (
                    Outcome::Failed(unavailable(format!(
                        "the application's auth endpoint did not answer: {what}"
                    ))),
                    None,
                );
            }
        };
        match status {
            StatusCode::OK => match serde_json::from_slice::<Answer>(&body) {
                Ok(answer) => {
                    let expires = answer
                        .expires_at
                        .map(|at| SystemTime::UNIX_EPOCH + Duration::from_secs(at));
                    let left = expires.map(|at| {
                        at.duration_since(SystemTime::now())
                            .unwrap_or(Duration::ZERO)
                    });
                    if left.is_some_and(|left| left.is_zero()) {
                        self.counts.refused.fetch_add(1, Ordering::Relaxed);
                        return (
                            Outcome::Refused(ApiError::unauthorized(
                                "the application's login for this request has expired",
                            )),
                            Some(REFUSAL_TTL.min(self.config.cache_ttl)),
                        );
                    }
                    self.counts.allowed.fetch_add(1, Ordering::Relaxed);
                    // Never reused past the expiry.
                    let ttl = answer
                        .cache_seconds
                        .map_or(self.config.cache_ttl, Duration::from_secs)
                        .min(self.config.cache_ttl)
                        .min(left.unwrap_or(Duration::MAX));
                    let identity = Identity {
                        session: answer.session_id.filter(|s| !s.is_empty()),
                        events: answer.event_names.map(EventGrant::new),
                        expires,
                    };
                    (Outcome::Allowed(identity), Some(ttl))
                }
                Err(error) => self.bad_answer(format!(
                    "200 with a body that is not {{\"sessionId\": …}}: {error}"
                )),
            },
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => {
                self.counts.refused.fetch_add(1, Ordering::Relaxed);
                let message = serde_json::from_slice::<Refusal>(&body)
                    .ok()
                    .and_then(|r| r.message)
                    .unwrap_or_else(|| "refused by the application".to_owned());
                let error = if status == StatusCode::UNAUTHORIZED {
                    ApiError::unauthorized(message)
                } else {
                    ApiError::forbidden(message)
                };
                (
                    Outcome::Refused(error),
                    Some(REFUSAL_TTL.min(self.config.cache_ttl)),
                )
            }
            status if status.is_server_error() => {
                self.counts.unavailable.fetch_add(1, Ordering::Relaxed);
                (
                    Outcome::Failed(unavailable(format!(
                        "the application's auth endpoint answered {status}"
                    ))),
                    None,
                )
            }
            status => self.bad_answer(format!("{status}, where 200, 401 or 403 was expected")),
        }
    }

    fn bad_answer(&self, what: String) -> (Outcome, Option<Duration>) {
        self.counts.bad_answer.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(url = %self.config.url, "the auth callout's answer broke the contract: {what}");
        (
            Outcome::Failed(ApiError::new(
                StatusCode::BAD_GATEWAY,
                "bad_gateway",
                format!("the application's auth endpoint answered {what}"),
            )),
            None,
        )
    }
}

/// Reads at most [`MAX_ANSWER`] bytes of `response`'s body (the rest is not read).
async fn read_limited(mut response: reqwest::Response) -> Result<Vec<u8>, reqwest::Error> {
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await? {
        let room = MAX_ANSWER.saturating_sub(body.len());
        body.extend_from_slice(&chunk[..chunk.len().min(room)]);
        if body.len() >= MAX_ANSWER {
            break;
        }
    }
    Ok(body)
}

/// The cache key of a credential: what is forwarded and the event names asked for.
fn credential(forwarded: &[(HeaderName, Vec<u8>)], names: &str) -> Key {
    let mut hash = Sha256::new();
    for (name, value) in forwarded {
        hash.update(name.as_str().as_bytes());
        hash.update([0]);
        hash.update((value.len() as u64).to_be_bytes());
        hash.update(value);
    }
    hash.update([1]);
    hash.update(names.as_bytes());
    hash.finalize().into()
}

/// Makes room in a full cache: expired entries first, then any, down to seven eighths.
fn evict(cache: &mut HashMap<Key, Cached>, max: usize) {
    let now = Instant::now();
    cache.retain(|_, cached| cached.until > now);
    let target = max.saturating_sub(max / 8 + 1);
    if cache.len() > target {
        let extra: Vec<Key> = cache.keys().take(cache.len() - target).copied().collect();
        for key in extra {
            cache.remove(&key);
        }
    }
}

fn unavailable(message: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "auth_unavailable", message)
        .retry_after(RETRY_AFTER)
}

#[async_trait]
impl SessionResolver for CalloutSessions {
    async fn resolve(&self, request: &Parts) -> Result<Option<String>, ApiError> {
        Ok(self.identify(request).await?.session)
    }

    async fn identify(&self, request: &Parts) -> Result<Identity, ApiError> {
        let names = query_values(request, "eventName").join(",");
        match self.outcome(&request.headers, names).await {
            Outcome::Allowed(identity) => Ok(identity),
            Outcome::Refused(error) | Outcome::Failed(error) => Err(error),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn entry(until: Instant) -> Cached {
        Cached {
            outcome: Outcome::Failed(unavailable("x")),
            until,
        }
    }

    #[test]
    fn a_full_cache_lets_go_of_expired_entries_then_of_an_eighth() {
        let now = Instant::now();
        let mut cache = HashMap::new();
        for n in 0..16u8 {
            let until = if n < 4 {
                now
            } else {
                now + Duration::from_secs(60)
            };
            cache.insert([n; 32], entry(until));
        }
        evict(&mut cache, 16);
        assert_eq!(cache.len(), 12, "the four expired ones");
        for n in 16..32u8 {
            cache.insert([n; 32], entry(now + Duration::from_secs(60)));
        }
        evict(&mut cache, 16);
        assert!(cache.len() < 16, "{}", cache.len());
        evict(&mut cache, 1);
        assert!(cache.is_empty());
        evict(&mut cache, 0);
    }

    #[test]
    fn credentials_differ_by_value_name_and_event_names() {
        let cookie = |v: &str| vec![(header::COOKIE, v.as_bytes().to_vec())];
        let a = credential(&cookie("s=1"), "e");
        assert_eq!(a, credential(&cookie("s=1"), "e"));
        assert_ne!(a, credential(&cookie("s=2"), "e"));
        assert_ne!(a, credential(&cookie("s=1"), "f"));
        assert_ne!(
            a,
            credential(&[(header::AUTHORIZATION, b"s=1".to_vec())], "e")
        );
    }
}
