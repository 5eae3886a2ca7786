//! The fault plan of FAULTS.md on real `nats-server` processes, checked with the plan's
//! bookkeeping: what was attempted, acked by the broker, handled (side effects, per id) and
//! dead-lettered. Every FAULTS.md scenario has a test named `fault_NN_*`: most in this file and
//! in `tests/faults_cluster.rs` (the cluster scenarios 18, 19, 20 and 21), the rest next to the
//! helpers they share:
//!
//! - #1: `tests/delivery.rs` (both transports)
//! - #2: `tests/faults.rs`
//! - #3: `tests/delivery.rs`
//! - #4: `tests/faults.rs`
//! - #5: `tests/audit.rs`
//! - #6: `tests/delivery.rs`
//! - #7: `tests/delivery.rs`
//! - #8: `tests/jetstream.rs`
//! - #9: `tests/faults.rs`
//! - #10: `tests/delivery.rs`
//! - #11: `tests/delivery.rs`
//! - #12: `tests/faults.rs`
//! - #13: `tests/faults.rs`
//! - #14: `tests/faults_process.rs`
//! - #15: `tests/signals.rs`
//! - #16: `tests/faults.rs`
//! - #17: `tests/jetstream.rs`
//! - #18, #19, #20, #21: `tests/faults_cluster.rs`
//! - #22: `tests/jetstream.rs`, `tests/consume.rs`
//! - #23: `tests/faults.rs`
//! - #24: `tests/faults.rs`
#![allow(missing_docs, missing_debug_implementations)]

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream;

use eda::prelude::*;
use eda::testing::{NatsServer, TestApp, TestAppBuilder};

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

// ---- the shared bookkeeping of the load scenarios (#2, #4, #12, #13, #16) --------------------

#[event("item.moved")]
pub struct ItemMoved {
    pub id: u32,
}

#[event("item.relayed")]
pub struct ItemRelayed {
    pub id: u32,
}

/// Side effects per id, and what the publishers saw.
#[derive(Default)]
pub struct Ledger {
    counts: Mutex<HashMap<u32, u32>>,
    calls: AtomicUsize,
}

impl Ledger {
    fn count(&self, id: u32) {
        *self.counts.lock().unwrap().entry(id).or_default() += 1;
    }

    fn counts(&self) -> HashMap<u32, u32> {
        self.counts.lock().unwrap().clone()
    }

    fn distinct(&self) -> usize {
        self.counts.lock().unwrap().len()
    }
}

