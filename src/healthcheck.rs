//! `sse-fanout healthcheck`: asks a running hub's `/healthz` and exits 0 when it answers `200`.
//! A container's `HEALTHCHECK` runs it, so the image needs no curl.

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream};
use std::process::ExitCode;
use std::time::Duration;

/// How long the whole check may take.
const TIMEOUT: Duration = Duration::from_secs(3);

/// Asks `http://{listen}{path}` (a wildcard listen address is asked on loopback); prints what
/// went wrong and fails unless the answer is `200`.
pub(crate) fn run(listen: SocketAddr, path: &str) -> ExitCode {
    match check(loopback_for(listen), path) {
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

fn check(address: SocketAddr, path: &str) -> Result<(), String> {
    let mut socket = TcpStream::connect_timeout(&address, TIMEOUT)
        .map_err(|e| format!("cannot connect to {address}: {e}"))?;
    socket
        .set_read_timeout(Some(TIMEOUT))
        .and_then(|()| socket.set_write_timeout(Some(TIMEOUT)))
        .map_err(|e| e.to_string())?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n");
    socket
        .write_all(request.as_bytes())
        .map_err(|e| format!("cannot ask {address}: {e}"))?;
    let mut answer = Vec::new();
    socket
        .take(64 * 1024)
        .read_to_end(&mut answer)
        .map_err(|e| format!("no answer from {address}: {e}"))?;
    let answer = String::from_utf8_lossy(&answer);
    let status_line = answer.lines().next().unwrap_or("");
    if status_line.split(' ').nth(1) == Some("200") {
        Ok(())
    } else {
        let body = answer.split("\r\n\r\n").nth(1).unwrap_or("").trim();
        Err(format!("{path} answered `{status_line}` {body}"))
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
        let problem = check(address, "/healthz").unwrap_err();
        assert!(problem.contains(&address.to_string()), "{problem}");
    }
}
