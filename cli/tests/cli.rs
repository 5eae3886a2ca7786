//! The `eda` command against a real nats-server populated by an in-process eda app: one
//! handler that dead-letters some events, one that handles them all; and `catalog` /
//! `permissions` on the `shop_billing` example binary.
#![allow(missing_docs, missing_debug_implementations)]

mod support;

use std::process::Output;

use eda::prelude::*;
use eda::testing::{NatsServer, TestApp};
use serde_json::Value;
use support::{eda_command, shop_billing};

const SERVICE: &str = "clitest";

#[event("cli.order.placed")]
pub struct OrderPlaced {
    pub id: u64,
}

/// Refuses even orders: a `permanent` dead letter each.
#[handler(service = "clitest")]
async fn refuse_even(event: OrderPlaced) -> Result<(), HandlerError> {
    if event.id.is_multiple_of(2) {
        return Err(HandlerError::permanent(format!(
            "declined: order {} is even",
            event.id
        )));
    }
    Ok(())
}

/// Handles every order.
#[handler(service = "clitest")]
async fn count_orders(_event: OrderPlaced) {}

/// The payload that does not decode into `OrderPlaced`: a `decode` dead letter for both.
const BAD_PAYLOAD: &str = r#"{"id":"not a number"}"#;

/// A server with 4 orders (2 refused) and one undecodable message: dead letters
/// `refuse_even` permanent 2, decode 1; `count_orders` decode 1.
async fn populated() -> (NatsServer, TestApp) {
    let server = NatsServer::start().unwrap_or_else(|e| panic!("{e}"));
    let app = TestApp::builder(SERVICE)
        .nats(server.url())
        .handlers(&["refuse_even", "count_orders"])
        .start()
        .await
        .expect("the test app starts");
    for id in 1..=4 {
        app.publish(&OrderPlaced { id }).await.expect("published");
    }
    let client = async_nats::connect(server.url()).await.expect("connects");
    async_nats::jetstream::new(client)
        .publish("events.cli.order.placed", BAD_PAYLOAD.into())
        .await
        .expect("sent")
        .await
        .expect("stored");
    app.settle().await;
    assert_eq!(app.dead_letters().await.expect("dead letters").len(), 4);
    (server, app)
}

