//! Prometheus metrics: [`render`] the exposition text of a hub and its router, or let the router
//! serve it (see [`RouterConfig::metrics_path`](crate::RouterConfig::metrics_path)).
//!
//! Everything is read from the hub's and router's own atomics when rendered (the publish latency
//! histogram too), so the hot path pays nothing for metrics. The Prometheus recorder is installed
//! once per process (the first call), unless the application installed a `metrics` recorder of its
//! own; every series carries the hub's `instance` label.
//!
//! Every family has `# HELP` text. Beside the hub's own series come the process metrics every
//! Prometheus exporter has (`process_cpu_seconds_total`, `process_resident_memory_bytes`,
//! `process_open_fds`, `process_max_fds`, ... from the `metrics-process` crate) and
//! `sse_build_info{version}`.

use std::sync::OnceLock;

use metrics::{counter, describe_counter, describe_gauge, gauge};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use sse_core::{Hub, LatencySnapshot};

use crate::stats::RouterStats;

/// The process's Prometheus recorder, installed on first use; `None` when another recorder is
/// installed already.
pub fn prometheus() -> Option<&'static PrometheusHandle> {
    static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();
    HANDLE
        .get_or_init(|| PrometheusBuilder::new().install_recorder().ok())
        .as_ref()
}

/// What each family of the hub means, for `# HELP` (described once per process).
const HELP: &[(&str, bool, &str)] = &[
    (
        "sse_open_streams",
        false,
        "Event streams open on this instance.",
    ),
    (
        "sse_backend_up",
        false,
        "1 when the backend's broker connection is up, else 0.",
    ),
    (
        "sse_backend_reconnects_total",
        true,
        "Times the backend connected to its broker again.",
    ),
    ("sse_streams_opened_total", true, "Event streams opened."),
    (
        "sse_streams_closed_total",
        true,
        "Event streams closed, by reason.",
    ),
    (
        "sse_streams_rejected_total",
        true,
        "Stream requests refused, by the limit they hit.",
    ),
    (
        "sse_disconnects_received_total",
        true,
        "Session disconnects this instance received (each ends that session's streams here).",
    ),
    (
        "sse_events_published_total",
        true,
        "Events published through this instance.",
    ),
    (
        "sse_publish_failed_total",
        true,
        "Publishes the backend refused or failed.",
    ),
    (
        "sse_publish_rejected_total",
        true,
        "Publish requests refused before publishing, by reason.",
    ),
    (
        "sse_connections_shed_total",
        true,
        "Connections accepted while out of file descriptors, answered at once and closed.",
    ),
    (
        "sse_tls_handshake_failures_total",
        true,
        "TLS handshakes that failed, by reason.",
    ),
    (
        "sse_auth_callout_total",
        true,
        "Auth callouts to the application, by purpose (stream, publish) and outcome.",
    ),
    (
        "sse_auth_cache_total",
        true,
        "Requests answered from a cached callout answer (hit) or one in flight (joined), by purpose (stream, publish).",
    ),
    (
        "sse_events_received_total",
        true,
        "Envelopes received from the backend.",
    ),
    (
        "sse_events_delivered_total",
        true,
        "Frames queued to streams (one per recipient).",
    ),
    (
        "sse_events_dropped_total",
        true,
        "Envelopes received and not delivered, by reason.",
    ),
    (
        "sse_events_received_unmatched_total",
        true,
        "Targeted envelopes received that no stream here wanted.",
    ),
    (
        "sse_presence_sessions",
        false,
        "Sessions with a stream open anywhere in the cluster, as this instance sees them (--presence).",
    ),
    (
        "sse_presence_instances",
        false,
        "Instances alive in the cluster, as this instance's presence sees them.",
    ),
    (
        "sse_presence_synced",
        false,
        "1 when this instance holds the cluster's presence state, else 0.",
    ),
    (
        "sse_routes_sessions",
        false,
        "Sessions holding a route on this instance (session routing), lingering ones included.",
    ),
    (
        "sse_routes_subscribed",
        false,
        "Routes (or partitions) the backend is subscribed to.",
    ),
    (
        "sse_route_changes_total",
        true,
        "Session routes subscribed and unsubscribed, by operation.",
    ),
    (
        "sse_route_failures_total",
        true,
        "Session routes that failed to subscribe or unsubscribe.",
    ),
    (
        "sse_events_replayed_total",
        true,
        "Events replayed to resuming streams.",
    ),
    (
        "sse_replay_unknown_total",
        true,
        "Resumes whose Last-Event-ID was unknown (they got the reset event).",
    ),
    (
        "sse_replays_total",
        true,
        "Resuming streams, by where their replay came from.",
    ),
    (
        "sse_history_reads_total",
        true,
        "Reads of the broker's history.",
    ),
    (
        "sse_history_read_failed_total",
        true,
        "Reads of the broker's history that failed.",
    ),
    (
        "sse_history_events_loaded_total",
        true,
        "Envelopes read from the broker's history.",
    ),
    (
        "sse_backend_gaps_total",
        true,
        "Gaps the backend's subscription reported, by outcome: caught up from the history, or unrecovered (no history to read, or the history failed in a way that is not temporary: what was published meanwhile may be missing here).",
    ),
    (
        "sse_events_caught_up_total",
        true,
        "Envelopes read after a gap that the subscription had not received.",
    ),
    (
        "sse_probes_total",
        true,
        "Delivery probes sent through the broker after the subscription was silent for the probe interval.",
    ),
    (
        "sse_probe_failures_total",
        true,
        "Delivery probes that did not come back in time: the subscription delivered nothing and was made again.",
    ),
    ("sse_build_info", false, "The hub's version; always 1."),
];

