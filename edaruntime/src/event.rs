//! Events: the [`Event`] trait, their [`Metadata`], and the three ways a handler receives one
//! ([`Event`] types themselves, [`Envelope`] and [`RawEvent`]).

use std::fmt;
use std::ops::Deref;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use serde::de::DeserializeOwned;
use serde::Serialize;

pub use crate::schema::{fingerprint, schema_of};

/// A typed, versioned event. Implemented by `#[event]` or `#[derive(Event)]`; do not
/// implement it by hand.
///
/// ```
/// use eda::prelude::*;
///
/// #[event("user.created", version = 1)]
/// pub struct UserCreated { pub id: u64, pub email: String }
///
/// assert_eq!(UserCreated::NAME, "user.created");
/// assert_eq!(UserCreated::VERSION, 1);
/// assert_eq!(UserCreated::fingerprint().len(), 64);
/// ```
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not an eda event",
    label = "not an event",
    note = "add `#[event]` (or `#[derive(Event)]`) to the definition of `{Self}`"
)]
pub trait Event:
    Serialize + DeserializeOwned + schemars::JsonSchema + Send + Sync + 'static
{
    /// The event name, e.g. `user.created`; also its subject.
    const NAME: &'static str;
    /// The schema version this type describes (1 or more).
    const VERSION: u32;
    /// The oldest version this type can decode through its `upcast_from` chain.
    const OLDEST_VERSION: u32;

    /// Decodes a payload published as `version`, upcasting older versions step by step.
    fn decode_version(version: u32, payload: &[u8]) -> Result<Self, DecodeError>;

    /// The JSON Schema of this version.
    fn schema() -> serde_json::Value {
        schema_of::<Self>()
    }

    /// A stable fingerprint of [`Event::schema`]; see [`fingerprint`].
    fn fingerprint() -> String {
        fingerprint(&Self::schema())
    }
}

/// Why a message could not be turned into the handler's event.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum DecodeError {
    /// The payload is not valid JSON for the event's schema (the serde message).
    Payload {
        /// Event name.
        event: String,
        /// The version the payload claimed.
        version: u32,
        /// serde's message.
        message: String,
    },
    /// The message is of a version newer than any this handler knows. Delivery retries it
    /// (a newer instance may take it during a rolling deploy), then dead-letters it.
    UnknownVersion {
        /// Event name.
        event: String,
        /// The version the message carries.
        version: u32,
        /// The newest version this handler knows.
        newest: u32,
    },
    /// The message is older than the oldest version in the upcast chain.
    TooOld {
        /// Event name.
        event: String,
        /// The version the message carries.
        version: u32,
        /// The oldest version this handler can upcast from.
        oldest: u32,
    },
    /// A header has a value that cannot be read.
    Header {
        /// The header.
        header: String,
        /// Its value.
        value: String,
    },
    /// The message is a different event than expected (headers or subject disagree).
    Mismatch {
        /// What the handler or the subject expects.
        expected: String,
        /// What the message says it is.
        found: String,
    },
}

impl DecodeError {
    /// Whether another attempt could succeed: only for a version newer than known.
    pub fn is_retryable(&self) -> bool {
        matches!(self, DecodeError::UnknownVersion { .. })
    }
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DecodeError::Payload { event, version, message } => {
                write!(f, "payload is not a valid `{event}` v{version}: {message}")
            }
            DecodeError::UnknownVersion { event, version, newest } => write!(
                f,
                "`{event}` v{version} is newer than the newest version this handler knows (v{newest})"
            ),
            DecodeError::TooOld { event, version, oldest } => write!(
                f,
                "`{event}` v{version} is older than the oldest version this handler can upcast from (v{oldest})"
            ),
            DecodeError::Header { header, value } => {
                write!(f, "header `{header}` has an unreadable value `{value}`")
            }
            DecodeError::Mismatch { expected, found } => {
                write!(f, "expected event `{expected}` but the message is `{found}`")
            }
        }
    }
}

impl std::error::Error for DecodeError {}

