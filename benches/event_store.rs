//! eda's event store (event sourcing) next to a hand-written async-nats program doing the same
//! broker work on the same nats-server, interleaved in one run (raw, eda, raw, eda, ...):
//!
//! - appends/s on one aggregate: sequential appends of one event, each expecting the version
//!   the previous one returned; raw publishes with eda's headers (`Nats-Msg-Id`, `Eda-Source`,
//!   `Eda-Event`) and `Nats-Expected-Last-Subject-Sequence`, awaiting each ack;
//! - appends/s across 1,000 aggregates: 32 tasks, each owning every 32nd aggregate, append one
//!   event to each of theirs in turn, a number of times over;
//! - the time of one load of an aggregate of 10,000 events, without a snapshot (raw: an
//!   ordered pull consumer filtered to the subject, each payload decoded with serde_json and
//!   applied) and with a snapshot near its end (eda writes it; raw reads the same key of
//!   `EDA_SNAPSHOTS` and the tail after it the same way).
//!
//! Run it through `scripts/bench` (which appends its section to the report), or alone:
//! `cargo bench --bench event_store -- [--quick] [--rounds N] [--out FILE]`. `--quick` runs one
//! round with small counts; `--out` appends the Markdown section to FILE (it is printed
//! either way). The last line printed is machine-readable, each figure eda / raw of the
//! medians of appends/s or loads/s (1.00: as fast as raw; below: slower):
//! `event_store: append_one=<..> append_many=<..> load_10k=<..> load_snapshot=<..>`.

#![allow(missing_docs, missing_debug_implementations)]

use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, consumer};
use async_nats::HeaderMap;
use eda::prelude::*;
use eda::testing::NatsServer;
use eda::{Aggregate, AggregateEvents, EventStore};
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The service name: eda's `Eda-Source`, sent by raw too.
const SERVICE: &str = "bench-es";
/// Tasks appending at once in the many-aggregates scenario.
const TASKS: usize = 32;
/// Aggregates of the many-aggregates scenario.
const AGGREGATES: usize = 1_000;
/// Events after the snapshot of the snapshotted aggregate (eda's default writes one every
/// 100, so a load reads 0 to 99 of them).
const TAIL: u64 = 50;
/// The longest a scenario may take: a stuck read is reported, not waited on for ever.
const BOUND: Duration = Duration::from_secs(300);

#[event("ledger.posted")]
pub struct Posted {
    pub amount_cents: i64,
    pub currency: String,
    pub counterparty: String,
    pub reference: String,
    pub memo: String,
}

/// A posting of about 150 bytes of JSON.
fn posted(n: u64) -> Posted {
    Posted {
        amount_cents: 100 + (n % 9_000) as i64,
        currency: "EUR".into(),
        counterparty: format!("DE89370400440532{:06}", n % 1_000_000),
        reference: format!("inv-{n:010}"),
        memo: "monthly subscription, thank you".into(),
    }
}

#[derive(AggregateEvents)]
pub enum LedgerEvent {
    Posted(Posted),
}

/// The state both sides fold: eda through `Aggregate::apply`, raw by hand.
#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
pub struct Balance {
    pub cents: i64,
    pub postings: u64,
    pub last_reference: String,
}

impl Balance {
    fn post(&mut self, p: &Posted) {
        self.cents += p.amount_cents;
        self.postings += 1;
        self.last_reference.clone_from(&p.reference);
    }
}

/// Two aggregate types of the same state and events, so that each scenario has a stream of
/// its own: the appends grow `EDA_AGG_BENCH_LEDGER`, the loads read `EDA_AGG_BENCH_HISTORY`.
macro_rules! aggregates {
    ($($ty:ident = $kind:literal),* $(,)?) => {$(
        #[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $ty(Balance);

        impl Aggregate for $ty {
            const TYPE: &'static str = $kind;
            type Event = LedgerEvent;
            fn apply(&mut self, event: &LedgerEvent) {
                match event {
                    LedgerEvent::Posted(p) => self.0.post(p),
                }
            }
        }
    )*};
}

aggregates! {
    Ledger = "bench_ledger",
    History = "bench_history",
}

struct Counts {
    /// Appends to one aggregate per round.
    one: u64,
    /// Events per aggregate of the many-aggregates scenario per round.
    per_aggregate: u64,
    /// Events of the loaded aggregates.
    history: u64,
    /// Loads of each kind per round (the round's figure is their mean).
    loads: usize,
}

