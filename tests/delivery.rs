//! Delivery semantics through the public API (DESIGN.md §3). Every test is written once and
//! runs on both transports: in memory (under tokio's paused clock) and on a real
//! `nats-server` started for the test (see `Rig`). Each test runs its own handlers (selected
//! by name), with its own `Seen` ledger.
#![allow(missing_docs, missing_debug_implementations)]

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use eda::prelude::*;
use eda::testing::TestApp;
use eda::{DlqReason, MemoryBroker, Metadata, PublishOptions, Topology};
use tokio::time::Instant;

#[macro_use]
mod support;
use support::Rig;

#[event("order.placed")]
pub struct OrderPlaced {
    pub id: u64,
}

#[event("order.shipped")]
pub struct OrderShipped {
    pub id: u64,
}

/// What the handlers of one test saw.
#[derive(Default)]
pub struct Seen {
    ids: Mutex<Vec<u64>>,
    times: Mutex<Vec<Instant>>,
    calls: AtomicU32,
    in_flight: AtomicUsize,
    max_in_flight: AtomicUsize,
}

impl Seen {
    fn record(&self, id: u64) {
        self.ids.lock().unwrap().push(id);
    }

    fn ids(&self) -> Vec<u64> {
        let mut ids = self.ids.lock().unwrap().clone();
        ids.sort_unstable();
        ids
    }

    fn gaps(&self) -> Vec<Duration> {
        let times = self.times.lock().unwrap();
        times.windows(2).map(|w| w[1] - w[0]).collect()
    }
}

async fn start(rig: &Rig, service: &str, seen: &Arc<Seen>, handlers: &[&str]) -> TestApp {
    rig.app(service)
        .shared_state(Arc::clone(seen))
        .handlers(handlers)
        .start()
        .await
        .expect("the test app starts")
}

// ---- fan-out and wildcards ------------------------------------------------------------------

#[handler]
async fn billing_on_placed(event: OrderPlaced, seen: State<Seen>) {
    seen.record(event.id);
}

#[handler]
async fn shipping_on_placed(event: OrderPlaced, seen: State<Seen>) {
    seen.record(event.id + 1000);
}

#[handler("order.*")]
async fn audit_orders(event: RawEvent, seen: State<Seen>) {
    seen.record(if event.name() == "order.placed" {
        2000
    } else {
        3000
    });
}

#[handler(">")]
async fn audit_everything(_event: RawEvent) {}

async fn every_matching_handler_gets_every_event(rig: Rig) {
    let seen = Arc::new(Seen::default());
    let handlers = ["billing_on_placed", "shipping_on_placed", "audit_orders"];
    let app = start(&rig, "fanout", &seen, &handlers).await;
    app.publish(&OrderPlaced { id: 1 }).await.unwrap();
    app.publish(&OrderPlaced { id: 2 }).await.unwrap();
    app.publish(&OrderShipped { id: 1 }).await.unwrap();
    app.settle().await;
    assert_eq!(app.handled("billing_on_placed"), 2);
    assert_eq!(app.handled("shipping_on_placed"), 2);
    assert_eq!(
        app.handled("audit_orders"),
        3,
        "`order.*` sees placed and shipped"
    );
    assert_eq!(seen.ids(), [1, 2, 1001, 1002, 2000, 2000, 3000]);
}

async fn wildcards_match_tokens_as_nats_does(rig: Rig) {
    let seen = Arc::new(Seen::default());
    let app = start(
        &rig,
        "wildcards",
        &seen,
        &["audit_orders", "audit_everything"],
    )
    .await;
    app.publish(&OrderShipped { id: 9 }).await.unwrap();
    app.publisher()
        .publish_raw("order.shipped.late", 1, "{}")
        .await
        .unwrap();
    app.publisher()
        .publish_raw("invoice.sent", 1, "{}")
        .await
        .unwrap();
    app.settle().await;
    assert_eq!(
        app.handled("audit_orders"),
        1,
        "`*` matches exactly one token"
    );
    assert_eq!(app.handled("audit_everything"), 3, "`>` matches everything");
}

// ---- retries and dead letters ---------------------------------------------------------------

#[handler(
    retries = 4,
    backoff = "exponential",
    base_delay = "100ms",
    max_delay = "350ms",
    jitter = false
)]
async fn fails_three_times(event: OrderPlaced, seen: State<Seen>) -> Result<(), HandlerError> {
    seen.times.lock().unwrap().push(Instant::now());
    if seen.calls.fetch_add(1, Ordering::SeqCst) < 3 {
        return Err(std::io::Error::other("downstream unavailable").into());
    }
    seen.record(event.id);
    Ok(())
}

