//! Circuit breakers through the public API (DESIGN.md §3): an open breaker pauses the
//! handlers behind it, so an outage spends no attempts and fills no dead-letter queue. Every
//! behaviour is written once and runs in memory (paused clock) and on a real `nats-server`.
#![allow(missing_docs, missing_debug_implementations)]

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use async_nats::jetstream;
use eda::prelude::*;
use eda::testing::TestApp;
use eda::{BreakerState, DlqReason};
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::time::Instant;

#[macro_use]
mod support;
use support::Rig;

#[event("payment.requested")]
pub struct PaymentRequested {
    pub id: u64,
}

#[event("mail.requested")]
pub struct MailRequested {
    pub id: u64,
}

#[event("sms.requested")]
pub struct SmsRequested {
    pub id: u64,
}

/// A scripted downstream: fails every call while `down`, answers after 100 ms while `slow`.
#[derive(Default)]
pub struct Downstream {
    down: AtomicBool,
    slow: AtomicBool,
    calls: AtomicU32,
    failed: AtomicU32,
    /// Event id -> the attempt numbers it succeeded at (one each, if handled exactly once).
    handled: Mutex<HashMap<u64, Vec<u32>>>,
    times: Mutex<Vec<Instant>>,
}

impl Downstream {
    fn down() -> Arc<Downstream> {
        let api = Arc::new(Downstream::default());
        api.down.store(true, Ordering::SeqCst);
        api
    }

    fn recover(&self) {
        self.down.store(false, Ordering::SeqCst);
    }

    fn call(&self, id: u64, ctx: &Context) -> Result<(), HandlerError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        self.times.lock().unwrap().push(Instant::now());
        if self.down.load(Ordering::SeqCst) {
            self.failed.fetch_add(1, Ordering::SeqCst);
            return Err(HandlerError::retry("the downstream is down"));
        }
        self.handled
            .lock()
            .unwrap()
            .entry(id)
            .or_default()
            .push(ctx.attempt());
        Ok(())
    }

    fn calls(&self) -> u32 {
        self.calls.load(Ordering::SeqCst)
    }

    fn handled(&self) -> usize {
        self.handled.lock().unwrap().len()
    }
}

/// Polls `check` every 50 ms until it holds, for at most `limit` (a hang guard, not a speed
/// requirement); returns whether it held.
async fn eventually(limit: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    while !check() {
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    true
}

const LIMIT: Duration = Duration::from_secs(60);

fn state(app: &TestApp, breaker: &str) -> BreakerState {
    app.app()
        .breaker(breaker)
        .unwrap_or_else(|| panic!("the app has breaker `{breaker}`"))
        .state()
}

/// The process's Prometheus recorder, installed before the first app creates its handles.
fn prometheus() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        metrics_exporter_prometheus::PrometheusBuilder::new()
            .install_recorder()
            .expect("no other recorder is installed in this test binary")
    })
}

/// The value of the sample `name{labels}` in a Prometheus text exposition.
fn sample(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines()
        .filter(|line| line.starts_with(&format!("{name}{{")))
        .find(|line| {
            labels
                .iter()
                .all(|(k, v)| line.contains(&format!("{k}=\"{v}\"")))
        })
        .and_then(|line| line.rsplit(' ').next())
        .and_then(|value| value.parse().ok())
}

// ---- an outage ------------------------------------------------------------------------------

/// Opens after 5 failed calls of 10 s, 200 ms open doubling to 800 ms.
fn quick() -> BreakerConfig {
    BreakerConfig::default()
        .min_calls(5)
        .failure_ratio(0.5)
        .window(Duration::from_secs(10))
        .open_for(Duration::from_millis(200))
        .max_open_for(Duration::from_millis(800))
}

/// Longer than retries × max_delay (2 × 50 ms): a breaker rejecting calls would dead-letter
/// every message of it.
const OUTAGE: Duration = Duration::from_secs(3);

// One handler per transport, so that the memory and JetStream runs of a test (in parallel in
// one process) read their own breaker's metrics.
#[handler(
    breaker = "payments_memory",
    retries = 2,
    backoff = "fixed",
    base_delay = "50ms",
    jitter = false,
    concurrency = 4
)]
async fn pay_memory(
    event: PaymentRequested,
    api: State<Downstream>,
    ctx: Context,
) -> Result<(), HandlerError> {
    api.call(event.id, &ctx)
}

