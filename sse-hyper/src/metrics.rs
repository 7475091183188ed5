//! Prometheus metrics: [`render`] the exposition text of a hub and its router, or let the router
//! serve it (see [`RouterConfig::metrics_path`](crate::RouterConfig::metrics_path)).
//!
//! Counters are read from the hub's and router's own atomic counters when rendered, so the hot
//! path pays nothing for them; the publish latency histogram is recorded by the hub through the
//! `metrics` facade. The Prometheus recorder is installed once per process (the first call), unless
//! the application installed a `metrics` recorder of its own; every series carries the hub's
//! `instance` label.

use std::sync::OnceLock;

use metrics::{counter, gauge};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use sse_core::Hub;

use crate::router::RouterStats;

/// Buckets of `sse_publish_duration_seconds`, from 0.5 ms to 5 s.
const PUBLISH_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];

/// The process's Prometheus recorder, installed on first use; `None` when another recorder is
/// installed already.
pub fn prometheus() -> Option<&'static PrometheusHandle> {
    static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let builder = PrometheusBuilder::new()
                .set_buckets_for_metric(
                    metrics_exporter_prometheus::Matcher::Full(
                        "sse_publish_duration_seconds".into(),
                    ),
                    PUBLISH_BUCKETS,
                )
                .ok()?;
            builder.install_recorder().ok()
        })
        .as_ref()
}

/// The Prometheus text for `hub` (and the router's own refusals), or `None` without a recorder.
pub async fn render(hub: &Hub, router: RouterStats) -> Option<String> {
    let handle = prometheus()?;
    let instance = hub.config().instance_id.clone();
    let s = hub.stats();
    let health = hub.health().await;
    let backend = hub.backend_name();
    let i = || instance.clone();
    gauge!("sse_open_streams", "instance" => i()).set(hub.open_streams() as f64);
    gauge!("sse_backend_up", "instance" => i(), "backend" => backend)
        .set(f64::from(u8::from(health.up)));
    counter!("sse_backend_reconnects_total", "instance" => i(), "backend" => backend)
        .absolute(hub.backend_reconnects());
    counter!("sse_streams_opened_total", "instance" => i()).absolute(s.streams_opened);
    for (reason, value) in [
        ("client_gone", s.closed_client_gone),
        ("timeout", s.closed_timeout),
        ("slow_client", s.closed_slow_client),
        ("shutdown", s.closed_shutdown),
    ] {
        counter!("sse_streams_closed_total", "instance" => i(), "reason" => reason).absolute(value);
    }
    for (limit, value) in [
        ("instance", s.rejected_instance_limit),
        ("session", s.rejected_session_limit),
        ("event_names", router.bad_event_names),
    ] {
        counter!("sse_streams_rejected_total", "instance" => i(), "limit" => limit).absolute(value);
    }
    counter!("sse_events_published_total", "instance" => i()).absolute(s.published);
    counter!("sse_publish_failed_total", "instance" => i()).absolute(s.publish_failed);
    counter!("sse_publish_rejected_total", "instance" => i(), "reason" => "too_large")
        .absolute(router.publish_too_large);
    counter!("sse_events_received_total", "instance" => i()).absolute(s.received);
    counter!("sse_events_delivered_total", "instance" => i()).absolute(s.delivered);
    for (reason, value) in [
        ("other_app", s.dropped_other_app),
        ("malformed", s.malformed),
    ] {
        counter!("sse_events_dropped_total", "instance" => i(), "reason" => reason).absolute(value);
    }
    counter!("sse_events_replayed_total", "instance" => i()).absolute(s.replayed);
    counter!("sse_replay_unknown_total", "instance" => i()).absolute(s.replay_unknown);
    Some(handle.render())
}
