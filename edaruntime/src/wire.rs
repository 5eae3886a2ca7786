//! The wire format (DESIGN.md §4): every header name, and the pure encoding and decoding of
//! events' and dead letters' headers. Every transport uses these.

/// Event id (UUID v7); the broker drops a repeat inside its duplicate window. Always sent.
pub const MSG_ID: &str = "Nats-Msg-Id";
/// Event name. Never sent by eda on event subjects (the subject names the event); when
/// present (older eda versions, other publishers) it must agree with the subject. Always sent
/// on an aggregate's stream, whose subject names the aggregate.
pub const EVENT: &str = "Eda-Event";
/// Event schema version; sent when it is not 1.
pub const VERSION: &str = "Eda-Version";
/// On an aggregate's stream: `<index>/<count>`, the place of an event among the events of one
/// append of several (1-based); absent for an append of one event. The events of such an
/// append count only once all of them are stored one after the other (see
/// [`EventStore::append`](crate::aggregate::EventStore::append)).
pub const BATCH: &str = "Eda-Batch";
/// Event time, RFC 3339; sent only when it was set explicitly (a republish keeping the
/// original time, a dead letter). Absent: the time the broker stored the message.
pub const TIME: &str = "Eda-Time";
/// Publishing service. Always sent.
pub const SOURCE: &str = "Eda-Source";
/// Correlation id, shared by every event of one conversation; sent when it is not the event
/// id.
pub const CORRELATION_ID: &str = "Eda-Correlation-Id";
/// Id of the event whose handler published this one; sent when there is one.
pub const CAUSATION_ID: &str = "Eda-Causation-Id";
/// Schema fingerprint. No longer sent (the schema registry holds one schema per name and
/// version); read from older eda versions' messages.
pub const SCHEMA: &str = "Eda-Schema";
/// W3C trace context; sent when the publish happens inside a trace.
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
/// Set on a dead letter whose long header values (ids from a peer, kilobytes long) were
/// shortened so that its headers stay under the server's 64 KiB limit; the original message
/// is whole in the event stream at `Eda-Original-Seq`.
pub const DLQ_HEADERS_CUT: &str = "Eda-Dlq-Headers-Cut";

/// The most a dead letter's header block takes: nats-server refuses headers over 64 KiB.
const MAX_DEAD_LETTER_HEADERS: usize = 60 * 1024;
/// Header values longer than this are shortened in a dead letter that would pass
/// [`MAX_DEAD_LETTER_HEADERS`].
const LONG_HEADER_VALUE: usize = 1024;

/// The longest `Eda-Dlq-Error` value: a dead letter's error must not push it over the
/// server's message size.
pub(crate) const MAX_ERROR_LEN: usize = 1024;

mod cloudevents;
#[cfg(test)]
mod fuzz;

pub(crate) use cloudevents::percent_decoded;

use std::borrow::Cow;
use std::sync::Arc;
use std::time::SystemTime;

use bytes::Bytes;

use crate::config::WireFormat;
use crate::dlq::{DeadLetter, DlqReason};
use crate::event::{DecodeError, Metadata};

