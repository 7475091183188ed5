//! Event streams served on the socket directly, for connections whose first request is a plain
//! HTTP/1.x `GET` of the event-stream path (what `EventSource` sends).
//!
//! An open stream spends almost all of its life idle, so what it costs is what it keeps. hyper keeps
//! a read buffer (8–16 KiB) and a header buffer (8 KiB) for the whole life of every HTTP/1
//! connection; here a stream keeps only its socket, its queue and a small task: the request head is
//! peeked from the socket, parsed with `httparse`, answered by the same [`SseRouter`] as every other
//! request, and the frames are written straight to the socket as HTTP/1.1 chunks.
//!
//! Anything else (another path or method, a request with a body, `Upgrade`, `Expect`, HTTP/2, a head
//! that did not arrive in one piece) is left untouched in the socket and served by hyper.

use std::convert::Infallible;
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::Poll;
use std::time::{Duration, SystemTime};

use bytes::{BufMut, Bytes, BytesMut};
use http::request::Parts;
use http::{Method, Request, Response, StatusCode, Version};
use http_body::Body;
use http_body_util::{BodyExt, Empty};
use socket2::SockRef;
use tokio::io::{AsyncReadExt, AsyncWriteExt, Interest};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

use crate::body::SseBody;
use crate::router::SseRouter;
use crate::transport::ConnectionAbort;

pub(crate) mod tls;

/// The largest request head taken on this path (hyper serves larger ones).
const MAX_HEAD: usize = 4096;
/// The most headers taken on this path.
const MAX_HEADERS: usize = 48;
/// Frames written in one go when several are waiting.
const MAX_BATCH: usize = 64 * 1024;

/// What a client may send after its request head before its stream is ended: an event-stream
/// client sends nothing, so this is junk, read in bulk (16 KiB a call) and dropped.
const MAX_IGNORED: usize = 1024 * 1024;

/// What the first bytes of a connection asked for.
#[derive(Debug)]
pub(crate) enum FirstRequest {
    /// An event stream this module serves: the parsed head and its length in the socket.
    Stream(Box<Parts>, usize),
    /// Anything else: hyper serves the connection, from its first byte.
    Other,
    /// Nothing came within the timeout, or the client left.
    Nothing,
}

/// Looks at the connection's first request without taking it out of the socket.
pub(crate) async fn peek_first_request(
    socket: &TcpStream,
    router: &SseRouter,
    wait: Duration,
) -> FirstRequest {
    let mut buf = vec![0; MAX_HEAD];
    let n = match tokio::time::timeout(wait, socket.peek(&mut buf)).await {
        Ok(Ok(0)) | Ok(Err(_)) | Err(_) => return FirstRequest::Nothing,
        Ok(Ok(n)) => n,
    };
    match parse_head(&buf[..n], router.stream_path()) {
        Some((parts, len)) => FirstRequest::Stream(Box::new(parts), len),
        None => FirstRequest::Other,
    }
}

/// Parses a complete request head that this module serves; `None` for anything else.
pub fn parse_head(buf: &[u8], stream_path: &str) -> Option<(Parts, usize)> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut headers);
    let httparse::Status::Complete(len) = request.parse(buf).ok()? else {
        return None;
    };
    let target = request.path?;
    let path = target.split_once('?').map_or(target, |(path, _)| path);
    if request.method? != "GET" || path != stream_path {
        return None;
    }
    let version = match request.version? {
        0 => Version::HTTP_10,
        1 => Version::HTTP_11,
        _ => return None,
    };
    let mut builder = Request::builder()
        .method(Method::GET)
        .uri(target)
        .version(version);
    for header in request.headers.iter() {
        let name = header.name;
        let has_body = name.eq_ignore_ascii_case("transfer-encoding")
            || (name.eq_ignore_ascii_case("content-length") && header.value.trim_ascii() != b"0");
        if has_body || name.eq_ignore_ascii_case("upgrade") || name.eq_ignore_ascii_case("expect") {
            return None;
        }
        builder = builder.header(name, header.value);
    }
    let (parts, ()) = builder.body(()).ok()?.into_parts();
    Some((parts, len))
}

