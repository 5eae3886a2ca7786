//! Projections (issue 14): read models fed every append of an aggregate type in order, from
//! the position they keep, rebuilt on request. In memory and on a real `nats-server`; the
//! PostgreSQL read model of `examples/bank` against a PostgreSQL server of the test's own.
#![allow(missing_docs, missing_debug_implementations)]

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use eda::{BoxError, EventStore, Projected, Projection};
use futures_util::StreamExt;

#[macro_use]
mod support;
use support::Rig;

#[allow(dead_code)] // the example's withdrawals are not needed here
#[path = "../examples/bank/account.rs"]
mod account;
#[path = "../examples/bank/balances.rs"]
mod balances;

use account::{Account, AccountEvent};

/// An append as the test's read model keeps it: (aggregate id, position, events).
type Applied = (String, u64, usize);

/// A read model that records every append it applied, and its position.
#[derive(Default)]
struct Recorded {
    model: Mutex<(Vec<Applied>, u64)>,
    /// Applies to fail before one succeeds (a database that is down for a while).
    failures: AtomicU32,
    resets: AtomicU32,
}

impl Recorded {
    fn at(position: u64) -> Recorded {
        let recorded = Recorded::default();
        recorded.model.lock().unwrap().1 = position;
        recorded
    }

    fn appends(&self) -> Vec<Applied> {
        self.model.lock().unwrap().0.clone()
    }
}

impl Projection for Recorded {
    const NAME: &'static str = "recorded";
    type Aggregate = Account;

    async fn position(&self) -> Result<u64, BoxError> {
        Ok(self.model.lock().unwrap().1)
    }

    async fn apply(&self, append: Projected<AccountEvent>) -> Result<(), BoxError> {
        if self
            .failures
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
        {
            return Err("the read model's database is down".into());
        }
        let mut model = self.model.lock().unwrap();
        if append.position <= model.1 {
            return Ok(());
        }
        model
            .0
            .push((append.aggregate_id, append.position, append.events.len()));
        model.1 = append.position;
        Ok(())
    }

    async fn reset(&self) -> Result<(), BoxError> {
        self.resets.fetch_add(1, Ordering::SeqCst);
        *self.model.lock().unwrap() = Default::default();
        Ok(())
    }
}

async fn start(rig: &Rig, projection: Arc<Recorded>) -> (eda::testing::TestApp, EventStore) {
    let app = rig
        .app("reports")
        .handlers(&[])
        .configure(|b| b.projection(projection))
        .start()
        .await
        .expect("the app starts");
    let store = app.app().event_store();
    (app, store)
}

