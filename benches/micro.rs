//! Criterion micro-benchmarks of the per-message hot path: what eda adds to every event besides
//! the broker's work. `cargo bench --bench micro` (add `-- --quick` for a fast pass); the
//! numbers and what each one measures are in `benches/RESULTS.md`.

#![allow(missing_docs, missing_debug_implementations)]

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use eda::delivery::{decide, Outcome};
use eda::observe::{HandlerMetrics, Outcome as Counted};
use eda::prelude::*;
use eda::{HandlerOptions, MemoryBroker, Metadata};

/// The benchmark's ~250-byte event, in its current version 2.
#[event("micro.order", version = 2, upcast_from = MicroOrderV1)]
pub struct MicroOrder {
    pub id: u64,
    pub customer: String,
    pub email: String,
    pub items: Vec<String>,
    pub total_cents: u64,
    pub currency: String,
    pub note: String,
}

/// Version 1 had no currency (it was always euros).
#[event("micro.order", version = 1)]
pub struct MicroOrderV1 {
    pub id: u64,
    pub customer: String,
    pub email: String,
    pub items: Vec<String>,
    pub total_cents: u64,
    pub note: String,
}

impl From<MicroOrderV1> for MicroOrder {
    fn from(v1: MicroOrderV1) -> MicroOrder {
        MicroOrder {
            id: v1.id,
            customer: v1.customer,
            email: v1.email,
            items: v1.items,
            total_cents: v1.total_cents,
            currency: "EUR".into(),
            note: v1.note,
        }
    }
}

fn order(id: u64) -> MicroOrder {
    MicroOrder {
        id,
        customer: format!("customer-{:08}", id % 100_000),
        email: format!("customer{:08}@example.com", id % 100_000),
        items: vec![
            "sku-00017 x2".into(),
            "sku-00342 x1".into(),
            "sku-10001 x4".into(),
        ],
        total_cents: 1000 + id % 9000,
        currency: "EUR".into(),
        note: "leave the parcel at the door, please ring twice".into(),
    }
}

#[handler(service = "micro-one", idempotent = "off")]
async fn micro_noop(_event: MicroOrder) {}

#[handler(service = "micro-breaker", idempotent = "off", breaker = "micro")]
async fn micro_behind_breaker(_event: MicroOrder) {}

#[handler(service = "micro-fanout", idempotent = "off")]
async fn micro_fan_a(_event: MicroOrder) {}
#[handler(service = "micro-fanout", idempotent = "off")]
async fn micro_fan_b(_event: MicroOrder) {}
#[handler(service = "micro-fanout", idempotent = "off")]
async fn micro_fan_c(_event: MicroOrder) {}
#[handler(service = "micro-fanout", idempotent = "off")]
async fn micro_fan_d(_event: MicroOrder) {}

fn decoding(c: &mut Criterion) {
    let current = serde_json::to_vec(&order(7)).unwrap_or_default();
    let v1 = serde_json::to_vec(&MicroOrderV1::from_order(order(7))).unwrap_or_default();
    let mut group = c.benchmark_group("decode");
    group.throughput(Throughput::Elements(1));
    group.bench_function("current version", |b| {
        b.iter(|| MicroOrder::decode_version(2, std::hint::black_box(&current)))
    });
    group.bench_function("version 1, upcast", |b| {
        b.iter(|| MicroOrder::decode_version(1, std::hint::black_box(&v1)))
    });
    group.finish();
}

impl MicroOrderV1 {
    fn from_order(o: MicroOrder) -> MicroOrderV1 {
        MicroOrderV1 {
            id: o.id,
            customer: o.customer,
            email: o.email,
            items: o.items,
            total_cents: o.total_cents,
            note: o.note,
        }
    }
}

/// What a publish creates for each event (as `publish.rs` does).
fn metadata() -> Metadata {
    Metadata::new("micro.order", 2, "micro-service")
}

fn encoded(metadata: &Metadata) -> async_nats::HeaderMap {
    let mut map = async_nats::HeaderMap::new();
    eda::wire::encode_into(metadata, eda::WireFormat::Eda, false, |name, value| {
        map.insert(async_nats::header::HeaderName::from_static(name), value)
    });
    map
}

fn headers(c: &mut Criterion) {
    let mut group = c.benchmark_group("headers");
    group.throughput(Throughput::Elements(1));
    group.bench_function("new metadata (id, time)", |b| b.iter(metadata));
    let mut root = metadata();
    root.version = 1;
    group.bench_function("encode a root event into a NATS header map", |b| {
        b.iter(|| encoded(&root))
    });
    // The most an event carries: a v2 follow-up in a trace.
    let mut follow_up = metadata();
    follow_up.correlation_id = root.id.clone();
    follow_up.causation_id = Some(root.id.clone());
    follow_up.traceparent = Some(eda::observe::trace::new_traceparent());
    group.bench_function("encode a follow-up into a NATS header map", |b| {
        b.iter(|| encoded(&follow_up))
    });
    let map = encoded(&follow_up);
    group.bench_function("decode from a NATS header map", |b| {
        b.iter(|| {
            let pairs = map.iter().filter_map(|(name, values)| {
                Some((AsRef::<str>::as_ref(name), values.first()?.as_str()))
            });
            eda::wire::decode("micro.order", pairs, Some(42), None)
        })
    });
    group.finish();
}

