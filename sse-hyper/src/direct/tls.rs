//! The direct path over TLS: a connection whose ALPN is `http/1.1` (or none) and whose first
//! request is an event stream is served here instead of by hyper, as plaintext ones are; what
//! such a stream keeps is its TLS session and the stream's own parts, not hyper's buffers.
//!
//! TLS gives nothing to peek at, so the first request head is read (at most [`MAX_HEAD`]
//! bytes, within the first-request timeout); any other request is handed to hyper with those
//! bytes in front of the rest ([`Prefixed`]).

use std::convert::Infallible;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::request::Parts;
use http::{Request, Response, Version};
use http_body::Body;
use http_body_util::Empty;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio_util::sync::CancellationToken;

use super::{MAX_HEAD, MAX_IGNORED, begin, data, parse_head, put_chunk, take_ready};
use crate::body::SseBody;
use crate::router::SseRouter;
use crate::transport::ConnectionAbort;

/// What the first request on a TLS connection was.
#[derive(Debug)]
pub(crate) enum FirstTlsRequest {
    /// An event stream served here: its parsed head.
    Stream(Box<Parts>),
    /// Anything else, with the bytes read so far: hyper serves the connection.
    Other(Bytes),
    /// Nothing came within the timeout, or the client left.
    Nothing,
}

/// Reads the first request head from `io` (within `wait`) and tells whether it is an event
/// stream this path serves.
pub(crate) async fn read_first_request<S: AsyncRead + Unpin>(
    io: &mut S,
    router: &SseRouter,
    wait: Duration,
) -> FirstTlsRequest {
    let mut buf = BytesMut::with_capacity(1024);
    let reading = async {
        loop {
            if buf.capacity() == buf.len() {
                buf.reserve(1024);
            }
            match io.read_buf(&mut buf).await {
                Ok(0) | Err(_) => return None,
                Ok(_) => {}
            }
            if let Some((parts, len)) = parse_head(&buf, router.stream_path()) {
                // An event-stream client sends nothing after its head; what it sent is dropped.
                let _ = len;
                return Some(FirstTlsRequest::Stream(Box::new(parts)));
            }
            if buf.len() >= MAX_HEAD || !is_partial_head(&buf) {
                return Some(FirstTlsRequest::Other(buf.split().freeze()));
            }
        }
    };
    tokio::time::timeout(wait, reading)
        .await
        .ok()
        .flatten()
        .unwrap_or(FirstTlsRequest::Nothing)
}

/// Whether `buf` is the beginning of an HTTP/1 request head that has not ended yet.
fn is_partial_head(buf: &[u8]) -> bool {
    let mut headers = [httparse::EMPTY_HEADER; super::MAX_HEADERS];
    matches!(
        httparse::Request::new(&mut headers).parse(buf),
        Ok(httparse::Status::Partial)
    )
}

/// Serves the event stream asked for by `parts` on `io`, to its end.
pub(crate) async fn serve_stream<S>(mut io: S, mut parts: Parts, router: SseRouter)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let abort = CancellationToken::new();
    parts.extensions.insert(ConnectionAbort(abort.clone()));
    let chunked = parts.version == Version::HTTP_11;
    // Boxed: the router's future is large and needed only until the response is there.
    let response = Box::pin(router.handle(Request::from_parts(parts, Empty::<Bytes>::new()))).await;
    if let Err(error) = respond(&mut io, response, chunked, &abort).await {
        tracing::debug!(%error, "TLS event stream connection ended with an error");
    }
}

enum Next {
    Frame(Option<Result<http_body::Frame<Bytes>, Infallible>>),
    Read(io::Result<usize>),
}

async fn respond<S>(
    io: &mut S,
    response: Response<SseBody>,
    chunked: bool,
    abort: &CancellationToken,
) -> io::Result<()>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let (out, body) = begin(response, chunked).await;
    send(io, &out, abort).await?;
    drop(out);
    let Some(mut body) = body else {
        return io.shutdown().await;
    };
    let mut ignored = 0usize;
    loop {
        let next = std::future::poll_fn(|cx| {
            if let Poll::Ready(frame) = Pin::new(&mut body).poll_frame(cx) {
                return Poll::Ready(Next::Frame(frame));
            }
            // Nothing is expected from the client but its end: bytes it sends are read into a
            // scratch buffer that lives only for this poll, and dropped.
            let mut scratch = [0u8; 1024];
            let mut read = ReadBuf::new(&mut scratch);
            Pin::new(&mut *io)
                .poll_read(cx, &mut read)
                .map(|result| Next::Read(result.map(|()| read.filled().len())))
        })
        .await;
        match next {
            Next::Frame(None) => {
                if chunked {
                    send(io, b"0\r\n\r\n", abort).await?;
                }
                return io.shutdown().await;
            }
            Next::Frame(Some(frame)) => {
                let Some(data) = data(frame) else { continue };
                // Each write is a TLS record: the chunk and whatever else is waiting go in one.
                let mut all = BytesMut::with_capacity(data.len() + 24);
                put_chunk(&mut all, &data, chunked);
                take_ready(&mut body, &mut all, chunked);
                send(io, &all, abort).await?;
            }
            Next::Read(Ok(0)) => return Ok(()),
            Next::Read(Ok(n)) => {
                ignored += n;
                if ignored > MAX_IGNORED {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "the client sent more than 1 MiB on its event stream",
                    ));
                }
            }
            Next::Read(Err(error)) => return Err(error),
        }
    }
}

/// Writes and flushes `bytes`, unless the stream is closed as slow meanwhile.
async fn send<S: AsyncWrite + Unpin>(
    io: &mut S,
    bytes: &[u8],
    abort: &CancellationToken,
) -> io::Result<()> {
    if bytes.is_empty() {
        return Ok(());
    }
    tokio::select! {
        biased;
        () = abort.cancelled() => Err(io::Error::other("closed as a slow client")),
        written = async {
            io.write_all(bytes).await?;
            io.flush().await
        } => written,
    }
}

/// A connection whose first bytes were read already: they are read again first.
#[derive(Debug)]
pub(crate) struct Prefixed<S> {
    prefix: Bytes,
    io: S,
}

impl<S> Prefixed<S> {
    pub(crate) fn new(prefix: Bytes, io: S) -> Prefixed<S> {
        Prefixed { prefix, io }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Prefixed<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.prefix.is_empty() {
            return Pin::new(&mut this.io).poll_read(cx, buf);
        }
        let n = this.prefix.len().min(buf.remaining());
        buf.put_slice(&this.prefix.split_to(n));
        if this.prefix.is_empty() {
            // Let go of the buffer the prefix was read into.
            this.prefix = Bytes::new();
        }
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Prefixed<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[tokio::test]
    async fn a_prefixed_connection_reads_its_prefix_first() {
        let (client, mut server) = tokio::io::duplex(64);
        let mut prefixed = Prefixed::new(Bytes::from_static(b"GET / HTTP/1.1\r\n"), client);
        server.write_all(b"host: x\r\n\r\n").await.unwrap();
        drop(server);
        let mut all = Vec::new();
        prefixed.read_to_end(&mut all).await.unwrap();
        assert_eq!(all, b"GET / HTTP/1.1\r\nhost: x\r\n\r\n");
    }

    #[test]
    fn a_head_that_has_not_ended_is_partial_and_garbage_is_not() {
        assert!(is_partial_head(b"GET /sse/event-stream HTTP/1.1\r\nhost"));
        assert!(!is_partial_head(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n"));
        assert!(!is_partial_head(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"));
        assert!(!is_partial_head(b"\x16\x03\x01"));
    }
}
