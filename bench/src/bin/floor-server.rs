//! The floor: the least an SSE server can do on this machine, to tell what the kernel and tokio
//! cost from what a framework adds. Raw tokio sockets, no HTTP library, no sessions, no filtering,
//! no heartbeat: every stream gets every event, preformatted once as an HTTP/1.1 chunk.
//!
//! ```sh
//! cargo run --release -p sse-fanout-bench --bin floor-server -- --listen 127.0.0.1:8094
//! ```
//!
//! `GET` of any path opens a stream; `POST` with a JSON body `{"payload": ...}` (any other field
//! is ignored) sends `data: <payload>` to every stream and answers `202` on a keep-alive connection.
//! Not a server to use: it checks nothing.

use bytes::{Bytes, BytesMut};
use clap::Parser;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::broadcast;

#[derive(Debug, Parser)]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8094")]
    listen: String,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    sse_fanout_bench::sys::raise_fd_limit();
    let listener = TcpListener::bind(&args.listen).await?;
    eprintln!("floor-server listening on {}", listener.local_addr()?);
    let (tx, _) = broadcast::channel::<Bytes>(1024);
    loop {
        let (socket, _) = listener.accept().await?;
        let _ = socket.set_nodelay(true);
        tokio::spawn(connection(socket, tx.clone()));
    }
}

/// Reads one request head (and a body of `content-length` bytes); `None` when the client left.
async fn request(socket: &mut TcpStream, buf: &mut BytesMut) -> Option<(bool, Bytes)> {
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = buf.split_to(end + 4);
            let head = String::from_utf8_lossy(&head).to_ascii_lowercase();
            let length = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse::<usize>().ok())
                .unwrap_or(0);
            while buf.len() < length {
                if socket.read_buf(buf).await.ok()? == 0 {
                    return None;
                }
            }
            return Some((head.starts_with("get "), buf.split_to(length).freeze()));
        }
        if socket.read_buf(buf).await.ok()? == 0 {
            return None;
        }
    }
}

async fn connection(mut socket: TcpStream, tx: broadcast::Sender<Bytes>) {
    let mut buf = BytesMut::with_capacity(1024);
    while let Some((is_get, body)) = request(&mut socket, &mut buf).await {
        if is_get {
            drop(buf);
            return stream(socket, tx.subscribe()).await;
        }
        let payload = serde_json::from_slice::<serde_json::Value>(&body)
            .map(|v| v["payload"].to_string())
            .unwrap_or_default();
        let data = format!("data: {payload}\n\n");
        let chunk = format!("{:x}\r\n{data}\r\n", data.len());
        let _ = tx.send(Bytes::from(chunk));
        let answer = b"HTTP/1.1 202 Accepted\r\ncontent-length: 2\r\n\r\n{}";
        if socket.write_all(answer).await.is_err() {
            return;
        }
    }
}

async fn stream(mut socket: TcpStream, mut rx: broadcast::Receiver<Bytes>) {
    let head = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n5\r\n: ok\n\r\n";
    if socket.write_all(head).await.is_err() {
        return;
    }
    loop {
        tokio::select! {
            chunk = rx.recv() => match chunk {
                Ok(chunk) => {
                    if socket.write_all(&chunk).await.is_err() {
                        return;
                    }
                }
                Err(broadcast::error::RecvError::Lagged(_)) => {}
                Err(broadcast::error::RecvError::Closed) => return,
            },
            readable = socket.readable() => {
                if readable.is_err() {
                    return;
                }
                match socket.try_read(&mut [0; 64]) {
                    Ok(0) => return,
                    Err(e) if e.kind() != std::io::ErrorKind::WouldBlock => return,
                    _ => {}
                }
            }
        }
    }
}
