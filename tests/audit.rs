//! Delivery-side findings of the audit, one test each, through the public API on real
//! `nats-server` processes (and in memory where the behaviour is the transport's too). Each
//! fault is a real one, made with a plain NATS client or the server's configuration: a
//! processed-id bucket that refuses writes, a dead letter over the server's `max_payload`,
//! a missing dead-letter stream, a recreated event stream, acks the server refuses.
//!
//! These tests describe the wanted behaviour; they were written before the fixes.
//!
//! In memory too: follow-up ids (finding 3) and a dead letter that cannot be stored (5b, by
//! `MemoryBroker::fail_next_dead_letters`). Not in memory: its processed-id store cannot fail
//! (2), it has no message size limit (5a), its terminates cannot fail (6), its ids never come
//! from stream positions (7), and it has no consumer configuration or pull heartbeats (8, 9).
#![allow(missing_docs, missing_debug_implementations)]

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream;
use eda::prelude::*;
use eda::testing::{NatsServer, TestApp};
use eda::{DlqReason, MemoryBroker};

#[macro_use]
mod support;
use support::Rig;

const SERVICE: &str = "audit-tests";

// ---- rigs and helpers -----------------------------------------------------------------------

fn server() -> NatsServer {
    NatsServer::start().unwrap_or_else(|e| panic!("{e}"))
}

/// A server started with a configuration file (written to a temporary path that lives as
/// long as the returned guard, so the server can be restarted with it).
fn server_with_config(name: &str, config: &str) -> (NatsServer, ConfigFile) {
    let file = ConfigFile::write(name, config);
    let server = NatsServer::start_with_args(&["-c", &file.0.to_string_lossy()])
        .unwrap_or_else(|e| panic!("{e}"));
    (server, file)
}

/// A nats-server configuration file, removed on drop.
pub struct ConfigFile(PathBuf);

impl ConfigFile {
    fn write(name: &str, text: &str) -> ConfigFile {
        let path = std::env::temp_dir().join(format!(
            "eda-audit-{name}-{}-{}.conf",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0)
        ));
        std::fs::write(&path, text).expect("the configuration file is written");
        ConfigFile(path)
    }

    fn rewrite(&self, text: &str) {
        std::fs::write(&self.0, text).expect("the configuration file is rewritten");
    }
}

impl Drop for ConfigFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

async fn app<T: Send + Sync + 'static>(
    server: &NatsServer,
    state: &Arc<T>,
    handlers: &[&str],
) -> TestApp {
    TestApp::builder(SERVICE)
        .nats(server.url())
        .configure(|b| b.ack_wait(Duration::from_secs(2)))
        .shared_state(Arc::clone(state))
        .handlers(handlers)
        .start()
        .await
        .unwrap_or_else(|e| panic!("the app starts: {e}"))
}

async fn plain_client(url: &str) -> jetstream::Context {
    let client = async_nats::connect(url)
        .await
        .expect("a plain client connects");
    jetstream::new(client)
}

