//! Event sourcing (issue 14) through the public API, every test written once and run on both
//! transports: in memory (paused clock) and on a real `nats-server` of its own (see `Rig`).
#![allow(missing_docs, missing_debug_implementations)]

use std::sync::Arc;

use eda::prelude::*;
use eda::testing::TestApp;
use eda::{Aggregate, AggregateEvents, EventStore, EventStoreErrorKind, ExecuteError};
use serde::{Deserialize, Serialize};

#[macro_use]
mod support;
use support::Rig;

#[event("account.opened")]
pub struct AccountOpened {
    pub owner: String,
}

#[event("money.deposited", version = 1)]
pub struct MoneyDepositedV1 {
    pub cents: u64,
}

#[event("money.deposited", version = 2, upcast_from = MoneyDepositedV1)]
pub struct MoneyDeposited {
    pub cents: u64,
    pub memo: String,
}

impl From<MoneyDepositedV1> for MoneyDeposited {
    fn from(v1: MoneyDepositedV1) -> Self {
        MoneyDeposited {
            cents: v1.cents,
            memo: "(v1)".into(),
        }
    }
}

#[event("money.withdrawn")]
pub struct MoneyWithdrawn {
    pub cents: u64,
}

#[derive(AggregateEvents)]
pub enum AccountEvent {
    Opened(AccountOpened),
    Deposited(MoneyDeposited),
    Withdrawn(MoneyWithdrawn),
}

#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
pub struct Account {
    pub balance: u64,
    pub open: bool,
    pub deposits: u64,
    pub memos: Vec<String>,
}

impl Aggregate for Account {
    const TYPE: &'static str = "account";
    type Event = AccountEvent;
    fn apply(&mut self, event: &AccountEvent) {
        match event {
            AccountEvent::Opened(_) => self.open = true,
            AccountEvent::Deposited(d) => {
                self.balance += d.cents;
                self.deposits += 1;
                if !d.memo.is_empty() {
                    self.memos.push(d.memo.clone());
                }
            }
            AccountEvent::Withdrawn(w) => self.balance = self.balance.saturating_sub(w.cents),
        }
    }
}

/// What an older binary appended: version 1 of `money.deposited`.
#[derive(AggregateEvents)]
pub enum LegacyAccountEvent {
    Deposited(MoneyDepositedV1),
}

#[derive(Default, Serialize, Deserialize)]
pub struct LegacyAccount;

impl Aggregate for LegacyAccount {
    const TYPE: &'static str = "account";
    type Event = LegacyAccountEvent;
    fn apply(&mut self, _: &LegacyAccountEvent) {}
}

/// What a newer binary appends: a version and an event this binary's `Account` does not know.
#[event("money.deposited", version = 3)]
pub struct MoneyDepositedV3 {
    pub cents: u64,
    pub memo: String,
    pub currency: String,
}

#[event("account.frozen")]
pub struct AccountFrozen {
    pub reason: String,
}

#[derive(AggregateEvents)]
pub enum FutureAccountEvent {
    Deposited(MoneyDepositedV3),
    Frozen(AccountFrozen),
}

#[derive(Default, Serialize, Deserialize)]
pub struct FutureAccount;

impl Aggregate for FutureAccount {
    const TYPE: &'static str = "account";
    type Event = FutureAccountEvent;
    fn apply(&mut self, _: &FutureAccountEvent) {}
}

fn deposit(cents: u64) -> AccountEvent {
    AccountEvent::Deposited(MoneyDeposited {
        cents,
        memo: String::new(),
    })
}

fn opened() -> AccountEvent {
    AccountEvent::Opened(AccountOpened {
        owner: "ada".into(),
    })
}

async fn start(rig: &Rig) -> (TestApp, EventStore) {
    let app = rig
        .app("bank")
        .handlers(&[])
        .start()
        .await
        .expect("the test app starts");
    let store = app.app().event_store();
    (app, store)
}

/// Folds `events` as `load` would, for comparisons with the state built live.
fn folded(events: &[AccountEvent]) -> Account {
    let mut account = Account::default();
    for event in events {
        account.apply(event);
    }
    account
}

