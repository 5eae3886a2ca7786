//! The fault plan of FAULTS.md, one test per scenario (`fault_NN_<what>`), each on real
//! `nats-server` processes and checked with the plan's bookkeeping: what was attempted,
//! acked by the broker, handled (side effects, per id) and dead-lettered. The scenarios tested
//! elsewhere before this file existed keep their tests there (`tests/jetstream.rs`,
//! `tests/delivery.rs`, `tests/consume.rs`, `tests/signals.rs`, `tests/breaker.rs`).
#![allow(missing_docs, missing_debug_implementations)]

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream;

use eda::prelude::*;
use eda::testing::{NatsServer, TestApp};

/// The plan's bookkeeping: side effects per key, in the order they happened.
#[derive(Default)]
pub struct Book {
    handled: Mutex<Vec<(u32, u32)>>,
    failed_once: Mutex<Vec<(u32, u32)>>,
}

impl Book {
    fn handled(&self) -> Vec<(u32, u32)> {
        self.handled.lock().unwrap().clone()
    }

    /// Per key, the sequence numbers in the order their side effects ran.
    fn per_key(&self) -> HashMap<u32, Vec<u32>> {
        let mut keys: HashMap<u32, Vec<u32>> = HashMap::new();
        for (key, seq) in self.handled() {
            keys.entry(key).or_default().push(seq);
        }
        keys
    }
}

#[event("stock.moved")]
pub struct StockMoved {
    pub key: u32,
    pub seq: u32,
}

/// `concurrency = 1` (the default): one message at a time, in stream order.
#[handler(service = "faults-order", idempotent = "off")]
async fn move_stock(event: StockMoved, book: State<Book>) {
    book.handled.lock().unwrap().push((event.key, event.seq));
}

/// Fails the first attempt of key 3's tenth event; its retry waits out a 1 s backoff.
#[handler(
    service = "faults-reorder",
    idempotent = "off",
    base_delay = "1s",
    max_delay = "1s",
    jitter = false
)]
async fn move_stock_once_failing(event: StockMoved, book: State<Book>) -> Result<(), HandlerError> {
    if (event.key, event.seq) == (3, 10) {
        let mut failed = book.failed_once.lock().unwrap();
        if !failed.contains(&(3, 10)) {
            failed.push((3, 10));
            return Err(HandlerError::retry("the warehouse is busy"));
        }
    }
    book.handled.lock().unwrap().push((event.key, event.seq));
    Ok(())
}

/// 1,000 events, `seq` counting per key across 16 keys, published in one pipelined call.
fn stock_moves() -> Vec<StockMoved> {
    (0..1000u32)
        .map(|i| StockMoved {
            key: i % 16,
            seq: i / 16,
        })
        .collect()
}

async fn start(server: &NatsServer, service: &str, handler: &str, book: &Arc<Book>) -> TestApp {
    TestApp::builder(service)
        .nats(server.url())
        .handlers(&[handler])
        .shared_state(Arc::clone(book))
        .start()
        .await
        .unwrap_or_else(|e| panic!("{e}"))
}

/// Polls until `done` (every 20 ms, at most two minutes): fault tests never sleep blindly.
async fn eventually(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    while !done() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "not within two minutes: {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_24_per_key_order_holds_with_one_handler_and_concurrency_1() {
    let server = NatsServer::start().unwrap_or_else(|e| panic!("{e}"));
    let book = Arc::new(Book::default());
    let app = start(&server, "faults-order", "move_stock", &book).await;
    let moves = stock_moves();
    let acked = app.publisher().publish_all(&moves).await.unwrap();
    assert_eq!(acked.len(), 1000, "every publish acked by the broker");
    eventually("1,000 side effects", || book.handled().len() >= 1000).await;
    app.settle().await;

    let per_key = book.per_key();
    assert_eq!(per_key.len(), 16);
    for (key, seqs) in &per_key {
        let expected: Vec<u32> = (0..1000u32)
            .filter(|i| i % 16 == *key)
            .map(|i| i / 16)
            .collect();
        assert_eq!(
            seqs, &expected,
            "key {key}: every event once, in publish order"
        );
    }
    assert_eq!(book.handled().len(), 1000, "no phantoms, no repeats");
    assert!(app.dead_letters().await.unwrap().is_empty());
    app.shutdown().await.unwrap();
}