/// Polls `check` every 100 ms until it holds, for at most `limit` (a hang guard, not a speed
/// requirement); returns whether it held.
async fn eventually<F, Fut>(limit: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if check().await {
            return true;
        }
        if tokio::time::Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `(num_pending, num_ack_pending, num_redelivered)` of a handler's durable consumer.
async fn consumer_state(js: &jetstream::Context, handler: &str) -> (u64, usize, usize) {
    try_consumer_state(js, handler)
        .await
        .unwrap_or_else(|e| panic!("cannot read the consumer of `{handler}`: {e}"))
}

/// As [`consumer_state`], for polls that outlast a reconnect.
async fn try_consumer_state(
    js: &jetstream::Context,
    handler: &str,
) -> Result<(u64, usize, usize), String> {
    let stream = js
        .get_stream("EDA_EVENTS")
        .await
        .map_err(|e| e.to_string())?;
    let info = stream
        .consumer_info(format!("{SERVICE}__{handler}"))
        .await
        .map_err(|e| e.to_string())?;
    Ok((info.num_pending, info.num_ack_pending, info.num_redelivered))
}

/// How many processed ids the `EDA_PROCESSED` bucket holds.
async fn processed_ids(js: &jetstream::Context) -> u64 {
    let mut stream = js
        .get_stream("KV_EDA_PROCESSED")
        .await
        .expect("the processed-id bucket exists");
    stream.info().await.unwrap().state.messages
}

/// How often a handler was called for each event id.
#[derive(Default)]
pub struct Calls {
    by_id: Mutex<HashMap<u64, u32>>,
    total: AtomicU32,
}

impl Calls {
    fn call(&self, id: u64) {
        *self.by_id.lock().unwrap().entry(id).or_default() += 1;
        self.total.fetch_add(1, Ordering::SeqCst);
    }

    fn of(&self, id: u64) -> u32 {
        self.by_id.lock().unwrap().get(&id).copied().unwrap_or(0)
    }

    fn total(&self) -> u32 {
        self.total.load(Ordering::SeqCst)
    }

    fn snapshot(&self) -> HashMap<u64, u32> {
        self.by_id.lock().unwrap().clone()
    }
}

#[event("audit.placed")]
pub struct AuditPlaced {
    pub id: u64,
}

#[event("audit.shipped")]
pub struct AuditShipped {
    pub id: u64,
    pub part: u32,
}

#[event("audit.bulky")]
pub struct AuditBulky {
    pub id: u64,
    pub filler: String,
}

#[event("audit.plain")]
pub struct AuditPlain {
    pub id: u64,
}

// ---- 2. a processed-id record that fails after a successful handler -------------------------

// Concurrency 4: a record retried in place holds its handler's slot (an outage of the store
// stops the intake rather than piling up messages), so the three events of finding 2 need a
// slot each to reach the handler during the fault.
#[handler(
    service = "audit-tests",
    concurrency = 4,
    retries = 50,
    base_delay = "100ms",
    max_delay = "500ms",
    jitter = false
)]
async fn counts_calls(event: AuditPlaced, calls: State<Calls>) {
    calls.call(event.id);
}

/// Finding 2: the handler succeeded, but recording its id in `EDA_PROCESSED` failed (the
/// bucket refuses writes for ~3 s). Today the message is nak'd, the redelivery finds no
/// record and runs the handler again, once per redelivery while the fault lasts. Wanted: the
/// record is retried in place (the message held with in-progress acks), the handler is not
/// called again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_processed_id_record_is_retried_without_running_the_handler_again() {
    let server = server();
    let calls = Arc::new(Calls::default());
    let app = app(&server, &calls, &["counts_calls"]).await;
    let js = plain_client(&server.url()).await;

    // A first event gives the bucket its first record: the fault below keeps it at one.
    app.publish(&AuditPlaced { id: 0 }).await.unwrap();
    app.settle().await;
    assert_eq!(
        processed_ids(&js).await,
        1,
        "the warm-up event was recorded"
    );

    // The fault: the bucket's stream is full (max_msgs = what it holds, discard new).
    let mut bucket = js.get_stream("KV_EDA_PROCESSED").await.unwrap();
    let healthy = bucket.info().await.unwrap().config.clone();
    let mut full = healthy.clone();
    full.max_messages = 1;
    full.discard = jetstream::stream::DiscardPolicy::New;
    js.update_stream(&full)
        .await
        .expect("the bucket's limits can be lowered");
    // Check the fault is real: a create (a publish expecting no earlier value) is refused.
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("Nats-Expected-Last-Subject-Sequence", "0");
    let probe = match js
        .publish_with_headers("$KV.EDA_PROCESSED.audit-probe", headers, "".into())
        .await
    {
        Ok(ack) => ack.await.map(|_| ()).map_err(|e| e.to_string()),
        Err(e) => Err(e.to_string()),
    };
    assert!(
        probe.is_err(),
        "test setup: a full bucket with `discard: new` must refuse a create, but it was stored"
    );

    for id in 1..=3 {
        app.publish(&AuditPlaced { id }).await.unwrap();
    }
    let all_called = eventually(Duration::from_secs(30), || async {
        (1..=3).all(|id| calls.of(id) >= 1)
    })
    .await;
    assert!(
        all_called,
        "each event reached the handler: {:?}",
        calls.snapshot()
    );
    // The fault lasts ~3 s after the handlers succeeded.
    tokio::time::sleep(Duration::from_secs(3)).await;
    js.update_stream(&healthy)
        .await
        .expect("the bucket's limits are restored");

    let recorded = eventually(Duration::from_secs(60), || async {
        processed_ids(&js).await == 4
    })
    .await;
    app.settle().await;
    let counts = calls.snapshot();
    for id in 1..=3 {
        assert_eq!(
            counts.get(&id).copied().unwrap_or(0),
            1,
            "event {id} ran its handler {} times (all: {counts:?}, stats: {:?}): a successful \
             handler whose processed-id record failed must have the record retried in place, \
             not be nak'd and re-run on the redelivery",
            counts.get(&id).copied().unwrap_or(0),
            app.stats("counts_calls")
        );
    }
    assert!(
        recorded,
        "every event's success is recorded once the bucket takes writes again: {} of 4 ids in \
         EDA_PROCESSED",
        processed_ids(&js).await
    );
}