#[handler(
    breaker = "payments_jetstream",
    retries = 2,
    backoff = "fixed",
    base_delay = "50ms",
    jitter = false,
    concurrency = 4
)]
async fn pay_jetstream(
    event: PaymentRequested,
    api: State<Downstream>,
    ctx: Context,
) -> Result<(), HandlerError> {
    api.call(event.id, &ctx)
}

async fn an_outage_pauses_consumption_and_spends_no_attempts(rig: Rig) {
    let metrics = prometheus();
    let (handler, breaker) = if rig.is_nats() {
        ("pay_jetstream", "payments_jetstream")
    } else {
        ("pay_memory", "payments_memory")
    };
    let api = Downstream::down();
    let app = rig
        .app("payments")
        .shared_state(Arc::clone(&api))
        .handlers(&[handler])
        .configure(|b| b.breaker(breaker, quick()))
        .start()
        .await
        .unwrap();
    let events: Vec<PaymentRequested> = (0..300).map(|id| PaymentRequested { id }).collect();
    app.publisher().publish_all(&events).await.unwrap();
    assert!(
        eventually(LIMIT, || state(&app, breaker) != BreakerState::Closed).await,
        "the breaker opens"
    );
    if let Rig::Nats(server) = &rig {
        let (pending, _, redelivered) = consumer_state(&server.url(), handler).await;
        // Only the few that ran before it opened and at most 4 + 64 pulled ahead left the
        // broker's pending count (those not started went back, for the open period).
        assert!(
            pending >= 200,
            "the messages wait in the broker, undelivered: {pending} pending"
        );
        assert!(
            redelivered <= 10,
            "few were delivered twice (those failed before it opened): {redelivered}"
        );
    }
    tokio::time::sleep(OUTAGE).await;
    let calls_during_outage = api.calls();
    api.recover();
    app.settle().await;

    assert_eq!(api.handled(), 300, "every event is handled");
    let handled = api.handled.lock().unwrap().clone();
    assert!(
        handled.values().all(|attempts| attempts.len() == 1),
        "each exactly once"
    );
    assert!(
        app.dead_letters().await.unwrap().is_empty(),
        "an outage fills no dead-letter queue"
    );
    assert!(
        calls_during_outage < 40,
        "the downstream saw the calls before the trip and the probes only, not 300 × 3: {calls_during_outage}"
    );
    let retried = handled.values().filter(|a| a[0] > 1).count();
    assert!(
        retried as u32 <= api.failed.load(Ordering::SeqCst),
        "only the messages that failed before the trip count an attempt: {retried} were handled after attempt 1"
    );
    assert!(
        handled.values().all(|a| a[0] <= 3),
        "no message ran out of attempts"
    );

    let text = metrics.render();
    let moved = |to: &str| {
        sample(
            &text,
            "eda_circuit_breaker_transitions_total",
            &[("breaker", breaker), ("to", to)],
        )
        .unwrap_or_else(|| panic!("a transitions sample to {to}:\n{text}"))
    };
    assert!(moved("open") >= 1.0);
    assert_eq!(
        moved("open"),
        moved("half_open"),
        "every open period ended in half-open"
    );
    assert_eq!(moved("closed"), 1.0, "closed once, at the end");
    assert_eq!(
        sample(&text, "eda_circuit_breaker_state", &[("breaker", breaker)]),
        Some(0.0)
    );
    assert_eq!(state(&app, breaker), BreakerState::Closed);
    app.shutdown().await.unwrap();
}

/// `(num_pending, num_ack_pending, num_redelivered)` of handler's consumer in service
/// `payments`.
async fn consumer_state(url: &str, handler: &str) -> (u64, usize, usize) {
    let client = async_nats::connect(url)
        .await
        .expect("a plain client connects");
    let js = jetstream::new(client);
    let stream = js.get_stream("EDA_EVENTS").await.unwrap();
    let info = stream
        .consumer_info(format!("payments__{handler}"))
        .await
        .unwrap();
    (info.num_pending, info.num_ack_pending, info.num_redelivered)
}

