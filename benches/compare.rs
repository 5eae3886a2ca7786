//! eda next to a hand-written async-nats program doing the same broker work, interleaved in one
//! run (raw, eda, raw, eda, ...). Run it through `scripts/bench` (`--quick` for small counts);
//! it writes a Markdown report and prints one `ratios:` line.
//!
//! Each eda scenario starts consumers of its own (a service name per run): a durable consumer
//! left from an earlier round would first work through everything published since (an early
//! version of this bench measured exactly that and reported seconds of latency).
//!
//! The baseline is what a competent user writes without a framework: the same ~250-byte JSON
//! event, `Nats-Msg-Id` set, pipelined publishing with 1,024 acks in flight, a durable pull
//! consumer with explicit acks, batch pulls and the same concurrency (64), and, for
//! effectively-once, an atomic KV create of the processed id before the ack.
//!
//! The backlog drain publishes its events before the service starts (to a durable consumer an
//! earlier start created) and watches the consumer drain them: events/s and the longest stall,
//! each drain bounded in time so that a stall is reported rather than hung on. Its handler
//! keeps every default (`concurrency = 1`), and its baseline pulls as eda does for that handler
//! (`Pull`); `--scenario drain` runs it alone and prints its section (no report written);
//! `--scenario latency` runs the latency scenario alone and prints a line per round.

#![allow(missing_docs, missing_debug_implementations)]

use std::future::IntoFuture;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use async_nats::jetstream::{self, consumer, AckKind};
use eda::prelude::*;
use eda::testing::NatsServer;
use eda::MemoryBroker;
use futures_util::stream::FuturesUnordered;
use futures_util::StreamExt;
use tokio::sync::Semaphore;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The fields every scenario's event has: a realistic event, about 250 bytes of JSON.
struct Order {
    id: u64,
    sent_ns: u64,
    customer: String,
    email: String,
    items: Vec<String>,
    total_cents: u64,
    currency: String,
    note: String,
}

fn order(id: u64) -> Order {
    Order {
        id,
        sent_ns: now_ns(),
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

/// An eda event with [`Order`]'s fields, made from one.
trait BenchEvent: Event {
    fn make(id: u64) -> Self;
}

/// One event type per scenario: a consumer of one scenario never sees (or keeps a backlog of)
/// another's events, as the raw baseline uses a subject per scenario.
macro_rules! bench_events {
    ($($ty:ident = $name:literal),* $(,)?) => {$(
        #[event($name)]
        pub struct $ty {
            pub id: u64,
            pub sent_ns: u64,
            pub customer: String,
            pub email: String,
            pub items: Vec<String>,
            pub total_cents: u64,
            pub currency: String,
            pub note: String,
        }

        impl BenchEvent for $ty {
            fn make(id: u64) -> Self {
                let o = order(id);
                $ty {
                    id: o.id,
                    sent_ns: o.sent_ns,
                    customer: o.customer,
                    email: o.email,
                    items: o.items,
                    total_cents: o.total_cents,
                    currency: o.currency,
                    note: o.note,
                }
            }
        }
    )*};
}

bench_events! {
    PublishOrder = "bench.publish",
    SequentialOrder = "bench.sequential",
    PlainOrder = "bench.e2e",
    IdempotentOrder = "bench.idempotent",
    LatencyOrder = "bench.latency",
    SleepyOrder = "bench.sleepy",
    MemoryOrder = "bench.memory",
    FanoutOrder = "bench.fanout",
    BacklogOrder = "bench.backlog",
    DrainOrder = "bench.drain",
    IdleOrder = "bench.idle",
}

fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

const CONCURRENCY: usize = 64;

#[derive(Default)]
pub struct Latencies(Mutex<Vec<u64>>);

#[handler(service = "bench-e2e", concurrency = 64, idempotent = "off")]
async fn bench_plain(_event: PlainOrder) {}

#[handler(concurrency = 64)]
async fn bench_idempotent(_event: IdempotentOrder) {}

// The backlog drain: every option left at its default, as a first handler is written: one
// message at a time (`concurrency = 1`) and `idempotent = "redelivered"`, which records every
// success with a KV create and reads the store only for redeliveries.
#[handler]
async fn bench_drain(_event: DrainOrder) {}

#[handler(concurrency = 64, idempotent = "off")]
async fn bench_latency(event: LatencyOrder, latencies: State<Latencies>) {
    let latency = now_ns().saturating_sub(event.sent_ns);
    latencies.0.lock().map(|mut l| l.push(latency)).ok();
}

#[handler(concurrency = 64, idempotent = "off")]
async fn bench_sleep(_event: SleepyOrder) {
    tokio::time::sleep(Duration::from_millis(1)).await;
}

#[handler(service = "bench-memory", idempotent = "off")]
async fn memory_noop(_event: MemoryOrder) {}

#[handler(service = "bench-fanout", idempotent = "off")]
async fn fanout_a(_event: FanoutOrder) {}
#[handler(service = "bench-fanout", idempotent = "off")]
async fn fanout_b(_event: FanoutOrder) {}
#[handler(service = "bench-fanout", idempotent = "off")]
async fn fanout_c(_event: FanoutOrder) {}
#[handler(service = "bench-fanout", idempotent = "off")]
async fn fanout_d(_event: FanoutOrder) {}

// The memory scenario's service: ten handlers, one of them with a backlog to work through.
#[handler(
    service = "bench-rss",
    concurrency = 64,
    idempotent = "off",
    start = "all"
)]
async fn rss_backlog(_event: BacklogOrder) {}
#[handler(service = "bench-rss")]
async fn rss_1(_event: IdleOrder) {}
#[handler(service = "bench-rss")]
async fn rss_2(_event: IdleOrder) {}
#[handler(service = "bench-rss")]
async fn rss_3(_event: IdleOrder) {}
#[handler(service = "bench-rss")]
async fn rss_4(_event: IdleOrder) {}
#[handler(service = "bench-rss")]
async fn rss_5(_event: IdleOrder) {}
#[handler(service = "bench-rss")]
async fn rss_6(_event: IdleOrder) {}
#[handler(service = "bench-rss")]
async fn rss_7(_event: IdleOrder) {}
#[handler(service = "bench-rss")]
async fn rss_8(_event: IdleOrder) {}
#[handler(service = "bench-rss")]
async fn rss_9(_event: IdleOrder) {}

struct Counts {
    publish: u64,
    end_to_end: u64,
    sequential: u64,
    latency_seconds: u64,
    sleepy: u64,
    memory: u64,
    backlog: u64,
    faststream: u64,
    /// Events of the backlog drain.
    drain: u64,
    /// How long a drain may take before it is reported as stalled.
    drain_bound: Duration,
}

// ---- the hand-written baseline --------------------------------------------------------------

/// What the raw consumer does with a message between decoding it and acking it.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Work {
    /// Nothing: the no-op handler.
    Nothing,
    /// An atomic KV create of the processed id: effectively-once.
    KvCreate,
    /// Awaits a 1 ms tokio sleep while holding its concurrency slot: the concurrency scenario.
    Sleep,
}

/// How the raw consumer pulls.
#[derive(Clone, Copy)]
struct Pull {
    /// Messages handled at once.
    in_flight: usize,
    /// Messages asked for per pull request.
    batch: usize,
    /// The consumer's limit of messages awaiting an ack.
    max_ack_pending: i64,
    /// The pull requests' idle heartbeat and expiry; the client's defaults when `None`.
    heartbeat_expires: Option<(Duration, Duration)>,
}

/// The baseline's pull: 64 at a time in batches of 128.
const PULL: Pull = Pull {
    in_flight: CONCURRENCY,
    batch: 128,
    max_ack_pending: 4096,
    heartbeat_expires: None,
};

/// A hand-written consumer handling one message at a time, as a default handler
/// (`concurrency = 1`) does, for the backlog drain: async-nats' pull stream in batches of 64
/// (pulls of 2, as eda's consume loop made before it sent its own pull requests, stall in
/// async-nats' pull stream for its 35 s fallback, so they make no baseline).
const PULL_ONE_AT_A_TIME: Pull = Pull {
    in_flight: 1,
    batch: 64,
    max_ack_pending: 256,
    heartbeat_expires: Some((Duration::from_secs(5), Duration::from_secs(30))),
};

struct Raw {
    js: jetstream::Context,
    kv: jetstream::kv::Store,
    run: u64,
    /// Send the eight headers eda adds to `Nats-Msg-Id` too (same names and sizes): tells the
    /// wire format's cost from the framework's.
    eda_headers: bool,
}

