//! FAULTS #14: the app's own process killed (`kill -9`) with messages in flight, then started
//! again. The test binary is its own worker: run with `EDA_FAULT_WORKER_URL` set it is an eda
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
    match std::env::var("EDA_FAULT_WORKER_URL") {
        Ok(url) => runtime.block_on(worker(url)),
        Err(_) => {
            runtime
                .block_on(fault_14_the_app_process_killed_with_messages_in_flight_loses_nothing());
            println!(
                "test fault_14_the_app_process_killed_with_messages_in_flight_loses_nothing ... ok"
            );
        }
    }
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
