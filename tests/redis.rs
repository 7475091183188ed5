//! The Redis backend against a real Redis: the conformance suite, several hubs on one channel, the
//! sending-application filter, and a broker restart under running hubs.
#![cfg(feature = "redis")]
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::brokers::{self, Broker};
use common::unique;
use sse_fanout::FanoutBackend;
use sse_fanout::redis::RedisBackend;

use common::backends::redis::{connect, forget, raw};

common::fanout::broker_suite!(Broker::Redis);
common::fanout::restart_suite!(Broker::Redis, Duration::from_secs(5));

#[tokio::test]
async fn bad_urls_are_typed_errors() {
    let err = RedisBackend::connect("http://nope", "c").await.unwrap_err();
    assert!(
        matches!(err, sse_fanout::BackendError::Config { .. }),
        "{err}"
    );
    // Nothing listens on port 1.
    let err = RedisBackend::connect("redis://127.0.0.1:1", "c")
        .await
        .unwrap_err();
    assert!(err.is_temporary(), "{err}");
}

/// A user and password in the URL: an ACL user made for this test, removed afterwards.
#[tokio::test]
async fn a_password_in_the_url_works() {
    let _shared = brokers::shared().await;
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
    let backend = RedisBackend::connect(&authed, &channel).await.unwrap();
    let mut stream = backend.subscribe().await.unwrap();
    backend.publish(Bytes::from_static(b"hello")).await.unwrap();
    let got = sse_core::testkit::next_within(&mut stream, Duration::from_secs(5)).await;
    assert_eq!(got.as_deref(), Some(&b"hello"[..]));
    let wrong = format!("redis://{user}:wrong@{host}");
    assert!(RedisBackend::connect(&wrong, &channel).await.is_err());
    let _: () = redis::cmd("ACL")
        .arg(&["DELUSER", user.as_str()][..])
        .query_async(&mut admin)
        .await
        .unwrap();
}
