//! The key-value buckets: processed ids in `EDA_PROCESSED` (`record` is the bucket's atomic
//! create, so of two workers holding one event exactly one records it), and the schema
//! registry `EDA_SCHEMAS`.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_nats::jetstream::kv;
use bytes::Bytes;
use futures_util::future::BoxFuture;
use sha2::{Digest, Sha256};

use super::provision::BUCKET;
use super::JetStream;
use crate::error::{Error, ErrorKind};
use crate::idempotency::{Claim, Found, IdempotencyStore, Recorded, StoreError};
use crate::registry;

/// The value of a key whose event was dead-lettered (a processed id's value is empty).
const DEAD_LETTERED: &[u8] = b"dlq";

impl JetStream {
    /// The processed-id store on the `EDA_PROCESSED` bucket.
    pub(crate) async fn store(&self) -> Result<Arc<dyn IdempotencyStore>, Error> {
        let t = &self.settings.topology;
        let bucket = self
            .ensure_bucket(&t.processed_bucket, t.processed_ttl)
            .await?;
        Ok(Arc::new(KvStore { bucket }))
    }

    /// Writes each event version's schema to the registry if absent; a different fingerprint
    /// already there is a startup error.
    pub(super) async fn register_schemas(&self, schemas: &kv::Store) -> Result<(), Error> {
        let bucket = &self.settings.topology.schemas_bucket;
        let mut problems = Vec::new();
        let mut seen: Vec<(String, String)> = Vec::new();
        for event in registry::catalog().events {
            let key = format!("{}.v{}", event.name, event.version);
            if let Some((_, other)) = seen.iter().find(|(k, _)| *k == key) {
                if *other != event.fingerprint {
                    problems.push(format!(
                        "event `{}` v{} has two different schemas in this binary (fingerprints `{other}` and `{}`): give one of them another version",
                        event.name, event.version, event.fingerprint
                    ));
                }
                continue;
            }
            seen.push((key.clone(), event.fingerprint.clone()));
            let value = serde_json::json!({
                "name": event.name,
                "version": event.version,
                "fingerprint": event.fingerprint,
                "schema": event.schema,
            });
            // A `Value` always serializes.
            let bytes = Bytes::from(serde_json::to_vec(&value).unwrap_or_default());
            match create_when_ready(schemas, &key, bytes).await {
                Ok(_) => {}
                Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => {
                    let stored = schemas.get(&key).await.map_err(|e| {
                        let message = format!("cannot read schema `{key}` from `{bucket}`: {e}");
                        Error::with_source(BUCKET, message, e)
                    })?;
                    let registered = stored
                        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
                        .and_then(|v| v["fingerprint"].as_str().map(str::to_owned))
                        .unwrap_or_default();
                    if registered != event.fingerprint {
                        problems.push(format!(
                            "event `{}` v{}: this binary's schema has fingerprint `{}` but the registry `{bucket}` has `{registered}`; another service publishes or reads a different schema under this version — give the changed schema a new version",
                            event.name, event.version, event.fingerprint
                        ));
                    }
                }
                Err(e) => {
                    let message = format!("cannot register schema `{key}` in `{bucket}`: {e}");
                    return Err(Error::with_source(BUCKET, message, e));
                }
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(Error::new(ErrorKind::SchemaConflict, problems.join("; ")))
        }
    }
}

/// How long a write to a bucket created a moment ago waits for its stream to have a leader.
const LEADER_WAIT: Duration = Duration::from_secs(30);

/// `create` on a bucket that may have been created a moment ago: on a cluster its stream
/// may have no leader yet, and the server answers "no responders" until it has one (seen
/// when services start with a new cluster). Retried for at most [`LEADER_WAIT`].
async fn create_when_ready(
    store: &kv::Store,
    key: &str,
    value: Bytes,
) -> Result<u64, kv::CreateError> {
    let deadline = tokio::time::Instant::now() + LEADER_WAIT;
    let mut delay = Duration::from_millis(100);
    loop {
        match store.create(key, value.clone()).await {
            Err(e)
                if e.kind() != kv::CreateErrorKind::AlreadyExists
                    && e.to_string().contains("no responders")
                    && tokio::time::Instant::now() + delay < deadline =>
            {
                tracing::warn!(key, error = %e, "the bucket's stream has no leader yet; waiting");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(2));
            }
            done => return done,
        }
    }
}

/// Processed ids in a JetStream key-value bucket.
struct KvStore {
    bucket: kv::Store,
}

impl fmt::Debug for KvStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("KvStore")
    }
}