impl Raw {
    async fn connect(url: &str) -> Result<Raw, BoxError> {
        let js = jetstream::new(async_nats::connect(url).await?);
        js.get_or_create_stream(jetstream::stream::Config {
            name: "RAW".into(),
            subjects: vec!["raw.>".into()],
            ..Default::default()
        })
        .await?;
        // The bucket's stream made directly, with the key-value conventions: async-nats'
        // `create_key_value` first asks for account info in a shape nats-server 2.9 does not
        // send (a user of 2.9 has to do the same).
        js.get_or_create_stream(jetstream::stream::Config {
            name: "KV_RAW_PROCESSED".into(),
            subjects: vec!["$KV.RAW_PROCESSED.>".into()],
            max_messages_per_subject: 1,
            max_age: Duration::from_secs(3600),
            allow_rollup: true,
            deny_delete: true,
            allow_direct: true,
            discard: jetstream::stream::DiscardPolicy::New,
            ..Default::default()
        })
        .await?;
        let kv = js.get_key_value("RAW_PROCESSED").await?;
        Ok(Raw {
            js,
            kv,
            run: 0,
            eda_headers: false,
        })
    }

    fn message(&self, id: u64) -> Result<(async_nats::HeaderMap, bytes::Bytes), BoxError> {
        let mut headers = async_nats::HeaderMap::new();
        if self.eda_headers {
            // eda's own id (a UUID v7) too, so that every value has eda's size.
            eda::wire::encode_into(
                &self.eda_metadata(),
                eda::WireFormat::Eda,
                false,
                |name, value| headers.insert(name, value),
            );
        } else {
            headers.insert("Nats-Msg-Id", format!("raw-{}-{id}", self.run).as_str());
        }
        Ok((headers, serde_json::to_vec(&PlainOrder::make(id))?.into()))
    }

    /// The metadata eda's publisher gives a new root event of the end-to-end scenario.
    fn eda_metadata(&self) -> eda::Metadata {
        eda::Metadata::new(PlainOrder::NAME, 1, "bench-publisher")
    }

    async fn publish_pipelined(&self, subject: &str, count: u64) -> Result<(), BoxError> {
        let mut acks = FuturesUnordered::new();
        for id in 0..count {
            let (headers, payload) = self.message(id)?;
            let ack = self
                .js
                .publish_with_headers(subject.to_owned(), headers, payload)
                .await?;
            acks.push(ack.into_future());
            if acks.len() >= 1024 {
                acks.next().await.transpose()?;
            }
        }
        while let Some(ack) = acks.next().await {
            ack?;
        }
        Ok(())
    }

    async fn publish(&mut self, count: u64) -> Result<Duration, BoxError> {
        self.run += 1;
        let started = Instant::now();
        self.publish_pipelined("raw.publish", count).await?;
        Ok(started.elapsed())
    }

    async fn sequential(&mut self, count: u64) -> Result<Duration, BoxError> {
        self.run += 1;
        let started = Instant::now();
        for id in 0..count {
            let (headers, payload) = self.message(id)?;
            self.js
                .publish_with_headers("raw.sequential", headers, payload)
                .await?
                .await?;
        }
        Ok(started.elapsed())
    }

    /// Starts a durable consumer on `subject` handling up to 64 messages at once, each with
    /// `work`; returns the count of acked messages and the task.
    async fn consume(
        &self,
        subject: &str,
        work: Work,
        latencies: Option<Arc<Latencies>>,
    ) -> Result<(Arc<AtomicU64>, tokio::task::JoinHandle<()>), BoxError> {
        let (consumer, _) = self.durable(subject, PULL).await?;
        Ok(self.spawn_consumer(consumer, PULL, work, latencies))
    }

    /// Creates this run's durable pull consumer on `subject`; returns it and its name.
    async fn durable(
        &self,
        subject: &str,
        pull: Pull,
    ) -> Result<(consumer::PullConsumer, String), BoxError> {
        let stream = self.js.get_stream("RAW").await?;
        let durable = format!("raw_{}_{}", subject.replace('.', "_"), self.run);
        let consumer: consumer::PullConsumer = stream
            .create_consumer(consumer::pull::Config {
                durable_name: Some(durable.clone()),
                filter_subject: subject.to_owned(),
                ack_policy: consumer::AckPolicy::Explicit,
                deliver_policy: consumer::DeliverPolicy::New,
                max_ack_pending: pull.max_ack_pending,
                ..Default::default()
            })
            .await?;
        Ok((consumer, durable))
    }

    /// Consumes from `consumer` in a task as `pull` says, each message with `work`; returns
    /// the count of acked messages and the task.
    fn spawn_consumer(
        &self,
        consumer: consumer::PullConsumer,
        pull: Pull,
        work: Work,
        latencies: Option<Arc<Latencies>>,
    ) -> (Arc<AtomicU64>, tokio::task::JoinHandle<()>) {
        let acked = Arc::new(AtomicU64::new(0));
        let kv = self.kv.clone();
        let task = tokio::spawn({
            let acked = Arc::clone(&acked);
            async move {
                let mut pulls = consumer.stream().max_messages_per_batch(pull.batch);
                if let Some((heartbeat, expires)) = pull.heartbeat_expires {
                    pulls = pulls.heartbeat(heartbeat).expires(expires);
                }
                let mut messages = match pulls.messages().await {
                    Ok(messages) => messages,
                    Err(e) => {
                        eprintln!("raw consumer: cannot pull: {e}");
                        return;
                    }
                };
                let permits = Arc::new(Semaphore::new(pull.in_flight));
                while let Some(message) = messages.next().await {
                    let message = match message {
                        Ok(message) => message,
                        Err(e) => {
                            eprintln!("raw consumer: {e}");
                            continue;
                        }
                    };
                    let Ok(permit) = Arc::clone(&permits).acquire_owned().await else {
                        return;
                    };
                    let (acked, kv, latencies) =
                        (Arc::clone(&acked), kv.clone(), latencies.clone());
                    tokio::spawn(async move {
                        let Ok(event) = serde_json::from_slice::<PlainOrder>(&message.payload)
                        else {
                            return;
                        };
                        if let Some(latencies) = &latencies {
                            let latency = now_ns().saturating_sub(event.sent_ns);
                            latencies.0.lock().map(|mut l| l.push(latency)).ok();
                        }
                        if work == Work::Sleep {
                            tokio::time::sleep(Duration::from_millis(1)).await;
                        }
                        // Released when the handler's work is done, as eda does: the KV
                        // create and the ack overlap with the next message's work.
                        drop(permit);
                        if work == Work::KvCreate {
                            let id = message
                                .headers
                                .as_ref()
                                .and_then(|h| h.get("Nats-Msg-Id"))
                                .map(|v| v.to_string());
                            let key = format!("svc.handler.{}", id.unwrap_or_default());
                            // Created or already there: either way the work is recorded.
                            let _ = kv.create(key, bytes::Bytes::new()).await;
                        }
                        if message.ack_with(AckKind::Ack).await.is_ok() {
                            acked.fetch_add(1, Ordering::Relaxed);
                        }
                    });
                }
            }
        });
        (acked, task)
    }

    async fn end_to_end(&mut self, count: u64, work: Work) -> Result<Duration, BoxError> {
        self.run += 1;
        let subject = match work {
            Work::Nothing => "raw.e2e0",
            Work::KvCreate => "raw.e2e1",
            Work::Sleep => "raw.sleepy",
        };
        let (acked, task) = self.consume(subject, work, None).await?;
        let started = Instant::now();
        self.publish_pipelined(subject, count).await?;
        let waited = wait_for(|| acked.load(Ordering::Relaxed) >= count).await;
        if waited.is_err() {
            eprintln!(
                "raw end to end: {} of {count} acked",
                acked.load(Ordering::Relaxed)
            );
        }
        waited?;
        let elapsed = started.elapsed();
        task.abort();
        Ok(elapsed)
    }

    /// The backlog drain by hand: the durable consumer first, then `count` events published,
    /// then the consumer started (one message at a time as a default handler, each message
    /// with the KV create of the idempotent scenario and an ack) and watched until it has
    /// drained them or `bound` has passed.
    async fn drain(&mut self, count: u64, bound: Duration) -> Result<Drain, BoxError> {
        self.run += 1;
        let subject = "raw.drain";
        let (consumer, durable) = self.durable(subject, PULL_ONE_AT_A_TIME).await?;
        self.publish_pipelined(subject, count).await?;
        let stream = self.js.get_stream("RAW").await?;
        let before = stream.consumer_info(&durable).await?;
        let started = Instant::now();
        let (_, task) = self.spawn_consumer(consumer, PULL_ONE_AT_A_TIME, Work::KvCreate, None);
        let drain = watch_drain(&stream, &durable, count, &before, started, bound).await;
        task.abort();
        Ok(drain)
    }

