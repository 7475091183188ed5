//! Latency recording: a histogram of every delivery, and per event how many streams got it and
//! when the last one did (a broadcast's "time until all N have it").

use std::collections::HashMap;

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

/// Latencies in microseconds, from 1 µs to 10 minutes, 3 significant digits.
pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 600_000_000, 3).expect("valid histogram bounds")
}

/// Deliveries seen by one process.
#[derive(Debug)]
pub struct Recorder {
    deliveries: Histogram<u64>,
    per_event: Option<HashMap<u64, (u64, u64)>>,
    received: u64,
}

impl Recorder {
    /// A recorder; with `per_event`, it also keeps each event's delivery count and latest latency.
    pub fn new(per_event: bool) -> Self {
        Recorder {
            deliveries: histogram(),
            per_event: per_event.then(HashMap::new),
            received: 0,
        }
    }

    /// Event `n` arrived `latency_us` after it was published.
    pub fn record(&mut self, n: u64, latency_us: u64) {
        self.received += 1;
        self.deliveries.saturating_record(latency_us.max(1));
        if let Some(per_event) = &mut self.per_event {
            let e = per_event.entry(n).or_insert((0, 0));
            e.0 += 1;
            e.1 = e.1.max(latency_us);
        }
    }

    /// Forgets everything recorded so far (after a warm-up).
    pub fn clear(&mut self) {
        self.deliveries.reset();
        if let Some(per_event) = &mut self.per_event {
            per_event.clear();
        }
        self.received = 0;
    }

    /// What was recorded, in a form that crosses process boundaries.
    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            received: self.received,
            hist: self
                .deliveries
                .iter_recorded()
                .map(|v| (v.value_iterated_to(), v.count_at_value()))
                .collect(),
            per_event: self
                .per_event
                .iter()
                .flatten()
                .map(|(&n, &(count, max))| (n, count, max))
                .collect(),
        }
    }
}

/// A [`Recorder`]'s content: `hist` as `(latency µs, count)` pairs, `per_event` as
/// `(event, deliveries, latest latency µs)`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Snapshot {
    /// Deliveries.
    pub received: u64,
    /// The delivery histogram.
    pub hist: Vec<(u64, u64)>,
    /// Per event: deliveries and the latest one's latency.
    pub per_event: Vec<(u64, u64, u64)>,
}

/// Snapshots of several processes, merged.
#[derive(Debug)]
pub struct Merged {
    /// Deliveries.
    pub received: u64,
    /// Every delivery's latency.
    pub deliveries: Histogram<u64>,
    /// Per event: deliveries and the latest one's latency.
    pub per_event: HashMap<u64, (u64, u64)>,
}

impl Merged {
    /// Merges `snapshots`.
    pub fn new<'a>(snapshots: impl IntoIterator<Item = &'a Snapshot>) -> Self {
        let mut merged = Merged {
            received: 0,
            deliveries: histogram(),
            per_event: HashMap::new(),
        };
        for s in snapshots {
            merged.received += s.received;
            for &(value, count) in &s.hist {
                merged.deliveries.saturating_record_n(value, count);
            }
            for &(n, count, max) in &s.per_event {
                let e = merged.per_event.entry(n).or_insert((0, 0));
                e.0 += count;
                e.1 = e.1.max(max);
            }
        }
        merged
    }
}

/// p50, p99, p99.9 and max of a histogram in milliseconds, as JSON.
pub fn percentiles_ms(h: &Histogram<u64>) -> serde_json::Value {
    let ms = |us: u64| (us as f64 / 1000.0 * 1000.0).round() / 1000.0;
    if h.is_empty() {
        return serde_json::Value::Null;
    }
    serde_json::json!({
        "p50": ms(h.value_at_quantile(0.50)),
        "p99": ms(h.value_at_quantile(0.99)),
        "p999": ms(h.value_at_quantile(0.999)),
        "max": ms(h.max()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshots_merge() {
        let mut a = Recorder::new(true);
        let mut b = Recorder::new(true);
        a.record(0, 100);
        a.record(1, 300);
        b.record(0, 200);
        let m = Merged::new([&a.snapshot(), &b.snapshot()]);
        assert_eq!(m.received, 3);
        assert_eq!(m.per_event[&0], (2, 200));
        assert_eq!(m.per_event[&1], (1, 300));
        assert_eq!(m.deliveries.len(), 3);
        let p = percentiles_ms(&m.deliveries);
        assert_eq!(p["max"], 0.3);
    }
}
