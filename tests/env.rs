//! The `EDA_*` variables an app reads from the process environment. One test in its own
//! binary: it sets variables in turn, and no other test shares its process to see them.
#![allow(missing_docs, missing_debug_implementations)]

use eda::prelude::*;
use eda::{App, ErrorKind};

#[event("ledger.closed")]
pub struct LedgerClosed {
    pub id: u64,
}

#[handler(service = "env-tests")]
async fn close_ledger(_event: LedgerClosed) {}

fn problems(result: eda::Result<App>) -> Vec<String> {
    match result {
        Err(e) if e.kind() == ErrorKind::Startup => e.problems().to_vec(),
        Err(other) => panic!("expected a startup error, got {other}"),
        Ok(app) => panic!("expected a startup error, but {app:?} built"),
    }
}

/// Sets `vars` for the duration of `check`, with every other variable that configures an app
/// removed.
fn with_env(vars: &[(&str, &str)], check: impl FnOnce()) {
    for (name, _) in std::env::vars() {
        if name.starts_with("EDA_") && !["EDA_NATS_SERVER", "EDA_PYTHON"].contains(&&*name) {
            std::env::remove_var(name);
        }
    }
    for (name, value) in vars {
        std::env::set_var(name, value);
    }
    check();
    for (name, _) in vars {
        std::env::remove_var(name);
    }
}

#[test]
fn eda_variables_are_checked_and_win_over_the_builder() {
    with_env(&[("EDA_METRICS_ADDR", "localhost")], || {
        let found = problems(App::builder("env-tests").build());
        assert_eq!(
            found,
            ["EDA_METRICS_ADDR=`localhost`: expected host:port such as 127.0.0.1:9464, :9464, or 127.0.0.1:0 for a free port"]
        );
        let found = problems(
            App::builder("env-tests")
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
    });

    with_env(&[("EDA_CATALOG", "yaml")], || {
        let found = problems(App::builder("env-tests").build());
        assert_eq!(
            found,
            ["EDA_CATALOG=`yaml`: the only catalog format is `json`"]
        );
    });

    with_env(&[("EDA_SUBJECT_PREFIX", "prod..events")], || {
        let found = problems(
            App::builder("env-tests")
                .nats("nats://127.0.0.1:4222")
                .subject_prefix("prod.events")
                .build(),
        );
        assert_eq!(
            found,
            ["EDA_SUBJECT_PREFIX=`prod..events`: expected dot-separated tokens without wildcards or spaces, e.g. `events`"],
            "the message names the variable, which wins over a good `.subject_prefix(..)`"
        );
        let found = problems(
            App::builder("env-tests")
                .nats("nats://127.0.0.1:4222")
                .subject_prefix("my events")
                .build(),
        );
        assert_eq!(
            found,
            [
                "EDA_SUBJECT_PREFIX=`prod..events`: expected dot-separated tokens without wildcards or spaces, e.g. `events`",
                "subject prefix `my events` must be dot-separated tokens without wildcards or spaces, e.g. `events`",
            ],
            "a bad variable and a bad builder value are each named where they came from"
        );
    });
    with_env(&[("EDA_SUBJECT_PREFIX", "events.*")], || {
        App::builder("env-tests").build().unwrap_or_else(|e| {
            panic!("an app in memory has no subjects, so EDA_SUBJECT_PREFIX is not read: {e}")
        });
    });

    // Were they read as set, each would be a problem: `EDA_NATS_URL=``` is no URL, a password
    // without a user, a key without a certificate, `` replicas, an empty subject prefix.
    let empty = [
        ("EDA_NATS_URL", ""),
        ("EDA_NATS_PASSWORD", ""),
        ("EDA_NATS_TLS_KEY", ""),
        ("EDA_STREAM_REPLICAS", ""),
        ("EDA_SUBJECT_PREFIX", ""),
        ("EDA_METRICS_ADDR", ""),
        ("EDA_CATALOG", ""),
    ];
    with_env(&empty, || {
        assert_eq!(std::env::var("EDA_NATS_URL").as_deref(), Ok(""));
        let app = App::builder("env-tests")
            .nats("nats://127.0.0.1:4222")
            .build()
            .unwrap_or_else(|e| panic!("empty variables are unset: {e}"));
        assert_eq!(app.handler_names(), ["close_ledger"]);
        App::builder("env-tests")
            .build()
            .unwrap_or_else(|e| panic!("an empty EDA_NATS_URL leaves the app in memory: {e}"));
    });
}
