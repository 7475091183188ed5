//! The clients: event streams over real loopback sockets (HTTP/1.1 read straight from the socket,
//! parsed by sse-core's spec-following [`EventStreamParser`]), and keep-alive publish connections
//! (hyper).
//!
//! An `https://` server is spoken to over TLS (rustls), trusting the CA certificates of the PEM
//! file that `LOADGEN_CA` names; with `LOADGEN_HTTP2=1` each event stream is an HTTP/2 stream
//! (ALPN `h2`, hyper's client), on a connection of its own as one browser tab's would be, or
//! `LOADGEN_HTTP2_STREAMS=k` streams to a connection, as a browser's tabs of one origin share one.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};

use anyhow::{Context, bail};
use bytes::{Bytes, BytesMut};
use http_body_util::{BodyExt, Empty, Full};
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpSocket, TcpStream};
use tokio_rustls::TlsConnector;
use tokio_rustls::rustls::pki_types::ServerName;

use sse_core::testkit::{Dispatched, EventStreamParser, ParsedEvent};

/// A server to load: its socket address and the `Host` to send.
#[derive(Clone)]
pub struct Server {
    /// Where it listens.
    pub addr: SocketAddr,
    /// `host:port` for the `Host` header.
    pub host: String,
    /// For `https://`: the TLS client (ALPN `http/1.1`, and `h2` for streams with `LOADGEN_HTTP2`).
    tls: Option<Tls>,
}

#[derive(Clone)]
struct Tls {
    name: ServerName<'static>,
    http1: TlsConnector,
    http2: Option<TlsConnector>,
    /// Streams an HTTP/2 connection carries before the next one is opened.
    streams_per_connection: usize,
    /// The HTTP/2 connection being filled.
    shared: Arc<tokio::sync::Mutex<Option<Filling>>>,
}

/// An HTTP/2 connection being filled with streams, and how many it has.
type Filling = (http2::SendRequest<Empty<Bytes>>, usize);

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("addr", &self.addr)
            .field("tls", &self.tls.is_some())
            .finish()
    }
}

impl Server {
    /// Reads `http://host:port` or `https://host:port` (a path, if any, is ignored).
    pub fn parse(url: &str) -> anyhow::Result<Server> {
        let (rest, tls) = match url.strip_prefix("https://") {
            Some(rest) => (rest, true),
            None => (
                url.strip_prefix("http://")
                    .with_context(|| format!("{url}: only http:// and https:// URLs"))?,
                false,
            ),
        };
        let host = rest.split('/').next().unwrap_or(rest).to_owned();
        let addr = std::net::ToSocketAddrs::to_socket_addrs(&host)
            .with_context(|| format!("cannot resolve {host}"))?
            .next()
            .with_context(|| format!("no address for {host}"))?;
        let tls = if tls { Some(Tls::new(&host)?) } else { None };
        Ok(Server { addr, host, tls })
    }

    /// A connection, over TLS for an `https://` server; `http2` asks ALPN for `h2`.
    async fn open(&self, source: Option<Ipv4Addr>, http2: bool) -> std::io::Result<Conn> {
        let socket = self.connect(source).await?;
        let Some(tls) = &self.tls else {
            return Ok(Conn::Plain(socket));
        };
        let connector = match (&tls.http2, http2) {
            (Some(h2), true) => h2,
            _ => &tls.http1,
        };
        let stream = connector.connect(tls.name.clone(), socket).await?;
        Ok(Conn::Tls(Box::new(stream)))
    }

    /// Whether event streams are HTTP/2 streams.
    fn http2(&self) -> bool {
        self.tls.as_ref().is_some_and(|t| t.http2.is_some())
    }

    /// Connects from source address `source` (any port), so that more connections than one
    /// address has ephemeral ports can be opened.
    pub async fn connect(&self, source: Option<Ipv4Addr>) -> std::io::Result<TcpStream> {
        let socket = match self.addr {
            SocketAddr::V4(_) => TcpSocket::new_v4()?,
            SocketAddr::V6(_) => TcpSocket::new_v6()?,
        };
        if let (Some(ip), SocketAddr::V4(_)) = (source, self.addr) {
            socket.bind(SocketAddr::V4(SocketAddrV4::new(ip, 0)))?;
        }
        let stream = socket.connect(self.addr).await?;
        stream.set_nodelay(true)?;
        Ok(stream)
    }
}