// ---- 3. follow-up events get a new id on every attempt --------------------------------------

/// The ids `ctx.publish` returned, per handler and attempt.
#[derive(Default)]
pub struct FollowUps {
    runs: Mutex<Vec<(&'static str, u32, Vec<String>)>>,
}

impl FollowUps {
    fn record(&self, handler: &'static str, attempt: u32, ids: Vec<String>) {
        self.runs.lock().unwrap().push((handler, attempt, ids));
    }

    fn of(&self, handler: &str) -> Vec<(u32, Vec<String>)> {
        self.runs
            .lock()
            .unwrap()
            .iter()
            .filter(|(h, _, _)| *h == handler)
            .map(|(_, attempt, ids)| (*attempt, ids.clone()))
            .collect()
    }
}

#[handler(
    service = "audit-tests",
    retries = 1,
    base_delay = "10ms",
    jitter = false
)]
async fn ships_then_fails_once(
    event: AuditPlaced,
    ctx: Context,
    seen: State<FollowUps>,
) -> Result<(), HandlerError> {
    let first = ctx
        .publish(&AuditShipped {
            id: event.id,
            part: 1,
        })
        .await?;
    let second = ctx
        .publish(&AuditShipped {
            id: event.id,
            part: 2,
        })
        .await?;
    seen.record("ships_then_fails_once", ctx.attempt(), vec![first, second]);
    if ctx.attempt() == 1 {
        return Err(HandlerError::retry(std::io::Error::other(
            "downstream timed out after the follow-ups were published",
        )));
    }
    Ok(())
}

/// Another handler of the same event publishing a follow-up: its id must differ from the
/// first handler's (the handler is part of the derivation).
#[handler(service = "audit-tests")]
async fn ships_as_well(
    event: AuditPlaced,
    ctx: Context,
    seen: State<FollowUps>,
) -> Result<(), HandlerError> {
    let id = ctx
        .publish(&AuditShipped {
            id: event.id,
            part: 3,
        })
        .await?;
    seen.record("ships_as_well", ctx.attempt(), vec![id]);
    Ok(())
}