// ---- optimistic concurrency -----------------------------------------------------------------

async fn concurrent_appenders_exactly_one_wins_each_version_and_execute_retries_the_rest(rig: Rig) {
    const WRITERS: usize = 8;
    let (app, store) = start(&rig).await;
    let mut version = store
        .append::<Account>("race", 0, &[opened()])
        .await
        .expect("a new aggregate takes its first event at version 0");
    assert!(version > 0, "the version is the event's sequence");
    let again = store.append::<Account>("race", 0, &[opened()]).await;
    assert!(
        again.as_ref().is_err_and(|e| e.is_conflict()),
        "a second create at version 0 conflicts: {again:?}"
    );
    for round in 0..3 {
        let barrier = Arc::new(tokio::sync::Barrier::new(WRITERS));
        let mut tasks = Vec::new();
        for writer in 0..WRITERS {
            let (store, barrier) = (store.clone(), Arc::clone(&barrier));
            tasks.push(tokio::spawn(async move {
                let (_, seen) = store.load::<Account>("race").await.expect("load");
                barrier.wait().await;
                let result = store
                    .append::<Account>("race", seen, &[deposit(1 + writer as u64)])
                    .await;
                (seen, result)
            }));
        }
        let mut winners = Vec::new();
        let mut conflicts = 0;
        for task in tasks {
            let (seen, result) = task.await.expect("writer task");
            assert_eq!(
                seen, version,
                "round {round}: every writer loaded the same version"
            );
            match result {
                Ok(new_version) => winners.push(new_version),
                Err(e) => {
                    assert!(
                        e.is_conflict(),
                        "round {round}: a loser gets a conflict: {e}"
                    );
                    match e.kind() {
                        EventStoreErrorKind::Conflict { expected, actual } => {
                            assert_eq!(*expected, version, "{e}");
                            assert!(actual.is_some_and(|a| a > version), "{e}");
                        }
                        other => panic!("not a conflict kind: {other:?}"),
                    }
                    conflicts += 1;
                }
            }
        }
        assert_eq!(
            (winners.len(), conflicts),
            (1, WRITERS - 1),
            "round {round}: exactly one writer wins version {version}"
        );
        version = winners[0];
    }
    // The losers' way: execute reads what was appended meanwhile, decides again, appends.
    let (before, _) = store.load::<Account>("race").await.expect("load");
    let mut tasks = Vec::new();
    for _ in 0..WRITERS {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            store
                .execute::<Account, _>("race", |account| {
                    if !account.open {
                        return Err("closed");
                    }
                    Ok(vec![deposit(100)])
                })
                .await
        }));
    }
    for task in tasks {
        let (state, _) = task
            .await
            .expect("executor task")
            .expect("execute retries its conflicts until it appends");
        assert!(state.balance > before.balance);
    }
    let (after, _) = store.load::<Account>("race").await.expect("load");
    assert_eq!(after.balance, before.balance + 100 * WRITERS as u64);
    assert_eq!(after.deposits, before.deposits + WRITERS as u64);
    app.shutdown().await.expect("shutdown");
}

