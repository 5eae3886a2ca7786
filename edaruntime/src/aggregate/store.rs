//! [`EventStore`]: load (snapshot + tail), append with optimistic concurrency, and execute
//! (load, decide, append, retried on conflict), on whichever transport the app runs.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use serde::Deserialize;

use super::error::{EventStoreError, EventStoreErrorKind, ExecuteError};
use super::replay::Replay;
use super::{Aggregate, AggregateEvents, EncodedEvent};
use crate::config::{Topology, WireFormat};
use crate::event::Metadata;
use crate::port::{EventLog, LogAddress, LogError, LogRead};
use crate::wire;

/// Events past the last snapshot after which a new one is written, unless set.
pub const DEFAULT_SNAPSHOT_EVERY: u64 = 100;
/// How many times [`EventStore::execute`] tries, unless set.
pub const DEFAULT_MAX_ATTEMPTS: u32 = 10;

/// The first wait after a conflict in `execute`; it doubles each time, up to the cap.
const FIRST_BACKOFF: Duration = Duration::from_millis(2);
/// The longest wait between two attempts of `execute`.
const MAX_BACKOFF: Duration = Duration::from_secs(1);
/// The longest aggregate id.
const MAX_ID_LEN: usize = 128;

/// The event store of a running app ([`RunningApp::event_store`](crate::RunningApp::event_store)):
/// each aggregate's events on a subject of their own, appended with optimistic concurrency.
/// Cheap to clone. See the [module docs](crate::aggregate) for an example.
///
/// On NATS the events of aggregate type `t` live in stream `EDA_AGG_<T>` (created on first
/// use), aggregate `id` on subject `agg.<t>.<id>`, each message with eda's headers and
/// `Eda-Event`; an aggregate's version is the stream sequence of its last message (0 for a
/// new one), and an append sends it as `Nats-Expected-Last-Subject-Sequence`, so the broker
/// refuses an append that does not follow the version it was decided on. Snapshots go to the
/// key-value bucket `EDA_SNAPSHOTS`, key `<t>.<id>`. In memory the same rules hold.
#[derive(Clone)]
pub struct EventStore {
    log: Arc<dyn EventLog>,
    service: Arc<str>,
    stream_prefix: Arc<str>,
    subject_prefix: Arc<str>,
    snapshot_every: u64,
    max_attempts: u32,
}

impl fmt::Debug for EventStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EventStore")
            .field("service", &self.service)
            .field("log", &self.log)
            .field("snapshot_every", &self.snapshot_every)
            .field("max_attempts", &self.max_attempts)
            .finish()
    }
}

/// A snapshot as stored, `{"snapshot_version":1,"sequence":20,"state":{...}}`: the state's
/// shape version, the stream sequence it stands at, and the state's JSON. Written by hand, so
/// that no `Serialize` type of eda's own shows in users' trait diagnostics.
fn snapshot_json<A: Aggregate>(state: &A, sequence: u64) -> Result<Vec<u8>, serde_json::Error> {
    let state = serde_json::to_vec(state)?;
    let head = format!(
        r#"{{"snapshot_version":{},"sequence":{sequence},"state":"#,
        A::SNAPSHOT_VERSION
    );
    Ok([head.as_bytes(), &state, b"}"].concat())
}

#[derive(Deserialize)]
struct SnapshotHead {
    snapshot_version: u32,
    sequence: u64,
}

#[derive(Deserialize)]
struct SnapshotState<A> {
    state: A,
}

impl EventStore {
    pub(crate) fn new(log: Arc<dyn EventLog>, service: &str, topology: &Topology) -> EventStore {
        EventStore {
            log,
            service: Arc::from(service),
            stream_prefix: Arc::from(topology.aggregate_stream_prefix.as_str()),
            subject_prefix: Arc::from(topology.aggregate_subject_prefix.as_str()),
            snapshot_every: DEFAULT_SNAPSHOT_EVERY,
            max_attempts: DEFAULT_MAX_ATTEMPTS,
        }
    }

    /// Writes a snapshot once `events` events were applied past the last one (default
    /// [`DEFAULT_SNAPSHOT_EVERY`]; 0: never): after a successful `execute`, and on `load`.
    /// A snapshot that cannot be written is logged and skipped (the events are the truth).
    #[must_use]
    pub fn snapshot_every(mut self, events: u64) -> EventStore {
        self.snapshot_every = events;
        self
    }

    /// How many times [`EventStore::execute`] loads, decides and appends before it gives up on
    /// conflicts (default [`DEFAULT_MAX_ATTEMPTS`]; at least 1).
    #[must_use]
    pub fn max_attempts(mut self, attempts: u32) -> EventStore {
        self.max_attempts = attempts.max(1);
        self
    }

