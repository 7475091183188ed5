//! The axum example, served for real and used as a browser would.
#![allow(clippy::unwrap_used)]

#[path = "../examples/axum_app.rs"]
#[allow(dead_code, missing_docs, unreachable_pub)]
mod axum_app;
mod common;

use common::{SseClient, client};
use sse_fanout::{Hub, LocalBackend};

#[tokio::test]
async fn an_axum_app_mounts_the_stream_and_publishes_from_a_handler() {
    let hub = Hub::builder(LocalBackend::new())
        .app_name("orders")
        .start()
        .await
        .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, axum_app::app(hub.clone())).await });
    let url = |p: &str| format!("http://{addr}{p}");

    assert_eq!(
        client()
            .get(url("/"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap(),
        "orders service"
    );
    let anonymous = client()
        .get(url("/sse/event-stream?eventName=order-update"))
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.status(), 401);

    let auth = [("authorization", "Bearer alice-token")];
    let mut alice =
        SseClient::connect(&url("/sse/event-stream?eventName=order-update"), &auth).await;
    let mut bob = SseClient::connect(
        &url("/sse/event-stream?eventName=order-update"),
        &[("authorization", "Bearer bob-token")],
    )
    .await;
    assert_eq!(alice.status, 200);
    let shipped = client()
        .post(url("/orders/17/ship"))
        .header("authorization", "Bearer alice-token")
        .send()
        .await
        .unwrap();
    assert_eq!(shipped.status(), 202);
    let event = alice.next().await;
    assert_eq!(event.event, "order-update");
    assert_eq!(event.data, r#"{"order":17,"status":"shipped"}"#);
    assert!(
        bob.next_within(std::time::Duration::from_millis(300))
            .await
            .is_none()
    );
}
