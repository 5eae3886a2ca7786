//! `eda asyncapi` on the four shop example binaries (and on a service with nested types), its
//! output parsed by the official AsyncAPI parser, `@asyncapi/parser`, through
//! `asyncapi_parse.js`: no error, and the parsed document holds a message per event version of
//! `eda catalog`, a `receive` operation per handler with its durable consumer as NATS queue, a
//! `send` operation per emitted event.
//!
//! Needs node and the parser in `target/npm`: `scripts/test` installs both (or
//! `npm install --prefix target/npm @asyncapi/parser@3.6.6`). Without them the tests fail
//! saying so.
#![allow(missing_docs, missing_debug_implementations)]

mod support;

use std::collections::BTreeSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use support::{eda_command, root, shop};

use eda::prelude::*;
use serde_json::Value;

/// The parser version `scripts/test` installs.
const PARSER: &str = "@asyncapi/parser@3.6.6";

/// Runs the built `eda` binary with `args`.
fn eda(args: &[&str]) -> Output {
    eda_command(args).output().expect("eda runs")
}

/// `eda <args>`, which must succeed; its stdout.
fn ok(args: &[&str]) -> String {
    let output = eda(args);
    assert!(
        output.status.success(),
        "eda {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).expect("UTF-8")
}

/// `node_modules` with the parser in it; fails the test, saying how to install it, when the
/// parser or node is missing.
fn parser_modules() -> PathBuf {
    let modules = root().join("target/npm/node_modules");
    assert!(
        modules.join("@asyncapi/parser/package.json").is_file(),
        "the AsyncAPI parser is not installed in {}: run scripts/test, or `npm install --prefix target/npm {PARSER}` in {}",
        modules.display(),
        root().display()
    );
    let node = Command::new("node").arg("--version").output();
    assert!(
        node.is_ok_and(|o| o.status.success()),
        "`node` is needed by this test and does not run: apt-get install nodejs npm (scripts/test installs it)"
    );
    modules
}

/// `document` parsed by `@asyncapi/parser`: its diagnostics and the parsed model's contents.
fn parse(document: &str) -> Value {
    let modules = parser_modules();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/asyncapi_parse.js");
    let mut child = Command::new("node")
        .arg(script)
        .arg(modules)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("node runs");
    let mut stdin = child.stdin.take().expect("stdin");
    let text = document.to_owned();
    let writer = std::thread::spawn(move || stdin.write_all(text.as_bytes()));
    let output = child.wait_with_output().expect("node finishes");
    writer
        .join()
        .expect("writer")
        .expect("the document is written");
    assert!(
        output.status.success(),
        "the parser script failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("the script prints JSON")
}

/// The parsed document, after asserting the parser found no error and no warning.
fn valid(report: &Value) -> &Value {
    for severity in ["error", "warning"] {
        assert_eq!(
            report["diagnostics"][severity],
            serde_json::json!([]),
            "{severity}s of @asyncapi/parser"
        );
    }
    let document = &report["document"];
    assert_eq!(document["version"], "3.0.0");
    document
}

fn find<'a>(list: &'a Value, key: &str, value: &str) -> &'a Value {
    list.as_array()
        .expect("a list")
        .iter()
        .find(|item| item[key] == value)
        .unwrap_or_else(|| panic!("{key} = {value} in {list}"))
}

fn strings(value: &Value) -> Vec<&str> {
    value
        .as_array()
        .unwrap_or_else(|| panic!("a list: {value}"))
        .iter()
        .map(|v| v.as_str().expect("a string"))
        .collect()
}