/// Who appends: eda's store, or the hand-written publish.
#[derive(Clone)]
enum Side {
    Eda(EventStore),
    Raw(Arc<Raw>),
}

struct Raw {
    js: jetstream::Context,
    /// Makes each `Nats-Msg-Id` unique, 36 characters like eda's UUIDs.
    sent: AtomicU64,
}

impl Raw {
    /// What eda sends with an append of one event at schema version 1, and the expected
    /// sequence.
    fn headers(&self, expected: u64) -> HeaderMap {
        let n = self.sent.fetch_add(1, Ordering::Relaxed);
        let mut headers = HeaderMap::new();
        headers.insert(
            "Nats-Msg-Id",
            format!("raw00000-0000-7000-8000-{n:012x}").as_str(),
        );
        headers.insert("Eda-Source", SERVICE);
        headers.insert("Eda-Event", Posted::NAME);
        headers.insert(
            "Nats-Expected-Last-Subject-Sequence",
            expected.to_string().as_str(),
        );
        headers
    }
}

impl Side {
    /// Appends event `n` to aggregate `id` of type [`Ledger`] at version `expected`; returns
    /// the new version.
    async fn append(&self, id: &str, expected: u64, n: u64) -> Result<u64, BoxError> {
        match self {
            Side::Eda(store) => Ok(store
                .append::<Ledger>(id, expected, &[LedgerEvent::Posted(posted(n))])
                .await?),
            Side::Raw(raw) => {
                let payload = serde_json::to_vec(&posted(n))?;
                let ack = raw
                    .js
                    .publish_with_headers(
                        format!("agg.{}.{id}", Ledger::TYPE),
                        raw.headers(expected),
                        payload.into(),
                    )
                    .await?
                    .await?;
                Ok(ack.sequence)
            }
        }
    }
}

/// Appends/s of `count` sequential appends to one new aggregate.
async fn append_one(side: &Side, id: &str, count: u64) -> Result<f64, BoxError> {
    let start = Instant::now();
    let mut version = 0;
    for n in 0..count {
        version = side.append(id, version, n).await?;
    }
    Ok(count as f64 / start.elapsed().as_secs_f64())
}

/// Appends/s of `per` events to each of [`AGGREGATES`] new aggregates named `<prefix>-<i>`,
/// [`TASKS`] tasks at once.
async fn append_many(side: &Side, prefix: &str, per: u64) -> Result<f64, BoxError> {
    let start = Instant::now();
    let tasks: Vec<_> = (0..TASKS)
        .map(|task| {
            let side = side.clone();
            let ids: Vec<String> = (task..AGGREGATES)
                .step_by(TASKS)
                .map(|i| format!("{prefix}-{i}"))
                .collect();
            tokio::spawn(async move {
                let mut versions = vec![0; ids.len()];
                for n in 0..per {
                    for (id, version) in ids.iter().zip(versions.iter_mut()) {
                        *version = side.append(id, *version, n).await?;
                    }
                }
                Ok::<_, BoxError>(())
            })
        })
        .collect();
    for task in tasks {
        task.await??;
    }
    Ok((AGGREGATES as u64 * per) as f64 / start.elapsed().as_secs_f64())
}

/// What raw reads with: the loads' stream and the snapshot bucket eda wrote to.
struct RawReader {
    stream: jetstream::stream::Stream,
    snapshots: jetstream::kv::Store,
}

/// A snapshot as eda stores it: `{"snapshot_version":1,"sequence":N,"state":{...}}`.
#[derive(Deserialize)]
struct StoredSnapshot {
    sequence: u64,
    state: Balance,
}

impl RawReader {
    /// Folds the events of `subject` after sequence `after` into `state`: an ordered pull
    /// consumer filtered to the subject, each payload decoded with serde_json. Returns the
    /// state and the last sequence read.
    async fn fold(
        &self,
        subject: &str,
        after: u64,
        mut state: Balance,
    ) -> Result<(Balance, u64), BoxError> {
        let deliver_policy = match after {
            0 => consumer::DeliverPolicy::All,
            after => consumer::DeliverPolicy::ByStartSequence {
                start_sequence: after + 1,
            },
        };
        let reader = self
            .stream
            .create_consumer(consumer::pull::OrderedConfig {
                filter_subject: subject.to_owned(),
                deliver_policy,
                ..Default::default()
            })
            .await?;
        let name = reader.cached_info().name.clone();
        let mut version = after;
        if reader.cached_info().num_pending > 0 {
            let mut messages = reader.messages().await?;
            while let Some(message) = messages.next().await {
                let message = message?;
                let info = message.info()?;
                let (sequence, pending) = (info.stream_sequence, info.pending);
                state.post(&serde_json::from_slice::<Posted>(&message.payload)?);
                version = sequence;
                if pending == 0 {
                    break;
                }
            }
        }
        // As eda does with its reading consumer: deleted, not left for 30 s.
        let stream = self.stream.clone();
        tokio::spawn(async move {
            let _ = stream.delete_consumer(&name).await;
        });
        Ok((state, version))
    }