    /// The aggregate `id` of type `A` and its version: the snapshot, if a usable one is
    /// stored, and every event after it, each decoded with its upcast chain. A new aggregate
    /// is `A::default()` at version 0. An event this binary cannot decode (an unknown name, a
    /// version newer than it knows) is an error naming it.
    pub async fn load<A: Aggregate>(&self, id: &str) -> Result<(A, u64), EventStoreError> {
        let at = self.address::<A>(id)?;
        let mut replay = self.replayed::<A>(&at, id, true).await?;
        self.maybe_snapshot(&mut replay, id).await;
        Ok((replay.state, replay.version))
    }

    /// Like [`EventStore::load`], but from the first event, ignoring snapshots: to check
    /// them, or to see the history as this binary's code folds it now.
    pub async fn replay<A: Aggregate>(&self, id: &str) -> Result<(A, u64), EventStoreError> {
        let at = self.address::<A>(id)?;
        let replay = self.replayed::<A>(&at, id, false).await?;
        Ok((replay.state, replay.version))
    }

    /// Appends `events` to aggregate `id` if its version is still `expected` (0 for a new
    /// aggregate); returns the new version. If another writer appended since, nothing counts
    /// and the error's [`is_conflict`](EventStoreError::is_conflict) is true. Several events
    /// are all or nothing: each is stored only right after the one before it, and a load
    /// applies them only once all are stored in a row (an append cut off by a crash or by
    /// another writer counts for nothing). No events: `Ok(expected)`, nothing checked.
    pub async fn append<A: Aggregate>(
        &self,
        id: &str,
        expected: u64,
        events: &[A::Event],
    ) -> Result<u64, EventStoreError> {
        let at = self.address::<A>(id)?;
        self.append_at::<A>(&at, expected, events).await
    }

    /// Loads aggregate `id`, calls `decide` with its state, and appends the events it returns
    /// at the version it saw; on a conflict, reads what was appended meanwhile and decides
    /// again, up to [`EventStore::max_attempts`] times in all, waiting a little longer each
    /// time (2 ms doubling to 1 s, randomized). Returns the state with the new events applied
    /// and its version (unchanged when `decide` returned no events). `decide` may run several
    /// times: it should only look at the state. Its error ends `execute` at once as
    /// [`ExecuteError::Rejected`]; a store error (or conflicts on every attempt) is
    /// [`ExecuteError::Store`].
    pub async fn execute<A: Aggregate, E>(
        &self,
        id: &str,
        mut decide: impl FnMut(&A) -> Result<Vec<A::Event>, E> + Send,
    ) -> Result<(A, u64), ExecuteError<E>> {
        let at = self.address::<A>(id)?;
        let mut replay = self.replayed::<A>(&at, id, true).await?;
        let mut attempt = 1;
        loop {
            let events = match decide(&replay.state) {
                Ok(events) => events,
                Err(rejected) => return Err(ExecuteError::Rejected(rejected)),
            };
            if events.is_empty() {
                return Ok((replay.state, replay.version));
            }
            let actual = match self.append_at::<A>(&at, replay.version, &events).await {
                Ok(version) => {
                    replay.appended(&events, version);
                    self.maybe_snapshot(&mut replay, id).await;
                    return Ok((replay.state, replay.version));
                }
                Err(e) if e.is_conflict() && attempt < self.max_attempts => match e.kind() {
                    EventStoreErrorKind::Conflict { actual, .. } => *actual,
                    _ => None,
                },
                Err(e) => return Err(ExecuteError::Store(e)),
            };
            tokio::time::sleep(backoff(attempt)).await;
            attempt += 1;
            // Far behind (many writers at once): a snapshot is nearer than the tail.
            let gap = actual.map_or(0, |a| a.saturating_sub(replay.version));
            if self.snapshot_every > 0 && gap > self.snapshot_every {
                replay = self.replayed::<A>(&at, id, true).await?;
                continue;
            }
            let read = self.read(&at, replay.version, actual).await?;
            for record in &read.records {
                replay.record(record, &at)?;
            }
        }
    }

    /// The stream of aggregate type `kind` (its subject field empty): what the forwarder
    /// follows.
    pub(crate) fn stream_address(&self, kind: &str) -> LogAddress {
        let prefix = &self.subject_prefix;
        LogAddress {
            stream: format!("{}{}", self.stream_prefix, kind.to_ascii_uppercase()),
            stream_subjects: format!("{prefix}.{kind}.*"),
            subject: String::new(),
        }
    }

    /// The log underneath (for the forwarder).
    pub(crate) fn log(&self) -> Arc<dyn EventLog> {
        Arc::clone(&self.log)
    }

