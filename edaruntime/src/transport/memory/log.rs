//! The in-memory event log (event sourcing): a stream per aggregate type with one global
//! sequence, the same subject-sequence check as JetStream's
//! `Nats-Expected-Last-Subject-Sequence`, and a map of snapshots.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use futures_util::future::BoxFuture;

use tokio::sync::Notify;

use crate::port::{
    EventLog, Followed, LogAddress, LogError, LogFollower, LogRead, LogRecord, LEASE_TTL,
};

/// How long a follower waits for new messages before it returns none.
const FOLLOW_WAIT: Duration = Duration::from_millis(500);

/// Every aggregate stream and snapshot of one broker.
#[derive(Debug, Default)]
pub(crate) struct MemoryLog {
    inner: Arc<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    streams: Mutex<HashMap<String, MemoryStream>>,
    snapshots: Mutex<HashMap<String, Bytes>>,
    /// Where each durable follower of a stream is: `(stream, durable)` -> last delivered.
    positions: Mutex<HashMap<(String, String), u64>>,
    appended: Notify,
    /// Leases by key: holder, and until when.
    leases: Mutex<HashMap<String, (String, tokio::time::Instant)>>,
}

#[derive(Debug, Default)]
struct MemoryStream {
    sequence: u64,
    subjects: HashMap<String, Vec<LogRecord>>,
    /// Every message in stream order, with its subject (for followers).
    all: Vec<(String, LogRecord)>,
}

/// Every critical section is one lookup and one push: a panicking holder left the data
/// consistent.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl EventLog for MemoryLog {
    fn append<'a>(
        &'a self,
        at: &'a LogAddress,
        expected: u64,
        headers: Vec<(&'static str, String)>,
        payload: Bytes,
    ) -> BoxFuture<'a, Result<u64, LogError>> {
        Box::pin(async move {
            // As a broker's round trip: other writers get their turn between load and append.
            tokio::task::yield_now().await;
            let mut streams = lock(&self.inner.streams);
            let stream = streams.entry(at.stream.clone()).or_default();
            let records = stream.subjects.entry(at.subject.clone()).or_default();
            let last = records.last().map_or(0, |r| r.sequence);
            if last != expected {
                return Err(LogError::Conflict { actual: Some(last) });
            }
            stream.sequence += 1;
            let record = LogRecord {
                sequence: stream.sequence,
                time: SystemTime::now(),
                headers: headers
                    .into_iter()
                    .map(|(name, value)| (name.to_owned(), value))
                    .collect(),
                payload,
            };
            records.push(record.clone());
            stream.all.push((at.subject.clone(), record));
            let sequence = stream.sequence;
            drop(streams);
            self.inner.appended.notify_waiters();
            Ok(sequence)
        })
    }

    fn read<'a>(
        &'a self,
        at: &'a LogAddress,
        after: u64,
        _last: Option<u64>,
    ) -> BoxFuture<'a, Result<LogRead, LogError>> {
        Box::pin(async move {
            tokio::task::yield_now().await;
            let streams = lock(&self.inner.streams);
            let Some(records) = streams
                .get(&at.stream)
                .and_then(|s| s.subjects.get(&at.subject))
            else {
                return Ok(LogRead::default());
            };
            let from = records.partition_point(|r| r.sequence <= after);
            Ok(LogRead {
                records: records[from..].to_vec(),
                last: records.last().map_or(0, |r| r.sequence),
            })
        })
    }

    fn snapshot<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<Bytes>, LogError>> {
        Box::pin(async move { Ok(lock(&self.inner.snapshots).get(key).cloned()) })
    }

    fn put_snapshot<'a>(
        &'a self,
        key: &'a str,
        value: Bytes,
    ) -> BoxFuture<'a, Result<(), LogError>> {
        Box::pin(async move {
            lock(&self.inner.snapshots).insert(key.to_owned(), value);
            Ok(())
        })
    }

    fn follow<'a>(
        &'a self,
        at: &'a LogAddress,
        durable: &'a str,
    ) -> BoxFuture<'a, Result<Box<dyn LogFollower>, LogError>> {
        let follower = MemoryFollower {
            inner: Arc::clone(&self.inner),
            stream: at.stream.clone(),
            position: Position::Durable(durable.to_owned()),
        };
        Box::pin(async move { Ok(Box::new(follower) as Box<dyn LogFollower>) })
    }

    fn last_sequence<'a>(&'a self, at: &'a LogAddress) -> BoxFuture<'a, Result<u64, LogError>> {
        let last = lock(&self.inner.streams)
            .get(&at.stream)
            .map_or(0, |s| s.sequence);
        Box::pin(async move { Ok(last) })
    }

    fn lease<'a>(&'a self, key: &'a str, holder: &'a str) -> BoxFuture<'a, Result<bool, LogError>> {
        let now = tokio::time::Instant::now();
        let mut leases = lock(&self.inner.leases);
        let free = leases
            .get(key)
            .is_none_or(|(h, until)| h == holder || *until <= now);
        if free {
            leases.insert(key.to_owned(), (holder.to_owned(), now + LEASE_TTL));
        }
        Box::pin(async move { Ok(free) })
    }

    fn release<'a>(&'a self, key: &'a str, holder: &'a str) -> BoxFuture<'a, Result<(), LogError>> {
        let mut leases = lock(&self.inner.leases);
        if leases.get(key).is_some_and(|(h, _)| h == holder) {
            leases.remove(key);
        }
        Box::pin(async { Ok(()) })
    }

    fn read_stream<'a>(
        &'a self,
        at: &'a LogAddress,
        after: u64,
    ) -> BoxFuture<'a, Result<Box<dyn LogFollower>, LogError>> {
        let follower = MemoryFollower {
            inner: Arc::clone(&self.inner),
            stream: at.stream.clone(),
            position: Position::Own(after),
        };
        Box::pin(async move { Ok(Box::new(follower) as Box<dyn LogFollower>) })
    }
}

