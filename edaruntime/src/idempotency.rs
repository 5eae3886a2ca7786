//! Processed-id stores: how a handler knows it already handled an event.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use futures_util::future::BoxFuture;

use crate::error::BoxError;

/// Result of recording a processed id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recorded {
    /// This call stored it.
    Created,
    /// It was already there (another worker recorded it first).
    AlreadyPresent,
}

/// What a key's record says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Found {
    /// The event was handled: ack it without calling the handler.
    Processed,
    /// The event was dead-lettered, but terminating the original was not confirmed:
    /// terminate it without calling the handler.
    DeadLettered,
}

/// What taking an in-progress claim came to ([`Idempotency::Claim`](crate::handler::Idempotency::Claim)).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claim {
    /// This worker holds the claim: it runs the handler.
    Taken,
    /// Another worker holds it for this long still: hand the message back for that long.
    HeldFor(Duration),
}

/// The store failed. After a successful handler delivery retries the record in place;
/// before the handler, a failed look-up is a failed attempt (nak with backoff).
#[derive(Debug)]
pub struct StoreError {
    message: String,
    source: Option<BoxError>,
}

impl StoreError {
    /// The store failed with `source`.
    pub fn new(message: impl Into<String>, source: impl Into<BoxError>) -> StoreError {
        StoreError {
            message: message.into(),
            source: Some(source.into()),
        }
    }

    /// The store failed, saying `message`.
    pub fn message(message: impl Into<String>) -> StoreError {
        StoreError {
            message: message.into(),
            source: None,
        }
    }
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.source {
            Some(source) => write!(f, "{}: {source}", self.message),
            None => f.write_str(&self.message),
        }
    }
}

impl std::error::Error for StoreError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source
            .as_deref()
            .map(|e| e as &(dyn std::error::Error + 'static))
    }
}

/// Where processed ids (`<service>.<handler>.<event id>`) are kept. `record` must be an
/// atomic create: of two workers holding one event, exactly one gets [`Recorded::Created`].
pub trait IdempotencyStore: Send + Sync + fmt::Debug + 'static {
    /// What `key`'s record says, if there is one.
    fn lookup<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<Found>, StoreError>>;
    /// Records `key` as processed, atomically.
    fn record<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Recorded, StoreError>>;
    /// Records that `key`'s event was dead-lettered (overwriting nothing but an absent key).
    fn record_dead_letter<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<(), StoreError>>;
    /// Counts one hand-back of `key`'s message that never reached its handler (it arrived
    /// after shutdown started): its next delivery does not count it as an attempt.
    fn record_hand_back<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<(), StoreError>>;
    /// How many hand-backs of `key`'s message were counted.
    fn hand_backs<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<u32, StoreError>>;
    /// Takes the in-progress claim `key` for `ttl`, atomically: of two workers asking at
    /// once, one gets [`Claim::Taken`]. A claim past its `ttl` (its holder died) is taken over.
    fn claim<'a>(&'a self, key: &'a str, ttl: Duration)
        -> BoxFuture<'a, Result<Claim, StoreError>>;
    /// Gives the claim `key` up (the attempt failed: the next one may take it at once).
    fn release<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<(), StoreError>>;
}

/// An in-process store that forgets ids after a TTL (24 h by default, like `EDA_PROCESSED`).
#[derive(Debug)]
pub struct MemoryStore {
    ttl: Duration,
    inner: Mutex<Entries>,
}

#[derive(Debug, Default)]
struct Entries {
    by_key: HashMap<String, (Instant, Found)>,
    hand_backs: HashMap<String, u32>,
    claims: HashMap<String, Instant>,
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
            .map_err(|_| StoreError::message("the in-memory store was poisoned by a panic"))?;
        let now = Instant::now();
        while let Some((at, _)) = entries.order.front() {
            if now.duration_since(*at) < self.ttl {
                break;
            }
            if let Some((at, key)) = entries.order.pop_front() {
                if entries.by_key.get(&key).map(|(t, _)| *t) == Some(at) {
                    entries.by_key.remove(&key);
                }
            }
        }
        entries.claims.retain(|_, until| *until > now);
        Ok(f(&mut entries))
    }
}

