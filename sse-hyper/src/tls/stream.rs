//! A TLS server connection on rustls' unbuffered API, which holds no buffer while it is idle.
//!
//! rustls' buffered connection (what tokio-rustls drives) keeps its read buffer at 4 KiB once a
//! record has been read: for an idle event stream, more than the stream itself. Here the buffers
//! are this type's, and each is let go of once empty:
//!
//! - TLS bytes are read from the socket onto the stack; only bytes not yet processed (a record
//!   that arrived in part) stay, on the heap, until the rest comes;
//! - what is encrypted waits in a buffer until the socket took it all; a write is accepted only
//!   once the previous one is out (so one write's records at most wait here);
//! - decrypted bytes wait until they are read.
//!
//! An idle connection holds rustls' session (keys and state, about 3.3 KiB) and nothing else.

use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
#[cfg(test)]
use std::time::Duration;

use rustls::ServerConfig;
use rustls::server::UnbufferedServerConnection;
use rustls::unbuffered::{ConnectionState, EncodeError, EncryptError, UnbufferedStatus};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// How many TLS bytes one read from the socket takes, on the stack.
const READ_CHUNK: usize = 4096;

/// The most plaintext one write encrypts: four full records.
const WRITE_MAX: usize = 4 * 16_384;

/// A server's TLS connection over `IO` (see the [module docs](self)).
pub(crate) struct TlsStream<IO> {
    io: IO,
    session: Session,
    /// TLS bytes read and not yet processed: a record that arrived in part.
    incoming: Vec<u8>,
    /// How much of `session.outgoing` the socket took.
    sent: usize,
    /// The peer sent its close_notify, or closed its end of the socket.
    read_closed: bool,
    /// close_notify is queued: nothing more is written.
    write_closed: bool,
}

/// rustls' connection and what it produced for the socket and for the reader.
struct Session {
    conn: Box<UnbufferedServerConnection>,
    /// TLS bytes to send.
    outgoing: Vec<u8>,
    /// Decrypted bytes, from `taken` on not yet read.
    plaintext: Vec<u8>,
    taken: usize,
    peer_closed: bool,
}

/// What to do once the connection can send application data.
#[derive(Clone, Copy)]
enum Action<'a> {
    Nothing,
    Encrypt(&'a [u8]),
    CloseNotify,
}

/// Where processing stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stop {
    /// The handshake needs more from the peer.
    Handshaking,
    /// Application data can be sent; every complete record was processed.
    Traffic,
    /// Both sides sent close_notify.
    Closed,
}

impl Session {
    /// Processes the complete records at the front of `incoming` and performs `action` once
    /// application data can be sent; returns how many bytes of `incoming` were used.
    fn process(
        &mut self,
        incoming: &mut [u8],
        mut action: Action<'_>,
    ) -> Result<(usize, Stop), rustls::Error> {
        let mut used = 0;
        loop {
            let UnbufferedStatus { mut discard, state } =
                self.conn.process_tls_records(&mut incoming[used..]);
            let mut stop = None;
            match state? {
                ConnectionState::ReadTraffic(mut traffic) => {
                    while let Some(record) = traffic.next_record() {
                        let record = record?;
                        discard += record.discard;
                        if self.taken == self.plaintext.len() {
                            self.plaintext.clear();
                            self.taken = 0;
                        }
                        self.plaintext.extend_from_slice(record.payload);
                    }
                }
                ConnectionState::EncodeTlsData(mut encode) => {
                    append(&mut self.outgoing, 0, |out| {
                        encode.encode(out).map_err(encode_error)
                    })?;
                }
                // Sent in the order encoded: `outgoing` goes out before anything added later.
                ConnectionState::TransmitTlsData(transmit) => transmit.done(),
                ConnectionState::PeerClosed => self.peer_closed = true,
                ConnectionState::Closed => {
                    self.peer_closed = true;
                    stop = Some(Stop::Closed);
                }
                ConnectionState::BlockedHandshake => stop = Some(Stop::Handshaking),
                ConnectionState::WriteTraffic(mut traffic) => {
                    match std::mem::replace(&mut action, Action::Nothing) {
                        Action::Nothing => {}
                        Action::Encrypt(data) => {
                            // A record adds at most 5 + 16 bytes and a content type.
                            let hint = data.len() + 64 * (data.len() / 16_384 + 1);
                            append(&mut self.outgoing, hint, |out| {
                                traffic.encrypt(data, out).map_err(encrypt_error)
                            })?;
                        }
                        Action::CloseNotify => {
                            append(&mut self.outgoing, 64, |out| {
                                traffic.queue_close_notify(out).map_err(encrypt_error)
                            })?;
                        }
                    }
                    stop = Some(Stop::Traffic);
                }
                _ => {
                    return Err(rustls::Error::General(
                        "unexpected TLS connection state (early data)".into(),
                    ));
                }
            }
            used += discard;
            if let Some(stop) = stop {
                return Ok((used, stop));
            }
        }
    }