/// 1,000 deposit tasks on one account, `IN_FLIGHT` of them executing at any moment (every
/// one of those on the same version, so most appends conflict and are retried): the balance
/// is exact. More at once only makes each retry read longer tails (a thousand writers of one
/// aggregate read a million events between them), not the check stronger.
async fn a_thousand_concurrent_deposits_lose_no_update(rig: Rig) {
    const DEPOSITS: u64 = 1000;
    const IN_FLIGHT: usize = 64;
    let (app, store) = start(&rig).await;
    let store = store.max_attempts(10_000);
    let opened_at = store
        .append::<Account>("busy", 0, &[opened()])
        .await
        .expect("open");
    let in_flight = Arc::new(tokio::sync::Semaphore::new(IN_FLIGHT));
    let conflicts = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let mut tasks = Vec::new();
    for _ in 0..DEPOSITS {
        let (store, in_flight, conflicts) = (
            store.clone(),
            Arc::clone(&in_flight),
            Arc::clone(&conflicts),
        );
        tasks.push(tokio::spawn(async move {
            let _permit = in_flight.acquire().await.expect("semaphore open");
            let mut decisions = 0;
            let result = store
                .execute::<Account, std::convert::Infallible>("busy", |_| {
                    decisions += 1;
                    Ok(vec![deposit(3)])
                })
                .await;
            conflicts.fetch_add(decisions - 1, std::sync::atomic::Ordering::Relaxed);
            result
        }));
    }
    for task in tasks {
        task.await
            .expect("depositor task")
            .expect("every deposit is appended");
    }
    assert!(
        conflicts.load(std::sync::atomic::Ordering::Relaxed) > 0,
        "the depositors met conflicts and retried"
    );
    let (account, version) = store.load::<Account>("busy").await.expect("load");
    assert_eq!(account.balance, 3 * DEPOSITS, "no deposit lost");
    assert_eq!(account.deposits, DEPOSITS);
    assert_eq!(
        version,
        opened_at + DEPOSITS,
        "one stored message per deposit: a conflicting append stores nothing"
    );
    let (replayed, replayed_version) = store.replay::<Account>("busy").await.expect("replay");
    assert_eq!(
        (replayed, replayed_version),
        (account, version),
        "snapshot + tail equals a full replay"
    );
    app.shutdown().await.expect("shutdown");
}

// ---- replay ---------------------------------------------------------------------------------

async fn replay_equals_the_state_built_live(rig: Rig) {
    let (app, store) = start(&rig).await;
    let store = store.snapshot_every(7);
    let mut history = vec![opened()];
    let mut live = folded(&history);
    let mut version = store
        .append::<Account>("live", 0, &[opened()])
        .await
        .expect("open");
    for i in 0..30u64 {
        // Single events, and appends of several, through both `append` and `execute`.
        let events = match i % 3 {
            0 => vec![deposit(i)],
            1 => vec![
                deposit(i),
                AccountEvent::Withdrawn(MoneyWithdrawn { cents: 1 }),
            ],
            _ => vec![AccountEvent::Deposited(MoneyDeposited {
                cents: 2,
                memo: format!("m{i}"),
            })],
        };
        let expected_live = {
            let mut next = live.clone();
            for event in &events {
                next.apply(event);
            }
            next
        };
        if i % 2 == 0 {
            let count = events.len() as u64;
            let new_version = store
                .append::<Account>("live", version, &events)
                .await
                .expect("append");
            assert!(new_version >= version + count);
            version = new_version;
        } else {
            let mut once = Some(events.iter().map(clone_event).collect::<Vec<_>>());
            let (state, new_version) = store
                .execute::<Account, std::convert::Infallible>("live", |_| {
                    Ok(once.take().unwrap_or_default())
                })
                .await
                .expect("execute");
            assert_eq!(
                state, expected_live,
                "execute returns the state it produced"
            );
            version = new_version;
        }
        history.extend(events);
        live = expected_live;
    }
    assert_eq!(live, folded(&history));
    let (loaded, loaded_version) = store.load::<Account>("live").await.expect("load");
    let (replayed, replayed_version) = store.replay::<Account>("live").await.expect("replay");
    assert_eq!(loaded, live, "load equals the state built live");
    assert_eq!(replayed, live, "a full replay equals the state built live");
    assert_eq!((loaded_version, replayed_version), (version, version));
    app.shutdown().await.expect("shutdown");
}

fn clone_event(event: &AccountEvent) -> AccountEvent {
    match event {
        AccountEvent::Opened(e) => AccountEvent::Opened(AccountOpened {
            owner: e.owner.clone(),
        }),
        AccountEvent::Deposited(e) => AccountEvent::Deposited(MoneyDeposited {
            cents: e.cents,
            memo: e.memo.clone(),
        }),
        AccountEvent::Withdrawn(e) => AccountEvent::Withdrawn(MoneyWithdrawn { cents: e.cents }),
    }
}