impl Entries {
    fn create(&mut self, key: &str, found: Found) -> Recorded {
        if self.by_key.contains_key(key) {
            return Recorded::AlreadyPresent;
        }
        let now = Instant::now();
        self.by_key.insert(key.to_owned(), (now, found));
        self.order.push_back((now, key.to_owned()));
        Recorded::Created
    }
}

impl Default for MemoryStore {
    fn default() -> Self {
        MemoryStore::new(Duration::from_secs(24 * 3600))
    }
}

impl IdempotencyStore for MemoryStore {
    fn lookup<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<Found>, StoreError>> {
        let found = self.with_entries(|e| e.by_key.get(key).map(|(_, found)| *found));
        Box::pin(async move { found })
    }

    fn record<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Recorded, StoreError>> {
        let recorded = self.with_entries(|e| e.create(key, Found::Processed));
        Box::pin(async move { recorded })
    }

    fn record_dead_letter<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<(), StoreError>> {
        let recorded = self.with_entries(|e| {
            e.create(key, Found::DeadLettered);
        });
        Box::pin(async move { recorded })
    }

    fn record_hand_back<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<(), StoreError>> {
        let recorded = self.with_entries(|e| {
            *e.hand_backs.entry(key.to_owned()).or_default() += 1;
        });
        Box::pin(async move { recorded })
    }

    fn hand_backs<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<u32, StoreError>> {
        let count = self.with_entries(|e| e.hand_backs.get(key).copied().unwrap_or(0));
        Box::pin(async move { count })
    }

    fn claim<'a>(
        &'a self,
        key: &'a str,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<Claim, StoreError>> {
        // Expired claims were dropped by `with_entries`: one still here is held.
        let claimed = self.with_entries(|e| {
            let now = Instant::now();
            match e.claims.get(key) {
                Some(until) => Claim::HeldFor(until.saturating_duration_since(now)),
                None => {
                    e.claims.insert(key.to_owned(), now + ttl);
                    Claim::Taken
                }
            }
        });
        Box::pin(async move { claimed })
    }

    fn release<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<(), StoreError>> {
        let released = self.with_entries(|e| {
            e.claims.remove(key);
        });
        Box::pin(async move { released })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn record_is_an_atomic_create() {
        let store = MemoryStore::default();
        assert_eq!(store.lookup("s.h.1").await.unwrap(), None);
        assert_eq!(store.record("s.h.1").await.unwrap(), Recorded::Created);
        assert_eq!(
            store.record("s.h.1").await.unwrap(),
            Recorded::AlreadyPresent
        );
        assert_eq!(store.lookup("s.h.1").await.unwrap(), Some(Found::Processed));
        store.record_dead_letter("s.h.2").await.unwrap();
        assert_eq!(
            store.lookup("s.h.2").await.unwrap(),
            Some(Found::DeadLettered)
        );
    }

    #[tokio::test]
    async fn a_claim_is_held_until_released_or_expired() {
        let store = MemoryStore::default();
        let ttl = Duration::from_secs(60);
        assert_eq!(store.claim("c", ttl).await.unwrap(), Claim::Taken);
        match store.claim("c", ttl).await.unwrap() {
            Claim::HeldFor(left) => assert!(left > Duration::from_secs(50), "{left:?}"),
            other => panic!("a second claim was {other:?}"),
        }
        store.release("c").await.unwrap();
        assert_eq!(store.claim("c", ttl).await.unwrap(), Claim::Taken);
        assert_eq!(
            store.claim("d", Duration::from_millis(10)).await.unwrap(),
            Claim::Taken
        );
        std::thread::sleep(Duration::from_millis(30));
        assert_eq!(
            store.claim("d", ttl).await.unwrap(),
            Claim::Taken,
            "taken over"
        );
    }

    #[tokio::test]
    async fn ids_expire_after_the_ttl() {
        let store = MemoryStore::new(Duration::from_millis(20));
        store.record("k").await.unwrap();
        std::thread::sleep(Duration::from_millis(40));
        assert_eq!(store.lookup("k").await.unwrap(), None);
    }
}
