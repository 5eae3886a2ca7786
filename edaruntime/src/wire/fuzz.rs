//! Bounded fuzzing of the wire decoding (property tests, `proptest`): whatever headers and
//! payload a message arrives with, decoding returns a value or an error and never panics; and
//! what eda encodes decodes back to the same metadata.
//!
//! Fuzzed, with the crate-private entry points the transports call:
//! - [`decode`] (every `Eda-*`, `ce-*` and `Nats-Msg-Id` header, `Eda-Time` and `ce-time`
//!   parsing, version parsing, CloudEvents unquoting and percent-decoding), the way the
//!   JetStream consumer calls it (first value of each header name, a stream sequence, the
//!   time the broker stored the message) and with every header value;
//! - the decoded metadata as the delivery path uses it next: the typed decode handlers get
//!   ([`EventParam::from_raw`]: `E`, `Envelope<E>`, `RawEvent`, with an upcast chain
//!   v1 → v2 → v3, an event whose oldest version is 2, and a mismatched name), the payload
//!   as JSON, the decode error's text and dead-letter reason, a follow-up's `traceparent`,
//!   and the dead letter written from it ([`dead_letter_headers`], [`header_block_len`]) and
//!   read back ([`dead_letter_from`]);
//! - [`dead_letter_from`] on arbitrary headers, payload, subject and prefix;
//! - [`percent_decoded`] and the CloudEvents header reader on their own.
//!
//! Header names come from every name eda reads or writes (`Eda-*`, `ce-*` in any letter
//! case, `Nats-Msg-Id`, `Nats-Expected-*`, `traceparent`, `content-type`) and arbitrary
//! ones; values are empty, arbitrary Unicode (control characters included; line breaks not,
//! NATS header values cannot hold them), number-, time- and traceparent-like text,
//! percent-escape soup (`%`, `%zz`, `%C0%A0`, `%ED%A0%80`), quoted strings, and up to 70 KiB
//! long. Header values reach eda as `&str` (the client checks UTF-8), so bytes that are not
//! UTF-8 come as their lossy decoding or percent-escaped.
//! Payloads are empty, random bytes, JSON (valid for the test events or not, cut short,
//! with a byte flipped), huge numbers and nesting up to 2,000 levels.
//!
//! Round trips: metadata → headers (eda's format and CloudEvents, with and without the
//! time) → [`decode`] gives the same metadata; a dead letter → [`dead_letter_headers`] →
//! [`dead_letter_from`] gives the same dead letter.
//!
//! Each property runs [`DEFAULT_CASES`] cases from a fixed seed, so the module stays a few
//! seconds of `cargo test` (it runs there, with the other unit tests) and fails the same way
//! on every run. For a longer run set `EDA_FUZZ_CASES` (cases per property), and
//! `EDA_FUZZ_SEED` (a number, or `random`) for other cases, e.g.
//! `EDA_FUZZ_CASES=100000 EDA_FUZZ_SEED=random cargo test -p edaruntime --release --lib fuzz`.
//! Failures are not persisted to files: proptest prints the shrunk input; inputs that found a
//! bug are kept as plain tests at the end of this module.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use proptest::prelude::*;
use proptest::sample::select;
use proptest::test_runner::RngSeed;
use serde::{Deserialize, Serialize};

use super::*;
use crate::event::{decode_exact, decode_upcast, Envelope, Event, RawEvent};
use crate::handler::EventParam;
use crate::observe::trace;

/// Cases per property unless `EDA_FUZZ_CASES` says otherwise.
const DEFAULT_CASES: u32 = 256;

/// The seed unless `EDA_FUZZ_SEED` says otherwise: the same cases on every run, so that a
/// test run never fails by chance.
const DEFAULT_SEED: u64 = 0xeda;