/// Finding 3: `Context::publish` makes a fresh UUID per call, so a handler that publishes and
/// then fails publishes its follow-ups again under new ids on the retry, and both copies are
/// stored. Wanted (DESIGN.md §3, §4): the n-th follow-up's id is derived from (causing event
/// id, handler, n); the re-run republishes the same ids and the duplicate window drops them.
async fn a_retried_handler_republishes_its_follow_ups_under_the_same_ids(rig: Rig) {
    let seen = Arc::new(FollowUps::default());
    let app = rig
        .app(SERVICE)
        .shared_state(Arc::clone(&seen))
        .handlers(&["ships_then_fails_once", "ships_as_well"])
        .start()
        .await
        .expect("the test app starts");
    app.publish(&AuditPlaced { id: 7 }).await.unwrap();
    app.settle().await;

    let runs = seen.of("ships_then_fails_once");
    assert_eq!(
        runs.iter().map(|(attempt, _)| *attempt).collect::<Vec<_>>(),
        [1, 2],
        "the handler failed once and succeeded on the retry"
    );
    let (first_run, second_run) = (&runs[0].1, &runs[1].1);
    assert_ne!(
        first_run[0], first_run[1],
        "two follow-ups of one run get different ids (the index is part of the id)"
    );
    assert_eq!(
        first_run, second_run,
        "the retry published its follow-ups under new ids: a re-run must get the ids of the \
         first run (derived from the causing event id, the handler and the index)"
    );
    let other = seen.of("ships_as_well");
    assert_eq!(other.len(), 1);
    assert!(
        !first_run.contains(&other[0].1[0]),
        "another handler's follow-up of the same event gets another id: {other:?} vs {first_run:?}"
    );

    let mut parts: Vec<u32> = app
        .published::<AuditShipped>()
        .await
        .unwrap()
        .iter()
        .map(|shipped| shipped.part)
        .collect();
    parts.sort_unstable();
    assert_eq!(
        parts,
        [1, 2, 3],
        "each follow-up is stored once; the retry's copies must be dropped as duplicates"
    );
}

on_both_transports!(a_retried_handler_republishes_its_follow_ups_under_the_same_ids);

// ---- 5. dead letters that cannot be published -----------------------------------------------

/// The server's limit in the tests below, and the event's payload just under it.
const MAX_PAYLOAD: usize = 8192;
const BULKY_FILLER: usize = 7000;

#[handler(
    service = "audit-tests",
    retries = 3,
    base_delay = "100ms",
    max_delay = "1s"
)]
async fn rejects_bulky(event: AuditBulky, calls: State<Calls>) -> Result<(), HandlerError> {
    calls.call(event.id);
    // A long error, as validation errors listing every field can be: the dead letter's
    // `Eda-Dlq-Error` header carries it (cut at 1 KiB).
    Err(HandlerError::permanent(format!(
        "validation failed: {}",
        "field `filler` is longer than allowed; ".repeat(30)
    )))
}

/// Finding 5a: a message under the server's `max_payload` whose dead letter (the payload plus
/// the `Eda-Dlq-*` headers and a long error) is over it. Today every dead-letter publish fails
/// (`max payload size exceeded`), the message is nak'd and comes back, forever: nothing is
/// ever stored. Wanted: a dead letter is stored, keeping the whole original payload if it fits
/// (e.g. by cutting the error header) or a cut payload with a mark that it was cut, plus the
/// original stream sequence to fetch the whole message from `EDA_EVENTS`. The fix is expected
/// to add that mark, e.g. an `Eda-Dlq-Truncated: <original size>` header, or to say so in the
/// letter's `error`; the test accepts a header whose name contains `Trunc` or `Cut`, or an
/// error mentioning `truncated` / `cut`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_letter_over_the_max_payload_is_stored_cut_instead_of_retried_forever() {
    let (server, _config) =
        server_with_config("max-payload", &format!("max_payload: {MAX_PAYLOAD}\n"));
    let calls = Arc::new(Calls::default());
    let app = app(&server, &calls, &["rejects_bulky"]).await;
    let event = AuditBulky {
        id: 1,
        filler: "x".repeat(BULKY_FILLER),
    };
    let id = app
        .publish(&event)
        .await
        .expect("test setup: the event itself fits under max_payload");
    let original = app.published_raw().await.unwrap();
    assert_eq!(original.len(), 1);
    let original_sequence = original[0].metadata().sequence;
    let original_payload = original[0].payload().to_vec();
    assert!(
        original_payload.len() < MAX_PAYLOAD,
        "test setup: the payload is under the limit"
    );

    let stored = eventually(Duration::from_secs(30), || async {
        app.dead_letters()
            .await
            .map(|letters| !letters.is_empty())
            .unwrap_or(false)
    })
    .await;
    assert!(
        stored,
        "no dead letter after 30 s: the dead letter (a {}-byte payload plus the DLQ headers) is \
         over the server's max_payload of {MAX_PAYLOAD} and its publish fails on every attempt; \
         the handler ran {} times meanwhile (stats: {:?})",
        original_payload.len(),
        calls.total(),
        app.stats("rejects_bulky")
    );
    app.settle().await;

    let letters = app.dead_letters().await.unwrap();
    assert_eq!(letters.len(), 1, "exactly one dead letter: {letters:?}");
    let letter = &letters[0];
    assert_eq!(letter.reason, DlqReason::Permanent);
    assert_eq!(letter.handler, "rejects_bulky");
    assert_eq!(letter.metadata.id, id);
    assert_eq!(
        letter.metadata.sequence, original_sequence,
        "the dead letter names the original's stream sequence (to fetch it whole)"
    );
    if letter.payload[..] != original_payload[..] {
        assert!(
            letter.payload.len() < original_payload.len()
                && original_payload.starts_with(&letter.payload),
            "a payload that is not the original must be the original cut short ({} bytes of {})",
            letter.payload.len(),
            original_payload.len()
        );
        let js = plain_client(&server.url()).await;
        let mut dlq = js.get_stream("EDA_DLQ").await.unwrap();
        let last = dlq.info().await.unwrap().state.last_sequence;
        let raw = dlq.get_raw_message(last).await.unwrap();
        let marked_by_header = raw.headers.iter().any(|(name, _)| {
            let name = name.to_string().to_ascii_lowercase();
            name.contains("trunc") || name.contains("cut")
        });
        let marked_in_error = letter.error.contains("truncated") || letter.error.contains("cut");
        assert!(
            marked_by_header || marked_in_error,
            "a cut payload must say it was cut (a header or the error): headers {:?}, error {:?}",
            raw.headers,
            letter.error
        );
    }
    let js = plain_client(&server.url()).await;
    let (pending, ack_pending, _) = consumer_state(&js, "rejects_bulky").await;
    assert_eq!(
        (pending, ack_pending),
        (0, 0),
        "the original is terminated once its dead letter is stored"
    );
}