// ---- half-open ------------------------------------------------------------------------------

#[handler(
    breaker = "flaky_api",
    retries = 10,
    backoff = "fixed",
    base_delay = "10ms",
    jitter = false
)]
async fn probed(
    event: PaymentRequested,
    api: State<Downstream>,
    ctx: Context,
) -> Result<(), HandlerError> {
    api.call(event.id, &ctx)
}

async fn a_failed_probe_reopens_for_twice_as_long_up_to_the_cap(rig: Rig) {
    let api = Downstream::down();
    let app = rig
        .app("probes")
        .shared_state(Arc::clone(&api))
        .handlers(&["probed"])
        .configure(|b| b.breaker("flaky_api", quick().min_calls(3)))
        .start()
        .await
        .unwrap();
    let events: Vec<PaymentRequested> = (0..20).map(|id| PaymentRequested { id }).collect();
    app.publisher().publish_all(&events).await.unwrap();
    // 3 calls trip it; then one probe per open period.
    assert!(eventually(LIMIT, || api.calls() >= 3 + 5).await);
    let times = api.times.lock().unwrap().clone();
    let gaps: Vec<Duration> = times[2..8].windows(2).map(|w| w[1] - w[0]).collect();
    let periods = [200, 400, 800, 800, 800].map(Duration::from_millis);
    for (gap, period) in gaps.iter().zip(periods) {
        assert!(
            *gap >= period,
            "probes {gaps:?} come after the open periods {periods:?}"
        );
    }
    if !rig.is_nats() {
        // Under the paused clock the gaps are the periods themselves: the cap holds.
        for (gap, period) in gaps.iter().zip(periods) {
            assert!(*gap < period + Duration::from_millis(50), "{gaps:?}");
        }
    }
    assert_eq!(state(&app, "flaky_api"), BreakerState::Open);
    api.recover();
    app.settle().await;
    assert_eq!(api.handled(), 20);
    assert!(app.dead_letters().await.unwrap().is_empty());
    app.shutdown().await.unwrap();
}

// ---- shared breakers ------------------------------------------------------------------------

/// Two downstreams: mail and sms behind one provider breaker, payments behind another.
#[derive(Default)]
pub struct Providers {
    mail: Downstream,
    sms: Downstream,
    payments: Downstream,
}

#[handler(
    breaker = "provider",
    retries = 10,
    backoff = "fixed",
    base_delay = "10ms",
    jitter = false
)]
async fn send_mail(
    event: MailRequested,
    api: State<Providers>,
    ctx: Context,
) -> Result<(), HandlerError> {
    api.mail.call(event.id, &ctx)
}

#[handler(breaker = "provider", retries = 10)]
async fn send_sms(
    event: SmsRequested,
    api: State<Providers>,
    ctx: Context,
) -> Result<(), HandlerError> {
    api.sms.call(event.id, &ctx)
}

#[handler(breaker = "bank")]
async fn take_payment(
    event: PaymentRequested,
    api: State<Providers>,
    ctx: Context,
) -> Result<(), HandlerError> {
    api.payments.call(event.id, &ctx)
}

async fn handlers_on_one_breaker_pause_together(rig: Rig) {
    let providers = Arc::new(Providers::default());
    providers.mail.down.store(true, Ordering::SeqCst);
    let app = rig
        .app("notify")
        .shared_state(Arc::clone(&providers))
        .handlers(&["send_mail", "send_sms", "take_payment"])
        .configure(|b| {
            let five_seconds = Duration::from_secs(5);
            b.breaker(
                "provider",
                quick()
                    .min_calls(3)
                    .open_for(five_seconds)
                    .max_open_for(five_seconds),
            )
        })
        .start()
        .await
        .unwrap();
    for id in 0..5 {
        app.publish(&MailRequested { id }).await.unwrap();
    }
    assert!(eventually(LIMIT, || state(&app, "provider") == BreakerState::Open).await);
    for id in 0..5 {
        app.publish(&SmsRequested { id }).await.unwrap();
        app.publish(&PaymentRequested { id }).await.unwrap();
    }
    assert!(
        eventually(LIMIT, || providers.payments.handled() == 5).await,
        "a handler on another breaker keeps running"
    );
    // The sms messages were published before the payments, which are all handled by now.
    assert_eq!(
        providers.sms.calls(),
        0,
        "the failing mail downstream paused the sms handler too"
    );
    assert_eq!(state(&app, "provider"), BreakerState::Open);
    assert_eq!(state(&app, "bank"), BreakerState::Closed);
    providers.mail.recover();
    // Half-open after the 5 s; the probe (mail or sms) succeeds and closes it.
    app.settle().await;
    assert_eq!(state(&app, "provider"), BreakerState::Closed);
    assert_eq!(providers.mail.handled(), 5);
    assert_eq!(providers.sms.handled(), 5);
    assert!(app.dead_letters().await.unwrap().is_empty());
    app.shutdown().await.unwrap();
}