#[test]
fn the_shop_is_a_valid_asyncapi_document_with_every_event_handler_and_emit() {
    let binaries: Vec<&str> = shop().iter().map(String::as_str).collect();
    let mut args = vec!["asyncapi", "--server-url", "nats://nats.shop.example:4222"];
    args.extend(&binaries);
    let yaml = ok(&args);
    assert!(yaml.starts_with("asyncapi: \"3.0.0\"\n"), "{yaml}");
    let report = parse(&yaml);
    let document = valid(&report);
    assert_eq!(
        document["title"],
        "eda services: analytics, billing, notifications, orders"
    );
    assert_eq!(
        document["servers"],
        serde_json::json!([{"id": "nats", "host": "nats.shop.example:4222", "protocol": "nats"}])
    );

    let mut catalog_args = vec!["catalog"];
    catalog_args.extend(&binaries);
    let catalog: Value = serde_json::from_str(&ok(&catalog_args)).expect("JSON");
    let events = catalog["events"].as_array().expect("events");
    assert_eq!(events.len(), 8, "the shop's event versions");

    // A message per event version: its JSON Schema as a draft-07 payload, eda's headers.
    let messages = &document["messages"];
    assert_eq!(messages.as_array().unwrap().len(), events.len());
    for event in events {
        let id = format!("{}.v{}", event["name"].as_str().unwrap(), event["version"]);
        let message = find(messages, "name", &id);
        assert_eq!(message["contentType"], "application/json", "{id}");
        assert_eq!(
            message["schemaFormat"], "application/schema+json;version=draft-07",
            "{id}"
        );
        let schema = &event["schema"];
        let payload = &message["payload"];
        assert_eq!(payload["title"], schema["title"], "{id}");
        assert_eq!(payload["required"], schema["required"], "{id}");
        let keys = |s: &Value| -> BTreeSet<String> {
            s["properties"]
                .as_object()
                .unwrap()
                .keys()
                .cloned()
                .collect()
        };
        assert_eq!(keys(payload), keys(schema), "{id}");
        assert!(payload.get("$schema").is_none(), "{id}: {payload}");
        assert_eq!(
            strings(&message["headers"]),
            [
                "Eda-Causation-Id",
                "Eda-Correlation-Id",
                "Eda-Source",
                "Eda-Time",
                "Eda-Version",
                "Nats-Msg-Id",
                "traceparent"
            ],
            "{id}"
        );
        // Its event's channel carries it.
        let channel = find(&document["channels"], "id", event["name"].as_str().unwrap());
        assert_eq!(
            channel["address"],
            format!("events.{}", event["name"].as_str().unwrap())
        );
        assert!(
            strings(&channel["messages"]).contains(&id.as_str()),
            "{channel}"
        );
    }

    // A receive operation per handler, its durable consumer as the NATS queue.
    let operations = &document["operations"];
    let mut handlers = 0;
    for service in catalog["services"].as_array().unwrap() {
        let name = service["service"].as_str().unwrap();
        for handler in service["handlers"].as_array().unwrap() {
            handlers += 1;
            let handler_name = handler["name"].as_str().unwrap();
            let op = find(operations, "id", &format!("{name}.{handler_name}"));
            assert_eq!(op["action"], "receive");
            assert_eq!(op["nats"]["queue"], format!("{name}__{handler_name}"));
            assert_eq!(op["bindingVersion"], "0.1.0");
            assert_eq!(
                strings(&op["channels"]),
                [format!("events.{}", handler["subject"].as_str().unwrap())]
            );
            let expected: Vec<String> = events
                .iter()
                .filter(|e| {
                    e["handled_by"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .any(|h| h["service"] == name && h["handler"] == handler_name)
                })
                .map(|e| format!("{}.v{}", e["name"].as_str().unwrap(), e["version"]))
                .collect();
            assert!(!expected.is_empty(), "{name}/{handler_name} handles events");
            assert_eq!(strings(&op["messages"]), expected, "{name}/{handler_name}");
        }
    }
    assert_eq!(handlers, 7, "billing 2, notifications 4, analytics 1");
    let welcome = find(operations, "id", "notifications.welcome");
    assert_eq!(
        strings(&welcome["messages"]),
        ["user.created.v1", "user.created.v2"],
        "v1 reaches the v2 handler upcast"
    );
    let analytics = find(operations, "id", "analytics.count_events");
    assert_eq!(strings(&analytics["channels"]), ["events.>"]);
    assert_eq!(
        analytics["messages"].as_array().unwrap().len(),
        events.len()
    );

    // A send operation per emitted event and service.
    let mut sends = 0;
    for event in events {
        for service in strings(&event["emitted_by"]) {
            sends += 1;
            let name = event["name"].as_str().unwrap();
            let op = find(operations, "id", &format!("{service}.send.{name}"));
            assert_eq!(op["action"], "send");
            assert_eq!(strings(&op["channels"]), [format!("events.{name}")]);
            assert_eq!(
                strings(&op["messages"]),
                [format!("{name}.v{}", event["version"])]
            );
        }
    }
    assert_eq!(sends, 7, "orders 3, billing 3, notifications 1");
    assert_eq!(
        operations.as_array().unwrap().len(),
        handlers + sends,
        "no other operation"
    );

    // `--json` is the same document.
    let mut json_args = args.clone();
    json_args.insert(1, "--json");
    let json = ok(&json_args);
    let as_json: Value = serde_json::from_str(&json).expect("JSON");
    assert_eq!(as_json["asyncapi"], "3.0.0");
    assert_eq!(parse(&json)["document"], report["document"]);
}

/// An address shared by two events, with an enum: schemars defines both once per schema.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, schemars::JsonSchema)]
pub struct Address {
    pub street: String,
    pub city: String,
    pub kind: AddressKind,
}

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, schemars::JsonSchema)]
pub enum AddressKind {
    Home,
    Work,
}

