//! What the load tool (`loadgen`) and the benchmark servers (`baseline`, `fanout-server`) share:
//! the timestamped payload and the pump that publishes it at a fixed rate, latency recording, the
//! SSE and publish clients, and process facts (resident memory, the open-file limit).
//!
//! BENCHMARKS.md says how to run them; `scripts/bench.sh` runs the whole table.

pub mod auth;
pub mod client;
pub mod peers;
pub mod pump;
pub mod record;
pub mod sys;
