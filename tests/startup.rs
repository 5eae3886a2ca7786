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
            [format!("stream replicas must be from 1 to 5, not {replicas}")]
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
        message.contains("in use"),
        "the OS reason is kept: {message}"
    );
    drop(taken);
}

// ---- the process environment -----------------------------------------------------------------
//
// `EDA_*` variables are read from the process environment by `build`. These tests set them only
// in a child process (this test binary run again with one `--ignored` test selected), so no other
// test of this binary ever sees them.

/// Set in the child process, which runs one of the `child_*` tests below.
const CHILD: &str = "EDA_STARTUP_TEST_CHILD";

/// Runs the `#[ignore]`d test `child` of this binary in a child process with `vars` set (and
/// every other `EDA_*` variable that configures an app removed), and checks it passed.
fn in_a_child_process(child: &str, vars: &[(&str, &str)]) {
    let mut command = std::process::Command::new(std::env::current_exe().unwrap());
    command.args([child, "--exact", "--ignored", "--test-threads=1", "--nocapture"]);
    for (name, _) in std::env::vars_os() {
        let name = name.to_string_lossy().into_owned();
        if name.starts_with("EDA_") && !["EDA_NATS_SERVER", "EDA_PYTHON"].contains(&&*name) {
            command.env_remove(name);
        }
    }
    command.env(CHILD, "1").envs(vars.iter().copied());
    let output = command.output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success() && stdout.contains("test result: ok. 1 passed"),
        "the child test `{child}` failed:\n{stdout}\n{stderr}"
    );
}

/// Fails unless run by [`in_a_child_process`]: the child tests need their environment.
fn in_the_child() {
    assert!(
        std::env::var_os(CHILD).is_some(),
        "this test is run by another one, in a child process with its environment"
    );
}

#[test]
fn a_bad_eda_metrics_addr_names_the_variable() {
    in_a_child_process(
        "child_a_bad_eda_metrics_addr_names_the_variable",
        &[("EDA_METRICS_ADDR", "localhost")],
    );
}

#[test]
#[ignore = "run by `a_bad_eda_metrics_addr_names_the_variable` in a child process"]
fn child_a_bad_eda_metrics_addr_names_the_variable() {
    in_the_child();
    let found = problems(App::builder("fine").build());
    assert_eq!(
        found,
        ["EDA_METRICS_ADDR=`localhost`: expected host:port such as 127.0.0.1:9464, :9464, or 127.0.0.1:0 for a free port"]
    );
    let found = problems(
        App::builder("fine")
            .metrics_addr("127.0.0.1:0")
            .stream_replicas(9)
            .nats("nats://127.0.0.1:4222")
            .build(),
    );
    assert_eq!(
        found,
        [
            "EDA_METRICS_ADDR=`localhost`: expected host:port such as 127.0.0.1:9464, :9464, or 127.0.0.1:0 for a free port",
            "stream replicas must be from 1 to 5, not 9",
        ],
        "the variable wins over `.metrics_addr(..)`, and the other problems are still listed"
    );
}

#[test]
fn eda_variables_set_to_the_empty_string_are_unset() {
    in_a_child_process(
        "child_eda_variables_set_to_the_empty_string_are_unset",
        &[
            ("EDA_NATS_URL", ""),
            ("EDA_NATS_PASSWORD", ""),
            ("EDA_NATS_TLS_KEY", ""),
            ("EDA_STREAM_REPLICAS", ""),
            ("EDA_SUBJECT_PREFIX", ""),
            ("EDA_METRICS_ADDR", ""),
        ],
    );
}

#[test]
#[ignore = "run by `eda_variables_set_to_the_empty_string_are_unset` in a child process"]
fn child_eda_variables_set_to_the_empty_string_are_unset() {
    in_the_child();
    for name in ["EDA_NATS_URL", "EDA_SUBJECT_PREFIX"] {
        assert_eq!(
            std::env::var(name).as_deref(),
            Ok(""),
            "{name} is set, to the empty string"
        );
    }
    // Were they read as set, each would be a problem: `EDA_NATS_URL=``` is no URL, a password
    // without a user, a key without a certificate, `` replicas, an empty subject prefix.
    let app = App::builder("fine")
        .nats("nats://127.0.0.1:4222")
        .build()
        .unwrap_or_else(|e| panic!("empty variables are unset: {e}"));
    assert_eq!(app.handler_names(), ["archive", "audit_invoices"]);
    App::builder("fine")
        .build()
        .unwrap_or_else(|e| panic!("an empty EDA_NATS_URL leaves the app in memory: {e}"));
}