async fn a_stored_v1_event_is_upcast_on_load(rig: Rig) {
    let (app, store) = start(&rig).await;
    let v = store
        .append::<LegacyAccount>("old", 0, &[MoneyDepositedV1 { cents: 7 }.into()])
        .await
        .expect("an older binary appends v1");
    let v = store
        .append::<Account>("old", v, &[deposit(5)])
        .await
        .expect("this binary appends v2 after it");
    let (account, version) = store.load::<Account>("old").await.expect("load");
    assert_eq!(version, v);
    assert_eq!(account.balance, 12, "the v1 deposit counts");
    assert_eq!(
        account.memos,
        ["(v1)"],
        "the v1 event went through From<V1>"
    );
    app.shutdown().await.expect("shutdown");
}

// ---- snapshots ------------------------------------------------------------------------------

async fn snapshot_and_tail_equal_a_full_replay(rig: Rig) {
    let (app, store) = start(&rig).await;
    let store = store.snapshot_every(10);
    store
        .append::<Account>("snap", 0, &[opened()])
        .await
        .expect("open");
    for _ in 0..25 {
        store
            .execute::<Account, std::convert::Infallible>("snap", |_| Ok(vec![deposit(4)]))
            .await
            .expect("deposit");
    }
    let stored = eda::testing::read_snapshot(&store, "account", "snap")
        .await
        .expect("read the snapshot")
        .expect("a snapshot was written after 10 and 20 events");
    let snapshot: serde_json::Value = serde_json::from_slice(&stored).expect("snapshot JSON");
    assert_eq!(snapshot["snapshot_version"], 1);
    assert_eq!(
        snapshot["sequence"], 20,
        "the last snapshot stands at the 20th event: {snapshot}"
    );
    assert_eq!(snapshot["state"]["balance"], 4 * 19);
    let (loaded, version) = store.load::<Account>("snap").await.expect("load");
    let (replayed, replayed_version) = store.replay::<Account>("snap").await.expect("replay");
    assert_eq!(loaded.balance, 100);
    assert_eq!((loaded, version), (replayed, replayed_version));
    app.shutdown().await.expect("shutdown");
}

