//! FAULTS #14: the app's own process killed (`kill -9`) with messages in flight, then started
//! again; and the same for the event store's forwarder: an app killed between appends and
//! their forwarding. The test binary is its own worker: run with `EDA_FAULT_WORKER_URL` set it is an eda
//! service writing one line per side effect to a ledger file; without it, it is the test,
//! which starts a server, a worker, kills the worker mid-load and starts another.
//!
//! What eda promises here, and what the test checks: nothing acked by the broker is lost
//! (every id's side effect ran), nothing was invented, and the only side effects that ran
//! twice are those of handlers killed after their side effect and before its processed-id
//! record (at most `concurrency` of them): an event whose record was stored but whose ack died
//! with the process is recognised on redelivery and not run again. A side effect that must
//! not repeat even then belongs in the same transaction as its own dedup (see the README).
#![allow(missing_docs, missing_debug_implementations)]

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use async_nats::jetstream;

use eda::prelude::*;
use eda::testing::{NatsServer, TestApp};

const EVENTS: u32 = 2000;
const CONCURRENCY: u32 = 8;

#[event("order.shipped")]
pub struct OrderShipped {
    pub id: u32,
}

/// Where the worker writes its side effects.
pub struct LedgerFile(PathBuf);

#[handler(service = "faults-worker", concurrency = 8)]
async fn ship_order(event: OrderShipped, ledger: State<LedgerFile>) -> Result<(), HandlerError> {
    tokio::time::sleep(Duration::from_millis(5)).await;
    // One append per side effect: a killed process's writes are in the page cache already.
    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(&ledger.0)
        .map_err(HandlerError::retry)?;
    file.write_all(format!("{}\n", event.id).as_bytes())
        .map_err(HandlerError::retry)?;
    Ok(())
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    if let Ok(url) = std::env::var("EDA_FAULT_WORKER_URL") {
        return runtime.block_on(worker(url));
    }
    if let Ok(url) = std::env::var("EDA_APPEND_WORKER_URL") {
        return runtime.block_on(appender(url));
    }
    runtime.block_on(fault_14_the_app_process_killed_with_messages_in_flight_loses_nothing());
    println!("test fault_14_the_app_process_killed_with_messages_in_flight_loses_nothing ... ok");
    runtime.block_on(an_app_killed_between_append_and_forward_forwards_every_append_once());
    println!("test an_app_killed_between_append_and_forward_forwards_every_append_once ... ok");
}

/// The worker: the service until it is killed, or stopped with SIGTERM.
async fn worker(url: String) {
    let ledger = PathBuf::from(std::env::var("EDA_FAULT_LEDGER").unwrap());
    App::builder("faults-worker")
        .without_env()
        .nats(url)
        .ack_wait(Duration::from_secs(1))
        .handlers(&["ship_order"])
        .state(LedgerFile(ledger))
        .run()
        .await
        .unwrap_or_else(|e| panic!("the worker: {e}"));
}

// ---- the forwarder (event sourcing): an app killed between append and forward -----------------

#[event("book.opened")]
pub struct BookOpened {
    pub n: u32,
}

#[event("book.credited")]
pub struct BookCredited {
    pub n: u32,
}

#[derive(eda::AggregateEvents)]
pub enum BookEvent {
    Opened(BookOpened),
    Credited(BookCredited),
}

#[derive(Default, serde::Serialize, serde::Deserialize)]
pub struct Book;

impl eda::Aggregate for Book {
    const TYPE: &'static str = "book";
    type Event = BookEvent;
    fn apply(&mut self, _: &BookEvent) {}
}

const BOOKS: u32 = 3000;

/// The appender: opens books (an append of two events each) and forwards them, writing each
/// book whose append returned `Ok` to the ledger, until it is killed.
async fn appender(url: String) {
    let ledger = PathBuf::from(std::env::var("EDA_FAULT_LEDGER").unwrap());
    let app = App::builder("faults-books")
        .without_env()
        .nats(url)
        .ack_wait(Duration::from_secs(1))
        .handlers(&[])
        .aggregate::<Book>()
        .start()
        .await
        .unwrap_or_else(|e| panic!("the appender: {e}"));
    let store = app.event_store();
    for n in 0..BOOKS {
        let events = [
            BookEvent::Opened(BookOpened { n }),
            BookEvent::Credited(BookCredited { n }),
        ];
        store
            .append::<Book>(&format!("b{n}"), 0, &events)
            .await
            .unwrap_or_else(|e| panic!("append {n}: {e}"));
        let mut file = std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .open(&ledger)
            .unwrap();
        file.write_all(format!("{n}\n").as_bytes()).unwrap();
    }
    std::future::pending::<()>().await;
}

