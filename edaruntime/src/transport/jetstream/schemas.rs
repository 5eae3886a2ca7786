//! The schema registry while the app runs. Startup registers this binary's schemas and stops on
//! a different fingerprint (`kv.rs`); this reads the entries again while the app runs, one per
//! poll, so that a registration changed behind a running service (its entry deleted, then
//! registered by a service with another schema under the same version) is logged as an error
//! naming both fingerprints, and a deleted entry is registered again.

use std::collections::HashMap;

use async_nats::jetstream::kv;

use super::JetStream;
use crate::registry;

/// One registry entry this binary registered.
#[derive(Debug)]
struct Entry {
    /// `<name>.v<version>`.
    key: String,
    name: String,
    version: u32,
    /// This binary's fingerprint.
    fingerprint: String,
}

/// What the running app keeps between checks of the registry.
#[derive(Debug)]
pub(crate) struct SchemaWatch {
    entries: Vec<Entry>,
    /// The entry the next check reads.
    next: usize,
    /// The bucket, bound at the first check (and again after an error).
    store: Option<kv::Store>,
    /// Per key, the other fingerprint reported last, so that one change is logged once.
    reported: HashMap<String, String>,
}

impl JetStream {
    /// The entries this binary registered at startup, to check while the app runs.
    pub(crate) fn schema_watch(&self) -> SchemaWatch {
        let mut entries: Vec<Entry> = Vec::new();
        for event in registry::catalog().events {
            let key = format!("{}.v{}", event.name, event.version);
            // Types of one shape share a key (types of different shapes stop `build`).
            if entries.iter().all(|e| e.key != key) {
                entries.push(Entry {
                    key,
                    name: event.name,
                    version: event.version,
                    fingerprint: event.fingerprint,
                });
            }
        }
        SchemaWatch {
            entries,
            next: 0,
            store: None,
            reported: HashMap::new(),
        }
    }

    /// Reads the next of this binary's entries in the registry (one per call, in turn, so
    /// that the registry sees one read per poll and instance however many events there are).
    /// Another fingerprint there is logged as an error naming both, once per change; a
    /// missing entry is registered again. Errors reading the bucket are left to the next poll.
    pub(crate) async fn check_next_schema(&self, watch: &mut SchemaWatch) {
        if watch.entries.is_empty() {
            return;
        }
        let index = watch.next % watch.entries.len();
        watch.next = index + 1;
        let bucket = &self.settings.topology.schemas_bucket;
        let store = match &watch.store {
            Some(store) => store.clone(),
            None => match self.context.get_key_value(bucket).await {
                Ok(store) => watch.store.insert(store).clone(),
                Err(e) => {
                    tracing::debug!(bucket = %bucket, error = %e, "cannot bind the schema registry");
                    return;
                }
            },
        };
        let entry = &watch.entries[index];
        let stored = match store.get(&entry.key).await {
            Ok(stored) => stored,
            Err(e) => {
                tracing::debug!(key = %entry.key, error = %e, "cannot read the schema registry");
                watch.store = None;
                return;
            }
        };
        let Some(stored) = stored else {
            // Deleted (or purged) while this service runs with the schema: say so again, so
            // that a service with another schema under this version cannot start unnoticed.
            match self.register_schemas(&store).await {
                Ok(()) => tracing::warn!(
                    event = %entry.name,
                    version = entry.version,
                    fingerprint = %entry.fingerprint,
                    bucket = %bucket,
                    "the registry entry of an event this service runs was deleted; registered again"
                ),
                Err(e) => tracing::error!(error = %e, "cannot register the schemas again"),
            }
            return;
        };
        let registered = serde_json::from_slice::<serde_json::Value>(&stored)
            .ok()
            .and_then(|v| v["fingerprint"].as_str().map(str::to_owned))
            .unwrap_or_default();
        if registered == entry.fingerprint {
            watch.reported.remove(&entry.key);
        } else if watch.reported.get(&entry.key) != Some(&registered) {
            tracing::error!(
                event = %entry.name,
                version = entry.version,
                this_binary = %entry.fingerprint,
                registry = %registered,
                bucket = %bucket,
                "the schema registry has another fingerprint for an event this service runs: \
                 a service with another schema under this version registered it while this one \
                 runs, so events of one may not decode in the other (dead-lettered as `decode`); \
                 give the changed schema a new version"
            );
            watch.reported.insert(entry.key.clone(), registered);
        }
    }
}
