//! Startup validation (every problem at once, one clear line each) and the catalog.
#![allow(missing_docs, missing_debug_implementations)]

use eda::prelude::*;
use eda::ErrorKind;
use std::time::Duration;

#[event("invoice.sent")]
pub struct InvoiceSent {
    pub id: u64,
}

pub struct Mailer;

#[handler(name = "notify", service = "broken")]
async fn notify_by_mail(_event: InvoiceSent, _mailer: State<Mailer>) {}

#[handler(name = "notify", service = "broken")]
async fn notify_by_sms(_event: InvoiceSent) {}

#[handler(
    service = "fine",
    retries = 7,
    backoff = "linear",
    base_delay = "250ms",
    max_delay = "2m",
    jitter = false,
    timeout = "5s",
    idempotent = "always",
    breaker = "smtp",
    start = "all",
    concurrency = 8
)]
async fn archive(_event: Envelope<InvoiceSent>, _ctx: Context) -> Result<(), HandlerError> {
    Ok(())
}

/// A chain: v3 upcasts from v2, v2 from v1.
#[event("invoice.paid", version = 3, upcast_from = InvoicePaidV2)]
pub struct InvoicePaid {
    pub id: u64,
    pub cents: u64,
    pub currency: String,
}

#[event("invoice.paid", version = 2, upcast_from = InvoicePaidV1)]
pub struct InvoicePaidV2 {
    pub id: u64,
    pub cents: u64,
}

#[event("invoice.paid", version = 1)]
pub struct InvoicePaidV1 {
    pub id: u64,
}

impl From<InvoicePaidV1> for InvoicePaidV2 {
    fn from(v1: InvoicePaidV1) -> Self {
        InvoicePaidV2 {
            id: v1.id,
            cents: 0,
        }
    }
}

impl From<InvoicePaidV2> for InvoicePaid {
    fn from(v2: InvoicePaidV2) -> Self {
        InvoicePaid {
            id: v2.id,
            cents: v2.cents,
            currency: "EUR".into(),
        }
    }
}

#[handler("invoice.*", service = "fine")]
async fn audit_invoices(_event: RawEvent) {}

fn problems(result: eda::Result<App>) -> Vec<String> {
    match result {
        Err(e) if e.kind() == ErrorKind::Startup => e.problems().to_vec(),
        Err(other) => panic!("expected a startup error, got {other}"),
        Ok(app) => panic!("expected a startup error, but {app:?} built"),
    }
}

#[test]
fn every_startup_problem_is_reported_at_once() {
    let found = problems(App::builder("broken").build());
    assert_eq!(
        found,
        [
            "two handlers are named `notify` (in startup and startup): give one another name with `#[handler(name = \"...\")]`",
            "handler `notify` takes `State<startup::Mailer>` but no state of type `startup::Mailer` was provided: add `.state(..)` with a `startup::Mailer` to the app builder",
        ]
    );
}

#[test]
fn the_startup_error_reads_as_a_list() {
    let error = App::builder("broken").build().unwrap_err().to_string();
    assert!(
        error.starts_with("service `broken` cannot start:\n  - two handlers are named `notify`"),
        "{error}"
    );
}

#[test]
fn providing_the_state_and_selecting_one_handler_fixes_it() {
    let app = App::builder("broken")
        .state(Mailer)
        .handlers(&["notify"])
        .build();
    assert!(
        matches!(app, Err(ref e) if e.kind() == ErrorKind::Startup),
        "both are still named `notify`"
    );
    let app = App::builder("fine").build().expect("builds");
    assert_eq!(app.handler_names(), ["archive", "audit_invoices"]);
}

#[test]
fn unknown_handler_names_and_bad_service_names_are_reported() {
    let found = problems(App::builder("fine").handlers(&["archve"]).build());
    assert_eq!(
        found,
        ["no handler named `archve` runs in service `fine`; known: archive, audit_invoices"]
    );
    let found = problems(App::builder("my service").handlers(&[]).build());
    assert_eq!(found, ["invalid service name `my service`: it contains ` `; use letters, digits, `_` and `-` only"]);
}