/// Serves the event-stream request `parts`, whose head is the first `head_len` bytes of `socket`,
/// then closes the connection.
pub(crate) async fn serve_stream(
    mut socket: TcpStream,
    mut parts: Parts,
    head_len: usize,
    router: SseRouter,
) {
    // Take the head out of the socket: it is there already, since it was peeked.
    let mut head = vec![0; head_len];
    if socket.read_exact(&mut head).await.is_err() {
        return;
    }
    drop(head);
    let abort = CancellationToken::new();
    parts.extensions.insert(ConnectionAbort(abort.clone()));
    let chunked = parts.version == Version::HTTP_11;
    // Boxed: the router's future is large and needed only until the response is there.
    let response = Box::pin(router.handle(Request::from_parts(parts, Empty::<Bytes>::new()))).await;
    if let Err(error) = respond(&mut socket, response, chunked, &abort).await {
        tracing::debug!(%error, "event stream connection ended with an error");
    }
}

/// What a direct response writes first: its head and, for a response that is not a stream, its
/// whole body (then `None`); for a stream, the head with whatever frames are ready at once (the
/// opening comment, replayed events) and the stream's body.
async fn begin(response: Response<SseBody>, chunked: bool) -> (BytesMut, Option<SseBody>) {
    let (parts, mut body) = response.into_parts();
    let is_stream = !body.is_end_stream() && body.size_hint().exact().is_none();
    let mut out = BytesMut::with_capacity(512);
    write_head(
        &mut out,
        parts.status,
        &parts.headers,
        &body,
        is_stream && chunked,
    );
    drop(parts);
    if !is_stream {
        while let Some(frame) = body.frame().await {
            if let Some(data) = data(frame) {
                out.extend_from_slice(&data);
            }
        }
        return (out, None);
    }
    take_ready(&mut body, &mut out, chunked);
    (out, Some(body))
}

async fn respond(
    socket: &mut TcpStream,
    response: Response<SseBody>,
    chunked: bool,
    abort: &CancellationToken,
) -> io::Result<()> {
    let (out, body) = begin(response, chunked).await;
    let Some(mut body) = body else {
        socket.write_all(&out).await?;
        return socket.shutdown().await;
    };
    write_all(socket, &mut [IoSlice::new(&out)], abort).await?;
    drop(out);
    let mut ignored = 0usize;
    loop {
        let next = std::future::poll_fn(|cx| {
            if let Poll::Ready(frame) = Pin::new(&mut body).poll_frame(cx) {
                return Poll::Ready(Next::Frame(frame));
            }
            socket.poll_read_ready(cx).map(Next::Readable)
        })
        .await;
        let data = match next {
            Next::Frame(None) => return finish(socket, chunked, abort).await,
            Next::Frame(Some(frame)) => match data(frame) {
                Some(data) => data,
                None => continue,
            },
            Next::Readable(ready) => {
                ready?;
                // Nothing more is expected from the client: its end (EOF), or bytes to ignore,
                // read in bulk (a temporary: it is not kept across the loop's waits) and only
                // up to `MAX_IGNORED`, after which the stream ends.
                match socket.try_read(&mut [0; 16 * 1024]) {
                    Ok(0) => return Ok(()),
                    Ok(n) => {
                        ignored += n;
                        if ignored > MAX_IGNORED {
                            return Err(io::Error::new(
                                io::ErrorKind::InvalidData,
                                "the client sent more than 1 MiB on its event stream",
                            ));
                        }
                        continue;
                    }
                    Err(error) if error.kind() == io::ErrorKind::WouldBlock => continue,
                    Err(error) => return Err(error),
                }
            }
        };
        // Several frames waiting (a burst, or a client that reads slowly): one write for all.
        let mut more = BytesMut::new();
        take_ready(&mut body, &mut more, chunked);
        if more.is_empty() {
            write_chunk(socket, &data, chunked, abort).await?;
        } else {
            let mut all = BytesMut::with_capacity(data.len() + 24 + more.len());
            put_chunk(&mut all, &data, chunked);
            all.unsplit(more);
            write_all(socket, &mut [IoSlice::new(&all)], abort).await?;
        }
    }
}

