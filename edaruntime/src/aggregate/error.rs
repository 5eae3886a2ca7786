//! What can go wrong in the event store: [`EventStoreError`] (with a matchable
//! [`EventStoreErrorKind`]), and [`ExecuteError`] for a decision that was rejected or could not
//! be stored.

use std::fmt;

use crate::error::BoxError;
use crate::event::DecodeError;

/// What kind of problem an [`EventStoreError`] is; match on it to branch.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum EventStoreErrorKind {
    /// Another writer appended to the aggregate since `expected`: load it again and decide
    /// again ([`EventStore::execute`](super::EventStore::execute) does).
    Conflict {
        /// The version the append expected.
        expected: u64,
        /// The aggregate's version, when the broker said.
        actual: Option<u64>,
    },
    /// A stored event is none of the aggregate's events (a newer binary appended an event
    /// this one does not know, or the enum lost a variant).
    UnknownEvent {
        /// The stored event's name.
        name: String,
        /// Its sequence in the aggregate type's stream.
        sequence: u64,
    },
    /// A stored event could not be decoded: a version newer than the newest this binary knows
    /// or older than its upcast chain reaches, a payload that does not fit its schema, or a
    /// header that cannot be read.
    Decode {
        /// Its sequence in the aggregate type's stream.
        sequence: u64,
        /// Why.
        error: DecodeError,
    },
    /// The aggregate type or id cannot be used (the message says which rule it breaks).
    Invalid,
    /// An event could not be serialized to JSON.
    Encode,
    /// The broker failed or refused (the client's error is the source).
    Broker,
}

/// Why a load or an append of the [`EventStore`](super::EventStore) failed.
///
/// ```
/// # use eda::{EventStoreError, EventStoreErrorKind};
/// fn retry_worthwhile(error: &EventStoreError) -> bool {
///     error.is_conflict() || matches!(error.kind(), EventStoreErrorKind::Broker)
/// }
/// ```
pub struct EventStoreError {
    kind: EventStoreErrorKind,
    message: String,
    source: Option<BoxError>,
}

impl EventStoreError {
    pub(crate) fn new(kind: EventStoreErrorKind, message: impl Into<String>) -> EventStoreError {
        EventStoreError {
            kind,
            message: message.into(),
            source: None,
        }
    }

    pub(crate) fn with_source(
        kind: EventStoreErrorKind,
        message: impl Into<String>,
        source: impl Into<BoxError>,
    ) -> EventStoreError {
        EventStoreError {
            source: Some(source.into()),
            ..EventStoreError::new(kind, message)
        }
    }

    /// What kind of problem this is.
    pub fn kind(&self) -> &EventStoreErrorKind {
        &self.kind
    }

    /// Whether another writer appended first (optimistic concurrency): load and decide again.
    pub fn is_conflict(&self) -> bool {
        matches!(self.kind, EventStoreErrorKind::Conflict { .. })
    }
}

impl fmt::Display for EventStoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl fmt::Debug for EventStoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut debug = f.debug_struct("EventStoreError");
        debug
            .field("kind", &self.kind)
            .field("message", &self.message);
        if let Some(source) = &self.source {
            debug.field("source", source);
        }
        debug.finish()
    }
}

impl std::error::Error for EventStoreError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source
            .as_deref()
            .map(|e| e as &(dyn std::error::Error + 'static))
    }
}

/// Why [`EventStore::execute`](super::EventStore::execute) did not store a decision: the
/// decision function said no (`Rejected`, with its own error), or the store failed
/// (`Store`: a broker error, an event that does not decode, or still a conflict after the last
/// attempt — see [`ExecuteError::is_conflict`]).
#[derive(Debug)]
#[non_exhaustive]
pub enum ExecuteError<E> {
    /// The decision function returned this error; nothing was appended.
    Rejected(E),
    /// Loading or appending failed.
    Store(EventStoreError),
}

impl<E> ExecuteError<E> {
    /// Whether every attempt met a concurrent append (the store's `max_attempts` ran out).
    pub fn is_conflict(&self) -> bool {
        matches!(self, ExecuteError::Store(e) if e.is_conflict())
    }
}

impl<E: fmt::Display> fmt::Display for ExecuteError<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ExecuteError::Rejected(e) => write!(f, "the decision was rejected: {e}"),
            ExecuteError::Store(e) => fmt::Display::fmt(e, f),
        }
    }
}

impl<E: fmt::Debug + fmt::Display> std::error::Error for ExecuteError<E> {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ExecuteError::Rejected(_) => None,
            ExecuteError::Store(e) => Some(e),
        }
    }
}

impl<E> From<EventStoreError> for ExecuteError<E> {
    fn from(error: EventStoreError) -> Self {
        ExecuteError::Store(error)
    }
}