    /// Encodes the alert rustls queued when it refused the peer (a certificate it does not
    /// trust, a protocol error), so that the peer learns why before the connection closes.
    fn encode_alert(&mut self) {
        let status = self.conn.process_tls_records(&mut []);
        if let Ok(ConnectionState::EncodeTlsData(mut encode)) = status.state {
            let _ = append(&mut self.outgoing, 0, |out| {
                encode.encode(out).map_err(encode_error)
            });
        }
    }

    fn has_plaintext(&self) -> bool {
        self.taken < self.plaintext.len()
    }
}

/// The size a too small buffer should have had (`None`: another failure).
fn encode_error(error: EncodeError) -> Option<usize> {
    match error {
        EncodeError::InsufficientSize(size) => Some(size.required_size),
        EncodeError::AlreadyEncoded => None,
    }
}

/// As [`encode_error`], for encryption.
fn encrypt_error(error: EncryptError) -> Option<usize> {
    match error {
        EncryptError::InsufficientSize(size) => Some(size.required_size),
        // The sequence numbers ran out (2^64 records): never in practice.
        _ => None,
    }
}

/// Appends what `write` writes to `out`, growing it to the size `write` asks for when `hint`
/// was too small.
fn append(
    out: &mut Vec<u8>,
    hint: usize,
    mut write: impl FnMut(&mut [u8]) -> Result<usize, Option<usize>>,
) -> Result<(), rustls::Error> {
    let start = out.len();
    out.resize(start + hint, 0);
    let written = match write(&mut out[start..]) {
        Ok(written) => written,
        Err(Some(required)) => {
            out.resize(start + required, 0);
            write(&mut out[start..]).map_err(|_| encoding_failed())?
        }
        Err(None) => {
            out.truncate(start);
            return Err(encoding_failed());
        }
    };
    out.truncate(start + written);
    Ok(())
}

fn encoding_failed() -> rustls::Error {
    rustls::Error::General("a TLS record could not be written".into())
}

fn tls_error(error: rustls::Error) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, error)
}

impl<IO: AsyncRead + AsyncWrite + Unpin> TlsStream<IO> {
    /// The server's side of a TLS handshake on `io`; the connection once it is complete.
    pub(crate) async fn accept(io: IO, config: Arc<ServerConfig>) -> io::Result<TlsStream<IO>> {
        let conn = UnbufferedServerConnection::new(config).map_err(tls_error)?;
        let mut stream = TlsStream {
            io,
            session: Session {
                conn: Box::new(conn),
                outgoing: Vec::new(),
                plaintext: Vec::new(),
                taken: 0,
                peer_closed: false,
            },
            incoming: Vec::new(),
            sent: 0,
            read_closed: false,
            write_closed: false,
        };
        std::future::poll_fn(|cx| stream.poll_handshake(cx)).await?;
        Ok(stream)
    }

    /// The protocol both sides chose by ALPN.
    pub(crate) fn alpn_protocol(&self) -> Option<&[u8]> {
        self.session.conn.alpn_protocol()
    }