async fn fault_03_retries_follow_the_backoff_schedule(rig: Rig) {
    let seen = Arc::new(Seen::default());
    let app = start(&rig, "retry", &seen, &["fails_three_times"]).await;
    app.publish(&OrderPlaced { id: 1 }).await.unwrap();
    app.settle().await;
    let stats = app.stats("fails_three_times");
    assert_eq!(
        (stats.handled, stats.retried, stats.dead_lettered),
        (1, 3, 0)
    );
    assert_eq!(seen.ids(), [1]);
    assert_gaps(
        &rig,
        &seen.gaps(),
        &[100, 200, 350],
        "exponential from 100ms, capped at 350ms",
    );
}

#[handler(backoff = "linear", base_delay = "1s", max_delay = "10s", retries = 2)]
async fn fails_with_jitter(_event: OrderPlaced, seen: State<Seen>) -> Result<(), HandlerError> {
    seen.times.lock().unwrap().push(Instant::now());
    Err(HandlerError::retry("nope"))
}

async fn jitter_keeps_each_delay_between_half_and_all_of_it(rig: Rig) {
    let seen = Arc::new(Seen::default());
    let app = start(&rig, "jitter", &seen, &["fails_with_jitter"]).await;
    app.publish(&OrderPlaced { id: 1 }).await.unwrap();
    app.settle().await;
    let gaps = seen.gaps();
    assert_eq!(gaps.len(), 2);
    assert!(gaps[0] >= Duration::from_millis(500), "{gaps:?}");
    assert!(gaps[1] >= Duration::from_secs(1), "{gaps:?}");
    if !rig.is_nats() {
        // On the paused clock the delays are exact; on a broker they are lower bounds only.
        assert!(gaps[0] <= Duration::from_secs(1), "{gaps:?}");
        assert!(gaps[1] <= Duration::from_secs(2), "{gaps:?}");
    }
    assert_eq!(app.dead_letters().await.unwrap().len(), 1);
}

#[handler(retries = 2, base_delay = "10ms")]
async fn always_fails(_event: OrderPlaced) -> Result<(), HandlerError> {
    Err(HandlerError::retry(std::io::Error::other("smtp down")))
}

async fn exhausted_retries_dead_letter_with_everything_needed_to_redrive(rig: Rig) {
    let seen = Arc::new(Seen::default());
    let app = start(&rig, "exhaust", &seen, &["always_fails"]).await;
    let id = app.publish(&OrderPlaced { id: 5 }).await.unwrap();
    app.settle().await;
    let letters = app.dead_letters().await.unwrap();
    assert_eq!(letters.len(), 1);
    let letter = &letters[0];
    assert_eq!(letter.reason, DlqReason::RetriesExhausted);
    assert_eq!(letter.attempts, 3, "retries = 2 means 3 attempts");
    assert_eq!(letter.error, "smtp down");
    assert_eq!(letter.subject, "dlq.exhaust.always_fails");
    assert_eq!(letter.handler, "always_fails");
    assert_eq!(letter.metadata.id, id);
    assert_eq!(&*letter.metadata.subject, "order.placed");
    assert!(letter.metadata.sequence.is_some());
    let payload: serde_json::Value = serde_json::from_slice(&letter.payload).unwrap();
    assert_eq!(payload, serde_json::json!({"id": 5}));
}

#[derive(Debug)]
struct Declined;
impl std::fmt::Display for Declined {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("card declined")
    }
}
impl std::error::Error for Declined {}

#[derive(Debug)]
struct ChargeFailed(Declined);
impl std::fmt::Display for ChargeFailed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("charge failed")
    }
}
impl std::error::Error for ChargeFailed {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.0)
    }
}

#[handler(retries = 5)]
async fn declines(_event: OrderPlaced, seen: State<Seen>) -> Result<(), HandlerError> {
    seen.calls.fetch_add(1, Ordering::SeqCst);
    Err(HandlerError::permanent(ChargeFailed(Declined)))
}

async fn fault_06_permanent_errors_dead_letter_at_once_with_the_error_chain(rig: Rig) {
    let seen = Arc::new(Seen::default());
    let app = start(&rig, "permanent", &seen, &["declines"]).await;
    app.publish(&OrderPlaced { id: 1 }).await.unwrap();
    app.settle().await;
    assert_eq!(
        seen.calls.load(Ordering::SeqCst),
        1,
        "no retry for a permanent error"
    );
    let letters = app.dead_letters().await.unwrap();
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0].reason, DlqReason::Permanent);
    assert_eq!(letters[0].attempts, 1);
    assert_eq!(letters[0].error, "charge failed: card declined");
}

// ---- decoding and versions ------------------------------------------------------------------

#[event("user.registered", version = 3, upcast_from = UserRegisteredV2)]
pub struct UserRegistered {
    pub id: u64,
    pub email: String,
    pub locale: String,
}