/// What the stream loop woke up for.
enum Next {
    Frame(Option<Result<http_body::Frame<Bytes>, Infallible>>),
    Readable(io::Result<()>),
}

/// Appends the frames that are ready now, up to [`MAX_BATCH`] bytes.
fn take_ready(body: &mut SseBody, out: &mut BytesMut, chunked: bool) {
    while out.len() < MAX_BATCH {
        match body.try_frame() {
            Some(data) => put_chunk(out, &data, chunked),
            None => return,
        }
    }
}

/// The bytes of a body frame (an [`SseBody`] has no trailers and no errors).
fn data(frame: Result<http_body::Frame<Bytes>, Infallible>) -> Option<Bytes> {
    match frame {
        Ok(frame) => frame.into_data().ok(),
        Err(never) => match never {},
    }
}

/// The last chunk, then the connection is closed.
async fn finish(
    socket: &mut TcpStream,
    chunked: bool,
    abort: &CancellationToken,
) -> io::Result<()> {
    if chunked {
        write_all(socket, &mut [IoSlice::new(b"0\r\n\r\n")], abort).await?;
    }
    socket.shutdown().await
}

fn write_head(
    out: &mut BytesMut,
    status: StatusCode,
    headers: &http::HeaderMap,
    body: &SseBody,
    chunked: bool,
) {
    out.put_slice(b"HTTP/1.1 ");
    out.put_slice(status.as_str().as_bytes());
    out.put_u8(b' ');
    out.put_slice(status.canonical_reason().unwrap_or("").as_bytes());
    out.put_slice(b"\r\n");
    for (name, value) in headers {
        out.put_slice(name.as_str().as_bytes());
        out.put_slice(b": ");
        out.put_slice(value.as_bytes());
        out.put_slice(b"\r\n");
    }
    out.put_slice(b"date: ");
    out.put_slice(httpdate::fmt_http_date(SystemTime::now()).as_bytes());
    out.put_slice(b"\r\n");
    if chunked {
        out.put_slice(b"transfer-encoding: chunked\r\n");
    } else if let Some(len) = body.size_hint().exact() {
        out.put_slice(format!("content-length: {len}\r\n").as_bytes());
    }
    // The connection ends with this response.
    out.put_slice(b"connection: close\r\n\r\n");
}

/// `len` in hex and CRLF: a chunk's size line.
fn chunk_size_line(len: usize, line: &mut [u8; 20]) -> &[u8] {
    let mut i = line.len() - 2;
    line[i..].copy_from_slice(b"\r\n");
    let mut n = len;
    loop {
        i -= 1;
        line[i] = b"0123456789abcdef"[n & 0xf];
        n >>= 4;
        if n == 0 {
            return &line[i..];
        }
    }
}

fn put_chunk(out: &mut BytesMut, data: &[u8], chunked: bool) {
    if data.is_empty() {
        // An empty chunk would end the body.
        return;
    }
    if chunked {
        out.put_slice(chunk_size_line(data.len(), &mut [0; 20]));
        out.put_slice(data);
        out.put_slice(b"\r\n");
    } else {
        out.put_slice(data);
    }
}

/// Writes one frame without copying it.
async fn write_chunk(
    socket: &mut TcpStream,
    data: &Bytes,
    chunked: bool,
    abort: &CancellationToken,
) -> io::Result<()> {
    if data.is_empty() {
        return Ok(());
    }
    if !chunked {
        return write_all(socket, &mut [IoSlice::new(data)], abort).await;
    }
    let mut line = [0; 20];
    let mut slices = [
        IoSlice::new(chunk_size_line(data.len(), &mut line)),
        IoSlice::new(data),
        IoSlice::new(b"\r\n"),
    ];
    write_all(socket, &mut slices, abort).await
}

