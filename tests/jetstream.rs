//! The JetStream transport on real `nats-server` processes (one per test): the wire format
//! seen by plain NATS clients, provisioning and the schema registry, configuration errors, and
//! a broker restart in the middle of 10,000 events. The delivery semantics themselves are
//! tested on both transports in `tests/delivery.rs`.
#![allow(missing_docs, missing_debug_implementations)]

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream;
use async_nats::HeaderMap;
use eda::prelude::*;
use eda::testing::{NatsCluster, NatsServer, TestApp};
use eda::{DlqReason, ErrorKind, PublishOptions};

#[event("parcel.sent")]
pub struct ParcelSent {
    pub id: u64,
}

/// What the handlers saw: per event id, how often a handler finished it, and its metadata.
#[derive(Default)]
pub struct Ledger {
    counts: Mutex<HashMap<u64, u32>>,
    metadata: Mutex<Vec<(u64, String, u32, String)>>,
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

#[handler(service = "js-tests")]
async fn on_parcel(event: Envelope<ParcelSent>, ledger: State<Ledger>) {
    let m = &event.metadata;
    ledger
        .metadata
        .lock()
        .unwrap()
        .push((event.id, m.id.clone(), m.version, m.source.to_string()));
    ledger.count(event.id);
}

#[handler(
    service = "js-tests",
    concurrency = 32,
    base_delay = "50ms",
    max_delay = "1s",
    retries = 50
)]
async fn count_parcels(event: ParcelSent, ledger: State<Ledger>) {
    ledger.calls.fetch_add(1, Ordering::Relaxed);
    ledger.count(event.id);
}

fn server() -> NatsServer {
    NatsServer::start().unwrap_or_else(|e| panic!("{e}"))
}

async fn app(server: &NatsServer, ledger: &Arc<Ledger>, handlers: &[&str]) -> TestApp {
    TestApp::builder("js-tests")
        .nats(server.url())
        .configure(|b| b.ack_wait(Duration::from_secs(2)))
        .shared_state(Arc::clone(ledger))
        .handlers(handlers)
        .start()
        .await
        .unwrap_or_else(|e| panic!("the app starts: {e}"))
}

async fn plain_client(server: &NatsServer) -> jetstream::Context {
    let client = async_nats::connect(server.url())
        .await
        .expect("a plain client connects");
    jetstream::new(client)
}

fn startup_error(result: eda::Result<impl std::fmt::Debug>) -> String {
    match result {
        Err(e) => e.to_string(),
        Ok(app) => panic!("expected an error, but {app:?} started"),
    }
}

/// Bounds a call that must fail by itself: hanging is the bug these tests look for.
async fn within_a_minute<T>(what: &str, f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(60), f)
        .await
        .unwrap_or_else(|_| panic!("{what} hung instead of failing"))
}

