//! The custom PostgreSQL LISTEN/NOTIFY backend of `examples/postgres_backend.rs` runs the shared
//! conformance suite, the multi-instance hub checks included, as every backend crate does.
#![allow(clippy::unwrap_used)]

mod common;
#[path = "../examples/postgres_backend.rs"]
#[allow(dead_code, missing_docs, unreachable_pub)]
mod postgres_backend;

use std::sync::Arc;

use common::brokers::Broker;
use common::fanout::{Connect, boxed};
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

/// The conformance suite (`sse_core::testkit::run_all`: delivery, order, history, routes and
/// several hubs on one channel), as every backend crate runs it against its broker.
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

/// The listener's connection is cut (a proxy drops it and refuses new ones for a while): it
/// listens again, reports the gap, and the hub reads what went by from the history table.
#[tokio::test]
async fn a_cut_connection_catches_up_from_the_history() {
    common::fanout::cut_connection_on(Broker::Postgres, connect, forget).await;
}
