//! `eda schemas check` against a real nats-server whose schema registry an eda app filled at
//! startup (this test binary holds the shop's events, as `shop_billing` does): all in line,
//! a new version without an upcast path from the registered one (a warning), a fingerprint
//! another service registered for a shop event (an error naming both fingerprints), and
//! servers without eda's streams or without the registry.
#![allow(missing_docs, missing_debug_implementations)]

mod support;

#[path = "../../examples/shop/events.rs"]
mod events;

use std::process::{Command, Output};
use support::shop_billing;

use eda::prelude::*;
use eda::testing::{NatsServer, TestApp};
use events::BillCreated;
use serde_json::json;

const SERVICE: &str = "schemacheck";

#[handler(service = "schemacheck")]
async fn on_bill(_event: BillCreated) {}

/// Version 2 without `upcast_from`: its version 1 is another service's.
#[event("parcel.sent", version = 2)]
pub struct ParcelSent {
    pub id: u64,
    pub weight_g: u64,
}

/// A script printing this test binary's catalog, as the binary of an eda app built from it
/// prints it with `EDA_CATALOG=json`.
fn this_binary(dir: &std::path::Path) -> String {
    let app = eda::App::builder(SERVICE)
        .in_memory()
        .handlers(&["on_bill"])
        .build()
        .expect("the app builds");
    let catalog = dir.join("catalog.json");
    std::fs::write(&catalog, serde_json::to_string(&app.describe()).unwrap()).unwrap();
    let script = dir.join(SERVICE);
    std::fs::write(
        &script,
        format!("#!/bin/sh\ncat '{}'\n", catalog.to_string_lossy()),
    )
    .unwrap();
    let mut permissions = std::fs::metadata(&script).unwrap().permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut permissions, 0o755);
    std::fs::set_permissions(&script, permissions).unwrap();
    script.to_string_lossy().into_owned()
}

/// Runs the built `eda` binary with `args`, without any `EDA_*` variable of the caller.
fn eda(args: &[&str]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_eda"));
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("EDA_") {
            command.env_remove(name);
        }
    }
    command.args(args).output().expect("eda runs")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// `eda <args>`, which must fail with exit code 1 and one line on stderr; that line.
fn fails(args: &[&str]) -> String {
    let output = eda(args);
    let err = text(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "eda {args:?}: {err}");
    assert_eq!(err.trim_end().lines().count(), 1, "one line: {err}");
    err
}