/// What travels with every event besides its payload (DESIGN.md §4).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Metadata {
    /// Event id: a UUID v7 for events eda publishes; `Nats-Msg-Id` or the stream sequence for
    /// messages from plain clients.
    pub id: String,
    /// Event name (shared by the events of one type: cloning it costs no allocation).
    pub name: Arc<str>,
    /// Schema version of the payload.
    pub version: u32,
    /// When it happened: when it was published, or (on JetStream, for a message without
    /// `Eda-Time`) when the broker stored it; an explicit time for a republished event.
    pub time: SystemTime,
    /// The publishing service (empty if unknown).
    pub source: Arc<str>,
    /// Shared by every event of one conversation; the first event's id by default.
    pub correlation_id: String,
    /// The id of the event whose handler published this one.
    pub causation_id: Option<String>,
    /// The subject, without the transport's prefix (the event name, for eda publishers).
    pub subject: Arc<str>,
    /// Schema fingerprint, if the publisher sent one (eda no longer does: the schema
    /// registry holds it; older eda versions did).
    pub schema: Option<String>,
    /// W3C `traceparent`, if any.
    pub traceparent: Option<String>,
    /// Position in the broker's stream, if the transport has one.
    pub sequence: Option<u64>,
    /// The CloudEvents attributes of a message read in CloudEvents binary mode that have no
    /// field here (`dataschema`, `subject`, `datacontenttype`, extensions), by attribute name
    /// (lower case, without `ce-`), values decoded.
    pub extensions: Vec<(String, String)>,
}

impl Metadata {
    /// Metadata for a new event: fresh UUID v7 id, now, version and name from the type; the
    /// subject is the name.
    pub fn new(name: impl Into<Arc<str>>, version: u32, source: impl Into<Arc<str>>) -> Metadata {
        let time = SystemTime::now();
        let id = crate::random::uuid_v7_at(time);
        let name = name.into();
        Metadata {
            correlation_id: id.clone(),
            id,
            subject: Arc::clone(&name),
            name,
            version,
            time,
            source: source.into(),
            causation_id: None,
            schema: None,
            traceparent: None,
            sequence: None,
            extensions: Vec::new(),
        }
    }

    /// The event time as RFC 3339 (UTC, milliseconds); a time outside 1970–9999 (which
    /// RFC 3339 cannot write) is written as the nearest end of that range.
    pub fn time_rfc3339(&self) -> String {
        let time = self
            .time
            .clamp(SystemTime::UNIX_EPOCH, latest_writable_time());
        humantime::format_rfc3339_millis(time).to_string()
    }
}

/// 9999-12-31T23:59:59.999Z, the last time RFC 3339 writes.
pub(crate) fn latest_writable_time() -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_millis(253_402_300_799_999)
}

/// Whether RFC 3339 can write `time` (1970 to 9999).
pub(crate) fn is_writable_time(time: SystemTime) -> bool {
    (SystemTime::UNIX_EPOCH..=latest_writable_time()).contains(&time)
}

/// Any event, undecoded: for wildcard handlers (`#[handler("payment.*")]`).
#[derive(Debug, Clone)]
pub struct RawEvent {
    metadata: Arc<Metadata>,
    payload: Bytes,
    attempt: u32,
}

impl RawEvent {
    /// A raw event (used by transports and tests).
    pub fn new(metadata: Arc<Metadata>, payload: Bytes, attempt: u32) -> RawEvent {
        RawEvent {
            metadata,
            payload,
            attempt,
        }
    }

    /// The same message as delivery attempt `attempt`.
    pub(crate) fn with_attempt(mut self, attempt: u32) -> RawEvent {
        self.attempt = attempt;
        self
    }

    /// Event name.
    pub fn name(&self) -> &str {
        &self.metadata.name
    }

    /// Schema version of the payload.
    pub fn version(&self) -> u32 {
        self.metadata.version
    }

    /// Everything but the payload.
    pub fn metadata(&self) -> &Metadata {
        &self.metadata
    }

    /// The shared metadata.
    pub fn metadata_arc(&self) -> &Arc<Metadata> {
        &self.metadata
    }

    /// The JSON payload.
    pub fn payload(&self) -> &[u8] {
        &self.payload
    }

    /// The payload as cheap-to-clone bytes.
    pub fn payload_bytes(&self) -> &Bytes {
        &self.payload
    }

    /// Which delivery this is (1 for the first).
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// The payload as a JSON value.
    pub fn json(&self) -> Result<serde_json::Value, serde_json::Error> {
        serde_json::from_slice(&self.payload)
    }

    /// Decodes into `E`, upcasting older versions; fails if this is another event.
    pub fn decode<E: Event>(&self) -> Result<E, DecodeError> {
        if *self.metadata.name != *E::NAME {
            return Err(DecodeError::Mismatch {
                expected: E::NAME.to_owned(),
                found: self.metadata.name.to_string(),
            });
        }
        E::decode_version(self.metadata.version, &self.payload)
    }
}