/// Hands each header of an event to `put` (DESIGN.md §4), without collecting them first (the
/// publish hot path writes them straight into the client's header map): only what the
/// receiver cannot derive. `with_time` sends the event time (it was set explicitly; without
/// it the receiver takes the time the broker stored the message). Public only for the
/// micro-benchmarks (`benches/micro.rs`).
#[doc(hidden)]
pub fn encode_into(
    metadata: &Metadata,
    format: WireFormat,
    with_time: bool,
    mut put: impl FnMut(&'static str, &str),
) {
    put(MSG_ID, &metadata.id);
    if format == WireFormat::CloudEvents {
        return cloudevents::encode_into(metadata, put);
    }
    if metadata.version != 1 {
        put(VERSION, itoa(metadata.version, &mut [0; 10]));
    }
    put(SOURCE, &metadata.source);
    if metadata.correlation_id != metadata.id {
        put(CORRELATION_ID, &metadata.correlation_id);
    }
    if let Some(causation) = &metadata.causation_id {
        put(CAUSATION_ID, causation);
    }
    if with_time {
        put(TIME, &metadata.time_rfc3339());
    }
    if let Some(traceparent) = &metadata.traceparent {
        put(TRACEPARENT, traceparent);
    }
}

/// `n` in decimal, written into `buffer` (no allocation on the publish path).
fn itoa(mut n: u32, buffer: &mut [u8; 10]) -> &str {
    let mut start = buffer.len();
    loop {
        start -= 1;
        buffer[start] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    // Only ASCII digits were written.
    std::str::from_utf8(&buffer[start..]).unwrap_or_default()
}

/// A received message's metadata and what, if anything, makes it unhandleable. Public only
/// for the micro-benchmarks (`benches/micro.rs`).
#[doc(hidden)]
#[derive(Debug)]
pub struct Decoded {
    /// Always built: a dead letter needs it.
    pub metadata: Arc<Metadata>,
    /// Headers naming another event than the subject, a bad version, or an unreadable
    /// CloudEvents attribute.
    pub error: Option<DecodeError>,
    /// The id came from a header (`Nats-Msg-Id`, `ce-id`), not from the stream position.
    pub id_from_header: bool,
}

/// The metadata of a received message from its headers, read in one pass: eda's (every one
/// optional, so that messages of older eda versions and of plain clients are read too) and
/// CloudEvents 1.0 binary mode's (`ce-*`, matched case-insensitively; they win where both
/// are present). Messages from plain clients take their name from the subject, version 1,
/// their id from the stream sequence, and their time from when the broker stored them.
/// Public only for the micro-benchmarks (`benches/micro.rs`).
#[doc(hidden)]
pub fn decode<'h>(
    subject_name: &str,
    headers: impl IntoIterator<Item = (&'h str, &'h str)>,
    sequence: Option<u64>,
    stored: Option<SystemTime>,
) -> Decoded {
    let mut read = Read::default();
    for (name, value) in headers {
        read.header(name, value);
    }
    read.into_decoded(subject_name, sequence, stored)
}

/// The headers of one message as they are read.
#[derive(Default)]
struct Read<'h> {
    id: Slot<'h>,
    event: Slot<'h>,
    version: Slot<'h>,
    time: Slot<'h>,
    source: Slot<'h>,
    correlation_id: Slot<'h>,
    causation_id: Slot<'h>,
    schema: Slot<'h>,
    traceparent: Slot<'h>,
    /// CloudEvents attributes eda has no field for.
    extensions: Vec<(String, String)>,
    error: Option<DecodeError>,
}

/// One header's value and whether it came from a CloudEvents attribute.
#[derive(Default)]
struct Slot<'h>(Option<(Cow<'h, str>, bool)>);

impl<'h> Slot<'h> {
    fn set(&mut self, value: Cow<'h, str>, cloudevents: bool) {
        if cloudevents || self.0.is_none() {
            self.0 = Some((value, cloudevents));
        }
    }

    fn get(&self) -> Option<&str> {
        self.0.as_ref().map(|(value, _)| value.as_ref())
    }

    fn owned(self) -> Option<String> {
        self.0.map(|(value, _)| value.into_owned())
    }
}

impl<'h> Read<'h> {
    fn header(&mut self, name: &str, value: &'h str) {
        let slot = match name {
            MSG_ID => &mut self.id,
            EVENT => &mut self.event,
            VERSION => &mut self.version,
            TIME => &mut self.time,
            SOURCE => &mut self.source,
            CORRELATION_ID => &mut self.correlation_id,
            CAUSATION_ID => &mut self.causation_id,
            SCHEMA => &mut self.schema,
            TRACEPARENT => &mut self.traceparent,
            _ => return cloudevents::read(self, name, value),
        };
        slot.set(Cow::Borrowed(value), false);
    }