#[handler(
    service = "audit-tests",
    retries = 3,
    base_delay = "100ms",
    max_delay = "500ms"
)]
async fn rejects_order(event: AuditPlaced, calls: State<Calls>) -> Result<(), HandlerError> {
    calls.call(event.id);
    Err(HandlerError::permanent("order rejected"))
}

/// Finding 5b (FAULTS.md #5): the dead-letter stream is missing (deleted behind the app's
/// back). The message must never be dropped: the dead letter is retried in place while the
/// message is kept (no handler re-run, no delivery attempt spent); once the stream exists
/// again it is dead-lettered exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_05_a_dead_letter_without_its_stream_is_kept_until_the_stream_is_back() {
    let server = server();
    let calls = Arc::new(Calls::default());
    let app = app(&server, &calls, &["rejects_order"]).await;
    let js = plain_client(&server.url()).await;
    let dlq_config = js
        .get_stream("EDA_DLQ")
        .await
        .expect("the dead-letter stream exists")
        .cached_info()
        .config
        .clone();
    js.delete_stream("EDA_DLQ")
        .await
        .expect("the dead-letter stream is deleted");
    let id = app.publish(&AuditPlaced { id: 1 }).await.unwrap();

    let ran = eventually(Duration::from_secs(30), || async { calls.of(1) >= 1 }).await;
    assert!(ran, "the handler runs");
    // Several ack waits (2 s each) pass while the dead letter cannot be stored.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let (pending, ack_pending, redelivered) = consumer_state(&js, "rejects_order").await;
    assert_eq!(
        (pending, ack_pending, redelivered),
        (0, 1, 0),
        "while its dead letter cannot be stored the message is held, kept alive with in-progress          acks (pending, ack pending, redelivered)"
    );
    assert_eq!(
        calls.of(1),
        1,
        "the handler is not run again while the dead letter waits"
    );
    assert!(
        app.dead_letters().await.is_err(),
        "no dead-letter stream to read yet"
    );

    js.create_stream(dlq_config)
        .await
        .expect("the dead-letter stream is created again");
    let stored = eventually(Duration::from_secs(60), || async {
        app.dead_letters()
            .await
            .map(|l| !l.is_empty())
            .unwrap_or(false)
    })
    .await;
    assert!(
        stored,
        "once the dead-letter stream is back the message lands there (handler ran {} times)",
        calls.of(1)
    );
    app.settle().await;
    let letters = app.dead_letters().await.unwrap();
    assert_eq!(letters.len(), 1, "dead-lettered exactly once: {letters:?}");
    assert_eq!(letters[0].metadata.id, id);
    assert_eq!(letters[0].reason, DlqReason::Permanent);
    assert_eq!(calls.of(1), 1, "one handler run for one dead letter");
    let (pending, ack_pending, _) = consumer_state(&js, "rejects_order").await;
    assert_eq!(
        (pending, ack_pending),
        (0, 0),
        "the original is terminated after its dead letter was stored"
    );
}