fn config() -> ProptestConfig {
    let var = |name: &str| std::env::var(name).ok().map(|v| v.trim().to_owned());
    let cases = var("EDA_FUZZ_CASES")
        .and_then(|v| v.parse().ok())
        .unwrap_or(DEFAULT_CASES);
    let rng_seed = match var("EDA_FUZZ_SEED").as_deref() {
        Some("random") => RngSeed::Random,
        Some(seed) => RngSeed::Fixed(seed.parse().unwrap_or(DEFAULT_SEED)),
        None => RngSeed::Fixed(DEFAULT_SEED),
    };
    ProptestConfig {
        cases,
        rng_seed,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

// ---------------------------------------------------------------------------------------------
// Test events: `user.created` v1 → v2 → v3 (an upcast chain, as `#[event(upcast_from = ..)]`
// expands it) and `order.placed` v2 alone (older versions are too old).

#[derive(Debug, Serialize, Deserialize, schemars::JsonSchema)]
struct UserCreatedV1 {
    id: u64,
    email: String,
}

#[derive(Debug, Serialize, Deserialize, schemars::JsonSchema)]
struct UserCreatedV2 {
    id: u64,
    email: String,
    #[serde(default)]
    name: Option<String>,
}

#[derive(Debug, Serialize, Deserialize, schemars::JsonSchema)]
struct UserCreatedV3 {
    id: u64,
    email: String,
    name: Option<String>,
    score: f64,
    tags: Vec<String>,
    extra: serde_json::Value,
}

#[derive(Debug, Serialize, Deserialize, schemars::JsonSchema)]
struct OrderPlaced {
    order: i64,
    lines: Vec<(String, u32)>,
}

impl From<UserCreatedV1> for UserCreatedV2 {
    fn from(v1: UserCreatedV1) -> Self {
        UserCreatedV2 {
            id: v1.id,
            email: v1.email,
            name: None,
        }
    }
}

impl From<UserCreatedV2> for UserCreatedV3 {
    fn from(v2: UserCreatedV2) -> Self {
        UserCreatedV3 {
            id: v2.id,
            email: v2.email,
            name: v2.name,
            score: 0.0,
            tags: Vec::new(),
            extra: serde_json::Value::Null,
        }
    }
}

impl Event for UserCreatedV1 {
    const NAME: &'static str = "user.created";
    const VERSION: u32 = 1;
    const OLDEST_VERSION: u32 = 1;
    fn decode_version(version: u32, payload: &[u8]) -> Result<Self, DecodeError> {
        decode_exact::<Self>(version, payload)
    }
}

impl Event for UserCreatedV2 {
    const NAME: &'static str = "user.created";
    const VERSION: u32 = 2;
    const OLDEST_VERSION: u32 = <UserCreatedV1 as Event>::OLDEST_VERSION;
    fn decode_version(version: u32, payload: &[u8]) -> Result<Self, DecodeError> {
        decode_upcast::<Self, UserCreatedV1>(version, payload)
    }
}

impl Event for UserCreatedV3 {
    const NAME: &'static str = "user.created";
    const VERSION: u32 = 3;
    const OLDEST_VERSION: u32 = <UserCreatedV2 as Event>::OLDEST_VERSION;
    fn decode_version(version: u32, payload: &[u8]) -> Result<Self, DecodeError> {
        decode_upcast::<Self, UserCreatedV2>(version, payload)
    }
}

impl Event for OrderPlaced {
    const NAME: &'static str = "order.placed";
    const VERSION: u32 = 2;
    const OLDEST_VERSION: u32 = 2;
    fn decode_version(version: u32, payload: &[u8]) -> Result<Self, DecodeError> {
        decode_exact::<Self>(version, payload)
    }
}

// ---------------------------------------------------------------------------------------------
// Header names.

/// Every header name eda reads or writes, and the ones NATS and CloudEvents users add.
const KNOWN_NAMES: &[&str] = &[
    MSG_ID,
    EVENT,
    VERSION,
    TIME,
    SOURCE,
    CORRELATION_ID,
    CAUSATION_ID,
    SCHEMA,
    TRACEPARENT,
    DLQ_REASON,
    DLQ_ERROR,
    DLQ_ATTEMPTS,
    DLQ_HANDLER,
    ORIGINAL_SUBJECT,
    ORIGINAL_ID,
    ORIGINAL_SEQ,
    DLQ_PAYLOAD_CUT,
    "Nats-Expected-Stream",
    "Nats-Expected-Last-Msg-Id",
    "Nats-Expected-Last-Sequence",
    "Nats-Expected-Last-Subject-Sequence",
    "Nats-Pending-Messages",
    "Nats-Rollup",
    "content-type",
    "Content-Type",
    "nats-msg-id",
    "eda-version",
];

/// The CloudEvents headers eda knows, and common extensions.
const CE_NAMES: &[&str] = &[
    "ce-specversion",
    "ce-id",
    "ce-type",
    "ce-source",
    "ce-time",
    "ce-datacontenttype",
    cloudevents::VERSION,
    "ce-correlationid",
    "ce-causationid",
    "ce-traceparent",
    "ce-dataschema",
    "ce-subject",
    "ce-tenantid",
    "ce-",
    "ce",
    "c",
];

/// `name` with the letter case of each character flipped where `flips` says.
fn recased(name: &str, flips: &[bool]) -> String {
    name.chars()
        .zip(flips.iter().chain(std::iter::repeat(&false)))
        .map(|(c, &flip)| {
            if flip && c.is_ascii_lowercase() {
                c.to_ascii_uppercase()
            } else if flip {
                c.to_ascii_lowercase()
            } else {
                c
            }
        })
        .collect()
}

fn header_name() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => select(KNOWN_NAMES).prop_map(str::to_owned),
        4 => (select(CE_NAMES), prop::collection::vec(any::<bool>(), 24))
            .prop_map(|(name, flips)| recased(name, &flips)),
        1 => "[cC][eE]-\\PC{0,12}",
        1 => "[!-9;-~]{1,20}",
        1 => ".{0,12}",
    ]
}