/// The documented limit of per-key order: a retry waits out its backoff while the stream moves
/// on, so the retried event lands after later events of its key. Nothing is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_24_a_retry_reorders_its_key_and_loses_nothing() {
    let server = NatsServer::start().unwrap_or_else(|e| panic!("{e}"));
    let book = Arc::new(Book::default());
    let app = start(&server, "faults-reorder", "move_stock_once_failing", &book).await;
    app.publisher().publish_all(&stock_moves()).await.unwrap();
    eventually("1,000 side effects", || book.handled().len() >= 1000).await;
    app.settle().await;

    let per_key = book.per_key();
    let key_3 = &per_key[&3];
    let retried_at = key_3.iter().position(|&s| s == 10).unwrap();
    assert!(
        key_3[..retried_at].iter().any(|&s| s > 10),
        "later events of key 3 ran before the retried one: {key_3:?}"
    );
    let mut sorted = key_3.clone();
    sorted.sort_unstable();
    assert_eq!(
        sorted,
        (0..63).collect::<Vec<u32>>(),
        "key 3: each event once"
    );
    for (key, seqs) in per_key.iter().filter(|(k, _)| **k != 3) {
        assert!(
            seqs.windows(2).all(|w| w[0] < w[1]),
            "key {key} untouched by the retry"
        );
    }
    assert_eq!(book.handled().len(), 1000);
    assert_eq!(app.stats("move_stock_once_failing").retried, 1);
    app.shutdown().await.unwrap();
}

#[event("parcel.packed")]
pub struct ParcelPacked {
    pub id: u32,
}

/// Side effects per parcel id.
#[derive(Default)]
pub struct Packed {
    counts: Mutex<HashMap<u32, u32>>,
    runs: AtomicUsize,
}

/// One message at a time per instance, a few milliseconds each: every instance pulls up to 64
/// ahead, so five instances ask for more than the consumer's `max_ack_pending` of 256.
#[handler(service = "faults-ack-pending")]
async fn pack_parcel(event: ParcelPacked, packed: State<Packed>) {
    tokio::time::sleep(Duration::from_millis(3)).await;
    packed.runs.fetch_add(1, Ordering::Relaxed);
    *packed.counts.lock().unwrap().entry(event.id).or_default() += 1;
}

/// FAULTS #23: the consumer's `max_ack_pending` is reached (five instances pulling ahead);
/// the server holds further deliveries back, no client drops a message (nothing waits for an
/// ack wait to come back: no redelivery at all), and the backlog drains as acks arrive.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_23_max_ack_pending_reached_suspends_delivery_and_drops_nothing() {
    const EVENTS: u32 = 3000;
    let server = NatsServer::start().unwrap_or_else(|e| panic!("{e}"));
    let packed = Arc::new(Packed::default());
    let mut instances = Vec::new();
    for _ in 0..5 {
        instances.push(
            TestApp::builder("faults-ack-pending")
                .nats(server.url())
                .handlers(&["pack_parcel"])
                .shared_state(Arc::clone(&packed))
                .start()
                .await
                .unwrap_or_else(|e| panic!("{e}")),
        );
    }
    let events: Vec<ParcelPacked> = (0..EVENTS).map(|id| ParcelPacked { id }).collect();
    let acked = instances[0].publisher().publish_all(&events).await.unwrap();
    assert_eq!(acked.len() as u32, EVENTS);

    let js = jetstream::new(async_nats::connect(server.url()).await.unwrap());
    let stream = js.get_stream("EDA_EVENTS").await.unwrap();
    let durable = "faults-ack-pending__pack_parcel";
    let mut most_pending = 0;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    loop {
        let info = stream.consumer_info(durable).await.unwrap();
        most_pending = most_pending.max(info.num_ack_pending);
        if packed.counts.lock().unwrap().len() as u32 == EVENTS {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the backlog did not drain within two minutes: {info:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let limit = stream
        .consumer_info(durable)
        .await
        .unwrap()
        .config
        .max_ack_pending;
    assert_eq!(limit, 256);
    assert_eq!(
        most_pending as i64, limit,
        "the five instances together reached max_ack_pending"
    );
    for instance in &instances {
        instance.settle().await;
    }
    let counts = packed.counts.lock().unwrap().clone();
    assert_eq!(counts.len() as u32, EVENTS, "nothing lost");
    assert!(counts.values().all(|&c| c == 1), "each side effect once");
    assert_eq!(
        packed.runs.load(Ordering::Relaxed) as u32,
        EVENTS,
        "no handler ran twice"
    );
    let info = stream.consumer_info(durable).await.unwrap();
    assert_eq!(
        (info.num_pending, info.num_ack_pending, info.num_redelivered),
        (0, 0, 0),
        "all acked, none redelivered (a message dropped by a client would have been)"
    );
    for instance in instances {
        instance.shutdown().await.unwrap();
    }
}

// ---- FAULTS #9: the ack wait runs out while the first holder still runs ---------------------

#[event("label.printed")]
pub struct LabelPrinted {
    pub id: u32,
}

/// Runs of the label printer per id.
#[derive(Default)]
pub struct Printed {
    runs: Mutex<HashMap<u32, u32>>,
    stalled_attempt_done: std::sync::atomic::AtomicBool,
}

impl Printed {
    fn total(&self) -> u32 {
        self.runs.lock().unwrap().values().sum()
    }
}

/// The first attempt blocks its task for 3 s (a CPU-bound stretch, a stalled worker): no
/// in-progress ack goes out, the 1 s ack wait runs out, and the broker redelivers
/// the message to the instance's other slot while this attempt still runs.
fn print_label(attempt: u32, event: &LabelPrinted, printed: &Printed) {
    if attempt == 1 {
        // `block_in_place`: the task stalls, the rest of the executor (the consume loop, the
        // other slot) moves to another thread and goes on.
        tokio::task::block_in_place(|| std::thread::sleep(Duration::from_secs(3)));
    }
    *printed.runs.lock().unwrap().entry(event.id).or_default() += 1;
    if attempt == 1 {
        printed.stalled_attempt_done.store(true, Ordering::SeqCst);
    }
}

#[handler(
    service = "faults-claim",
    idempotent = "claim",
    concurrency = 2,
    timeout = "6s"
)]
async fn print_label_claimed(event: LabelPrinted, ctx: Context, printed: State<Printed>) {
    print_label(ctx.attempt(), &event, &printed);
}

