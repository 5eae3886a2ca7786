//! What generated code calls. Not a public API: it changes with the macros (the facade pins
//! both crates to one version).

pub use futures_util::future::BoxFuture;
pub use std::time::Duration;
pub use {inventory, schemars, serde};

pub use crate::handler::{
    Backoff, BackoffPolicy, EventParam, Failure, HandlerDescriptor, HandlerOptions, Idempotency,
    Invocation, InvokeResult, Start,
};
pub use crate::registry::EventDescriptor;

pub use crate::event::Event;

pub use crate::aggregate::{AggregateEvents, EncodedEvent};

/// `event` encoded for an aggregate's stream (`#[derive(AggregateEvents)]`).
pub fn encode_event<E: Event>(event: &E) -> Result<EncodedEvent, serde_json::Error> {
    EncodedEvent::of(event)
}

/// The error of [`encode_event`], named for generated signatures.
pub type EncodeError = serde_json::Error;

/// Decodes a stored event of `E` (upcasting older versions).
pub fn decode_event<E: Event>(version: u32, payload: &[u8]) -> Result<E, DecodeError> {
    E::decode_version(version, payload)
}

/// Compile-time check that a variant of `#[derive(AggregateEvents)]` holds an event.
pub const fn assert_event<E: Event>() {}

/// Compile-time check that an aggregate's events have distinct names.
pub const fn assert_distinct_events<A: Event, B: Event>(same: &str) {
    if str_eq(A::NAME, B::NAME) {
        panic!("{}", same)
    }
}

use crate::event::DecodeError;
use crate::handler::{FromContext, HandlerReturn, Requirement};

/// Decodes `payload` of `version` as exactly `E`.
pub fn decode_exact<E: Event>(version: u32, payload: &[u8]) -> Result<E, DecodeError> {
    crate::event::decode_exact::<E>(version, payload)
}

/// Decodes `payload` of `version` as `E`, or as `P` and upcasts.
pub fn decode_upcast<E: Event + From<P>, P: Event>(
    version: u32,
    payload: &[u8],
) -> Result<E, DecodeError> {
    crate::event::decode_upcast::<E, P>(version, payload)
}

/// The event parameter of an invocation.
pub fn event_param<P: EventParam>(invocation: &Invocation) -> Result<P, Failure> {
    P::from_raw(&invocation.raw).map_err(Failure::Decode)
}

/// Another parameter of an invocation.
pub fn extract<T: FromContext>(invocation: &Invocation) -> Result<T, Failure> {
    T::from_context(&invocation.context).map_err(Failure::Handler)
}

/// The state a parameter needs.
pub fn requirement<T: FromContext>() -> Option<Requirement> {
    T::requirement()
}

/// Normalizes a handler's return value.
pub fn handler_return<R: HandlerReturn>(returned: R) -> InvokeResult {
    returned.into_result().map_err(Failure::Handler)
}

/// The subject a handler subscribes to: the given one, or its event's NAME.
pub const fn handler_subject<P: EventParam>(subject: Option<&'static str>) -> &'static str {
    match (subject, P::EVENT) {
        (Some(subject), _) => subject,
        (None, Some(event)) => event.name,
        (None, None) => "",
    }
}

/// Compile-time check of a handler's subject against its event parameter.
pub const fn assert_handler_subject<P: EventParam>(
    subject: Option<&str>,
    wildcard: bool,
    mismatch: &str,
    typed_wildcard: &str,
    raw_without_subject: &str,
) {
    match (P::EVENT, subject) {
        (Some(_), Some(_)) if wildcard => panic!("{}", typed_wildcard),
        (Some(event), Some(subject)) if !str_eq(event.name, subject) => panic!("{}", mismatch),
        (None, None) => panic!("{}", raw_without_subject),
        _ => {}
    }
}

/// Compile-time check that `P` is `E`'s predecessor: same NAME, VERSION one lower.
pub const fn assert_upcast<E: Event, P: Event>(not_same: &str, not_lower: &str) {
    if !str_eq(E::NAME, P::NAME) {
        panic!("{}", not_same)
    }
    if P::VERSION + 1 != E::VERSION {
        panic!("{}", not_lower)
    }
}

const fn str_eq(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    if a.len() != b.len() {
        return false;
    }
    let mut i = 0;
    while i < a.len() {
        if a[i] != b[i] {
            return false;
        }
        i += 1;
    }
    true
}

/// `#[derive(Event)]` needs serde's `Serialize`.
#[diagnostic::on_unimplemented(
    message = "`{Self}` must derive `Serialize` to be an event",
    label = "add `#[derive(Serialize)]` (serde) here",
    note = "`#[derive(Event)]` needs `Serialize`, `Deserialize` and `JsonSchema` derives; `#[event]` adds all three"
)]
pub trait DerivesSerialize {}
impl<T: serde::Serialize> DerivesSerialize for T {}

/// `#[derive(Event)]` needs serde's `Deserialize`.
#[diagnostic::on_unimplemented(
    message = "`{Self}` must derive `Deserialize` to be an event",
    label = "add `#[derive(Deserialize)]` (serde) here",
    note = "`#[derive(Event)]` needs `Serialize`, `Deserialize` and `JsonSchema` derives; `#[event]` adds all three"
)]
pub trait DerivesDeserialize {}
impl<T: serde::de::DeserializeOwned> DerivesDeserialize for T {}

/// `#[derive(Event)]` needs schemars' `JsonSchema`.
#[diagnostic::on_unimplemented(
    message = "`{Self}` must derive `JsonSchema` to be an event",
    label = "add `#[derive(JsonSchema)]` (schemars) here",
    note = "`#[derive(Event)]` needs `Serialize`, `Deserialize` and `JsonSchema` derives; `#[event]` adds all three"
)]
pub trait DerivesJsonSchema {}
impl<T: schemars::JsonSchema> DerivesJsonSchema for T {}

/// Compile-time check for `#[derive(Event)]`.
pub const fn assert_serialize<T: DerivesSerialize>() {}
/// Compile-time check for `#[derive(Event)]`.
pub const fn assert_deserialize<T: DerivesDeserialize>() {}
/// Compile-time check for `#[derive(Event)]`.
pub const fn assert_json_schema<T: DerivesJsonSchema>() {}