/// `# HELP` of the histograms written by hand.
const HISTOGRAMS: &[(&str, &str)] = &[
    (
        "sse_publish_duration_seconds",
        "How long publishing an event took, until the broker had it.",
    ),
    (
        "sse_history_read_duration_seconds",
        "How long a read of the broker's history took.",
    ),
    (
        "sse_route_subscribe_duration_seconds",
        "How long a session's first stream waited for its route.",
    ),
];

/// Describes the families and the process collector, once per process.
fn describe() -> &'static metrics_process::Collector {
    static COLLECTOR: OnceLock<metrics_process::Collector> = OnceLock::new();
    COLLECTOR.get_or_init(|| {
        for &(name, is_counter, help) in HELP {
            if is_counter {
                describe_counter!(name, help);
            } else {
                describe_gauge!(name, help);
            }
        }
        let collector = metrics_process::Collector::default();
        collector.describe();
        collector
    })
}

/// The Prometheus text for `hub` (and the router's own refusals), or `None` without a recorder.
pub async fn render(hub: &Hub, router: RouterStats) -> Option<String> {
    let handle = prometheus()?;
    describe().collect();
    let instance = hub.config().instance_id.clone();
    let s = hub.stats();
    let health = hub.health().await;
    let backend = hub.backend_name();
    let i = || instance.clone();
    gauge!("sse_build_info", "instance" => i(), "version" => env!("CARGO_PKG_VERSION")).set(1.0);
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
        ("disconnected", s.closed_disconnected),
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
    counter!("sse_disconnects_received_total", "instance" => i()).absolute(s.disconnects);
    counter!("sse_publish_failed_total", "instance" => i()).absolute(s.publish_failed);
    for (reason, value) in [
        ("too_large", router.publish_too_large),
        ("over_budget", router.publish_over_budget),
    ] {
        counter!("sse_publish_rejected_total", "instance" => i(), "reason" => reason)
            .absolute(value);
    }
    counter!("sse_connections_shed_total", "instance" => i()).absolute(router.connections_shed);
    let tls = router.tls_handshake_failures;
    for (reason, value) in [
        ("timeout", tls.timeout),
        ("closed", tls.closed),
        ("client_certificate", tls.client_certificate),
        ("protocol", tls.protocol),
    ] {
        counter!("sse_tls_handshake_failures_total", "instance" => i(), "reason" => reason)
            .absolute(value);
    }
    for (purpose, callout) in [
        ("stream", router.auth_callout),
        ("publish", router.publish_callout),
    ] {
        let Some(callout) = callout else { continue };
        for (outcome, value) in [
            ("allowed", callout.allowed),
            ("refused", callout.refused),
            ("unavailable", callout.unavailable),
            ("bad_answer", callout.bad_answer),
        ] {
            counter!("sse_auth_callout_total", "instance" => i(), "purpose" => purpose, "outcome" => outcome)
                .absolute(value);
        }
        for (result, value) in [("hit", callout.cache_hits), ("joined", callout.joined)] {
            counter!("sse_auth_cache_total", "instance" => i(), "purpose" => purpose, "result" => result)
                .absolute(value);
        }
    }
    counter!("sse_events_received_total", "instance" => i()).absolute(s.received);
    counter!("sse_events_delivered_total", "instance" => i()).absolute(s.delivered);
    for (reason, value) in [
        ("other_app", s.dropped_other_app),
        ("malformed", s.malformed),
        ("duplicate", s.duplicates),
    ] {
        counter!("sse_events_dropped_total", "instance" => i(), "reason" => reason).absolute(value);
    }
    counter!("sse_events_received_unmatched_total", "instance" => i())
        .absolute(s.received_unmatched);
    gauge!("sse_routes_sessions", "instance" => i()).set(hub.routed_sessions() as f64);
    if let Some(presence) = hub.presence() {
        let counts = presence.counts();
        gauge!("sse_presence_sessions", "instance" => i()).set(counts.sessions as f64);
        gauge!("sse_presence_instances", "instance" => i()).set(counts.instances as f64);
        gauge!("sse_presence_synced", "instance" => i())
            .set(f64::from(u8::from(presence.synced())));
    }
    if let Some(routes) = hub.backend_routes() {
        gauge!("sse_routes_subscribed", "instance" => i(), "backend" => backend).set(routes as f64);
    }
    for (op, value) in [
        ("subscribe", s.route_subscribes),
        ("unsubscribe", s.route_unsubscribes),
    ] {
        counter!("sse_route_changes_total", "instance" => i(), "op" => op).absolute(value);
    }
    counter!("sse_route_failures_total", "instance" => i()).absolute(s.route_failures);
    counter!("sse_events_replayed_total", "instance" => i()).absolute(s.replayed);
    counter!("sse_replay_unknown_total", "instance" => i()).absolute(s.replay_unknown);
    for (source, value) in [
        ("local", s.replays_local),
        ("broker", s.replays_broker),
        ("reset", s.replay_unknown),
    ] {
        counter!("sse_replays_total", "instance" => i(), "source" => source).absolute(value);
    }
    counter!("sse_history_reads_total", "instance" => i()).absolute(s.history_reads);
    counter!("sse_history_read_failed_total", "instance" => i()).absolute(s.history_read_failed);
    counter!("sse_history_events_loaded_total", "instance" => i()).absolute(s.history_loaded);
    for (outcome, value) in [
        ("caught_up", s.gaps.saturating_sub(s.gaps_unrecovered)),
        ("unrecovered", s.gaps_unrecovered),
    ] {
        counter!("sse_backend_gaps_total", "instance" => i(), "outcome" => outcome).absolute(value);
    }
    counter!("sse_events_caught_up_total", "instance" => i()).absolute(s.caught_up);
    counter!("sse_probes_total", "instance" => i()).absolute(s.probes);
    counter!("sse_probe_failures_total", "instance" => i()).absolute(s.probe_failures);
    let mut text = handle.render();
    let histograms = [
        hub.publish_latency(),
        hub.history_read_latency(),
        hub.route_subscribe_latency(),
    ];
    for (&(name, help), h) in HISTOGRAMS.iter().zip(&histograms) {
        write_histogram(&mut text, name, help, &instance, h);
    }
    Some(text)
}

/// Appends a histogram in the Prometheus text format.
fn write_histogram(text: &mut String, name: &str, help: &str, instance: &str, h: &LatencySnapshot) {
    use std::fmt::Write;
    let instance = escape_label(instance);
    let _ = writeln!(text, "# HELP {name} {help}");
    let _ = writeln!(text, "# TYPE {name} histogram");
    for (le, count) in &h.buckets {
        let _ = writeln!(
            text,
            "{name}_bucket{{instance=\"{instance}\",le=\"{le}\"}} {count}"
        );
    }
    let _ = writeln!(
        text,
        "{name}_bucket{{instance=\"{instance}\",le=\"+Inf\"}} {}",
        h.count
    );
    let _ = writeln!(
        text,
        "{name}_sum{{instance=\"{instance}\"}} {}",
        h.sum_seconds
    );
    let _ = writeln!(text, "{name}_count{{instance=\"{instance}\"}} {}", h.count);
}

/// A label value as the text format wants it: backslash, double quote and newline escaped.
fn escape_label(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape_label(r#"a"b\c"#), r#"a\"b\\c"#);
        assert_eq!(escape_label("x\ny"), "x\\ny");
    }
}