// ---- what counts ----------------------------------------------------------------------------

#[handler(breaker = "strict_api", retries = 0)]
async fn refuse(_event: PaymentRequested) -> Result<(), HandlerError> {
    Err(HandlerError::permanent("card declined"))
}

async fn permanent_errors_and_undecodable_payloads_never_trip_it(rig: Rig) {
    let app = rig
        .app("strict")
        .handlers(&["refuse"])
        .configure(|b| b.breaker("strict_api", quick().min_calls(3)))
        .start()
        .await
        .unwrap();
    for id in 0..10 {
        app.publish(&PaymentRequested { id }).await.unwrap();
        app.publisher()
            .publish_raw("payment.requested", 1, "not json")
            .await
            .unwrap();
    }
    app.settle().await;
    let letters = app.dead_letters().await.unwrap();
    let count = |reason| letters.iter().filter(|l| l.reason == reason).count();
    assert_eq!(count(DlqReason::Permanent), 10);
    assert_eq!(count(DlqReason::Decode), 10);
    assert_eq!(state(&app, "strict_api"), BreakerState::Closed);
    app.shutdown().await.unwrap();
}

#[handler(breaker = "slow_api")]
async fn answer_slowly(
    event: PaymentRequested,
    api: State<Downstream>,
    ctx: Context,
) -> Result<(), HandlerError> {
    if api.slow.load(Ordering::SeqCst) {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    api.call(event.id, &ctx)
}

async fn slow_calls_trip_it_when_configured(rig: Rig) {
    let api = Arc::new(Downstream::default());
    api.slow.store(true, Ordering::SeqCst);
    let app = rig
        .app("slow")
        .shared_state(Arc::clone(&api))
        .handlers(&["answer_slowly"])
        .configure(|b| {
            b.breaker(
                "slow_api",
                quick()
                    .min_calls(3)
                    .slow_call(Duration::from_millis(20))
                    .open_for(Duration::from_secs(3))
                    .max_open_for(Duration::from_secs(3)),
            )
        })
        .start()
        .await
        .unwrap();
    for id in 0..10 {
        app.publish(&PaymentRequested { id }).await.unwrap();
    }
    assert!(eventually(LIMIT, || state(&app, "slow_api") == BreakerState::Open).await);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        api.handled(),
        3,
        "three slow successes (acked all the same) opened it"
    );
    // Half-open after 3 s: the probe is slow too, so it opens again, but the probe's message
    // succeeded and is acked, not run again.
    assert!(eventually(LIMIT, || api.handled() == 4).await);
    assert_eq!(state(&app, "slow_api"), BreakerState::Open);
    api.slow.store(false, Ordering::SeqCst);
    // Half-open after 3 s more; the quick probe closes it.
    app.settle().await;
    assert!(
        api.handled.lock().unwrap().values().all(|a| a.len() == 1),
        "every event ran once, the slow probe too"
    );
    assert_eq!(api.handled(), 10);
    app.shutdown().await.unwrap();
}

// ---- by hand --------------------------------------------------------------------------------

#[handler(breaker = "ledger_api", concurrency = 4)]
async fn book(
    event: PaymentRequested,
    api: State<Downstream>,
    ctx: Context,
) -> Result<(), HandlerError> {
    api.call(event.id, &ctx)
}

/// Messages taken while tripped by hand go back for one open period: short, for the tests.
fn one_second() -> BreakerConfig {
    BreakerConfig::default().open_for(Duration::from_secs(1))
}

