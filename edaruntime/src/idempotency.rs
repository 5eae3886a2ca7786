//! Processed-id stores: how a handler knows it already handled an event.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use futures_util::future::BoxFuture;

/// Result of recording a processed id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recorded {
    /// This call stored it.
    Created,
    /// It was already there (another worker recorded it first).
    AlreadyPresent,
}

/// The store failed; delivery naks the message and tries again later.
#[derive(Debug, Clone)]
pub struct StoreError(pub String);

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for StoreError {}

/// Where processed ids (`<service>.<handler>.<event id>`) are kept. `record` must be an
/// atomic create: of two workers holding one event, exactly one gets [`Recorded::Created`].
pub trait IdempotencyStore: Send + Sync + fmt::Debug + 'static {
    /// Whether `key` was recorded.
    fn contains<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<bool, StoreError>>;
    /// Records `key` atomically.
    fn record<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Recorded, StoreError>>;
}

/// An in-process store that forgets ids after a TTL (24 h by default, like `EDA_PROCESSED`).
#[derive(Debug)]
pub struct MemoryStore {
    ttl: Duration,
    inner: Mutex<Entries>,
}

#[derive(Debug, Default)]
struct Entries {
    by_key: HashMap<String, Instant>,
    order: VecDeque<(Instant, String)>,
}

impl MemoryStore {
    /// A store keeping ids for `ttl`.
    pub fn new(ttl: Duration) -> MemoryStore {
        MemoryStore {
            ttl,
            inner: Mutex::new(Entries::default()),
        }
    }

    fn with_entries<R>(&self, f: impl FnOnce(&mut Entries) -> R) -> Result<R, StoreError> {
        let mut entries = self
            .inner
            .lock()
            .map_err(|_| StoreError("the in-memory store was poisoned by a panic".into()))?;
        let now = Instant::now();
        while let Some((at, _)) = entries.order.front() {
            if now.duration_since(*at) < self.ttl {
                break;
            }
            if let Some((at, key)) = entries.order.pop_front() {
                if entries.by_key.get(&key) == Some(&at) {
                    entries.by_key.remove(&key);
                }
            }
        }
        Ok(f(&mut entries))
    }
}

impl Default for MemoryStore {
    fn default() -> Self {
        MemoryStore::new(Duration::from_secs(24 * 3600))
    }
}

impl IdempotencyStore for MemoryStore {
    fn contains<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<bool, StoreError>> {
        let found = self.with_entries(|e| e.by_key.contains_key(key));
        Box::pin(async move { found })
    }

    fn record<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Recorded, StoreError>> {
        let recorded = self.with_entries(|e| {
            if e.by_key.contains_key(key) {
                return Recorded::AlreadyPresent;
            }
            let now = Instant::now();
            e.by_key.insert(key.to_owned(), now);
            e.order.push_back((now, key.to_owned()));
            Recorded::Created
        });
        Box::pin(async move { recorded })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn record_is_an_atomic_create() {
        let store = MemoryStore::default();
        assert!(!store.contains("s.h.1").await.unwrap());
        assert_eq!(store.record("s.h.1").await.unwrap(), Recorded::Created);
        assert_eq!(
            store.record("s.h.1").await.unwrap(),
            Recorded::AlreadyPresent
        );
        assert!(store.contains("s.h.1").await.unwrap());
    }

    #[tokio::test]
    async fn ids_expire_after_the_ttl() {
        let store = MemoryStore::new(Duration::from_millis(20));
        store.record("k").await.unwrap();
        std::thread::sleep(Duration::from_millis(40));
        assert!(!store.contains("k").await.unwrap());
    }
}