    /// Where aggregate `id` of type `A` lives, if the type and the id are usable.
    fn address<A: Aggregate>(&self, id: &str) -> Result<LogAddress, EventStoreError> {
        let kind = A::TYPE;
        let invalid = |why: String| Err(EventStoreError::new(EventStoreErrorKind::Invalid, why));
        if kind.is_empty()
            || !kind
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
        {
            return invalid(format!(
                "aggregate type `{kind}` cannot name a stream: use one token of lowercase letters, digits, `_` and `-`, e.g. `account`"
            ));
        }
        if id.is_empty()
            || id.len() > MAX_ID_LEN
            || !id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'=')
        {
            return invalid(format!(
                "aggregate id `{}` of `{kind}` cannot be stored: use 1 to {MAX_ID_LEN} letters, digits, `_`, `-` and `=` (no dots, spaces or wildcards), e.g. a UUID",
                id.escape_debug()
            ));
        }
        let prefix = &self.subject_prefix;
        Ok(LogAddress {
            stream: format!("{}{}", self.stream_prefix, kind.to_ascii_uppercase()),
            stream_subjects: format!("{prefix}.{kind}.*"),
            subject: format!("{prefix}.{kind}.{id}"),
        })
    }

    async fn replayed<A: Aggregate>(
        &self,
        at: &LogAddress,
        id: &str,
        use_snapshot: bool,
    ) -> Result<Replay<A>, EventStoreError> {
        let mut replay = match use_snapshot {
            true => self.snapshot::<A>(id).await,
            false => None,
        }
        .map_or_else(
            || Replay::new(A::default(), 0),
            |(s, at)| Replay::new(s, at),
        );
        let mut read = self.read(at, replay.version, None).await?;
        if read.last < replay.version {
            tracing::warn!(
                aggregate = A::TYPE,
                id,
                snapshot_at = replay.version,
                last = read.last,
                "the snapshot stands past the aggregate's last event (its stream was recreated?); ignored, replaying every event"
            );
            replay = Replay::new(A::default(), 0);
            read = self.read(at, 0, None).await?;
        }
        for record in &read.records {
            replay.record(record, at)?;
        }
        Ok(replay)
    }

    async fn read(
        &self,
        at: &LogAddress,
        after: u64,
        last: Option<u64>,
    ) -> Result<LogRead, EventStoreError> {
        self.log
            .read(at, after, last)
            .await
            .map_err(|e| broker_error(e, &format!("cannot read `{}`", at.subject)))
    }

    async fn append_at<A: Aggregate>(
        &self,
        at: &LogAddress,
        expected: u64,
        events: &[A::Event],
    ) -> Result<u64, EventStoreError> {
        let encoded = events
            .iter()
            .map(AggregateEvents::encode)
            .collect::<Result<Vec<EncodedEvent>, _>>()
            .map_err(|e| {
                EventStoreError::with_source(
                    EventStoreErrorKind::Encode,
                    format!("cannot encode an event of `{}` as JSON: {e}", at.subject),
                    e,
                )
            })?;
        let count = encoded.len();
        let mut position = expected;
        for (index, event) in encoded.into_iter().enumerate() {
            let metadata = Metadata::new(event.name, event.version, Arc::clone(&self.service));
            let mut headers = Vec::with_capacity(5);
            wire::encode_into(&metadata, WireFormat::Eda, false, |name, value| {
                headers.push((name, value.to_owned()))
            });
            headers.push((wire::EVENT, event.name.to_owned()));
            if count > 1 {
                headers.push((wire::BATCH, format!("{}/{count}", index + 1)));
            }
            match self
                .log
                .append(at, position, headers, Bytes::from(event.payload))
                .await
            {
                Ok(sequence) => position = sequence,
                Err(LogError::Conflict { actual }) => {
                    let now = actual.map_or_else(|| "unknown".to_owned(), |a| a.to_string());
                    let message = if index == 0 {
                        format!("conflict on `{}`: expected version {expected}, but it is at {now}: another writer appended first; load it again and decide again", at.subject)
                    } else {
                        format!("conflict on `{}` after {index} of {count} events: another writer appended in between, so none of them count; load it again and decide again", at.subject)
                    };
                    return Err(EventStoreError::new(
                        EventStoreErrorKind::Conflict { expected, actual },
                        message,
                    ));
                }
                Err(e) => {
                    return Err(broker_error(
                        e,
                        &format!("cannot append to `{}`", at.subject),
                    ))
                }
            }
        }
        Ok(position)
    }

    /// The usable snapshot of aggregate `id`, if any: anything else is logged and ignored.
    async fn snapshot<A: Aggregate>(&self, id: &str) -> Option<(A, u64)> {
        let key = snapshot_key::<A>(id);
        let bytes = match self.log.snapshot(&key).await {
            Ok(bytes) => bytes?,
            Err(e) => {
                let error = broker_error(e, "cannot read the snapshot");
                tracing::warn!(key, error = %error, "snapshot not read; replaying every event");
                return None;
            }
        };
        let head = match serde_json::from_slice::<SnapshotHead>(&bytes) {
            Ok(head) => head,
            Err(e) => {
                tracing::warn!(key, error = %e, "snapshot does not decode; ignored, replaying every event");
                return None;
            }
        };
        if head.snapshot_version != A::SNAPSHOT_VERSION {
            tracing::warn!(
                key,
                stored = head.snapshot_version,
                current = A::SNAPSHOT_VERSION,
                "snapshot of another SNAPSHOT_VERSION; ignored, replaying every event"
            );
            return None;
        }
        match serde_json::from_slice::<SnapshotState<A>>(&bytes) {
            Ok(snapshot) => Some((snapshot.state, head.sequence)),
            Err(e) => {
                tracing::warn!(key, error = %e, "snapshot state does not decode (the state type changed? raise SNAPSHOT_VERSION); ignored, replaying every event");
                None
            }
        }
    }

    /// Writes a snapshot of `replay` if enough events were applied since the last one.
    async fn maybe_snapshot<A: Aggregate>(&self, replay: &mut Replay<A>, id: &str) {
        if self.snapshot_every == 0
            || replay.since_snapshot < self.snapshot_every
            || replay.has_pending()
        {
            return;
        }
        let key = snapshot_key::<A>(id);
        let bytes = match snapshot_json(&replay.state, replay.applied_at) {
            Ok(bytes) => bytes,
            Err(e) => {
                tracing::warn!(key, error = %e, "the state does not serialize; no snapshot");
                return;
            }
        };
        match self.log.put_snapshot(&key, Bytes::from(bytes)).await {
            Ok(()) => replay.since_snapshot = 0,
            Err(e) => {
                let error = broker_error(e, "cannot write the snapshot");
                tracing::warn!(key, error = %error, "no snapshot this time");
            }
        }
    }

    /// Stores `bytes` as the snapshot of `id` of aggregate type `kind` (fault injection in
    /// tests: `eda::testing::write_snapshot`).
    pub(crate) async fn put_raw_snapshot(
        &self,
        kind: &str,
        id: &str,
        bytes: Bytes,
    ) -> Result<(), EventStoreError> {
        let key = format!("{kind}.{id}");
        self.log
            .put_snapshot(&key, bytes)
            .await
            .map_err(|e| broker_error(e, &format!("cannot write snapshot `{key}`")))
    }

    /// The snapshot of `id` of aggregate type `kind` as stored (for tests).
    pub(crate) async fn raw_snapshot(
        &self,
        kind: &str,
        id: &str,
    ) -> Result<Option<Bytes>, EventStoreError> {
        let key = format!("{kind}.{id}");
        self.log
            .snapshot(&key)
            .await
            .map_err(|e| broker_error(e, &format!("cannot read snapshot `{key}`")))
    }
}