async fn a_corrupt_or_outdated_snapshot_is_ignored(rig: Rig) {
    let (app, store) = start(&rig).await;
    let store = store.snapshot_every(0);
    store
        .append::<Account>("bad", 0, &[opened()])
        .await
        .expect("open");
    for _ in 0..5 {
        store
            .execute::<Account, std::convert::Infallible>("bad", |_| Ok(vec![deposit(10)]))
            .await
            .expect("deposit");
    }
    let truth = store.replay::<Account>("bad").await.expect("replay");
    assert_eq!(truth.0.balance, 50);
    let wrong_state = r#"{"balance":999999,"open":true,"deposits":1,"memos":[]}"#;
    for bytes in [
        "not json {".to_owned(),
        format!(r#"{{"snapshot_version":2,"sequence":3,"state":{wrong_state}}}"#),
        r#"{"snapshot_version":1,"sequence":3,"state":{"balance":"lots"}}"#.to_owned(),
        r#"{"snapshot_version":1,"sequence":999999,"state":{"balance":1,"open":true,"deposits":1,"memos":[]}}"#.to_owned(),
    ] {
        eda::testing::write_snapshot(&store, "account", "bad", bytes.clone())
            .await
            .expect("write the snapshot");
        let loaded = store
            .load::<Account>("bad")
            .await
            .unwrap_or_else(|e| panic!("a bad snapshot ({bytes}) does not fail the load: {e}"));
        assert_eq!(loaded, truth, "snapshot {bytes} is ignored");
    }
    // A good snapshot is used: one at the current version with another state is believed.
    let (_, version) = truth;
    eda::testing::write_snapshot(
        &store,
        "account",
        "bad",
        format!(r#"{{"snapshot_version":1,"sequence":{version},"state":{wrong_state}}}"#),
    )
    .await
    .expect("write the snapshot");
    let (believed, _) = store.load::<Account>("bad").await.expect("load");
    assert_eq!(
        believed.balance, 999_999,
        "load starts from a usable snapshot"
    );
    app.shutdown().await.expect("shutdown");
}

// ---- errors ---------------------------------------------------------------------------------

async fn an_unknown_event_or_version_is_a_clear_error(rig: Rig) {
    let (app, store) = start(&rig).await;
    let newer = MoneyDepositedV3 {
        cents: 1,
        memo: String::new(),
        currency: "EUR".into(),
    };
    store
        .append::<FutureAccount>("future", 0, &[newer.into()])
        .await
        .expect("a newer binary appends v3");
    let error = store
        .load::<Account>("future")
        .await
        .expect_err("v3 is newer than this binary knows");
    match error.kind() {
        EventStoreErrorKind::Decode {
            error:
                eda::DecodeError::UnknownVersion {
                    event,
                    version,
                    newest,
                },
            ..
        } => assert_eq!(
            (event.as_str(), *version, *newest),
            ("money.deposited", 3, 2)
        ),
        other => panic!("not an unknown version: {other:?} ({error})"),
    }
    let text = error.to_string();
    assert!(
        text.contains("money.deposited")
            && text.contains("v3")
            && text.contains("agg.account.future"),
        "the message names the event, its version and the aggregate: {text}"
    );

    let frozen = AccountFrozen {
        reason: "audit".into(),
    };
    store
        .append::<FutureAccount>("frozen", 0, &[frozen.into()])
        .await
        .expect("append");
    let error = store
        .load::<Account>("frozen")
        .await
        .expect_err("account.frozen is none of Account's events");
    assert!(
        matches!(error.kind(), EventStoreErrorKind::UnknownEvent { name, .. } if name == "account.frozen"),
        "{error:?}"
    );
    assert!(error.to_string().contains("account.frozen"), "{error}");
    let execute = store
        .execute::<Account, std::convert::Infallible>("frozen", |_| Ok(vec![deposit(1)]))
        .await;
    assert!(
        matches!(&execute, Err(ExecuteError::Store(e)) if matches!(e.kind(), EventStoreErrorKind::UnknownEvent { .. })),
        "execute cannot decide on a history it cannot read: {execute:?}"
    );
    app.shutdown().await.expect("shutdown");
}

async fn rejections_and_unusable_ids_store_nothing(rig: Rig) {
    let (app, store) = start(&rig).await;
    let v = store
        .append::<Account>("strict", 0, &[opened()])
        .await
        .expect("open");
    let rejected = store
        .execute::<Account, _>("strict", |account| {
            if account.balance < 10 {
                return Err(format!("balance {} is below 10", account.balance));
            }
            Ok(vec![AccountEvent::Withdrawn(MoneyWithdrawn { cents: 10 })])
        })
        .await;
    assert!(
        matches!(&rejected, Err(ExecuteError::Rejected(why)) if why == "balance 0 is below 10"),
        "{rejected:?}"
    );
    assert_eq!(store.load::<Account>("strict").await.expect("load").1, v);
    let nothing = store
        .execute::<Account, std::convert::Infallible>("strict", |_| Ok(vec![]))
        .await
        .expect("no events: nothing to append");
    assert_eq!(nothing.1, v);
    for id in ["", "a.b", "a b", "*", ">", &"x".repeat(129)] {
        let error = store
            .append::<Account>(id, 0, &[opened()])
            .await
            .expect_err("an id that is not one subject token is refused");
        assert_eq!(
            error.kind(),
            &EventStoreErrorKind::Invalid,
            "{id:?}: {error}"
        );
        assert!(error.to_string().contains("aggregate id"), "{error}");
    }
    let error = store
        .append::<BadlyNamed>("b-1", 0, &[])
        .await
        .expect_err("a type that cannot name a stream");
    assert_eq!(
        error.to_string(),
        "aggregate type `Savings.Account` cannot name a stream: use one token of lowercase letters, digits, `_` and `-`, e.g. `account`"
    );
    app.shutdown().await.expect("shutdown");
}

/// An aggregate whose type is not one lowercase token.
#[derive(Default, Serialize, Deserialize)]
pub struct BadlyNamed;

impl Aggregate for BadlyNamed {
    const TYPE: &'static str = "Savings.Account";
    type Event = AccountEvent;
    fn apply(&mut self, _: &AccountEvent) {}
}

// ---- from a handler -------------------------------------------------------------------------

#[event("deposit.requested")]
pub struct DepositRequested {
    pub account: String,
    pub cents: u64,
}

/// A command handler: the event store is a handler parameter like `Context`.
#[handler(service = "bank-commands")]
async fn deposit_on_request(
    event: DepositRequested,
    store: EventStore,
) -> Result<(), HandlerError> {
    store
        .execute::<Account, _>(&event.account, |account| {
            if !account.open {
                return Err(HandlerError::permanent("the account is not open"));
            }
            Ok(vec![deposit(event.cents)])
        })
        .await
        .map_err(|e| match e {
            ExecuteError::Rejected(rejected) => rejected,
            other => HandlerError::retry(other),
        })?;
    Ok(())
}

async fn handlers_take_the_event_store_as_a_parameter(rig: Rig) {
    let app = rig
        .app("bank-commands")
        .handlers(&["deposit_on_request"])
        .start()
        .await
        .expect("the test app starts");
    let store = app.app().event_store();
    store
        .append::<Account>("h-acc", 0, &[opened()])
        .await
        .expect("open");
    for cents in [5, 7, 11] {
        app.publish(&DepositRequested {
            account: "h-acc".into(),
            cents,
        })
        .await
        .expect("publish");
    }
    app.publish(&DepositRequested {
        account: "never-opened".into(),
        cents: 1,
    })
    .await
    .expect("publish");
    app.settle().await;
    let (account, _) = store.load::<Account>("h-acc").await.expect("load");
    assert_eq!(account.balance, 23, "each request deposited once");
    assert_eq!(app.handled("deposit_on_request"), 3);
    let dead = app.dead_letters().await.expect("dead letters");
    assert_eq!(
        dead.len(),
        1,
        "the request for an unopened account is rejected"
    );
    assert!(dead[0].error.contains("not open"), "{}", dead[0].error);
    app.shutdown().await.expect("shutdown");
}

// ---- the forwarder ---------------------------------------------------------------------------

/// What the audit service's handler saw: (event id, cents).
#[derive(Default)]
pub struct Audited(std::sync::Mutex<Vec<(String, u64)>>);

#[handler(service = "es-audit")]
async fn audit_deposit(event: Envelope<MoneyDeposited>, seen: State<Audited>) {
    seen.0
        .lock()
        .expect("audit ledger")
        .push((event.id().to_owned(), event.cents));
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

async fn appended_events_reach_other_services_handlers_once(rig: Rig) {
    let audited = Arc::new(Audited::default());
    let audit = rig
        .app("es-audit")
        .handlers(&["audit_deposit"])
        .shared_state(Arc::clone(&audited))
        .start()
        .await
        .expect("the audit service starts");
    let bank = rig
        .app("bank")
        .handlers(&[])
        .configure(|b| b.aggregate::<Account>())
        .start()
        .await
        .expect("the bank starts");
    let store = bank.app().event_store();
    let v = store
        .append::<Account>("fw", 0, &[opened(), deposit(1)])
        .await
        .expect("append");
    let v = store
        .append::<Account>("fw", v, &[deposit(2)])
        .await
        .expect("append");
    store
        .append::<Account>("fw", v, &[deposit(3), deposit(4)])
        .await
        .expect("append");
    let ledger = || audited.0.lock().expect("audit ledger").clone();
    eventually("four deposits audited", || ledger().len() >= 4).await;
    audit.settle().await;
    let mut cents: Vec<u64> = ledger().iter().map(|(_, c)| *c).collect();
    cents.sort_unstable();
    assert_eq!(
        cents,
        [1, 2, 3, 4],
        "each appended deposit reaches the handler once"
    );
    let mut ids: Vec<String> = ledger().into_iter().map(|(id, _)| id).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 4, "each with its own id");
    let published = audit.published::<MoneyDeposited>().await.expect("events");
    assert_eq!(published.len(), 4, "published once each");
    bank.shutdown().await.expect("shutdown");
    audit.shutdown().await.expect("shutdown");
}

on_both_transports!(
    appended_events_reach_other_services_handlers_once,
    handlers_take_the_event_store_as_a_parameter,
    concurrent_appenders_exactly_one_wins_each_version_and_execute_retries_the_rest,
    a_thousand_concurrent_deposits_lose_no_update,
    replay_equals_the_state_built_live,
    a_stored_v1_event_is_upcast_on_load,
    snapshot_and_tail_equal_a_full_replay,
    a_corrupt_or_outdated_snapshot_is_ignored,
    an_unknown_event_or_version_is_a_clear_error,
    rejections_and_unusable_ids_store_nothing,
);

// ---- on NATS: the topology ------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_nats_events_are_stored_per_aggregate_with_eda_headers() {
    let rig = Rig::nats();
    let Rig::Nats(server) = &rig else {
        unreachable!("Rig::nats is on NATS")
    };
    let (app, store) = start(&rig).await;
    let store = store.snapshot_every(2);
    store
        .append::<Account>("h-1", 0, &[opened(), deposit(5)])
        .await
        .expect("append two");
    store
        .load::<Account>("h-1")
        .await
        .expect("load writes a snapshot");
    let client = async_nats::connect(server.url()).await.expect("connect");
    let js = async_nats::jetstream::new(client);
    let mut stream = js
        .get_stream("EDA_AGG_ACCOUNT")
        .await
        .expect("the aggregate type's stream");
    let info = stream.info().await.expect("stream info");
    assert_eq!(info.config.subjects, ["agg.account.*"]);
    let last = stream
        .get_last_raw_message_by_subject("agg.account.h-1")
        .await
        .expect("the aggregate's last event");
    let header = |name: &str| last.headers.get(name).map(|v| v.as_str().to_owned());
    assert_eq!(header("Eda-Event").as_deref(), Some("money.deposited"));
    assert_eq!(header("Eda-Version").as_deref(), Some("2"));
    assert_eq!(header("Eda-Batch").as_deref(), Some("2/2"));
    assert_eq!(header("Eda-Source").as_deref(), Some("bank"));
    assert!(header("Nats-Msg-Id").is_some_and(|id| id.len() == 36));
    let bucket = js
        .get_key_value("EDA_SNAPSHOTS")
        .await
        .expect("the snapshot bucket");
    assert!(bucket
        .get("account.h-1")
        .await
        .expect("read the snapshot")
        .is_some());
    app.shutdown().await.expect("shutdown");
}

/// The service's generated permissions (with `.aggregate::<Account>()`) are all the event
/// store needs: a server enforcing exactly that block lets it append, read a long history
/// (through a reading consumer) and write and read snapshots.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_nats_the_event_store_works_with_exactly_the_generated_permissions() {
    let block = eda::App::builder("bank")
        .handlers(&[])
        .aggregate::<Account>()
        .build()
        .expect("builds")
        .permissions();
    assert!(
        block.publish.contains(&"agg.account.*".to_owned()),
        "{block}"
    );
    let server = support::RestrictedServer::start("bank", &block);
    let app = TestApp::builder("bank")
        .nats(server.url())
        .handlers(&[])
        .configure(|b| b.nats_user_password("bank", "bank").aggregate::<Account>())
        .start()
        .await
        .unwrap_or_else(|e| panic!("the service starts with its permissions: {e}"));
    let store = app.app().event_store().snapshot_every(40);
    store
        .append::<Account>("p-1", 0, &[opened()])
        .await
        .expect("append with the generated permissions");
    for _ in 0..50 {
        store
            .execute::<Account, std::convert::Infallible>("p-1", |_| Ok(vec![deposit(2)]))
            .await
            .expect("execute with the generated permissions");
    }
    let (replayed, version) = store
        .replay::<Account>("p-1")
        .await
        .expect("a long history is read with the generated permissions");
    assert_eq!((replayed.balance, replayed.deposits), (100, 50));
    let snapshot = eda::testing::read_snapshot(&store, "account", "p-1")
        .await
        .expect("read the snapshot with the generated permissions");
    assert!(snapshot.is_some(), "a snapshot was written after 40 events");
    assert_eq!(
        store.load::<Account>("p-1").await.expect("load"),
        (replayed, version)
    );
    // The forwarder runs on the same permissions: every deposit reaches the event stream.
    let admin = TestApp::builder("admin-tool")
        .nats(server.url())
        .handlers(&[])
        .configure(|b| b.nats_user_password("admin", "admin"))
        .start()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let mut forwarded = 0;
    for _ in 0..1200 {
        forwarded = admin
            .published::<MoneyDeposited>()
            .await
            .expect("events")
            .len();
        if forwarded >= 50 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(forwarded, 50, "the forwarder published every deposit");
    admin.shutdown().await.expect("shutdown");
    app.shutdown().await.expect("shutdown");
}

/// A stream deleted behind the app's back is an error for the append that meets it (never a
/// panic or a hang), and is provisioned again on the next use.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_nats_a_deleted_aggregate_stream_is_provisioned_again() {
    let rig = Rig::nats();
    let Rig::Nats(server) = &rig else {
        unreachable!("Rig::nats is on NATS")
    };
    let (app, store) = start(&rig).await;
    store
        .append::<Account>("gone", 0, &[opened()])
        .await
        .expect("append");
    let client = async_nats::connect(server.url()).await.expect("connect");
    let js = async_nats::jetstream::new(client);
    js.delete_stream("EDA_AGG_ACCOUNT")
        .await
        .expect("delete the stream");
    let error = store
        .append::<Account>("gone", 1, &[deposit(1)])
        .await
        .expect_err("the stream is gone");
    assert_eq!(error.kind(), &EventStoreErrorKind::Broker, "{error}");
    assert!(error.to_string().contains("agg.account.gone"), "{error}");
    let version = store
        .append::<Account>("gone", 0, &[opened()])
        .await
        .expect("the stream is created again on the next use");
    assert_eq!(version, 1, "a new stream starts at sequence 1");
    assert!(store.load::<Account>("gone").await.expect("load").0.open);
    app.shutdown().await.expect("shutdown");
}