    /// Aggregate `id` from its snapshot and the events after it.
    async fn load_snapshotted(&self, id: &str) -> Result<(Balance, u64), BoxError> {
        let key = format!("{}.{id}", History::TYPE);
        let bytes = self
            .snapshots
            .get(&key)
            .await?
            .ok_or_else(|| format!("no snapshot `{key}`"))?;
        let snapshot: StoredSnapshot = serde_json::from_slice(&bytes)?;
        self.fold(&history_subject(id), snapshot.sequence, snapshot.state)
            .await
    }
}

fn history_subject(id: &str) -> String {
    format!("agg.{}.{id}", History::TYPE)
}

/// Appends `count` events to aggregate `id` of type [`History`] through eda, one by one.
async fn fill(store: &EventStore, id: &str, from: u64, count: u64) -> Result<u64, BoxError> {
    let (_, mut version) = store.load::<History>(id).await?;
    for n in from..from + count {
        version = store
            .append::<History>(id, version, &[LedgerEvent::Posted(posted(n))])
            .await?;
    }
    Ok(version)
}

/// Wall time of `f` in ms, and its result.
async fn timed<T>(
    f: impl std::future::Future<Output = Result<T, BoxError>>,
) -> Result<(f64, T), BoxError> {
    let start = Instant::now();
    let out = f.await?;
    Ok((start.elapsed().as_secs_f64() * 1e3, out))
}

async fn bounded<T>(
    what: &str,
    f: impl std::future::Future<Output = Result<T, BoxError>>,
) -> Result<T, BoxError> {
    tokio::time::timeout(BOUND, f)
        .await
        .map_err(|_| format!("{what}: not done after {} s", BOUND.as_secs()))?
}

#[derive(Default)]
struct Series(Vec<f64>);

impl Series {
    fn push(&mut self, v: f64) {
        self.0.push(v);
    }
    fn median(&self) -> f64 {
        let mut v = self.0.clone();
        v.sort_by(f64::total_cmp);
        v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
    }
    /// `min / median / max`, `decimals` after the point.
    fn summary(&self, decimals: usize) -> String {
        if self.0.is_empty() {
            return "n/a".into();
        }
        let min = self.0.iter().copied().fold(f64::INFINITY, f64::min);
        let max = self.0.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        format!(
            "{min:.decimals$} / {:.decimals$} / {max:.decimals$}",
            self.median()
        )
    }
}

/// eda's and raw's figures of one scenario.
#[derive(Default)]
struct Pair {
    raw: Series,
    eda: Series,
}

fn arg_value(args: &[String], name: &str) -> Option<String> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

