//! `eda dlq redrive` and `eda dlq purge` against a real nats-server: two services handle
//! `cli.invoice.sent`; billing's handler refuses every invoice while "broken", audit's takes
//! them all. Redriven dead letters reach billing's handler only, each once, also when the
//! command is killed mid-run and started again; purge asks before it deletes.
#![allow(missing_docs, missing_debug_implementations)]

mod support;

use std::collections::HashMap;
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use eda::prelude::*;
use eda::testing::{NatsServer, TestApp};

#[event("cli.invoice.sent")]
pub struct InvoiceSent {
    pub id: u64,
}

/// While set, billing refuses every invoice (a `permanent` dead letter each).
static BROKEN: AtomicBool = AtomicBool::new(true);
/// Invoices billing handled, with how often.
static CHARGED: Mutex<Option<HashMap<u64, u32>>> = Mutex::new(None);
/// Invoices audit handled, with how often.
static NOTED: Mutex<Option<HashMap<u64, u32>>> = Mutex::new(None);

fn count(map: &Mutex<Option<HashMap<u64, u32>>>, id: u64) {
    *map.lock()
        .unwrap()
        .get_or_insert_with(HashMap::new)
        .entry(id)
        .or_default() += 1;
}

fn counts(map: &Mutex<Option<HashMap<u64, u32>>>) -> HashMap<u64, u32> {
    map.lock().unwrap().clone().unwrap_or_default()
}

/// No idempotency records: a message delivered twice runs twice, so the test sees it.
#[handler(service = "billing", idempotent = "off")]
async fn charge(event: InvoiceSent) -> Result<(), HandlerError> {
    if BROKEN.load(Ordering::SeqCst) {
        return Err(HandlerError::permanent(format!(
            "payment provider down for invoice {}",
            event.id
        )));
    }
    count(&CHARGED, event.id);
    Ok(())
}

#[handler(service = "audit", idempotent = "off")]
async fn note(event: InvoiceSent) {
    count(&NOTED, event.id);
}

/// Runs the built `eda` binary against `server`, without any `EDA_*` variable of the caller.
fn eda_command(server: &NatsServer, args: &[&str]) -> Command {
    let mut command = support::eda_command(args);
    command.env("EDA_NATS_URL", server.url());
    command
}

fn eda(server: &NatsServer, args: &[&str]) -> Output {
    eda_command(server, args).output().expect("eda runs")
}

fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// Polls `done` every 100 ms for at most 60 s.
async fn eventually(what: &str, mut done: impl FnMut() -> bool) {
    for _ in 0..600 {
        if done() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("not within 60 s: {what}");
}

async fn billing_dead_letters(app: &TestApp) -> Vec<u64> {
    app.dead_letters()
        .await
        .expect("dead letters")
        .iter()
        .filter(|l| l.handler == "charge")
        .map(|l| l.metadata.sequence.expect("a stream sequence"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redrive_reaches_one_handler_once_even_when_killed_mid_run() {
    let server = NatsServer::start().unwrap_or_else(|e| panic!("{e}"));
    let billing = TestApp::builder("billing")
        .nats(server.url())
        .handlers(&["charge"])
        .start()
        .await
        .expect("billing starts");
    let audit = TestApp::builder("audit")
        .nats(server.url())
        .handlers(&["note"])
        .start()
        .await
        .expect("audit starts");
    const N: u64 = 40;
    for id in 1..=N {
        billing
            .publish(&InvoiceSent { id })
            .await
            .expect("published");
    }
    billing.settle().await;
    audit.settle().await;
    assert_eq!(billing_dead_letters(&billing).await.len(), N as usize);
    assert_eq!(counts(&NOTED).len(), N as usize);

    // Bad input first: nothing is sent.
    let unknown = eda(&server, &["dlq", "redrive", "--handler", "billing/nosuch"]);
    assert_eq!(unknown.status.code(), Some(1), "{}", text(&unknown));
    assert!(
        text(&unknown)
            .contains("handler billing/nosuch has no redrive consumer `billing__nosuch__redrive`"),
        "{}",
        text(&unknown)
    );
    let bad_rate = eda(
        &server,
        &[
            "dlq",
            "redrive",
            "--handler",
            "billing/charge",
            "--rate",
            "fast",
        ],
    );
    assert_eq!(bad_rate.status.code(), Some(2), "{}", text(&bad_rate));
    assert!(text(&bad_rate).contains("e.g. 10/s"), "{}", text(&bad_rate));
    let dry = eda(
        &server,
        &[
            "dlq",
            "redrive",
            "--handler",
            "billing/charge",
            "--dry-run",
            "--limit",
            "3",
        ],
    );
    assert!(dry.status.success(), "{}", text(&dry));
    assert!(
        text(&dry).contains("dry run: 3 dead letter(s) of billing/charge would go back to it"),
        "{}",
        text(&dry)
    );
    assert_eq!(billing_dead_letters(&billing).await.len(), N as usize);

    // Still broken: five redriven letters fail again and come back as new dead letters (not
    // taken for the first ones by the duplicate window).
    let before = billing_dead_letters(&billing).await;
    let again = eda(
        &server,
        &[
            "dlq",
            "redrive",
            "--handler",
            "billing/charge",
            "--limit",
            "5",
        ],
    );
    assert!(again.status.success(), "{}", text(&again));
    assert!(
        text(&again).contains("redriven 5 dead letter(s) of billing/charge"),
        "{}",
        text(&again)
    );
    let mut after = Vec::new();
    for _ in 0..600 {
        after = billing_dead_letters(&billing).await;
        if after.len() == N as usize && after != before {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(after.len(), N as usize, "every event dead-lettered once");
    let mut ids = after.clone();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), N as usize, "each event once: {after:?}");
    assert_eq!(billing.stats("charge").dead_lettered, N + 5);

    // Fixed. A run that died between sending a dead letter back and deleting it: the
    // newest one is sent as the command sends it (its redrive id), and stays.
    BROKEN.store(false, Ordering::SeqCst);
    let js = async_nats::jetstream::new(async_nats::connect(server.url()).await.expect("connects"));
    let dlq = js.get_stream("EDA_DLQ").await.expect("the DLQ stream");
    let last = dlq
        .get_last_raw_message_by_subject("dlq.billing.charge")
        .await
        .expect("a dead letter");
    let mut headers = async_nats::HeaderMap::new();
    for (name, values) in last.headers.iter() {
        if AsRef::<str>::as_ref(name) != "Nats-Msg-Id" {
            headers.insert(name.clone(), values[0].clone());
        }
    }
    headers.insert(
        "Nats-Msg-Id",
        format!("redrive.EDA_DLQ.{}", last.sequence).as_str(),
    );
    js.publish_with_headers("redrive.billing.charge", headers, last.payload.clone())
        .await
        .expect("sent")
        .await
        .expect("stored");
    eventually("the half-redriven invoice is handled", || {
        counts(&CHARGED).len() == 1
    })
    .await;

    // A slow redrive killed after it sent some, then run again to the end.
    let mut slow = eda_command(
        &server,
        &[
            "dlq",
            "redrive",
            "--handler",
            "billing/charge",
            "--rate",
            "5/s",
        ],
    )
    .stdout(Stdio::null())
    .stderr(Stdio::null())
    .spawn()
    .expect("eda starts");
    eventually("the first redriven invoices are handled", || {
        counts(&CHARGED).len() >= 8
    })
    .await;
    slow.kill().expect("killed");
    slow.wait().expect("reaped");
    let cut_at = counts(&CHARGED).len();
    assert!(cut_at < N as usize, "killed mid-run ({cut_at} handled)");
    let rest = eda(&server, &["dlq", "redrive", "--handler", "billing/charge"]);
    assert!(rest.status.success(), "{}", text(&rest));
    assert!(
        text(&rest).contains("of them sent by an earlier run"),
        "the half-redriven one is not sent twice: {}",
        text(&rest)
    );
    eventually("every invoice charged", || {
        counts(&CHARGED).len() == N as usize
    })
    .await;
    billing.settle().await;
    audit.settle().await;
    // Time for a duplicate to show up, were there one (the redrive consumer is idle by now).
    tokio::time::sleep(Duration::from_secs(2)).await;
    let charged = counts(&CHARGED);
    assert_eq!(charged.len(), N as usize);
    assert!(
        charged.values().all(|&n| n == 1),
        "each invoice charged once: {charged:?}"
    );
    let noted = counts(&NOTED);
    assert!(
        noted.len() == N as usize && noted.values().all(|&n| n == 1),
        "audit never saw a redriven message: {noted:?}"
    );
    assert!(billing_dead_letters(&billing).await.is_empty());
    let nothing = eda(&server, &["dlq", "redrive", "--handler", "billing/charge"]);
    assert!(
        text(&nothing).contains("no dead letters of billing/charge"),
        "{}",
        text(&nothing)
    );
    billing.shutdown().await.expect("stops");
    audit.shutdown().await.expect("stops");
}

#[event("cli.refund.asked")]
pub struct RefundAsked {
    pub id: u64,
}

#[handler(service = "refunds")]
async fn refuse_refund(event: RefundAsked) -> Result<(), HandlerError> {
    Err(HandlerError::permanent(format!(
        "no refund for {}",
        event.id
    )))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn purge_asks_first_and_deletes_only_what_it_names() {
    let server = NatsServer::start().unwrap_or_else(|e| panic!("{e}"));
    let app = TestApp::builder("refunds")
        .nats(server.url())
        .handlers(&["refuse_refund"])
        .start()
        .await
        .expect("starts");
    for id in 1..=3 {
        app.publish(&RefundAsked { id }).await.expect("published");
    }
    app.settle().await;
    assert_eq!(app.dead_letters().await.expect("dead letters").len(), 3);
    let handler = ["--handler", "refunds/refuse_refund"];

    let unasked = eda(&server, &[&["dlq", "purge"][..], &handler].concat());
    assert_eq!(unasked.status.code(), Some(1), "{}", text(&unasked));
    assert!(
        text(&unasked).contains("not asking without a terminal: pass --yes to confirm"),
        "{}",
        text(&unasked)
    );
    let young = eda(
        &server,
        &[
            &["dlq", "purge", "--yes", "--older-than", "1h"][..],
            &handler,
        ]
        .concat(),
    );
    assert!(young.status.success(), "{}", text(&young));
    assert!(
        text(&young).contains("no dead letter(s) of refunds/refuse_refund older than 1h"),
        "{}",
        text(&young)
    );
    assert_eq!(app.dead_letters().await.expect("dead letters").len(), 3);
    let all = eda(
        &server,
        &[&["dlq", "purge", "--yes"][..], &handler].concat(),
    );
    assert!(all.status.success(), "{}", text(&all));
    assert!(
        text(&all).contains("deleted 3 dead letter(s) of refunds/refuse_refund"),
        "{}",
        text(&all)
    );
    assert!(app.dead_letters().await.expect("dead letters").is_empty());
    app.shutdown().await.expect("stops");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redrive_stream_deleted_under_a_running_service_comes_back() {
    let server = NatsServer::start().unwrap_or_else(|e| panic!("{e}"));
    let app = TestApp::builder("refunds")
        .nats(server.url())
        .handlers(&["refuse_refund"])
        .start()
        .await
        .expect("starts");
    for id in 1..=3 {
        app.publish(&RefundAsked { id }).await.expect("published");
    }
    app.settle().await;
    assert_eq!(app.dead_letters().await.expect("dead letters").len(), 3);
    let js = async_nats::jetstream::new(async_nats::connect(server.url()).await.expect("connects"));
    js.delete_stream("EDA_REDRIVE").await.expect("deleted");
    // The service notices (its pull requests end) and provisions the stream and its consumer
    // again.
    let mut back = false;
    for _ in 0..600 {
        if let Ok(stream) = js.get_stream("EDA_REDRIVE").await {
            if stream
                .consumer_info("refunds__refuse_refund__redrive")
                .await
                .is_ok()
            {
                back = true;
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        back,
        "the redrive stream and consumer were not provisioned again"
    );
    let sent = eda(
        &server,
        &["dlq", "redrive", "--handler", "refunds/refuse_refund"],
    );
    assert!(sent.status.success(), "{}", text(&sent));
    assert!(
        text(&sent).contains("redriven 3 dead letter(s)"),
        "{}",
        text(&sent)
    );
    eventually("the redriven refunds are refused again", || {
        app.stats("refuse_refund").dead_lettered == 6
    })
    .await;
    app.shutdown().await.expect("stops");
}
