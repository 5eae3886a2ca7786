//! Header names of the wire format (DESIGN.md §4). Every transport uses these constants.

/// Event id (UUID v7); the broker drops a repeat inside its duplicate window.
pub const MSG_ID: &str = "Nats-Msg-Id";
/// Event name.
pub const EVENT: &str = "Eda-Event";
/// Event schema version.
pub const VERSION: &str = "Eda-Version";
/// Publish time, RFC 3339.
pub const TIME: &str = "Eda-Time";
/// Publishing service.
pub const SOURCE: &str = "Eda-Source";
/// Correlation id, shared by every event of one conversation.
pub const CORRELATION_ID: &str = "Eda-Correlation-Id";
/// Id of the event whose handler published this one.
pub const CAUSATION_ID: &str = "Eda-Causation-Id";
/// Schema fingerprint.
pub const SCHEMA: &str = "Eda-Schema";
/// W3C trace context.
pub const TRACEPARENT: &str = "traceparent";
/// Dead letter: why (`decode`, `version`, `permanent`, `retries_exhausted`).
pub const DLQ_REASON: &str = "Eda-Dlq-Reason";
/// Dead letter: the error text with its chain.
pub const DLQ_ERROR: &str = "Eda-Dlq-Error";
/// Dead letter: how many attempts were made.
pub const DLQ_ATTEMPTS: &str = "Eda-Dlq-Attempts";
/// Dead letter: the handler that gave up.
pub const DLQ_HANDLER: &str = "Eda-Dlq-Handler";
/// Dead letter: the subject the event was published to.
pub const ORIGINAL_SUBJECT: &str = "Eda-Original-Subject";
/// Dead letter: the original event id (its `Nats-Msg-Id` is `<service>.<handler>.<id>`, so
/// that one event dead-lettered by two handlers is stored twice, and a retried dead-letter
/// publish once).
pub const ORIGINAL_ID: &str = "Eda-Original-Id";
/// Dead letter: the stream sequence of the original.
pub const ORIGINAL_SEQ: &str = "Eda-Original-Seq";

use std::sync::Arc;
use std::time::SystemTime;

use crate::event::{DecodeError, Metadata};

/// The header pairs of an event's metadata (DESIGN.md §4).
pub(crate) fn encode(metadata: &Metadata) -> Vec<(&'static str, String)> {
    let mut headers = Vec::with_capacity(9);
    encode_into(metadata, |name, value| {
        headers.push((name, value.to_owned()))
    });
    headers
}

/// Hands each header of an event's metadata to `put`, without collecting them first (the
/// publish hot path writes them straight into the client's header map). Public only for the
/// micro-benchmarks (`benches/micro.rs`).
#[doc(hidden)]
pub fn encode_into(metadata: &Metadata, mut put: impl FnMut(&'static str, &str)) {
    put(MSG_ID, &metadata.id);
    put(EVENT, &metadata.name);
    put(VERSION, &metadata.version.to_string());
    put(TIME, &metadata.time_rfc3339());
    put(SOURCE, &metadata.source);
    put(CORRELATION_ID, &metadata.correlation_id);
    if let Some(causation) = &metadata.causation_id {
        put(CAUSATION_ID, causation);
    }
    if let Some(schema) = &metadata.schema {
        put(SCHEMA, schema);
    }
    if let Some(traceparent) = &metadata.traceparent {
        put(TRACEPARENT, traceparent);
    }
}

/// Metadata of a received message. Messages from plain clients (no eda headers) take their
/// name from the subject, version 1, and their id from `Nats-Msg-Id` or the stream sequence.
/// The metadata is always built (a dead letter needs it); the error says why the message
/// cannot be handled: headers naming another event than the subject, or a bad version.
/// Public only for the micro-benchmarks (`benches/micro.rs`).
#[doc(hidden)]
pub fn decode<'h>(
    subject_name: &str,
    header: &dyn Fn(&str) -> Option<&'h str>,
    sequence: Option<u64>,
    published: Option<SystemTime>,
) -> (Arc<Metadata>, Option<DecodeError>) {
    let mut error = None;
    let owned = |name: &str| header(name).map(str::to_owned);
    let id = owned(MSG_ID)
        .or_else(|| sequence.map(|s| s.to_string()))
        .unwrap_or_else(crate::random::uuid_v7);
    if let Some(claimed) = header(EVENT) {
        if claimed != subject_name {
            error = Some(DecodeError::Mismatch {
                expected: subject_name.to_owned(),
                found: claimed.to_owned(),
            });
        }
    }
    let version = match header(VERSION) {
        None => 1,
        Some(text) => match text.trim().parse::<u32>() {
            Ok(v) if v >= 1 => v,
            _ => {
                error.get_or_insert(DecodeError::Header {
                    header: VERSION.to_owned(),
                    value: text.to_owned(),
                });
                1
            }
        },
    };
    let time = header(TIME)
        .and_then(|t| humantime::parse_rfc3339_weak(t).ok())
        .or(published)
        .unwrap_or_else(SystemTime::now);
    let metadata = Metadata {
        correlation_id: owned(CORRELATION_ID).unwrap_or_else(|| id.clone()),
        id,
        name: subject_name.to_owned(),
        version,
        time,
        source: owned(SOURCE).unwrap_or_default(),
        causation_id: owned(CAUSATION_ID),
        subject: subject_name.to_owned(),
        schema: owned(SCHEMA),
        traceparent: owned(TRACEPARENT),
        sequence,
    };
    (Arc::new(metadata), error)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn lookup(pairs: Vec<(&'static str, String)>) -> HashMap<&'static str, String> {
        pairs.into_iter().collect()
    }

    #[test]
    fn metadata_round_trips_through_headers() {
        let mut original = Metadata::new("user.created", 2, "accounts");
        original.causation_id = Some("cause".into());
        original.schema = Some("abc".into());
        let map = lookup(encode(&original));
        let (decoded, error) = decode(
            "user.created",
            &|name| map.get(name).map(String::as_str),
            Some(9),
            None,
        );
        assert!(error.is_none());
        assert_eq!(decoded.id, original.id);
        assert_eq!(decoded.version, 2);
        assert_eq!(decoded.source, "accounts");
        assert_eq!(decoded.causation_id.as_deref(), Some("cause"));
        assert_eq!(decoded.sequence, Some(9));
        let millis = |t: SystemTime| {
            t.duration_since(SystemTime::UNIX_EPOCH)
                .unwrap()
                .as_millis()
        };
        assert_eq!(millis(decoded.time), millis(original.time));
    }

    #[test]
    fn plain_messages_take_name_from_subject_and_id_from_sequence() {
        let (meta, error) = decode("payment.failed", &|_| None, Some(42), None);
        assert!(error.is_none());
        assert_eq!(
            (meta.name.as_str(), meta.version, meta.id.as_str()),
            ("payment.failed", 1, "42")
        );
        assert_eq!(meta.correlation_id, "42");
    }

    #[test]
    fn headers_claiming_another_event_are_a_decode_error() {
        let map = lookup(vec![(EVENT, "user.deleted".into())]);
        let (_, error) = decode(
            "user.created",
            &|name| map.get(name).map(String::as_str),
            None,
            None,
        );
        assert_eq!(
            error,
            Some(DecodeError::Mismatch {
                expected: "user.created".into(),
                found: "user.deleted".into()
            })
        );
        let map = lookup(vec![(VERSION, "two".into())]);
        let (_, error) = decode(
            "user.created",
            &|name| map.get(name).map(String::as_str),
            None,
            None,
        );
        assert!(matches!(error, Some(DecodeError::Header { .. })));
    }
}