/// Publishes `ids` one at a time, each retried under the same event id until the broker
/// confirms it (the duplicate window drops the repeats). Returns the failed attempts.
async fn publish_until_acked(publisher: eda::Publisher, ids: Vec<u32>) -> u32 {
    let mut failures = 0;
    for id in ids {
        let options = || eda::PublishOptions::default().id(format!("item-{id}"));
        while publisher
            .publish_with(&ItemMoved { id }, options())
            .await
            .is_err()
        {
            failures += 1;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    failures
}

/// Events of the stream and keys of the processed-id bucket, as the broker counts them.
async fn broker_counts(url: &str) -> (u64, u64) {
    let js = jetstream::new(async_nats::connect(url).await.unwrap());
    let events = js
        .get_stream("EDA_EVENTS")
        .await
        .unwrap()
        .info()
        .await
        .unwrap()
        .state
        .messages;
    let processed = js
        .get_stream("KV_EDA_PROCESSED")
        .await
        .unwrap()
        .info()
        .await
        .unwrap()
        .state
        .messages;
    (events, processed)
}

fn instance(
    server: &NatsServer,
    service: &str,
    handler: &str,
    ledger: &Arc<Ledger>,
) -> TestAppBuilder {
    TestApp::builder(service)
        .nats(server.url())
        .handlers(&[handler])
        .shared_state(Arc::clone(ledger))
}

// ---- FAULTS #2: many instances of one durable, many publishers -----------------------------

#[handler(service = "faults-concurrent")]
async fn move_item(event: ItemMoved, ledger: State<Ledger>) {
    ledger.calls.fetch_add(1, Ordering::Relaxed);
    ledger.count(event.id);
}

/// FAULTS #2: 5,000 events from 20 publishing tasks while 10 instances share one durable
/// consumer: every id handled, each side effect once, each id recorded once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_02_five_thousand_events_from_20_publishers_on_10_instances_are_each_handled_once() {
    const EVENTS: u32 = 5000;
    let server = NatsServer::start().unwrap_or_else(|e| panic!("{e}"));
    let ledger = Arc::new(Ledger::default());
    let mut instances = Vec::new();
    for _ in 0..10 {
        let app = instance(&server, "faults-concurrent", "move_item", &ledger)
            .start()
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        instances.push(app);
    }
    let publishers: Vec<_> = (0..20u32)
        .map(|p| {
            let ids = (0..EVENTS).filter(|id| id % 20 == p).collect();
            tokio::spawn(publish_until_acked(
                instances[p as usize % 10].publisher(),
                ids,
            ))
        })
        .collect();
    for publisher in publishers {
        publisher.await.unwrap();
    }
    eventually("every id handled", || ledger.distinct() as u32 == EVENTS).await;
    for app in &instances {
        app.settle().await;
    }
    let counts = ledger.counts();
    assert!(counts.values().all(|&c| c == 1), "each side effect once");
    assert_eq!(ledger.calls.load(Ordering::Relaxed) as u32, EVENTS);
    assert_eq!(
        broker_counts(&server.url()).await,
        (u64::from(EVENTS), u64::from(EVENTS)),
        "stored once each, recorded once each"
    );
    let handled: u64 = instances.iter().map(|a| a.stats("move_item").handled).sum();
    assert_eq!(handled, u64::from(EVENTS));
    assert!(
        instances
            .iter()
            .filter(|a| a.stats("move_item").handled > 0)
            .count()
            > 1,
        "the instances shared the work"
    );
    for app in instances {
        app.shutdown().await.unwrap();
    }
}

// ---- FAULTS #4: a poison event among good ones ---------------------------------------------

const POISON: u32 = 25;

#[handler(
    service = "faults-poison",
    retries = 2,
    base_delay = "2s",
    max_delay = "2s",
    jitter = false
)]
async fn move_item_or_choke(event: ItemMoved, ledger: State<Ledger>) -> Result<(), HandlerError> {
    ledger.calls.fetch_add(1, Ordering::Relaxed);
    if event.id == POISON {
        return Err(HandlerError::retry("the shelf for item 25 is broken"));
    }
    ledger.count(event.id);
    Ok(())
}

/// FAULTS #4: one event always fails among 50 good ones: the good ones are handled while it
/// waits out its backoff (no head-of-line block), it is dead-lettered exactly once after its
/// three attempts with what a redrive needs, and it is not delivered again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_04_a_poison_event_among_50_good_ones_is_dead_lettered_once_and_blocks_nothing() {
    let server = NatsServer::start().unwrap_or_else(|e| panic!("{e}"));
    let ledger = Arc::new(Ledger::default());
    let app = instance(&server, "faults-poison", "move_item_or_choke", &ledger)
        .start()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let events: Vec<ItemMoved> = (0..=50).map(|id| ItemMoved { id }).collect();
    let acked = app.publisher().publish_all(&events).await.unwrap();
    assert_eq!(acked.len(), 51);
    eventually("the 50 good events handled", || ledger.distinct() == 50).await;
    assert!(
        app.dead_letters().await.unwrap().is_empty(),
        "the good events after the poison did not wait for its retries"
    );
    app.settle().await;
    let letters = app.dead_letters().await.unwrap();
    assert_eq!(letters.len(), 1, "dead-lettered exactly once: {letters:?}");
    let letter = &letters[0];
    assert_eq!(letter.reason, eda::DlqReason::RetriesExhausted);
    assert_eq!(letter.attempts, 3);
    assert_eq!(&*letter.metadata.id, acked[POISON as usize].as_str());
    assert!(
        letter.metadata.sequence.is_some(),
        "names its place in the stream"
    );
    assert!(letter.error.contains("the shelf for item 25 is broken"));
    let counts = ledger.counts();
    assert!(counts.values().all(|&c| c == 1) && !counts.contains_key(&POISON));
    assert_eq!(
        ledger.calls.load(Ordering::Relaxed),
        50 + 3,
        "the poison ran its three attempts and was not delivered again"
    );
    let js = jetstream::new(async_nats::connect(server.url()).await.unwrap());
    let info = js
        .get_stream("EDA_EVENTS")
        .await
        .unwrap()
        .consumer_info("faults-poison__move_item_or_choke")
        .await
        .unwrap();
    assert_eq!((info.num_pending, info.num_ack_pending), (0, 0), "{info:?}");
    app.shutdown().await.unwrap();
}

