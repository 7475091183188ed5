//! [`serve`]: HTTP/1.1 and HTTP/2 (h2c) on a listener, or both over TLS ([`ServeOptions::tls`]),
//! with a graceful shutdown that ends the open event streams first (an SSE body never ends by
//! itself, so otherwise the drain would wait forever).
//!
//! A plaintext connection whose first request is a plain HTTP/1.x `GET` of the event-stream path
//! is served directly on its socket (see the `direct` module: a fraction of hyper's
//! per-connection memory); every other connection, and every TLS connection once its handshake is
//! done, is served by hyper.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::direct::tls::{self as tls_direct, FirstTlsRequest};
use crate::direct::{self, FirstRequest};
use crate::idle::{Activity, Tracked};
use crate::overload::{self, Reserve};
use crate::router::SseRouter;
use crate::tls::{ClientCertificate, Tls};
use crate::transport::ConnectionAbort;

/// How [`serve_with`] runs.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ServeOptions {
    /// How long shutdown waits for connections to finish after the streams were ended.
    pub drain_timeout: Duration,
    /// Serve HTTP/1.x event streams directly on their socket (or TLS session) instead of through
    /// hyper (default `true`): the same responses, with a few KiB per open stream instead of
    /// hyper's 25 or so.
    pub direct_streams: bool,
    /// How long a new connection may take to send its first bytes before it is dropped (with
    /// `direct_streams`; default 30 s).
    pub first_request_timeout: Duration,
    /// How long a request head may take to arrive on a connection served by hyper, counted from
    /// when the connection is idle (accepted, or its last response sent): so also how long an
    /// idle keep-alive connection stays (default 10 s). A head sent a byte at a time, or never
    /// finished, ends the connection then.
    pub head_timeout: Duration,
    /// HTTP/2: a PING after this long without a frame from the client, and the connection is
    /// closed when the answer does not come within as long again (default 20 s).
    pub http2_keep_alive: Duration,
    /// A connection served by hyper with no request in progress (an open event stream is one)
    /// for this long is closed (default 60 s): what ends an HTTP/2 connection that holds no
    /// stream but answers the keep-alive PINGs. HTTP/1 meets `head_timeout` first.
    pub idle_timeout: Duration,
    /// The largest request head, in bytes (default 32 KiB, nginx's default for all header lines
    /// of a request): an HTTP/1 connection buffers at most this much of a head that has not
    /// ended (a larger one gets `431` and the connection closes), and HTTP/2 advertises it as
    /// its `SETTINGS_MAX_HEADER_LIST_SIZE`. At least 8 KiB (hyper's minimum).
    pub max_head_bytes: usize,
    /// The most header fields in one request (default 100); more get `431`.
    pub max_headers: usize,
    /// Serve TLS (HTTP/2 or HTTP/1.1 by ALPN) instead of plaintext (default `None`). The
    /// handshake must end within `first_request_timeout`; the certificate is reloaded when its
    /// files change (see [`Tls`]).
    pub tls: Option<Tls>,
}

/// [`ServeOptions::max_head_bytes`]'s default.
pub const DEFAULT_MAX_HEAD_BYTES: usize = 32 * 1024;
/// The smallest head buffer hyper accepts.
const MIN_HEAD_BYTES: usize = 8 * 1024;

impl Default for ServeOptions {
    fn default() -> Self {
        ServeOptions {
            drain_timeout: Duration::from_secs(10),
            direct_streams: true,
            first_request_timeout: Duration::from_secs(30),
            head_timeout: Duration::from_secs(10),
            http2_keep_alive: Duration::from_secs(20),
            idle_timeout: Duration::from_secs(60),
            max_head_bytes: DEFAULT_MAX_HEAD_BYTES,
            max_headers: 100,
            tls: None,
        }
    }
}

/// Serves `router` on `listener` until `shutdown` completes, then stops accepting, ends every open
/// event stream, and waits (at most [`ServeOptions::drain_timeout`]) for connections to finish.
/// The hub itself stays up: call [`Hub::shutdown`](sse_core::Hub::shutdown) afterwards.
///
/// ```no_run
/// # async fn run() -> std::io::Result<()> {
/// use sse_core::{Hub, LocalBackend};
/// use sse_hyper::{serve, SseRouter};
///
/// let hub = Hub::builder(LocalBackend::new()).start().await.expect("local backend");
/// let listener = tokio::net::TcpListener::bind("127.0.0.1:8080").await?;
/// serve(listener, SseRouter::new(hub.clone()), async { let _ = tokio::signal::ctrl_c().await; }).await?;
/// hub.shutdown().await.ok();
/// # Ok(()) }
/// ```
pub async fn serve(
    listener: TcpListener,
    router: SseRouter,
    shutdown: impl Future<Output = ()> + Send,
) -> io::Result<()> {
    serve_with(listener, router, shutdown, ServeOptions::default()).await
}

