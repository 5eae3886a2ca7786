//! Interop with a non-Rust client (DESIGN.md §7): a Python program using nats-py publishes
//! plain JSON that a Rust handler handles, and reads back an event eda published, headers
//! and all. The interpreter is `EDA_PYTHON` (set by `scripts/test` to its virtualenv, which
//! has nats-py) or `python3`.
#![allow(missing_docs, missing_debug_implementations)]

use std::process::Command;
use std::sync::{Arc, Mutex};

use eda::prelude::*;
use eda::testing::{NatsServer, TestApp};

#[event("invoice.issued")]
pub struct InvoiceIssued {
    pub number: u64,
    pub customer: String,
}

#[derive(Default)]
pub struct Issued(Mutex<Vec<(u64, String, u32)>>);

#[handler(service = "interop")]
async fn file_invoice(event: Envelope<InvoiceIssued>, issued: State<Issued>) {
    let version = event.metadata.version;
    issued
        .0
        .lock()
        .unwrap()
        .push((event.number, event.customer.clone(), version));
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
    assert_eq!(headers["Nats-Msg-Id"], id.as_str());
    assert_eq!(headers["Eda-Event"], "invoice.issued");
    assert_eq!(headers["Eda-Version"], "1");
    assert_eq!(headers["Eda-Source"], "interop");
    assert_eq!(headers["Eda-Correlation-Id"], id.as_str());
    assert_eq!(headers["Eda-Schema"], InvoiceIssued::fingerprint().as_str());
    assert!(
        headers["Eda-Time"]
            .as_str()
            .is_some_and(|t| t.ends_with('Z')),
        "{headers}"
    );
    app.shutdown().await.unwrap();
}
