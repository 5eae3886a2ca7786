//! The JetStream consume loop on real `nats-server` processes (one per test): what happens to
//! messages between the pull and the handler, a consumer deleted behind the app's back, a
//! large backlog, and a message that is not a JetStream message. Each test pins a finding of
//! the consume-side audit; it fails while the finding stands.
//!
//! The server binary comes from `EDA_NATS_SERVER` (a path) or `nats-server` on PATH; the
//! backlog test is meant to be run on both supported servers (2.9.10 and the current one).
//!
//! None of these has an in-memory twin: the in-memory broker has no ack wait for a held
//! message (nothing is pulled ahead there; a consumer takes a message only when a slot is
//! free), no pull requests to lose or to stall, no consumers to delete behind the app's back,
//! and every message it delivers is its own.
#![allow(missing_docs, missing_debug_implementations)]

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use async_nats::jetstream;
use eda::prelude::*;
use eda::testing::{NatsServer, TestApp};
use futures_util::StreamExt;
use tokio::time::Instant;

mod support;

const SERVICE: &str = "consume-tests";

#[event("consume.job")]
pub struct Job {
    pub id: u64,
}

/// What the handlers saw: per event id, how often a handler finished it, and the attempt
/// number of every run.
#[derive(Default)]
pub struct Ledger {
    counts: Mutex<HashMap<u64, u32>>,
    runs: Mutex<Vec<(u64, u32)>>,
    started: AtomicU64,
    calls: AtomicU64,
}

impl Ledger {
    fn count(&self, id: u64) {
        *self.counts.lock().unwrap().entry(id).or_default() += 1;
    }

    fn distinct(&self) -> usize {
        self.counts.lock().unwrap().len()
    }
}

fn server() -> NatsServer {
    NatsServer::start().unwrap_or_else(|e| panic!("{e}"))
}

async fn plain_client(server: &NatsServer) -> jetstream::Context {
    let client = async_nats::connect(server.url())
        .await
        .expect("a plain client connects");
    jetstream::new(client)
}

/// Polls `done` every 100 ms for at most `limit` (a hang guard, not a speed requirement);
/// returns whether it came true.
async fn eventually(limit: Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if done() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    done()
}

/// Warnings and errors logged anywhere in this test binary, as text (message and fields).
fn logged() -> &'static Mutex<Vec<String>> {
    static LOGGED: OnceLock<Mutex<Vec<String>>> = OnceLock::new();
    LOGGED.get_or_init(Default::default)
}

/// The distinct warnings and errors that mention `text`, with how often each was logged.
fn warnings_about(text: &str) -> Vec<(String, usize)> {
    let mut distinct: Vec<(String, usize)> = Vec::new();
    for line in logged().lock().unwrap().iter().filter(|l| l.contains(text)) {
        match distinct.iter_mut().find(|(l, _)| l == line) {
            Some((_, n)) => *n += 1,
            None => distinct.push((line.clone(), 1)),
        }
    }
    distinct
}

/// Records every warning and error (installed as the global subscriber by the tests that look
/// at logs; global, so that the consume loop's tasks on every thread are seen).
struct WarnLog;

struct Text(String);

impl tracing::field::Visit for Text {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        self.0.push_str(&format!(" {}={value:?}", field.name()));
    }
}

impl tracing::Subscriber for WarnLog {
    fn enabled(&self, metadata: &tracing::Metadata<'_>) -> bool {
        *metadata.level() <= tracing::Level::WARN
    }
    fn new_span(&self, _: &tracing::span::Attributes<'_>) -> tracing::span::Id {
        tracing::span::Id::from_u64(1)
    }
    fn record(&self, _: &tracing::span::Id, _: &tracing::span::Record<'_>) {}
    fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}
    fn event(&self, event: &tracing::Event<'_>) {
        let mut text = Text(format!("{}:", event.metadata().level()));
        event.record(&mut text);
        logged().lock().unwrap().push(text.0);
    }
    fn enter(&self, _: &tracing::span::Id) {}
    fn exit(&self, _: &tracing::span::Id) {}
}

// ---- finding 1: pulled messages wait without in-progress acks --------------------------------