/// [`serve`] with options.
pub async fn serve_with(
    listener: TcpListener,
    router: SseRouter,
    shutdown: impl Future<Output = ()> + Send,
    options: ServeOptions,
) -> io::Result<()> {
    let max_head = options.max_head_bytes.max(MIN_HEAD_BYTES);
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(options.head_timeout)
        // hyper's read buffer holds the head until it ends: without this, ~400 KiB each.
        .max_buf_size(max_head)
        .max_headers(options.max_headers);
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(options.http2_keep_alive)
        .keep_alive_timeout(options.http2_keep_alive)
        .max_header_list_size(u32::try_from(max_head).unwrap_or(u32::MAX));
    let builder = Arc::new(builder);
    let mut accept_errors = AcceptErrors::default();
    let mut reserve = Reserve::new();
    let graceful = GracefulShutdown::new();
    let direct_tasks = TaskTracker::new();
    let stopping = CancellationToken::new();
    if let Some(tls) = options.tls.clone() {
        tokio::spawn(watch_certificate(tls, stopping.clone()));
    }
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let (socket, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    accept_errors.failed(&error);
                    // Out of file descriptors: the reserved one answers the waiting connection.
                    if reserve.release_for(&error) {
                        if let Ok(Ok((socket, _))) =
                            tokio::time::timeout(Duration::from_millis(100), listener.accept()).await
                        {
                            router.count_shed();
                            overload::answer(socket, &router).await;
                        }
                        reserve.restore();
                        continue;
                    }
                    // Back off instead of spinning (and say so once a second, not once a try).
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    reserve.restore();
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = socket.set_nodelay(true);
        let hyper = Hyper {
            router: router.clone(),
            builder: builder.clone(),
            watcher: graceful.watcher(),
            idle_timeout: options.idle_timeout,
        };
        if let Some(tls) = &options.tls {
            direct_tasks.spawn(handshake(
                tls.clone(),
                socket,
                peer,
                hyper,
                stopping.clone(),
                options.first_request_timeout,
                options.direct_streams,
            ));
        } else if options.direct_streams {
            direct_tasks.spawn(route(
                socket,
                peer,
                hyper,
                stopping.clone(),
                options.first_request_timeout,
            ));
        } else {
            tokio::spawn(hyper.serve(socket, peer, None));
        }
    }
    drop(listener);
    tracing::info!("shutting down: ending open streams and draining connections");
    stopping.cancel();
    direct_tasks.close();
    let hub = router.hub().clone();
    let drained = async {
        graceful.shutdown().await;
        direct_tasks.wait().await;
    };
    let mut drained = std::pin::pin!(drained);
    let deadline = tokio::time::sleep(options.drain_timeout);
    let mut deadline = std::pin::pin!(deadline);
    loop {
        // Streams opened on a connection that was mid-request when the drain began are ended too.
        hub.close_streams();
        tokio::select! {
            () = &mut drained => break,
            () = &mut deadline => {
                tracing::warn!("drain timeout: closing the remaining connections");
                break;
            }
            () = tokio::time::sleep(Duration::from_millis(100)) => {}
        }
    }
    Ok(())
}

/// Accept failures, logged once a second at most with how many there were.
#[derive(Default)]
struct AcceptErrors {
    last_logged: Option<tokio::time::Instant>,
    since: u64,
}

impl AcceptErrors {
    fn failed(&mut self, error: &io::Error) {
        self.since += 1;
        let now = tokio::time::Instant::now();
        if self
            .last_logged
            .is_none_or(|at| now.duration_since(at) >= Duration::from_secs(1))
        {
            tracing::warn!(%error, failures = self.since, "accept failed; backing off");
            self.last_logged = Some(now);
            self.since = 0;
        }
    }
}