/// Finding 5b in memory: dead letters that cannot be stored (fault injection) are retried in
/// place; the message is dead-lettered once and its handler runs once.
#[tokio::test(start_paused = true)]
async fn in_memory_a_dead_letter_that_cannot_be_stored_is_retried_in_place() {
    let broker = MemoryBroker::new().with_retention(usize::MAX);
    broker.fail_next_dead_letters(3);
    let calls = Arc::new(Calls::default());
    let app = TestApp::builder(SERVICE)
        .broker(broker.clone())
        .shared_state(Arc::clone(&calls))
        .handlers(&["rejects_order"])
        .start()
        .await
        .unwrap();
    let id = app.publish(&AuditPlaced { id: 1 }).await.unwrap();
    app.settle().await;
    let letters = broker.dead_letters();
    assert_eq!(
        letters.len(),
        1,
        "dead-lettered once after 3 refusals: {letters:?}"
    );
    assert_eq!(letters[0].metadata.id, id);
    assert_eq!(calls.of(1), 1, "the handler ran once");
    assert_eq!(app.stats("rejects_order").dead_lettered, 1);
}

// ---- 7. ids from stream sequences after the stream is recreated ------------------------------

#[handler(service = "audit-tests", idempotent = "always")]
async fn records_plain(event: AuditPlain, calls: State<Calls>) {
    calls.call(event.id);
}