// ---- FAULTS #12 and #13: the server killed, or put in lame duck mode, under load ----------

#[handler(service = "faults-restart", concurrency = 4)]
async fn move_item_through_restarts(event: ItemMoved, ledger: State<Ledger>) {
    ledger.count(event.id);
}

/// Publishes ids `0..events` from 10 tasks, each waiting `pace` between its events; each
/// task counts into `acked` and returns its failed attempts.
fn spawn_load(
    app: &TestApp,
    events: u32,
    pace: Duration,
    acked: &Arc<std::sync::atomic::AtomicU32>,
) -> Vec<tokio::task::JoinHandle<u32>> {
    (0..10u32)
        .map(|p| {
            let publisher = app.publisher();
            let acked = Arc::clone(acked);
            tokio::spawn(async move {
                let mut failures = 0;
                for id in (0..events).filter(|id| id % 10 == p) {
                    failures += publish_until_acked(publisher.clone(), vec![id]).await;
                    acked.fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(pace).await;
                }
                failures
            })
        })
        .collect()
}

async fn failures_of(load: Vec<tokio::task::JoinHandle<u32>>) -> u32 {
    let mut failures = 0;
    for task in load {
        failures += task.await.unwrap();
    }
    failures
}

/// Waits until a third, then half of the load is acked, calling `fault` at each.
async fn at_a_third_and_at_half(
    events: u32,
    acked: &std::sync::atomic::AtomicU32,
    server: &mut NatsServer,
    mut fault: impl AsyncFnMut(&mut NatsServer),
) {
    for at in [events / 3, events / 2] {
        eventually("publishing reaches the fault", || {
            acked.load(Ordering::SeqCst) >= at
        })
        .await;
        fault(server).await;
    }
}

/// Drains and checks the plan's criteria after a restart scenario.
async fn assert_nothing_lost(server: &NatsServer, app: &TestApp, ledger: &Ledger, events: u32) {
    eventually("every acked id handled", || {
        ledger.distinct() as u32 == events
    })
    .await;
    app.settle().await;
    assert_eq!(
        broker_counts(&server.url()).await,
        (u64::from(events), u64::from(events)),
        "every event stored once (publisher retries deduplicated) and recorded once"
    );
    assert!(app.dead_letters().await.unwrap().is_empty());
    let counts = ledger.counts();
    assert!(
        counts.keys().all(|id| *id < events),
        "no phantoms: only ids that were published"
    );
}

