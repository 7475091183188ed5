//! The Redis backend under running hubs, beyond the conformance suite its crate runs: typed URL
//! errors, an ACL password, a broker restart (a Redis of the test's own), a lost subscription and
//! a cut connection caught up from the history, malformed envelopes counted, and a Redis Cluster
//! of the test's own passing the conformance suite.
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

use common::backends::redis::{connect, forget};

common::fanout::restart_suite!(Broker::Redis, Duration::from_secs(5));

/// On a Redis Cluster (three masters, three replicas, named by all six nodes) the backend passes
/// the whole conformance suite: sharded pub/sub, the history in the channel's slot, routes.
#[tokio::test]
async fn a_redis_cluster_passes_the_conformance_suite() {
    let Some(cluster) = common::redis_cluster::OwnRedisCluster::start().await else {
        return;
    };
    let config = RedisConfig::new(cluster.url(), unique("cluster-conformance"));
    let backend = RedisBackend::connect(config.clone()).await.unwrap();
    assert!(backend.is_cluster());
    sse_core::testkit::run_all(&move || {
        let config = config.clone();
        async move { Arc::new(RedisBackend::connect(config).await.unwrap()) as Arc<dyn FanoutBackend> }
    })
    .await;
}

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

/// On a Redis Cluster the channel's slot is moved to another master, then the master holding it
/// is killed (its replica takes over), under a hub with a client. Each time the subscription
/// follows (Redis tells it of the move with an unsolicited `sunsubscribe`; the killed master's
/// connection closes), the hub's health goes down and comes back, and every event published
/// before and after reaches the client once, in order. Without following the move, the
/// subscription would stay on the old master, which no longer gets the slot's publishes.
#[tokio::test]
async fn on_a_redis_cluster_a_moved_slot_and_a_lost_master_lose_nothing() {
    let Some((mut cluster, _, config)) = cluster_waiting_for_a_replica("cluster-moves").await
    else {
        return;
    };
    let subscriber = RedisBackend::connect(config.clone()).await.unwrap();
    let server = common::TestServer::start(Arc::new(subscriber), |b| b.app_name("moves")).await;
    let mut stream = server.stream("eventName=e&sessionId=s1").await;
    server.wait_for_streams(1).await;
    let publisher = sse_fanout::Hub::builder(RedisBackend::connect(config).await.unwrap())
        .app_name("moves")
        .start()
        .await
        .unwrap();
    let publish = |n: u32| publish_answered(&publisher, "s1", n);
    publish(0).await;
    assert_eq!(stream.next().await.data, "0");

    cluster.migrate(Box::pin(async {})).await;
    for n in 1..=3 {
        publish(n).await;
    }
    for n in 1..=3 {
        assert_eq!(
            stream.next().await.data,
            n.to_string(),
            "after the slot moved"
        );
    }

    assert_eq!(server.health().await.0, 200);
    let health = common::HealthWatch::start(&server);
    cluster.fail_over(Box::pin(async {})).await;
    for n in 4..=6 {
        publish(n).await;
    }
    for n in 4..=6 {
        assert_eq!(
            stream.next().await.data,
            n.to_string(),
            "after the failover"
        );
    }
    health.went_down_and_came_back().await;
    assert!(server.hub.backend_reconnects() >= 2);
}

/// A Redis Cluster of the test's own, a channel named after `name` (the faults aimed at its
/// slot), and a config for it whose publishes wait for a replica.
async fn cluster_waiting_for_a_replica(
    name: &str,
) -> Option<(common::redis_cluster::OwnRedisCluster, String, RedisConfig)> {
    let mut cluster = common::redis_cluster::OwnRedisCluster::start().await?;
    let channel = unique(name);
    cluster.focus(&channel);
    let config =
        RedisConfig::new(cluster.url(), channel.as_str()).wait_replicas(1, Duration::from_secs(1));
    Some((cluster, channel, config))
}

