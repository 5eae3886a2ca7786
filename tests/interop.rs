//! Interop with a non-Rust client (DESIGN.md §7): a Python program using nats-py publishes
//! plain JSON and CloudEvents that a Rust handler handles, and reads back events eda
//! published, headers and all, in eda's format and in CloudEvents binary mode. The interpreter is `EDA_PYTHON` (set by `scripts/test` to its virtualenv, which
//! has nats-py) or `python3`.
#![allow(missing_docs, missing_debug_implementations)]

use std::process::Command;
use std::sync::{Arc, Mutex};

use eda::prelude::*;
use eda::testing::{NatsServer, TestApp};
use eda::Metadata;

#[event("invoice.issued")]
pub struct InvoiceIssued {
    pub number: u64,
    pub customer: String,
}

#[derive(Default)]
pub struct Issued(Mutex<Vec<(u64, String, u32)>>, Mutex<Vec<Arc<Metadata>>>);

#[handler(service = "interop")]
async fn file_invoice(event: Envelope<InvoiceIssued>, issued: State<Issued>) {
    let version = event.metadata.version;
    issued
        .0
        .lock()
        .unwrap()
        .push((event.number, event.customer.clone(), version));
    issued.1.lock().unwrap().push(Arc::clone(&event.metadata));
}

/// Runs the Python client; fails with an install hint when Python or nats-py is missing.
fn python(args: &[&str]) -> serde_json::Value {
    let interpreter = std::env::var("EDA_PYTHON").unwrap_or_else(|_| "python3".into());
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/interop/client.py");
    let output = Command::new(&interpreter)
        .arg(script)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run `{interpreter}` ({e}): install Python 3, or run scripts/test, which sets EDA_PYTHON"));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "the Python client failed: {stderr}\n(nats-py missing? run scripts/test, or `pip install nats-py`, and set EDA_PYTHON)"
    );
    serde_json::from_slice(&output.stdout).unwrap_or_else(|e| {
        panic!(
            "the Python client printed no JSON ({e}): {}",
            String::from_utf8_lossy(&output.stdout)
        )
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_python_client_publishes_what_rust_handles_and_reads_what_rust_publishes() {
    let server = NatsServer::start().unwrap_or_else(|e| panic!("{e}"));
    let issued = Arc::new(Issued::default());
    let app = TestApp::builder("interop")
        .nats(server.url())
        .shared_state(Arc::clone(&issued))
        .handlers(&["file_invoice"])
        .start()
        .await
        .unwrap();

    let url = server.url();
    let reply = python(&[
        &url,
        "publish",
        "events.invoice.issued",
        r#"{"number": 7, "customer": "ada"}"#,
    ]);
    assert_eq!(reply["seq"], 1);
    app.settle().await;
    assert_eq!(
        *issued.0.lock().unwrap(),
        [(7, "ada".to_string(), 1)],
        "plain JSON from Python is handled as v1"
    );

    let id = app
        .publish(&InvoiceIssued {
            number: 8,
            customer: "grace".into(),
        })
        .await
        .unwrap();
    let read = python(&[&url, "read", "EDA_EVENTS", "2"]);
    assert_eq!(read["subject"], "events.invoice.issued");
    assert_eq!(
        read["payload"],
        serde_json::json!({"number": 8, "customer": "grace"})
    );
    let headers = &read["headers"];
    assert_eq!(
        *headers,
        serde_json::json!({"Nats-Msg-Id": id, "Eda-Source": "interop"}),
        "a root event carries its id and source, nothing a receiver can derive"
    );
    app.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cloudevents_in_binary_mode_are_read_from_python_and_written_for_it() {
    let server = NatsServer::start().unwrap_or_else(|e| panic!("{e}"));
    let issued = Arc::new(Issued::default());
    let app = TestApp::builder("interop")
        .nats(server.url())
        .configure(|b| b.cloudevents())
        .shared_state(Arc::clone(&issued))
        .handlers(&["file_invoice"])
        .start()
        .await
        .unwrap();
    let url = server.url();

    // A CloudEvent as another CloudEvents producer writes it (header names in any case).
    let headers = serde_json::json!({
        "ce-specversion": "1.0",
        "CE-ID": "inv-0042",
        "ce-type": "invoice.issued",
        "ce-source": "/billing/legacy%20system",
        "ce-time": "2026-03-01T09:30:00+01:00",
        "ce-datacontenttype": "application/json",
        "ce-dataschema": "https://example.com/schemas/invoice.json",
        "ce-tenant": "acme",
    });
    python(&[
        &url,
        "publish",
        "events.invoice.issued",
        r#"{"number": 42, "customer": "ada"}"#,
        &headers.to_string(),
    ]);
    app.settle().await;
    assert_eq!(*issued.0.lock().unwrap(), [(42, "ada".to_string(), 1)]);
    let seen = Arc::clone(&issued.1.lock().unwrap()[0]);
    assert_eq!(seen.id, "inv-0042");
    assert_eq!(seen.correlation_id, "inv-0042");
    assert_eq!(&*seen.source, "/billing/legacy system");
    assert_eq!(
        seen.time,
        humantime::parse_rfc3339("2026-03-01T08:30:00Z").unwrap()
    );
    let mut extensions = seen.extensions.clone();
    extensions.sort();
    assert_eq!(
        extensions,
        [
            (
                "datacontenttype".to_string(),
                "application/json".to_string()
            ),
            (
                "dataschema".to_string(),
                "https://example.com/schemas/invoice.json".to_string()
            ),
            ("tenant".to_string(), "acme".to_string()),
        ]
    );

    // What this app publishes, as nats-py reads it: CloudEvents binary mode, eda's JSON.
    let id = app
        .publish(&InvoiceIssued {
            number: 43,
            customer: "grace".into(),
        })
        .await
        .unwrap();
    let read = python(&[&url, "read", "EDA_EVENTS", "2"]);
    assert_eq!(
        read["payload"],
        serde_json::json!({"number": 43, "customer": "grace"})
    );
    let headers = read["headers"].as_object().unwrap().clone();
    let time = headers
        .get("ce-time")
        .and_then(|t| t.as_str())
        .map(|t| humantime::parse_rfc3339(t).is_ok());
    assert_eq!(time, Some(true), "ce-time is RFC 3339: {headers:?}");
    let mut without_time = headers.clone();
    without_time.remove("ce-time");
    assert_eq!(
        serde_json::Value::Object(without_time),
        serde_json::json!({
            "Nats-Msg-Id": id,
            "ce-specversion": "1.0",
            "ce-id": id,
            "ce-type": "invoice.issued",
            "ce-source": "interop",
            "ce-datacontenttype": "application/json",
        })
    );
    app.settle().await;
    assert_eq!(
        issued.0.lock().unwrap().len(),
        2,
        "eda reads its own CloudEvents too"
    );
    assert_eq!(issued.1.lock().unwrap()[1].id, id);
    app.shutdown().await.unwrap();
}