// ---------------------------------------------------------------------------------------------
// Header values.

/// Pieces that header values are glued from: escapes, broken escapes, quotes, digits, time and
/// traceparent parts, multi-byte and control characters.
const FRAGMENTS: &[&str] = &[
    "",
    "%",
    "%2",
    "%20",
    "%25",
    "%zz",
    "%+A",
    "%C0%A0",
    "%E2%82%AC",
    "%ED%A0%80",
    "%F0%9F%98",
    "%FF",
    "%00",
    "%0A",
    "%0D",
    "%7F",
    "\"",
    "\\",
    "\\\"",
    " ",
    "\t",
    "a",
    "Z",
    "T",
    "é",
    "€",
    "😀",
    "\u{0}",
    "\u{1}",
    "\u{7f}",
    "\u{85}",
    "\u{200b}",
    "\u{feff}",
    "0",
    "1",
    "9",
    "-",
    "+",
    ":",
    ".",
    "e",
    "00",
    "ff",
    "1970-01-01",
    "2024-02-29",
    "9999-12-31",
    "T23:59:59",
    "T00:00:00",
    ".999999999",
    "Z",
    "+00:00",
    "-23:59",
    "+99:99",
    "1.0",
    "0.3",
    "00-",
    "-01",
    "4bf92f3577b34da6a3ce929d0e0e4736",
    "00f067aa0ba902b7",
];

fn soup() -> impl Strategy<Value = String> {
    prop::collection::vec(select(FRAGMENTS), 0..24).prop_map(|parts| parts.concat())
}

/// Long values, up to 70 KiB: one piece repeated.
fn long_value() -> impl Strategy<Value = String> {
    (select(FRAGMENTS), 0usize..=70 * 1024).prop_map(|(piece, len)| {
        let piece = if piece.is_empty() { "x" } else { piece };
        let mut value = piece.repeat(len / piece.len() + 1);
        let mut end = len.min(value.len());
        while !value.is_char_boundary(end) {
            end -= 1;
        }
        value.truncate(end);
        value
    })
}

/// Numbers as header values: versions, sequences, attempts, lengths.
fn number_value() -> impl Strategy<Value = String> {
    prop_oneof![
        (0u32..6).prop_map(|n| n.to_string()),
        any::<u64>().prop_map(|n| n.to_string()),
        any::<i64>().prop_map(|n| n.to_string()),
        select(
            &[
                " 2 ",
                "+2",
                "02",
                "4294967295",
                "4294967296",
                "-1",
                "1e3",
                "0x10",
                "18446744073709551616",
                "340282366920938463463374607431768211456",
            ][..]
        )
        .prop_map(str::to_owned),
    ]
}

/// RFC 3339-ish times, in range, out of range and malformed.
fn time_value() -> impl Strategy<Value = String> {
    prop_oneof![3 => any_time(), 1 => edge_time()]
}

/// Times near the ends of what `humantime` reads (1970 to 9999), with offsets that may take
/// them past the ends.
fn edge_time() -> impl Strategy<Value = String> {
    (
        any::<bool>(),
        0u32..3,
        0u32..60,
        0u32..61,
        select(&["", "Z", "+", "-"][..]),
        0u32..24,
        0u32..60,
    )
        .prop_map(|(first, h, mi, s, sign, zh, zm)| {
            let (date, h) = if first {
                ("1970-01-01", h)
            } else {
                ("9999-12-31", 23 - h)
            };
            let zone = match sign {
                "+" | "-" => format!("{sign}{zh:02}:{zm:02}"),
                other => other.to_owned(),
            };
            format!("{date}T{h:02}:{mi:02}:{s:02}{zone}")
        })
}

fn any_time() -> impl Strategy<Value = String> {
    let zone = prop_oneof![
        Just(String::new()),
        Just("Z".to_owned()),
        (select(&["+", "-"][..]), 0u32..100, 0u32..100)
            .prop_map(|(sign, h, m)| format!("{sign}{h:02}:{m:02}")),
    ];
    (
        prop_oneof![1969u32..1971, 9998u32..10_000, 0u32..10_000],
        0u32..14,
        0u32..33,
        0u32..25,
        0u32..61,
        0u32..62,
        prop::option::of(0u32..1_000_000_000),
        zone,
        any::<bool>(),
    )
        .prop_map(|(y, mo, d, h, mi, s, frac, zone, spaced)| {
            let frac = frac.map(|f| format!(".{f}")).unwrap_or_default();
            let sep = if spaced { " " } else { "T" };
            format!("{y:04}-{mo:02}-{d:02}{sep}{h:02}:{mi:02}:{s:02}{frac}{zone}")
        })
}