    async fn latency(&mut self, seconds: u64) -> Result<Vec<u64>, BoxError> {
        self.run += 1;
        let latencies = Arc::new(Latencies::default());
        let (acked, task) = self
            .consume("raw.latency", Work::Nothing, Some(Arc::clone(&latencies)))
            .await?;
        let this = &*self;
        let count = paced(seconds, |id| async move {
            let (headers, payload) = this.message(id)?;
            this.js
                .publish_with_headers("raw.latency", headers, payload)
                .await?
                .await?;
            Ok(())
        })
        .await?;
        wait_for(|| acked.load(Ordering::Relaxed) >= count).await?;
        task.abort();
        let mut latencies = latencies.0.lock().map(|l| l.clone()).unwrap_or_default();
        latencies.sort_unstable();
        Ok(latencies)
    }
}

// ---- eda ------------------------------------------------------------------------------------

async fn eda_app(
    url: &str,
    service: &str,
    handlers: &[&str],
    latencies: Option<Arc<Latencies>>,
) -> eda::Result<eda::RunningApp> {
    let mut builder = App::builder(service)
        .nats(url)
        .without_env()
        .handlers(handlers);
    if let Some(latencies) = latencies {
        builder = builder.shared_state(latencies);
    }
    builder.start().await
}

async fn eda_publish(url: &str, count: u64) -> Result<Duration, BoxError> {
    let app = eda_app(url, "bench-publisher", &[], None).await?;
    let events: Vec<PublishOrder> = (0..count).map(PublishOrder::make).collect();
    let started = Instant::now();
    app.publisher().publish_all(&events).await?;
    let elapsed = started.elapsed();
    app.shutdown().await?;
    Ok(elapsed)
}

async fn eda_sequential(url: &str, count: u64) -> Result<Duration, BoxError> {
    let app = eda_app(url, "bench-publisher", &[], None).await?;
    let publisher = app.publisher();
    let started = Instant::now();
    for id in 0..count {
        publisher.publish(&SequentialOrder::make(id)).await?;
    }
    let elapsed = started.elapsed();
    app.shutdown().await?;
    Ok(elapsed)
}

async fn eda_end_to_end<E: BenchEvent>(
    url: &str,
    service: &str,
    handler: &str,
    count: u64,
) -> Result<Duration, BoxError> {
    let consumer = eda_app(url, service, &[handler], None).await?;
    let producer = eda_app(url, "bench-publisher", &[], None).await?;
    let events: Vec<E> = (0..count).map(E::make).collect();
    let target = consumer.stats(handler).map_or(0, |s| s.handled) + count;
    let started = Instant::now();
    producer.publisher().publish_all(&events).await?;
    let waited = wait_for(|| consumer.stats(handler).map_or(0, |s| s.handled) >= target).await;
    if waited.is_err() {
        eprintln!(
            "eda end to end: {:?}, wanted {target} handled",
            consumer.stats(handler)
        );
    }
    waited?;
    let elapsed = started.elapsed();
    producer.shutdown().await?;
    consumer.shutdown().await?;
    Ok(elapsed)
}

async fn eda_latency(url: &str, seconds: u64) -> Result<Vec<u64>, BoxError> {
    let latencies = Arc::new(Latencies::default());
    let consumer = eda_app(
        url,
        &format!("bench-latency-{}", now_ns()),
        &["bench_latency"],
        Some(Arc::clone(&latencies)),
    )
    .await?;
    let producer = eda_app(url, "bench-publisher", &[], None).await?;
    let publisher = producer.publisher();
    let before = consumer.stats("bench_latency").map_or(0, |s| s.handled);
    let count = paced(seconds, |id| {
        let publisher = publisher.clone();
        async move {
            publisher.publish(&LatencyOrder::make(id)).await?;
            Ok(())
        }
    })
    .await?;
    wait_for(|| consumer.stats("bench_latency").map_or(0, |s| s.handled) >= before + count).await?;
    producer.shutdown().await?;
    consumer.shutdown().await?;
    let mut latencies = latencies.0.lock().map(|l| l.clone()).unwrap_or_default();
    latencies.sort_unstable();
    Ok(latencies)
}

async fn eda_memory<E: BenchEvent>(
    handlers: &[&str],
    service: &str,
    count: u64,
) -> Result<Duration, BoxError> {
    let app = App::builder(service)
        .memory_broker(MemoryBroker::new().with_retention(0))
        .handlers(handlers)
        .start()
        .await?;
    let events: Vec<E> = (0..count).map(E::make).collect();
    let started = Instant::now();
    app.publisher().publish_all(&events).await?;
    app.settle().await;
    let elapsed = started.elapsed();
    app.shutdown().await?;
    Ok(elapsed)
}

/// Publishes `count` events of type `E` through `producer`, 50,000 at a time.
async fn publish_backlog<E: BenchEvent>(
    producer: &eda::RunningApp,
    count: u64,
) -> Result<(), BoxError> {
    let mut next = 0;
    while next < count {
        let end = (next + 50_000).min(count);
        let events: Vec<E> = (next..end).map(E::make).collect();
        producer.publisher().publish_all(&events).await?;
        next = end;
    }
    Ok(())
}

/// The backlog drain with eda: a first start of a new service creates its durable consumer
/// (`start = "new"`) and stops; `count` events are published; a second start drains them,
/// watched until the consumer has nothing pending or awaiting an ack, or `bound` has passed.
async fn eda_drain(
    url: &str,
    js: &jetstream::Context,
    count: u64,
    bound: Duration,
) -> Result<Drain, BoxError> {
    let service = format!("bench-drain-{}", now_ns());
    eda_app(url, &service, &["bench_drain"], None)
        .await?
        .shutdown()
        .await?;
    let producer = eda_app(url, "bench-publisher", &[], None).await?;
    publish_backlog::<DrainOrder>(&producer, count).await?;
    producer.shutdown().await?;
    let stream = js.get_stream("EDA_EVENTS").await?;
    let durable = format!("{service}__bench_drain");
    let before = stream.consumer_info(&durable).await?;
    if before.num_pending != count {
        eprintln!(
            "  eda drain: {} pending before the start, {count} published",
            before.num_pending
        );
    }
    let started = Instant::now();
    let app = eda_app(url, &service, &["bench_drain"], None).await?;
    let mut drain = watch_drain(&stream, &durable, count, &before, started, bound).await;
    if let Some(stats) = app.stats("bench_drain") {
        drain.end_state.push_str(&format!(
            "; the handler: {} handled, {} duplicates, {} retried",
            stats.handled, stats.duplicates, stats.retried
        ));
    }
    if drain.elapsed.is_none() || drain.stall > Duration::from_secs(1) {
        eprintln!(
            "  eda drain: longest stall {:.1} s ({}); at the end: {}",
            drain.stall.as_secs_f64(),
            drain.stall_state,
            drain.end_state
        );
    }
    app.shutdown().await?;
    Ok(drain)
}

/// What one backlog drain measured.
struct Drain {
    count: u64,
    /// From the consumer's start until nothing was pending or awaiting an ack; `None` when
    /// the bound passed first.
    elapsed: Option<Duration>,
    /// The longest stretch in which messages were pending while the consumer's delivered
    /// stream sequence stood still (from the start: the wait for the first delivery counts).
    stall: Duration,
    /// The consumer when that stretch was at its longest.
    stall_state: String,
    /// The consumer when the watch ended.
    end_state: String,
}

impl Drain {
    fn rate(&self) -> Option<f64> {
        self.elapsed.map(|elapsed| per_second(self.count, elapsed))
    }

    /// The drain's cell in the report.
    fn cell(&self, bound: Duration) -> String {
        let stall = self.stall.as_secs_f64();
        match (self.elapsed, self.rate()) {
            (Some(elapsed), Some(rate)) => format!(
                "{rate:.0} events/s ({:.1} s); longest stall {stall:.1} s",
                elapsed.as_secs_f64()
            ),
            _ => format!(
                "not drained within {} s ({}); longest stall {stall:.1} s ({})",
                bound.as_secs(),
                self.end_state,
                self.stall_state
            ),
        }
    }
}

