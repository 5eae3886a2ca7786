//! Event types: names, versions, schemas and fingerprints.
#![allow(missing_docs, missing_debug_implementations)]

use eda::prelude::*;

#[event]
pub struct OrderPlaced {
    pub id: u64,
}

#[event]
pub struct HTTPRequestFailed {
    pub status: u16,
}

#[event(version = 4)]
pub enum PaymentOutcome {
    Succeeded { id: u64 },
    Failed { id: u64, reason: String },
}

mod same_shape {
    use eda::prelude::*;

    /// The same fields as `super::OrderPlaced`, under another Rust name.
    #[event("order.placed")]
    pub struct Renamed {
        pub id: u64,
    }

    /// One more field.
    #[event("order.placed")]
    pub struct Extended {
        pub id: u64,
        pub note: String,
    }
}

#[test]
fn names_default_to_the_type_name_dotted() {
    assert_eq!(OrderPlaced::NAME, "order.placed");
    assert_eq!(HTTPRequestFailed::NAME, "http.request.failed");
    assert_eq!(OrderPlaced::VERSION, 1);
    assert_eq!(PaymentOutcome::VERSION, 4);
    assert_eq!(PaymentOutcome::NAME, "payment.outcome");
}

#[test]
fn the_fingerprint_changes_with_the_schema_and_not_otherwise() {
    assert_eq!(
        OrderPlaced::fingerprint(),
        OrderPlaced::fingerprint(),
        "stable"
    );
    assert_eq!(
        OrderPlaced::fingerprint(),
        same_shape::Renamed::fingerprint(),
        "a Rust rename is not a schema change"
    );
    assert_ne!(
        OrderPlaced::fingerprint(),
        same_shape::Extended::fingerprint(),
        "a new field is"
    );
    assert_eq!(OrderPlaced::fingerprint().len(), 64, "hex SHA-256");
}

#[test]
fn enums_are_events_too() {
    let raw = serde_json::to_vec(&PaymentOutcome::Failed {
        id: 1,
        reason: "expired".into(),
    })
    .unwrap();
    let back = PaymentOutcome::decode_version(4, &raw).unwrap();
    assert!(matches!(back, PaymentOutcome::Failed { id: 1, ref reason } if reason == "expired"));
    assert!(PaymentOutcome::schema()["oneOf"].is_array());
}

#[test]
fn decoding_reports_versions_it_cannot_read() {
    let err = OrderPlaced::decode_version(2, b"{\"id\":1}")
        .err()
        .expect("v2 is unknown");
    assert_eq!(
        err.to_string(),
        "`order.placed` v2 is newer than the newest version this handler knows (v1)"
    );
    let err = OrderPlaced::decode_version(1, b"{}")
        .err()
        .expect("`id` is missing");
    assert_eq!(
        err.to_string(),
        "payload is not a valid `order.placed` v1: missing field `id` at line 1 column 2"
    );
}

#[event("order.placed", version = 3)]
pub struct OrderPlacedV3 {
    pub id: u64,
}

#[test]
fn a_version_older_than_the_upcast_chain_is_reported() {
    let err = OrderPlacedV3::decode_version(2, b"{\"id\":1}")
        .err()
        .expect("v3 has no upcast chain");
    assert_eq!(
        err.to_string(),
        "`order.placed` v2 is older than the oldest version this handler can upcast from (v3)"
    );
    assert_eq!(eda::DlqReason::from(&err), eda::DlqReason::Version);
}

#[test]
fn fingerprints_of_real_event_types_are_pinned() {
    // If this changes, every registered schema in every deployment changes with it (and
    // services would stop at startup on the registry): treat it as a breaking change.
    assert_eq!(OrderPlaced::fingerprint(), PINNED_ORDER_PLACED);
}

const PINNED_ORDER_PLACED: &str =
    "bf5538724068814db932963f3306d7ae6ee3a909b249a6f59af0ff7ea2d11dca";