    fn into_decoded(
        self,
        subject_name: &str,
        sequence: Option<u64>,
        stored: Option<SystemTime>,
    ) -> Decoded {
        let mut error = self.error;
        if let Some(claimed) = self.event.get() {
            if claimed != subject_name {
                error.get_or_insert(DecodeError::Mismatch {
                    expected: subject_name.to_owned(),
                    found: claimed.to_owned(),
                });
            }
        }
        let version = match self.version.0.as_ref() {
            None => 1,
            Some((text, cloudevents)) => match text.trim().parse::<u32>() {
                Ok(v) if v >= 1 => v,
                _ => {
                    let header = if *cloudevents {
                        cloudevents::VERSION
                    } else {
                        VERSION
                    };
                    error.get_or_insert(DecodeError::Header {
                        header: header.to_owned(),
                        value: text.to_string(),
                    });
                    1
                }
            },
        };
        let time = self
            .time
            .get()
            .and_then(parse_time)
            // Only what `humantime` writes again (1970 to 9999): a dead letter keeps the time.
            .filter(|t| crate::event::is_writable_time(*t))
            .or(stored)
            .unwrap_or_else(SystemTime::now);
        let id_from_header = self.id.0.is_some();
        let id = self
            .id
            .owned()
            .or_else(|| sequence.map(|s| s.to_string()))
            .unwrap_or_else(crate::random::uuid_v7);
        let name: Arc<str> = subject_name.into();
        let metadata = Metadata {
            correlation_id: self.correlation_id.owned().unwrap_or_else(|| id.clone()),
            id,
            subject: Arc::clone(&name),
            name,
            version,
            time,
            source: self
                .source
                .0
                .map_or_else(|| "".into(), |(value, _)| Arc::from(&*value)),
            causation_id: self.causation_id.owned(),
            schema: self.schema.owned(),
            traceparent: self.traceparent.owned(),
            sequence,
            extensions: self.extensions,
        };
        Decoded {
            metadata: Arc::new(metadata),
            error,
            id_from_header,
        }
    }
}

/// An RFC 3339 time; UTC (`Z`, `+00:00`, or no zone) or with an offset (`+02:00`).
fn parse_time(text: &str) -> Option<SystemTime> {
    let text = text.trim();
    let bytes = text.as_bytes();
    let zoned = bytes.len() > 6
        && matches!(bytes[bytes.len() - 6], b'+' | b'-')
        && bytes[bytes.len() - 3] == b':';
    if !zoned {
        return humantime::parse_rfc3339_weak(text).ok();
    }
    let (local, zone) = text.split_at(text.len() - 6);
    let hours: u64 = zone.get(1..3)?.parse().ok()?;
    let minutes: u64 = zone.get(4..6)?.parse().ok()?;
    let offset = std::time::Duration::from_secs(hours * 3600 + minutes * 60);
    let local = humantime::parse_rfc3339_weak(local).ok()?;
    // Local time = UTC + offset.
    if zone.starts_with('+') {
        local.checked_sub(offset)
    } else {
        local.checked_add(offset)
    }
}

