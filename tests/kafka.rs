//! The Kafka backend against a real Kafka API (Nisshi on the project's machines), beyond the
//! conformance suite its crate runs: the missing-topic error, readiness, a broker restart under
//! running hubs (a broker of the test's own), a topic deleted under a running hub, an unreachable
//! broker, and the topic's size limit.
#![cfg(feature = "kafka")]
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::brokers::{self, Broker};
use common::fanout;
use common::{TestServer, unique};
use serde_json::json;
use sse_fanout::BackendError;
use sse_fanout::kafka::{KafkaBackend, KafkaConfig};

use common::backends::kafka::{config, connect};

#[tokio::test]
async fn a_missing_topic_is_a_clear_error_unless_creation_is_enabled() {
    let Some(brokers) = brokers::url(Broker::Kafka).await else {
        return;
    };
    let topic = unique("missing");
    let err = KafkaBackend::connect(KafkaConfig::new(&brokers, &topic, "sse-test"))
        .await
        .unwrap_err();
    assert!(matches!(err, BackendError::Config { .. }), "{err}");
    assert!(err.to_string().contains(&topic), "{err}");
    KafkaBackend::connect(config(&brokers, &topic))
        .await
        .unwrap();
    KafkaBackend::connect(KafkaConfig::new(&brokers, &topic, "sse-test"))
        .await
        .unwrap();
}

/// An event published over HTTP the moment a freshly started hub is ready reaches its streams.
#[tokio::test]
async fn an_event_published_the_moment_a_hub_is_ready_is_delivered() {
    let Some(brokers) = brokers::url(Broker::Kafka).await else {
        return;
    };
    let topic = unique("ready");
    let publisher = TestServer::start(connect(&brokers, &topic)().await, |b| b).await;
    for round in 0..3 {
        let fresh = TestServer::start(connect(&brokers, &topic)().await, |b| b).await;
        let mut stream = fresh.stream("eventName=e").await;
        fresh.wait_for_streams(1).await;
        let (status, _) = publisher
            .publish(json!({"eventName": "e", "payload": round}))
            .await;
        assert_eq!(status, 202);
        assert_eq!(stream.next().await.data, round.to_string());
    }
}

/// The broker, a Nisshi of the test's own (topics in PostgreSQL, kept across a restart as Kafka
/// keeps them on disk), is killed and started again under two running hubs: publishing fails
/// fast meanwhile, and delivery resumes once it is back, with no crash.
#[tokio::test]
async fn delivery_resumes_after_a_broker_restart() {
    let Some(mut own) = common::own::OwnBroker::start(Broker::Kafka).await else {
        return;
    };
    let connect = connect(&own.url(), &unique("restart"));
    fanout::delivery_resumes_after_a_broker_restart(&mut own, connect, Duration::from_secs(30))
        .await;
    // The hubs were shut down while the broker was up, and their consumers closed then. Nothing
    // is left to close against a broker that is gone: librdkafka would block this (the test's
    // only) thread for its socket timeouts, here and when the test's runtime ends.
    own.stop().await;
    let started = std::time::Instant::now();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "something closed against the stopped broker for {:?}",
        started.elapsed()
    );
}

/// The topic is deleted under a running hub (and created again): the hub reports itself down,
/// never crashes, and delivers again once the topic is back.
#[tokio::test]
async fn a_topic_deleted_under_a_running_hub_is_survived() {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    use rdkafka::client::DefaultClientContext;
    let Some(brokers) = brokers::url(Broker::Kafka).await else {
        return;
    };
    let topic = unique("deleted");
    let server =
        TestServer::start(connect(&brokers, &topic)().await, |b| b.app_name("orders")).await;
    let mut stream = server.stream("eventName=e&sessionId=s1").await;
    server.wait_for_streams(1).await;
    let publish = |payload: &'static str| {
        server.publish(json!({"eventName": "e", "sessionId": "s1", "payload": payload}))
    };
    assert_eq!(publish("before").await.0, 202);
    assert_eq!(stream.next().await.data, "before");

    let admin: AdminClient<DefaultClientContext> = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .create()
        .unwrap();
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(5)));
    for result in admin.delete_topics(&[&topic], &options).await.unwrap() {
        result.unwrap();
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while server.health().await.0 != 503 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "health still up with the topic gone"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let again = NewTopic::new(&topic, 1, TopicReplication::Fixed(1));
    for result in admin.create_topics([&again], &options).await.unwrap() {
        result.unwrap();
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let (status, _) = publish("after").await;
        if status == 202
            && server.health().await.0 == 200
            && let Some(event) = stream.next_within(Duration::from_millis(500)).await
        {
            assert_eq!(event.data, "after");
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no delivery after the topic came back"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn an_unreachable_broker_is_a_typed_error_within_the_timeout() {
    let started = std::time::Instant::now();
    let mut config = KafkaConfig::new("127.0.0.1:1", "t", "sse-test");
    config.timeout = Duration::from_secs(2);
    let err = KafkaBackend::connect(config).await.unwrap_err();
    assert!(err.is_temporary(), "{err}");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
}

/// An event over the topic's limit (Kafka counts the whole record batch against the topic's
/// `max.message.bytes`) is answered `413` before it is sent, naming the limit and how to raise it.
#[tokio::test]
async fn an_event_over_the_topics_limit_is_413_naming_the_limit() {
    let Some(brokers) = brokers::url(Broker::Kafka).await else {
        return;
    };
    let topic = unique("large");
    let server = TestServer::start_with(
        connect(&brokers, &topic)().await,
        |b| b,
        |r| {
            r.resolver(sse_fanout::DevSessions)
                .config(common::router_config(|c| c.max_publish_body = 4 << 20))
        },
    )
    .await;
    let (status, body) = server
        .publish(json!({"eventName": "e", "payload": "x".repeat(1_100_000)}))
        .await;
    assert_eq!(status, 413, "{body}");
    let message = body["message"].as_str().unwrap();
    assert!(message.contains("max.message.bytes"), "{message}");
    assert!(message.contains("(limit: 1047564 bytes"), "{message}");
    assert_eq!(
        server
            .publish(json!({"eventName": "e", "payload": "x".repeat(100_000)}))
            .await
            .0,
        202
    );
}
