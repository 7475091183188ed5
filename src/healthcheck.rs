//! `sse-fanout healthcheck`: asks a running hub's `/healthz` and exits 0 when it answers `200`.
//! A container's `HEALTHCHECK` runs it, so the image needs no curl. When the hub serves TLS, so
//! does the check; it does not verify the certificate (it asks its own process on loopback,
//! whose liveness is the question, not its identity).

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

/// How long the whole check may take.
const TIMEOUT: Duration = Duration::from_secs(3);

/// Asks `http://{listen}{path}` (a wildcard listen address is asked on loopback); prints what
/// went wrong and fails unless the answer is `200`.
pub(crate) fn run(listen: SocketAddr, path: &str, tls: bool) -> ExitCode {
    match check(loopback_for(listen), path, tls) {
        Ok(()) => ExitCode::SUCCESS,
        Err(problem) => {
            eprintln!("sse-fanout healthcheck: {problem}");
            ExitCode::FAILURE
        }
    }
}

fn loopback_for(mut listen: SocketAddr) -> SocketAddr {
    if listen.ip().is_unspecified() {
        listen.set_ip(match listen.ip() {
            IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::LOCALHOST),
        });
    }
    listen
}

fn check(address: SocketAddr, path: &str, tls: bool) -> Result<(), String> {
    let socket = TcpStream::connect_timeout(&address, TIMEOUT)
        .map_err(|e| format!("cannot connect to {address}: {e}"))?;
    socket
        .set_read_timeout(Some(TIMEOUT))
        .and_then(|()| socket.set_write_timeout(Some(TIMEOUT)))
        .map_err(|e| e.to_string())?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n");
    let answer = if tls {
        let session = rustls::ClientConnection::new(
            unverified_client()?,
            "localhost".try_into().map_err(|_| "bad name")?,
        )
        .map_err(|e| format!("TLS: {e}"))?;
        ask(rustls::StreamOwned::new(session, socket), &request, address)?
    } else {
        ask(socket, &request, address)?
    };
    let answer = String::from_utf8_lossy(&answer);
    let status_line = answer.lines().next().unwrap_or("");
    if status_line.split(' ').nth(1) == Some("200") {
        Ok(())
    } else {
        let body = answer.split("\r\n\r\n").nth(1).unwrap_or("").trim();
        Err(format!("{path} answered `{status_line}` {body}"))
    }
}

/// Sends `request` and reads the answer until the server closes (a TLS server that closes
/// without `close_notify` still gave its answer).
fn ask(mut io: impl Read + Write, request: &str, address: SocketAddr) -> Result<Vec<u8>, String> {
    io.write_all(request.as_bytes())
        .and_then(|()| io.flush())
        .map_err(|e| format!("cannot ask {address}: {e}"))?;
    let mut answer = Vec::new();
    match io.take(64 * 1024).read_to_end(&mut answer) {
        Ok(_) => Ok(answer),
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof && !answer.is_empty() => Ok(answer),
        Err(e) => Err(format!("no answer from {address}: {e}")),
    }
}

/// A TLS client that takes any certificate (see the module docs) but checks the handshake's
/// signatures as usual.
fn unverified_client() -> Result<Arc<rustls::ClientConfig>, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider)))
        .with_no_client_auth();
    Ok(Arc::new(config))
}

#[derive(Debug)]
struct AnyCertificate(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &rustls::pki_types::CertificateDer<'_>,
        _intermediates: &[rustls::pki_types::CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn wildcard_addresses_are_asked_on_loopback() {
        let v4: SocketAddr = "0.0.0.0:8080".parse().unwrap();
        assert_eq!(loopback_for(v4), "127.0.0.1:8080".parse().unwrap());
        let v6: SocketAddr = "[::]:8080".parse().unwrap();
        assert_eq!(loopback_for(v6), "[::1]:8080".parse().unwrap());
        let given: SocketAddr = "10.1.2.3:80".parse().unwrap();
        assert_eq!(loopback_for(given), given);
    }

    #[test]
    fn nothing_listening_is_a_failure_that_says_where() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let address = listener.local_addr().unwrap();
        drop(listener);
        let problem = check(address, "/healthz", false).unwrap_err();
        assert!(problem.contains(&address.to_string()), "{problem}");
    }
}