/// Writes every slice. Tries at once (a socket with room in its buffer, the usual case, costs one
/// system call and nothing else); only a full socket waits, and then also for `abort`: a stream
/// closed as too slow drops its connection rather than wait for a socket that no longer drains.
///
/// The system call is `sendmsg`, not `writev`: the same gather-write without the file layer
/// (`writev` takes the file position lock on every call); on a 10 000-stream broadcast that is
/// about a tenth of the server's CPU.
async fn write_all(
    socket: &mut TcpStream,
    mut slices: &mut [IoSlice<'_>],
    abort: &CancellationToken,
) -> io::Result<()> {
    while !slices.is_empty() {
        let sock: &TcpStream = socket;
        match sock.try_io(Interest::WRITABLE, || {
            SockRef::from(sock).send_vectored(slices)
        }) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => IoSlice::advance_slices(&mut slices, n),
            Err(error) if error.kind() == io::ErrorKind::WouldBlock => {
                tokio::select! {
                    biased;
                    () = abort.cancelled() => {
                        return Err(io::Error::other("closed as a slow client"));
                    }
                    writable = socket.writable() => writable?,
                }
            }
            Err(error) => return Err(error),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const PATH: &str = "/sse/event-stream";

    #[test]
    fn an_event_source_request_is_taken() {
        let head = b"GET /sse/event-stream?eventName=a HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\nLast-Event-ID: 7\r\n\r\n";
        let (parts, len) = parse_head(head, PATH).unwrap();
        assert_eq!(len, head.len());
        assert_eq!(parts.uri.query(), Some("eventName=a"));
        assert_eq!(parts.version, Version::HTTP_11);
        assert_eq!(parts.headers["last-event-id"], "7");
        let (parts, _) = parse_head(b"GET /sse/event-stream HTTP/1.0\r\n\r\n", PATH).unwrap();
        assert_eq!(parts.version, Version::HTTP_10);
        assert!(
            parse_head(
                b"GET /sse/event-stream HTTP/1.1\r\nContent-Length: 0\r\n\r\n",
                PATH
            )
            .is_some()
        );
    }

    #[test]
    fn everything_else_is_left_to_hyper() {
        for head in [
            &b"GET /sse/event-stream HTTP/1.1\r\nHost: x\r\n"[..],
            b"POST /sse/event-stream HTTP/1.1\r\n\r\n",
            b"HEAD /sse/event-stream HTTP/1.1\r\n\r\n",
            b"GET /sse/publish HTTP/1.1\r\n\r\n",
            b"GET /sse/event-stream/x HTTP/1.1\r\n\r\n",
            b"GET /sse/event-stream HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello",
            b"GET /sse/event-stream HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"GET /sse/event-stream HTTP/1.1\r\nUpgrade: h2c\r\nConnection: Upgrade\r\n\r\n",
            b"GET /sse/event-stream HTTP/1.1\r\nExpect: 100-continue\r\n\r\n",
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
            b"GET /sse/event-stream HTTP/1.1\r\nBad Header: x\r\n\r\n",
            b"\x16\x03\x01\x02\x00",
        ] {
            assert!(
                parse_head(head, PATH).is_none(),
                "{}",
                String::from_utf8_lossy(head)
            );
        }
    }

    #[test]
    fn chunk_size_lines() {
        let mut line = [0; 20];
        assert_eq!(chunk_size_line(1, &mut line), b"1\r\n");
        assert_eq!(chunk_size_line(255, &mut line), b"ff\r\n");
        assert_eq!(chunk_size_line(4096, &mut line), b"1000\r\n");
        assert_eq!(
            chunk_size_line(usize::MAX, &mut line),
            b"ffffffffffffffff\r\n"
        );
    }
}
