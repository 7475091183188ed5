//! The conformance suite of `sse_core::testkit` against the in-process backend: several
//! instances of one [`LocalBackend`] stand for several hubs on one broker (it has routes, no
//! history, so the hub checks see session routing end in a reset where a broker would replay).
#![cfg(feature = "testkit")]
#![allow(clippy::unwrap_used)]

use std::sync::Arc;

use sse_core::{FanoutBackend, LocalBackend, testkit};

#[tokio::test]
async fn the_local_backend_passes_the_conformance_suite() {
    let shared = LocalBackend::new();
    testkit::run_all(&move || {
        let backend = shared.instance();
        async move { Arc::new(backend) as Arc<dyn FanoutBackend> }
    })
    .await;
}