impl Tls {
    /// The TLS clients for `host` (`host:port`), trusting the CA file `LOADGEN_CA`.
    fn new(host: &str) -> anyhow::Result<Tls> {
        use tokio_rustls::rustls;
        use tokio_rustls::rustls::pki_types::CertificateDer;
        use tokio_rustls::rustls::pki_types::pem::PemObject;
        let ca = std::env::var("LOADGEN_CA").context("an https:// URL needs LOADGEN_CA")?;
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_file_iter(&ca).with_context(|| ca.clone())? {
            roots.add(cert.with_context(|| ca.clone())?)?;
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = |alpn: &[u8]| -> anyhow::Result<TlsConnector> {
            let mut config = rustls::ClientConfig::builder_with_provider(provider.clone())
                .with_safe_default_protocol_versions()?
                .with_root_certificates(roots.clone())
                .with_no_client_auth();
            config.alpn_protocols = vec![alpn.to_vec()];
            Ok(TlsConnector::from(Arc::new(config)))
        };
        let name = host.rsplit_once(':').map_or(host, |(name, _)| name);
        let name = name.trim_start_matches('[').trim_end_matches(']');
        Ok(Tls {
            name: ServerName::try_from(name.to_owned())?,
            http1: config(b"http/1.1")?,
            http2: match std::env::var("LOADGEN_HTTP2").as_deref() {
                Ok("1") => Some(config(b"h2")?),
                _ => None,
            },
            streams_per_connection: std::env::var("LOADGEN_HTTP2_STREAMS")
                .ok()
                .and_then(|k| k.parse().ok())
                .unwrap_or(1usize)
                .max(1),
            shared: Arc::default(),
        })
    }
}

/// A connection: plaintext, or TLS.
enum Conn {
    /// Plaintext.
    Plain(TcpStream),
    /// TLS.
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl AsyncRead for Conn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_flush(cx),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// One open event stream, read straight from its socket: the response head checked, the body
/// de-chunked, and the events parsed by [`EventStreamParser`]. Lean on purpose: the
/// load tool shares the machine with the server it measures.
pub struct EventStream {
    source: Source,
    buf: BytesMut,
    body: Framing,
    parser: EventStreamParser,
}

impl std::fmt::Debug for EventStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventStream").finish_non_exhaustive()
    }
}

/// Where a stream's bytes come from.
enum Source {
    /// HTTP/1.1 on the connection, read straight from it.
    Http1(Conn),
    /// An HTTP/2 stream's body; the sender keeps the connection.
    Http2 {
        body: hyper::body::Incoming,
        _sender: http2::SendRequest<Empty<Bytes>>,
    },
}

impl Source {
    /// Reads more into `buf`; 0 at the end.
    async fn read(&mut self, buf: &mut BytesMut) -> anyhow::Result<usize> {
        match self {
            Source::Http1(conn) => Ok(conn.read_buf(buf).await?),
            Source::Http2 { body, .. } => loop {
                match body.frame().await {
                    None => return Ok(0),
                    Some(frame) => {
                        if let Ok(data) = frame?.into_data()
                            && !data.is_empty()
                        {
                            buf.extend_from_slice(&data);
                            return Ok(data.len());
                        }
                    }
                }
            },
        }
    }
}

/// Opens an HTTP/2 event stream, on the connection being filled or a new one.
async fn open_http2_stream(
    server: &Server,
    source: Option<Ipv4Addr>,
    path_and_query: &str,
) -> anyhow::Result<EventStream> {
    let tls = server.tls.as_ref().context("HTTP/2 needs https://")?;
    let mut sender = {
        let mut shared = tls.shared.lock().await;
        match shared.as_mut() {
            Some((sender, streams)) if *streams < tls.streams_per_connection => {
                *streams += 1;
                sender.clone()
            }
            _ => {
                let conn = server.open(source, true).await.context("connect")?;
                let (sender, connection) =
                    http2::handshake(TokioExecutor::new(), TokioIo::new(conn)).await?;
                tokio::spawn(connection);
                *shared = Some((sender.clone(), 1));
                sender
            }
        }
    };
    sender.ready().await?;
    let request = http::Request::get(format!("https://{}{path_and_query}", server.host))
        .header(http::header::ACCEPT, "text/event-stream")
        .body(Empty::new())?;
    let response = sender.send_request(request).await?;
    if response.status() != http::StatusCode::OK {
        bail!("status {}", response.status());
    }
    Ok(EventStream {
        source: Source::Http2 {
            body: response.into_body(),
            _sender: sender,
        },
        buf: BytesMut::new(),
        body: Framing::UntilClose,
        parser: EventStreamParser::new(),
    })
}

