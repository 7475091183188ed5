//! The Redis backend against a real Redis: the conformance suite, several hubs on one channel, the
//! sending-application filter, and a broker restart under running hubs.
#![cfg(feature = "redis")]
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::brokers::{self, Broker};
use common::unique;
use sse_fanout::FanoutBackend;
use sse_fanout::redis::{RedisBackend, RedisConfig};

use common::backends::redis::{connect, forget, raw};

common::fanout::broker_suite!(Broker::Redis);
common::fanout::restart_suite!(Broker::Redis, Duration::from_secs(5));

#[tokio::test]
async fn bad_urls_are_typed_errors() {
    let err = RedisBackend::connect(RedisConfig::new("http://nope", "c"))
        .await
        .unwrap_err();
    assert!(
        matches!(err, sse_fanout::BackendError::Config { .. }),
        "{err}"
    );
    // Nothing listens on port 1.
    let err = RedisBackend::connect(RedisConfig::new("redis://127.0.0.1:1", "c"))
        .await
        .unwrap_err();
    assert!(err.is_temporary(), "{err}");
}

/// A user and password in the URL: an ACL user made for this test, removed afterwards.
#[tokio::test]
async fn a_password_in_the_url_works() {
    let Some(url) = brokers::url(Broker::Redis).await else {
        return;
    };
    let client = redis::Client::open(url.as_str()).unwrap();
    let mut admin = client.get_multiplexed_async_connection().await.unwrap();
    let user = unique("sse-user");
    let _: () = redis::cmd("ACL")
        .arg(
            &[
                "SETUSER",
                user.as_str(),
                "on",
                ">s3cret",
                "~*",
                "&*",
                "+@all",
            ][..],
        )
        .query_async(&mut admin)
        .await
        .unwrap();
    let host = url.split("://").nth(1).unwrap();
    let authed = format!("redis://{user}:s3cret@{host}");
    let channel = unique("password");
    let backend = RedisBackend::connect(RedisConfig::new(authed.as_str(), channel.as_str()))
        .await
        .unwrap();
    let mut stream = backend.subscribe().await.unwrap();
    backend.publish(Bytes::from_static(b"hello")).await.unwrap();
    let got = sse_core::testkit::next_within(&mut stream, Duration::from_secs(5)).await;
    assert_eq!(got.as_deref(), Some(&b"hello"[..]));
    let wrong = format!("redis://{user}:wrong@{host}");
    assert!(
        RedisBackend::connect(RedisConfig::new(wrong.as_str(), channel.as_str()))
            .await
            .is_err()
    );
    let _: () = redis::cmd("ACL")
        .arg(&["DELUSER", user.as_str()][..])
        .query_async(&mut admin)
        .await
        .unwrap();
}

/// The subscription's connection is killed and cannot come back for a while (its ACL user is
/// switched off); events published meanwhile are in the history, and the hub's subscription
/// reads them from there once it is back: the client misses nothing. Without history they
/// would never reach that instance.
#[tokio::test]
async fn a_lost_subscription_catches_up_from_the_history() {
    let Some(url) = brokers::url(Broker::Redis).await else {
        return;
    };
    let client = redis::Client::open(url.as_str()).unwrap();
    let admin = client.get_multiplexed_async_connection().await.unwrap();
    let user = unique("sse-sub");
    let acl = |args: Vec<String>| {
        let mut admin = admin.clone();
        async move {
            let _: () = redis::cmd("ACL")
                .arg(args)
                .query_async(&mut admin)
                .await
                .unwrap();
        }
    };
    let setuser = |state: &str| {
        ["SETUSER", &user, state, ">s3cret", "~*", "&*", "+@all"]
            .map(str::to_owned)
            .to_vec()
    };
    acl(setuser("on")).await;
    let host = url.split("://").nth(1).unwrap();
    let channel = unique("catch-up");
    let _forget = common::backends::Forget::new(&url, &channel, forget);
    let subscriber = RedisBackend::connect(RedisConfig::new(
        format!("redis://{user}:s3cret@{host}"),
        channel.as_str(),
    ))
    .await
    .unwrap();
    let server = common::TestServer::start(Arc::new(subscriber), |b| b.app_name("catch-up")).await;
    let mut stream = server.stream("eventName=e&sessionId=s1").await;
    server.wait_for_streams(1).await;
    let publisher = sse_fanout::Hub::builder(
        RedisBackend::connect(RedisConfig::new(url.as_str(), channel.as_str()))
            .await
            .unwrap(),
    )
    .app_name("catch-up")
    .start()
    .await
    .unwrap();
    let publish = |n: u32| {
        publisher.publish(sse_fanout::SendSseEvent::new("e", serde_json::json!(n)).to_session("s1"))
    };
    publish(0).await.unwrap();
    assert_eq!(stream.next().await.data, "0");

    acl(setuser("off")).await;
    let _: () = redis::cmd("CLIENT")
        .arg(&["KILL", "USER", user.as_str()][..])
        .query_async(&mut admin.clone())
        .await
        .unwrap();
    for n in 1..=5 {
        publish(n).await.unwrap();
    }
    // Down for a while: the subscription retries against a user that is switched off.
    tokio::time::sleep(Duration::from_millis(500)).await;
    acl(setuser("on")).await;
    for n in 1..=5 {
        assert_eq!(
            stream.next().await.data,
            n.to_string(),
            "event {n} after the loss"
        );
    }
    publish(6).await.unwrap();
    assert_eq!(stream.next().await.data, "6", "live again");
    assert!(server.hub.backend_reconnects() >= 1);
    acl(vec!["DELUSER".to_owned(), user.clone()]).await;
}

/// The connection to the broker is cut and comes back; what was published meanwhile is read from
/// the history (see `common::fanout::a_cut_connection_catches_up_from_the_history`).
#[tokio::test]
async fn a_cut_connection_catches_up_from_the_history() {
    common::fanout::cut_connection_on(Broker::Redis, connect, forget).await;
}

/// A publisher writing garbage to the channel: every envelope is counted as malformed, but the
/// hub logs at most one line a second about it, not one per envelope.
#[tokio::test]
async fn malformed_envelopes_are_counted_each_and_logged_at_a_bounded_rate() {
    let Some(url) = brokers::url(Broker::Redis).await else {
        return;
    };
    let channel = unique("garbage");
    let _forget = common::backends::Forget::new(&url, &channel, forget);
    let port = common::cluster::free_port();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_sse-fanout"))
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .args(common::backends::hub_args("redis", &url, &channel, &[]))
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    common::cluster::wait_healthy(port).await;
    let client = ::redis::Client::open(url.as_str()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    for n in 0..2000 {
        let _: i64 = ::redis::cmd("PUBLISH")
            .arg(&channel)
            .arg(format!("not an envelope {n}"))
            .query_async(&mut conn)
            .await
            .unwrap();
    }
    let metrics = format!("http://127.0.0.1:{port}/metrics");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let text = common::get_text(&metrics).await;
        let malformed = text
            .lines()
            .find(|l| l.starts_with("sse_events_dropped_total{") && l.contains("malformed"))
            .and_then(|l| l.rsplit(' ').next()?.parse::<u64>().ok());
        if malformed == Some(2000) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "counted {malformed:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let mut log = String::new();
    std::io::Read::read_to_string(child.stdout.as_mut().unwrap(), &mut log).unwrap();
    child.wait().unwrap();
    let lines = log.matches("skipping a malformed envelope").count();
    // 2000 envelopes arrive within a second or two: one line per second they span, at most.
    assert!(
        (1..=4).contains(&lines),
        "{lines} lines for 2000 envelopes:\n{log}"
    );
}