    /// Whether the client presented a certificate (the configuration verified it).
    pub(crate) fn has_peer_certificate(&self) -> bool {
        self.session.conn.peer_certificates().is_some()
    }

    /// The bytes this connection's buffers hold (their capacity): none while it is idle.
    #[cfg(test)]
    fn buffered(&self) -> usize {
        self.incoming.capacity()
            + self.session.outgoing.capacity()
            + self.session.plaintext.capacity()
    }

    fn poll_handshake(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        loop {
            let stop = match self.process(Action::Nothing) {
                Ok(stop) => stop,
                Err(error) => {
                    // The alert goes out if the socket takes it now; the handshake failed anyway.
                    let _ = self.poll_send(cx);
                    return Poll::Ready(Err(error));
                }
            };
            ready!(self.poll_send(cx))?;
            match stop {
                // A TLS 1.3 server may send before the client's Finished: the handshake is
                // complete only once that was read (and the client's certificate checked).
                Stop::Traffic if !self.session.conn.is_handshaking() => {
                    return Poll::Ready(Ok(()));
                }
                Stop::Closed => return Poll::Ready(Err(io::ErrorKind::UnexpectedEof.into())),
                Stop::Traffic | Stop::Handshaking => {}
            }
            if ready!(self.poll_fill(cx))? == 0 {
                return Poll::Ready(Err(io::ErrorKind::UnexpectedEof.into()));
            }
        }
    }

    /// Processes the records in `incoming` (see [`Session::process`]), keeps what is left of it.
    fn process(&mut self, action: Action<'_>) -> io::Result<Stop> {
        let (used, stop) = match self.session.process(&mut self.incoming, action) {
            Ok(processed) => processed,
            Err(error) => {
                self.session.encode_alert();
                return Err(tls_error(error));
            }
        };
        self.incoming.drain(..used);
        if self.incoming.is_empty() {
            self.incoming = Vec::new();
        }
        if self.session.peer_closed {
            self.read_closed = true;
        }
        Ok(stop)
    }

    /// Reads TLS bytes from the socket into `incoming`; `0` at its end.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        let mut chunk = [MaybeUninit::<u8>::uninit(); READ_CHUNK];
        let mut read = ReadBuf::uninit(&mut chunk);
        ready!(Pin::new(&mut self.io).poll_read(cx, &mut read))?;
        self.incoming.extend_from_slice(read.filled());
        Poll::Ready(Ok(read.filled().len()))
    }

    /// Writes what waits in `outgoing` to the socket, and lets go of the buffer once it is out.
    fn poll_send(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let outgoing = &mut self.session.outgoing;
        while self.sent < outgoing.len() {
            let n = ready!(Pin::new(&mut self.io).poll_write(cx, &outgoing[self.sent..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.sent += n;
        }
        *outgoing = Vec::new();
        self.sent = 0;
        Poll::Ready(Ok(()))
    }
}

impl<IO: AsyncRead + AsyncWrite + Unpin> AsyncRead for TlsStream<IO> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            let session = &mut this.session;
            if session.has_plaintext() {
                let n = buf.remaining().min(session.plaintext.len() - session.taken);
                buf.put_slice(&session.plaintext[session.taken..session.taken + n]);
                session.taken += n;
                if !session.has_plaintext() {
                    session.plaintext = Vec::new();
                    session.taken = 0;
                }
                return Poll::Ready(Ok(()));
            }
            if this.read_closed {
                return Poll::Ready(Ok(()));
            }
            // What rustls queued while reading (a key update's answer) goes out without waiting
            // for a write; a socket that cannot take it now is tried again by the next write.
            if let Poll::Ready(Err(error)) = this.poll_send(cx) {
                return Poll::Ready(Err(error));
            }
            if ready!(this.poll_fill(cx))? == 0 {
                this.read_closed = true;
                continue;
            }
            this.process(Action::Nothing)?;
        }
    }
}