/// How the response body is delimited.
#[derive(Debug)]
enum Framing {
    /// Chunked: bytes of the current chunk's data and of its CRLF still to come; `None` before a
    /// chunk-size line.
    Chunked(Option<(usize, usize)>),
    /// Until the connection closes (an HTTP/1.0-style body).
    UntilClose,
    /// The last chunk came.
    Ended,
}

/// Opens an event stream at `path_and_query` from source address `source`; returns once a `200`
/// response head is in.
pub async fn open_stream(
    server: &Server,
    source: Option<Ipv4Addr>,
    path_and_query: &str,
) -> anyhow::Result<EventStream> {
    open_stream_with(server, source, path_and_query, "").await
}

/// [`open_stream`] with `headers` (whole lines, each ending in CRLF, such as a `cookie:` line)
/// added to the request; HTTP/1.1 only.
pub async fn open_stream_with(
    server: &Server,
    source: Option<Ipv4Addr>,
    path_and_query: &str,
    headers: &str,
) -> anyhow::Result<EventStream> {
    if server.http2() {
        if !headers.is_empty() {
            bail!("extra request headers are sent over HTTP/1.1 only");
        }
        return open_http2_stream(server, source, path_and_query).await;
    }
    let mut socket = server.open(source, false).await.context("connect")?;
    let request = format!(
        "GET {path_and_query} HTTP/1.1\r\nhost: {}\r\naccept: text/event-stream\r\n{headers}\r\n",
        server.host
    );
    socket.write_all(request.as_bytes()).await?;
    let mut buf = BytesMut::with_capacity(2048);
    loop {
        if socket.read_buf(&mut buf).await? == 0 {
            bail!("the server closed the connection before its response head");
        }
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut response = httparse::Response::new(&mut headers);
        let httparse::Status::Complete(len) = response.parse(&buf)? else {
            continue;
        };
        if response.code != Some(200) {
            bail!(
                "status {:?}: {}",
                response.code,
                String::from_utf8_lossy(&buf[len..])
            );
        }
        let chunked = response.headers.iter().any(|h| {
            h.name.eq_ignore_ascii_case("transfer-encoding")
                && h.value.eq_ignore_ascii_case(b"chunked")
        });
        let _ = buf.split_to(len);
        return Ok(EventStream {
            source: Source::Http1(socket),
            buf,
            body: if chunked {
                Framing::Chunked(None)
            } else {
                Framing::UntilClose
            },
            parser: EventStreamParser::new(),
        });
    }
}

impl EventStream {
    /// Waits for more of the stream and calls `on_event` for every event it completes; `false`
    /// once the stream has ended.
    pub async fn next_events(
        &mut self,
        mut on_event: impl FnMut(&ParsedEvent),
    ) -> anyhow::Result<bool> {
        loop {
            let before = self.buf.len();
            self.decode(&mut on_event)?;
            if matches!(self.body, Framing::Ended) {
                return Ok(false);
            }
            if self.buf.len() < before {
                return Ok(true);
            }
            if self.buf.capacity() - self.buf.len() < 1024 {
                self.buf.reserve(4096);
            }
            if self.source.read(&mut self.buf).await? == 0 {
                return Ok(false);
            }
        }
    }