fn snapshot_key<A: Aggregate>(id: &str) -> String {
    format!("{}.{id}", A::TYPE)
}

fn broker_error(error: LogError, what: &str) -> EventStoreError {
    match error {
        LogError::Conflict { actual } => EventStoreError::new(
            EventStoreErrorKind::Conflict {
                expected: 0,
                actual,
            },
            format!("{what}: conflict"),
        ),
        LogError::Failed { message, source } => EventStoreError::with_source(
            EventStoreErrorKind::Broker,
            format!("{what}: {message}"),
            source,
        ),
    }
}

/// The wait before attempt `attempt + 1`: doubling from [`FIRST_BACKOFF`] to
/// [`MAX_BACKOFF`], drawn from `[d/2, d]` so that the writers who lost spread out.
fn backoff(attempt: u32) -> Duration {
    let doubled = FIRST_BACKOFF.saturating_mul(1u32 << attempt.saturating_sub(1).min(20));
    doubled
        .min(MAX_BACKOFF)
        .mul_f64(0.5 + crate::random::unit() / 2.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_its_cap_with_jitter() {
        for attempt in 1..40 {
            let d = backoff(attempt);
            let full = FIRST_BACKOFF
                .saturating_mul(1u32 << (attempt - 1).min(20))
                .min(MAX_BACKOFF);
            assert!(
                d >= full / 2 && d <= full,
                "attempt {attempt}: {d:?} of {full:?}"
            );
        }
    }
}