/// The headers of a dead letter: the original event's (its time always, and any CloudEvents
/// extensions it came with), with the dead letter's own `Nats-Msg-Id`, plus the `Eda-Dlq-*`
/// and `Eda-Original-*` headers. `original_subject` is the subject the event was published
/// to (with the transport's prefix).
pub(crate) fn dead_letter_headers(
    letter: &DeadLetter,
    original_subject: &str,
) -> Vec<(Cow<'static, str>, String)> {
    let metadata = &letter.metadata;
    let mut pairs: Vec<(Cow<'static, str>, String)> = Vec::with_capacity(16);
    encode_into(metadata, WireFormat::Eda, true, |name, value| {
        let value = match name {
            MSG_ID => letter.message_id(),
            _ => value.to_owned(),
        };
        pairs.push((Cow::Borrowed(name), value));
    });
    // The dead letter's id is not the event's: the correlation id defaults to the event id.
    if metadata.correlation_id == metadata.id {
        pairs.push((Cow::Borrowed(CORRELATION_ID), metadata.id.clone()));
    }
    pairs.extend(cloudevents::extension_headers(metadata));
    pairs.push((Cow::Borrowed(ORIGINAL_ID), metadata.id.clone()));
    pairs.push((Cow::Borrowed(DLQ_REASON), letter.reason.as_str().to_owned()));
    pairs.push((
        Cow::Borrowed(DLQ_ERROR),
        header_safe(&truncated(&letter.error, MAX_ERROR_LEN)),
    ));
    pairs.push((Cow::Borrowed(DLQ_ATTEMPTS), letter.attempts.to_string()));
    pairs.push((Cow::Borrowed(DLQ_HANDLER), letter.handler.clone()));
    pairs.push((Cow::Borrowed(ORIGINAL_SUBJECT), original_subject.to_owned()));
    if let Some(sequence) = metadata.sequence {
        pairs.push((Cow::Borrowed(ORIGINAL_SEQ), sequence.to_string()));
    }
    if let Some(length) = letter.payload_cut {
        pairs.push((Cow::Borrowed(DLQ_PAYLOAD_CUT), length.to_string()));
    }
    if header_block_len(&pairs) > MAX_DEAD_LETTER_HEADERS {
        // Stored shortened rather than refused for ever (the message would come back again
        // and again): each long value keeps its start and a digest of the whole, so distinct
        // ids stay distinct (the dead letter's own `Nats-Msg-Id` too).
        for (_, value) in &mut pairs {
            if value.len() > LONG_HEADER_VALUE {
                *value = shortened(value);
            }
        }
        pairs.push((Cow::Borrowed(DLQ_HEADERS_CUT), "true".to_owned()));
    }
    pairs
}

/// The first 256 bytes of `value` and the SHA-256 of all of it.
fn shortened(value: &str) -> String {
    use sha2::{Digest, Sha256};
    let digest: String = Sha256::digest(value.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!(
        "{}…sha256:{digest}",
        truncated(value, 256).trim_end_matches('…')
    )
}

/// The bytes a header block of `pairs` takes on the wire (`NATS/1.0\r\n`, `name: value\r\n`
/// each, a closing `\r\n`).
pub(crate) fn header_block_len<N: AsRef<str>>(pairs: &[(N, String)]) -> usize {
    pairs
        .iter()
        .map(|(name, value)| name.as_ref().len() + 2 + value.len() + 2)
        .sum::<usize>()
        + "NATS/1.0\r\n\r\n".len()
}

/// A dead letter as stored on the dead-letter stream at `subject` (`dlq.<service>.<handler>`);
/// `None` for messages eda did not write. `prefix` is the event subjects' prefix with its dot.
pub(crate) fn dead_letter_from<'h>(
    subject: &str,
    headers: &[(&'h str, &'h str)],
    payload: Bytes,
    prefix: &str,
) -> Option<DeadLetter> {
    let header = |key: &str| {
        headers
            .iter()
            .find(|(name, _)| *name == key)
            .map(|(_, value)| *value)
    };
    let owned = |key: &str| header(key).map(str::to_owned);
    let decoded = original_event(headers, prefix, None)?;
    let mut parts = subject.splitn(3, '.').skip(1);
    Some(DeadLetter {
        service: parts.next().unwrap_or_default().to_owned(),
        handler: owned(DLQ_HANDLER).unwrap_or_default(),
        reason: DlqReason::parse(header(DLQ_REASON)?)?,
        error: owned(DLQ_ERROR).unwrap_or_default(),
        attempts: header(DLQ_ATTEMPTS)
            .and_then(|a| a.parse().ok())
            .unwrap_or(0),
        metadata: decoded.metadata,
        payload,
        payload_cut: header(DLQ_PAYLOAD_CUT).and_then(|n| n.parse().ok()),
        redrive: None,
        subject: subject.to_owned(),
    })
}

/// The event a dead letter holds, from the dead letter's headers: its name from
/// `Eda-Original-Subject` (less `prefix`, the event subjects' prefix with its dot), its id from
/// `Eda-Original-Id`, its stream sequence from `Eda-Original-Seq`, the rest as the event
/// carried them. `None` without `Eda-Original-Subject` (not a dead letter eda wrote). Reads
/// stored dead letters and the redriven ones a handler's redrive consumer delivers (`eda dlq
/// redrive` sends a dead letter back with its headers as they are stored).
pub(crate) fn original_event(
    headers: &[(&str, &str)],
    prefix: &str,
    stored: Option<SystemTime>,
) -> Option<Decoded> {
    let header = |key: &str| {
        headers
            .iter()
            .find(|(name, _)| *name == key)
            .map(|(_, value)| *value)
    };
    let original_subject = header(ORIGINAL_SUBJECT)?;
    let name = original_subject
        .strip_prefix(prefix)
        .unwrap_or(original_subject);
    let sequence = header(ORIGINAL_SEQ).and_then(|s| s.parse().ok());
    // The event's own headers, with its id in place of the dead letter's.
    let original = headers.iter().filter_map(|&(key, value)| match key {
        MSG_ID => None,
        ORIGINAL_ID => Some((MSG_ID, value)),
        _ => Some((key, value)),
    });
    Some(decode(name, original, sequence, stored))
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

    #[test]
    fn where_eda_and_cloudevents_headers_disagree_cloudevents_win() {
        let pairs = [
            ("Eda-Source", "billing".to_owned()),
            ("ce-source", "payments".to_owned()),
            ("Eda-Version", "1".to_owned()),
            ("ce-edaversion", "2".to_owned()),
        ];
        let decoded = decoded("invoice.sent", &pairs, Some(3));
        let metadata = &decoded.metadata;
        assert_eq!((&*metadata.source, metadata.version), ("payments", 2));
        // The order of the headers does not matter.
        let reversed: Vec<_> = pairs.iter().rev().cloned().collect();
        let again = decoded_of("invoice.sent", &reversed);
        assert_eq!((&*again.source, again.version), ("payments", 2));
    }

    fn decoded_of(subject: &str, pairs: &[(&str, String)]) -> Arc<Metadata> {
        decoded(subject, pairs, Some(3)).metadata
    }

    #[test]
    fn messages_on_the_dead_letter_stream_that_eda_did_not_write_are_not_dead_letters() {
        let read = |pairs: &[(&str, &str)]| {
            dead_letter_from("dlq.s.h", pairs, Bytes::from_static(b"{}"), "events.")
        };
        assert!(read(&[]).is_none(), "no headers at all");
        assert!(
            read(&[(DLQ_REASON, "permanent")]).is_none(),
            "no original subject"
        );
        assert!(
            read(&[(ORIGINAL_SUBJECT, "events.a.b"), (DLQ_REASON, "bored")]).is_none(),
            "an unknown reason"
        );
        assert!(read(&[(ORIGINAL_SUBJECT, "events.a.b"), (DLQ_REASON, "permanent")]).is_some());
    }

    #[test]
    fn a_dead_letter_of_an_event_with_a_huge_id_fits_under_the_header_limit() {
        let letter = |id: String| DeadLetter {
            subject: "dlq.s.h".into(),
            service: "s".into(),
            handler: "h".into(),
            reason: DlqReason::Permanent,
            error: "declined".into(),
            attempts: 1,
            metadata: Arc::new({
                let mut metadata = Metadata::new("order.placed", 1, "s");
                metadata.correlation_id = id.clone();
                metadata.id = id;
                metadata
            }),
            payload: Bytes::new(),
            payload_cut: None,
            redrive: None,
        };
        let (a, b) = ("a".repeat(30_000), format!("{}b", "a".repeat(29_999)));
        let headers_a = dead_letter_headers(&letter(a), "events.order.placed");
        let headers_b = dead_letter_headers(&letter(b), "events.order.placed");
        assert!(header_block_len(&headers_a) < 64 * 1024);
        let value = |headers: &[(Cow<'static, str>, String)], name: &str| {
            headers
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| v.clone())
        };
        assert_eq!(value(&headers_a, DLQ_HEADERS_CUT).as_deref(), Some("true"));
        let id_a = value(&headers_a, MSG_ID).unwrap();
        assert!(id_a.starts_with("s.h.aaa") && id_a.len() < 400, "{id_a}");
        assert_ne!(
            id_a,
            value(&headers_b, MSG_ID).unwrap(),
            "distinct ids stay distinct"
        );
        let short = dead_letter_headers(&letter("7".into()), "events.order.placed");
        assert_eq!(value(&short, DLQ_HEADERS_CUT), None);
    }

    fn encoded(
        metadata: &Metadata,
        format: WireFormat,
        with_time: bool,
    ) -> Vec<(&'static str, String)> {
        let mut pairs = Vec::new();
        encode_into(metadata, format, with_time, |name, value| {
            pairs.push((name, value.to_owned()))
        });
        pairs
    }

    fn names(pairs: &[(&'static str, String)]) -> Vec<&'static str> {
        pairs.iter().map(|(name, _)| *name).collect()
    }

    fn decoded(subject: &str, pairs: &[(&str, String)], sequence: Option<u64>) -> Decoded {
        decode(
            subject,
            pairs.iter().map(|(name, value)| (*name, value.as_str())),
            sequence,
            None,
        )
    }

    #[test]
    fn only_what_the_receiver_cannot_derive_is_sent() {
        let root = Metadata::new("user.created", 1, "accounts");
        assert_eq!(
            names(&encoded(&root, WireFormat::Eda, false)),
            [MSG_ID, SOURCE]
        );
        let mut follow_up = Metadata::new("user.welcomed", 2, "mailer");
        follow_up.correlation_id = root.id.clone();
        follow_up.causation_id = Some(root.id);
        follow_up.traceparent = Some(crate::observe::trace::new_traceparent());
        let pairs = encoded(&follow_up, WireFormat::Eda, true);
        assert_eq!(
            names(&pairs),
            [
                MSG_ID,
                VERSION,
                SOURCE,
                CORRELATION_ID,
                CAUSATION_ID,
                TIME,
                TRACEPARENT
            ]
        );
        assert_eq!(pairs[1].1, "2");
    }

    #[test]
    fn metadata_round_trips_through_both_formats() {
        let mut original = Metadata::new("user.created", 2, "accounts");
        original.correlation_id = "conversation".into();
        original.causation_id = Some("cause".into());
        original.traceparent = Some(crate::observe::trace::new_traceparent());
        for format in [WireFormat::Eda, WireFormat::CloudEvents] {
            let pairs = encoded(&original, format, true);
            let pairs: Vec<(&str, String)> = pairs.into_iter().collect();
            let back = decoded("user.created", &pairs, Some(9));
            assert!(back.error.is_none(), "{format:?}: {:?}", back.error);
            assert!(back.id_from_header);
            let m = &back.metadata;
            assert_eq!(m.id, original.id, "{format:?}");
            assert_eq!(m.version, 2, "{format:?}");
            assert_eq!(&*m.source, "accounts", "{format:?}");
            assert_eq!(m.correlation_id, "conversation", "{format:?}");
            assert_eq!(m.causation_id.as_deref(), Some("cause"), "{format:?}");
            assert_eq!(m.traceparent, original.traceparent, "{format:?}");
            assert_eq!(m.sequence, Some(9));
            let millis = |t: SystemTime| {
                t.duration_since(SystemTime::UNIX_EPOCH)
                    .unwrap()
                    .as_millis()
            };
            assert_eq!(millis(m.time), millis(original.time), "{format:?}");
        }
    }

    #[test]
    fn plain_messages_take_name_from_subject_id_from_sequence_and_time_from_the_store() {
        let stored = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_700_000_000);
        let back = decode("payment.failed", [], Some(42), Some(stored));
        assert!(back.error.is_none());
        assert!(!back.id_from_header);
        let meta = back.metadata;
        assert_eq!(
            (&*meta.name, meta.version, meta.id.as_str()),
            ("payment.failed", 1, "42")
        );
        assert_eq!(meta.correlation_id, "42");
        assert_eq!(meta.time, stored);
    }

    #[test]
    fn headers_claiming_another_event_are_a_decode_error() {
        let back = decoded("user.created", &[(EVENT, "user.deleted".into())], None);
        assert_eq!(
            back.error,
            Some(DecodeError::Mismatch {
                expected: "user.created".into(),
                found: "user.deleted".into()
            })
        );
        let back = decoded("user.created", &[(VERSION, "two".into())], None);
        assert!(matches!(back.error, Some(DecodeError::Header { .. })));
    }

    #[test]
    fn a_hand_written_cloudevent_is_read_case_insensitively_with_its_extensions() {
        let pairs: Vec<(&str, String)> = vec![
            ("CE-SpecVersion", "1.0".into()),
            ("ce-id", "A234-1234-1234".into()),
            ("Ce-Type", "order.placed".into()),
            ("ce-source", "/shop/web%20front".into()),
            ("ce-time", "2018-04-05T05:56:24+02:00".into()),
            ("ce-dataschema", "https://example.com/order.json".into()),
            ("ce-TenantId", "\"acme corp\"".into()),
            ("Content-Type", "application/json".into()),
        ];
        let back = decoded("order.placed", &pairs, Some(3));
        assert!(back.error.is_none(), "{:?}", back.error);
        let m = &back.metadata;
        assert_eq!(m.id, "A234-1234-1234");
        assert_eq!(m.correlation_id, "A234-1234-1234");
        assert_eq!(&*m.source, "/shop/web front");
        assert_eq!(
            m.time,
            humantime::parse_rfc3339("2018-04-05T03:56:24Z").unwrap()
        );
        let extensions: HashMap<&str, &str> = m
            .extensions
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        assert_eq!(
            extensions,
            HashMap::from([
                ("dataschema", "https://example.com/order.json"),
                ("tenantid", "acme corp")
            ])
        );
    }

    #[test]
    fn a_cloudevent_of_another_type_or_spec_version_is_a_decode_error() {
        let back = decoded(
            "order.placed",
            &[("ce-type", "com.example.refund".into())],
            None,
        );
        assert_eq!(
            back.error,
            Some(DecodeError::Mismatch {
                expected: "order.placed".into(),
                found: "com.example.refund".into()
            })
        );
        let back = decoded("order.placed", &[("ce-specversion", "0.3".into())], None);
        assert_eq!(
            back.error,
            Some(DecodeError::Header {
                header: "ce-specversion".into(),
                value: "0.3".into()
            })
        );
        let back = decoded("order.placed", &[("ce-source", "%C0%A0".into())], None);
        assert!(matches!(back.error, Some(DecodeError::Header { .. })));
    }

    #[test]
    fn long_errors_are_cut_on_a_character_boundary() {
        assert_eq!(truncated("short", 10), "short");
        assert_eq!(truncated("ééé", 3), "é…");
    }

    #[test]
    fn small_numbers_are_written_without_allocating() {
        assert_eq!(itoa(0, &mut [0; 10]), "0");
        assert_eq!(itoa(42, &mut [0; 10]), "42");
        assert_eq!(itoa(u32::MAX, &mut [0; 10]), "4294967295");
    }

    #[test]
    fn dead_letters_round_trip_through_headers() {
        let mut metadata = Metadata::new("order.placed", 1, "shop");
        metadata.sequence = Some(7);
        metadata.extensions = vec![("tenantid".into(), "acme corp".into())];
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
            redrive: None,
        };
        let pairs = dead_letter_headers(&letter, "events.order.placed");
        assert!(header_block_len(&pairs) > 100);
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect();
        assert_eq!(
            map[MSG_ID],
            format!("billing.charge.{}", letter.metadata.id)
        );
        assert!(map.contains_key(TIME), "a dead letter keeps the event time");
        let headers: Vec<(&str, &str)> =
            map.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let back = dead_letter_from(
            "dlq.billing.charge",
            &headers,
            letter.payload.clone(),
            "events.",
        )
        .expect("a dead letter");
        assert_eq!(back.metadata.id, letter.metadata.id);
        assert_eq!(back.metadata.correlation_id, letter.metadata.id);
        let millis = |t: SystemTime| {
            t.duration_since(SystemTime::UNIX_EPOCH)
                .unwrap()
                .as_millis()
        };
        assert_eq!(millis(back.metadata.time), millis(letter.metadata.time));
        assert_eq!(back.metadata.extensions, letter.metadata.extensions);
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
