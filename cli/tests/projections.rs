//! `eda projections rebuild` against a real nats-server: a service (this test process) runs a
//! projection; the command asks it to rebuild, and the service resets its read model and
//! applies every append again. Unknown projections and services are clear errors.
#![allow(missing_docs, missing_debug_implementations)]

mod support;

use std::process::Output;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use eda::prelude::*;
use eda::testing::{NatsServer, TestApp};
use eda::{Aggregate, AggregateEvents, BoxError, Projected, Projection};

#[event("cli.tally.added")]
pub struct Added {
    pub n: u64,
}

#[derive(AggregateEvents)]
pub enum TallyEvent {
    Added(Added),
}

#[derive(Default, serde::Serialize, serde::Deserialize)]
pub struct Tally;

impl Aggregate for Tally {
    const TYPE: &'static str = "tally";
    type Event = TallyEvent;
    fn apply(&mut self, _: &TallyEvent) {}
}

/// The sum of every tally, and its position.
#[derive(Default)]
struct Sum {
    model: Mutex<(u64, u64)>,
    resets: AtomicU32,
}

impl Projection for Sum {
    const NAME: &'static str = "sum";
    type Aggregate = Tally;

    async fn position(&self) -> Result<u64, BoxError> {
        Ok(self.model.lock().unwrap().1)
    }

    async fn apply(&self, append: Projected<TallyEvent>) -> Result<(), BoxError> {
        let mut model = self.model.lock().unwrap();
        if append.position > model.1 {
            for TallyEvent::Added(a) in &append.events {
                model.0 += a.n;
            }
            model.1 = append.position;
        }
        Ok(())
    }

    async fn reset(&self) -> Result<(), BoxError> {
        self.resets.fetch_add(1, Ordering::SeqCst);
        *self.model.lock().unwrap() = (0, 0);
        Ok(())
    }
}

async fn eda(args: Vec<String>) -> Output {
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        support::eda_command(&args).output().expect("eda runs")
    })
    .await
    .expect("eda finished")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_service_rebuilds_its_projection_when_asked() {
    let server = NatsServer::start().unwrap_or_else(|e| panic!("{e}"));
    let sum = Arc::new(Sum::default());
    let app = TestApp::builder("cli-reports")
        .nats(server.url())
        .handlers(&[])
        .configure(|b| b.projection(Arc::clone(&sum)))
        .start()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let store = app.app().event_store();
    let mut last = 0;
    for (i, n) in [3u64, 4, 5].into_iter().enumerate() {
        last = store
            .append::<Tally>(&format!("t{i}"), 0, &[TallyEvent::Added(Added { n })])
            .await
            .expect("appended");
    }
    for _ in 0..1200 {
        if sum.model.lock().unwrap().1 == last {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(*sum.model.lock().unwrap(), (12, last));

    let url = server.url();
    let run = |args: &[&str]| {
        let mut all: Vec<String> = vec!["projections".into(), "rebuild".into()];
        all.extend(args.iter().map(|a| a.to_string()));
        all.extend(["--nats".to_owned(), url.clone()]);
        eda(all)
    };
    let out = run(&["sum", "--service", "cli-reports"]).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(
        text(&out.stdout).trim(),
        format!("projection `sum` of service `cli-reports` rebuilt: 3 appends applied from the first, position {last}")
    );
    assert_eq!(sum.resets.load(Ordering::SeqCst), 1);
    assert_eq!(
        *sum.model.lock().unwrap(),
        (12, last),
        "the same model again"
    );

    let out = run(&["total", "--service", "cli-reports"]).await;
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains(
            "service `cli-reports` could not rebuild projection `total`: this app has no projection `total` (it has sum)"
        ),
        "{}",
        text(&out.stderr)
    );

    let out = run(&["sum", "--service", "cli-nobody"]).await;
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains(
            "no running instance of service `cli-nobody` answers on `eda.control.cli-nobody.rebuild`"
        ),
        "{}",
        text(&out.stderr)
    );
    assert_eq!(
        sum.resets.load(Ordering::SeqCst),
        1,
        "nothing else was reset"
    );
    app.shutdown().await.expect("shutdown");
}