#[event("user.registered", version = 2, upcast_from = UserRegisteredV1)]
pub struct UserRegisteredV2 {
    pub id: u64,
    pub email: String,
}

#[event("user.registered", version = 1)]
pub struct UserRegisteredV1 {
    pub id: u64,
}

impl From<UserRegisteredV1> for UserRegisteredV2 {
    fn from(v1: UserRegisteredV1) -> Self {
        UserRegisteredV2 {
            id: v1.id,
            email: format!("user{}@unknown", v1.id),
        }
    }
}

impl From<UserRegisteredV2> for UserRegistered {
    fn from(v2: UserRegisteredV2) -> Self {
        UserRegistered {
            id: v2.id,
            email: v2.email,
            locale: "en".into(),
        }
    }
}

#[derive(Default)]
pub struct Registrations(Mutex<Vec<(u64, String, String, u32)>>);

#[handler(retries = 1, base_delay = "10ms")]
async fn on_registered(event: Envelope<UserRegistered>, seen: State<Registrations>) {
    let version = event.metadata.version;
    seen.0
        .lock()
        .unwrap()
        .push((event.id, event.email.clone(), event.locale.clone(), version));
}

async fn old_versions_are_upcast_through_the_whole_chain(rig: Rig) {
    let seen = Arc::new(Registrations::default());
    let app = rig
        .app("upcast")
        .shared_state(Arc::clone(&seen))
        .handlers(&["on_registered"])
        .start()
        .await
        .unwrap();
    app.publish(&UserRegisteredV1 { id: 1 }).await.unwrap();
    app.publish(&UserRegisteredV2 {
        id: 2,
        email: "b@x".into(),
    })
    .await
    .unwrap();
    app.publish(&UserRegistered {
        id: 3,
        email: "c@x".into(),
        locale: "de".into(),
    })
    .await
    .unwrap();
    app.settle().await;
    let mut got = seen.0.lock().unwrap().clone();
    got.sort();
    assert_eq!(
        got,
        [
            (1, "user1@unknown".to_string(), "en".to_string(), 1),
            (2, "b@x".to_string(), "en".to_string(), 2),
            (3, "c@x".to_string(), "de".to_string(), 3),
        ]
    );
}

async fn fault_06_undecodable_payloads_dead_letter_at_once_with_reason_decode(rig: Rig) {
    let seen = Arc::new(Registrations::default());
    let app = rig
        .app("poison")
        .shared_state(Arc::clone(&seen))
        .handlers(&["on_registered"])
        .start()
        .await
        .unwrap();
    app.publisher()
        .publish_raw("user.registered", 3, r#"{"id": "not a number"}"#)
        .await
        .unwrap();
    app.publisher()
        .publish_raw("user.registered", 3, "not json at all")
        .await
        .unwrap();
    app.settle().await;
    let letters = app.dead_letters().await.unwrap();
    assert_eq!(letters.len(), 2);
    for letter in &letters {
        assert_eq!(letter.reason, DlqReason::Decode);
        assert_eq!(
            letter.attempts, 1,
            "a payload that does not decode is not retried"
        );
        assert!(
            letter
                .error
                .contains("payload is not a valid `user.registered` v3"),
            "{}",
            letter.error
        );
    }
    assert!(
        letters[0].error.contains("invalid type"),
        "serde's message is kept: {}",
        letters[0].error
    );
    assert!(seen.0.lock().unwrap().is_empty());
}

async fn unknown_newer_versions_are_retried_then_dead_lettered_with_reason_version(rig: Rig) {
    let seen = Arc::new(Registrations::default());
    let app = rig
        .app("newer")
        .shared_state(Arc::clone(&seen))
        .handlers(&["on_registered"])
        .start()
        .await
        .unwrap();
    app.publisher()
        .publish_raw("user.registered", 4, r#"{"id": 1}"#)
        .await
        .unwrap();
    app.settle().await;
    let letters = app.dead_letters().await.unwrap();
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0].reason, DlqReason::Version);
    assert_eq!(
        letters[0].attempts, 2,
        "retried once (retries = 1), in case a newer instance takes it"
    );
    assert!(
        letters[0].error.contains("v4 is newer"),
        "{}",
        letters[0].error
    );
}

/// Version 2 with no upcast chain: a v1 message cannot become one.
#[event("refund.issued", version = 2)]
pub struct RefundIssued {
    pub id: u64,
}

#[handler(retries = 3)]
async fn on_refund(event: RefundIssued, seen: State<Seen>) {
    seen.record(event.id);
}

