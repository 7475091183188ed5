//! The RabbitMQ backend under running hubs, beyond the conformance suite its crate runs: one queue
//! per instance that goes away with it, typed URL errors, a broker restart (a node of the test's
//! own) and a cut connection caught up from the history.
#![cfg(feature = "rabbit")]
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::brokers::{self, Broker};
use common::unique;
use sse_fanout::rabbit::{Delivery, RabbitBackend, RabbitConfig};

use common::backends::rabbit::{connect, forget};

common::fanout::restart_suite!(Broker::Rabbit, Duration::from_secs(10));

/// Whether `queue` exists on the broker at `url`: a passive declare, answered by any broker (the
/// machine's or a container's). An instance's queue is exclusive to its connection, so another
/// connection is told it is locked, which says it exists.
async fn exists(url: &str, queue: &str) -> bool {
    use lapin::options::QueueDeclareOptions;
    use lapin::types::FieldTable;
    use lapin::{Connection, ConnectionProperties};
    let conn = Connection::connect(url, ConnectionProperties::default())
        .await
        .unwrap();
    let channel = conn.create_channel().await.unwrap();
    let passive = QueueDeclareOptions {
        passive: true,
        ..QueueDeclareOptions::default()
    };
    let declared = channel
        .queue_declare(queue.into(), passive, FieldTable::default())
        .await;
    let _ = conn.close(200, "bye".into()).await;
    match declared {
        Ok(_) => true,
        Err(error) if error.to_string().contains("RESOURCE_LOCKED") => true,
        Err(error) if error.to_string().contains("NOT_FOUND") => false,
        Err(error) => panic!("passive declare of {queue}: {error}"),
    }
}

#[tokio::test]
async fn in_queue_delivery_each_instance_has_its_own_queue_which_goes_away_with_it() {
    let Some(url) = brokers::url(Broker::Rabbit).await else {
        return;
    };
    let exchange = unique("queues");
    let _forget = common::backends::Forget::new(&url, &exchange, forget);
    let (qa, qb) = (unique("orders.a"), unique("orders.b"));
    let hub = |queue: String| {
        let (url, exchange) = (url.clone(), exchange.clone());
        async move {
            let config = RabbitConfig::new(url, exchange, queue).delivery(Delivery::Queue);
            let backend = RabbitBackend::connect(config).await.unwrap();
            sse_fanout::Hub::builder(backend).start().await.unwrap()
        }
    };
    let a = hub(qa.clone()).await;
    let b = hub(qb.clone()).await;
    for q in [&qa, &qb] {
        assert!(exists(&url, q).await, "{q} exists while its instance runs");
    }
    a.shutdown().await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        if !exists(&url, &qa).await {
            assert!(exists(&url, &qb).await, "the other instance's queue stays");
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{qa} still there after shutdown"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    b.shutdown().await.unwrap();
}

#[tokio::test]
async fn bad_urls_are_typed_errors() {
    let config = |url| RabbitConfig::new(url, "x", "q");
    let err = RabbitBackend::connect(config("http://nope"))
        .await
        .unwrap_err();
    assert!(
        matches!(err, sse_fanout::BackendError::Config { .. }),
        "{err}"
    );
    let err = RabbitBackend::connect(config("amqp://127.0.0.1:1/%2f"))
        .await
        .unwrap_err();
    assert!(err.is_temporary(), "{err}");
}

/// The connection to the broker is cut and comes back; what was published meanwhile is read from
/// the history (see `common::fanout::a_cut_connection_catches_up_from_the_history`).
#[tokio::test]
async fn a_cut_connection_catches_up_from_the_history() {
    common::fanout::cut_connection_on(Broker::Rabbit, connect, forget).await;
}

/// The delivery probe on RabbitMQ queue delivery: the hub's connections go through a proxy that
/// stops forwarding without closing anything (they look alive while nothing arrives).
/// `/healthz` goes down and the probe fails; once the proxy forwards again the hub
/// subscribes again (its queue declared and consumed anew), the client gets what was published
/// meanwhile, from the history, and then live events, and health comes back.
#[tokio::test]
async fn a_silent_queue_subscription_turns_health_down_and_recovers() {
    let Some(url) = brokers::url(Broker::Rabbit).await else {
        return;
    };
    let upstream = url
        .split('@')
        .nth(1)
        .and_then(|rest| rest.split('/').next())
        .unwrap()
        .to_owned();
    let proxy = common::proxy::Proxy::start(upstream.clone()).await;
    let exchange = unique("silent");
    let _forget = common::backends::Forget::new(&url, &exchange, forget);
    let config = |url: String| {
        RabbitConfig::new(url, exchange.as_str(), unique("sse-test-queue"))
            .delivery(Delivery::Queue)
    };
    let through_proxy = RabbitBackend::connect(config(
        url.replace(&upstream, &format!("127.0.0.1:{}", proxy.port())),
    ))
    .await
    .unwrap();
    let direct = RabbitBackend::connect(config(url.clone())).await.unwrap();
    // Down for the probe, or first for the backend's own check (its publishing connection goes
    // through the proxy too and stops answering): no reason asked for.
    common::fanout::a_silent_subscription_recovers(
        &proxy,
        std::sync::Arc::new(through_proxy),
        std::sync::Arc::new(direct),
        None,
    )
    .await;
}