/// FAULTS #12: `kill -9` of the server at a third and at half of 10,000 events published by
/// 10 tasks, restarted on the same store at once: publishers see errors and retry under the
/// same ids, consumers resume on their own, nothing acked is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_12_the_server_killed_at_a_third_and_at_half_of_10_000_events_loses_nothing() {
    const EVENTS: u32 = 10_000;
    let mut server = NatsServer::start().unwrap_or_else(|e| panic!("{e}"));
    let ledger = Arc::new(Ledger::default());
    let app = instance(
        &server,
        "faults-restart",
        "move_item_through_restarts",
        &ledger,
    )
    .start()
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    let acked = Arc::new(std::sync::atomic::AtomicU32::new(0));
    let load = spawn_load(&app, EVENTS, Duration::ZERO, &acked);
    at_a_third_and_at_half(EVENTS, &acked, &mut server, async |server| {
        // Frozen a moment first, so that publishes are sure to be in flight (sent, not yet
        // acknowledged) when it dies: a kill between two bursts would cut none off.
        if let Some(pid) = server.pid() {
            signal(pid, "-STOP");
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        server.stop();
        server.restart().unwrap_or_else(|e| panic!("{e}"));
    })
    .await;
    let failures = failures_of(load).await;
    assert!(failures > 0, "the kills hit publishes in flight");
    assert_nothing_lost(&server, &app, &ledger, EVENTS).await;
    app.shutdown().await.unwrap();
}

/// Waits until the server process `pid` has exited (a zombie until the test reaps it).
async fn exited(pid: u32) {
    eventually("the server exited", || {
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map(|stat| {
                stat.rsplit(')')
                    .next()
                    .is_some_and(|s| s.trim_start().starts_with('Z'))
            })
            .unwrap_or(true)
    })
    .await;
}