/// The header names of the last message of `subject`, sorted (the expected-sequence header
/// is stored with the message too).
async fn header_names(
    stream: &jetstream::stream::Stream,
    subject: &str,
) -> Result<Vec<String>, BoxError> {
    let message = stream.get_last_raw_message_by_subject(subject).await?;
    let mut names: Vec<String> = message
        .headers
        .iter()
        .map(|(name, _)| name.to_string())
        .collect();
    names.sort();
    Ok(names)
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let args: Vec<String> = std::env::args().collect();
    if !args.iter().any(|a| a == "--bench") {
        // `cargo test --all-targets` runs bench targets without `--bench`.
        eprintln!("event_store: a benchmark; run it with `scripts/bench` (or `cargo bench --bench event_store`)");
        return Ok(());
    }
    let quick = args.iter().any(|a| a == "--quick");
    let default_rounds = if quick { 1 } else { 3 };
    let rounds: usize = arg_value(&args, "--rounds").map_or(Ok(default_rounds), |r| r.parse())?;
    let out = arg_value(&args, "--out");
    let counts = if quick {
        Counts {
            one: 1_000,
            per_aggregate: 2,
            history: 2_000,
            loads: 3,
        }
    } else {
        Counts {
            one: 5_000,
            per_aggregate: 10,
            history: 10_000,
            loads: 5,
        }
    };

    let server = NatsServer::start()?;
    let url = server.url();
    let app = App::builder(SERVICE)
        .nats(url.clone())
        .handlers(&[])
        .start()
        .await?;
    // Appends never write snapshots; loads through `loader` never do either.
    let store = app.event_store();
    let loader = app.event_store().snapshot_every(0);
    let js = jetstream::new(async_nats::connect(&url).await?);
    let raw = Arc::new(Raw {
        js: js.clone(),
        sent: AtomicU64::new(0),
    });
    let (raw_side, eda_side) = (Side::Raw(raw), Side::Eda(store.clone()));

    // Warm-up: eda provisions the appends' stream; both sides connect and append once.
    eda_side.append("warm-eda", 0, 0).await?;
    raw_side.append("warm-raw", 0, 0).await?;
    let ledger_stream = js
        .get_stream(format!("EDA_AGG_{}", Ledger::TYPE.to_ascii_uppercase()))
        .await?;
    let (eda_headers, raw_headers) = (
        header_names(&ledger_stream, &format!("agg.{}.warm-eda", Ledger::TYPE)).await?,
        header_names(&ledger_stream, &format!("agg.{}.warm-raw", Ledger::TYPE)).await?,
    );
    if eda_headers != raw_headers {
        return Err(
            format!("raw sends other headers than eda: {raw_headers:?} / {eda_headers:?}").into(),
        );
    }

    // The loaded aggregates, written by eda: `full` never snapshotted; `snap` snapshotted
    // after all but its last TAIL events.
    let history = counts.history;
    eprintln!("event store: writing two aggregates of {history} events");
    let setup = async {
        let (full, _) = tokio::try_join!(
            fill(&store, "full", 0, history),
            fill(&store, "snap", 0, history - TAIL)
        )?;
        store
            .clone()
            .snapshot_every(1)
            .load::<History>("snap")
            .await?;
        let snap = fill(&store, "snap", history - TAIL, TAIL).await?;
        Ok::<_, BoxError>((full, snap))
    };
    let (full_version, snap_version) = bounded("writing the loaded aggregates", setup).await?;
    let reader = RawReader {
        stream: js
            .get_stream(format!("EDA_AGG_{}", History::TYPE.to_ascii_uppercase()))
            .await?,
        snapshots: js.get_key_value("EDA_SNAPSHOTS").await?,
    };
    let stored: StoredSnapshot = serde_json::from_slice(
        &reader
            .snapshots
            .get(format!("{}.snap", History::TYPE))
            .await?
            .ok_or("eda wrote no snapshot")?,
    )?;
    if stored.state.postings != history - TAIL {
        return Err(format!(
            "the snapshot holds {} events, not {}",
            stored.state.postings,
            history - TAIL
        )
        .into());
    }

    // One load of each kind first, not measured: the first read of each side warms up.
    reader
        .fold(&history_subject("full"), 0, Balance::default())
        .await?;
    reader.load_snapshotted("snap").await?;
    loader.load::<History>("full").await?;
    loader.load::<History>("snap").await?;

    let (mut one, mut many, mut full, mut snap) = (
        Pair::default(),
        Pair::default(),
        Pair::default(),
        Pair::default(),
    );
    for round in 1..=rounds {
        eprintln!("event store: round {round} of {rounds}");
        let id = format!("one-r{round}");
        one.raw.push(
            bounded(
                "raw appends",
                append_one(&raw_side, &format!("raw-{id}"), counts.one),
            )
            .await?,
        );
        one.eda
            .push(bounded("eda appends", append_one(&eda_side, &id, counts.one)).await?);
        let prefix = format!("many-r{round}");
        many.raw.push(
            bounded(
                "raw appends",
                append_many(&raw_side, &format!("raw-{prefix}"), counts.per_aggregate),
            )
            .await?,
        );
        many.eda.push(
            bounded(
                "eda appends",
                append_many(&eda_side, &prefix, counts.per_aggregate),
            )
            .await?,
        );

        let mut ms = [0.0; 4];
        for _ in 0..counts.loads {
            let (t, raw_full) = bounded(
                "raw load",
                timed(reader.fold(&history_subject("full"), 0, Balance::default())),
            )
            .await?;
            ms[0] += t;
            let (t, (eda_full, eda_full_version)) = bounded(
                "eda load",
                timed(async { Ok(loader.load::<History>("full").await?) }),
            )
            .await?;
            ms[1] += t;
            let (t, raw_snap) = bounded("raw load", timed(reader.load_snapshotted("snap"))).await?;
            ms[2] += t;
            let (t, (eda_snap, eda_snap_version)) = bounded(
                "eda load",
                timed(async { Ok(loader.load::<History>("snap").await?) }),
            )
            .await?;
            ms[3] += t;
            let expected = [
                (&raw_full, (&eda_full.0, eda_full_version), full_version),
                (&raw_snap, (&eda_snap.0, eda_snap_version), snap_version),
            ];
            for ((raw_state, raw_version), (eda_state, eda_version), version) in expected {
                if raw_state != eda_state
                    || *raw_version != version
                    || eda_version != version
                    || raw_state.postings != history
                {
                    return Err(format!(
                        "the loads disagree: raw {raw_state:?} at {raw_version}, eda {eda_state:?} at {eda_version}, expected {history} events at {version}"
                    )
                    .into());
                }
            }
        }
        let mean = |i: usize| ms[i] / counts.loads as f64;
        full.raw.push(mean(0));
        full.eda.push(mean(1));
        snap.raw.push(mean(2));
        snap.eda.push(mean(3));
    }
    app.shutdown().await?;
    drop(server);

    // Throughput ratios: appends/s, and loads/s (the inverse of a load's time).
    let rate_ratio = |p: &Pair| p.eda.median() / p.raw.median();
    let time_ratio = |p: &Pair| p.raw.median() / p.eda.median();
    let mut section = String::new();
    section.push_str("\n## Event store (event sourcing)\n\n");
    section.push_str(&format!(
        "Command: `cargo bench --bench event_store{}` (`scripts/bench` runs it): eda's \
         `EventStore` next to hand-written async-nats on the same nats-server, {rounds} round{}, \
         raw and eda interleaved in each round; min / median / max. Both sides send the same \
         headers with each append ({}); aggregate ids and subjects differ.\n\n",
        if quick { " -- --quick" } else { "" },
        if rounds == 1 { "" } else { "s" },
        eda_headers
            .iter()
            .map(|n| format!("`{n}`"))
            .collect::<Vec<_>>()
            .join(", "),
    ));
    section.push_str(
        "| scenario | count | raw async-nats (appends/s) | eda (appends/s) | eda / raw (medians) |\n\
         | --- | --- | --- | --- | --- |\n",
    );
    section.push_str(&format!(
        "| append, one aggregate (sequential, each expecting the last version) | {} | {} | {} | {:.2} |\n",
        counts.one,
        one.raw.summary(0),
        one.eda.summary(0),
        rate_ratio(&one)
    ));
    section.push_str(&format!(
        "| append, {AGGREGATES} aggregates × {} event{} ({TASKS} tasks, each owning 1/{TASKS} of them) | {} | {} | {} | {:.2} |\n",
        counts.per_aggregate,
        if counts.per_aggregate == 1 { "" } else { "s" },
        AGGREGATES as u64 * counts.per_aggregate,
        many.raw.summary(0),
        many.eda.summary(0),
        rate_ratio(&many)
    ));
    section.push_str(&format!(
        "\nLoad of one aggregate of {history} events (ms per load: mean of {} loads per round; \
         min / median / max of the rounds). Raw: an ordered pull consumer filtered to the \
         aggregate's subject, each payload decoded with serde_json and applied; with a \
         snapshot, raw reads eda's snapshot from `EDA_SNAPSHOTS` and the events after it the \
         same way. Both sides checked to fold the same state at the same version.\n\n\
         | load | raw async-nats (ms) | eda (ms) | eda / raw (loads/s, medians) |\n\
         | --- | --- | --- | --- |\n",
        counts.loads
    ));
    section.push_str(&format!(
        "| {history} events, no snapshot | {} | {} | {:.2} |\n",
        full.raw.summary(2),
        full.eda.summary(2),
        time_ratio(&full)
    ));
    section.push_str(&format!(
        "| snapshot at event {} + {TAIL} events after it | {} | {} | {:.2} |\n",
        history - TAIL,
        snap.raw.summary(2),
        snap.eda.summary(2),
        time_ratio(&snap)
    ));
    section.push_str(&format!(
        "\nThe snapshot makes eda's load {:.0} × faster than its full replay (medians).\n",
        full.eda.median() / snap.eda.median()
    ));

    if let Some(out) = out {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&out)?
            .write_all(section.as_bytes())?;
    }
    println!("{section}");
    println!(
        "event_store: append_one={:.2} append_many={:.2} load_10k={:.2} load_snapshot={:.2}",
        rate_ratio(&one),
        rate_ratio(&many),
        time_ratio(&full),
        time_ratio(&snap)
    );
    Ok(())
}
