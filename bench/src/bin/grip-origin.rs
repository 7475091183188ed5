//! The GRIP origin behind Pushpin in the peer benchmark (`scripts/bench-peers.sh`,
//! `bench/peers/pushpin.conf`): the least an application does to have Pushpin hold event
//! streams. Every `GET` is answered at once with `Grip-Hold: stream` on the channels of its
//! `sessionId` query parameter and `all` (the broadcast channel), as the hub subscribes a stream
//! to its session and the broadcasts.
//!
//! ```sh
//! cargo run --release -p sse-fanout-bench --bin grip-origin -- --listen 127.0.0.1:8097
//! ```

use std::convert::Infallible;

use bytes::Bytes;
use clap::Parser;
use http_body_util::Full;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use sse_fanout_bench::peers::BROADCAST_CHANNEL;
use tokio::net::TcpListener;

#[derive(Debug, Parser)]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8097")]
    listen: String,
}

/// The GRIP instruction for a stream request: hold it on its session's channel and `all`.
fn hold(request: &Request<hyper::body::Incoming>) -> Response<Full<Bytes>> {
    let session = request
        .uri()
        .query()
        .unwrap_or("")
        .split('&')
        .find_map(|pair| pair.strip_prefix("sessionId="))
        .filter(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'));
    let channels = match session {
        Some(session) => format!("{session}, {BROADCAST_CHANNEL}"),
        None => BROADCAST_CHANNEL.to_owned(),
    };
    Response::builder()
        .header("content-type", "text/event-stream")
        .header("grip-hold", "stream")
        .header("grip-channel", channels)
        .body(Full::new(Bytes::from_static(b": ok\n\n")))
        .unwrap_or_default()
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    sse_fanout_bench::sys::raise_fd_limit();
    let listener = TcpListener::bind(&args.listen).await?;
    eprintln!("grip-origin listening on {}", listener.local_addr()?);
    loop {
        let (socket, _) = listener.accept().await?;
        let _ = socket.set_nodelay(true);
        tokio::spawn(async move {
            let service = service_fn(|request| async move { Ok::<_, Infallible>(hold(&request)) });
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(socket), service)
                .await;
        });
    }
}
