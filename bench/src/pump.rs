//! The publisher a benchmark runs: events at a fixed rate, to sessions in turn or to everyone,
//! each carrying its publish time so the receiver can tell how long it took.

use std::future::Future;
use std::time::{Duration, Instant};

use futures_util::stream::FuturesUnordered;
use futures_util::{FutureExt, StreamExt};
use serde::{Deserialize, Serialize};
use sse_fanout::{Hub, SendSseEvent};
use tokio::time::MissedTickBehavior;

use crate::sys::now_micros;

/// What to publish, and how fast.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PumpSpec {
    /// Events per second.
    pub rate: u64,
    /// For how long.
    pub seconds: f64,
    /// The events go to sessions `{session_prefix}0` .. `{session_prefix}{sessions - 1}` in
    /// turn; `0` broadcasts them.
    pub sessions: usize,
    /// The prefix of the session ids.
    #[serde(default = "default_prefix")]
    pub session_prefix: String,
    /// The event name.
    pub event_name: String,
}

fn default_prefix() -> String {
    "s".to_owned()
}

impl PumpSpec {
    /// `rate` events per second named `bench` for `seconds`, to sessions `s0`..`s{sessions-1}`
    /// in turn (0: broadcasts).
    pub fn new(rate: u64, seconds: f64, sessions: usize) -> Self {
        PumpSpec {
            rate,
            seconds,
            sessions,
            session_prefix: default_prefix(),
            event_name: "bench".to_owned(),
        }
    }

    /// The session of event `n`, or `None` for a broadcast.
    pub fn session(&self, n: u64) -> Option<String> {
        (self.sessions > 0).then(|| format!("{}{}", self.session_prefix, n % self.sessions as u64))
    }

    /// Event `n`: this spec's name and session, with a payload stamped now.
    pub fn event(&self, n: u64) -> SendSseEvent {
        let mut event = SendSseEvent::new(self.event_name.clone(), payload(n));
        event.session_id = self.session(n);
        event
    }
}

/// What the pump did.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
pub struct PumpReport {
    /// Events the publisher accepted.
    pub published: u64,
    /// Events it refused.
    pub failed: u64,
    /// How long publishing took.
    pub seconds: f64,
}

/// The payload of event `n`: `{"t": <publish time, µs since the epoch>, "n": n}`.
pub fn payload(n: u64) -> serde_json::Value {
    serde_json::json!({ "t": now_micros(), "n": n })
}

/// Reads `(t, n)` back from an event's data.
pub fn parse_payload(data: &str) -> Option<(u64, u64)> {
    // The form `payload` writes, read without a JSON parser; anything else through serde.
    let fast = || {
        let rest = data.strip_prefix("{\"t\":")?;
        let (t, rest) = rest.split_once(",\"n\":")?;
        let n = rest.strip_suffix('}')?;
        Some((t.parse().ok()?, n.parse().ok()?))
    };
    if let Some(stamp) = fast() {
        return Some(stamp);
    }
    #[derive(Deserialize)]
    struct Stamp {
        t: u64,
        n: u64,
    }
    serde_json::from_str::<Stamp>(data).ok().map(|s| (s.t, s.n))
}

/// Publishes `spec.rate × spec.seconds` events, calling `publish(n)` for each (which builds the
/// payload at that moment and reports whether it was accepted). Every millisecond it starts what
/// is due, with at most `in_flight` publishes waiting at once, so the average rate holds even when
/// a publish waits for a broker's acknowledgement.
pub async fn run<F, Fut>(spec: &PumpSpec, in_flight: usize, mut publish: F) -> PumpReport
where
    F: FnMut(u64) -> Fut,
    Fut: Future<Output = bool>,
{
    let total = (spec.rate as f64 * spec.seconds) as u64;
    let started = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    tick.set_missed_tick_behavior(MissedTickBehavior::Skip);
    let mut report = PumpReport::default();
    let mut pending = FuturesUnordered::new();
    let mut n = 0;
    loop {
        let due = ((started.elapsed().as_secs_f64() * spec.rate as f64) as u64).min(total);
        while n < due && pending.len() < in_flight.max(1) {
            // A publish that completes at once (an in-process backend) is counted without the
            // machinery of the pending set: the pump runs inside the server it measures.
            let mut publishing = Box::pin(publish(n));
            match (&mut publishing).now_or_never() {
                Some(true) => report.published += 1,
                Some(false) => report.failed += 1,
                None => pending.push(publishing),
            }
            n += 1;
        }
        if n >= total && pending.is_empty() {
            break;
        }
        tokio::select! {
            _ = tick.tick(), if n < total => {}
            Some(accepted) = pending.next(), if !pending.is_empty() => {
                if accepted {
                    report.published += 1;
                } else {
                    report.failed += 1;
                }
            }
        }
    }
    report.seconds = started.elapsed().as_secs_f64();
    report
}

/// [`run`] through [`Hub::publish`]: what the in-process side of a benchmark publishes.
pub async fn through_hub(spec: &PumpSpec, hub: &Hub) -> PumpReport {
    run(spec, 256, |n| {
        let (hub, event) = (hub.clone(), spec.event(n));
        async move { hub.publish(event).await.is_ok() }
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload_round_trip() {
        let p = payload(7).to_string();
        let (t, n) = parse_payload(&p).expect("parses");
        assert_eq!(n, 7);
        assert!(t > 1_600_000_000_000_000);
        assert_eq!(parse_payload("hello"), None);
        assert_eq!(parse_payload(r#"{"n":2, "t":1}"#), Some((1, 2)));
        assert_eq!(parse_payload(r#"{"t":1,"n":2}"#), Some((1, 2)));
    }

    #[tokio::test(start_paused = true)]
    async fn the_pump_publishes_everything_in_order() {
        let spec = PumpSpec {
            rate: 1000,
            seconds: 0.5,
            sessions: 3,
            session_prefix: "s".into(),
            event_name: "e".into(),
        };
        let mut seen = Vec::new();
        let report = run(&spec, 8, |n| {
            seen.push(n);
            async { true }
        })
        .await;
        assert_eq!(report.published, 500);
        assert_eq!(seen, (0..500).collect::<Vec<_>>());
        assert_eq!(spec.session(4).as_deref(), Some("s1"));
    }
}