/// KV keys allow `[-/_=.a-zA-Z0-9]`: ids from plain clients outside that set are hashed.
fn kv_key(key: &str) -> String {
    let plain = key.len() <= 256
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-/_=.".contains(c))
        && !key.starts_with('.')
        && !key.ends_with('.')
        && !key.contains("..");
    if plain {
        return key.to_owned();
    }
    let digest = Sha256::digest(key.as_bytes());
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

impl IdempotencyStore for KvStore {
    fn lookup<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<Found>, StoreError>> {
        Box::pin(async move {
            let value = self
                .bucket
                .get(kv_key(key))
                .await
                .map_err(|e| StoreError::new(format!("cannot read `{key}`"), e))?;
            Ok(value.map(|v| {
                if v.as_ref() == DEAD_LETTERED {
                    Found::DeadLettered
                } else {
                    Found::Processed
                }
            }))
        })
    }

    fn record<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Recorded, StoreError>> {
        Box::pin(async move { self.create(key, Bytes::new()).await })
    }

    fn record_hand_back<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            // Read, then write: only the one instance holding the message hands it back.
            let next = self.count(key).await? + 1;
            self.bucket
                .put(kv_key(key), Bytes::from(next.to_string()))
                .await
                .map(|_| ())
                .map_err(|e| StoreError::new(format!("cannot record `{key}`"), e))
        })
    }

    fn hand_backs<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<u32, StoreError>> {
        Box::pin(async move { self.count(key).await })
    }

    fn record_dead_letter<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            self.create(key, Bytes::from_static(DEAD_LETTERED))
                .await
                .map(|_| ())
        })
    }

    fn claim<'a>(
        &'a self,
        key: &'a str,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<Claim, StoreError>> {
        Box::pin(async move {
            // The value is the claim's end in Unix milliseconds: buckets have one max age for
            // every key (per-key TTLs need nats-server 2.11), so expiry is read, not enforced.
            let now = unix_millis(SystemTime::now());
            let until = Bytes::from((now + ttl.as_millis() as u64).to_string());
            if self.create(key, until.clone()).await? == Recorded::Created {
                return Ok(Claim::Taken);
            }
            let held = self
                .bucket
                .entry(kv_key(key))
                .await
                .map_err(|e| StoreError::new(format!("cannot read the claim `{key}`"), e))?;
            let Some(held) = held else {
                // Gone between the two calls (expired with the bucket's max age).
                return Ok(Claim::HeldFor(Duration::ZERO));
            };
            let held_until = std::str::from_utf8(&held.value)
                .ok()
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0);
            if held_until > now {
                return Ok(Claim::HeldFor(Duration::from_millis(held_until - now)));
            }
            // Expired (its holder stopped or stalled past its timeout): taken over, unless
            // another worker takes it over first.
            match self.bucket.update(kv_key(key), until, held.revision).await {
                Ok(_) => Ok(Claim::Taken),
                Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => {
                    Ok(Claim::HeldFor(ttl))
                }
                Err(e) => Err(StoreError::new(format!("cannot take over `{key}`"), e)),
            }
        })
    }

    fn release<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            self.bucket
                .delete(kv_key(key))
                .await
                .map_err(|e| StoreError::new(format!("cannot give up `{key}`"), e))
        })
    }
}

fn unix_millis(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl KvStore {
    async fn count(&self, key: &str) -> Result<u32, StoreError> {
        let value = self
            .bucket
            .get(kv_key(key))
            .await
            .map_err(|e| StoreError::new(format!("cannot read `{key}`"), e))?;
        Ok(value
            .and_then(|v| std::str::from_utf8(&v).ok()?.parse().ok())
            .unwrap_or(0))
    }

    async fn create(&self, key: &str, value: Bytes) -> Result<Recorded, StoreError> {
        match self.bucket.create(kv_key(key), value).await {
            Ok(_) => Ok(Recorded::Created),
            Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => {
                Ok(Recorded::AlreadyPresent)
            }
            Err(e) => Err(StoreError::new(format!("cannot record `{key}`"), e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::kv_key;

    #[test]
    fn kv_keys_are_kept_when_valid_and_hashed_otherwise() {
        assert_eq!(kv_key("svc.handler.0190-abc"), "svc.handler.0190-abc");
        assert_eq!(
            kv_key("svc.handler.a..b").len(),
            64,
            "an empty token is hashed"
        );
        assert_eq!(kv_key(&"x".repeat(300)).len(), 64, "a long key is hashed");
        let hashed = kv_key("svc.handler.order 7:placed");
        assert_eq!(hashed.len(), 64);
        assert!(hashed.chars().all(|c| c.is_ascii_hexdigit()));
    }
}