async fn versions_older_than_the_upcast_chain_dead_letter_at_once(rig: Rig) {
    let seen = Arc::new(Seen::default());
    let app = start(&rig, "too-old", &seen, &["on_refund"]).await;
    app.publisher()
        .publish_raw("refund.issued", 1, r#"{"id": 1}"#)
        .await
        .unwrap();
    app.settle().await;
    let letters = app.dead_letters().await.unwrap();
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0].reason, DlqReason::Version);
    assert_eq!(
        letters[0].attempts, 1,
        "no retry can make an old version upcastable"
    );
    assert!(
        letters[0].error.contains("v1 is older"),
        "{}",
        letters[0].error
    );
    assert!(seen.ids().is_empty());
}

// ---- idempotency ----------------------------------------------------------------------------

#[handler(idempotent = "redelivered")]
async fn idem_redelivered(event: OrderPlaced, seen: State<Seen>) {
    seen.record(event.id);
}

#[handler(idempotent = "off")]
async fn idem_off(event: OrderPlaced, seen: State<Seen>) {
    seen.record(event.id);
}

#[handler(idempotent = "always")]
async fn idem_always(event: OrderPlaced, seen: State<Seen>) {
    seen.record(event.id);
}

/// Slow enough that a second copy of its event arrives while it runs, on the second slot.
#[handler(idempotent = "claim", concurrency = 2, timeout = "2s")]
async fn idem_claim(event: OrderPlaced, seen: State<Seen>) {
    seen.record(event.id);
    tokio::time::sleep(Duration::from_millis(500)).await;
}

/// The same without a claim: both copies are looked up before either is recorded.
#[handler(idempotent = "always", concurrency = 2, timeout = "2s")]
async fn idem_always_slow(event: OrderPlaced, seen: State<Seen>) {
    seen.record(event.id + 100);
    tokio::time::sleep(Duration::from_millis(500)).await;
}

/// FAULTS #9/#10: two holders of one event at once. With `claim`, the second hands its copy
/// back while the first runs, and then finds it processed; with `always` alone both run.
async fn fault_10_a_claim_lets_one_of_two_holders_run_an_event(rig: Rig) {
    let seen = Arc::new(Seen::default());
    let window = Duration::from_millis(100);
    let app = match &rig {
        Rig::Memory(_) => TestApp::builder("idem-claim")
            .broker(MemoryBroker::new().with_duplicate_window(Duration::ZERO)),
        Rig::Nats(_) => rig.app("idem-claim").configure(|b| {
            let mut topology = Topology::default();
            topology.duplicate_window = window;
            topology.ack_wait = Duration::from_secs(1);
            b.topology(topology)
        }),
    };
    let app = app
        .shared_state(Arc::clone(&seen))
        .handlers(&["idem_claim", "idem_always_slow"])
        .start()
        .await
        .unwrap();
    let options = || PublishOptions::default().id("order-7-claimed");
    app.publisher()
        .publish_with(&OrderPlaced { id: 7 }, options())
        .await
        .unwrap();
    // Past the duplicate window, while the first copy's handlers still run.
    tokio::time::sleep(window * 2).await;
    app.publisher()
        .publish_with(&OrderPlaced { id: 7 }, options())
        .await
        .unwrap();
    app.settle().await;
    assert_eq!(
        seen.ids(),
        [7, 107, 107],
        "the claimed handler ran once, the unclaimed one twice"
    );
    let claimed = app.stats("idem_claim");
    assert_eq!(
        (claimed.handled, claimed.retried, claimed.duplicates),
        (1, 0, 1),
        "the second copy waited for the claim, then was a duplicate"
    );
    let unclaimed = app.stats("idem_always_slow");
    assert_eq!((unclaimed.handled, unclaimed.duplicates), (2, 0));
}

async fn a_redelivered_processed_event_is_not_handled_twice(rig: Rig) {
    let seen = Arc::new(Seen::default());
    let app = start(&rig, "idem-redelivered", &seen, &["idem_redelivered"]).await;
    app.lose_next_acks(1); // processed and recorded, but the ack never arrives
    app.publish(&OrderPlaced { id: 7 }).await.unwrap();
    app.settle().await;
    assert_eq!(
        seen.ids(),
        [7],
        "the redelivery was recognised as a duplicate"
    );
    let stats = app.stats("idem_redelivered");
    assert_eq!((stats.handled, stats.duplicates), (1, 1));
}

async fn with_idempotency_off_a_redelivered_event_is_handled_again(rig: Rig) {
    let seen = Arc::new(Seen::default());
    let app = start(&rig, "idem-off", &seen, &["idem_off"]).await;
    app.lose_next_acks(1);
    app.publish(&OrderPlaced { id: 7 }).await.unwrap();
    app.settle().await;
    assert_eq!(seen.ids(), [7, 7]);
    assert_eq!(app.stats("idem_off").duplicates, 0);
}