// `idempotent = "off"`: with the default (`redelivered`) a redelivery of an event whose first
// run already finished is recognised and skipped, and one still running is run twice all the
// same; switching the check off makes every extra delivery visible as an extra run, which is
// exactly what this test counts.
#[handler(
    service = "consume-tests",
    concurrency = 1,
    idempotent = "off",
    timeout = "30s"
)]
async fn slower_than_two_thirds_of_the_ack_wait(event: Job, ctx: Context, ledger: State<Ledger>) {
    ledger.runs.lock().unwrap().push((event.id, ctx.attempt()));
    tokio::time::sleep(Duration::from_millis(2500)).await;
    ledger.count(event.id);
}

/// Two instances of one service, each running one 2.5 s handler at a time, with a 3 s ack
/// wait. A message pulled ahead of the handler waits in the client's buffer while its ack wait
/// runs; unless it is kept alive (in-progress acks) or not pulled before a handler is free, the
/// broker hands it out again while this instance still holds it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_pulled_ahead_of_a_busy_handler_are_not_redelivered() {
    const EVENTS: u64 = 6;
    let server = server();
    let ledger = Arc::new(Ledger::default());
    let mut apps = Vec::new();
    for _ in 0..2 {
        let app = TestApp::builder(SERVICE)
            .nats(server.url())
            .configure(|b| b.ack_wait(Duration::from_secs(3)))
            .shared_state(Arc::clone(&ledger))
            .handlers(&["slower_than_two_thirds_of_the_ack_wait"])
            .start()
            .await
            .unwrap_or_else(|e| panic!("the app starts: {e}"));
        apps.push(app);
    }
    let events: Vec<Job> = (0..EVENTS).map(|id| Job { id }).collect();
    apps[0]
        .publisher()
        .publish_all(&events)
        .await
        .expect("the events are stored");
    let all_handled = eventually(Duration::from_secs(120), || {
        ledger.distinct() as u64 == EVENTS
    })
    .await;
    assert!(
        all_handled,
        "only {} of {EVENTS} events were handled within two minutes",
        ledger.distinct()
    );
    for app in &apps {
        app.settle().await;
    }
    let mut runs = ledger.runs.lock().unwrap().clone();
    runs.sort_unstable();
    // Counted by runs started: a second run may still be sleeping when the first one's ack
    // has settled the consumer.
    let mut started: HashMap<u64, u32> = HashMap::new();
    for (id, _) in &runs {
        *started.entry(*id).or_default() += 1;
    }
    let mut twice: Vec<(u64, u32)> = started.into_iter().filter(|(_, n)| *n != 1).collect();
    twice.sort_unstable();
    assert!(
        twice.is_empty(),
        "events run more than once as (id, runs): {twice:?}; the broker redelivered \
         messages that an instance still held unstarted in its pull buffer (their ack wait ran \
         out before a handler took them). Every run as (id, attempt): {runs:?}"
    );
    let later: Vec<(u64, u32)> = runs.iter().copied().filter(|(_, a)| *a != 1).collect();
    assert!(
        later.is_empty(),
        "runs with an attempt above 1 as (id, attempt): {later:?}; waiting in the pull buffer \
         spent delivery attempts although no handler failed"
    );
}

// ---- finding 4: a consumer deleted out of band skips its backlog -----------------------------

#[handler(service = "consume-tests", concurrency = 1)]
async fn works_through_a_backlog(event: Job, ledger: State<Ledger>) {
    ledger.started.fetch_add(1, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(200)).await;
    ledger.count(event.id);
}