fn traceparent_value() -> impl Strategy<Value = String> {
    prop_oneof![
        "[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}",
        "00-0{32}-[0-9a-f]{16}-01",
        "[0-9a-fA-Fx-]{0,60}",
    ]
}

/// Bytes that are not UTF-8, as the text they reach eda as: their lossy decoding.
fn lossy_value() -> impl Strategy<Value = String> {
    prop::collection::vec(any::<u8>(), 0..64)
        .prop_map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
}

fn header_value() -> impl Strategy<Value = String> {
    prop_oneof![
        1 => Just(String::new()),
        3 => ".{0,40}",
        4 => soup(),
        2 => soup().prop_map(|s| format!("\"{s}\"")),
        2 => number_value(),
        2 => time_value(),
        1 => traceparent_value(),
        1 => lossy_value(),
        1 => select(&["user.created", "order.placed", "decode", "version", "permanent",
            "retries_exhausted", "events.user.created", "1.0"][..]).prop_map(str::to_owned),
        1 => long_value(),
    ]
}

/// A header value as it can arrive: NATS header values hold no line breaks.
fn arriving(value: String) -> String {
    if value.contains(['\r', '\n']) {
        value.replace(['\r', '\n'], "")
    } else {
        value
    }
}

fn headers() -> impl Strategy<Value = Vec<(String, String)>> {
    prop::collection::vec((header_name(), header_value().prop_map(arriving)), 0..24)
}

/// What the JetStream consumer hands [`decode`]: the first value of each header name
/// (`header_pairs` in the transport, over the client's header map).
fn first_values(headers: &[(String, String)]) -> Vec<(&str, &str)> {
    let mut pairs: Vec<(&str, &str)> = Vec::with_capacity(headers.len());
    for (name, value) in headers {
        if !pairs.iter().any(|(seen, _)| *seen == name.as_str()) {
            pairs.push((name, value));
        }
    }
    pairs
}

// ---------------------------------------------------------------------------------------------
// Payloads.

fn json_value() -> impl Strategy<Value = serde_json::Value> {
    use serde_json::Value;
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<u64>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        ".{0,12}".prop_map(Value::String),
    ];
    leaf.prop_recursive(6, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::vec(
                (
                    prop_oneof![
                        select(
                            &["id", "email", "name", "score", "tags", "extra", "order", "lines"][..]
                        )
                        .prop_map(str::to_owned),
                        ".{0,6}",
                    ],
                    inner
                ),
                0..6
            )
            .prop_map(|fields| Value::Object(fields.into_iter().collect())),
        ]
    })
}

/// Payloads valid for one of the test events (of some version), so that decoding gets past
/// the JSON into the upcasts.
fn event_payload() -> impl Strategy<Value = Vec<u8>> {
    (
        any::<u64>(),
        ".{0,16}",
        prop::option::of(".{0,8}"),
        any::<f64>(),
        json_value(),
        any::<i64>(),
        0u8..4,
    )
        .prop_map(|(id, email, name, score, extra, order, which)| {
            let value = match which {
                0 => serde_json::json!({"id": id, "email": email}),
                1 => serde_json::json!({"id": id, "email": email, "name": name}),
                2 => serde_json::json!({"id": id, "email": email, "name": name, "score": score,
                    "tags": ["a", email], "extra": extra}),
                _ => serde_json::json!({"order": order, "lines": [[email, 3]]}),
            };
            serde_json::to_vec(&value).unwrap_or_default()
        })
}

/// JSON (valid or not): cut short or with a byte changed.
fn mangled(json: Vec<u8>, cut: usize, flip: Option<(usize, u8)>) -> Vec<u8> {
    let mut bytes = json;
    if cut < bytes.len() {
        bytes.truncate(cut);
    }
    if let (Some((at, byte)), false) = (flip, bytes.is_empty()) {
        let at = at % bytes.len();
        bytes[at] = byte;
    }
    bytes
}

/// Nesting up to 2,000 levels deep (serde_json stops at 128), closed or not.
fn nested() -> impl Strategy<Value = Vec<u8>> {
    (
        0usize..2_000,
        select(&["[", "{\"extra\":", "{\"a\":[", "[{\"\":"][..]),
        any::<bool>(),
    )
        .prop_map(|(depth, open, closed)| {
            let mut text = open.repeat(depth);
            text.push('1');
            if closed {
                for _ in 0..depth {
                    text.push_str(match open {
                        "[" => "]",
                        "{\"extra\":" => "}",
                        _ => "]}",
                    });
                }
            }
            text.into_bytes()
        })
}