/// FAULTS #13: lame duck mode (`SIGUSR2`, as `nats-server --signal ldm` sends) under load:
/// the server stops taking connections, closes its clients and exits; restarted on the same
/// store, everything acked is handled once. Twice, at a third and at half of the load.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_13_lame_duck_mode_then_a_restart_loses_nothing() {
    const EVENTS: u32 = 2000;
    // 30 s is the shortest lame duck the server accepts; the grace period before it starts
    // closing clients is cut to 1 s.
    let dir = std::env::temp_dir().join(format!(
        "eda-ldm-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("ldm.conf");
    std::fs::write(
        &config,
        "lame_duck_duration: \"30s\"\nlame_duck_grace_period: \"1s\"\n",
    )
    .unwrap();
    let mut server = NatsServer::start_with_args(&["-c", config.to_str().unwrap()])
        .unwrap_or_else(|e| panic!("{e}"));
    let ledger = Arc::new(Ledger::default());
    let app = instance(
        &server,
        "faults-restart",
        "move_item_through_restarts",
        &ledger,
    )
    .start()
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    let acked = Arc::new(std::sync::atomic::AtomicU32::new(0));
    // Paced, so that the load lasts through the lame duck periods.
    let load = spawn_load(&app, EVENTS, Duration::from_millis(20), &acked);
    let mut pids = Vec::new();
    at_a_third_and_at_half(EVENTS, &acked, &mut server, async |server| {
        let pid = server.pid().unwrap();
        pids.push(pid);
        let status = std::process::Command::new("kill")
            .args(["-USR2", &pid.to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        eventually("the lame duck server closed the app's connection", || {
            !app.app().is_connected()
        })
        .await;
        exited(pid).await;
        server.restart().unwrap_or_else(|e| panic!("{e}"));
        eventually("reconnected", || app.app().is_connected()).await;
    })
    .await;
    // A graceful stop: publishes in flight usually complete after the reconnect, so unlike
    // #12 the publishers need not see errors; if they do, they retry under the same ids.
    failures_of(load).await;
    assert_eq!(pids.len(), 2);
    assert_nothing_lost(&server, &app, &ledger, EVENTS).await;
    app.shutdown().await.unwrap();
    let _ = std::fs::remove_dir_all(dir);
}

// ---- FAULTS #16: the server frozen (SIGSTOP) past two idle heartbeats ------------------------

#[path = "support/mod.rs"]
mod support;

/// Relays each item with a follow-up event; the relay's outbox (the broker) is what its
/// breaker guards.
#[handler(
    service = "faults-freeze",
    concurrency = 4,
    breaker = "outbox",
    retries = 20,
    base_delay = "200ms",
    max_delay = "1s"
)]
async fn relay_item(
    event: ItemMoved,
    ctx: Context,
    ledger: State<Ledger>,
) -> Result<(), HandlerError> {
    tokio::time::sleep(Duration::from_millis(20)).await;
    ctx.publish(&ItemRelayed { id: event.id })
        .await
        .map_err(HandlerError::retry)?;
    ledger.count(event.id);
    Ok(())
}

/// What the plain watcher (no breaker) saw.
#[derive(Default)]
pub struct Watched(Ledger);

#[handler(service = "faults-freeze")]
async fn watch_item(event: ItemMoved, watched: State<Watched>) {
    watched.0.count(event.id);
}

fn signal(pid: u32, name: &str) {
    let status = std::process::Command::new("kill")
        .args([name, &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success(), "kill {name} {pid}");
}

/// FAULTS #16: the server is frozen while handlers run. The relay's follow-up publishes time
/// out and its breaker opens (it stops taking messages instead of spending attempts: no dead
/// letters); the consumers' heartbeats stop and `/readyz` says 503; after SIGCONT everything
/// resumes on its own, the breaker closes, and every event is relayed exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_16_a_frozen_server_opens_the_breaker_turns_readyz_503_and_loses_nothing() {
    const EVENTS: u32 = 300;
    let server = NatsServer::start().unwrap_or_else(|e| panic!("{e}"));
    let ledger = Arc::new(Ledger::default());
    let watched = Arc::new(Watched::default());
    let app = TestApp::builder("faults-freeze")
        .nats(server.url())
        .handlers(&["relay_item", "watch_item"])
        .shared_state(Arc::clone(&ledger))
        .shared_state(Arc::clone(&watched))
        .configure(|b| {
            b.metrics_addr("127.0.0.1:0").breaker(
                "outbox",
                // A short window: the successes before the freeze age out of it before the
                // first publish times out (5 s), however many there were.
                eda::BreakerConfig::default()
                    .min_calls(2)
                    .window(Duration::from_secs(3))
                    .open_for(Duration::from_secs(1)),
            )
        })
        .start()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let addr = app.app().metrics_addr().unwrap();
    let breaker = app.app().breaker("outbox").unwrap();
    let events: Vec<ItemMoved> = (0..EVENTS).map(|id| ItemMoved { id }).collect();
    app.publisher().publish_all(&events).await.unwrap();
    eventually("relaying started", || ledger.distinct() >= 20).await;

    let pid = server.pid().unwrap();
    signal(pid, "-STOP");
    let frozen_at = ledger.distinct();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    let (mut opened, mut unready) = (false, false);
    while !(opened && unready) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "while frozen: breaker opened {opened}, /readyz 503 {unready}"
        );
        opened |= breaker.state() == eda::BreakerState::Open;
        unready |= support::http_get(addr, "/readyz").await.0 == 503;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    signal(pid, "-CONT");

    eventually("every event relayed", || ledger.distinct() as u32 == EVENTS).await;
    eventually("every event watched", || {
        watched.0.distinct() as u32 == EVENTS
    })
    .await;
    app.settle().await;
    assert!(frozen_at < EVENTS as usize, "the freeze hit the load");
    assert!(
        ledger.counts().values().all(|&c| c == 1),
        "each relayed once"
    );
    assert!(watched.0.counts().values().all(|&c| c == 1));
    assert_eq!(
        app.published::<ItemRelayed>().await.unwrap().len() as u32,
        EVENTS,
        "the relays retried under the same ids: one follow-up each"
    );
    assert!(
        app.dead_letters().await.unwrap().is_empty(),
        "no dead letters from the outage"
    );
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while breaker.state() != eda::BreakerState::Closed
        || support::http_get(addr, "/readyz").await.0 != 200
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "recovered: {:?}",
            breaker.state()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    app.shutdown().await.unwrap();
}
