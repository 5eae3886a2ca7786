//! SIGTERM during load (FAULTS.md #15), through `App::run` as a service runs it: the signal
//! stops fetching, in-flight handlers finish, and what was left is handled after a restart.
//! Alone in its own test binary, because the signal goes to the whole process.
#![allow(missing_docs, missing_debug_implementations)]

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use eda::prelude::*;
use eda::testing::NatsServer;

#[event("label.printed")]
pub struct LabelPrinted {
    pub id: u64,
}

#[derive(Default)]
pub struct Printer {
    started: AtomicU64,
    finished: AtomicU64,
    done: Mutex<HashSet<u64>>,
}

#[handler(service = "printer", concurrency = 4)]
async fn print_label(event: LabelPrinted, printer: State<Printer>) {
    printer.started.fetch_add(1, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(300)).await;
    printer.done.lock().unwrap().insert(event.id);
    printer.finished.fetch_add(1, Ordering::SeqCst);
}

fn printer_app(url: &str, printer: &Arc<Printer>) -> eda::AppBuilder {
    App::builder("printer")
        .nats(url)
        .without_env()
        .ack_wait(Duration::from_secs(2))
        .shared_state(Arc::clone(printer))
        .handlers(&["print_label"])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_15_sigterm_during_load_finishes_in_flight_handlers_and_loses_nothing() {
    const EVENTS: u64 = 40;
    let server = NatsServer::start().unwrap_or_else(|e| panic!("{e}"));
    let printer = Arc::new(Printer::default());
    // Provision the consumer first, so every event below is for it.
    printer_app(&server.url(), &printer)
        .start()
        .await
        .unwrap()
        .shutdown()
        .await
        .unwrap();
    let producer = App::builder("orders")
        .nats(server.url())
        .without_env()
        .handlers(&[])
        .start()
        .await
        .unwrap();
    let events: Vec<LabelPrinted> = (0..EVENTS).map(|id| LabelPrinted { id }).collect();
    producer.publisher().publish_all(&events).await.unwrap();

    let service = tokio::spawn(printer_app(&server.url(), &printer).run());
    while printer.started.load(Ordering::SeqCst) == 0 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let status = std::process::Command::new("kill")
        .args(["-TERM", &std::process::id().to_string()])
        .status()
        .expect("`kill` runs");
    assert!(status.success());
    service
        .await
        .unwrap()
        .expect("run() returns Ok after SIGTERM");
    let (started, finished) = (
        printer.started.load(Ordering::SeqCst),
        printer.finished.load(Ordering::SeqCst),
    );
    assert_eq!(
        started, finished,
        "every handler that started before the signal finished"
    );
    assert!(
        finished < EVENTS,
        "the signal stopped the run early ({finished} of {EVENTS} done)"
    );

    let restarted = printer_app(&server.url(), &printer).start().await.unwrap();
    restarted.settle().await;
    let done = printer.done.lock().unwrap().clone();
    assert_eq!(
        done,
        (0..EVENTS).collect::<HashSet<_>>(),
        "after a restart every event is handled"
    );
    restarted.shutdown().await.unwrap();
    producer.shutdown().await.unwrap();
}
