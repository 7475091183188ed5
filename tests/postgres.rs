//! The custom PostgreSQL LISTEN/NOTIFY backend of `examples/postgres_backend.rs`: the shared
//! conformance suite and the multi-instance scenarios every backend runs.
#![allow(clippy::unwrap_used)]

mod common;
#[path = "../examples/postgres_backend.rs"]
#[allow(dead_code, missing_docs, unreachable_pub)]
mod postgres_backend;

use std::sync::Arc;

use bytes::Bytes;
use common::brokers::Broker;
use common::fanout::{Connect, RawPublish, boxed};
use postgres_backend::PostgresBackend;
use sse_fanout::FanoutBackend;

fn channel_name(channel: &str) -> String {
    channel.replace(['-', '.'], "_")
}

fn connect(url: &str, channel: &str) -> Connect {
    let (url, channel) = (url.to_owned(), channel_name(channel));
    Arc::new(move || {
        let (url, channel) = (url.clone(), channel.clone());
        boxed(async move {
            Arc::new(PostgresBackend::connect(&url, &channel).await.unwrap())
                as Arc<dyn FanoutBackend>
        })
    })
}

/// `NOTIFY` from a plain client, in the backend's inline format.
fn raw(url: &str, channel: &str) -> RawPublish {
    let (url, channel) = (url.to_owned(), channel_name(channel));
    Arc::new(move |bytes: Bytes| {
        let (url, channel) = (url.clone(), channel.clone());
        boxed(async move {
            let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
                .await
                .unwrap();
            tokio::spawn(connection);
            let payload = format!("i{}", std::str::from_utf8(&bytes).unwrap());
            client
                .execute("SELECT pg_notify($1, $2)", &[&channel, &payload])
                .await
                .unwrap();
        })
    })
}

/// Deletes the channel's rows of the history table.
async fn forget(url: String, channel: String) {
    let Ok((client, connection)) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await
    else {
        return;
    };
    tokio::spawn(connection);
    let _ = client
        .execute(
            "DELETE FROM sse_fanout_history WHERE channel = $1",
            &[&channel_name(&channel)],
        )
        .await;
}

common::fanout::broker_suite!(Broker::Postgres);

/// The conformance suite, as every backend crate runs it against its broker.
#[tokio::test]
async fn conformance_suite() {
    let Some(url) = common::brokers::url(Broker::Postgres).await else {
        return;
    };
    let channel = common::unique("conformance");
    let _forget = common::backends::Forget::new(&url, &channel, forget);
    let connect = connect(&url, &channel);
    sse_core::testkit::run_all(&move || connect()).await;
}
