//! The RabbitMQ backend against a real RabbitMQ: the conformance suite, several hubs on one
//! exchange, the sending-application filter, one queue per instance that goes away with it, and a
//! `stop_app`/`start_app` under running hubs.
#![cfg(feature = "rabbit")]
#![allow(clippy::unwrap_used)]

mod common;

use std::process::Command;
use std::time::Duration;

use common::brokers::{self, Broker};
use common::unique;
use sse_fanout::rabbit::{RabbitBackend, RabbitConfig};

use common::backends::rabbit::{connect, forget, raw};

common::fanout::broker_suite!(Broker::Rabbit);
common::fanout::restart_suite!(Broker::Rabbit, Duration::from_secs(10));

/// `rabbitmqctl list_queues name consumers`, as (name, consumers) pairs.
fn list_queues() -> Option<Vec<(String, u32)>> {
    let out = Command::new("rabbitmqctl")
        .args([
            "list_queues",
            "-q",
            "--no-table-headers",
            "name",
            "consumers",
        ])
        .output()
        .ok()?;
    out.status.success().then(|| {
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| {
                let mut parts = l.split_whitespace();
                Some((parts.next()?.to_owned(), parts.next()?.parse().ok()?))
            })
            .collect()
    })
}

#[tokio::test]
async fn each_instance_has_its_own_queue_which_goes_away_with_it() {
    let Some(url) = brokers::url(Broker::Rabbit).await else {
        return;
    };
    if list_queues().is_none() {
        brokers::not_installed("rabbitmqctl, to look at the broker's queues");
        return;
    }
    let exchange = unique("queues");
    let _forget = common::backends::Forget::new(&url, &exchange, forget);
    let (qa, qb) = (unique("orders.a"), unique("orders.b"));
    let hub = |queue: String| {
        let (url, exchange) = (url.clone(), exchange.clone());
        async move {
            let backend = RabbitBackend::connect(&url, RabbitConfig::new(exchange, queue))
                .await
                .unwrap();
            sse_fanout::Hub::builder(backend).start().await.unwrap()
        }
    };
    let a = hub(qa.clone()).await;
    let b = hub(qb.clone()).await;
    let queues = list_queues().unwrap();
    for q in [&qa, &qb] {
        assert!(
            queues.contains(&(q.clone(), 1)),
            "{q} with one consumer in {queues:?}"
        );
    }
    a.shutdown().await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let queues = list_queues().unwrap();
        let names: Vec<&String> = queues.iter().map(|(n, _)| n).collect();
        if !names.contains(&&qa) {
            assert!(names.contains(&&qb), "the other instance's queue stays");
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
    let config = || RabbitConfig::new("x", "q");
    let err = RabbitBackend::connect("http://nope", config())
        .await
        .unwrap_err();
    assert!(
        matches!(err, sse_fanout::BackendError::Config { .. }),
        "{err}"
    );
    let err = RabbitBackend::connect("amqp://127.0.0.1:1/%2f", config())
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