/// Serves a new connection directly when its first request is an event stream, else hands it to
/// hyper (in a task of its own, so that a direct stream's task stays small).
async fn route(
    socket: TcpStream,
    peer: SocketAddr,
    hyper: Hyper,
    stopping: CancellationToken,
    first_request_timeout: Duration,
) {
    let first = tokio::select! {
        first = direct::peek_first_request(&socket, &hyper.router, first_request_timeout) => first,
        () = stopping.cancelled() => return,
    };
    match first {
        FirstRequest::Stream(parts, head_len) => {
            let Hyper { router, .. } = hyper;
            direct::serve_stream(socket, *parts, head_len, router).await;
        }
        FirstRequest::Other => {
            tokio::spawn(hyper.serve(socket, peer, None));
        }
        FirstRequest::Nothing => {
            tracing::debug!(%peer, "no request on a new connection");
        }
    }
}

/// The TLS handshake of a new connection (within `timeout`); then, as on plaintext, an HTTP/1
/// connection whose first request is an event stream is served directly, and every other one
/// (HTTP/2 by ALPN among them) by hyper. A failed handshake is counted by its reason.
async fn handshake(
    tls: Tls,
    socket: TcpStream,
    peer: SocketAddr,
    hyper: Hyper,
    stopping: CancellationToken,
    timeout: Duration,
    direct_streams: bool,
) {
    let accepted = tokio::select! {
        accepted = tls.accept(socket, timeout) => accepted,
        () = stopping.cancelled() => return,
    };
    let (mut stream, client) = match accepted {
        Ok(accepted) => accepted,
        Err(reason) => {
            tracing::debug!(%peer, reason = reason.as_str(), "TLS handshake failed");
            hyper.router.count_handshake_failure(reason);
            return;
        }
    };
    if !direct_streams || stream.alpn_protocol() == Some(b"h2") {
        tokio::spawn(hyper.serve(stream, peer, client));
        return;
    }
    let first = tokio::select! {
        first = tls_direct::read_first_request(&mut stream, &hyper.router, timeout) => first,
        () = stopping.cancelled() => return,
    };
    match first {
        FirstTlsRequest::Stream(mut parts) => {
            if let Some(client) = client {
                parts.extensions.insert(client);
            }
            let Hyper { router, .. } = hyper;
            tls_direct::serve_stream(stream, *parts, router).await;
        }
        FirstTlsRequest::Other(read) => {
            tokio::spawn(hyper.serve(tls_direct::Prefixed::new(read, stream), peer, client));
        }
        FirstTlsRequest::Nothing => {
            tracing::debug!(%peer, "no request on a new TLS connection");
        }
    }
}

/// Reloads `tls`'s certificate whenever its files change, until the server stops.
async fn watch_certificate(tls: Tls, stopping: CancellationToken) {
    let mut every = tokio::time::interval(crate::tls::WATCH_INTERVAL);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = every.tick() => tls.reload_if_changed(),
            () = stopping.cancelled() => return,
        }
    }
}

/// What serving a connection with hyper needs.
struct Hyper {
    router: SseRouter,
    builder: Arc<auto::Builder<TokioExecutor>>,
    watcher: Watcher,
    idle_timeout: Duration,
}

impl Hyper {
    /// Serves `io` (a socket, or a TLS stream whose client presented `client` certificate).
    async fn serve<I>(self, io: I, peer: SocketAddr, client: Option<ClientCertificate>)
    where
        I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let abort = CancellationToken::new();
        let request_abort = abort.clone();
        let router = self.router;
        let activity = Activity::new();
        let requests = activity.clone();
        let service = service_fn(move |mut request: hyper::Request<Incoming>| {
            let router = router.clone();
            let in_progress = requests.begin();
            request
                .extensions_mut()
                .insert(ConnectionAbort(request_abort.clone()));
            if let Some(client) = client {
                request.extensions_mut().insert(client);
            }
            async move {
                let response = router.handle(request).await;
                Ok::<_, Infallible>(response.map(|body| Tracked::new(body, in_progress)))
            }
        });
        let connection = self
            .builder
            .serve_connection(TokioIo::new(io), service)
            .into_owned();
        let connection = self.watcher.watch(connection);
        tokio::select! {
            result = connection => {
                if let Err(error) = result {
                    tracing::debug!(%peer, %error, "connection ended with an error");
                }
            }
            () = abort.cancelled() => {
                tracing::debug!(%peer, "dropped the connection of a slow client");
            }
            () = activity.idle_for(self.idle_timeout) => {
                tracing::debug!(%peer, "closed an idle connection");
            }
        }
    }
}