#[event("parcel.sent")]
pub struct ParcelSent {
    pub to: Address,
    pub from: Option<Address>,
    pub size_cm: (u32, u32, u32),
}

#[event("parcel.returned")]
pub struct ParcelReturned {
    pub to: Address,
    pub reason: String,
}

#[handler(service = "warehouse", emits = [ParcelReturned])]
async fn on_sent(_event: ParcelSent) {}

#[test]
fn nested_types_land_in_components_and_the_parser_resolves_them() {
    // This test binary is a real eda service: its catalog, as `EDA_CATALOG=json` prints it.
    let app = eda::App::builder("warehouse")
        .in_memory()
        .handlers(&["on_sent"])
        .build()
        .expect("the app builds");
    let described = serde_json::to_string(&app.describe()).expect("JSON");
    let dir = std::env::temp_dir().join(format!("eda-asyncapi-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("catalog.json"), described).unwrap();
    let binary = dir.join("warehouse");
    std::fs::write(
        &binary,
        format!(
            "#!/bin/sh\ncat '{}'\n",
            dir.join("catalog.json").to_string_lossy()
        ),
    )
    .unwrap();
    let mut permissions = std::fs::metadata(&binary).unwrap().permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut permissions, 0o755);
    std::fs::set_permissions(&binary, permissions).unwrap();

    let yaml = ok(&["asyncapi", &binary.to_string_lossy()]);
    let _ = std::fs::remove_dir_all(&dir);
    assert!(
        yaml.contains("$ref: \"#/components/schemas/Address\""),
        "{yaml}"
    );
    assert!(!yaml.contains("#/$defs/"), "{yaml}");
    let report = parse(&yaml);
    let document = valid(&report);
    let sent = find(&document["messages"], "name", "parcel.sent.v1");
    // Resolved by the parser: the address's fields, the enum inside it, the tuple.
    let to = &sent["payload"]["properties"]["to"];
    assert_eq!(to["properties"]["city"]["type"], "string", "{to}");
    assert_eq!(
        to["properties"]["kind"]["enum"],
        serde_json::json!(["Home", "Work"]),
        "{to}"
    );
    let size = &sent["payload"]["properties"]["size_cm"];
    assert_eq!(size["items"].as_array().map(Vec::len), Some(3), "{size}");
    let returned = find(&document["messages"], "name", "parcel.returned.v1");
    assert_eq!(
        returned["payload"]["properties"]["to"]["properties"]["street"]["type"],
        "string"
    );
    let op = find(&document["operations"], "id", "warehouse.on_sent");
    assert_eq!(op["nats"]["queue"], "warehouse__on_sent");
    let send = find(
        &document["operations"],
        "id",
        "warehouse.send.parcel.returned",
    );
    assert_eq!(strings(&send["messages"]), ["parcel.returned.v1"]);
}

#[test]
fn bad_options_are_one_clear_line() {
    let binary = &shop()[1];
    for (url, expected) in [
        (
            "nats://ops:hunter2@nats.example:4222",
            "leave the credentials out of the document",
        ),
        ("http://nats.example", "expected a nats:// or tls:// URL"),
    ] {
        let output = eda(&["asyncapi", "--server-url", url, binary]);
        assert_eq!(output.status.code(), Some(1));
        let err = String::from_utf8_lossy(&output.stderr);
        assert_eq!(err.trim_end().lines().count(), 1, "{err}");
        assert!(err.contains(expected), "{err}");
        assert!(!err.contains("hunter2"), "{err}");
    }
}