async fn fault_10_always_mode_catches_republished_ids_outside_the_duplicate_window(rig: Rig) {
    let seen = Arc::new(Seen::default());
    // A duplicate window so short that the republished id gets through.
    let window = Duration::from_millis(100);
    let app = match &rig {
        Rig::Memory(_) => TestApp::builder("idem-always")
            .broker(MemoryBroker::new().with_duplicate_window(Duration::ZERO)),
        Rig::Nats(_) => rig.app("idem-always").configure(|b| {
            let mut topology = Topology::default();
            topology.duplicate_window = window;
            topology.ack_wait = Duration::from_secs(1);
            b.topology(topology)
        }),
    };
    let app = app
        .shared_state(Arc::clone(&seen))
        .handlers(&["idem_always", "idem_redelivered"])
        .start()
        .await
        .unwrap();
    let options = || PublishOptions::default().id("order-7-placed");
    app.publisher()
        .publish_with(&OrderPlaced { id: 7 }, options())
        .await
        .unwrap();
    app.settle().await;
    tokio::time::sleep(window * 2).await;
    app.publisher()
        .publish_with(&OrderPlaced { id: 7 }, options())
        .await
        .unwrap();
    app.settle().await;
    let always = app.stats("idem_always");
    assert_eq!(
        (always.handled, always.duplicates),
        (1, 1),
        "`always` looks up first deliveries too"
    );
    // `redelivered` trusts first deliveries: its handler runs again (the atomic record of the
    // id then finds the first one, which stands). `duplicate` counts only messages whose
    // handler was not called, so both runs count as handled.
    assert_eq!(
        seen.ids(),
        [7, 7, 7],
        "idem_always once, idem_redelivered twice"
    );
    let redelivered = app.stats("idem_redelivered");
    assert_eq!(
        (redelivered.handled, redelivered.duplicates),
        (2, 0),
        "a handler that ran is never counted as a duplicate"
    );
}

async fn fault_11_the_duplicate_window_drops_a_republished_id(rig: Rig) {
    let seen = Arc::new(Seen::default());
    let app = start(&rig, "dup-window", &seen, &["idem_off"]).await;
    for _ in 0..5 {
        app.publisher()
            .publish_with(
                &OrderPlaced { id: 3 },
                PublishOptions::default().id("same-id"),
            )
            .await
            .unwrap();
    }
    app.settle().await;
    assert_eq!(
        app.published::<OrderPlaced>().await.unwrap().len(),
        1,
        "one copy stored"
    );
    assert_eq!(seen.ids(), [3]);
}

// ---- panics, timeouts, concurrency ----------------------------------------------------------

#[handler(retries = 1, base_delay = "10ms")]
async fn panics_on_two(event: OrderPlaced, seen: State<Seen>) {
    if event.id == 2 {
        panic!("boom on {}", event.id);
    }
    seen.record(event.id);
}

async fn fault_07_a_panic_is_isolated_to_its_message(rig: Rig) {
    let seen = Arc::new(Seen::default());
    let app = start(&rig, "panics", &seen, &["panics_on_two"]).await;
    for id in 1..=3 {
        app.publish(&OrderPlaced { id }).await.unwrap();
    }
    app.settle().await;
    assert_eq!(seen.ids(), [1, 3], "the other messages are handled");
    let letters = app.dead_letters().await.unwrap();
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0].reason, DlqReason::RetriesExhausted);
    assert_eq!(letters[0].error, "panicked: boom on 2");
    assert_eq!(letters[0].attempts, 2);
}

#[handler(timeout = "1s", retries = 1, base_delay = "10ms")]
async fn too_slow(event: OrderPlaced, seen: State<Seen>) {
    seen.calls.fetch_add(1, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_secs(event.id)).await;
    seen.record(event.id);
}

async fn a_handler_past_its_timeout_is_retried_then_dead_lettered(rig: Rig) {
    let seen = Arc::new(Seen::default());
    let app = start(&rig, "timeouts", &seen, &["too_slow"]).await;
    app.publish(&OrderPlaced { id: 60 }).await.unwrap();
    app.settle().await;
    assert_eq!(seen.calls.load(Ordering::SeqCst), 2);
    assert!(seen.ids().is_empty(), "the slow attempts were cut off");
    let letters = app.dead_letters().await.unwrap();
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0].error, "timed out after 1s");
}

#[handler(concurrency = 3)]
async fn three_at_a_time(event: OrderPlaced, seen: State<Seen>) {
    let now = seen.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
    seen.max_in_flight.fetch_max(now, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(50)).await;
    seen.in_flight.fetch_sub(1, Ordering::SeqCst);
    seen.record(event.id);
}

#[handler]
async fn one_at_a_time(event: OrderPlaced, seen: State<Seen>) {
    let now = seen.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
    seen.max_in_flight.fetch_max(now, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(50)).await;
    seen.in_flight.fetch_sub(1, Ordering::SeqCst);
    seen.record(event.id);
}

