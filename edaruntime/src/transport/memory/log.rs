//! The in-memory event log (event sourcing): a stream per aggregate type with one global
//! sequence, the same subject-sequence check as JetStream's
//! `Nats-Expected-Last-Subject-Sequence`, and a map of snapshots.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::SystemTime;

use bytes::Bytes;
use futures_util::future::BoxFuture;

use crate::port::{EventLog, LogAddress, LogError, LogRead, LogRecord};

/// Every aggregate stream and snapshot of one broker.
#[derive(Debug, Default)]
pub(crate) struct MemoryLog {
    streams: Mutex<HashMap<String, MemoryStream>>,
    snapshots: Mutex<HashMap<String, Bytes>>,
}

#[derive(Debug, Default)]
struct MemoryStream {
    sequence: u64,
    subjects: HashMap<String, Vec<LogRecord>>,
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
            let mut streams = lock(&self.streams);
            let stream = streams.entry(at.stream.clone()).or_default();
            let records = stream.subjects.entry(at.subject.clone()).or_default();
            let last = records.last().map_or(0, |r| r.sequence);
            if last != expected {
                return Err(LogError::Conflict { actual: Some(last) });
            }
            stream.sequence += 1;
            records.push(LogRecord {
                sequence: stream.sequence,
                time: SystemTime::now(),
                headers: headers
                    .into_iter()
                    .map(|(name, value)| (name.to_owned(), value))
                    .collect(),
                payload,
            });
            Ok(stream.sequence)
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
            let streams = lock(&self.streams);
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
        Box::pin(async move { Ok(lock(&self.snapshots).get(key).cloned()) })
    }

    fn put_snapshot<'a>(
        &'a self,
        key: &'a str,
        value: Bytes,
    ) -> BoxFuture<'a, Result<(), LogError>> {
        Box::pin(async move {
            lock(&self.snapshots).insert(key.to_owned(), value);
            Ok(())
        })
    }
}