/// A publish to `session`'s event `n`, tried again until one is answered: a publish may fail
/// while the cluster changes (it then did not go out, or goes out and is seen once).
async fn publish_answered(publisher: &sse_fanout::Hub, session: &str, n: u32) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let event = sse_fanout::SendSseEvent::new("e", serde_json::json!(n));
        match publisher.publish(event.to_session(session)).await {
            Ok(_) => return,
            Err(error) => {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "publish {n}: {error}"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// In session routing on a Redis Cluster the routes are spread over every master (each route
/// partition has its own slot), so routed traffic is not all carried by the channel's master.
/// A master holding route partitions and not the channel is killed (its replica takes over),
/// then one partition's slot is moved to another master, under a hub with a stream of a
/// session on each master: each time the subscription follows (the health goes down and comes
/// back after the kill), and every event reaches its client once, in order. Without the
/// partitions every route would be on the channel's master; without following a partition's
/// master its sessions would receive nothing after the fault.
#[tokio::test]
async fn on_a_redis_cluster_routes_spread_over_every_master_and_follow_theirs() {
    let Some((mut cluster, channel, config)) =
        cluster_waiting_for_a_replica("cluster-routes").await
    else {
        return;
    };
    let backend = RedisBackend::connect(config.clone()).await.unwrap();
    // A session on each master, the first of them on one that does not hold the channel.
    let channel_master = cluster.master_port_of(&channel);
    let mut by_master = std::collections::BTreeMap::new();
    for i in 0..64 {
        let session = format!("u{i}");
        let master = cluster.master_port_of(&backend.route_channel(&session));
        by_master.entry(master).or_insert(session);
    }
    assert_eq!(by_master.len(), 3, "routes on every master: {by_master:?}");
    let mut sessions: Vec<String> = by_master.values().cloned().collect();
    sessions.sort_by_key(|s| cluster.master_port_of(&backend.route_channel(s)) == channel_master);
    cluster.focus(&backend.route_channel(&sessions[0]));

    let routed =
        |b: sse_fanout::HubBuilder| b.app_name("routes").routing(sse_fanout::Routing::session());
    let server = common::TestServer::start(Arc::new(backend), routed).await;
    let mut streams = Vec::new();
    for session in &sessions {
        streams.push(
            server
                .stream(&format!("eventName=e&sessionId={session}"))
                .await,
        );
    }
    server.wait_for_streams(sessions.len()).await;
    let publisher = routed(sse_fanout::Hub::builder(
        RedisBackend::connect(config).await.unwrap(),
    ))
    .start()
    .await
    .unwrap();
    let round = |numbers: std::ops::RangeInclusive<u32>| {
        let (publisher, sessions) = (&publisher, &sessions);
        async move {
            for n in numbers {
                for session in sessions {
                    publish_answered(publisher, session, n).await;
                }
            }
        }
    };
    async fn expect(
        streams: &mut [common::SseClient],
        numbers: std::ops::RangeInclusive<u32>,
        when: &str,
    ) {
        for stream in streams.iter_mut() {
            for n in numbers.clone() {
                assert_eq!(stream.next().await.data, n.to_string(), "{when}");
            }
        }
    }
    round(0..=0).await;
    expect(&mut streams, 0..=0, "before any fault").await;

    let health = common::HealthWatch::start(&server);
    cluster.fail_over(Box::pin(async {})).await;
    round(1..=3).await;
    expect(
        &mut streams,
        1..=3,
        "after a route partition's master was killed",
    )
    .await;
    health.went_down_and_came_back().await;

    cluster.migrate(Box::pin(async {})).await;
    round(4..=6).await;
    expect(&mut streams, 4..=6, "after a route partition's slot moved").await;
    for stream in &mut streams {
        assert!(
            stream
                .next_within(Duration::from_millis(300))
                .await
                .is_none(),
            "nothing twice"
        );
    }
}

/// While a slot moves between masters, the cluster client sends a publish whose history key has
/// already moved to the new master (`-ASK`), and the script runs there; a replica wait routed by
/// the slot map would ask the old master, which has all of this connection's writes replicated,
/// and answer at once. So such a publish fails (whether a replica has it is not known), and
/// publishing works again once the slot has moved.
#[tokio::test]
async fn on_a_redis_cluster_a_publish_where_the_slot_is_moving_is_not_called_replicated() {
    let Some((mut cluster, _, config)) = cluster_waiting_for_a_replica("cluster-ask").await else {
        return;
    };
    let publisher = sse_fanout::Hub::builder(RedisBackend::connect(config).await.unwrap())
        .app_name("ask")
        .start()
        .await
        .unwrap();
    let publish = |n: u32| {
        let publisher = publisher.clone();
        async move {
            publisher
                .publish(sse_fanout::SendSseEvent::new("e", serde_json::json!(n)))
                .await
        }
    };
    publish(0).await.unwrap();
    let moving = cluster.begin_migration();
    let error = publish(1).await.unwrap_err().to_string();
    assert!(error.contains("where its slot is moving"), "{error}");
    cluster.finish_migration(&moving);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while let Err(error) = publish(2).await {
        assert!(tokio::time::Instant::now() < deadline, "{error}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A publish to a Redis that stops answering (its process paused, as a frozen VM is) fails after
/// the publish timeout; when the server runs again it finds the script past its deadline and
/// refuses it. Without the deadline the server would run the queued publish when it came back:
/// an event answered as failed would go out after all, and after the publisher's next one.
#[tokio::test]
async fn a_publish_answered_as_failed_never_goes_out_later() {
    let Some(own) = common::own::OwnBroker::start(Broker::Redis).await else {
        return;
    };
    let mut config = RedisConfig::new(own.url(), unique("deadline"));
    config.publish_timeout = Duration::from_secs(1);
    let backend = RedisBackend::connect(config).await.unwrap();
    let mut subscription = backend.subscribe().await.unwrap();
    // The server knows the script from now on (else the late publish would be refused anyway).
    backend.publish(Bytes::from_static(b"first")).await.unwrap();
    let first = sse_core::testkit::next_within(&mut subscription, Duration::from_secs(5)).await;
    assert_eq!(first.unwrap(), "first");
    own.signal("STOP");
    let started = tokio::time::Instant::now();
    let late = backend.publish(Bytes::from_static(b"late")).await;
    let took = started.elapsed();
    own.signal("CONT");
    assert!(late.is_err(), "a publish to a paused server succeeded");
    assert!(
        took < Duration::from_secs(3),
        "the publish failed after {took:?}"
    );
    backend.publish(Bytes::from_static(b"next")).await.unwrap();
    let after = loop {
        match sse_core::testkit::next_item_within(&mut subscription, Duration::from_secs(5)).await {
            Some(sse_fanout::Received::Envelope(bytes)) => break bytes,
            Some(_) => continue,
            None => panic!("nothing arrived"),
        }
    };
    assert_eq!(after, "next", "the failed publish went out after all");
    let mut history = backend
        .history()
        .unwrap()
        .read_since(std::time::UNIX_EPOCH)
        .await
        .unwrap();
    while let Some(envelope) = futures_util::StreamExt::next(&mut history).await {
        assert_ne!(
            envelope.unwrap(),
            "late",
            "the failed publish is in the history"
        );
    }
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
