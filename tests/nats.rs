//! The NATS backend against a real NATS server: the conformance suite, several hubs on one subject, the
//! sending-application filter, and a broker restart under running hubs.
#![cfg(feature = "nats")]
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::brokers::Broker;
use common::fanout::{Connect, RawPublish, boxed};
use sse_fanout::FanoutBackend;
use sse_fanout::nats::NatsBackend;

fn connect(url: &str, channel: &str) -> Connect {
    let (url, channel) = (url.to_owned(), channel.to_owned());
    Arc::new(move || {
        let (url, channel) = (url.clone(), channel.clone());
        boxed(async move {
            Arc::new(NatsBackend::connect(&url, &channel).await.unwrap()) as Arc<dyn FanoutBackend>
        })
    })
}

/// `nats pub subject bytes` with the plain async-nats client.
fn raw(url: &str, subject: &str) -> RawPublish {
    let (url, subject) = (url.to_owned(), subject.to_owned());
    Arc::new(move |bytes: Bytes| {
        let (url, subject) = (url.clone(), subject.clone());
        boxed(async move {
            let client = async_nats::connect(url).await.unwrap();
            client.publish(subject, bytes).await.unwrap();
            client.flush().await.unwrap();
        })
    })
}

common::fanout::broker_suite!(Broker::Nats);
common::fanout::restart_suite!(Broker::Nats, Duration::from_secs(5));

#[tokio::test]
async fn bad_urls_are_typed_errors() {
    // Nothing listens on port 1.
    let err = NatsBackend::connect("nats://127.0.0.1:1", "c")
        .await
        .unwrap_err();
    assert!(err.is_temporary(), "{err}");
}
