//! The delivery probe: a subscription that is connected but no longer delivers must not look
//! healthy.
//!
//! A broker connection can stay up while nothing arrives on it any more: a cluster route between
//! brokers broken, a proxy that stopped forwarding, a subscription the broker forgot after a
//! failover. The backend's own checks (its pings, its connection state) pass, and `/healthz`
//! stays green while the instance's clients get nothing. So when the subscription has been
//! silent for [`ProbeConfig::interval`], the hub publishes a probe to the broadcast channel,
//! through the broker, and waits [`ProbeConfig::timeout`] for anything to arrive (its probe, any
//! other instance's, any envelope). If nothing does, the hub reports itself down with the reason
//! ([`Hub::health`](crate::Hub::health)), counts it (`probe_failures`), subscribes again, and
//! reads what it missed from the broker's history; it is up again once that is done.
//!
//! A probe is not an envelope: `{"sseProbe":"<instance>/<n>"}`. Hubs drop it before decoding;
//! another program reading the channel (or the history) should skip messages that begin with
//! `{"sseProbe":`. Probes travel only while an instance receives nothing, one per interval.

use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use tokio::time::Instant;

/// What every probe begins with.
const PREFIX: &[u8] = b"{\"sseProbe\":";

/// When a hub probes its subscription.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct ProbeConfig {
    /// How long the subscription may be silent before a probe is sent.
    pub interval: Duration,
    /// How long the probe has to come back.
    pub timeout: Duration,
}

impl ProbeConfig {
    /// Probes after `interval` of silence; `timeout` for the probe to come back.
    pub fn new(interval: Duration, timeout: Duration) -> Self {
        ProbeConfig { interval, timeout }
    }
}

impl Default for ProbeConfig {
    /// Probe after 30 s of silence; 10 s to come back.
    fn default() -> Self {
        ProbeConfig {
            interval: Duration::from_secs(30),
            timeout: Duration::from_secs(10),
        }
    }
}

/// Whether `message` is a probe (of any instance).
pub(crate) fn is_probe(message: &[u8]) -> bool {
    message.starts_with(PREFIX)
}

/// What the prober asks of the hub's receiving task.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Step {
    /// Nothing to do.
    Wait,
    /// Publish this probe.
    Send(Bytes),
    /// The probe did not come back: subscribe again and catch up.
    Failed,
}

/// The probe's state: the probe in flight, and why the hub is down. When the subscription last
/// delivered, the receiving task keeps (no lock per envelope) and tells [`Prober::step`].
#[derive(Debug)]
pub(crate) struct Prober {
    config: ProbeConfig,
    instance: String,
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    /// When the probe in flight was sent.
    sent: Option<Instant>,
    sent_count: u64,
    /// Why the hub is down, while it subscribes again.
    down: Option<String>,
}

impl Prober {
    pub(crate) fn new(config: ProbeConfig, instance: &str) -> Prober {
        Prober {
            config,
            instance: instance.to_owned(),
            state: Mutex::new(State {
                sent: None,
                sent_count: 0,
                down: None,
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// What to do now, the subscription having last delivered at `heard`: send a probe after
    /// `interval` of silence, fail one not back within `timeout` (anything heard since it was
    /// sent answers it).
    pub(crate) fn step(&self, heard: Instant) -> Step {
        let now = Instant::now();
        let mut state = self.lock();
        if state.sent.is_some_and(|sent| heard >= sent) {
            state.sent = None;
        }
        match state.sent {
            Some(sent) if now.duration_since(sent) >= self.config.timeout => {
                state.sent = None;
                state.down = Some(format!(
                    "the subscription delivers nothing: a delivery probe did not come back \
                     through the broker within {:?}",
                    self.config.timeout
                ));
                Step::Failed
            }
            Some(_) => Step::Wait,
            None if now.duration_since(heard) >= self.config.interval => {
                state.sent = Some(now);
                state.sent_count += 1;
                let token =
                    serde_json::to_string(&format!("{}/{}", self.instance, state.sent_count))
                        .unwrap_or_else(|_| "\"probe\"".to_owned());
                let mut probe = PREFIX.to_vec();
                probe.extend_from_slice(token.as_bytes());
                probe.push(b'}');
                Step::Send(Bytes::from(probe))
            }
            None => Step::Wait,
        }
    }

    /// How often to call [`step`](Self::step).
    pub(crate) fn tick(&self) -> Duration {
        (self.config.timeout.min(self.config.interval) / 4).max(Duration::from_millis(10))
    }

    /// Subscribed again and caught up: up.
    pub(crate) fn restored(&self) {
        self.lock().down = None;
    }

    /// Why the hub is down, if a probe failed and the subscription is not back yet.
    pub(crate) fn down(&self) -> Option<String> {
        self.lock().down.clone()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn prober() -> Prober {
        Prober::new(
            ProbeConfig::new(Duration::from_secs(10), Duration::from_secs(2)),
            "i-1",
        )
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_subscription_is_probed_and_fails_when_nothing_comes_back() {
        let prober = prober();
        let heard = Instant::now();
        assert_eq!(prober.step(heard), Step::Wait);
        tokio::time::advance(Duration::from_secs(10)).await;
        let Step::Send(probe) = prober.step(heard) else {
            panic!("no probe after the interval")
        };
        assert!(is_probe(&probe));
        assert_eq!(probe, r#"{"sseProbe":"i-1/1"}"#);
        let json: serde_json::Value = serde_json::from_slice(&probe).unwrap();
        assert_eq!(json["sseProbe"], "i-1/1");
        assert_eq!(prober.step(heard), Step::Wait, "one probe in flight");
        tokio::time::advance(Duration::from_secs(2)).await;
        assert_eq!(prober.step(heard), Step::Failed);
        assert!(prober.down().unwrap().contains("probe"));
        prober.restored();
        assert_eq!(prober.down(), None);
        // Subscribed again: the receiving task counts silence from then.
        assert_eq!(prober.step(Instant::now()), Step::Wait);
    }

    #[tokio::test(start_paused = true)]
    async fn anything_arriving_answers_the_probe_and_postpones_the_next() {
        let prober = prober();
        tokio::time::advance(Duration::from_secs(10)).await;
        let start = Instant::now() - Duration::from_secs(10);
        assert!(matches!(prober.step(start), Step::Send(_)));
        tokio::time::advance(Duration::from_secs(1)).await;
        let heard = Instant::now();
        tokio::time::advance(Duration::from_secs(5)).await;
        assert_eq!(prober.step(heard), Step::Wait, "heard 5 s ago");
        assert_eq!(prober.down(), None);
        tokio::time::advance(Duration::from_secs(5)).await;
        assert!(matches!(prober.step(heard), Step::Send(_)));
    }

    #[test]
    fn probes_are_told_from_envelopes() {
        assert!(is_probe(br#"{"sseProbe":"x/1"}"#));
        assert!(!is_probe(br#"{"v":1,"id":"a"}"#));
        assert!(!is_probe(b""));
    }
}
