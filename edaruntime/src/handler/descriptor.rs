//! The registration record `#[handler]` submits, and what its invoke function takes and
//! returns.

use std::any::TypeId;

use futures_util::future::BoxFuture;
use serde::Serialize;

use super::{Context, HandlerError, HandlerOptions};
use crate::event::{DecodeError, RawEvent};

/// The event type a typed handler takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct EventRef {
    /// Event name.
    pub name: &'static str,
    /// Newest version the handler decodes.
    pub version: u32,
    /// Oldest version it upcasts from.
    pub oldest_version: u32,
}

/// A state value a handler parameter needs.
#[derive(Debug, Clone, Copy)]
pub struct Requirement {
    /// The state's type.
    pub type_id: TypeId,
    /// Its name, for messages.
    pub type_name: &'static str,
}

/// Result of one handler invocation, before delivery decides what to do with it.
#[doc(hidden)]
#[derive(Debug)]
pub enum Failure {
    /// The handler (or an extractor) failed.
    Handler(HandlerError),
    /// The payload could not be decoded into the event parameter.
    Decode(DecodeError),
}

/// What the generated invoke function returns.
#[doc(hidden)]
pub type InvokeResult = Result<(), Failure>;

/// What the generated invoke function receives.
#[doc(hidden)]
#[derive(Debug)]
pub struct Invocation {
    /// The message.
    pub raw: RawEvent,
    /// The handler's context for it.
    pub context: Context,
}

/// The registration `#[handler]` submits; collected at startup through `inventory`.
#[derive(Debug)]
pub struct HandlerDescriptor {
    /// Handler name (the function name unless `name = ".."`).
    pub name: &'static str,
    /// Subject pattern, without the transport's prefix.
    pub subject: &'static str,
    /// The only service that runs it, if set.
    pub service: Option<&'static str>,
    /// The event type, for typed handlers.
    pub event: Option<EventRef>,
    /// Options.
    pub options: HandlerOptions,
    /// The names of the events it publishes, when declared (`emits = [..]`).
    pub emits: Option<&'static [&'static str]>,
    /// State types its parameters need.
    pub requirements: &'static [fn() -> Option<Requirement>],
    /// Decodes the message and calls the function.
    #[doc(hidden)]
    pub invoke: fn(Invocation) -> BoxFuture<'static, InvokeResult>,
    /// Where it is defined.
    pub module_path: &'static str,
}

inventory::collect!(HandlerDescriptor);