impl<IO: AsyncRead + AsyncWrite + Unpin> AsyncWrite for TlsStream<IO> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.write_closed {
            return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
        }
        // One write's records at most wait here: the next is taken once they are out.
        ready!(this.poll_send(cx))?;
        if data.is_empty() {
            return Poll::Ready(Ok(0));
        }
        let data = &data[..data.len().min(WRITE_MAX)];
        match this.process(Action::Encrypt(data))? {
            Stop::Traffic => {}
            Stop::Handshaking => {
                return Poll::Ready(Err(io::Error::other("TLS handshake not complete")));
            }
            Stop::Closed => return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into())),
        }
        // Accepted: the bytes are encrypted. Whatever the socket does not take now goes out
        // with the next write or flush.
        if let Poll::Ready(Err(error)) = this.poll_send(cx) {
            return Poll::Ready(Err(error));
        }
        Poll::Ready(Ok(data.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_send(cx))?;
        Pin::new(&mut this.io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.write_closed {
            this.write_closed = true;
            // A connection already closed both ways has nothing more to say.
            this.process(Action::CloseNotify)?;
        }
        ready!(this.poll_send(cx))?;
        Pin::new(&mut this.io).poll_shutdown(cx)
    }
}

impl<IO> std::fmt::Debug for TlsStream<IO> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsStream")
            .field("incoming", &self.incoming.len())
            .field("outgoing", &(self.session.outgoing.len() - self.sent))
            .field("read_closed", &self.read_closed)
            .field("write_closed", &self.write_closed)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
    use rustls::{ClientConfig, RootCertStore};
    use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
    use tokio_rustls::TlsConnector;
    use tokio_rustls::client::TlsStream as ClientStream;

    fn configs(
        versions: &[&'static rustls::SupportedProtocolVersion],
    ) -> (Arc<ServerConfig>, TlsConnector) {
        let certified = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        let cert = CertificateDer::from(certified.cert.der().to_vec());
        let key = PrivateKeyDer::try_from(certified.signing_key.serialize_der()).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut server = ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(versions)
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![cert.clone()], key)
            .unwrap();
        server.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        let mut roots = RootCertStore::empty();
        roots.add(cert).unwrap();
        let mut client = ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(versions)
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        client.alpn_protocols = vec![b"http/1.1".to_vec()];
        (Arc::new(server), TlsConnector::from(Arc::new(client)))
    }

    async fn connected(
        versions: &[&'static rustls::SupportedProtocolVersion],
    ) -> (TlsStream<DuplexStream>, ClientStream<DuplexStream>) {
        let (server_config, connector) = configs(versions);
        let (client_io, server_io) = tokio::io::duplex(8 * 1024);
        let name = ServerName::try_from("localhost").unwrap();
        let (server, client) = tokio::join!(
            TlsStream::accept(server_io, server_config),
            connector.connect(name, client_io)
        );
        (server.unwrap(), client.unwrap())
    }

    fn pattern(len: usize, seed: u8) -> Vec<u8> {
        (0..len)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
            .collect()
    }

    #[tokio::test]
    async fn bytes_cross_both_ways_in_large_and_small_writes_on_tls_12_and_13() {
        for versions in [
            &[&rustls::version::TLS13][..],
            &[&rustls::version::TLS12][..],
        ] {
            let (mut server, mut client) = connected(versions).await;
            assert_eq!(server.alpn_protocol(), Some(&b"http/1.1"[..]));
            assert!(!server.has_peer_certificate());
            let up = pattern(100_000, 1);
            let down = pattern(300_000, 2);
            let ((), got_up) = tokio::join!(
                async {
                    for part in up.chunks(7_000) {
                        client.write_all(part).await.unwrap();
                    }
                    client.flush().await.unwrap();
                },
                async {
                    let mut got = vec![0u8; up.len()];
                    server.read_exact(&mut got).await.unwrap();
                    got
                }
            );
            let ((), got_down) = tokio::join!(
                async {
                    server.write_all(&down).await.unwrap();
                    server.write_all(b"x").await.unwrap();
                    server.flush().await.unwrap();
                },
                async {
                    let mut got = vec![0u8; down.len() + 1];
                    client.read_exact(&mut got).await.unwrap();
                    got
                }
            );
            assert_eq!(got_up, up);
            assert_eq!(&got_down[..down.len()], &down[..]);
            assert_eq!(server.buffered(), 0, "{versions:?}: {server:?}");
        }
    }

    #[tokio::test]
    async fn an_idle_connection_holds_no_buffer() {
        let (mut server, mut client) = connected(&[&rustls::version::TLS13]).await;
        client
            .write_all(b"GET /sse HTTP/1.1\r\n\r\n")
            .await
            .unwrap();
        client.flush().await.unwrap();
        let mut head = [0u8; 21];
        server.read_exact(&mut head).await.unwrap();
        server.write_all(b"HTTP/1.1 200 OK\r\n\r\n").await.unwrap();
        server.flush().await.unwrap();
        let mut answer = [0u8; 19];
        client.read_exact(&mut answer).await.unwrap();
        // Waiting for more from the client, as an event stream does.
        let mut more = [0u8; 16];
        let waited = tokio::time::timeout(Duration::from_millis(20), server.read(&mut more)).await;
        assert!(waited.is_err());
        assert_eq!(server.buffered(), 0, "{server:?}");
    }

    #[tokio::test]
    async fn a_key_update_from_the_client_is_followed() {
        let (mut server, mut client) = connected(&[&rustls::version::TLS13]).await;
        for round in 0..3u8 {
            client.get_mut().1.refresh_traffic_keys().unwrap();
            client.write_all(&[round; 10]).await.unwrap();
            client.flush().await.unwrap();
            let mut got = [0u8; 10];
            server.read_exact(&mut got).await.unwrap();
            assert_eq!(got, [round; 10]);
            server.write_all(&[round + 100; 5]).await.unwrap();
            server.flush().await.unwrap();
            let mut back = [0u8; 5];
            client.read_exact(&mut back).await.unwrap();
            assert_eq!(back, [round + 100; 5]);
        }
    }

    #[tokio::test]
    async fn close_notify_ends_each_side_cleanly() {
        let (mut server, mut client) = connected(&[&rustls::version::TLS13]).await;
        server.write_all(b"last").await.unwrap();
        server.shutdown().await.unwrap();
        let mut all = Vec::new();
        client.read_to_end(&mut all).await.unwrap();
        assert_eq!(all, b"last");
        assert!(server.write_all(b"more").await.is_err());

        let (mut server, mut client) = connected(&[&rustls::version::TLS13]).await;
        client.write_all(b"bye").await.unwrap();
        client.shutdown().await.unwrap();
        let mut all = Vec::new();
        server.read_to_end(&mut all).await.unwrap();
        assert_eq!(all, b"bye");
    }

    #[tokio::test]
    async fn a_client_that_is_not_tls_fails_the_handshake() {
        let (server_config, _) = configs(&[&rustls::version::TLS13]);
        let (mut client, server_io) = tokio::io::duplex(1024);
        client
            .write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
            .await
            .unwrap();
        let error = TlsStream::accept(server_io, server_config)
            .await
            .unwrap_err();
        assert!(
            error
                .get_ref()
                .and_then(|e| e.downcast_ref::<rustls::Error>())
                .is_some(),
            "{error:?}"
        );
        drop(client);
    }

    #[tokio::test]
    async fn a_refused_client_is_told_why_by_an_alert() {
        let (server_config, _) = configs(&[&rustls::version::TLS13]);
        let (_, tls12_only) = configs(&[&rustls::version::TLS12]);
        let (client_io, server_io) = tokio::io::duplex(8 * 1024);
        let name = ServerName::try_from("localhost").unwrap();
        let (server, client) = tokio::join!(
            TlsStream::accept(server_io, server_config),
            tls12_only.connect(name, client_io)
        );
        assert!(server.is_err());
        let error = client.unwrap_err();
        let alert = error
            .get_ref()
            .and_then(|e| e.downcast_ref::<rustls::Error>());
        assert!(
            matches!(alert, Some(rustls::Error::AlertReceived(_))),
            "{error:?}"
        );
    }
}