#[test]
fn the_catalog_lists_every_event_and_handler() {
    let catalog = App::catalog();
    let event = catalog
        .events
        .iter()
        .find(|e| e.name == "invoice.sent")
        .expect("invoice.sent is listed");
    assert_eq!(event.version, 1);
    assert_eq!(event.type_name, "InvoiceSent");
    assert_eq!(event.fingerprint, <InvoiceSent as Event>::fingerprint());
    assert_eq!(event.schema["properties"]["id"]["type"], "integer");

    let chain: Vec<(u32, &str, Option<&str>)> = catalog
        .events
        .iter()
        .filter(|e| e.name == "invoice.paid")
        .map(|e| (e.version, e.type_name.as_str(), e.upcast_from.as_deref()))
        .collect();
    assert_eq!(
        chain,
        [
            (1, "InvoicePaidV1", None),
            (2, "InvoicePaidV2", Some("InvoicePaidV1")),
            (3, "InvoicePaid", Some("InvoicePaidV2")),
        ],
        "every version is listed, with the type it upcasts from"
    );

    let names: Vec<&str> = catalog.handlers.iter().map(|h| h.name.as_str()).collect();
    assert_eq!(names, ["archive", "audit_invoices", "notify", "notify"]);
    let archive = &catalog.handlers[0];
    assert_eq!(
        archive.subject, "invoice.sent",
        "taken from the event's NAME"
    );
    assert_eq!(archive.service.as_deref(), Some("fine"));
    let json = serde_json::to_value(&catalog).unwrap();
    let options = &json["handlers"][0]["options"];
    assert_eq!(
        options,
        &serde_json::json!({
            "concurrency": 8, "retries": 7,
            "backoff": {"kind": "linear", "base_delay": "250ms", "max_delay": "2m", "jitter": false},
            "timeout": "5s", "idempotent": "always", "breaker": "smtp", "start": "all"
        })
    );
    assert_eq!(json["handlers"][1]["subject"], "invoice.*");
    assert_eq!(json["handlers"][1]["event"], serde_json::Value::Null);
}

#[tokio::test]
async fn publish_options_that_cannot_travel_as_headers_are_a_clear_error() {
    let app = eda::testing::TestApp::builder("fine")
        .handlers(&[])
        .start()
        .await
        .unwrap();
    let error = app
        .publisher()
        .publish_with(
            &InvoiceSent { id: 1 },
            eda::PublishOptions::default().id("order-7\nplaced"),
        )
        .await
        .unwrap_err();
    assert_eq!(
        error.to_string(),
        "the event id `order-7\\nplaced` must be non-empty and on one line (it travels as a header)"
    );
    type Set = fn(eda::PublishOptions, &str) -> eda::PublishOptions;
    let options: [(&str, Set); 4] = [
        ("event id", |o, v| o.id(v)),
        ("correlation id", |o, v| o.correlation_id(v)),
        ("causation id", |o, v| o.causation_id(v)),
        ("traceparent", |o, v| o.traceparent(v)),
    ];
    for (what, set) in options {
        for (value, shown) in [("", ""), ("a\rb", "a\\rb"), ("a\nb", "a\\nb")] {
            let error = app
                .publisher()
                .publish_with(
                    &InvoiceSent { id: 1 },
                    set(eda::PublishOptions::default(), value),
                )
                .await
                .unwrap_err();
            assert!(matches!(error, eda::PublishError::Invalid(_)), "{error:?}");
            assert_eq!(
                error.to_string(),
                format!("the {what} `{shown}` must be non-empty and on one line (it travels as a header)")
            );
        }
    }
    assert!(
        app.published_raw().await.unwrap().is_empty(),
        "nothing was published"
    );
}

#[test]
fn an_empty_service_name_is_reported() {
    let found = problems(App::builder("").handlers(&[]).build());
    assert_eq!(found, ["the service name cannot be empty"]);
}

#[test]
fn a_breaker_that_opens_for_no_time_is_reported() {
    let found = problems(
        App::builder("fine")
            .breaker(
                "smtp",
                eda::BreakerConfig::default().open_for(Duration::ZERO),
            )
            .build(),
    );
    assert_eq!(found, ["breaker `smtp`: open_for must be longer than zero"]);
}

#[test]
fn stream_replicas_outside_one_to_five_are_reported() {
    for replicas in [0, 7] {
        let found = problems(
            App::builder("fine")
                .nats("nats://127.0.0.1:4222")
                .without_env()
                .stream_replicas(replicas)
                .build(),
        );
        assert_eq!(
            found,
            [format!(
                "stream replicas must be from 1 to 5, not {replicas}"
            )]
        );
    }
}

#[test]
fn bad_subject_prefixes_are_reported() {
    for prefix in ["", "prod..events", "events.*", "events.>", "my events"] {
        let found = problems(
            App::builder("fine")
                .nats("nats://127.0.0.1:4222")
                .without_env()
                .subject_prefix(prefix)
                .build(),
        );
        assert_eq!(
            found,
            [format!("subject prefix `{prefix}` must be dot-separated tokens without wildcards or spaces, e.g. `events`")]
        );
    }
}

#[tokio::test]
async fn a_metrics_port_already_taken_is_a_config_error_from_start() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let error = App::builder("fine")
        .without_env()
        .handlers(&[])
        .metrics_addr(addr.to_string())
        .start()
        .await
        .map(|_| ())
        .unwrap_err();
    assert_eq!(error.kind(), ErrorKind::Config, "{error:?}");
    let message = error.to_string();
    assert!(
        message.starts_with(&format!("cannot serve metrics on {addr}: ")),
        "{message}"
    );
    assert!(
        message.contains("Address already in use"),
        "the OS reason is kept: {message}"
    );
    drop(taken);
}