async fn the_concurrency_limit_is_respected(rig: Rig) {
    for (handler, limit) in [("three_at_a_time", 3), ("one_at_a_time", 1)] {
        let rig = rig.fresh();
        let seen = Arc::new(Seen::default());
        let app = start(&rig, "concurrency", &seen, &[handler]).await;
        for id in 0..20 {
            app.publish(&OrderPlaced { id }).await.unwrap();
        }
        app.settle().await;
        assert_eq!(seen.ids(), (0..20).collect::<Vec<_>>(), "{handler}");
        assert_eq!(
            seen.max_in_flight.load(Ordering::SeqCst),
            limit,
            "{handler}"
        );
    }
}

// ---- metadata propagation -------------------------------------------------------------------

#[handler]
async fn ship_after_placed(event: OrderPlaced, ctx: Context) -> Result<(), HandlerError> {
    assert_eq!(ctx.handler(), "ship_after_placed");
    assert_eq!(ctx.attempt(), 1);
    ctx.publish(&OrderShipped { id: event.id }).await?;
    Ok(())
}

async fn context_publish_carries_correlation_and_causation(rig: Rig) {
    let seen = Arc::new(Seen::default());
    let app = start(&rig, "metadata", &seen, &["ship_after_placed"]).await;
    let placed_id = app
        .publisher()
        .publish_with(
            &OrderPlaced { id: 1 },
            PublishOptions::default().correlation_id("checkout-42"),
        )
        .await
        .unwrap();
    app.settle().await;
    let shipped: Vec<_> = app
        .published_raw()
        .await
        .unwrap()
        .into_iter()
        .filter(|m| m.name() == "order.shipped")
        .collect();
    assert_eq!(shipped.len(), 1);
    let meta = shipped[0].metadata();
    assert_eq!(meta.correlation_id, "checkout-42");
    assert_eq!(meta.causation_id.as_deref(), Some(placed_id.as_str()));
    assert_eq!(&*meta.source, "metadata");
    assert_eq!(meta.version, 1);
    assert_eq!(
        uuid_version(&placed_id),
        Some('7'),
        "ids of new events are UUID v7: {placed_id}"
    );
    assert_eq!(
        uuid_version(&meta.id),
        Some('8'),
        "ids of follow-up events are UUID v8, derived from the cause, the handler and the index: {}",
        meta.id
    );
    assert_ne!(meta.id, placed_id);
}

/// On the paused clock a retry comes exactly after its delay; a broker redelivers no earlier
/// than the nak delay (later by however long the machine takes, which is not asserted).
fn assert_gaps(rig: &Rig, gaps: &[Duration], expected_ms: &[u64], what: &str) {
    let millis: Vec<u64> = gaps.iter().map(|d| d.as_millis() as u64).collect();
    assert_eq!(millis.len(), expected_ms.len(), "{what}: {millis:?}");
    for (gap, expected) in millis.iter().zip(expected_ms) {
        if rig.is_nats() {
            assert!(
                gap >= expected,
                "{what}: {millis:?} (each at least {expected_ms:?})"
            );
        } else {
            assert_eq!(gap, expected, "{what}: {millis:?}");
        }
    }
}

/// The shutdown tests' handler runs for 2 s: with the rig's 1 s ack wait a machine under load
/// can miss an in-progress ack, and the broker then hands the message out a second time while
/// it runs (at-least-once allows that; these tests count side effects exactly).
fn slow_handler_ack_wait(builder: eda::AppBuilder) -> eda::AppBuilder {
    builder.ack_wait(Duration::from_secs(10))
}