fn fingerprint_of(name: &str, version: u32) -> String {
    eda::App::catalog()
        .events
        .into_iter()
        .find(|e| e.name == name && e.version == version)
        .unwrap_or_else(|| panic!("{name} v{version} in this binary"))
        .fingerprint
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_reports_conflicts_missing_upcasts_and_agreement() {
    let server = NatsServer::start().unwrap_or_else(|e| panic!("{e}"));
    let url = server.url();
    let _app = TestApp::builder(SERVICE)
        .nats(url.clone())
        .handlers(&["on_bill"])
        .start()
        .await
        .expect("the app starts and registers its schemas");
    let billing = shop_billing();

    // Every shop event is registered with the schema shop_billing has.
    let output = eda(&["schemas", "check", billing, "--nats", &url]);
    assert!(output.status.success(), "{}", text(&output.stderr));
    assert_eq!(
        text(&output.stdout),
        format!(
            "ok: `{billing}` (service `billing`): 8 event versions checked against `EDA_SCHEMAS` on {url}: 8 registered with the same schema, 0 new\n"
        )
    );
    assert_eq!(text(&output.stderr), "", "no warning");

    let client = async_nats::connect(&url).await.expect("connects");
    let js = async_nats::jetstream::new(client);
    let registry = js.get_key_value("EDA_SCHEMAS").await.expect("the registry");

    // Another service registered parcel.sent v1, and this binary's v2 was never registered:
    // v2 cannot be upcast from v1. A warning, exit 0.
    registry.purge("parcel.sent.v2").await.expect("purged");
    let v1 = json!({
        "name": "parcel.sent", "version": 1, "fingerprint": "f".repeat(64),
        "schema": {"title": "ParcelSentV1", "type": "object", "properties": {"id": {"type": "integer"}}},
    });
    registry
        .put("parcel.sent.v1", serde_json::to_vec(&v1).unwrap().into())
        .await
        .expect("written");
    let dir = std::env::temp_dir().join(format!("eda-schemas-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let ours = this_binary(&dir);
    let output = eda(&["schemas", "check", &ours, "--nats", &url]);
    let _ = std::fs::remove_dir_all(&dir);
    let err = text(&output.stderr);
    assert!(output.status.success(), "a warning only: {err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.starts_with("warning: `parcel.sent` v2 is new to `EDA_SCHEMAS`, whose newest earlier version is v1, and this binary cannot upcast v1 to v2: `ParcelSent` (v2) has no `upcast_from` v1"),
        "{err}"
    );
    let out = text(&output.stdout);
    assert!(
        out.starts_with(&format!("ok: `{ours}` (service `schemacheck`): 9 event versions checked against `EDA_SCHEMAS` on {url}: 8 registered with the same schema, 1 new (parcel.sent v2); 1 warning")),
        "{out}"
    );

    // Another service registered bill.created v1 with a schema of its own: an error naming
    // both fingerprints and both types.
    let theirs = "0".repeat(64);
    let conflicting = json!({
        "name": "bill.created", "version": 1, "fingerprint": theirs,
        "schema": {"title": "BillCreated", "type": "object", "properties": {
            "bill_id": {"type": "string"}, "user_id": {"type": "integer"}, "currency": {"type": "string"},
        }},
    });
    registry
        .put(
            "bill.created.v1",
            serde_json::to_vec(&conflicting).unwrap().into(),
        )
        .await
        .expect("written");
    let err = fails(&["schemas", "check", billing, "--nats", &url]);
    let ours_fp = fingerprint_of("bill.created", 1);
    for expected in [
        format!("`{billing}` (service `billing`) disagrees with the schema registry `EDA_SCHEMAS` on {url}"),
        format!("`bill.created` v1: this binary's fingerprint is `{ours_fp}` (type `BillCreated`)"),
        format!("`EDA_SCHEMAS` has fingerprint `{theirs}` (type `BillCreated`)"),
        "fields only here: `amount_cents`; only registered: `currency`; changed: `bill_id`, `user_id`".to_owned(),
        "give the changed schema a new version".to_owned(),
    ] {
        assert!(err.contains(&expected), "{expected} in {err}");
    }
    assert!(
        !err.contains("payment.requested"),
        "only the conflict: {err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn servers_without_eda_or_its_registry_are_one_clear_line() {
    let billing = shop_billing();
    let server = NatsServer::start().unwrap_or_else(|e| panic!("{e}"));
    let url = server.url();
    let err = fails(&["schemas", "check", billing, "--nats", &url]);
    assert!(
        err.contains(&format!(
            "no eda streams on {url}: is an eda service running against it?"
        )),
        "{err}"
    );

    // eda's event stream, but no registry.
    let client = async_nats::connect(&url).await.expect("connects");
    async_nats::jetstream::new(client)
        .create_stream(async_nats::jetstream::stream::Config {
            name: "EDA_EVENTS".into(),
            subjects: vec!["events.>".into()],
            ..Default::default()
        })
        .await
        .expect("created");
    let err = fails(&["schemas", "check", billing, "--nats", &url]);
    assert!(
        err.contains(&format!("no schema registry `EDA_SCHEMAS` on {url}")),
        "{err}"
    );
    let err = fails(&["schemas", "check", "/bin/false", "--nats", &url]);
    assert!(
        err.contains("`/bin/false` failed with EDA_CATALOG=json"),
        "{err}"
    );
}