/// Finding 7: a message from a plain client (no `Nats-Msg-Id`) gets its stream sequence as
/// its id. After `EDA_EVENTS` is deleted and recreated the sequences start at 1 again, and
/// with `idempotent = "always"` the new sequence-1 message is acked as a duplicate of the old
/// one (its key `<service>.<handler>.1` is still in `EDA_PROCESSED`): a new event is lost.
/// Wanted: a sequence-derived id that cannot repeat across stream incarnations.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plain_message_in_a_recreated_stream_is_not_taken_for_an_old_one() {
    let server = server();
    let calls = Arc::new(Calls::default());
    let js = plain_client(&server.url()).await;

    let before = app(&server, &calls, &["records_plain"]).await;
    let ack = js
        .publish("events.audit.plain", r#"{"id": 1}"#.into())
        .await
        .unwrap()
        .await
        .expect("stored");
    assert_eq!(ack.sequence, 1);
    before.settle().await;
    assert_eq!(calls.of(1), 1, "the first plain message is handled");
    before.shutdown().await.unwrap();

    js.delete_stream("EDA_EVENTS")
        .await
        .expect("the event stream is deleted");
    let after = app(&server, &calls, &["records_plain"]).await; // recreates the stream
    let ack = js
        .publish("events.audit.plain", r#"{"id": 2}"#.into())
        .await
        .unwrap()
        .await
        .expect("stored");
    assert_eq!(
        ack.sequence, 1,
        "test setup: the recreated stream starts again at sequence 1"
    );
    after.settle().await;
    assert_eq!(
        calls.of(2),
        1,
        "a new plain message (stream sequence 1 of the recreated stream) was not handled; \
         stats {:?}: it was taken for the old sequence-1 message, whose id is still recorded",
        after.stats("records_plain")
    );
}

// ---- 6. a terminate that is not confirmed after a stored dead letter -------------------------

const APP_USER: &str = "app";
const ADMIN_USER: &str = "admin";
const PASSWORD: &str = "s3cret";

/// One account with JetStream and its users `app` (acks, naks and terms on `$JS.ACK.>`
/// denied when `deny_acks`) and `admin`.
fn auth_config(deny_acks: bool) -> String {
    let permissions = if deny_acks {
        r#", permissions: { publish: { deny: ["$JS.ACK.>"] } }"#
    } else {
        ""
    };
    format!(
        "accounts {{\n  EDA {{\n    jetstream: enabled\n    users = [\n      {{ user: \"{APP_USER}\", password: \"{PASSWORD}\"{permissions} }}\n      {{ user: \"{ADMIN_USER}\", password: \"{PASSWORD}\" }}\n    ]\n  }}\n}}\n"
    )
}

#[handler(service = "audit-tests", retries = 3, base_delay = "100ms")]
async fn rejects_once_and_for_all(
    event: AuditPlaced,
    calls: State<Calls>,
) -> Result<(), HandlerError> {
    calls.call(event.id);
    Err(HandlerError::permanent("order rejected for good"))
}

/// Finding 6: the dead letter was stored, but the terminate of the original was not confirmed
/// (here: the server refuses the app's acks on `$JS.ACK.>`, as a permission mistake or a link
/// lost right after the dead-letter publish would). Today the broker redelivers after the ack
/// wait and the handler runs again for a message already dead-lettered (its second dead letter
/// is dropped by the duplicate window). Wanted: a redelivery of a message whose dead letter is
/// stored is terminated without calling the handler (e.g. the dead letter remembered next to
/// the processed ids, or looked up by its `Nats-Msg-Id`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unconfirmed_terminate_after_a_stored_dead_letter_does_not_run_the_handler_again() {
    let (mut server, config) = server_with_config("deny-acks", &auth_config(true));
    let calls = Arc::new(Calls::default());
    let app = TestApp::builder(SERVICE)
        .nats(server.url())
        .configure(|b| {
            b.ack_wait(Duration::from_secs(1))
                .nats_user_password(APP_USER, PASSWORD)
        })
        .shared_state(Arc::clone(&calls))
        .handlers(&["rejects_once_and_for_all"])
        .start()
        .await
        .unwrap_or_else(|e| panic!("the app starts: {e}"));
    let admin = jetstream::new(
        async_nats::ConnectOptions::with_user_and_password(ADMIN_USER.into(), PASSWORD.into())
            .connect(server.url())
            .await
            .expect("the admin connects"),
    );
    let id = app.publish(&AuditPlaced { id: 1 }).await.unwrap();

    // The dead letter is stored, the term never reaches the server, and the ack wait passes.
    let redelivered = eventually(Duration::from_secs(60), || async {
        let letters = app.dead_letters().await.map(|l| l.len()).unwrap_or(0);
        let state = try_consumer_state(&admin, "rejects_once_and_for_all").await;
        letters == 1 && matches!(state, Ok((_, _, redelivered)) if redelivered >= 1)
    })
    .await;
    assert!(
        redelivered,
        "test setup: the dead letter is stored and the broker redelivered the original \
         (handler ran {} times)",
        calls.total()
    );
    // Heal: acks reach the server again. (The server is restarted on its store with the new
    // configuration: nats-server 2.9.10 cannot reload a configuration when the store
    // directory comes from the command line.)
    config.rewrite(&auth_config(false));
    server.restart().unwrap_or_else(|e| panic!("{e}"));
    let terminated = eventually(Duration::from_secs(60), || async {
        let state = try_consumer_state(&admin, "rejects_once_and_for_all").await;
        matches!(state, Ok((0, 0, _)))
    })
    .await;
    assert!(
        terminated,
        "the original is terminated once acks get through"
    );
    app.settle().await;

    let letters = app.dead_letters().await.unwrap();
    assert_eq!(letters.len(), 1, "one dead letter: {letters:?}");
    assert_eq!(letters[0].metadata.id, id);
    assert_eq!(
        calls.of(1),
        1,
        "the handler ran {} times: its dead letter was stored on the first run, so a \
         redelivery (the terminate was not confirmed) must terminate the message without \
         calling the handler again (stats: {:?})",
        calls.of(1),
        app.stats("rejects_once_and_for_all")
    );
}

// ---- 8. a consumer eda cannot bring in line is a startup error --------------------------------