// ---- the wire format ------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_from_plain_clients_are_handled_as_version_1() {
    let server = server();
    let ledger = Arc::new(Ledger::default());
    let app = app(&server, &ledger, &["on_parcel"]).await;
    let js = plain_client(&server).await;
    js.publish("events.parcel.sent", r#"{"id": 1}"#.into())
        .await
        .unwrap()
        .await
        .expect("stored");
    let mut headers = HeaderMap::new();
    headers.insert("Nats-Msg-Id", "legacy-2");
    js.publish_with_headers("events.parcel.sent", headers, r#"{"id": 2}"#.into())
        .await
        .unwrap()
        .await
        .expect("stored");
    app.settle().await;
    let mut seen = ledger.metadata.lock().unwrap().clone();
    seen.sort();
    assert_eq!(
        seen,
        [
            (1, "1".to_string(), 1, String::new()),
            (2, "legacy-2".to_string(), 1, String::new())
        ],
        "no headers: id from the stream sequence; Nats-Msg-Id when given; version 1"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn headers_naming_another_event_than_the_subject_are_dead_lettered_as_decode() {
    let server = server();
    let ledger = Arc::new(Ledger::default());
    let app = app(&server, &ledger, &["on_parcel"]).await;
    let js = plain_client(&server).await;
    let mut headers = HeaderMap::new();
    headers.insert("Eda-Event", "parcel.lost");
    js.publish_with_headers("events.parcel.sent", headers, r#"{"id": 3}"#.into())
        .await
        .unwrap()
        .await
        .expect("stored");
    app.settle().await;
    assert_eq!(ledger.distinct(), 0, "the handler never saw it");
    let letters = app.dead_letters().await.unwrap();
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0].reason, DlqReason::Decode);
    assert_eq!(letters[0].attempts, 1);
    assert!(
        letters[0].error.contains("parcel.lost") && letters[0].error.contains("parcel.sent"),
        "the error names both: {}",
        letters[0].error
    );
}

#[event("parcel.weighed", version = 2)]
pub struct ParcelWeighed {
    pub id: u64,
    pub grams: u64,
}

#[handler(service = "js-tests")]
async fn weigh_parcel(event: ParcelSent, ctx: Context) -> Result<(), HandlerError> {
    ctx.publish(&ParcelWeighed {
        id: event.id,
        grams: 250,
    })
    .await?;
    Ok(())
}

/// Every stored message of the event stream, as a plain client reads it: subject, header
/// names and values.
async fn stored_messages(js: &jetstream::Context) -> Vec<(String, HashMap<String, String>)> {
    let stream = js.get_stream("EDA_EVENTS").await.unwrap();
    let last = stream.get_info().await.unwrap().state.last_sequence;
    let mut messages = Vec::new();
    for seq in 1..=last {
        let stored = stream.get_raw_message(seq).await.unwrap();
        let headers = stored
            .headers
            .iter()
            .map(|(name, values)| (name.to_string(), values[0].as_str().to_owned()))
            .collect();
        messages.push((stored.subject.to_string(), headers));
    }
    messages
}

fn names(headers: &HashMap<String, String>) -> Vec<&str> {
    let mut names: Vec<&str> = headers.keys().map(String::as_str).collect();
    names.sort_unstable();
    names
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exactly_the_headers_the_receiver_cannot_derive_go_on_the_wire() {
    let server = server();
    let ledger = Arc::new(Ledger::default());
    let app = app(&server, &ledger, &["weigh_parcel"]).await;
    let publisher = app.publisher();
    let root = publisher.publish(&ParcelSent { id: 1 }).await.unwrap();
    app.settle().await;
    let v2 = publisher
        .publish(&ParcelWeighed { id: 2, grams: 90 })
        .await
        .unwrap();
    let trace = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let then = std::time::UNIX_EPOCH + Duration::from_millis(1_700_000_000_123);
    let republished = publisher
        .publish_with(
            &ParcelWeighed { id: 3, grams: 10 },
            PublishOptions::default().time(then).traceparent(trace),
        )
        .await
        .unwrap();

    let js = plain_client(&server).await;
    let stored = stored_messages(&js).await;
    let by_id = |id: &str| {
        stored
            .iter()
            .find(|(_, h)| h.get("Nats-Msg-Id").map(String::as_str) == Some(id))
            .map(|(subject, h)| (subject.as_str(), h))
            .unwrap_or_else(|| panic!("no stored message with id {id}: {stored:?}"))
    };

    let (subject, headers) = by_id(&root);
    assert_eq!(subject, "events.parcel.sent");
    assert_eq!(
        names(headers),
        ["Eda-Source", "Nats-Msg-Id"],
        "a plain root publish: {headers:?}"
    );
    assert_eq!(headers["Eda-Source"], "js-tests");

    let (subject, headers) = by_id(&v2);
    assert_eq!(subject, "events.parcel.weighed");
    assert_eq!(
        names(headers),
        ["Eda-Source", "Eda-Version", "Nats-Msg-Id"],
        "a version-2 root publish: {headers:?}"
    );
    assert_eq!(headers["Eda-Version"], "2");

    let (_, headers) = stored
        .iter()
        .find(|(subject, h)| {
            subject == "events.parcel.weighed" && h.contains_key("Eda-Causation-Id")
        })
        .expect("the handler's follow-up is stored");
    assert_eq!(
        names(headers),
        [
            "Eda-Causation-Id",
            "Eda-Correlation-Id",
            "Eda-Source",
            "Eda-Version",
            "Nats-Msg-Id",
            "traceparent"
        ],
        "a follow-up: {headers:?}"
    );
    assert_eq!(headers["Eda-Causation-Id"], root);
    assert_eq!(headers["Eda-Correlation-Id"], root);
    let started = eda::observe::trace::trace_id(&headers["traceparent"]);
    assert!(
        started.is_some(),
        "a handler of an event without a trace starts one: {headers:?}"
    );

    let (_, headers) = by_id(&republished);
    assert_eq!(
        names(headers),
        [
            "Eda-Source",
            "Eda-Time",
            "Eda-Version",
            "Nats-Msg-Id",
            "traceparent"
        ],
        "an explicit time and a trace: {headers:?}"
    );
    assert_eq!(headers["Eda-Time"], "2023-11-14T22:13:20.123Z");
    assert_eq!(
        eda::observe::trace::trace_id(&headers["traceparent"]),
        Some("4bf92f3577b34da6a3ce929d0e0e4736"),
        "the trace is continued"
    );
    assert_ne!(headers["traceparent"], trace, "with a span id of its own");

    let events = app.published_raw().await.unwrap();
    let time_of = |id: &str| {
        events
            .iter()
            .find(|e| e.metadata().id == id)
            .map(|e| e.metadata().time)
            .unwrap()
    };
    assert_eq!(
        time_of(&republished),
        then,
        "the explicit time is read back"
    );
    let age = std::time::SystemTime::now()
        .duration_since(time_of(&root))
        .expect("the store time is in the past");
    assert!(
        age < Duration::from_secs(600),
        "without Eda-Time the event time is when the broker stored it: {age:?} ago"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_full_headers_of_older_eda_versions_and_the_lean_ones_reach_the_same_handler() {
    let server = server();
    let ledger = Arc::new(Ledger::default());
    let app = app(&server, &ledger, &["on_parcel"]).await;
    let js = plain_client(&server).await;
    // What eda sent before the lean format: every header on every message.
    let mut full = HeaderMap::new();
    for (name, value) in [
        ("Nats-Msg-Id", "0190e0a0-0000-7000-8000-000000000001"),
        ("Eda-Event", "parcel.sent"),
        ("Eda-Version", "1"),
        ("Eda-Time", "2024-07-01T10:00:00.000Z"),
        ("Eda-Source", "depot-v1"),
        ("Eda-Correlation-Id", "0190e0a0-0000-7000-8000-000000000001"),
        (
            "Eda-Schema",
            "ea87f6f3219d9814a2fe72e5248715870199a098ac6628809f1fc67ad07476be",
        ),
        (
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ),
    ] {
        full.insert(name, value);
    }
    let mut lean = HeaderMap::new();
    lean.insert("Nats-Msg-Id", "0190e0a0-0000-7000-8000-000000000002");
    lean.insert("Eda-Source", "depot-v2");
    for (headers, payload) in [(full, r#"{"id": 1}"#), (lean, r#"{"id": 2}"#)] {
        js.publish_with_headers("events.parcel.sent", headers, payload.into())
            .await
            .unwrap()
            .await
            .expect("stored");
    }
    app.settle().await;
    let mut seen = ledger.metadata.lock().unwrap().clone();
    seen.sort();
    assert_eq!(
        seen,
        [
            (
                1,
                "0190e0a0-0000-7000-8000-000000000001".to_string(),
                1,
                "depot-v1".to_string()
            ),
            (
                2,
                "0190e0a0-0000-7000-8000-000000000002".to_string(),
                1,
                "depot-v2".to_string()
            )
        ]
    );
    let events = app.published_raw().await.unwrap();
    assert_eq!(
        events[0].metadata().time,
        humantime::parse_rfc3339("2024-07-01T10:00:00Z").unwrap(),
        "an old message's Eda-Time is still read"
    );
    assert!(app.dead_letters().await.unwrap().is_empty());
}

#[handler(service = "js-tests", retries = 1, base_delay = "10ms")]
async fn refuses_parcels(_event: ParcelSent) -> Result<(), HandlerError> {
    Err(HandlerError::retry(std::io::Error::other("depot closed")))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_letter_on_the_wire_holds_the_payload_and_every_dlq_header() {
    let server = server();
    let ledger = Arc::new(Ledger::default());
    let app = app(&server, &ledger, &["refuses_parcels"]).await;
    let id = app.publish(&ParcelSent { id: 5 }).await.unwrap();
    app.settle().await;
    let js = plain_client(&server).await;
    let stream = js.get_stream("EDA_DLQ").await.unwrap();
    let letter = stream.get_raw_message(1).await.expect("one dead letter");
    assert_eq!(letter.subject.as_str(), "dlq.js-tests.refuses_parcels");
    assert_eq!(
        &letter.payload[..],
        br#"{"id":5}"#,
        "the original payload, unchanged"
    );
    let header = |name: &str| letter.headers.get(name).map(|v| v.as_str().to_owned());
    assert_eq!(
        header("Eda-Dlq-Reason").as_deref(),
        Some("retries_exhausted")
    );
    assert_eq!(header("Eda-Dlq-Error").as_deref(), Some("depot closed"));
    assert_eq!(header("Eda-Dlq-Attempts").as_deref(), Some("2"));
    assert_eq!(
        header("Eda-Dlq-Handler").as_deref(),
        Some("refuses_parcels")
    );
    assert_eq!(
        header("Eda-Original-Subject").as_deref(),
        Some("events.parcel.sent")
    );
    assert_eq!(header("Eda-Original-Seq").as_deref(), Some("1"));
    assert_eq!(header("Eda-Original-Id").as_deref(), Some(id.as_str()));
    assert_eq!(
        header("Eda-Event"),
        None,
        "the original subject names the event"
    );
    let stored = js
        .get_stream("EDA_EVENTS")
        .await
        .unwrap()
        .get_raw_message(1)
        .await
        .unwrap();
    assert_eq!(
        header("Eda-Time").as_deref(),
        Some(
            humantime::format_rfc3339_millis(std::time::SystemTime::from(stored.time))
                .to_string()
                .as_str()
        ),
        "the dead letter keeps the time the event was stored"
    );
    let events = js.get_stream("EDA_EVENTS").await.unwrap();
    let mut consumer = events
        .get_consumer::<jetstream::consumer::pull::Config>("js-tests__refuses_parcels")
        .await
        .unwrap();
    let info = consumer.info().await.unwrap();
    assert_eq!(
        (info.num_pending, info.num_ack_pending),
        (0, 0),
        "the original was terminated after the dead letter was stored"
    );
}

// ---- provisioning and configuration errors --------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_server_is_a_clear_error() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let result = within_a_minute(
        "connecting to a closed port",
        App::builder("js-tests")
            .nats(format!("nats://127.0.0.1:{port}"))
            .without_env()
            .handlers(&[])
            .connect_timeout(Duration::from_secs(1))
            .start(),
    )
    .await;
    let message = startup_error(result);
    assert!(
        message.contains(&format!(
            "cannot connect to NATS at `nats://127.0.0.1:{port}`"
        )) && message.contains("is nats-server running there?"),
        "{message}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_credentials_are_a_clear_error() {
    let server = NatsServer::start_with_args(&["--user", "ada", "--pass", "right"])
        .unwrap_or_else(|e| panic!("{e}"));
    for builder in [
        App::builder("js-tests")
            .nats(server.url())
            .nats_user_password("ada", "wrong"),
        App::builder("js-tests").nats(server.url()),
    ] {
        let result = within_a_minute(
            "connecting with bad credentials",
            builder
                .without_env()
                .handlers(&[])
                .connect_timeout(Duration::from_secs(2))
                .start(),
        )
        .await;
        let message = startup_error(result);
        assert!(message.contains("rejected the credentials"), "{message}");
        assert!(
            !message.contains("wrong"),
            "the password is not printed: {message}"
        );
    }
    let ok = App::builder("js-tests")
        .nats(server.url())
        .nats_user_password("ada", "right")
        .without_env()
        .handlers(&[])
        .start()
        .await
        .expect("the right password works");
    ok.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_is_sent_and_a_wrong_one_is_a_clear_error() {
    let server =
        NatsServer::start_with_args(&["--auth", "s3cret-token"]).unwrap_or_else(|e| panic!("{e}"));
    let message = startup_error(
        within_a_minute(
            "connecting with a wrong token",
            App::builder("js-tests")
                .nats(server.url())
                .nats_token("wrong")
                .without_env()
                .handlers(&[])
                .start(),
        )
        .await,
    );
    assert!(message.contains("rejected the credentials"), "{message}");
    let ok = App::builder("js-tests")
        .nats(server.url())
        .nats_token("s3cret-token")
        .without_env()
        .handlers(&[])
        .start()
        .await
        .expect("the right token works");
    ok.shutdown().await.unwrap();
}

#[test]
fn bad_urls_and_a_tls_url_without_a_ca_are_startup_errors() {
    let message = startup_error(
        App::builder("js-tests")
            .nats("tls://127.0.0.1:4222")
            .without_env()
            .handlers(&[])
            .build(),
    );
    assert!(
        message.contains("uses tls:// but no CA certificate was given: set EDA_NATS_TLS_CA or call `.nats_tls_ca(path)`"),
        "{message}"
    );
    let message = startup_error(
        App::builder("js-tests")
            .nats("http://127.0.0.1:4222")
            .without_env()
            .handlers(&[])
            .build(),
    );
    assert!(
        message.contains("NATS URL `http://127.0.0.1:4222`: expected a nats:// or tls:// URL"),
        "{message}"
    );
    let message = startup_error(
        App::builder("js-tests")
            .nats("nats://127.0.0.1:4222")
            .nats_credentials("/nonexistent/eda.creds")
            .without_env()
            .handlers(&[])
            .build(),
    );
    assert!(
        message.contains("credentials file `/nonexistent/eda.creds` is not a readable file"),
        "{message}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_existing_stream_with_other_subjects_is_an_error_not_an_overwrite() {
    let server = server();
    let js = plain_client(&server).await;
    js.create_stream(jetstream::stream::Config {
        name: "EDA_EVENTS".into(),
        subjects: vec!["legacy.>".into()],
        ..Default::default()
    })
    .await
    .unwrap();
    let message = startup_error(
        within_a_minute(
            "starting against a conflicting stream",
            App::builder("js-tests")
                .nats(server.url())
                .without_env()
                .handlers(&[])
                .start(),
        )
        .await,
    );
    assert!(
        message.contains("stream `EDA_EVENTS` exists with subjects [\"legacy.>\"], but eda needs `events.>` in `subjects`"),
        "{message}"
    );
    let info = js
        .get_stream("EDA_EVENTS")
        .await
        .unwrap()
        .info()
        .await
        .unwrap()
        .config
        .clone();
    assert_eq!(info.subjects, ["legacy.>"], "the stream was left as it was");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_schema_registered_with_another_fingerprint_stops_startup() {
    let server = server();
    let ledger = Arc::new(Ledger::default());
    let first = app(&server, &ledger, &[]).await;
    first.shutdown().await.unwrap();
    let js = plain_client(&server).await;
    let schemas = js.get_key_value("EDA_SCHEMAS").await.unwrap();
    let registered = schemas
        .get("parcel.sent.v1")
        .await
        .unwrap()
        .expect("registered at startup");
    let registered: serde_json::Value = serde_json::from_slice(&registered).unwrap();
    assert_eq!(registered["fingerprint"], ParcelSent::fingerprint());
    let other = serde_json::json!({"name": "parcel.sent", "version": 1, "fingerprint": "0123abcd", "schema": {}});
    schemas
        .put("parcel.sent.v1", serde_json::to_vec(&other).unwrap().into())
        .await
        .unwrap();
    let message = startup_error(
        App::builder("js-tests")
            .nats(server.url())
            .without_env()
            .handlers(&[])
            .start()
            .await,
    );
    assert!(
        message.contains(&format!(
            "event `parcel.sent` v1: this binary's schema has fingerprint `{}` but the registry `EDA_SCHEMAS` has `0123abcd`",
            ParcelSent::fingerprint()
        )),
        "{message}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn provisioning_twice_and_from_many_instances_at_once_is_safe() {
    let server = server();
    let ledger = Arc::new(Ledger::default());
    // Four instances start at the same moment: each finds or creates the same streams,
    // buckets and consumer.
    let apps =
        futures_util::future::join_all((0..4).map(|_| app(&server, &ledger, &["on_parcel"]))).await;
    apps[0].publish(&ParcelSent { id: 9 }).await.unwrap();
    apps[0].settle().await;
    assert_eq!(ledger.distinct(), 1);
    assert_eq!(
        ledger.counts.lock().unwrap()[&9],
        1,
        "four instances share one durable consumer"
    );
}

// ---- faults ---------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_17_a_publish_while_the_broker_is_down_fails_instead_of_pretending() {
    let mut server = server();
    let ledger = Arc::new(Ledger::default());
    let app = TestApp::builder("js-tests")
        .nats(server.url())
        .configure(|b| b.handlers(&[]))
        .shared_state(Arc::clone(&ledger))
        .start()
        .await
        .unwrap();
    server.stop();
    let result = within_a_minute(
        "publishing with the broker down",
        app.publish(&ParcelSent { id: 1 }),
    )
    .await;
    assert!(
        result.is_err(),
        "a publish nobody stored must not return Ok"
    );
    server.restart().unwrap_or_else(|e| panic!("{e}"));
    // After the reconnect the same app publishes again.
    let mut stored = false;
    for _ in 0..100 {
        if app.publish(&ParcelSent { id: 2 }).await.is_ok() {
            stored = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(stored, "publishing works again after the broker came back");
    assert!(app.app().is_connected());
}

/// FAULTS.md #22: a consumer deleted behind the app's back is recreated from the code's
/// configuration, and consumption goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_22_a_consumer_deleted_out_of_band_is_recreated() {
    let server = server();
    let ledger = Arc::new(Ledger::default());
    let app = app(&server, &ledger, &["on_parcel"]).await;
    app.publish(&ParcelSent { id: 1 }).await.unwrap();
    app.settle().await;
    let js = plain_client(&server).await;
    let stream = js.get_stream("EDA_EVENTS").await.unwrap();
    stream.delete_consumer("js-tests__on_parcel").await.unwrap();
    let mut recreated = false;
    for _ in 0..200 {
        if stream.consumer_info("js-tests__on_parcel").await.is_ok() {
            recreated = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(recreated, "the app recreated its consumer");
    app.publish(&ParcelSent { id: 2 }).await.unwrap();
    for _ in 0..200 {
        if ledger.distinct() == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        ledger.distinct(),
        2,
        "events after the deletion are handled"
    );
}

#[test]
fn startup_errors_are_errors_of_the_startup_kind() {
    // Users branch on the kind: configuration problems found before connecting are
    // `ErrorKind::Startup`; broker problems have kinds of their own (see below).
    let error = App::builder("js-tests")
        .nats("tls://x:1")
        .without_env()
        .handlers(&[])
        .build()
        .unwrap_err();
    assert_eq!(error.kind(), ErrorKind::Startup, "{error:?}");
}

/// FAULTS.md #18/#19: on a three-node cluster the streams get three replicas, and a node killed
/// in the middle of the run (whichever it is: leader, or the one the app is connected to)
/// loses nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_three_node_cluster_a_killed_node_loses_nothing() {
    const EVENTS: u64 = 600;
    let mut cluster = NatsCluster::start(3).unwrap_or_else(|e| panic!("{e}"));
    let ledger = Arc::new(Ledger::default());
    let app = TestApp::builder("js-tests")
        .nats(cluster.url())
        .configure(|b| b.ack_wait(Duration::from_secs(2)))
        .shared_state(Arc::clone(&ledger))
        .handlers(&["count_parcels"])
        .start()
        .await
        .unwrap_or_else(|e| panic!("the app starts on the cluster: {e}"));
    let client = async_nats::connect(cluster.node_url(1).unwrap())
        .await
        .unwrap();
    let js = jetstream::new(client);
    let config = js
        .get_stream("EDA_EVENTS")
        .await
        .unwrap()
        .info()
        .await
        .unwrap()
        .config
        .clone();
    assert_eq!(config.num_replicas, 3, "R3 on a cluster of three");
    let publisher = app.publisher();
    for id in 0..EVENTS {
        if id == EVENTS / 3 {
            cluster.stop(0);
        }
        loop {
            let options = PublishOptions::default().id(format!("parcel-{id}"));
            match publisher.publish_with(&ParcelSent { id }, options).await {
                Ok(_) => break,
                Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        }
    }
    cluster.restart(0).unwrap_or_else(|e| panic!("{e}"));
    for _ in 0..600 {
        if ledger.distinct() as u64 == EVENTS {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    app.settle().await;
    assert_eq!(
        ledger.distinct() as u64,
        EVENTS,
        "every acked event handled after a node was killed"
    );
    assert_eq!(
        processed_ids(&cluster.node_url(1).unwrap()).await,
        EVENTS,
        "each event's success recorded exactly once"
    );
}

/// How many processed ids the `EDA_PROCESSED` bucket holds. (A record whose confirmation was
/// lost in a fault is stored all the same: the handler's counter of `handled` may then be
/// lower, with the retry counted as a duplicate, while the bucket still holds every id once.)
async fn processed_ids(url: &str) -> u64 {
    let js = jetstream::new(async_nats::connect(url).await.unwrap());
    let mut stream = js.get_stream("KV_EDA_PROCESSED").await.unwrap();
    stream.info().await.unwrap().state.messages
}

#[handler(service = "js-tests", timeout = "30s")]
async fn takes_its_time(event: ParcelSent, ledger: State<Ledger>) {
    ledger.calls.fetch_add(1, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(3500)).await;
    ledger.count(event.id);
}

/// FAULTS.md #8: a handler running past the ack wait keeps its message with in-progress
/// acks; the broker does not hand it to anyone else meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_08_a_handler_longer_than_the_ack_wait_is_not_redelivered() {
    let server = server();
    let ledger = Arc::new(Ledger::default());
    let app = TestApp::builder("js-tests")
        .nats(server.url())
        .configure(|b| b.ack_wait(Duration::from_secs(1)))
        .shared_state(Arc::clone(&ledger))
        .handlers(&["takes_its_time"])
        .start()
        .await
        .unwrap();
    app.publish(&ParcelSent { id: 1 }).await.unwrap();
    app.settle().await;
    assert_eq!(
        ledger.calls.load(Ordering::SeqCst),
        1,
        "delivered exactly once"
    );
    let stats = app.stats("takes_its_time");
    assert_eq!((stats.handled, stats.duplicates, stats.retried), (1, 0, 0));
    // The server's view: it handed the message out once and never again.
    let js = plain_client(&server).await;
    let info = js
        .get_stream("EDA_EVENTS")
        .await
        .unwrap()
        .consumer_info("js-tests__takes_its_time")
        .await
        .unwrap();
    assert_eq!(
        (info.num_redelivered, info.delivered.consumer_sequence),
        (0, 1),
        "the broker delivered it once and never redelivered it: {info:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_existing_consumer_with_another_filter_is_an_error() {
    let server = server();
    let ledger = Arc::new(Ledger::default());
    app(&server, &ledger, &[]).await.shutdown().await.unwrap(); // provisions the stream
    let js = plain_client(&server).await;
    let stream = js.get_stream("EDA_EVENTS").await.unwrap();
    stream
        .create_consumer(jetstream::consumer::pull::Config {
            durable_name: Some("js-tests__on_parcel".into()),
            filter_subject: "events.parcel.lost".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let message = startup_error(
        TestApp::builder("js-tests")
            .nats(server.url())
            .shared_state(Arc::clone(&ledger))
            .handlers(&["on_parcel"])
            .start()
            .await,
    );
    assert!(
        message.contains("consumer `js-tests__on_parcel` exists with `filter_subject` `events.parcel.lost`, but handler `on_parcel` subscribes to `events.parcel.sent`"),
        "{message}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn names_and_the_subject_prefix_are_configurable() {
    let server = server();
    let ledger = Arc::new(Ledger::default());
    let mut topology = eda::Topology::default();
    topology.subject_prefix = "staging.events".into();
    topology.events_stream = "STAGING_EVENTS".into();
    let app = TestApp::builder("js-tests")
        .nats(server.url())
        .configure(|b| b.topology(topology))
        .shared_state(Arc::clone(&ledger))
        .handlers(&["on_parcel"])
        .start()
        .await
        .unwrap();
    app.publish(&ParcelSent { id: 11 }).await.unwrap();
    app.settle().await;
    assert_eq!(ledger.distinct(), 1);
    let js = plain_client(&server).await;
    let stored = js
        .get_stream("STAGING_EVENTS")
        .await
        .unwrap()
        .get_raw_message(1)
        .await
        .unwrap();
    assert_eq!(stored.subject.as_str(), "staging.events.parcel.sent");
}