    /// Takes every complete piece of body out of the buffer.
    fn decode(&mut self, on_event: &mut impl FnMut(&ParsedEvent)) -> anyhow::Result<()> {
        loop {
            match &mut self.body {
                Framing::Ended => return Ok(()),
                Framing::UntilClose => {
                    let data = self.buf.split();
                    feed(&mut self.parser, &data, on_event);
                    return Ok(());
                }
                Framing::Chunked(None) => {
                    let Some(end) = memchr::memchr(b'\n', &self.buf) else {
                        return Ok(());
                    };
                    let line = self.buf.split_to(end + 1);
                    let size = std::str::from_utf8(&line)?
                        .trim_end()
                        .split(';')
                        .next()
                        .unwrap_or("");
                    let size = usize::from_str_radix(size.trim(), 16)
                        .with_context(|| format!("chunk size {size:?}"))?;
                    self.body = if size == 0 {
                        Framing::Ended
                    } else {
                        Framing::Chunked(Some((size, 2)))
                    };
                }
                Framing::Chunked(Some((data, crlf))) => {
                    if self.buf.is_empty() {
                        return Ok(());
                    }
                    if *data > 0 {
                        let take = (*data).min(self.buf.len());
                        *data -= take;
                        let piece = self.buf.split_to(take);
                        feed(&mut self.parser, &piece, on_event);
                    } else {
                        let take = (*crlf).min(self.buf.len());
                        *crlf -= take;
                        let _ = self.buf.split_to(take);
                        if *crlf == 0 {
                            self.body = Framing::Chunked(None);
                        }
                    }
                }
            }
        }
    }
}

/// One keep-alive HTTP/1.1 connection that POSTs JSON; opened again when the server closed it
/// (Pushpin's publish endpoint answers every request with `Connection: close`).
#[derive(Debug)]
pub struct Publisher {
    sender: http1::SendRequest<Full<Bytes>>,
    server: Server,
}

impl Publisher {
    /// Opens the connection.
    pub async fn connect(server: &Server) -> anyhow::Result<Publisher> {
        Ok(Publisher {
            sender: Publisher::open(server).await?,
            server: server.clone(),
        })
    }

    async fn open(server: &Server) -> anyhow::Result<http1::SendRequest<Full<Bytes>>> {
        let stream = server.open(None, false).await.context("connect")?;
        let (sender, connection) = http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(connection);
        Ok(sender)
    }

    /// POSTs `body` as JSON to `path`; returns the status and the answer.
    pub async fn post(&mut self, path: &str, body: Bytes) -> anyhow::Result<(u16, Bytes)> {
        let request = http::Request::post(path)
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(Full::new(body))?;
        self.send(request).await
    }

    /// GETs `path`; returns the status and the answer.
    pub async fn get(&mut self, path: &str) -> anyhow::Result<(u16, Bytes)> {
        self.send(http::Request::get(path).body(Full::default())?)
            .await
    }

    async fn send(
        &mut self,
        mut request: http::Request<Full<Bytes>>,
    ) -> anyhow::Result<(u16, Bytes)> {
        request.headers_mut().insert(
            http::header::HOST,
            http::HeaderValue::from_str(&self.server.host)?,
        );
        if self.sender.ready().await.is_err() {
            self.sender = Publisher::open(&self.server).await?;
        }
        let response = self.sender.send_request(request).await?;
        let status = response.status().as_u16();
        let body = response.into_body().collect().await?.to_bytes();
        Ok((status, body))
    }
}

/// One [`Publisher`] per server, each publish sent to every one in turn: how a publisher reaches
/// servers that share nothing (several Pushpin instances, each told every event).
#[derive(Debug)]
pub struct Publishers(Vec<Publisher>);

impl Publishers {
    /// Opens a connection to each of `servers` (at least one).
    pub async fn connect(servers: &[Server]) -> anyhow::Result<Publishers> {
        anyhow::ensure!(!servers.is_empty(), "no server to publish to");
        let mut publishers = Vec::with_capacity(servers.len());
        for server in servers {
            publishers.push(Publisher::connect(server).await?);
        }
        Ok(Publishers(publishers))
    }

    /// POSTs `body` to `path` on every server; the first answer that is not a success, else
    /// the last one.
    pub async fn post(&mut self, path: &str, body: Bytes) -> anyhow::Result<(u16, Bytes)> {
        let mut answer = (0, Bytes::new());
        for publisher in &mut self.0 {
            answer = publisher.post(path, body.clone()).await?;
            if !(200..300).contains(&answer.0) {
                break;
            }
        }
        Ok(answer)
    }
}

/// Feeds `bytes` to `parser`, passing on the events (the comments are the stream's opening and
/// its heartbeats).
fn feed(parser: &mut EventStreamParser, bytes: &[u8], on_event: &mut impl FnMut(&ParsedEvent)) {
    parser.feed(bytes, |dispatched| {
        if let Dispatched::Event(event) = dispatched {
            on_event(event);
        }
    });
}