/// An event with its metadata: take `Envelope<E>` instead of `E` to see ids and times.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Envelope<E> {
    /// The decoded (and upcast) event.
    pub event: E,
    /// Its metadata; `version` is the version it was published as.
    pub metadata: Arc<Metadata>,
    /// Which delivery this is (1 for the first).
    pub attempt: u32,
}

impl<E> Envelope<E> {
    /// Event id.
    pub fn id(&self) -> &str {
        &self.metadata.id
    }

    /// Correlation id.
    pub fn correlation_id(&self) -> &str {
        &self.metadata.correlation_id
    }

    /// Causation id.
    pub fn causation_id(&self) -> Option<&str> {
        self.metadata.causation_id.as_deref()
    }

    /// The event, dropping the metadata.
    pub fn into_inner(self) -> E {
        self.event
    }
}

impl<E> Deref for Envelope<E> {
    type Target = E;
    fn deref(&self) -> &E {
        &self.event
    }
}

/// Decodes `payload` of `version` as exactly `E` (no upcast chain).
pub(crate) fn decode_exact<E: Event>(version: u32, payload: &[u8]) -> Result<E, DecodeError> {
    if version == E::VERSION {
        return serde_json::from_slice(payload).map_err(|e| DecodeError::Payload {
            event: E::NAME.to_owned(),
            version,
            message: e.to_string(),
        });
    }
    Err(version_error::<E>(version))
}

/// Decodes `payload` of `version` as `E`, or as its predecessor `P` and upcasts.
pub(crate) fn decode_upcast<E, P>(version: u32, payload: &[u8]) -> Result<E, DecodeError>
where
    E: Event + From<P>,
    P: Event,
{
    if version >= E::VERSION {
        return decode_exact::<E>(version, payload);
    }
    if version < E::OLDEST_VERSION {
        return Err(version_error::<E>(version));
    }
    P::decode_version(version, payload).map(E::from)
}

fn version_error<E: Event>(version: u32) -> DecodeError {
    if version > E::VERSION {
        DecodeError::UnknownVersion {
            event: E::NAME.to_owned(),
            version,
            newest: E::VERSION,
        }
    } else {
        DecodeError::TooOld {
            event: E::NAME.to_owned(),
            version,
            oldest: E::OLDEST_VERSION,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_rfc3339_cannot_write_are_written_as_the_nearest_end() {
        let at = |time| {
            let mut metadata = Metadata::new("e", 1, "s");
            metadata.time = time;
            metadata.time_rfc3339()
        };
        let before = SystemTime::UNIX_EPOCH - Duration::from_secs(60);
        assert_eq!(at(before), "1970-01-01T00:00:00.000Z");
        let after = latest_writable_time() + Duration::from_secs(3600);
        assert_eq!(at(after), "9999-12-31T23:59:59.999Z");
        assert!(!is_writable_time(before) && !is_writable_time(after));
    }

    #[test]
    fn fingerprint_ignores_key_order_and_title() {
        let a = serde_json::json!({"title": "A", "type": "object", "properties": {"x": {"type": "integer"}, "y": {"type": "string"}}});
        let b = serde_json::json!({"properties": {"y": {"type": "string"}, "x": {"type": "integer"}}, "type": "object", "title": "B"});
        assert_eq!(fingerprint(&a), fingerprint(&b));
        let c = serde_json::json!({"type": "object", "properties": {"x": {"type": "string"}}});
        assert_ne!(fingerprint(&a), fingerprint(&c));
    }

    #[test]
    fn annotations_do_not_count_but_property_names_do() {
        let a = serde_json::json!({"type": "object", "description": "doc", "properties": {"title": {"type": "string", "description": "x"}}});
        let b = serde_json::json!({"type": "object", "properties": {"title": {"type": "string"}}});
        let c = serde_json::json!({"type": "object", "properties": {"name": {"type": "string"}}});
        assert_eq!(fingerprint(&a), fingerprint(&b));
        assert_ne!(fingerprint(&b), fingerprint(&c));
    }

    #[test]
    fn fingerprint_algorithm_is_pinned() {
        // `printf '{"type":"object"}' | sha256sum`: the canonical form drops the root title.
        assert_eq!(
            fingerprint(&serde_json::json!({"type": "object", "title": "Anything"})),
            "a2c799262a3ce3c19ef5cdd983bf3d12b43ab3c426227091b909dcb7054738c0"
        );
    }
}