/// A consumer's progress through a backlog of `count`, for the report.
fn consumer_state(info: &consumer::Info, count: u64) -> String {
    format!(
        "{} of {count} delivered, {} awaiting ack, {} redelivered, {} pull requests waiting",
        count.saturating_sub(info.num_pending),
        info.num_ack_pending,
        info.num_redelivered,
        info.num_waiting
    )
}

/// Polls the consumer `name` on `stream` every 100 ms, from `started` (when its program
/// started; `before` is its info from just before) until nothing is pending or awaiting an
/// ack, or `bound` has passed. A failed poll is reported and the watch goes on.
async fn watch_drain(
    stream: &jetstream::stream::Stream,
    name: &str,
    count: u64,
    before: &consumer::Info,
    started: Instant,
    bound: Duration,
) -> Drain {
    let mut drain = Drain {
        count,
        elapsed: None,
        stall: Duration::ZERO,
        stall_state: consumer_state(before, count),
        end_state: consumer_state(before, count),
    };
    let (mut sequence, mut moved) = (before.delivered.stream_sequence, started);
    loop {
        match stream.consumer_info(name).await {
            Ok(info) => {
                let now = Instant::now();
                drain.end_state = consumer_state(&info, count);
                if info.num_pending == 0 && info.num_ack_pending == 0 {
                    drain.elapsed = Some(now - started);
                    return drain;
                }
                if info.delivered.stream_sequence != sequence {
                    if now - moved > Duration::from_secs(1) {
                        eprintln!(
                            "  drain: `{name}` stood still for {:.1} s, {:.1} s after its start, until {}",
                            (now - moved).as_secs_f64(),
                            (moved - started).as_secs_f64(),
                            drain.end_state
                        );
                    }
                    (sequence, moved) = (info.delivered.stream_sequence, now);
                } else if now - moved > drain.stall {
                    drain.stall = now - moved;
                    drain.stall_state = drain.end_state.clone();
                }
            }
            Err(e) => eprintln!("  drain: cannot read consumer `{name}`: {e}"),
        }
        if started.elapsed() > bound {
            return drain;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The backlog drain's section of the report.
fn drain_section(count: u64, bound: Duration, raw: &[Drain], eda: &[Drain]) -> String {
    let median = |drains: &[Drain]| {
        let mut rates = Series::default();
        drains
            .iter()
            .filter_map(Drain::rate)
            .for_each(|r| rates.push(r));
        rates.median()
    };
    let stalls = |drains: &[Drain]| {
        let mut stalls = Series::default();
        drains
            .iter()
            .for_each(|d| stalls.push(d.stall.as_secs_f64()));
        stalls
    };
    let (raw_stalls, eda_stalls) = (stalls(raw), stalls(eda));
    let rows: Vec<String> = raw
        .iter()
        .zip(eda)
        .enumerate()
        .map(|(i, (r, e))| format!("| {} | {} | {} |", i + 1, r.cell(bound), e.cell(bound)))
        .collect();
    format!(
        "\nBacklog drain: {count} events published before the service starts, kept for it by the \
         durable consumer an earlier start created (eda: one no-op handler with every option at its \
         default: `concurrency = 1`, `idempotent = \"redelivered\"`, which records every success \
         with a KV create; raw: the same by hand, one message at a time from async-nats' pull \
         stream in batches of 64 (5 s heartbeat, 30 s expiry, 256 awaiting an ack at most), each \
         message with a KV create and an ack). Events/s until the \
         consumer has nothing pending or awaiting an ack (its info polled every 100 ms), and the \
         longest stall: the longest time in which messages were pending but the consumer's \
         delivered stream sequence did not move (counted from the start, so the wait for the first \
         delivery is one). A drain not done after {} s is reported as such, with the consumer's \
         state.\n\n| round | raw | eda |\n| --- | --- | --- |\n{}\n\nMedians of the drains that \
         ended: raw {:.0} events/s, eda {:.0} events/s, eda / raw {:.2}; longest stall (min / \
         median / max, s): raw {:.1} / {:.1} / {:.1}, eda {:.1} / {:.1} / {:.1}.\n",
        bound.as_secs(),
        rows.join("\n"),
        median(raw),
        median(eda),
        median(eda) / median(raw),
        raw_stalls.sorted().first().copied().unwrap_or(f64::NAN),
        raw_stalls.median(),
        raw_stalls.sorted().last().copied().unwrap_or(f64::NAN),
        eda_stalls.sorted().first().copied().unwrap_or(f64::NAN),
        eda_stalls.median(),
        eda_stalls.sorted().last().copied().unwrap_or(f64::NAN),
    )
}

// ---- memory: RSS of a service in a process of its own ---------------------------------------

/// The ten handlers of the memory scenario's service.
const RSS_HANDLERS: [&str; 10] = [
    "rss_backlog",
    "rss_1",
    "rss_2",
    "rss_3",
    "rss_4",
    "rss_5",
    "rss_6",
    "rss_7",
    "rss_8",
    "rss_9",
];

/// In the child process: starts the ten-handler service; with `--count 0` reports its RSS
/// after three idle seconds, else works through `count` backlog events and reports its peak.
async fn rss_child(args: &[String]) -> Result<(), BoxError> {
    let url = arg_value(args, "--url").ok_or("--url is missing")?;
    let count: u64 = arg_value(args, "--count")
        .ok_or("--count is missing")?
        .parse()?;
    let app = App::builder("bench-rss")
        .nats(&url)
        .without_env()
        .handlers(&RSS_HANDLERS)
        .start()
        .await?;
    if count == 0 {
        tokio::time::sleep(Duration::from_secs(3)).await;
        println!("kib={}", proc_status_kib("VmRSS")?);
    } else {
        let deadline = Instant::now() + Duration::from_secs(900);
        while app.stats("rss_backlog").map_or(0, |s| s.handled) < count {
            if Instant::now() > deadline {
                return Err("the backlog was not worked through within 15 minutes".into());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        println!("kib={}", proc_status_kib("VmHWM")?);
    }
    app.shutdown().await?;
    Ok(())
}

/// A `/proc/self/status` field in KiB (`VmRSS`: resident now; `VmHWM`: the peak).
fn proc_status_kib(field: &str) -> Result<u64, BoxError> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    status
        .lines()
        .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .ok_or_else(|| format!("no {field} in /proc/self/status").into())
}

/// Runs this bench binary as the memory scenario's child; returns the KiB it reports.
async fn rss_run(url: &str, count: u64) -> Result<u64, BoxError> {
    let exe = std::env::current_exe()?;
    let args = ["--rss-child", "--url", url, "--count", &count.to_string()].map(str::to_owned);
    let output =
        tokio::task::spawn_blocking(move || std::process::Command::new(exe).args(args).output())
            .await??;
    let stdout = String::from_utf8_lossy(&output.stdout);
    match stdout.lines().rev().find_map(|l| l.strip_prefix("kib=")) {
        Some(kib) if output.status.success() => Ok(kib.trim().parse()?),
        _ => Err(format!(
            "the memory scenario's child failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        )
        .into()),
    }
}

/// Idle RSS of the ten-handler service, then its peak RSS while it works through `backlog`
/// events published before it starts (KiB, KiB).
async fn eda_rss(url: &str, backlog: u64) -> Result<(u64, u64), BoxError> {
    let idle = rss_run(url, 0).await?;
    let producer = eda_app(url, "bench-publisher", &[], None).await?;
    publish_backlog::<BacklogOrder>(&producer, backlog).await?;
    producer.shutdown().await?;
    let peak = rss_run(url, backlog).await?;
    Ok((idle, peak))
}

// ---- peers: other frameworks' programs doing scenario 2 ---------------------------------------

/// A peer's program: the command line in `variable` (set by `scripts/bench`), which takes
/// `--url --events --concurrency --name` and prints `{"events_per_s": ..}` last.
struct Peer {
    /// Goes into the peer's stream and subject names (`[A-Za-z0-9_-]`).
    name: &'static str,
    /// The row of the report.
    label: &'static str,
    variable: &'static str,
    count: u64,
    /// Arguments of this row's variant (`--eda-headers`).
    args: &'static [&'static str],
}

/// Runs `peer` once against `url`; its events/s.
async fn run_peer(peer: &Peer, url: &str, run: usize) -> Result<f64, BoxError> {
    let command = std::env::var(peer.variable).unwrap_or_default();
    let mut words = command.split_whitespace().map(str::to_owned);
    let program = words
        .next()
        .ok_or_else(|| format!("{} is not set (scripts/bench sets it)", peer.variable))?;
    let mut args: Vec<String> = words.collect();
    args.extend(peer.args.iter().map(|&a| a.to_owned()));
    args.extend(
        [
            "--url",
            url,
            "--events",
            &peer.count.to_string(),
            "--concurrency",
            &CONCURRENCY.to_string(),
            "--name",
            &format!("{}{run}", peer.name),
        ]
        .map(str::to_owned),
    );
    let output = tokio::task::spawn_blocking(move || {
        std::process::Command::new(program).args(args).output()
    })
    .await??;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let rate = stdout
        .lines()
        .rev()
        .find_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .and_then(|v| v.get("events_per_s")?.as_f64());
    match rate {
        Some(rate) if output.status.success() => Ok(rate),
        _ => {
            let stderr = String::from_utf8_lossy(&output.stderr);
            let tail: Vec<&str> = stderr.lines().rev().take(5).collect();
            Err(format!(
                "{command} exited with {}: {}",
                output.status,
                tail.into_iter().rev().collect::<Vec<_>>().join(" / ")
            )
            .into())
        }
    }
}

// ---- criterion micro-benchmarks (run by scripts/bench before this) ---------------------------

/// What each micro-benchmark of `benches/micro.rs` measures, by criterion id.
const MICRO: [(&str, &str); 13] = [
    (
        "decode/current version",
        "JSON payload to the typed event, version as sent",
    ),
    (
        "decode/version 1, upcast",
        "a version-1 payload decoded and upcast to version 2",
    ),
    (
        "headers/new metadata (id, time)",
        "per publish: UUID v7 id and time",
    ),
    (
        "headers/encode a root event into a NATS header map",
        "`Nats-Msg-Id` and `Eda-Source`: the headers of a plain publish",
    ),
    (
        "headers/encode a follow-up into a NATS header map",
        "the 6 headers of a version-2 follow-up in a trace, the most an event carries",
    ),
    (
        "headers/decode from a NATS header map",
        "that follow-up's metadata read back in one pass over its headers",
    ),
    (
        "decide/success",
        "the delivery decision after a successful attempt",
    ),
    (
        "decide/failure, retry with backoff",
        "the decision after a failure: backoff delay with jitter",
    ),
    (
        "metrics/one handled message (lag, in flight, duration, outcome)",
        "every metric eda records per handled message, into a Prometheus recorder",
    ),
    (
        "in memory/one no-op handler",
        "publish and handle through the in-memory transport, per event",
    ),
    (
        "in memory/one no-op handler behind a closed breaker",
        "the same handler with `breaker = \"micro\"`: what a closed circuit breaker costs",
    ),
    (
        "in memory/fan-out to 4 handlers",
        "the same with 4 handlers, per published event",
    ),
    (
        "in memory/floor: JSON through a channel, by hand",
        "the floor: serialize, a tokio channel, decode; no framework",
    ),
];

/// The micro-benchmark table from criterion's saved estimates (`<target>/criterion`).
fn micro_benchmarks() -> String {
    let target = std::env::var("CARGO_TARGET_DIR").unwrap_or_else(|_| "target".into());
    let root = std::path::Path::new(&target).join("criterion");
    let mut table = String::from(
        "\nMicro-benchmarks (criterion, `cargo bench --bench micro`; mean time per operation):\n\n\
         | benchmark | what it measures | time |\n| --- | --- | --- |\n",
    );
    for (id, meaning) in MICRO {
        let (group, function) = id.split_once('/').unwrap_or((id, ""));
        let time = criterion_mean_ns(&root, group, function).map_or_else(
            || "not run".to_owned(),
            |ns| {
                if id.starts_with("in memory") {
                    // One iteration is a batch of events; report per event and as a rate.
                    let per_event = ns / MICRO_BATCH;
                    format!("{per_event:.0} ns ({:.0} events/s)", 1e9 / per_event)
                } else {
                    format!("{ns:.0} ns")
                }
            },
        );
        table.push_str(&format!("| {id} | {meaning} | {time} |\n"));
    }
    table
}

/// Events per iteration of the in-memory micro-benchmarks (`BATCH` in `benches/micro.rs`).
const MICRO_BATCH: f64 = 1_000.0;

/// The mean of one criterion benchmark, found by its ids in `benchmark.json`.
fn criterion_mean_ns(root: &std::path::Path, group: &str, function: &str) -> Option<f64> {
    for entry in std::fs::read_dir(root.join(group_dir(group)))
        .ok()?
        .flatten()
    {
        let new = entry.path().join("new");
        let Ok(id) = std::fs::read_to_string(new.join("benchmark.json")) else {
            continue;
        };
        let id: serde_json::Value = serde_json::from_str(&id).ok()?;
        if id.get("function_id").and_then(|f| f.as_str()) == Some(function) {
            let estimates = std::fs::read_to_string(new.join("estimates.json")).ok()?;
            let estimates: serde_json::Value = serde_json::from_str(&estimates).ok()?;
            return estimates.get("mean")?.get("point_estimate")?.as_f64();
        }
    }
    None
}

/// Criterion's directory name for a group (it keeps letters, digits, `-`, `_` and spaces).
fn group_dir(group: &str) -> String {
    group
        .chars()
        .map(|c| {
            if c.is_alphanumeric() || "-_ ".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect()
}

// ---- helpers --------------------------------------------------------------------------------

/// Publishes at 1,000 events/s for `seconds`; returns how many were published.
async fn paced<'a, F, Fut>(seconds: u64, mut publish: F) -> Result<u64, BoxError>
where
    F: FnMut(u64) -> Fut,
    Fut: std::future::Future<Output = Result<(), BoxError>> + 'a,
{
    let started = tokio::time::Instant::now();
    let count = seconds * 1000;
    for id in 0..count {
        publish(id).await?;
        tokio::time::sleep_until(started + Duration::from_millis(id + 1)).await;
    }
    Ok(count)
}

/// Polls `done` every millisecond for at most two minutes.
async fn wait_for(mut done: impl FnMut() -> bool) -> Result<(), BoxError> {
    let deadline = Instant::now() + Duration::from_secs(120);
    while !done() {
        if Instant::now() > deadline {
            return Err("the consumer did not catch up within two minutes".into());
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    Ok(())
}

/// The mean time `tokio::time::sleep(1 ms)` really takes, over `count` sleeps in a row:
/// tokio's timer has millisecond granularity, so a sleep ends on a later tick than asked.
async fn mean_sleep(count: u32) -> Duration {
    let started = Instant::now();
    for _ in 0..count {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    started.elapsed() / count
}

/// The bytes each message carries: payload and header block, eda's and the baseline's. The
/// NATS header block is `NATS/1.0\r\n`, then `Name: value\r\n` per header, then `\r\n`.
fn header_sizes(raw: &Raw) -> Result<String, BoxError> {
    let block = |headers: &[(&str, String)]| {
        headers
            .iter()
            .map(|(name, value)| name.len() + value.len() + 4)
            .sum::<usize>()
            + "NATS/1.0\r\n\r\n".len()
    };
    let mut eda_headers: Vec<(&str, String)> = Vec::new();
    eda::wire::encode_into(
        &raw.eda_metadata(),
        eda::WireFormat::Eda,
        false,
        |name, value| eda_headers.push((name, value.to_owned())),
    );
    // The ids as the baseline (`raw-<run>-<n>`) and the ruststream peer (`<name><round>-<n>`)
    // make them.
    let raw_headers = [("Nats-Msg-Id", format!("raw-{}-{}", raw.run, 12_345))];
    let peer_headers = [("Nats-Msg-Id", format!("ruststream1-{}", 12_345))];
    let payload = serde_json::to_vec(&PlainOrder::make(12_345))?.len();
    Ok(format!(
        "Per message of the end-to-end scenario: payload {payload} bytes; header block {} bytes \
         with eda's headers ({} of them on a plain publish: {}), with `Nats-Msg-Id` alone {} bytes \
         (raw baseline) and {} bytes (ruststream peer).",
        block(&eda_headers),
        eda_headers.len(),
        eda_headers
            .iter()
            .map(|(name, _)| format!("`{name}`"))
            .collect::<Vec<_>>()
            .join(", "),
        block(&raw_headers),
        block(&peer_headers)
    ))
}

fn per_second(count: u64, elapsed: Duration) -> f64 {
    count as f64 / elapsed.as_secs_f64()
}

/// `p50 / p99 / max | p50 / p99 / max` in ms of raw's and eda's sorted latencies.
fn latency_cells(raw: &[u64], eda: &[u64]) -> String {
    let cell = |l: &[u64]| {
        format!(
            "{:.2} / {:.2} / {:.2}",
            percentile(l, 0.5),
            percentile(l, 0.99),
            percentile(l, 1.0)
        )
    };
    format!("{} | {}", cell(raw), cell(eda))
}

fn percentile(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index.min(sorted.len() - 1)] as f64 / 1e6
}

#[derive(Default)]
struct Series(Vec<f64>);

impl Series {
    fn push(&mut self, v: f64) {
        self.0.push(v);
    }
    fn sorted(&self) -> Vec<f64> {
        let mut v = self.0.clone();
        v.sort_by(|a, b| a.total_cmp(b));
        v
    }
    fn median(&self) -> f64 {
        let v = self.sorted();
        v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
    }
    fn summary(&self, unit: &str) -> String {
        let v = self.sorted();
        match (v.first(), v.last()) {
            (Some(min), Some(max)) => {
                format!("{:.0} / {:.0} / {:.0} {unit}", min, self.median(), max)
            }
            _ => "n/a".into(),
        }
    }
}

fn arg_value(args: &[String], name: &str) -> Option<String> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let args: Vec<String> = std::env::args().collect();
    if args.iter().any(|a| a == "--rss-child") {
        return rss_child(&args).await;
    }
    if !args.iter().any(|a| a == "--bench") {
        // `cargo test --all-targets` runs bench targets without `--bench`: a debug build's
        // figures would mean nothing, and `scripts/test` runs `scripts/bench --quick` itself.
        eprintln!(
            "compare: a benchmark; run it with `scripts/bench` (or `cargo bench --bench compare`)"
        );
        return Ok(());
    }
    let quick = args.iter().any(|a| a == "--quick");
    let rounds: usize = arg_value(&args, "--rounds").map_or(Ok(3), |r| r.parse())?;
    let out = arg_value(&args, "--out").unwrap_or_else(|| "benches/RESULTS.md".into());
    let counts = if quick {
        Counts {
            publish: 5_000,
            end_to_end: 5_000,
            sequential: 500,
            latency_seconds: 2,
            sleepy: 3_000,
            memory: 100_000,
            backlog: 20_000,
            faststream: 2_000,
            drain: 20_000,
            // Short: scripts/test runs the quick bench on every run, and a stall of the pull
            // stream lasts about 35 s (its 30 s expiry and a heartbeat); this reports one
            // without waiting it out. A drain without a stall takes a few seconds.
            drain_bound: Duration::from_secs(20),
        }
    } else {
        Counts {
            publish: 50_000,
            end_to_end: 30_000,
            sequential: 5_000,
            latency_seconds: 10,
            sleepy: 20_000,
            memory: 1_000_000,
            backlog: 500_000,
            faststream: 10_000,
            drain: 100_000,
            drain_bound: Duration::from_secs(300),
        }
    };
    let server = NatsServer::start()?;
    let url = server.url();
    let mut raw = Raw::connect(&url).await?;
    let (mut raw_drains, mut eda_drains) = (Vec::new(), Vec::new());
    if arg_value(&args, "--scenario").as_deref() == Some("drain") {
        // The backlog drain alone: its section on stdout, no report written.
        for round in 1..=rounds {
            eprintln!("round {round} of {rounds}: backlog drain");
            raw_drains.push(raw.drain(counts.drain, counts.drain_bound).await?);
            eda_drains.push(eda_drain(&url, &raw.js, counts.drain, counts.drain_bound).await?);
        }
        println!(
            "{}",
            drain_section(counts.drain, counts.drain_bound, &raw_drains, &eda_drains)
        );
        return Ok(());
    }
    if arg_value(&args, "--scenario").as_deref() == Some("latency") {
        // The latency scenario alone, raw and eda interleaved: one line per round on stdout.
        println!("round | raw p50 / p99 / max (ms) | eda p50 / p99 / max (ms) | eda / raw p99");
        for round in 1..=rounds {
            let r = raw.latency(counts.latency_seconds).await?;
            let e = eda_latency(&url, counts.latency_seconds).await?;
            println!(
                "{round} | {} | {:.2}",
                latency_cells(&r, &e),
                percentile(&e, 0.99) / percentile(&r, 0.99)
            );
        }
        return Ok(());
    }

    let names = [
        "publish (pipelined)",
        "end to end, idempotency off",
        "end to end, idempotent (KV create)",
        "sequential publish",
    ];
    let mut raw_rates: Vec<Series> = names.iter().map(|_| Series::default()).collect();
    let mut eda_rates: Vec<Series> = names.iter().map(|_| Series::default()).collect();
    let (mut raw_p99, mut eda_p99) = (Series::default(), Series::default());
    // The raw baseline again with eda's headers, one series per row of `names`.
    let mut wide_rates: Vec<Series> = names.iter().map(|_| Series::default()).collect();
    let mut latency_rows = Vec::new();
    let (mut sleepy, mut raw_sleepy, mut sleep_ms) =
        (Series::default(), Series::default(), Series::default());
    let (mut memory, mut fanout) = (Series::default(), Series::default());
    let peers = [
        Peer {
            name: "ruststream",
            label: "ruststream",
            variable: "EDA_BENCH_RUSTSTREAM",
            count: counts.end_to_end,
            args: &[],
        },
        Peer {
            name: "ruststream_h",
            label: "ruststream, with eda's headers",
            variable: "EDA_BENCH_RUSTSTREAM",
            count: counts.end_to_end,
            args: &["--eda-headers"],
        },
        Peer {
            name: "faststream",
            label: "faststream",
            variable: "EDA_BENCH_FASTSTREAM",
            count: counts.faststream,
            args: &[],
        },
    ];
    let mut peer_rates: Vec<Series> = peers.iter().map(|_| Series::default()).collect();
    let mut peer_errors: Vec<Option<String>> = peers.iter().map(|_| None).collect();
    for round in 1..=rounds {
        eprintln!("round {round} of {rounds}");
        eprintln!("  publish");
        raw_rates[0].push(per_second(
            counts.publish,
            raw.publish(counts.publish).await?,
        ));
        eda_rates[0].push(per_second(
            counts.publish,
            eda_publish(&url, counts.publish).await?,
        ));
        eprintln!("  raw with eda's headers");
        raw.eda_headers = true;
        wide_rates[0].push(per_second(
            counts.publish,
            raw.publish(counts.publish).await?,
        ));
        wide_rates[1].push(per_second(
            counts.end_to_end,
            raw.end_to_end(counts.end_to_end, Work::Nothing).await?,
        ));
        raw.eda_headers = false;
        eprintln!("  end to end");
        raw_rates[1].push(per_second(
            counts.end_to_end,
            raw.end_to_end(counts.end_to_end, Work::Nothing).await?,
        ));
        eda_rates[1].push(per_second(
            counts.end_to_end,
            eda_end_to_end::<PlainOrder>(&url, "bench-e2e", "bench_plain", counts.end_to_end)
                .await?,
        ));
        for (i, peer) in peers.iter().enumerate() {
            eprintln!("  end to end, {}", peer.label);
            match run_peer(peer, &url, round).await {
                Ok(rate) => peer_rates[i].push(rate),
                Err(e) => {
                    eprintln!("  {}: {e}", peer.label);
                    peer_errors[i] = Some(e.to_string());
                }
            }
        }
        eprintln!("  end to end, idempotent");
        raw_rates[2].push(per_second(
            counts.end_to_end,
            raw.end_to_end(counts.end_to_end, Work::KvCreate).await?,
        ));
        raw.eda_headers = true;
        wide_rates[2].push(per_second(
            counts.end_to_end,
            raw.end_to_end(counts.end_to_end, Work::KvCreate).await?,
        ));
        raw.eda_headers = false;
        eda_rates[2].push(per_second(
            counts.end_to_end,
            eda_end_to_end::<IdempotentOrder>(
                &url,
                "bench-idem",
                "bench_idempotent",
                counts.end_to_end,
            )
            .await?,
        ));
        eprintln!("  sequential");
        raw_rates[3].push(per_second(
            counts.sequential,
            raw.sequential(counts.sequential).await?,
        ));
        raw.eda_headers = true;
        wide_rates[3].push(per_second(
            counts.sequential,
            raw.sequential(counts.sequential).await?,
        ));
        raw.eda_headers = false;
        eda_rates[3].push(per_second(
            counts.sequential,
            eda_sequential(&url, counts.sequential).await?,
        ));
        eprintln!("  latency");
        let r = raw.latency(counts.latency_seconds).await?;
        let e = eda_latency(&url, counts.latency_seconds).await?;
        raw_p99.push(percentile(&r, 0.99));
        eda_p99.push(percentile(&e, 0.99));
        latency_rows.push(format!("| {round} | {} |", latency_cells(&r, &e)));
        eprintln!("  concurrency, in memory");
        sleep_ms.push(mean_sleep(1000).await.as_secs_f64() * 1e3);
        raw_sleepy.push(per_second(
            counts.sleepy,
            raw.end_to_end(counts.sleepy, Work::Sleep).await?,
        ));
        sleepy.push(per_second(
            counts.sleepy,
            eda_end_to_end::<SleepyOrder>(&url, "bench-sleep", "bench_sleep", counts.sleepy)
                .await?,
        ));
        memory.push(per_second(
            counts.memory,
            eda_memory::<MemoryOrder>(&["memory_noop"], "bench-memory", counts.memory).await?,
        ));
        fanout.push(per_second(
            counts.memory / 4,
            eda_memory::<FanoutOrder>(
                &["fanout_a", "fanout_b", "fanout_c", "fanout_d"],
                "bench-fanout",
                counts.memory / 4,
            )
            .await?,
        ));
        // One drain in a quick run: it is the longest scenario when it stalls.
        if quick && round > 1 {
            continue;
        }
        eprintln!("  backlog drain");
        raw_drains.push(raw.drain(counts.drain, counts.drain_bound).await?);
        eda_drains.push(eda_drain(&url, &raw.js, counts.drain, counts.drain_bound).await?);
    }
    eprintln!("memory: idle, then a backlog of {}", counts.backlog);
    let (idle_kib, peak_kib) = eda_rss(&url, counts.backlog).await?;

    let ratio = |i: usize| eda_rates[i].median() / raw_rates[i].median();
    let mut report = String::new();
    report.push_str("# eda benchmarks\n\n");
    report.push_str(&format!(
        "Command: `scripts/bench{}` ({rounds} rounds, raw and eda interleaved in each round; min / median / max).\n\n",
        if quick { " --quick" } else { "" }
    ));
    report.push_str(&format!("Machine: {}\n\n", machine()));
    // The targets of the benchmark issue, each against this run's figures.
    let wide = |i: usize| eda_rates[i].median() / wide_rates[i].median();
    // What 64 handlers awaiting `sleep(1 ms)` can reach with the sleep this machine gives.
    let sleep_bound = CONCURRENCY as f64 * 1e3 / sleep_ms.median();
    let criterion_root = std::path::Path::new(
        &std::env::var("CARGO_TARGET_DIR").unwrap_or_else(|_| "target".into()),
    )
    .join("criterion");
    let per_second_of = |function: &str| {
        criterion_mean_ns(&criterion_root, "in memory", function).map(|ns| 1e9 * MICRO_BATCH / ns)
    };
    let (criterion_memory, floor) = (
        per_second_of("one no-op handler"),
        per_second_of("floor: JSON through a channel, by hand"),
    );
    let peer_ratio = |i: usize| eda_rates[1].median() / peer_rates[i].median();
    let targets = [
        Target::ratio("publish ≥ 0.95 × raw", ratio(0), 0.95, Some(wide(0)), WIRE),
        Target::ratio("end to end (off) ≥ 0.90 × raw", ratio(1), 0.90, Some(wide(1)), WIRE),
        Target::ratio(
            "end to end (KV) ≥ 0.90 × raw's KV create",
            ratio(2),
            0.90,
            Some(wide(2)),
            WIRE,
        ),
        Target::ratio("sequential publish ≥ 0.95 × raw", ratio(3), 0.95, Some(wide(3)), WIRE),
        Target {
            target: "latency p99 ≤ 1.2 × raw",
            measured: format!("{:.2} ×", eda_p99.median() / raw_p99.median()),
            same_headers: String::new(),
            met: eda_p99.median() / raw_p99.median() <= 1.2,
            why: "see the latency table and the findings (the scenario alone: `--scenario latency`)",
        },
        Target {
            target: "in memory ≥ 0.8 × the hand-written floor (criterion)",
            measured: match (criterion_memory, floor) {
                (Some(eda), Some(floor)) => format!(
                    "{:.2} × ({eda:.0}/s against {floor:.0}/s; {:.0}/s with a million events in one call)",
                    eda / floor,
                    memory.median()
                ),
                _ => format!("not run ({:.0}/s with a million events in one call)", memory.median()),
            },
            same_headers: String::new(),
            met: matches!((criterion_memory, floor), (Some(eda), Some(floor)) if eda >= 0.8 * floor),
            why: MEMORY,
        },
        Target {
            target: "concurrency ≥ 50% of 64,000/s",
            measured: format!(
                "{:.0}% ({:.0}% of the {:.0}/s that tokio's timer allows; raw {:.0}%)",
                sleepy.median() / 640.0,
                100.0 * sleepy.median() / sleep_bound,
                sleep_bound,
                100.0 * raw_sleepy.median() / sleep_bound
            ),
            same_headers: String::new(),
            met: sleepy.median() >= 32_000.0,
            why: "tokio's 1 ms sleep lasts longer here: 64 sleeping handlers cannot reach 32,000/s",
        },
        Target {
            target: "idle RSS ≤ 20 MiB; backlog peak ≤ 64 MiB",
            measured: format!(
                "{:.1} MiB; {:.1} MiB",
                idle_kib as f64 / 1024.0,
                peak_kib as f64 / 1024.0
            ),
            same_headers: String::new(),
            met: idle_kib <= 20 * 1024 && peak_kib <= 64 * 1024,
            why: "",
        },
        Target::ratio("end to end ≥ 5 × FastStream", peer_ratio(2), 5.0, None, ""),
        Target::ratio(
            "end to end ≥ 1.1 × ruststream-nats",
            peer_ratio(0),
            1.1,
            Some(peer_ratio(1)),
            "ruststream-nats sends one header; the column compares it sending eda's two",
        ),
    ];
    report.push_str(
        "Targets of the benchmark issue (medians of this run):\n\n\
         | target | eda | with eda's headers on both sides | met | if not, why |\n\
         | --- | --- | --- | --- | --- |\n",
    );
    for target in &targets {
        report.push_str(&target.row());
    }
    report.push('\n');
    report.push_str("| scenario | count | raw async-nats (events/s) | eda (events/s) | eda / raw (medians) |\n| --- | --- | --- | --- | --- |\n");
    let scenario_counts = [
        counts.publish,
        counts.end_to_end,
        counts.end_to_end,
        counts.sequential,
    ];
    for (i, name) in names.iter().enumerate() {
        report.push_str(&format!(
            "| {name} | {} | {} | {} | {:.2} |\n",
            scenario_counts[i],
            raw_rates[i].summary(""),
            eda_rates[i].summary(""),
            ratio(i)
        ));
    }
    let wide_names = [
        "publish, raw with eda's headers",
        "end to end (off), raw with eda's headers",
        "end to end, idempotent (KV create), raw with eda's headers",
        "sequential publish, raw with eda's headers",
    ];
    for (i, name) in wide_names.iter().enumerate() {
        report.push_str(&format!(
            "| {name} | {} | {} | | {:.2} (eda / this) |\n",
            scenario_counts[i],
            wide_rates[i].summary(""),
            eda_rates[i].median() / wide_rates[i].median()
        ));
    }
    report.push_str(&format!("\n{}\n", header_sizes(&raw)?));
    report.push_str(&format!(
        "\nPrice of effectively-once (idempotent / off, eda medians): {:.2}\n",
        eda_rates[2].median() / eda_rates[1].median()
    ));
    report.push_str(&format!(
        "\nLatency, publish to handler start, at 1,000 events/s for {} s (ms, p50 / p99 / max):\n\n| round | raw | eda |\n| --- | --- | --- |\n{}\n",
        counts.latency_seconds,
        latency_rows.join("\n")
    ));
    report.push_str(&format!(
        "\nConcurrency: a handler awaiting a 1 ms sleep, `concurrency = 64`, {} events: raw {} events/s, \
         eda {} events/s, eda / raw {:.2}; raw {:.0}% and eda {:.0}% of the 64,000/s bound (medians). \
         `tokio::time::sleep(1 ms)` takes {:.3} ms here (mean of 1,000 in a row, median of the rounds; \
         min / max {:.3} / {:.3}): the real bound is 64 / that = {:.0} events/s, of which raw reaches {:.0}% \
         and eda {:.0}%.\n",
        counts.sleepy,
        raw_sleepy.summary(""),
        sleepy.summary(""),
        sleepy.median() / raw_sleepy.median(),
        raw_sleepy.median() / 640.0,
        sleepy.median() / 640.0,
        sleep_ms.median(),
        sleep_ms.sorted().first().copied().unwrap_or(f64::NAN),
        sleep_ms.sorted().last().copied().unwrap_or(f64::NAN),
        sleep_bound,
        100.0 * raw_sleepy.median() / sleep_bound,
        100.0 * sleepy.median() / sleep_bound
    ));
    report.push_str(&format!(
        "\nIn memory: {} events through one no-op handler: {} events/s; fan-out of {} events to 4 handlers: {} events/s (deliveries = 4 × that).\n",
        counts.memory,
        memory.summary(""),
        counts.memory / 4,
        fanout.summary("")
    ));
    report.push_str(&format!(
        "\nMemory: a service with 10 handlers (process of its own): {:.1} MiB resident when idle; \
         {:.1} MiB at its peak while one handler (`concurrency = 64`) works through a backlog of {} events \
         published before it started.\n",
        idle_kib as f64 / 1024.0,
        peak_kib as f64 / 1024.0,
        counts.backlog
    ));
    report.push_str(&drain_section(
        counts.drain,
        counts.drain_bound,
        &raw_drains,
        &eda_drains,
    ));
    report.push_str("\nPeers, end to end (scenario 2: publish while one no-op handler with concurrency 64 consumes, pull consumer, explicit ack):\n\n| peer | count | peer (events/s) | eda / peer (medians, eda idempotency off) |\n| --- | --- | --- | --- |\n");
    for (i, peer) in peers.iter().enumerate() {
        let result = match &peer_errors[i] {
            Some(error) => format!(
                "| {} | {} | failed: {error} | n/a |\n",
                peer.label, peer.count
            ),
            None => format!(
                "| {} | {} | {} | {:.2} |\n",
                peer.label,
                peer.count,
                peer_rates[i].summary(""),
                eda_rates[1].median() / peer_rates[i].median()
            ),
        };
        report.push_str(&result);
    }
    report.push_str(&micro_benchmarks());
    report.push_str(FINDINGS);
    std::fs::write(&out, &report)?;
    println!("{report}");
    println!(
        "ratios: publish={:.2} end_to_end={:.2} end_to_end_idempotent={:.2} latency_p99={:.2} inmemory_events_per_s={:.0}",
        ratio(0),
        ratio(1),
        ratio(2),
        eda_p99.median() / raw_p99.median(),
        memory.median()
    );
    drop(server);
    Ok(())
}

/// Why the publish and end-to-end targets against a baseline sending one header can be missed.
const WIRE: &str =
    "compare the rows 'raw with eda's headers' (`Eda-Source` too): what is left is eda's own cost";

/// Why the in-memory target is missed.
const MEMORY: &str = "allocation and JSON: see the findings below the tables";

/// One target of the benchmark issue and this run's figure.
struct Target {
    target: &'static str,
    measured: String,
    /// The same figure against the baseline sending eda's headers, where there is one.
    same_headers: String,
    met: bool,
    why: &'static str,
}

impl Target {
    /// A target on a ratio, with the ratio against the baseline sending eda's headers.
    fn ratio(
        target: &'static str,
        value: f64,
        at_least: f64,
        same_headers: Option<f64>,
        why: &'static str,
    ) -> Target {
        Target {
            target,
            measured: format!("{value:.2} ×"),
            same_headers: same_headers.map_or(String::new(), |same| format!("{same:.2} ×")),
            met: value >= at_least,
            why,
        }
    }

    fn row(&self) -> String {
        let (met, why) = if self.met {
            ("yes", "")
        } else {
            ("no", self.why)
        };
        format!(
            "| {} | {} | {} | {met} | {why} |\n",
            self.target, self.measured, self.same_headers
        )
    }
}

/// What the numbers above do not say by themselves.
const FINDINGS: &str = "
Findings:

- Publish, end to end and sequential publish: eda's messages carry the headers of DESIGN.md
  section 4, only those the receiver cannot derive: a plain publish sends `Nats-Msg-Id` and
  `Eda-Source` (their bytes are in the line under the table); the baseline sends
  `Nats-Msg-Id` alone. The rows 'raw with eda's headers' run the same hand-written program
  with eda's two headers, for each of the four scenarios: what is left between them and eda
  is the framework's own cost. Before the lean format a plain publish carried 8 headers (a
  372-byte header block) and eda reached 0.71 (publish) and 0.80 (end to end) of raw.
- Concurrency: the raw figure is the same work written by hand (64 tasks, each awaiting the
  sleep before its ack), in the same rounds. tokio's timer has millisecond granularity and a
  sleep never ends early, so `sleep(1 ms)` lasts longer than 1 ms (the mean measured in the
  run is in the concurrency line) and no tokio program reaches the 64,000/s bound: 64 / that
  mean is the bound that can be reached; see the line for raw's and eda's share of it.
- In memory: the 'floor' micro-benchmark (serialize, a tokio channel, decode, written by
  hand) is the ceiling of any in-process transport of these JSON events on this machine.
  What eda adds per event, in a `perf record` of the criterion benchmark: the allocator
  (malloc and free are about a quarter of the samples: the metadata's strings, the shared
  metadata and stored message, the handler's task and context), clock reads (metrics
  durations, the handler's timeout) and the delivery bookkeeping (permit, settlement, the
  stats). A typed path that skips JSON between a publisher and a handler of the same type
  is not built: the floor pays JSON too, and the gap to it is eda's own per-message work.
- Peers: ruststream-nats sends only `Nats-Msg-Id` and pulls in batches of 200; the row
  'ruststream, with eda's headers' runs the same peer with eda's headers (same names and
  value sizes, written by hand in the peer and sent through ruststream's own publisher), so
  eda / that row compares the two frameworks with the same bytes on the wire. FastStream
  runs its publisher and consumer on one Python event loop (one core).
- Fixed under the benchmark issue, first pass (criterion, before -> after, on the machine of
  that run): a new event's metadata 667 -> 248 ns (UUID v7 ids drew on the OS for every
  event: a per-thread generator seeded once now); header encoding 1.37 -> 1.02 us (static
  header names); in memory, one handler 260k -> 309k events/s (`publish_all` hands messages
  to the transport as it encodes them, the in-memory broker queues them in batches). The eda
  scenarios also got an event type each (before, stopped consumers of earlier scenarios kept
  collecting every scenario's events).
- Second pass (perf showed the allocator and copies ahead of eda's own code): the
  traceparent is written in place; JSON goes into a buffer sized like the last payloads;
  received header values are read without copying the header map; acks share one sender per
  connection instead of cloning a JetStream context (which allocates) three times per
  message; consume loops pin their stop signal once instead of registering a waiter per
  message; the failure paths and the in-progress ack run in boxed futures, so a message's
  task shrank from 2,920 to 1,608 bytes (allocated and copied per message). Measured with a
  one-off harness built against the commit before and after, same machine, three runs each:
  in memory 194k -> 270k events/s (8.2 -> 6.0 us of CPU per event); draining a backlog of
  30,000 events from JetStream with 64 in flight, 45 -> 35 us of the client's CPU per event.
- Latency: in this report the scenario runs in each round after the throughput scenarios, on
  a server still holding their streams, and its p99 moves with them (raw's own p99 ranges
  over several times between rounds). Run alone (`--scenario latency`, raw and eda
  interleaved), eda's p99 is raw's: 6 rounds of 10 s gave eda / raw 0.74 to 1.34, median 1.0,
  both near 0.5 ms.
- Third pass (lean wire format issue): the event name and the service name are shared
  strings (`Arc<str>`: every event of a type points at one, where each owned three copies
  that the consumer's thread freed), the id and the event time come from one clock read, and
  per message the clock is read for the metrics and the handler's deadline only (the breaker's
  slow-call timing and the pull-ahead pacing read it only where they apply). Criterion, in
  memory, one handler, on one machine in one session: 472k events/s before, 496k to 534k
  after (5 runs; the floor moved between 797k and 1,175k/s over the same runs).
";

fn machine() -> String {
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let nats = eda::testing::nats_server_binary()
        .ok()
        .and_then(|b| std::process::Command::new(b).arg("--version").output().ok())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default();
    format!(
        "{cores} cores, Linux {}, {nats}, eda {}",
        kernel.trim(),
        env!("CARGO_PKG_VERSION")
    )
}