async fn wait_until_called(seen: &Seen) {
    while seen.calls.load(Ordering::SeqCst) == 0 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn uuid_version(id: &str) -> Option<char> {
    id.chars().nth(14)
}

async fn a_first_event_correlates_with_itself(rig: Rig) {
    let seen = Arc::new(Seen::default());
    let app = start(&rig, "correlation", &seen, &[]).await;
    let id = app.publish(&OrderPlaced { id: 1 }).await.unwrap();
    let raw = app.published_raw().await.unwrap();
    assert_eq!(raw[0].metadata().correlation_id, id);
    assert_eq!(raw[0].metadata().causation_id, None);
}

// ---- instances and services -----------------------------------------------------------------

#[handler(concurrency = 4)]
async fn shared_work(event: OrderPlaced, seen: State<Seen>) {
    tokio::task::yield_now().await;
    seen.record(event.id);
}

async fn instances_of_one_service_share_the_work_and_services_each_get_everything(rig: Rig) {
    let seen_a = Arc::new(Seen::default());
    let seen_b = Arc::new(Seen::default());
    let seen_other = Arc::new(Seen::default());
    let app = |service: &str, seen: &Arc<Seen>| {
        rig.app(service)
            .shared_state(Arc::clone(seen))
            .handlers(&["shared_work"])
            .start()
    };
    let a = app("workers", &seen_a).await.unwrap();
    let b = app("workers", &seen_b).await.unwrap();
    let other = app("reporting", &seen_other).await.unwrap();
    for id in 0..200 {
        a.publish(&OrderPlaced { id }).await.unwrap();
    }
    a.settle().await;
    let mut both: Vec<u64> = seen_a.ids().into_iter().chain(seen_b.ids()).collect();
    both.sort_unstable();
    assert_eq!(
        both,
        (0..200).collect::<Vec<_>>(),
        "each event handled once by the `workers` instances"
    );
    assert_eq!(
        seen_other.ids(),
        (0..200).collect::<Vec<_>>(),
        "`reporting` gets every event too"
    );
    for app in [a, b, other] {
        app.shutdown().await.unwrap();
    }
}

// ---- shutdown -------------------------------------------------------------------------------

#[handler]
async fn slow_but_finishes(event: OrderPlaced, seen: State<Seen>) {
    seen.calls.fetch_add(1, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_secs(2)).await;
    seen.record(event.id);
}

async fn shutdown_lets_in_flight_handlers_finish_and_leaves_the_rest_queued(rig: Rig) {
    let seen = Arc::new(Seen::default());
    let app = rig
        .app("drain")
        .configure(slow_handler_ack_wait)
        .shared_state(Arc::clone(&seen))
        .handlers(&["slow_but_finishes"])
        .start()
        .await
        .unwrap();
    for id in 0..3 {
        app.publish(&OrderPlaced { id }).await.unwrap();
    }
    wait_until_called(&seen).await; // the first is in flight
    app.shutdown().await.unwrap();
    assert_eq!(
        seen.ids(),
        [0],
        "the in-flight handler finished; no new work was taken"
    );
    let next = rig
        .app("drain")
        .configure(slow_handler_ack_wait)
        .shared_state(Arc::clone(&seen))
        .handlers(&["slow_but_finishes"])
        .start()
        .await
        .unwrap();
    next.settle().await;
    assert_eq!(
        seen.ids(),
        [0, 1, 2],
        "a new instance handles what was left"
    );
}

async fn handlers_past_the_shutdown_timeout_are_stopped_and_redelivered(rig: Rig) {
    let seen = Arc::new(Seen::default());
    let app = rig
        .app("cutoff")
        .configure(slow_handler_ack_wait)
        .shared_state(Arc::clone(&seen))
        .handlers(&["slow_but_finishes"])
        .configure(|b| b.shutdown_timeout(Duration::from_millis(500)))
        .start()
        .await
        .unwrap();
    app.publish(&OrderPlaced { id: 1 }).await.unwrap();
    wait_until_called(&seen).await;
    app.shutdown().await.unwrap();
    assert!(seen.ids().is_empty(), "cut off at the deadline");
    let next = rig
        .app("cutoff")
        .configure(slow_handler_ack_wait)
        .shared_state(Arc::clone(&seen))
        .handlers(&["slow_but_finishes"])
        .start()
        .await
        .unwrap();
    next.settle().await;
    assert_eq!(seen.ids(), [1], "nothing lost: the message came back");
    assert_eq!(next.stats("slow_but_finishes").handled, 1);
}

// ---- start policy ---------------------------------------------------------------------------

#[handler(start = "all")]
async fn replays_history(event: OrderPlaced, seen: State<Seen>) {
    seen.record(event.id);
}

async fn start_all_replays_what_the_broker_holds_and_start_new_does_not(rig: Rig) {
    let seen = Arc::new(Seen::default());
    let producer = rig.app("producer").handlers(&[]).start().await.unwrap();
    producer.publish(&OrderPlaced { id: 1 }).await.unwrap();
    let consumer = rig
        .app("late")
        .shared_state(Arc::clone(&seen))
        .handlers(&["replays_history", "idem_off"])
        .start()
        .await
        .unwrap();
    producer.publish(&OrderPlaced { id: 2 }).await.unwrap();
    consumer.settle().await;
    assert_eq!(
        consumer.handled("replays_history"),
        2,
        "`all` saw the earlier event"
    );
    assert_eq!(
        consumer.handled("idem_off"),
        1,
        "`new` (the default) did not"
    );
}

/// What `takes_the_backlog` saw, one entry per call: the event's id, its metadata and which
/// delivery it was.
#[derive(Default)]
pub struct Calls(Mutex<Vec<(u64, Arc<Metadata>, u32)>>);

impl Calls {
    fn all(&self) -> Vec<(u64, Arc<Metadata>, u32)> {
        self.0.lock().unwrap().clone()
    }
}

#[handler(start = "all")]
async fn takes_the_backlog(event: Envelope<OrderPlaced>, calls: State<Calls>) {
    calls
        .0
        .lock()
        .unwrap()
        .push((event.id, Arc::clone(&event.metadata), event.attempt));
}

/// FAULTS.md #1 (Watermill's TestPublishSubscribe): 100 events, each with a correlation and a
/// causation id of its own, are published before the handler's app exists. Started with
/// `start = "all"`, it handles each exactly once, on its first delivery, seeing the payload and
/// the metadata it was published with; once `shutdown()` has returned nothing more is handled.
async fn fault_01_a_hundred_events_published_before_the_handler_starts_are_each_handled_once_with_their_metadata(
    rig: Rig,
) {
    const EVENTS: u64 = 100;
    let calls = Arc::new(Calls::default());
    let producer = rig
        .app("backlog-producer")
        .handlers(&[])
        .start()
        .await
        .unwrap();
    let mut published = HashMap::new();
    for n in 0..EVENTS {
        let options = PublishOptions::default()
            .correlation_id(format!("checkout-{n}"))
            .causation_id(format!("cart-{n}"));
        let id = producer
            .publisher()
            .publish_with(&OrderPlaced { id: n }, options)
            .await
            .unwrap();
        published.insert(n, id);
    }
    let consumer = rig
        .app("backlog")
        .shared_state(Arc::clone(&calls))
        .handlers(&["takes_the_backlog"])
        .start()
        .await
        .unwrap();
    consumer.settle().await;
    let seen = calls.all();
    let mut per_id: HashMap<u64, u32> = HashMap::new();
    for (n, _, _) in &seen {
        *per_id.entry(*n).or_default() += 1;
    }
    assert_eq!(
        per_id.len() as u64,
        EVENTS,
        "every event handled: {per_id:?}"
    );
    assert!(
        per_id.values().all(|&count| count == 1),
        "each event handled exactly once: {per_id:?}"
    );
    for (n, meta, attempt) in &seen {
        assert_eq!(
            meta.id, published[n],
            "event {n}: the id `publish_with` returned"
        );
        assert_eq!(meta.correlation_id, format!("checkout-{n}"), "event {n}");
        assert_eq!(
            meta.causation_id.as_deref(),
            Some(&*format!("cart-{n}")),
            "event {n}"
        );
        assert_eq!(
            &*meta.source, "backlog-producer",
            "event {n}: the publishing service"
        );
        assert_eq!(&*meta.name, "order.placed", "event {n}");
        assert_eq!(meta.version, 1, "event {n}");
        assert_eq!(*attempt, 1, "event {n}: handled on its first delivery");
    }
    let stats = consumer.stats("takes_the_backlog");
    assert_eq!(
        (
            stats.handled,
            stats.retried,
            stats.duplicates,
            stats.dead_lettered
        ),
        (EVENTS, 0, 0, 0)
    );
    tokio::time::timeout(Duration::from_secs(30), consumer.shutdown())
        .await
        .expect("shutdown returns instead of hanging")
        .unwrap();
    producer.publish(&OrderPlaced { id: EVENTS }).await.unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        calls.all().len() as u64,
        EVENTS,
        "nothing is handled after `shutdown()` returned"
    );
}

