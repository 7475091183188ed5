//! The clients: event streams over real loopback sockets (HTTP/1.1 read straight from the socket,
//! parsed by sse-core's spec-following [`EventStreamParser`]), and keep-alive publish connections
//! (hyper).

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};

use anyhow::{Context, bail};
use bytes::{Bytes, BytesMut};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

use sse_core::testkit::{Dispatched, EventStreamParser, ParsedEvent};

/// A server to load: its socket address and the `Host` to send.
#[derive(Debug, Clone)]
pub struct Server {
    /// Where it listens.
    pub addr: SocketAddr,
    /// `host:port` for the `Host` header.
    pub host: String,
}

impl Server {
    /// Reads `http://host:port` (a path, if any, is ignored).
    pub fn parse(url: &str) -> anyhow::Result<Server> {
        let rest = url
            .strip_prefix("http://")
            .with_context(|| format!("{url}: only http:// URLs"))?;
        let host = rest.split('/').next().unwrap_or(rest).to_owned();
        let addr = std::net::ToSocketAddrs::to_socket_addrs(&host)
            .with_context(|| format!("cannot resolve {host}"))?
            .next()
            .with_context(|| format!("no address for {host}"))?;
        Ok(Server { addr, host })
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

/// One open event stream, read straight from its socket: the response head checked, the body
/// de-chunked, and the events parsed by [`EventStreamParser`]. Lean on purpose: the
/// load tool shares the machine with the server it measures.
#[derive(Debug)]
pub struct EventStream {
    socket: TcpStream,
    buf: BytesMut,
    body: Framing,
    parser: EventStreamParser,
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
    let mut socket = server.connect(source).await.context("connect")?;
    let request = format!(
        "GET {path_and_query} HTTP/1.1\r\nhost: {}\r\naccept: text/event-stream\r\n\r\n",
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
            socket,
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
            if self.socket.read_buf(&mut self.buf).await? == 0 {
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

/// One keep-alive HTTP/1.1 connection that POSTs JSON.
#[derive(Debug)]
pub struct Publisher {
    sender: http1::SendRequest<Full<Bytes>>,
    host: String,
}

impl Publisher {
    /// Opens the connection.
    pub async fn connect(server: &Server) -> anyhow::Result<Publisher> {
        let stream = server.connect(None).await.context("connect")?;
        let (sender, connection) = http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(connection);
        Ok(Publisher {
            sender,
            host: server.host.clone(),
        })
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
        request
            .headers_mut()
            .insert(http::header::HOST, http::HeaderValue::from_str(&self.host)?);
        self.sender.ready().await?;
        let response = self.sender.send_request(request).await?;
        let status = response.status().as_u16();
        let body = response.into_body().collect().await?.to_bytes();
        Ok((status, body))
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