async fn trip_and_reset_work_while_events_flow(rig: Rig) {
    let api = Arc::new(Downstream::default());
    let app = rig
        .app("ledger")
        .shared_state(Arc::clone(&api))
        .handlers(&["book"])
        .configure(|b| b.breaker("ledger_api", one_second()))
        .start()
        .await
        .unwrap();
    let ledger = app.app().breaker("ledger_api").expect("a default breaker");
    assert!(app.app().breaker("no_such_breaker").is_none());
    let events: Vec<PaymentRequested> = (0..100).map(|id| PaymentRequested { id }).collect();
    app.publisher().publish_all(&events[..50]).await.unwrap();
    app.settle().await;
    ledger.trip();
    assert_eq!(ledger.state(), BreakerState::Open);
    app.publisher().publish_all(&events[50..]).await.unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(api.handled(), 50, "nothing is taken while tripped");
    assert_eq!(
        ledger.state(),
        BreakerState::Open,
        "tripped by hand: open until reset"
    );
    ledger.reset();
    app.settle().await;
    assert_eq!(api.handled(), 100);
    let handled = api.handled.lock().unwrap().clone();
    assert!(
        handled.values().all(|a| a == &[1]),
        "a message handed back by the breaker is not counted as an attempt"
    );
    app.shutdown().await.unwrap();
}

async fn shutdown_while_open_exits_cleanly_and_a_restart_starts_closed(rig: Rig) {
    let api = Arc::new(Downstream::default());
    let start = || {
        rig.app("ledger")
            .shared_state(Arc::clone(&api))
            .handlers(&["book"])
            .configure(|b| b.breaker("ledger_api", one_second()))
            .start()
    };
    let app = start().await.unwrap();
    app.app().breaker("ledger_api").unwrap().trip();
    let events: Vec<PaymentRequested> = (0..20).map(|id| PaymentRequested { id }).collect();
    app.publisher().publish_all(&events).await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    app.shutdown().await.expect("a clean shutdown while open");
    assert_eq!(api.handled(), 0);
    let again = start().await.unwrap();
    assert_eq!(
        state(&again, "ledger_api"),
        BreakerState::Closed,
        "breakers are not remembered across a restart"
    );
    again.settle().await;
    assert_eq!(api.handled(), 20);
    assert!(api.handled.lock().unwrap().values().all(|a| a == &[1]));
    again.shutdown().await.unwrap();
}

on_both_transports!(
    an_outage_pauses_consumption_and_spends_no_attempts,
    a_failed_probe_reopens_for_twice_as_long_up_to_the_cap,
    handlers_on_one_breaker_pause_together,
    permanent_errors_and_undecodable_payloads_never_trip_it,
    slow_calls_trip_it_when_configured,
    trip_and_reset_work_while_events_flow,
    shutdown_while_open_exits_cleanly_and_a_restart_starts_closed,
);

