//! The wire format (DESIGN.md §4): every header name, and the pure encoding and decoding of
//! events' and dead letters' headers. Every transport uses these.

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
/// Dead letter: set when the payload did not fit next to the headers and holds only its
/// beginning; the value is the original payload's length in bytes (fetch the whole message
/// from the event stream by `Eda-Original-Seq`).
pub const DLQ_PAYLOAD_CUT: &str = "Eda-Dlq-Payload-Cut";

/// The longest `Eda-Dlq-Error` value: a dead letter's error must not push it over the
/// server's message size.
pub(crate) const MAX_ERROR_LEN: usize = 1024;

use std::sync::Arc;
use std::time::SystemTime;

use bytes::Bytes;

use crate::dlq::{DeadLetter, DlqReason};
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

/// The headers of a dead letter: the original event's, with the dead letter's own
/// `Nats-Msg-Id`, plus the `Eda-Dlq-*` and `Eda-Original-*` headers. `original_subject` is the
/// subject the event was published to (with the transport's prefix).
pub(crate) fn dead_letter_headers(
    letter: &DeadLetter,
    original_subject: &str,
) -> Vec<(&'static str, String)> {
    let mut pairs = encode(&letter.metadata);
    let id = &letter.metadata.id;
    for pair in pairs.iter_mut().filter(|(name, _)| *name == MSG_ID) {
        pair.1 = letter.message_id();
    }
    pairs.push((ORIGINAL_ID, id.clone()));
    pairs.push((DLQ_REASON, letter.reason.as_str().to_owned()));
    pairs.push((
        DLQ_ERROR,
        header_safe(&truncated(&letter.error, MAX_ERROR_LEN)),
    ));
    pairs.push((DLQ_ATTEMPTS, letter.attempts.to_string()));
    pairs.push((DLQ_HANDLER, letter.handler.clone()));
    pairs.push((ORIGINAL_SUBJECT, original_subject.to_owned()));
    if let Some(sequence) = letter.metadata.sequence {
        pairs.push((ORIGINAL_SEQ, sequence.to_string()));
    }
    if let Some(length) = letter.payload_cut {
        pairs.push((DLQ_PAYLOAD_CUT, length.to_string()));
    }
    pairs
}

/// The bytes a header block of `pairs` takes on the wire (`NATS/1.0\r\n`, `name: value\r\n`
/// each, a closing `\r\n`).
pub(crate) fn header_block_len(pairs: &[(&'static str, String)]) -> usize {
    pairs
        .iter()
        .map(|(name, value)| name.len() + 2 + value.len() + 2)
        .sum::<usize>()
        + "NATS/1.0\r\n\r\n".len()
}

/// A dead letter as stored on the dead-letter stream at `subject` (`dlq.<service>.<handler>`);
/// `None` for messages eda did not write. `prefix` is the event subjects' prefix with its dot.
pub(crate) fn dead_letter_from<'h>(
    subject: &str,
    header: &dyn Fn(&str) -> Option<&'h str>,
    payload: Bytes,
    prefix: &str,
) -> Option<DeadLetter> {
    let owned = |key: &str| header(key).map(str::to_owned);
    let original_subject = header(ORIGINAL_SUBJECT)?;
    let name = original_subject
        .strip_prefix(prefix)
        .unwrap_or(original_subject);
    let sequence = header(ORIGINAL_SEQ).and_then(|s| s.parse().ok());
    let (metadata, _) = decode(name, header, sequence, None);
    let mut metadata = Arc::unwrap_or_clone(metadata);
    if let Some(id) = owned(ORIGINAL_ID) {
        metadata.id = id;
    }
    let mut parts = subject.splitn(3, '.').skip(1);
    Some(DeadLetter {
        service: parts.next().unwrap_or_default().to_owned(),
        handler: owned(DLQ_HANDLER).unwrap_or_default(),
        reason: DlqReason::parse(header(DLQ_REASON)?)?,
        error: owned(DLQ_ERROR).unwrap_or_default(),
        attempts: header(DLQ_ATTEMPTS)
            .and_then(|a| a.parse().ok())
            .unwrap_or(0),
        metadata: Arc::new(metadata),
        payload,
        payload_cut: header(DLQ_PAYLOAD_CUT).and_then(|n| n.parse().ok()),
        subject: subject.to_owned(),
    })
}

/// At most `max` bytes of `text` (on a character boundary), marked when cut.
pub(crate) fn truncated(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_owned();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}

/// Header values cannot hold line breaks.
fn header_safe(text: &str) -> String {
    text.replace(['\r', '\n'], " ")
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

    #[test]
    fn long_errors_are_cut_on_a_character_boundary() {
        assert_eq!(truncated("short", 10), "short");
        assert_eq!(truncated("ééé", 3), "é…");
    }

    #[test]
    fn dead_letters_round_trip_through_headers() {
        let mut metadata = Metadata::new("order.placed", 1, "shop");
        metadata.sequence = Some(7);
        let letter = DeadLetter {
            subject: "dlq.billing.charge".into(),
            service: "billing".into(),
            handler: "charge".into(),
            reason: DlqReason::Permanent,
            error: "declined\nby the bank".into(),
            attempts: 2,
            metadata: Arc::new(metadata),
            payload: Bytes::from_static(b"{\"id\":1"),
            payload_cut: Some(4096),
        };
        let pairs = dead_letter_headers(&letter, "events.order.placed");
        assert!(header_block_len(&pairs) > 100);
        let map = lookup(pairs);
        assert_eq!(
            map[MSG_ID],
            format!("billing.charge.{}", letter.metadata.id)
        );
        let back = dead_letter_from(
            "dlq.billing.charge",
            &|name| map.get(name).map(String::as_str),
            letter.payload.clone(),
            "events.",
        )
        .expect("a dead letter");
        assert_eq!(back.metadata.id, letter.metadata.id);
        assert_eq!(back.metadata.sequence, Some(7));
        assert_eq!(back.error, "declined by the bank");
        assert_eq!((back.reason, back.attempts), (DlqReason::Permanent, 2));
        assert_eq!(
            (back.service.as_str(), back.handler.as_str()),
            ("billing", "charge")
        );
        assert_eq!(back.payload_cut, Some(4096));
    }
}