/// An app that appended and stopped before anything forwarded its events (here: one that
/// does not forward at all) loses nothing: the next forwarder starts where the last one
/// stopped, and forwards each event once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_nats_the_forwarder_resumes_where_it_stopped() {
    let rig = Rig::nats();
    let (writer, store) = start(&rig).await;
    let mut v = store
        .append::<Account>("resume", 0, &[opened()])
        .await
        .expect("open");
    for cents in 1..=5 {
        v = store
            .append::<Account>("resume", v, &[deposit(cents)])
            .await
            .expect("deposit");
    }
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert!(
        writer
            .published::<MoneyDeposited>()
            .await
            .expect("events")
            .is_empty(),
        "nothing forwards without a forwarder"
    );
    writer.shutdown().await.expect("shutdown");
    let forwarding = || async {
        rig.app("bank")
            .handlers(&[])
            .configure(|b| b.aggregate::<Account>())
            .start()
            .await
            .expect("the forwarding app starts")
    };
    let first = forwarding().await;
    for _ in 0..1200 {
        if first
            .published::<MoneyDeposited>()
            .await
            .expect("events")
            .len()
            >= 5
        {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(
        first
            .published::<MoneyDeposited>()
            .await
            .expect("events")
            .len(),
        5
    );
    first.shutdown().await.expect("shutdown");
    let second = forwarding().await;
    second
        .app()
        .event_store()
        .append::<Account>("resume", v, &[deposit(6)])
        .await
        .expect("deposit");
    for _ in 0..1200 {
        if second
            .published::<MoneyDeposited>()
            .await
            .expect("events")
            .len()
            >= 6
        {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let cents: Vec<u64> = second
        .published::<MoneyDeposited>()
        .await
        .expect("events")
        .iter()
        .map(|d| d.cents)
        .collect();
    assert_eq!(cents, [1, 2, 3, 4, 5, 6], "each forwarded once, in order");
    assert_eq!(
        second
            .published::<AccountOpened>()
            .await
            .expect("events")
            .len(),
        1
    );
    second.shutdown().await.expect("shutdown");
}