// ---- readiness and configuration ------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_stays_ready_and_lists_open_breakers() {
    let app = TestApp::builder("ledger")
        .state(Downstream::default())
        .handlers(&["book"])
        .configure(|b| b.metrics_addr("127.0.0.1:0"))
        .start()
        .await
        .unwrap();
    let addr = app.app().metrics_addr().unwrap();
    let (status, body) = support::http_get(addr, "/readyz").await;
    assert_eq!(
        (status, body.contains(r#""open_breakers":[]"#)),
        (200, true),
        "{body}"
    );
    app.app().breaker("ledger_api").unwrap().trip();
    let (status, body) = support::http_get(addr, "/readyz").await;
    assert_eq!(status, 200, "the process is fine; its downstream is not");
    assert!(body.contains(r#""open_breakers":["ledger_api"]"#), "{body}");
    app.shutdown().await.unwrap();
}

#[test]
fn a_configured_breaker_no_handler_names_fails_startup() {
    let error = App::builder("ledger")
        .in_memory()
        .without_env()
        .state(Downstream::default())
        .handlers(&["book"])
        .breaker("ledgr_api", BreakerConfig::default())
        .build()
        .unwrap_err();
    assert_eq!(
        error.to_string(),
        "service `ledger` cannot start:\n  - breaker `ledgr_api` is configured but no handler of this app names it (with `#[handler(breaker = \"ledgr_api\")]`); named: ledger_api"
    );
}

#[tokio::test(start_paused = true)]
async fn a_breaker_can_start_tripped() {
    let api = Arc::new(Downstream::default());
    let app = TestApp::builder("ledger")
        .shared_state(Arc::clone(&api))
        .handlers(&["book"])
        .configure(|b| b.trip_breaker("ledger_api"))
        .start()
        .await
        .unwrap();
    assert_eq!(state(&app, "ledger_api"), BreakerState::Open);
    app.publish(&PaymentRequested { id: 1 }).await.unwrap();
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert_eq!(api.calls(), 0, "open until reset");
    app.app().breaker("ledger_api").unwrap().reset();
    app.settle().await;
    assert_eq!(api.handled(), 1);
    app.shutdown().await.unwrap();
    let error = App::builder("ledger")
        .in_memory()
        .without_env()
        .state(Downstream::default())
        .handlers(&["book"])
        .trip_breaker("ledgr_api")
        .build()
        .unwrap_err();
    assert!(
        error
            .to_string()
            .contains("breaker `ledgr_api` is tripped but no handler of this app names it"),
        "{error}"
    );
}

#[test]
fn a_bad_breaker_config_fails_startup_naming_the_setting() {
    let error = App::builder("ledger")
        .in_memory()
        .without_env()
        .state(Downstream::default())
        .handlers(&["book"])
        .breaker(
            "ledger_api",
            BreakerConfig::default()
                .failure_ratio(0.0)
                .half_open_probes(0),
        )
        .build()
        .unwrap_err();
    assert_eq!(
        error.to_string(),
        "service `ledger` cannot start:\n  - breaker `ledger_api`: failure_ratio must be above 0 and at most 1 (0.5: half the calls), got 0\n  - breaker `ledger_api`: half_open_probes must be at least 1"
    );
}

// ---- pausing the consumer on the server -----------------------------------------------------

/// Whether the durable consumer `ledger__book` is paused on the server (its info's `paused`,
/// absent before 2.11).
async fn consumer_paused(client: &async_nats::Client) -> bool {
    let reply = client
        .request("$JS.API.CONSUMER.INFO.EDA_EVENTS.ledger__book", "".into())
        .await
        .expect("the server answers consumer info");
    let info: serde_json::Value = serde_json::from_slice(&reply.payload).unwrap();
    assert!(info.get("error").is_none(), "{info}");
    info["paused"].as_bool().unwrap_or(false)
}

/// Runs on the current server and, in `scripts/test`, on 2.9 (which cannot pause consumers:
/// there only the instance pauses).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jetstream_pause_consumer_pauses_the_durable_consumer_where_the_server_can() {
    let rig = Rig::nats();
    let Rig::Nats(server) = &rig else {
        unreachable!("a NATS rig")
    };
    let client = async_nats::connect(server.url()).await.unwrap();
    let version = client.server_info().version;
    let mut numbers = version
        .split(['.', '-'])
        .map(|n| n.parse::<u32>().unwrap_or(0));
    let can_pause = (numbers.next().unwrap_or(0), numbers.next().unwrap_or(0)) >= (2, 11);
    let api = Arc::new(Downstream::default());
    let app = rig
        .app("ledger")
        .shared_state(Arc::clone(&api))
        .handlers(&["book"])
        .configure(|b| b.breaker("ledger_api", one_second().pause_consumer(true)))
        .start()
        .await
        .unwrap();
    let ledger = app.app().breaker("ledger_api").unwrap();
    assert!(!consumer_paused(&client).await);
    ledger.trip();
    let deadline = Instant::now() + LIMIT;
    while can_pause && !consumer_paused(&client).await && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        consumer_paused(&client).await,
        can_pause,
        "paused on the server where nats-server {version} can"
    );
    app.publish(&PaymentRequested { id: 1 }).await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(api.calls(), 0, "this instance pauses either way");
    ledger.reset();
    let deadline = Instant::now() + LIMIT;
    while consumer_paused(&client).await && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(!consumer_paused(&client).await, "resumed on reset");
    app.settle().await;
    assert_eq!(api.handled(), 1);
    app.shutdown().await.unwrap();
}