fn huge_number() -> impl Strategy<Value = Vec<u8>> {
    (
        "-?[0-9]{1,400}(\\.[0-9]{0,40})?([eE][+-]?[0-9]{1,12})?",
        select(&["id", "score", "order", "extra"][..]),
        any::<bool>(),
    )
        .prop_map(|(number, field, bare)| {
            if bare {
                number.into_bytes()
            } else {
                format!("{{\"id\":1,\"email\":\"e\",\"{field}\":{number}}}").into_bytes()
            }
        })
}

fn payload() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        1 => Just(Vec::new()),
        2 => prop::collection::vec(any::<u8>(), 0..512),
        3 => event_payload(),
        2 => (json_value(), any::<usize>(), prop::option::of((any::<usize>(), any::<u8>())))
            .prop_map(|(v, cut, flip)| mangled(serde_json::to_vec(&v).unwrap_or_default(), cut, flip)),
        2 => (event_payload(), 0usize..200, prop::option::of((any::<usize>(), any::<u8>())))
            .prop_map(|(json, cut, flip)| mangled(json, cut, flip)),
        1 => nested(),
        1 => huge_number(),
        1 => soup().prop_map(String::into_bytes),
    ]
}

// ---------------------------------------------------------------------------------------------
// Checks shared by the properties.

fn subject_name() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => Just("user.created".to_owned()),
        1 => Just("order.placed".to_owned()),
        1 => "\\PC{0,20}",
    ]
}

fn stored_time() -> impl Strategy<Value = Option<SystemTime>> {
    prop::option::of(any::<u64>().prop_map(|n| UNIX_EPOCH + Duration::from_nanos(n)))
}

/// Whether `humantime` can write `time` as RFC 3339 (what `Metadata::time_rfc3339` does).
fn writable(time: SystemTime) -> bool {
    time.duration_since(UNIX_EPOCH)
        .is_ok_and(|d| d.as_secs() < 253_402_300_800)
}

fn millis(time: SystemTime) -> i128 {
    match time.duration_since(UNIX_EPOCH) {
        Ok(d) => d.as_millis() as i128,
        Err(e) => -(e.duration().as_millis() as i128),
    }
}

/// Takes `decoded` down the delivery path, as a handler of each kind and a dead letter would,
/// checking what must hold whatever the input.
fn deliver(subject: &str, decoded: &Decoded, payload: &Bytes, attempt: u32) {
    let metadata = &decoded.metadata;
    assert!(metadata.version >= 1, "version {}", metadata.version);
    assert_eq!(&*metadata.name, subject);
    assert_eq!(&*metadata.subject, subject);
    if let Some(error) = &decoded.error {
        let _ = error.to_string();
        let _ = crate::dlq::DlqReason::from(error);
        assert!(!error.is_retryable(), "a header error is never retryable");
    }

    let raw = RawEvent::new(Arc::clone(metadata), payload.clone(), attempt);
    let _ = raw.json();
    let _ = RawEvent::from_raw(&raw).map(|r| r.payload().len());
    check_typed::<UserCreatedV1>(&raw);
    check_typed::<UserCreatedV2>(&raw);
    check_typed::<UserCreatedV3>(&raw);
    check_typed::<OrderPlaced>(&raw);
    if let Ok(envelope) = Envelope::<UserCreatedV3>::from_raw(&raw) {
        assert_eq!(envelope.id(), metadata.id);
        assert_eq!(envelope.attempt, attempt);
        let _ = envelope.into_inner();
    }

    // A follow-up published from the handler continues the trace.
    let child = trace::child_of(metadata.traceparent.as_deref());
    assert_eq!(trace::trace_id(&child).map(str::len), Some(32), "{child}");
    if let Some(parent) = metadata.traceparent.as_deref().and_then(trace::trace_id) {
        assert_eq!(trace::trace_id(&child), Some(parent));
    }

    dead_letter_round_trip(metadata, payload, attempt);
}

/// The typed decode: an error of the right kind, never a panic.
fn check_typed<E: Event + std::fmt::Debug>(raw: &RawEvent) {
    let version = raw.version();
    match E::from_raw(raw) {
        Ok(_) => {
            assert_eq!(raw.name(), E::NAME);
            assert!((E::OLDEST_VERSION..=E::VERSION).contains(&version));
        }
        Err(DecodeError::Mismatch { expected, found }) => {
            assert_eq!(expected, E::NAME);
            assert_eq!(found, raw.name());
        }
        Err(DecodeError::UnknownVersion {
            version: v, newest, ..
        }) => {
            assert_eq!((v, newest), (version, E::VERSION));
            assert!(version > E::VERSION);
        }
        Err(DecodeError::TooOld {
            version: v, oldest, ..
        }) => {
            assert_eq!((v, oldest), (version, E::OLDEST_VERSION));
            assert!(version < E::OLDEST_VERSION);
        }
        Err(DecodeError::Payload {
            version: v,
            message,
            ..
        }) => {
            assert_eq!(v, version);
            assert!(!message.is_empty());
        }
        Err(other) => panic!("a typed decode gave a header error: {other:?}"),
    }
}