/// Where a follower is: kept by the broker under a durable name, or by the follower itself.
enum Position {
    Durable(String),
    Own(u64),
}

/// A follower in memory. A durable one's position is kept by the broker, so a new follower of
/// the same name goes on after what the last one was handed (the in-memory broker does not
/// crash; what a stopped app held unacknowledged is not handed out again).
struct MemoryFollower {
    inner: Arc<Inner>,
    stream: String,
    position: Position,
}

impl MemoryFollower {
    fn take(&mut self) -> Vec<Followed> {
        let streams = lock(&self.inner.streams);
        let mut positions = lock(&self.inner.positions);
        let position = match &mut self.position {
            Position::Durable(durable) => positions
                .entry((self.stream.clone(), durable.clone()))
                .or_insert(0),
            Position::Own(position) => position,
        };
        let Some(stream) = streams.get(&self.stream) else {
            return Vec::new();
        };
        let from = stream.all.partition_point(|(_, r)| r.sequence <= *position);
        let taken: Vec<Followed> = stream.all[from..]
            .iter()
            .map(|(subject, record)| Followed {
                redelivered: false,
                subject: subject.clone(),
                record: record.clone(),
            })
            .collect();
        if let Some(last) = taken.last() {
            *position = last.record.sequence;
        }
        taken
    }
}

impl LogFollower for MemoryFollower {
    fn next(&mut self) -> BoxFuture<'_, Result<Vec<Followed>, LogError>> {
        Box::pin(async move {
            let inner = Arc::clone(&self.inner);
            let appended = inner.appended.notified();
            let taken = self.take();
            if !taken.is_empty() {
                return Ok(taken);
            }
            let _ = tokio::time::timeout(FOLLOW_WAIT, appended).await;
            Ok(self.take())
        })
    }

    fn ack(&mut self, _sequence: u64) -> BoxFuture<'_, Result<(), LogError>> {
        Box::pin(async { Ok(()) })
    }
}