/// Polls `done` (bounded: a minute of the test's clock) until it holds.
async fn eventually(what: &str, mut done: impl FnMut() -> bool) {
    for _ in 0..1200 {
        if done() {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    panic!("not within a minute: {what}");
}

async fn open(store: &EventStore, id: &str) -> u64 {
    store
        .execute::<Account, _>(id, |a| account::open(a, "ada", 10))
        .await
        .expect("opened")
        .1
}

async fn deposit(store: &EventStore, id: &str, cents: u64) -> u64 {
    store
        .execute::<Account, _>(id, |a| account::deposit(a, cents))
        .await
        .expect("deposited")
        .1
}

fn position_of(projection: &Recorded) -> u64 {
    projection.model.lock().unwrap().1
}

async fn every_append_is_applied_once_in_order_and_a_rebuild_gives_the_same_model(rig: Rig) {
    let projection = Arc::new(Recorded::default());
    let (app, store) = start(&rig, Arc::clone(&projection)).await;
    let mut last = 0;
    for id in ["a-1", "a-2", "a-3"] {
        last = open(&store, id).await;
    }
    for round in 0..5 {
        for id in ["a-1", "a-2", "a-3"] {
            last = deposit(&store, id, round + 1).await;
        }
    }
    eventually("the projection applied every append", || {
        position_of(&projection) == last
    })
    .await;
    let live = projection.appends();
    assert_eq!(live.len(), 3 + 15, "one call per append: {live:?}");
    assert!(
        live.windows(2).all(|w| w[0].1 < w[1].1),
        "in stream order: {live:?}"
    );
    assert_eq!(
        live.iter().filter(|a| a.2 == 2).count(),
        3,
        "each opening (two events) in one call: {live:?}"
    );
    assert!(live.iter().all(|a| a.0.starts_with("a-")), "{live:?}");

    let rebuilt = app
        .app()
        .rebuild_projection("recorded")
        .await
        .expect("rebuilt");
    assert_eq!((rebuilt.appends, rebuilt.position), (18, last));
    assert_eq!(projection.resets.load(Ordering::SeqCst), 1);
    assert_eq!(
        projection.appends(),
        live,
        "the rebuilt model equals the live one"
    );

    // It keeps running after a rebuild.
    let after = deposit(&store, "a-2", 7).await;
    eventually("the append after the rebuild is applied", || {
        position_of(&projection) == after
    })
    .await;
    assert_eq!(projection.appends().len(), 19);
    app.shutdown().await.expect("shutdown");
}

async fn a_restarted_projection_goes_on_after_its_position(rig: Rig) {
    let projection = Arc::new(Recorded::default());
    let (app, store) = start(&rig, Arc::clone(&projection)).await;
    let first = open(&store, "b-1").await;
    eventually("the first append applied", || {
        position_of(&projection) == first
    })
    .await;
    app.shutdown().await.expect("shutdown");

    // Appended while no projection runs (another service's store, say).
    let (writer, store) = start(&rig, Arc::new(Recorded::at(u64::MAX))).await;
    let mut last = 0;
    for cents in 1..=4 {
        last = deposit(&store, "b-1", cents).await;
    }
    writer.shutdown().await.expect("shutdown");

    let (app, _) = start(&rig, Arc::clone(&projection)).await;
    eventually("the appends made while stopped are applied", || {
        position_of(&projection) == last
    })
    .await;
    let appends = projection.appends();
    let positions: Vec<u64> = appends.iter().map(|a| a.1).collect();
    let mut unique = positions.clone();
    unique.dedup();
    assert_eq!(positions, unique, "none applied twice: {appends:?}");
    assert_eq!(appends.len(), 5, "{appends:?}");
    app.shutdown().await.expect("shutdown");
}

async fn an_append_begun_before_the_position_is_read_back_whole(rig: Rig) {
    // A projection that stopped after applying an append that another writer stored in the
    // middle of c-2's opening (two events): it resumes at the opening's second event.
    let parked = Arc::new(Recorded::at(u64::MAX));
    let (writer, store) = start(&rig, parked).await;
    let a = open(&store, "c-1").await; // events at a-1 and a
    let b = open(&store, "c-2").await; // events at b-1 and b
    writer.shutdown().await.expect("shutdown");

    let projection = Arc::new(Recorded::at(b - 1));
    let (app, _) = start(&rig, Arc::clone(&projection)).await;
    eventually("the opening is applied", || position_of(&projection) == b).await;
    assert_eq!(
        projection.appends(),
        [("c-2".to_owned(), b, 2)],
        "the whole append, once (c-1's, at {a}, is before the position)"
    );
    app.shutdown().await.expect("shutdown");
}

async fn a_failing_read_model_is_retried_never_skipped(rig: Rig) {
    let projection = Arc::new(Recorded::default());
    projection.failures.store(3, Ordering::SeqCst);
    let (app, store) = start(&rig, Arc::clone(&projection)).await;
    open(&store, "d-1").await;
    let last = deposit(&store, "d-1", 5).await;
    eventually("applied once the read model works again", || {
        position_of(&projection) == last
    })
    .await;
    assert_eq!(projection.failures.load(Ordering::SeqCst), 0);
    assert_eq!(projection.appends().len(), 2, "{:?}", projection.appends());
    app.shutdown().await.expect("shutdown");
}

async fn one_instance_runs_a_projection_and_another_takes_over_when_it_stops(rig: Rig) {
    let (first, second) = (Arc::new(Recorded::default()), Arc::new(Recorded::default()));
    let (one, store) = start(&rig, Arc::clone(&first)).await;
    let (two, _) = start(&rig, Arc::clone(&second)).await;
    let opened = open(&store, "e-1").await;
    eventually("one instance applied the append", || {
        position_of(&first) == opened || position_of(&second) == opened
    })
    .await;
    // The one that runs it, and the one standing by (its model never moves).
    let (runs, stands_by, runs_model, standby_model) = if position_of(&first) == opened {
        (&one, &two, &first, &second)
    } else {
        (&two, &one, &second, &first)
    };
    let refused = stands_by
        .app()
        .rebuild_projection("recorded")
        .await
        .expect_err("the standby does not rebuild");
    assert!(
        refused
            .to_string()
            .contains("runs in another instance of this service now"),
        "{refused}"
    );
    runs.app()
        .rebuild_projection("recorded")
        .await
        .expect("the running one rebuilds");
    assert_eq!(position_of(standby_model), 0, "the standby applied nothing");
    assert_eq!(runs_model.appends().len(), 1);

    let (runs_model, standby_model) = (Arc::clone(runs_model), Arc::clone(standby_model));
    let (runs, stands_by) = if Arc::ptr_eq(&runs_model, &first) {
        (one, two)
    } else {
        (two, one)
    };
    runs.shutdown().await.expect("shutdown");
    let last = deposit(&store_of(&stands_by), "e-1", 4).await;
    eventually("the standby took the projection over", || {
        position_of(&standby_model) == last
    })
    .await;
    assert_eq!(
        standby_model.appends().len(),
        2,
        "from the first: its model was empty"
    );
    stands_by.shutdown().await.expect("shutdown");
}

fn store_of(app: &eda::testing::TestApp) -> EventStore {
    app.app().event_store()
}

on_both_transports!(
    one_instance_runs_a_projection_and_another_takes_over_when_it_stops,
    every_append_is_applied_once_in_order_and_a_rebuild_gives_the_same_model,
    a_restarted_projection_goes_on_after_its_position,
    an_append_begun_before_the_position_is_read_back_whole,
    a_failing_read_model_is_retried_never_skipped,
);

#[tokio::test]
async fn a_rebuild_of_an_unknown_projection_names_those_there_are() {
    let rig = Rig::memory();
    let (app, _) = start(&rig, Arc::new(Recorded::default())).await;
    let error = app
        .app()
        .rebuild_projection("balance")
        .await
        .expect_err("no such projection");
    assert_eq!(
        error.to_string(),
        "this app has no projection `balance` (it has recorded)"
    );
    app.shutdown().await.expect("shutdown");
}

#[tokio::test]
async fn two_projections_of_one_name_are_a_startup_problem() {
    let error = eda::App::builder("reports")
        .in_memory()
        .handlers(&[])
        .projection(Recorded::default())
        .projection(Arc::new(Recorded::default()))
        .build()
        .expect_err("a name twice");
    assert!(
        error.to_string().contains(
            "projection `recorded` is given twice: give each projection of an app its own `NAME`"
        ),
        "{error}"
    );
}

// ---- the PostgreSQL read model of examples/bank ------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_nats_the_postgres_read_model_equals_the_replayed_accounts_also_after_restarts_and_a_rebuild(
) {
    use balances::PgBalances;
    let postgres = eda::testing::PostgresServer::start().unwrap_or_else(|e| panic!("{e}"));
    let rig = Rig::nats();
    let config = postgres.connection_string();
    let start = |model: Arc<PgBalances>| {
        rig.app("bank")
            .handlers(&[])
            .configure(|b| b.projection(model))
            .start()
    };
    // Two instances of the service, each with its connection, project into one database.
    let (first, second) = (
        Arc::new(PgBalances::connect(&config).await.expect("connects")),
        Arc::new(PgBalances::connect(&config).await.expect("connects")),
    );
    let one = start(Arc::clone(&first)).await.expect("starts");
    let two = start(Arc::clone(&second)).await.expect("starts");
    let store = one.app().event_store();
    let ids: Vec<String> = (0..5).map(|i| format!("acct-{i}")).collect();
    for id in &ids {
        open(&store, id).await;
    }
    let mut writers = tokio::task::JoinSet::new();
    for w in 0..4u64 {
        let (store, ids) = (store.clone(), ids.clone());
        writers.spawn(async move {
            let mut last = 0;
            for i in 0..25u64 {
                let id = &ids[((w + i) % 5) as usize];
                last = last.max(deposit(&store, id, 1 + i % 7).await);
            }
            last
        });
    }
    let mut last = 0;
    while let Some(result) = writers.join_next().await {
        last = last.max(result.expect("writer"));
    }
    let expected = async || {
        let mut balances = std::collections::BTreeMap::new();
        for id in &ids {
            let (account, _) = store.load::<Account>(id).await.expect("loads");
            balances.insert(id.clone(), account.balance as i64);
        }
        balances
    };
    let caught_up = async |model: &PgBalances, last: u64| {
        for _ in 0..1200 {
            if model.position().await.expect("position") >= last {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        panic!("the read model did not reach {last} within a minute");
    };
    caught_up(&first, last).await;
    let want = expected().await;
    assert_eq!(
        first.balances().await.expect("balances"),
        want,
        "two instances applied each append once"
    );

    // Both stopped and started again (a crash or a deploy): nothing is applied twice.
    one.shutdown().await.expect("shutdown");
    two.shutdown().await.expect("shutdown");
    let again = Arc::new(PgBalances::connect(&config).await.expect("connects"));
    let three = start(Arc::clone(&again)).await.expect("starts");
    let store = three.app().event_store();
    last = deposit(&store, "acct-0", 1000).await;
    caught_up(&again, last).await;
    let mut want = want;
    *want.get_mut("acct-0").expect("acct-0") += 1000;
    assert_eq!(again.balances().await.expect("balances"), want);

    let rebuilt = three
        .app()
        .rebuild_projection("balances")
        .await
        .expect("rebuilt");
    assert_eq!(rebuilt.position, last);
    assert_eq!(rebuilt.appends, 5 + 100 + 1);
    assert_eq!(
        again.balances().await.expect("balances"),
        want,
        "the rebuilt read model equals the one built live"
    );
    three.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_nats_a_projection_works_with_exactly_the_generated_permissions() {
    let projection = Arc::new(Recorded::default());
    let block = eda::App::builder("reports")
        .handlers(&[])
        .projection(Arc::clone(&projection))
        .build()
        .expect("builds")
        .permissions();
    assert!(
        block
            .subscribe
            .contains(&"eda.control.reports.rebuild".to_owned()),
        "{block}"
    );
    let server = support::RestrictedServer::start("reports", &block);
    // The writer (admin) stores the accounts; the reports service only reads them.
    let writer = eda::testing::TestApp::builder("bank")
        .nats(server.url())
        .handlers(&[])
        .configure(|b| b.nats_user_password("admin", "admin"))
        .start()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let store = writer.app().event_store();
    open(&store, "p-1").await;
    let last = deposit(&store, "p-1", 3).await;
    let reports = eda::testing::TestApp::builder("reports")
        .nats(server.url())
        .handlers(&[])
        .configure(|b| {
            b.nats_user_password("reports", "reports")
                .projection(Arc::clone(&projection))
        })
        .start()
        .await
        .unwrap_or_else(|e| panic!("the service starts with its permissions: {e}"));
    eventually(
        "the projection read the stream with its permissions",
        || position_of(&projection) == last,
    )
    .await;
    // A rebuild asked over NATS (as `eda projections rebuild` does) is answered: started,
    // then the result, each an answer the generated permissions allow.
    let client = async_nats::ConnectOptions::with_user_and_password("admin".into(), "admin".into())
        .connect(server.url())
        .await
        .expect("admin connects");
    let inbox = client.new_inbox();
    let mut answers = client.subscribe(inbox.clone()).await.expect("subscribe");
    client
        .publish_with_reply(
            eda::projection_rebuild_subject("reports"),
            inbox,
            "recorded".into(),
        )
        .await
        .expect("ask");
    let mut next = async || -> eda::RebuildAnswer {
        let message = tokio::time::timeout(std::time::Duration::from_secs(60), answers.next())
            .await
            .expect("an answer within a minute")
            .expect("an answer");
        serde_json::from_slice(&message.payload).expect("a rebuild answer")
    };
    assert_eq!(next().await, eda::RebuildAnswer::Started);
    let eda::RebuildAnswer::Rebuilt(rebuilt) = next().await else {
        panic!("not rebuilt");
    };
    assert_eq!((rebuilt.appends, rebuilt.position), (2, last));
    assert_eq!(projection.resets.load(Ordering::SeqCst), 1);
    reports.shutdown().await.expect("shutdown");
    writer.shutdown().await.expect("shutdown");
}