/// Finding 8: a consumer whose limits cannot be updated (here: created by hand with a replay
/// policy the server will not change, and a `max_deliver` of 5 that would let the server drop
/// messages eda has not dead-lettered) stops startup with an error naming the consumer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_whose_limits_cannot_be_updated_stops_startup() {
    let server = server();
    let calls = Arc::new(Calls::default());
    // Provision the streams first, with no handler.
    app(&server, &calls, &[]).await.shutdown().await.unwrap();
    let js = plain_client(&server.url()).await;
    let stream = js.get_stream("EDA_EVENTS").await.unwrap();
    stream
        .create_consumer(jetstream::consumer::pull::Config {
            durable_name: Some(format!("{SERVICE}__counts_calls")),
            filter_subject: "events.audit.placed".into(),
            ack_policy: jetstream::consumer::AckPolicy::Explicit,
            replay_policy: jetstream::consumer::ReplayPolicy::Original,
            max_deliver: 5,
            ..Default::default()
        })
        .await
        .expect("the hand-made consumer is created");
    let started = TestApp::builder(SERVICE)
        .nats(server.url())
        .shared_state(Arc::clone(&calls))
        .handlers(&["counts_calls"])
        .start()
        .await;
    let error = match started {
        Ok(_) => panic!("a consumer with `max_deliver` 5 that eda cannot update must stop startup"),
        Err(e) => e,
    };
    assert_eq!(
        error.kind(),
        eda::ErrorKind::Provision {
            what: eda::error::Provisioned::Consumer
        },
        "{error}"
    );
    let message = error.to_string();
    assert!(
        message.contains("audit-tests__counts_calls") && message.contains("max_deliver"),
        "the error names the consumer and the limit: {message}"
    );
    assert!(
        std::error::Error::source(&error).is_some(),
        "the server's refusal is kept as the source"
    );
}

// ---- 9. /readyz follows a consumer's pulls ----------------------------------------------------

async fn readyz(addr: std::net::SocketAddr) -> (u16, String) {
    support::http_get(addr, "/readyz").await
}

/// Finding 9 (FAULTS.md #16): while the server is frozen (SIGSTOP) the connection still looks
/// up to the client, but the consumer's pull heartbeats stop: `/readyz` turns 503 naming the
/// consumer, and back to 200 once the server runs again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_turns_503_while_a_consumers_heartbeats_are_missed_and_back() {
    let server = server();
    let calls = Arc::new(Calls::default());
    let app = TestApp::builder(SERVICE)
        .nats(server.url())
        .configure(|b| b.metrics_addr("127.0.0.1:0"))
        .shared_state(Arc::clone(&calls))
        .handlers(&["counts_calls"])
        .start()
        .await
        .unwrap_or_else(|e| panic!("the app starts: {e}"));
    let addr = app.app().metrics_addr().expect("a metrics address");
    let ready = eventually(Duration::from_secs(30), || async {
        readyz(addr).await.0 == 200
    })
    .await;
    assert!(
        ready,
        "ready once the consumer pulls: {:?}",
        readyz(addr).await
    );
    let pid = server.pid().expect("the server runs").to_string();
    let signal = |name: &str| {
        let status = std::process::Command::new("kill")
            .args([name, &pid])
            .status()
            .expect("kill runs");
        assert!(status.success(), "kill {name} {pid}");
    };
    signal("-STOP");
    let unready = eventually(Duration::from_secs(60), || async {
        let (status, body) = readyz(addr).await;
        status == 503 && body.contains("audit-tests__counts_calls")
    })
    .await;
    let seen = readyz(addr).await;
    signal("-CONT");
    assert!(
        unready,
        "with the server frozen the consumer's heartbeats stop and /readyz says 503 naming it: {seen:?}"
    );
    let back = eventually(Duration::from_secs(60), || async {
        readyz(addr).await.0 == 200
    })
    .await;
    assert!(
        back,
        "ready again once the server runs: {:?}",
        readyz(addr).await
    );
    app.publish(&AuditPlaced { id: 9 }).await.unwrap();
    let handled = eventually(Duration::from_secs(30), || async { calls.of(9) == 1 }).await;
    assert!(handled, "and consuming goes on");
}
