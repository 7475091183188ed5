//! Micro-benchmarks of what every event goes through: the SSE encoder, the envelope codec, and
//! the repository's deliver path (targeted and broadcast).
//!
//! ```sh
//! cargo bench -p sse-core --bench hot_path
//! ```
#![allow(missing_docs, clippy::unwrap_used)]

use std::hint::black_box;
use std::sync::Arc;

use bytes::Bytes;
use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use serde_json::json;
use sse_core::encode::Event;
use sse_core::{
    Emitter, EmitterRepository, Envelope, EventFilter, InMemoryEmitterRepository, SendSseEvent,
    Subscription, Target,
};

fn encoder(c: &mut Criterion) {
    let mut group = c.benchmark_group("encode");
    let small = r#"{"orderId":17,"status":"shipped"}"#;
    let lines = "line one\nline two\r\nline three\rline four";
    let kib = "x".repeat(1024);
    for (name, data) in [
        ("small", small),
        ("four_lines", lines),
        ("1_kib", kib.as_str()),
    ] {
        group.throughput(Throughput::Bytes(data.len() as u64));
        group.bench_function(name, |b| {
            b.iter(|| {
                Event::new(black_box(data))
                    .id("0192f0c4-7d3a-7b1e-9f00-3c1d2e4f5a6b")
                    .name("order-update")
                    .encode()
                    .unwrap()
            })
        });
    }
    group.finish();
}

fn envelope(c: &mut Criterion) {
    let mut group = c.benchmark_group("envelope");
    let event = SendSseEvent::new("order-update", json!({"orderId": 17, "status": "shipped"}))
        .to_session("session-42");
    group.bench_function("encode_event", |b| {
        b.iter(|| Envelope::encode_event(black_box(&event), "orders", "orders-1").unwrap())
    });
    let (_, bytes) = Envelope::encode_event(&event, "orders", "orders-1").unwrap();
    group.throughput(Throughput::Bytes(bytes.len() as u64));
    group.bench_function("decode_ref", |b| {
        b.iter(|| Envelope::decode_ref(black_box(&bytes)).unwrap())
    });
    group.bench_function("decode_ref_and_frame", |b| {
        b.iter(|| {
            Envelope::decode_ref(black_box(&bytes))
                .unwrap()
                .to_sse()
                .unwrap()
        })
    });
    group.bench_function("decode_owned", |b| {
        b.iter(|| Envelope::decode(black_box(&bytes)).unwrap())
    });
    group.finish();
}

/// `streams` open streams over `sessions` sessions, all listening for `e`.
fn repository(streams: usize, sessions: usize) -> (InMemoryEmitterRepository, Vec<Emitter>) {
    let repo = InMemoryEmitterRepository::new();
    let emitters = (0..streams)
        .map(|i| {
            let session: Arc<str> = Arc::from(format!("s{}", i % sessions));
            repo.register(Subscription::new(
                Some(session),
                EventFilter::parse("e,other").unwrap(),
                256,
            ))
        })
        .collect();
    (repo, emitters)
}

fn deliver(c: &mut Criterion) {
    let frame = Bytes::from_static(b"id: 1\nevent: e\ndata: {\"orderId\":17}\n\n");
    let mut group = c.benchmark_group("deliver");
    // One event to one session among 10 000 (one stream each), then taken by its stream.
    let (repo, mut emitters) = repository(10_000, 10_000);
    let mut n = 0;
    group.bench_function("targeted_one_of_10000", |b| {
        b.iter(|| {
            n = (n + 7919) % 10_000;
            let report = repo.deliver(Target::Session(&format!("s{n}")), "e", &frame);
            assert_eq!(report.queued, 1);
            emitters[n].try_recv().unwrap()
        })
    });
    drop(emitters);
    for streams in [1_000, 10_000] {
        let (repo, mut emitters) = repository(streams, streams);
        group.throughput(Throughput::Elements(streams as u64));
        group.bench_function(format!("broadcast_to_{streams}"), |b| {
            b.iter_batched(
                // Untimed: every stream takes what it was given, so no queue ever fills up.
                || {
                    emitters
                        .iter_mut()
                        .for_each(|e| while e.try_recv().is_some() {})
                },
                |()| {
                    let report = repo.deliver(Target::Broadcast, "e", &frame);
                    assert_eq!(report.queued, streams);
                },
                BatchSize::PerIteration,
            );
        });
        drop(emitters);
    }
    // A broadcast of a name one stream listens to, among 100 000 that listen to others (a
    // presence event, an admin notice): it costs its listeners, not the instance's streams.
    let (repo, others) = repository(100_000, 100_000);
    let mut listener = repo.register(Subscription::new(
        None,
        EventFilter::parse("rare").unwrap(),
        256,
    ));
    group.throughput(Throughput::Elements(1));
    group.bench_function("broadcast_to_1_of_100000", |b| {
        b.iter(|| {
            let report = repo.deliver(Target::Broadcast, "rare", &frame);
            assert_eq!(report.queued, 1);
            listener.try_recv().unwrap()
        })
    });
    drop((listener, others));
    group.finish();
}

criterion_group!(benches, encoder, envelope, deliver);
criterion_main!(benches);