fn decisions(c: &mut Criterion) {
    let options = HandlerOptions::default();
    let failed = Outcome::Failed(HandlerError::retry("the database is away"));
    let mut group = c.benchmark_group("decide");
    group.throughput(Throughput::Elements(1));
    group.bench_function("success", |b| {
        b.iter(|| decide(&Outcome::Success, 1, &options, 0.5))
    });
    group.bench_function("failure, retry with backoff", |b| {
        b.iter(|| decide(std::hint::black_box(&failed), 2, &options, 0.5))
    });
    group.finish();
}

fn metric_recording(c: &mut Criterion) {
    let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
    let service: Arc<str> = Arc::from("micro-service");
    let handles = metrics::with_local_recorder(&recorder, || {
        HandlerMetrics::new(&service, "micro_noop", Some("micro.order"))
    });
    let published = SystemTime::now();
    let mut group = c.benchmark_group("metrics");
    group.throughput(Throughput::Elements(1));
    group.bench_function(
        "one handled message (lag, in flight, duration, outcome)",
        |b| {
            b.iter(|| {
                drop(handles.attempt(published));
                handles.handled("micro.order", Counted::Success);
            })
        },
    );
    group.finish();
}

/// Events per second through the in-memory transport: publish `iters` events, wait until
/// every handler has handled them.
fn in_memory(c: &mut Criterion) {
    let Ok(runtime) = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    else {
        eprintln!("cannot build a tokio runtime");
        return;
    };
    let mut group = c.benchmark_group("in memory");
    group.throughput(Throughput::Elements(BATCH));
    group.measurement_time(Duration::from_secs(5));
    for (name, service, handlers) in [
        ("one no-op handler", "micro-one", &["micro_noop"][..]),
        (
            "one no-op handler behind a closed breaker",
            "micro-breaker",
            &["micro_behind_breaker"][..],
        ),
        (
            "fan-out to 4 handlers",
            "micro-fanout",
            &["micro_fan_a", "micro_fan_b", "micro_fan_c", "micro_fan_d"][..],
        ),
    ] {
        let app = runtime.block_on(async {
            App::builder(service)
                .memory_broker(MemoryBroker::new().with_retention(0))
                .without_env()
                .handlers(handlers)
                .start()
                .await
        });
        let app = match app {
            Ok(app) => app,
            Err(e) => {
                eprintln!("the in-memory app does not start: {e}");
                return;
            }
        };
        let publisher = app.publisher();
        group.bench_function(name, |b| {
            b.iter_batched(
                || (0..BATCH).map(order).collect::<Vec<_>>(),
                |events| {
                    runtime.block_on(async {
                        if let Err(e) = publisher.publish_all(&events).await {
                            eprintln!("publish: {e}");
                        }
                        app.settle().await;
                    })
                },
                BatchSize::PerIteration,
            )
        });
        let _ = runtime.block_on(app.shutdown());
    }
    in_memory_floor(&runtime, &mut group);
    group.finish();
}

/// The floor under the in-memory transport, written by hand: each event serialized to JSON,
/// sent through a bounded tokio channel to a task that decodes it. What any in-process
/// transport of JSON events costs on this machine before it adds ids, acks or metrics.
fn in_memory_floor(
    runtime: &tokio::runtime::Runtime,
    group: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
) {
    let (sender, mut receiver) = tokio::sync::mpsc::channel::<Vec<u8>>(1024);
    let handled = Arc::new(AtomicU64::new(0));
    let caught_up = Arc::new(tokio::sync::Notify::new());
    runtime.spawn({
        let (handled, caught_up) = (Arc::clone(&handled), Arc::clone(&caught_up));
        async move {
            while let Some(payload) = receiver.recv().await {
                if let Ok(event) = serde_json::from_slice::<MicroOrder>(&payload) {
                    std::hint::black_box(event);
                }
                handled.fetch_add(1, Ordering::Release);
                caught_up.notify_one();
            }
        }
    });
    let mut target = 0;
    group.bench_function("floor: JSON through a channel, by hand", |b| {
        b.iter_batched(
            || (0..BATCH).map(order).collect::<Vec<_>>(),
            |events| {
                target += BATCH;
                runtime.block_on(async {
                    for event in &events {
                        let payload = serde_json::to_vec(event).unwrap_or_default();
                        if sender.send(payload).await.is_err() {
                            return;
                        }
                    }
                    while handled.load(Ordering::Acquire) < target {
                        caught_up.notified().await;
                    }
                })
            },
            BatchSize::PerIteration,
        )
    });
}

/// Events per measured iteration of the in-memory benches.
const BATCH: u64 = 1_000;

criterion_group!(
    micro,
    decoding,
    headers,
    decisions,
    metric_recording,
    in_memory
);
criterion_main!(micro);