/// Runs the built `eda` binary with `args`.
fn eda(args: &[&str]) -> Output {
    eda_command(args).output().expect("eda runs")
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// `eda <args>`, which must succeed; its stdout.
fn ok(args: &[&str]) -> String {
    let output = eda(args);
    assert!(
        output.status.success(),
        "eda {args:?}: {}\nstdout: {}",
        stderr(&output),
        stdout(&output)
    );
    stdout(&output)
}

/// `eda <args>`, which must fail with exit code 1 and one line on stderr; that line.
fn fails(args: &[&str]) -> String {
    let output = eda(args);
    assert_eq!(
        output.status.code(),
        Some(1),
        "eda {args:?}: {}",
        stdout(&output)
    );
    let err = stderr(&output);
    assert_eq!(err.trim_end().lines().count(), 1, "one line: {err}");
    err
}

fn json(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("{e}: {text}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_shows_the_consumers_and_dead_letters_per_handler_and_reason() {
    let (server, _app) = populated().await;
    let url = server.url();
    let text = ok(&["status", "--nats", &url]);
    for expected in [
        "EDA_EVENTS",
        "EDA_DLQ",
        "clitest",
        "refuse_even",
        "count_orders",
        "dead letters in `EDA_DLQ` (4)",
        "permanent",
        "decode",
        "cli.order.placed.v1",
    ] {
        assert!(text.contains(expected), "{expected} in:\n{text}");
    }
    let rows: Vec<Vec<&str>> = text
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    for row in [
        ["clitest/count_orders", "decode", "1"],
        ["clitest/refuse_even", "decode", "1"],
        ["clitest/refuse_even", "permanent", "2"],
    ] {
        assert!(rows.iter().any(|r| r == &row), "{row:?} in:\n{text}");
    }
    let consumer = rows
        .iter()
        .find(|r| r.first() == Some(&SERVICE) && r.get(1) == Some(&"refuse_even"))
        .unwrap_or_else(|| panic!("the consumer's row in:\n{text}"));
    assert_eq!(
        consumer[2..5],
        ["0", "0", "0"],
        "pending, ack pending, redelivered"
    );
    assert_ne!(
        consumer[5], "0",
        "the running app has pull requests waiting"
    );

    let status = json(&ok(&["status", "--nats", &url, "--json"]));
    let streams = status["streams"].as_array().unwrap();
    let events = streams.iter().find(|s| s["name"] == "EDA_EVENTS").unwrap();
    assert_eq!(events["messages"], 5);
    assert!(events["bytes"].as_u64().unwrap() > 0);
    let dlq = streams.iter().find(|s| s["name"] == "EDA_DLQ").unwrap();
    assert_eq!(dlq["messages"], 4);
    let consumers = status["consumers"].as_array().unwrap();
    let names: Vec<&str> = consumers
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["clitest__count_orders", "clitest__refuse_even"]);
    for c in consumers {
        assert_eq!(
            (&c["pending"], &c["ack_pending"]),
            (&Value::from(0), &Value::from(0)),
            "{c}"
        );
        assert!(c["last_active"].is_string(), "{c}");
    }
    let dead = &status["dead_letters"];
    assert_eq!(dead["total"], 4);
    let handlers = dead["handlers"].as_array().unwrap();
    let of = |handler: &str| {
        handlers
            .iter()
            .find(|h| h["handler"] == handler)
            .unwrap_or_else(|| panic!("{handler} in {dead}"))
    };
    assert_eq!(of("refuse_even")["total"], 3);
    assert_eq!(of("refuse_even")["reasons"]["permanent"], 2);
    assert_eq!(of("refuse_even")["reasons"]["decode"], 1);
    assert_eq!(
        of("count_orders")["reasons"],
        serde_json::json!({"decode": 1})
    );
    assert_eq!(of("count_orders")["service"], SERVICE);
    assert_eq!(
        status["schemas"],
        serde_json::json!(["cli.order.placed.v1"])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dlq_list_filters_by_handler_reason_and_age() {
    let (server, _app) = populated().await;
    let url = server.url();
    let all = json(&ok(&["dlq", "list", "--nats", &url, "--json"]));
    assert_eq!(all.as_array().unwrap().len(), 4);
    let refused = json(&ok(&[
        "dlq",
        "list",
        "--nats",
        &url,
        "--json",
        "--handler",
        "clitest/refuse_even",
    ]));
    assert_eq!(refused.as_array().unwrap().len(), 3);
    let permanent = json(&ok(&[
        "dlq",
        "list",
        "--nats",
        &url,
        "--json",
        "--handler",
        "clitest/refuse_even",
        "--reason",
        "permanent",
    ]));
    let permanent = permanent.as_array().unwrap();
    assert_eq!(permanent.len(), 2);
    for row in permanent {
        assert_eq!(row["handler"], "clitest/refuse_even");
        assert_eq!(row["reason"], "permanent");
        assert_eq!(row["event"], "cli.order.placed");
        assert_eq!(row["attempts"], 1);
        assert!(row["event_id"].is_string(), "{row}");
        assert!(
            row["error"].as_str().unwrap().contains("declined: order"),
            "{row}"
        );
    }
    let decode = json(&ok(&[
        "dlq", "list", "--nats", &url, "--json", "--reason", "decode",
    ]));
    let handlers: Vec<&str> = decode
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["handler"].as_str().unwrap())
        .collect();
    assert_eq!(handlers.len(), 2);
    assert!(
        handlers.contains(&"clitest/count_orders") && handlers.contains(&"clitest/refuse_even")
    );
    let recent = json(&ok(&[
        "dlq", "list", "--nats", &url, "--json", "--since", "1h",
    ]));
    assert_eq!(recent.as_array().unwrap().len(), 4);

    let table = ok(&["dlq", "list", "--nats", &url, "--reason", "permanent"]);
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines.len(), 3, "a header and two rows:\n{table}");
    for column in [
        "SEQ", "HANDLER", "REASON", "ATTEMPTS", "EVENT", "EVENT ID", "TIME", "ERROR",
    ] {
        assert!(lines[0].contains(column), "{column} in {}", lines[0]);
    }
    assert!(lines[1].contains("clitest/refuse_even") && lines[1].contains("declined: order"));
    let none = ok(&["dlq", "list", "--nats", &url, "--handler", "clitest/nobody"]);
    assert!(
        none.starts_with("no dead letters in `EDA_DLQ` for clitest/nobody"),
        "{none}"
    );

    let usage = eda(&["dlq", "list", "--nats", &url, "--reason", "bored"]);
    assert_eq!(usage.status.code(), Some(2), "{}", stderr(&usage));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dlq_show_prints_headers_error_and_payload() {
    let (server, _app) = populated().await;
    let url = server.url();
    let rows = json(&ok(&["dlq", "list", "--nats", &url, "--json"]));
    let seq_of = |reason: &str, handler: &str| {
        rows.as_array()
            .unwrap()
            .iter()
            .find(|r| r["reason"] == reason && r["handler"] == handler)
            .unwrap_or_else(|| panic!("{reason} {handler} in {rows}"))["sequence"]
            .to_string()
    };
    let seq = seq_of("permanent", "clitest/refuse_even");
    let text = ok(&["dlq", "show", &seq, "--nats", &url]);
    for expected in [
        "reason      permanent",
        "handler     clitest/refuse_even",
        "Eda-Dlq-Reason: permanent",
        "Eda-Dlq-Handler: refuse_even",
        "Eda-Dlq-Attempts: 1",
        "Eda-Original-Subject: events.cli.order.placed",
        "Eda-Original-Id: ",
        "Eda-Original-Seq: ",
        "declined: order ",
        "payload (",
        "JSON)",
        "\"id\": ",
    ] {
        assert!(text.contains(expected), "{expected:?} in:\n{text}");
    }

    let seq = seq_of("decode", "clitest/count_orders");
    let shown = json(&ok(&["dlq", "show", &seq, "--nats", &url, "--json"]));
    assert_eq!(shown["reason"], "decode");
    assert_eq!(shown["payload"], json(BAD_PAYLOAD));
    assert!(
        shown["error"].as_str().unwrap().contains("invalid type"),
        "{shown}"
    );

    let err = fails(&["dlq", "show", "9999", "--nats", &url]);
    assert!(
        err.contains("no dead letter at sequence 9999 in `EDA_DLQ`"),
        "{err}"
    );
}

#[test]
fn connection_problems_are_one_clear_line() {
    let err = fails(&["status", "--nats", "http://127.0.0.1:1"]);
    assert!(
        err.contains("NATS URL `http://127.0.0.1:1`: expected a nats:// or tls:// URL"),
        "{err}"
    );

    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("nats://ada:hunter2@127.0.0.1:{port}");
    let err = fails(&["dlq", "list", "--nats", &url]);
    assert!(
        err.contains("cannot connect to NATS at `nats://ada:***@127.0.0.1:"),
        "{err}"
    );
    assert!(!err.contains("hunter2"), "{err}");

    let empty = NatsServer::start().unwrap_or_else(|e| panic!("{e}"));
    for args in [
        &["status"][..],
        &["dlq", "list"][..],
        &["dlq", "show", "1"][..],
    ] {
        let mut args = args.to_vec();
        let url = empty.url();
        args.extend(["--nats", &url]);
        let err = fails(&args);
        assert!(
            err.contains(&format!(
                "no eda streams on {url}: is an eda service running against it?"
            )),
            "{err}"
        );
    }
}

#[test]
fn catalog_merges_what_the_binaries_print() {
    let binary = shop_billing();
    let merged = json(&ok(&["catalog", binary]));
    let services = merged["services"].as_array().unwrap();
    assert_eq!(services.len(), 1);
    assert_eq!(services[0]["service"], "billing");
    assert_eq!(services[0]["binary"], binary);
    let handlers: Vec<&str> = services[0]["handlers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["name"].as_str().unwrap())
        .collect();
    assert_eq!(handlers, ["charge", "record_bill"]);
    let events = merged["events"].as_array().unwrap();
    let event = |name: &str, version: u64| {
        events
            .iter()
            .find(|e| e["name"] == name && e["version"] == version)
            .unwrap_or_else(|| panic!("{name} v{version} in {merged}"))
    };
    assert_eq!(
        event("payment.requested", 1)["handled_by"],
        serde_json::json!([{"service": "billing", "handler": "charge"}])
    );
    assert_eq!(
        event("bill.created", 1)["defined_in"],
        serde_json::json!(["billing"])
    );
    assert!(event("user.created", 2)["fingerprint"].is_string());

    // The same binary twice: every event once.
    let twice = json(&ok(&["catalog", binary, binary]));
    assert_eq!(twice["services"].as_array().unwrap().len(), 2);
    assert_eq!(twice["events"].as_array().unwrap().len(), events.len());

    let err = fails(&["catalog", binary, "/bin/false"]);
    assert!(
        err.contains("`/bin/false` failed with EDA_CATALOG=json"),
        "{err}"
    );
}

#[test]
fn a_binary_that_fails_is_named_with_its_stderr() {
    let script = std::env::temp_dir().join(format!("eda-cli-not-eda-{}", std::process::id()));
    std::fs::write(
        &script,
        "#!/bin/sh\necho 'cannot open config.toml' >&2\necho '{oops'\nexit 0\n",
    )
    .unwrap();
    let mut permissions = std::fs::metadata(&script).unwrap().permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut permissions, 0o755);
    std::fs::set_permissions(&script, permissions).unwrap();
    let path = script.to_string_lossy().into_owned();
    let output = eda(&["catalog", &path]);
    let _ = std::fs::remove_file(&script);
    assert_eq!(output.status.code(), Some(1));
    let err = stderr(&output);
    assert!(
        err.contains(&format!("`{path}` printed no JSON catalog")),
        "{err}"
    );
    assert!(err.contains("cannot open config.toml"), "{err}");
}

#[test]
fn permissions_prints_the_block_of_the_binarys_service() {
    let binary = shop_billing();
    let block = ok(&["permissions", binary]);
    for expected in [
        "# NATS permissions of service `billing`, generated by eda",
        "permissions: {",
        "\"$JS.API.CONSUMER.MSG.NEXT.EDA_EVENTS.billing__charge\"",
        "\"$JS.API.CONSUMER.MSG.NEXT.EDA_EVENTS.billing__record_bill\"",
        "\"dlq.billing.>\"",
        "\"_INBOX.>\"",
    ] {
        assert!(block.contains(expected), "{expected} in:\n{block}");
    }
    assert_eq!(ok(&["permissions", binary, "billing"]), block);
    let err = fails(&["permissions", binary, "shipping"]);
    assert!(
        err.contains("runs service `billing`, not `shipping`"),
        "{err}"
    );
}

#[test]
fn credentials_are_those_of_the_runtime_and_never_printed() {
    let server = NatsServer::start_with_args(&["--user", "ops", "--pass", "s3cret-pw"])
        .unwrap_or_else(|e| panic!("{e}"));
    let url = server.url();
    // Flags, and credentials written in the URL, reach a server that wants them: it has no
    // eda streams, and says so.
    let no_streams = format!("no eda streams on {url}");
    let with_flags = fails(&[
        "status",
        "--nats",
        &url,
        "--user",
        "ops",
        "--password",
        "s3cret-pw",
    ]);
    assert!(with_flags.contains(&no_streams), "{with_flags}");
    let in_url = url.replacen("nats://", "nats://ops:s3cret-pw@", 1);
    let with_url = fails(&["status", "--nats", &in_url]);
    assert!(
        with_url.contains("no eda streams on nats://ops:***@"),
        "{with_url}"
    );
    assert!(!with_url.contains("s3cret-pw"), "{with_url}");
    // A wrong password is refused with what to check, and not shown.
    let wrong = fails(&[
        "dlq",
        "list",
        "--nats",
        &url,
        "--user",
        "ops",
        "--password",
        "wrong-pw",
    ]);
    assert!(wrong.contains("rejected the credentials"), "{wrong}");
    assert!(!wrong.contains("wrong-pw"), "{wrong}");
    let half = eda(&["status", "--nats", &url, "--user", "ops"]);
    assert_eq!(half.status.code(), Some(2), "{}", stderr(&half));
    assert!(stderr(&half).contains("--password"), "{}", stderr(&half));
}