/// A stored message: (subject, `Nats-Msg-Id`, `Eda-Batch`).
type Stored = (String, String, Option<String>);

/// Every message of `stream`.
async fn stream_messages(js: &jetstream::Context, stream: &str) -> Vec<Stored> {
    let stream = js.get_stream(stream).await.unwrap();
    let last = stream.get_info().await.unwrap().state.last_sequence;
    let mut out = Vec::new();
    for sequence in 1..=last {
        let Ok(message) = stream.get_raw_message(sequence).await else {
            continue;
        };
        let header = |name: &str| message.headers.get(name).map(|v| v.as_str().to_owned());
        out.push((
            message.subject.to_string(),
            header("Nats-Msg-Id").unwrap_or_default(),
            header("Eda-Batch"),
        ));
    }
    out
}

async fn stream_count(js: &jetstream::Context, stream: &str) -> u64 {
    match js.get_stream(stream).await {
        Ok(mut s) => s.info().await.map(|i| i.state.messages).unwrap_or(0),
        Err(_) => 0,
    }
}

async fn an_app_killed_between_append_and_forward_forwards_every_append_once() {
    let server = NatsServer::start().unwrap_or_else(|e| panic!("{e}"));
    let dir = std::env::temp_dir().join(format!("eda-forward-kill-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let ledger = dir.join("ledger");
    let mut appender = Command::new(std::env::current_exe().unwrap())
        .env("EDA_APPEND_WORKER_URL", server.url())
        .env("EDA_FAULT_LEDGER", &ledger)
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let js = jetstream::new(async_nats::connect(server.url()).await.unwrap());
    // Killed once a few hundred appends returned Ok while the forwarder lags behind them.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    let (confirmed, forwarded) = loop {
        let confirmed = ledger_counts(&ledger).len() as u64;
        let forwarded = stream_count(&js, "EDA_EVENTS").await;
        if confirmed >= 300 && forwarded < 2 * confirmed {
            break (confirmed, forwarded);
        }
        assert!(
            tokio::time::Instant::now() < deadline && confirmed < u64::from(BOOKS),
            "the appender got ahead of its forwarder ({confirmed} appends, {forwarded} forwarded)"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    appender.kill().unwrap(); // SIGKILL
    appender.wait().unwrap();

    // Another instance's forwarder takes over where the killed one stopped.
    let forwarding = TestApp::builder("faults-books")
        .nats(server.url())
        .handlers(&[])
        .configure(|b| b.aggregate::<Book>())
        .start()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let stored = stream_messages(&js, "EDA_AGG_BOOK").await;
    let mut per_book: HashMap<&str, Vec<&Stored>> = HashMap::new();
    for message in &stored {
        per_book
            .entry(message.0.as_str())
            .or_default()
            .push(message);
    }
    // An append cut by the kill (its first event stored, not its second) never counts.
    let mut expected: Vec<String> = per_book
        .values()
        .filter(|m| m.len() == 2)
        .flat_map(|m| m.iter().map(|(_, id, _)| id.clone()))
        .collect();
    expected.sort();
    let cut = per_book.values().filter(|m| m.len() == 1).count();
    assert!(cut <= 1, "at most the append in progress was cut: {cut}");
    for n in ledger_counts(&ledger).keys() {
        assert_eq!(
            per_book
                .get(format!("agg.book.b{n}").as_str())
                .map(Vec::len),
            Some(2),
            "an append that returned Ok is stored whole: b{n}"
        );
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    while stream_count(&js, "EDA_EVENTS").await < expected.len() as u64 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "every complete append forwarded"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await; // and nothing more comes
    let mut published: Vec<String> = stream_messages(&js, "EDA_EVENTS")
        .await
        .into_iter()
        .map(|(_, id, _)| id)
        .collect();
    published.sort();
    assert_eq!(
        published, expected,
        "each event of each complete append forwarded once, with its id"
    );
    eprintln!(
        "forwarder: killed with {confirmed} appends confirmed and {forwarded} events forwarded; {} events forwarded in all, {cut} append cut",
        published.len()
    );
    forwarding.shutdown().await.unwrap();
    let _ = std::fs::remove_dir_all(dir);
}

fn spawn_worker(url: &str, ledger: &Path) -> Child {
    Command::new(std::env::current_exe().unwrap())
        .env("EDA_FAULT_WORKER_URL", url)
        .env("EDA_FAULT_LEDGER", ledger)
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap()
}

/// Side effects per id, as the ledger file holds them.
fn ledger_counts(path: &Path) -> HashMap<u32, u32> {
    let mut counts = HashMap::new();
    for line in std::fs::read_to_string(path).unwrap_or_default().lines() {
        *counts.entry(line.parse().unwrap()).or_default() += 1;
    }
    counts
}

async fn eventually(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    while !done() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "not within two minutes: {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn fault_14_the_app_process_killed_with_messages_in_flight_loses_nothing() {
    let server = NatsServer::start().unwrap_or_else(|e| panic!("{e}"));
    let dir = std::env::temp_dir().join(format!("eda-fault-14-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let ledger = dir.join("ledger");
    // The producer provisions and publishes; the worker's consumer starts with what is there.
    let producer = TestApp::builder("faults-producer")
        .nats(server.url())
        .handlers(&[])
        .start()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let mut first = spawn_worker(&server.url(), &ledger);
    let js = jetstream::new(async_nats::connect(server.url()).await.unwrap());
    let durable = "faults-worker__ship_order";
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    while js
        .get_stream("EDA_EVENTS")
        .await
        .unwrap()
        .consumer_info(durable)
        .await
        .is_err()
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the worker's consumer appeared"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let events: Vec<OrderShipped> = (0..EVENTS).map(|id| OrderShipped { id }).collect();
    let acked = producer.publisher().publish_all(&events).await.unwrap();
    assert_eq!(acked.len() as u32, EVENTS);

    eventually("a third handled", || {
        ledger_counts(&ledger).len() as u32 >= EVENTS / 3
    })
    .await;
    first.kill().unwrap(); // SIGKILL
    first.wait().unwrap();
    let at_kill = ledger_counts(&ledger).len() as u32;
    let stream = js.get_stream("EDA_EVENTS").await.unwrap();
    let info = stream.consumer_info(durable).await.unwrap();
    assert!(at_kill < EVENTS, "killed mid-load");
    assert!(
        info.num_ack_pending > 0,
        "messages were in flight (delivered, unacked) when the process died: {info:?}"
    );

    let mut second = spawn_worker(&server.url(), &ledger);
    eventually("every id handled after the restart", || {
        ledger_counts(&ledger).len() as u32 == EVENTS
    })
    .await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    loop {
        let info = stream.consumer_info(durable).await.unwrap();
        if (info.num_pending, info.num_ack_pending) == (0, 0) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "all acked: {info:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // A graceful stop of the second worker (App::run drains on SIGTERM).
    let status = Command::new("kill")
        .args(["-TERM", &second.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    assert!(
        second.wait().unwrap().success(),
        "the worker stops cleanly on SIGTERM"
    );

    let counts = ledger_counts(&ledger);
    assert!(counts.keys().all(|id| *id < EVENTS), "no phantoms");
    let repeated: Vec<_> = counts.iter().filter(|(_, c)| **c > 1).collect();
    assert!(
        repeated.len() as u32 <= CONCURRENCY && repeated.iter().all(|(_, c)| **c == 2),
        "only handlers cut between side effect and record ran again, once: {repeated:?}"
    );
    let processed = js
        .get_stream("KV_EDA_PROCESSED")
        .await
        .unwrap()
        .info()
        .await
        .unwrap()
        .state
        .messages;
    assert_eq!(processed, u64::from(EVENTS), "every id recorded once");
    assert!(producer.dead_letters().await.unwrap().is_empty());
    eprintln!(
        "fault_14: killed with {} ids done and {} messages unacked; {} side effects ran twice",
        at_kill,
        info.num_ack_pending,
        repeated.len()
    );
    producer.shutdown().await.unwrap();
    let _ = std::fs::remove_dir_all(dir);
}