#[handler(service = "faults-unclaimed", concurrency = 2, timeout = "6s")]
async fn print_label_unclaimed(event: LabelPrinted, ctx: Context, printed: State<Printed>) {
    print_label(ctx.attempt(), &event, &printed);
}

/// The stalled first holder and the redelivery on the other slot; returns the runs and how
/// often the broker delivered the message.
async fn stall_first_holder(service: &str, handler: &str) -> (u32, u64) {
    let server = NatsServer::start().unwrap_or_else(|e| panic!("{e}"));
    let printed = Arc::new(Printed::default());
    let app = TestApp::builder(service)
        .nats(server.url())
        .handlers(&[handler])
        .shared_state(Arc::clone(&printed))
        .configure(|b| b.ack_wait(Duration::from_secs(1)))
        .start()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    app.publish(&LabelPrinted { id: 1 }).await.unwrap();
    let js = jetstream::new(async_nats::connect(server.url()).await.unwrap());
    let stream = js.get_stream("EDA_EVENTS").await.unwrap();
    let durable = format!("{service}__{handler}");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let info = loop {
        let info = stream.consumer_info(&durable).await.unwrap();
        let settled = printed.stalled_attempt_done.load(Ordering::SeqCst)
            && info.num_ack_pending == 0
            && info.num_pending == 0;
        if settled {
            break info;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "not settled within a minute: {info:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    // The first holder's late ack is in; whatever the second one does after it has had its
    // chance to run (its hand-back, if any, waits 5 s and then meets an acked message).
    tokio::time::sleep(Duration::from_millis(500)).await;
    app.shutdown().await.unwrap();
    (printed.total(), info.delivered.consumer_sequence)
}

/// FAULTS #9 with `idempotent = "claim"`: the second holder finds the first one's claim and
/// hands the message back; the first one's late ack is accepted. The side effect runs once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fault_09_ack_wait_expires_under_a_stalled_holder_and_the_claim_runs_it_once() {
    let (runs, deliveries) = stall_first_holder("faults-claim", "print_label_claimed").await;
    assert!(
        deliveries >= 2,
        "the broker redelivered while the first holder stalled ({deliveries} deliveries)"
    );
    assert_eq!(runs, 1, "the claim kept the second holder from running it");
}

/// The same fault without a claim: the redelivery runs the side effect a second time (what
/// `claim` is for; the processed-id record alone cannot stop it).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fault_09_without_a_claim_a_stalled_holder_s_event_runs_twice() {
    let (runs, deliveries) = stall_first_holder("faults-unclaimed", "print_label_unclaimed").await;
    assert!(deliveries >= 2, "{deliveries} deliveries");
    assert_eq!(runs, 2, "both holders ran it");
}