/// The dead letter of a received message is written without panicking, with header-safe
/// values, and reads back as the same event.
fn dead_letter_round_trip(metadata: &Arc<Metadata>, payload: &Bytes, attempts: u32) {
    let letter = DeadLetter {
        subject: "dlq.svc.handler".into(),
        service: "svc".into(),
        handler: "handler".into(),
        reason: crate::dlq::DlqReason::Decode,
        error: "bad\r\npayload".repeat(200),
        attempts,
        metadata: Arc::clone(metadata),
        payload: payload.clone(),
        payload_cut: None,
        redrive: None,
    };
    let original_subject = format!("events.{}", metadata.subject);
    let pairs = dead_letter_headers(&letter, &original_subject);
    let _ = header_block_len(&pairs);
    for (name, value) in &pairs {
        assert!(
            !value.contains(['\r', '\n']),
            "a line break in the value of `{name}`"
        );
    }
    let headers: Vec<(&str, &str)> = pairs
        .iter()
        .map(|(k, v)| (k.as_ref(), v.as_str()))
        .collect();
    let back = dead_letter_from(&letter.subject, &headers, payload.clone(), "events.")
        .expect("eda's dead letter reads back");
    if pairs.iter().any(|(name, _)| name == DLQ_HEADERS_CUT) {
        // Values too long for the server's header limit are kept shortened, with a digest.
        assert!(header_block_len(&pairs) < 64 * 1024);
        assert!(back.metadata.id.contains("…sha256:") || back.metadata.id == metadata.id);
        return;
    }
    assert_eq!(back.metadata.id, metadata.id);
    assert_eq!(back.metadata.correlation_id, metadata.correlation_id);
    assert_eq!(back.metadata.version, metadata.version);
    assert_eq!(back.metadata.sequence, metadata.sequence);
    assert_eq!(millis(back.metadata.time), millis(metadata.time));
    assert_eq!(back.attempts, attempts);
}

// ---------------------------------------------------------------------------------------------
// Round trips.

/// Text as eda's metadata holds it: no control characters (CloudEvents forbids them in
/// attribute values), percent signs, quotes and spaces often.
fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        "\\PC{0,24}",
        soup().prop_map(|s| s.chars().filter(|c| !c.is_control()).collect()),
    ]
}

fn metadata() -> impl Strategy<Value = Metadata> {
    (
        (text(), text(), 1u32..=u32::MAX, 0u64..253_402_300_800_000),
        (
            text(),
            prop::option::of(text()),
            prop::option::of(text()),
            prop::option::of("[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}"),
            prop::option::of(any::<u64>()),
        ),
    )
        .prop_map(
            |((id, name, version, ms), (source, correlation, causation, traceparent, sequence))| {
                let name: Arc<str> = name.into();
                Metadata {
                    correlation_id: correlation.unwrap_or_else(|| id.clone()),
                    id,
                    subject: Arc::clone(&name),
                    name,
                    version,
                    time: UNIX_EPOCH + Duration::from_millis(ms),
                    source: source.into(),
                    causation_id: causation,
                    schema: None,
                    traceparent,
                    sequence,
                    extensions: Vec::new(),
                }
            },
        )
}

/// CloudEvents extension attributes: lower-case names eda has no field for.
fn extensions() -> impl Strategy<Value = Vec<(String, String)>> {
    let known = [
        "id",
        "type",
        "source",
        "time",
        "specversion",
        "edaversion",
        "correlationid",
        "causationid",
        "traceparent",
    ];
    prop::collection::vec(
        (
            "[a-z0-9]{0,12}".prop_filter("not an attribute eda reads", move |a| {
                !known.contains(&a.as_str())
            }),
            text(),
        ),
        0..4,
    )
}

fn assert_same(back: &Metadata, original: &Metadata, format: WireFormat) {
    assert_eq!(back.id, original.id, "{format:?}");
    assert_eq!(back.name, original.name, "{format:?}");
    assert_eq!(back.subject, original.subject, "{format:?}");
    assert_eq!(back.version, original.version, "{format:?}");
    assert_eq!(back.source, original.source, "{format:?}");
    assert_eq!(back.correlation_id, original.correlation_id, "{format:?}");
    assert_eq!(back.causation_id, original.causation_id, "{format:?}");
    assert_eq!(back.traceparent, original.traceparent, "{format:?}");
    assert_eq!(back.schema, original.schema, "{format:?}");
    assert_eq!(back.sequence, original.sequence, "{format:?}");
}

