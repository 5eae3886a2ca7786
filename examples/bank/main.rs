//! Event sourcing end to end: accounts as aggregates stored on the broker, deposits and
//! withdrawals from concurrent tasks (conflicts retried by `execute`), a projection of the
//! balances into a read model, and a final check that the read model equals the replayed
//! accounts, before and after a rebuild of the projection.
//!
//! ```text
//! cargo run --example bank                   # in memory, the read model in memory
//! cargo run --example bank -- --nats         # on NATS JetStream at EDA_NATS_URL
//! cargo run --example bank -- --postgres "host=127.0.0.1 user=postgres dbname=test"
//! ```
//! `--postgres` (with or without `--nats`) keeps the read model in PostgreSQL
//! (`bank/balances.rs`). It exits with status 1 if the read model and the accounts differ.

#![allow(missing_docs, missing_debug_implementations)] // example types speak for themselves

mod account;
mod balances;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use eda::{BoxError, EventStore, ExecuteError, Projected, Projection, RunningApp};

use account::{Account, AccountEvent, Refused};
use balances::PgBalances;

const ACCOUNTS: usize = 20;
const TASKS: usize = 8;
const OPERATIONS_PER_TASK: usize = 50;

/// The read model in memory: balances and position, changed together under one lock.
#[derive(Default)]
struct MemoryBalances(Mutex<(BTreeMap<String, i64>, u64)>);

impl MemoryBalances {
    fn model(&self) -> std::sync::MutexGuard<'_, (BTreeMap<String, i64>, u64)> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl Projection for MemoryBalances {
    const NAME: &'static str = "balances";
    type Aggregate = Account;

    async fn position(&self) -> Result<u64, BoxError> {
        Ok(self.model().1)
    }

    async fn apply(&self, append: Projected<AccountEvent>) -> Result<(), BoxError> {
        let mut model = self.model();
        if append.position <= model.1 {
            return Ok(());
        }
        let balance = model.0.entry(append.aggregate_id.clone()).or_default();
        for event in &append.events {
            match event {
                AccountEvent::Opened(_) => {}
                AccountEvent::Deposited(d) => *balance += d.cents as i64,
                AccountEvent::Withdrawn(w) => *balance -= w.cents as i64,
            }
        }
        model.1 = append.position;
        Ok(())
    }

    async fn reset(&self) -> Result<(), BoxError> {
        *self.model() = Default::default();
        Ok(())
    }
}

/// Where the balances are kept.
enum ReadModel {
    Memory(Arc<MemoryBalances>),
    Postgres(Arc<PgBalances>),
}

impl ReadModel {
    async fn position(&self) -> Result<u64, BoxError> {
        match self {
            ReadModel::Memory(m) => m.position().await,
            ReadModel::Postgres(p) => p.position().await,
        }
    }

    async fn balances(&self) -> Result<BTreeMap<String, i64>, BoxError> {
        match self {
            ReadModel::Memory(m) => Ok(m.model().0.clone()),
            ReadModel::Postgres(p) => p.balances().await,
        }
    }
}

/// A small deterministic generator (the example needs no randomness crate).
struct Lcg(u64);