/// FAULTS.md #22 with a backlog: the durable is deleted while 20 events wait for a slow
/// handler. Recreating it with the handler's start policy (`new`) would begin at the end of the
/// stream and silently skip every event not yet handled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_22_a_consumer_deleted_with_a_backlog_is_recreated_without_skipping_it() {
    const EVENTS: u64 = 20;
    const DURABLE: &str = "consume-tests__works_through_a_backlog";
    let _ = tracing::subscriber::set_global_default(WarnLog);
    let server = server();
    let ledger = Arc::new(Ledger::default());
    let app = TestApp::builder(SERVICE)
        .nats(server.url())
        .configure(|b| {
            b.ack_wait(Duration::from_secs(5))
                .metrics_addr("127.0.0.1:0")
        })
        .shared_state(Arc::clone(&ledger))
        .handlers(&["works_through_a_backlog"])
        .start()
        .await
        .unwrap_or_else(|e| panic!("the app starts: {e}"));
    let events: Vec<Job> = (0..EVENTS).map(|id| Job { id }).collect();
    app.publisher()
        .publish_all(&events)
        .await
        .expect("the events are stored");
    let first_started = eventually(Duration::from_secs(30), || {
        ledger.started.load(Ordering::SeqCst) >= 1
    })
    .await;
    assert!(
        first_started,
        "the handler never started on the first event"
    );
    let js = plain_client(&server).await;
    let stream = js.get_stream("EDA_EVENTS").await.unwrap();
    stream
        .delete_consumer(DURABLE)
        .await
        .expect("the durable consumer is deleted out of band");
    let handled_at_deletion = ledger.distinct();
    eventually(Duration::from_secs(60), || {
        ledger.distinct() as u64 == EVENTS
    })
    .await;
    let counts = ledger.counts.lock().unwrap().clone();
    let mut missing: Vec<u64> = (0..EVENTS).filter(|id| !counts.contains_key(id)).collect();
    missing.sort_unstable();
    let recreated = stream.consumer_info(DURABLE).await.ok().map(|info| {
        (
            info.config.deliver_policy,
            info.num_pending,
            info.delivered.stream_sequence,
        )
    });
    assert!(
        recreated.is_some(),
        "the durable `{DURABLE}` was not recreated within 60 s of its deletion ({} of {EVENTS} \
         events handled); logged about it (warn and error, with how often): {:?}",
        ledger.distinct(),
        warnings_about(DURABLE)
    );
    assert!(
        missing.is_empty(),
        "{} of {EVENTS} events were never handled after the durable was deleted with {} \
         handled (waited 60 s): missing ids {missing:?}; the recreated consumer as \
         (deliver policy, pending, delivered stream sequence): {recreated:?} — it began at the \
         end of the stream instead of after the last handled event",
        missing.len(),
        handled_at_deletion
    );
    let addr = app.app().metrics_addr().expect("metrics are served");
    let (status, body) = support::http_get(addr, "/readyz").await;
    assert_eq!(
        status, 200,
        "/readyz after the consumer was recreated and its backlog handled: {body}"
    );
}

// ---- finding 11: a backlog stalls the consumer -----------------------------------------------

#[handler(service = "consume-tests", start = "all")]
async fn drains_a_backlog(_event: Job, ledger: State<Ledger>) {
    ledger.calls.fetch_add(1, Ordering::Relaxed);
}