on_both_transports!(
    versions_older_than_the_upcast_chain_dead_letter_at_once,
    every_matching_handler_gets_every_event,
    wildcards_match_tokens_as_nats_does,
    fault_03_retries_follow_the_backoff_schedule,
    jitter_keeps_each_delay_between_half_and_all_of_it,
    exhausted_retries_dead_letter_with_everything_needed_to_redrive,
    fault_06_permanent_errors_dead_letter_at_once_with_the_error_chain,
    old_versions_are_upcast_through_the_whole_chain,
    fault_06_undecodable_payloads_dead_letter_at_once_with_reason_decode,
    unknown_newer_versions_are_retried_then_dead_lettered_with_reason_version,
    a_redelivered_processed_event_is_not_handled_twice,
    with_idempotency_off_a_redelivered_event_is_handled_again,
    fault_10_always_mode_catches_republished_ids_outside_the_duplicate_window,
    fault_10_a_claim_lets_one_of_two_holders_run_an_event,
    fault_11_the_duplicate_window_drops_a_republished_id,
    fault_07_a_panic_is_isolated_to_its_message,
    a_handler_past_its_timeout_is_retried_then_dead_lettered,
    the_concurrency_limit_is_respected,
    context_publish_carries_correlation_and_causation,
    a_first_event_correlates_with_itself,
    instances_of_one_service_share_the_work_and_services_each_get_everything,
    shutdown_lets_in_flight_handlers_finish_and_leaves_the_rest_queued,
    handlers_past_the_shutdown_timeout_are_stopped_and_redelivered,
    start_all_replays_what_the_broker_holds_and_start_new_does_not,
    fault_01_a_hundred_events_published_before_the_handler_starts_are_each_handled_once_with_their_metadata,
);