impl Lcg {
    fn below(&mut self, n: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 33) % n
    }
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let nats = args.iter().any(|a| a == "--nats");
    let postgres = args
        .iter()
        .position(|a| a == "--postgres")
        .map(|i| {
            args.get(i + 1)
                .cloned()
                .ok_or("--postgres needs a connection string")
        })
        .transpose()?;

    let read_model = match &postgres {
        Some(config) => ReadModel::Postgres(Arc::new(PgBalances::connect(config).await?)),
        None => ReadModel::Memory(Arc::default()),
    };
    let mut builder = eda::App::builder("bank")
        .handlers(&[])
        .aggregate::<Account>();
    builder = match &read_model {
        ReadModel::Memory(m) => builder.projection(Arc::clone(m)),
        ReadModel::Postgres(p) => builder.projection(Arc::clone(p)),
    };
    builder = if nats {
        let url =
            std::env::var("EDA_NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".to_owned());
        builder.nats(url)
    } else {
        builder.in_memory()
    };
    let app = builder.start().await?;
    let store = app.event_store();

    // Accounts of this run only: a broker (and a database) may hold earlier runs'.
    let run = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_millis();
    let ids: Vec<String> = (0..ACCOUNTS).map(|i| format!("r{run}-{i}")).collect();
    let mut last = 0;
    for id in &ids {
        let (_, version) = store
            .execute::<Account, _>(id, |a| account::open(a, "ada", 100))
            .await?;
        last = last.max(version);
    }

    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for task in 0..TASKS {
        let (store, ids) = (store.clone(), ids.clone());
        tasks.spawn(async move { operate(store, ids, task as u64).await });
    }
    let (mut done, mut refused) = (0, 0);
    while let Some(result) = tasks.join_next().await {
        let (task_done, task_refused, task_last) = result??;
        done += task_done;
        refused += task_refused;
        last = last.max(task_last);
    }
    println!(
        "{done} operations on {ACCOUNTS} accounts from {TASKS} tasks in {:.2?} ({refused} refused: insufficient funds)",
        started.elapsed()
    );

    wait_for(&read_model, last).await?;
    let mut ok = check(&app, &read_model, &ids, "projected").await?;
    let rebuilt = app.rebuild_projection("balances").await?;
    println!(
        "projection rebuilt: {} appends replayed, position {}",
        rebuilt.appends, rebuilt.position
    );
    ok &= check(&app, &read_model, &ids, "after the rebuild").await?;
    app.shutdown().await?;
    if !ok {
        std::process::exit(1);
    }
    Ok(())
}

/// Deposits and withdrawals on random accounts: (done, refused, last version seen).
async fn operate(
    store: EventStore,
    ids: Vec<String>,
    seed: u64,
) -> Result<(u64, u64, u64), BoxError> {
    let mut random = Lcg(seed + 1);
    let (mut done, mut refused, mut last) = (0, 0, 0);
    for _ in 0..OPERATIONS_PER_TASK {
        let id = &ids[random.below(ids.len() as u64) as usize];
        let cents = 1 + random.below(50);
        let deposit = random.below(2) == 0;
        let result = store
            .execute::<Account, _>(id, |a| {
                if deposit {
                    account::deposit(a, cents)
                } else {
                    account::withdraw(a, cents)
                }
            })
            .await;
        match result {
            Ok((_, version)) => {
                done += 1;
                last = last.max(version);
            }
            Err(ExecuteError::Rejected(Refused::InsufficientFunds { .. })) => refused += 1,
            Err(e) => return Err(e.to_string().into()),
        }
    }
    Ok((done, refused, last))
}

/// Waits until the read model has applied everything up to `position` (a minute at most).
async fn wait_for(read_model: &ReadModel, position: u64) -> Result<(), BoxError> {
    let deadline = Instant::now() + Duration::from_secs(60);
    while read_model.position().await? < position {
        if Instant::now() > deadline {
            return Err(format!(
                "the read model did not reach position {position} within a minute"
            )
            .into());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

/// Compares the read model's balances with the accounts replayed from their events.
async fn check(
    app: &RunningApp,
    read_model: &ReadModel,
    ids: &[String],
    when: &str,
) -> Result<bool, BoxError> {
    let balances = read_model.balances().await?;
    let store = app.event_store();
    let mut differ = Vec::new();
    let mut total = 0;
    for id in ids {
        let (account, _) = store.load::<Account>(id).await?;
        let projected = balances.get(id).copied().unwrap_or(-1);
        total += account.balance;
        if projected != account.balance as i64 {
            differ.push(format!(
                "{id}: read model {projected}, account {}",
                account.balance
            ));
        }
    }
    if differ.is_empty() {
        println!(
            "read model {when}: equals the {} replayed accounts (total {total} cents)",
            ids.len()
        );
        Ok(true)
    } else {
        println!("read model {when}: differs: {}", differ.join("; "));
        Ok(false)
    }
}