/// 100,000 events wait in the stream before a service with one no-op handler (default
/// concurrency and idempotency) starts. The consumer must make progress until the backlog is
/// gone: no stretch of 20 s with messages pending and the delivered sequence standing still.
/// Run it on both servers: `EDA_NATS_SERVER=/usr/sbin/nats-server` for 2.9.10.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backlog_of_100_000_events_drains_without_stalling() {
    const EVENTS: u64 = 100_000;
    const CHUNK: u64 = 10_000;
    const DURABLE: &str = "consume-tests__drains_a_backlog";
    const STALL: Duration = Duration::from_secs(20);
    const HANG: Duration = Duration::from_secs(300);
    let _ = tracing::subscriber::set_global_default(WarnLog);
    let server = server();
    let ledger = Arc::new(Ledger::default());
    let producer = TestApp::builder(SERVICE)
        .nats(server.url())
        .handlers(&[])
        .start()
        .await
        .unwrap_or_else(|e| panic!("the producer starts: {e}"));
    let publisher = producer.publisher();
    for chunk in 0..EVENTS / CHUNK {
        let events: Vec<Job> = (chunk * CHUNK..(chunk + 1) * CHUNK)
            .map(|id| Job { id })
            .collect();
        publisher
            .publish_all(&events)
            .await
            .unwrap_or_else(|e| panic!("chunk {chunk} is stored: {e}"));
    }
    producer.shutdown().await.unwrap();
    let started = Instant::now();
    let app = TestApp::builder(SERVICE)
        .nats(server.url())
        .shared_state(Arc::clone(&ledger))
        .handlers(&["drains_a_backlog"])
        .start()
        .await
        .unwrap_or_else(|e| panic!("the consumer app starts: {e}"));
    let js = plain_client(&server).await;
    let mut consumer = js
        .get_stream("EDA_EVENTS")
        .await
        .unwrap()
        .get_consumer::<jetstream::consumer::pull::Config>(DURABLE)
        .await
        .expect("the app created its durable");
    let mut last_sequence = 0;
    let mut last_move = Instant::now();
    let mut longest_stand = Duration::ZERO;
    let mut timeline = Vec::new();
    loop {
        let info = consumer.info().await.expect("consumer info").clone();
        let now = Instant::now();
        let sequence = info.delivered.stream_sequence;
        if sequence != last_sequence {
            last_sequence = sequence;
            last_move = now;
        }
        let standing = now - last_move;
        longest_stand = longest_stand.max(standing);
        let sample = format!(
            "{:>5.1}s delivered seq {sequence:>6}, pending {:>6}, ack pending {:>4}, \
             pull requests waiting {:>2}, handled {:>6}",
            (now - started).as_secs_f64(),
            info.num_pending,
            info.num_ack_pending,
            info.num_waiting,
            ledger.calls.load(Ordering::Relaxed)
        );
        if timeline.len() % 10 == 0 || standing > Duration::from_secs(2) {
            eprintln!("backlog: {sample}");
        }
        timeline.push(sample);
        if info.num_pending == 0 && info.num_ack_pending == 0 {
            break;
        }
        assert!(
            !(info.num_pending > 0 && standing > STALL),
            "the consumer stalled: for {standing:?} the delivered stream sequence stayed at \
             {sequence} with {} messages pending and {} awaiting an ack ({} handled so far, \
             {:?} after the app started; `pull requests waiting 0` means the server holds no \
             pull request of the app: the client stopped asking); logged about it (with how \
             often): {:?}; last samples:\n{}",
            info.num_pending,
            info.num_ack_pending,
            ledger.calls.load(Ordering::Relaxed),
            now - started,
            warnings_about(DURABLE),
            timeline[timeline.len().saturating_sub(12)..].join("\n")
        );
        assert!(
            now - started < HANG,
            "the backlog was not drained within {HANG:?} (no single stall over {STALL:?}); \
             logged about it: {:?}; last samples:\n{}",
            warnings_about(DURABLE),
            timeline[timeline.len().saturating_sub(12)..].join("\n")
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    eprintln!(
        "backlog: drained {EVENTS} events in {:?}; longest stand of the delivered sequence {:?}",
        started.elapsed(),
        longest_stand
    );
    app.settle().await;
    let stats = app.stats("drains_a_backlog");
    assert_eq!(
        stats.handled + stats.duplicates,
        EVENTS,
        "every event handled once (or recognised as a duplicate): {stats:?}"
    );
    assert_eq!(stats.dead_lettered, 0, "{stats:?}");
}

// ---- finding 10: a message without JetStream metadata ----------------------------------------

#[handler(service = "consume-tests")]
async fn meets_a_stranger(event: Job, ledger: State<Ledger>) {
    ledger.count(event.id);
}

/// A plain client answers the app's pull request itself, with a message that has no JetStream
/// metadata (a reply subject that is not `$JS.ACK...`). The consume loop cannot hand it to a
/// handler; it must terminate it (`+TERM` on its reply subject, so a sender waiting for the
/// outcome learns it and nothing comes back), log it, and go on consuming.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_without_jetstream_metadata_is_terminated_and_logged() {
    const DURABLE: &str = "consume-tests__meets_a_stranger";
    let _ = tracing::subscriber::set_global_default(WarnLog);
    let server = server();
    let ledger = Arc::new(Ledger::default());
    let client = async_nats::connect(server.url())
        .await
        .expect("a plain client connects");
    // The app's pull requests name the inbox its messages arrive on.
    let mut pulls = client
        .subscribe(format!("$JS.API.CONSUMER.MSG.NEXT.EDA_EVENTS.{DURABLE}"))
        .await
        .unwrap();
    let mut outcomes = client.subscribe("stranger.outcome").await.unwrap();
    client.flush().await.unwrap();
    let app = TestApp::builder(SERVICE)
        .nats(server.url())
        .configure(|b| b.ack_wait(Duration::from_secs(2)))
        .shared_state(Arc::clone(&ledger))
        .handlers(&["meets_a_stranger"])
        .start()
        .await
        .unwrap_or_else(|e| panic!("the app starts: {e}"));
    let pull = tokio::time::timeout(Duration::from_secs(30), pulls.next())
        .await
        .expect("the app sent a pull request within 30 s")
        .expect("a pull request");
    let inbox = pull
        .reply
        .expect("a pull request names its inbox")
        .to_string();
    client
        .publish_with_reply(inbox.clone(), "stranger.outcome", r#"{"id": 99}"#.into())
        .await
        .unwrap();
    client.flush().await.unwrap();
    let outcome = tokio::time::timeout(Duration::from_secs(10), outcomes.next()).await;
    let outcome = outcome
        .ok()
        .flatten()
        .map(|m| String::from_utf8_lossy(&m.payload).into_owned());
    // The consume loop goes on: a real event after the stranger is handled.
    app.publish(&Job { id: 1 }).await.unwrap();
    let handled = eventually(Duration::from_secs(30), || ledger.distinct() == 1).await;
    let warnings: Vec<String> = logged()
        .lock()
        .unwrap()
        .iter()
        .filter(|line| line.contains(&inbox) || line.contains("stranger.outcome"))
        .cloned()
        .collect();
    assert!(
        outcome.as_deref().is_some_and(|o| o.starts_with("+TERM")),
        "the message without JetStream metadata got {outcome:?} on its reply subject within \
         10 s, not `+TERM`: it was skipped without an outcome (a JetStream message whose \
         metadata cannot be read would come back after every ack wait, forever). Logged about \
         it: {warnings:?}"
    );
    assert!(
        !warnings.is_empty(),
        "nothing was logged at warn or error about the message on `{inbox}`"
    );
    assert!(
        handled,
        "the consume loop stopped after the stranger: a later event was not handled"
    );
    assert_eq!(
        ledger.counts.lock().unwrap().get(&99),
        None,
        "the stranger never reached the handler"
    );
}

// ---- hand-backs are not attempts --------------------------------------------------------------

#[handler(service = "consume-tests", start = "all")]
async fn counts_attempts(event: Envelope<Job>, ledger: State<Ledger>) {
    ledger.runs.lock().unwrap().push((event.id, event.attempt));
    ledger.count(event.id);
}

/// Finding 1, second half: a message that arrived after shutdown started is handed back
/// unstarted; that delivery raised the broker's count but is no attempt. Instances are stopped
/// while a backlog flows (quick handlers pull ahead), until some messages were handed back;
/// every message a handler then sees carries attempt 1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_handed_back_at_shutdown_do_not_count_as_attempts() {
    const EVENTS: u64 = 20_000;
    let server = server();
    let ledger = Arc::new(Ledger::default());
    let start = || async {
        TestApp::builder("consume-tests")
            .nats(server.url())
            .shared_state(Arc::clone(&ledger))
            .handlers(&["counts_attempts"])
            .start()
            .await
            .unwrap_or_else(|e| panic!("the app starts: {e}"))
    };
    let producer = TestApp::builder("consume-tests")
        .nats(server.url())
        .handlers(&[])
        .start()
        .await
        .unwrap();
    let jobs: Vec<Job> = (0..EVENTS).map(|id| Job { id }).collect();
    for chunk in jobs.chunks(5_000) {
        producer.publisher().publish_all(chunk).await.unwrap();
    }
    let js = plain_client(&server).await;
    let handed_back = || async {
        let bucket = js.get_stream("KV_EDA_PROCESSED").await.unwrap();
        match bucket.info_with_subjects("$KV.EDA_PROCESSED.back.>").await {
            Ok(subjects) => subjects.count().await,
            Err(_) => 0,
        }
    };
    let mut rounds = 0;
    while handed_back().await == 0 && rounds < 10 && (ledger.distinct() as u64) < EVENTS / 2 {
        rounds += 1;
        let app = start().await;
        let before = ledger.distinct();
        eventually(Duration::from_secs(30), || ledger.distinct() > before + 200).await;
        app.shutdown().await.unwrap();
    }
    assert!(
        handed_back().await > 0,
        "test setup: stopping {rounds} instances during the drain handed no message back"
    );
    let app = start().await;
    let drained = eventually(Duration::from_secs(120), || {
        ledger.distinct() as u64 == EVENTS
    })
    .await;
    assert!(
        drained,
        "every event handled: {} of {EVENTS}",
        ledger.distinct()
    );
    app.settle().await;
    let counted: Vec<(u64, u32)> = ledger
        .runs
        .lock()
        .unwrap()
        .iter()
        .copied()
        .filter(|(_, attempt)| *attempt != 1)
        .collect();
    assert!(
        counted.is_empty(),
        "messages handed back unstarted came back with their hand-back counted as an attempt \
         (id, attempt): {:?}",
        &counted[..counted.len().min(10)]
    );
}
