//! Processed ids in the `EDA_PROCESSED` key-value bucket: `record` is the bucket's atomic
//! create, so of two workers holding one event exactly one records it.

use std::fmt;
use std::sync::Arc;

use async_nats::jetstream::kv;
use bytes::Bytes;
use futures_util::future::BoxFuture;
use sha2::{Digest, Sha256};

use super::JetStream;
use crate::error::Error;
use crate::idempotency::{Found, IdempotencyStore, Recorded, StoreError};

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

    fn record_dead_letter<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            self.create(key, Bytes::from_static(DEAD_LETTERED))
                .await
                .map(|_| ())
        })
    }
}

impl KvStore {
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