proptest! {
    #![proptest_config(config())]

    /// Any headers and payload, as the JetStream consumer decodes them and hands them on.
    #[test]
    fn any_message_decodes_without_panicking(
        subject in subject_name(),
        headers in headers(),
        payload in payload(),
        sequence in prop::option::of(any::<u64>()),
        stored in stored_time(),
        attempt in 1u32..5,
    ) {
        let payload = Bytes::from(payload);
        let decoded = decode(&subject, first_values(&headers), sequence, stored);
        prop_assert_eq!(decoded.metadata.sequence, sequence);
        if !decoded.id_from_header {
            if let Some(sequence) = sequence {
                prop_assert_eq!(&decoded.metadata.id, &sequence.to_string());
            }
        }
        deliver(&subject, &decoded, &payload, attempt);

        // Every value of a repeated header too, in the order given.
        let all = decode(
            &subject,
            headers.iter().map(|(n, v)| (n.as_str(), v.as_str())),
            sequence,
            stored,
        );
        deliver(&subject, &all, &payload, attempt);
    }

    /// Headers that name a version for the test events' subject, with payloads for them:
    /// the typed decode and its upcasts get exercised, not only its first checks.
    #[test]
    fn versioned_events_decode_without_panicking(
        ce in any::<bool>(),
        version in prop_oneof![(0u32..6).prop_map(|n| n.to_string()), number_value()],
        extra in headers(),
        payload in payload(),
    ) {
        let name = if ce { cloudevents::VERSION } else { VERSION };
        let mut headers = vec![(name.to_owned(), version)];
        headers.extend(extra);
        let payload = Bytes::from(payload);
        for subject in ["user.created", "order.placed"] {
            let decoded = decode(subject, first_values(&headers), Some(1), None);
            deliver(subject, &decoded, &payload, 1);
        }
    }

    /// Anything on a dead-letter subject: read as a dead letter or not, never a panic.
    #[test]
    fn any_dead_letter_reads_without_panicking(
        subject in prop_oneof![
            Just("dlq.svc.handler".to_owned()),
            Just("dlq".to_owned()),
            "\\PC{0,24}",
        ],
        prefix in prop_oneof![Just("events.".to_owned()), Just(String::new()), ".{0,8}"],
        reason in prop::option::of(prop_oneof![
            select(&["decode", "version", "permanent", "retries_exhausted"][..])
                .prop_map(str::to_owned),
            header_value(),
        ]),
        original in prop::option::of(prop_oneof![
            Just("events.user.created".to_owned()),
            header_value(),
        ]),
        headers in headers(),
        payload in payload(),
    ) {
        let mut all: Vec<(&str, &str)> = Vec::new();
        if let Some(reason) = &reason {
            all.push((DLQ_REASON, reason));
        }
        if let Some(original) = &original {
            all.push((ORIGINAL_SUBJECT, original));
        }
        all.extend(headers.iter().map(|(n, v)| (n.as_str(), v.as_str())));
        let payload = Bytes::from(payload);
        if let Some(letter) = dead_letter_from(&subject, &all, payload.clone(), &prefix) {
            prop_assert!(letter.metadata.version >= 1);
            prop_assert_eq!(&letter.payload, &payload);
            prop_assert_eq!(&letter.subject, &subject);
            let _ = letter.message_id();
        }
    }

    /// The smaller pieces on their own: percent-decoding, the CloudEvents reader, times,
    /// traceparents, dead-letter reasons.
    #[test]
    fn header_value_parsers_do_not_panic(name in header_name(), value in header_value()) {
        if let Some(text) = percent_decoded(&value) {
            prop_assert!(!text.contains('%') || value.contains("%25"));
            if value.contains('%') {
                prop_assert!(!text.chars().any(char::is_control));
            }
        }
        let mut read = Read::default();
        cloudevents::read(&mut read, &name, &value);
        read.header(&name, &value);
        let _ = read.into_decoded("user.created", None, None);
        let _ = parse_time(&value);
        let _ = trace::trace_id(&value);
        let _ = trace::child_of(Some(&value));
        let _ = crate::dlq::DlqReason::parse(&value);
    }

    /// Times eda reads are times eda can write again (a dead letter keeps the event time):
    /// one it cannot write is taken for unreadable, and the stored time is used.
    #[test]
    fn read_times_can_be_written_again(
        value in time_value(),
        header in select(&[TIME, "ce-time", "CE-Time"][..]),
    ) {
        let stored = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let decoded = decode("user.created", [(header, value.as_str())], None, Some(stored));
        let time = decoded.metadata.time;
        prop_assert!(writable(time), "`{}` reads as {:?}, which cannot be written", value, time);
        match parse_time(&value).filter(|t| writable(*t)) {
            Some(read) => prop_assert_eq!(time, read),
            None => prop_assert_eq!(time, stored),
        }
        let written = humantime::format_rfc3339_millis(time).to_string();
        prop_assert_eq!(parse_time(&written).map(millis), Some(millis(time)));
    }

    /// What eda publishes decodes back to the same metadata, in both formats.
    #[test]
    fn published_metadata_round_trips(
        original in metadata(),
        with_time in any::<bool>(),
        stored in 0u64..253_402_300_800_000,
    ) {
        let stored = UNIX_EPOCH + Duration::from_millis(stored);
        for format in [WireFormat::Eda, WireFormat::CloudEvents] {
            let mut pairs: Vec<(&'static str, String)> = Vec::new();
            encode_into(&original, format, with_time, |name, value| {
                pairs.push((name, value.to_owned()));
            });
            let back = decode(
                &original.name,
                pairs.iter().map(|(n, v)| (*n, v.as_str())),
                original.sequence,
                Some(stored),
            );
            prop_assert!(back.error.is_none(), "{:?}: {:?}", format, back.error);
            prop_assert!(back.id_from_header);
            assert_same(&back.metadata, &original, format);
            let sent_time = with_time || format == WireFormat::CloudEvents;
            let time = if sent_time { original.time } else { stored };
            prop_assert_eq!(back.metadata.time, time, "{:?}", format);
            let extensions: Vec<(String, String)> = match format {
                WireFormat::CloudEvents => {
                    vec![("datacontenttype".into(), "application/json".into())]
                }
                _ => Vec::new(),
            };
            prop_assert_eq!(&back.metadata.extensions, &extensions, "{:?}", format);
        }
    }

    /// A dead letter eda writes reads back as the same dead letter.
    #[test]
    fn dead_letters_round_trip(
        original in metadata(),
        extensions in extensions(),
        service in "[^.]{0,12}",
        handler in "\\PC{0,16}",
        reason in select(&[
            crate::dlq::DlqReason::Decode,
            crate::dlq::DlqReason::Version,
            crate::dlq::DlqReason::Permanent,
            crate::dlq::DlqReason::RetriesExhausted,
        ][..]),
        error in prop_oneof![".{0,64}", long_value()],
        attempts in any::<u32>(),
        payload in prop::collection::vec(any::<u8>(), 0..64),
        payload_cut in prop::option::of(any::<usize>()),
    ) {
        let mut original = original;
        original.extensions = extensions;
        let letter = DeadLetter {
            subject: format!("dlq.{service}.{handler}"),
            service,
            handler,
            reason,
            error,
            attempts,
            metadata: Arc::new(original),
            payload: Bytes::from(payload),
            payload_cut,
            redrive: None,
        };
        let original_subject = format!("events.{}", letter.metadata.subject);
        let pairs = dead_letter_headers(&letter, &original_subject);
        let headers: Vec<(&str, &str)> =
            pairs.iter().map(|(k, v)| (k.as_ref(), v.as_str())).collect();
        let back = dead_letter_from(&letter.subject, &headers, letter.payload.clone(), "events.");
        let back = back.expect("eda's dead letter reads back");
        let m = &letter.metadata;
        assert_same(&back.metadata, m, WireFormat::Eda);
        prop_assert_eq!(back.metadata.time, m.time);
        prop_assert_eq!(&back.metadata.extensions, &m.extensions);
        prop_assert_eq!(&back.subject, &letter.subject);
        prop_assert_eq!(&back.service, &letter.service);
        prop_assert_eq!(&back.handler, &letter.handler);
        prop_assert_eq!(back.reason, letter.reason);
        prop_assert_eq!(back.attempts, letter.attempts);
        prop_assert_eq!(&back.payload, &letter.payload);
        prop_assert_eq!(back.payload_cut, letter.payload_cut);
        let error = header_safe(&truncated(&letter.error, MAX_ERROR_LEN));
        prop_assert_eq!(back.error, error);
    }
}

// ---------------------------------------------------------------------------------------------
// Inputs that found a bug, kept as plain tests.

/// Offsets taking a time past what `humantime` writes (before 1970, after 9999) made a dead
/// letter of the message panic (`Metadata::time_rfc3339`): such a time is unreadable now.
#[test]
fn times_out_of_writable_range_fall_back_to_the_stored_time() {
    let stored = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
    for (header, value) in [
        ("ce-time", "1970-01-01T00:00:00+00:01"),
        (TIME, "1970-01-01T00:59:59+01:00"),
        (TIME, "9999-12-31T23:00:00-01:00"),
        ("ce-time", "9999-12-31T23:59:59-00:01"),
    ] {
        let decoded = decode("user.created", [(header, value)], Some(1), Some(stored));
        assert_eq!(decoded.metadata.time, stored, "{header}: {value}");
        dead_letter_round_trip(&decoded.metadata, &Bytes::new(), 1);
    }
    let decoded = decode(
        "user.created",
        [(TIME, "1970-01-01T01:00:00+01:00")],
        None,
        None,
    );
    assert_eq!(
        decoded.metadata.time, UNIX_EPOCH,
        "the epoch itself is kept"
    );
}
