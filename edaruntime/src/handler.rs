//! Handlers: their errors, options and registration record, and what they can take as
//! parameters ([`Context`], [`State`]).

use std::any::{Any, TypeId};
use std::collections::HashMap;
use std::fmt;
use std::ops::Deref;
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use serde::Serialize;

use crate::app::AppShared;
use crate::error::PublishError;
use crate::event::{DecodeError, Envelope, Event, Metadata, RawEvent};
use crate::publish::PublishOptions;

type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Whether a failed handler may succeed if tried again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ErrorKind {
    /// Try again with backoff, then dead-letter (the default for any error).
    Retryable,
    /// Dead-letter at once.
    Permanent,
}

/// The error a handler returns. Any `std::error::Error` converts into a retryable one (as in
/// MassTransit and Watermill); say [`HandlerError::permanent`] for failures that no retry can fix.
///
/// ```
/// use eda::HandlerError;
///
/// let e = HandlerError::permanent("card declined");
/// assert!(e.is_permanent());
/// let io = std::io::Error::other("smtp down");
/// assert!(!HandlerError::from(io).is_permanent());
/// ```
pub struct HandlerError {
    kind: ErrorKind,
    error: BoxError,
}

impl HandlerError {
    /// A failure worth retrying (network, downstream unavailable).
    pub fn retry(error: impl Into<BoxError>) -> HandlerError {
        HandlerError {
            kind: ErrorKind::Retryable,
            error: error.into(),
        }
    }

    /// A failure no retry can fix (invalid data, business rule): dead-letter at once.
    pub fn permanent(error: impl Into<BoxError>) -> HandlerError {
        HandlerError {
            kind: ErrorKind::Permanent,
            error: error.into(),
        }
    }

    /// Retryable or permanent.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// Whether this error dead-letters at once.
    pub fn is_permanent(&self) -> bool {
        self.kind == ErrorKind::Permanent
    }

    /// The underlying error.
    pub fn get_ref(&self) -> &(dyn std::error::Error + Send + Sync + 'static) {
        &*self.error
    }

    /// The message with its whole `source()` chain: `outer: cause: root cause`.
    pub fn chain(&self) -> String {
        let mut text = self.error.to_string();
        let mut source = self.error.source();
        while let Some(cause) = source {
            text.push_str(": ");
            text.push_str(&cause.to_string());
            source = cause.source();
        }
        text
    }
}

impl<E: std::error::Error + Send + Sync + 'static> From<E> for HandlerError {
    fn from(error: E) -> Self {
        HandlerError::retry(error)
    }
}

impl fmt::Display for HandlerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.chain())
    }
}

impl fmt::Debug for HandlerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HandlerError")
            .field("kind", &self.kind)
            .field("error", &self.chain())
            .finish()
    }
}

/// How the delay between attempts grows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Backoff {
    /// Always `base_delay`.
    Fixed,
    /// `base_delay × attempt`.
    Linear,
    /// `base_delay × 2^(attempt-1)`.
    Exponential,
}

/// Backoff between attempts: grows from `base_delay` up to `max_delay`; with `jitter` each
/// delay is drawn uniformly from `[d/2, d]` so that failed consumers do not retry in lockstep.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct BackoffPolicy {
    /// How the delay grows.
    pub kind: Backoff,
    /// The first delay.
    #[serde(serialize_with = "as_humantime")]
    pub base_delay: Duration,
    /// The longest delay.
    #[serde(serialize_with = "as_humantime")]
    pub max_delay: Duration,
    /// Randomize each delay within `[d/2, d]`.
    pub jitter: bool,
}

/// When an already processed event is looked up, so that it is not handled twice.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Idempotency {
    /// Look up only redeliveries (a first delivery cannot repeat this consumer's own work);
    /// record every success. The default.
    Redelivered,
    /// Look up every message (covers producers that republish outside the broker's
    /// duplicate window).
    Always,
    /// No look-up, no record.
    Off,
}

/// Where a new consumer starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Start {
    /// Only events published after the consumer is created. The default.
    New,
    /// Every event the broker still holds.
    All,
}

/// A handler's options, as written in `#[handler(...)]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct HandlerOptions {
    /// How many messages one instance handles at once (default 1).
    pub concurrency: u32,
    /// Retries after the first attempt (default 3): at most `retries + 1` attempts.
    pub retries: u32,
    /// Delay between attempts (default exponential from 100 ms to 30 s, with jitter).
    pub backoff: BackoffPolicy,
    /// Longest a single attempt may run (default 30 s); then it counts as a retryable failure.
    #[serde(serialize_with = "as_humantime")]
    pub timeout: Duration,
    /// Duplicate suppression (default `redelivered`).
    pub idempotent: Idempotency,
    /// Name of the circuit breaker shared with the handlers that call one downstream.
    pub breaker: Option<&'static str>,
    /// Where a new consumer starts (default `new`).
    pub start: Start,
}

impl Default for HandlerOptions {
    fn default() -> Self {
        HandlerOptions {
            concurrency: 1,
            retries: 3,
            backoff: BackoffPolicy {
                kind: Backoff::Exponential,
                base_delay: Duration::from_millis(100),
                max_delay: Duration::from_secs(30),
                jitter: true,
            },
            timeout: Duration::from_secs(30),
            idempotent: Idempotency::Redelivered,
            breaker: None,
            start: Start::New,
        }
    }
}

fn as_humantime<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&humantime::format_duration(*d).to_string())
}

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
    /// State types its parameters need.
    pub requirements: &'static [fn() -> Option<Requirement>],
    /// Decodes the message and calls the function.
    #[doc(hidden)]
    pub invoke: fn(Invocation) -> BoxFuture<'static, InvokeResult>,
    /// Where it is defined.
    pub module_path: &'static str,
}

inventory::collect!(HandlerDescriptor);

/// Shared state handed to handlers that take `State<T>`; provide it with
/// `App::builder(..).state(value)`.
///
/// ```
/// use eda::State;
///
/// struct Mailer { from: &'static str }
/// let state = State::new(Mailer { from: "noreply@example.com" });
/// assert_eq!(state.from, "noreply@example.com");
/// ```
pub struct State<T: ?Sized>(Arc<T>);

impl<T> State<T> {
    /// Wraps a value (for calling a handler directly in a test).
    pub fn new(value: T) -> State<T> {
        State(Arc::new(value))
    }
}

impl<T: ?Sized> State<T> {
    /// The shared pointer.
    pub fn arc(&self) -> &Arc<T> {
        &self.0
    }
}

impl<T: ?Sized> Clone for State<T> {
    fn clone(&self) -> Self {
        State(Arc::clone(&self.0))
    }
}

impl<T: ?Sized> Deref for State<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.0
    }
}

impl<T: ?Sized> fmt::Debug for State<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "State<{}>", std::any::type_name::<T>())
    }
}

/// The state values of an app, by type.
#[derive(Default, Clone)]
pub(crate) struct StateMap {
    values: HashMap<TypeId, Arc<dyn Any + Send + Sync>>,
}

impl StateMap {
    pub(crate) fn insert<T: Send + Sync + 'static>(&mut self, value: T) {
        self.values.insert(TypeId::of::<T>(), Arc::new(value));
    }

    pub(crate) fn insert_arc<T: Send + Sync + 'static>(&mut self, value: Arc<T>) {
        self.values.insert(TypeId::of::<T>(), value);
    }

    pub(crate) fn contains(&self, type_id: TypeId) -> bool {
        self.values.contains_key(&type_id)
    }

    pub(crate) fn get<T: Send + Sync + 'static>(&self) -> Option<State<T>> {
        let value = self.values.get(&TypeId::of::<T>())?;
        Arc::clone(value).downcast::<T>().ok().map(State)
    }
}

impl fmt::Debug for StateMap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "StateMap({} values)", self.values.len())
    }
}

/// Per-handler data every [`Context`] of that handler shares.
#[derive(Debug)]
pub(crate) struct Scope {
    pub(crate) handler: String,
    pub(crate) app: Arc<AppShared>,
}

/// What a handler can do besides reading its event: publish follow-up events (carrying the
/// correlation id, with this event as their cause), read metadata and shared state.
#[derive(Clone)]
pub struct Context {
    metadata: Arc<Metadata>,
    attempt: u32,
    scope: Arc<Scope>,
}

impl Context {
    pub(crate) fn new(metadata: Arc<Metadata>, attempt: u32, scope: Arc<Scope>) -> Context {
        Context {
            metadata,
            attempt,
            scope,
        }
    }

    /// Publishes `event` with this event's correlation id and this event as its cause; returns
    /// the new event's id once the broker stored it.
    pub async fn publish<E: Event>(&self, event: &E) -> Result<String, PublishError> {
        let mut options = PublishOptions::default()
            .correlation_id(self.metadata.correlation_id.clone())
            .causation_id(self.metadata.id.clone());
        if let Some(traceparent) = &self.metadata.traceparent {
            options = options.traceparent(traceparent.clone());
        }
        crate::publish::send(&self.scope.app, event, options).await
    }

    /// The current event's metadata.
    pub fn metadata(&self) -> &Metadata {
        &self.metadata
    }

    /// The current event's id.
    pub fn event_id(&self) -> &str {
        &self.metadata.id
    }

    /// The correlation id follow-up events will carry.
    pub fn correlation_id(&self) -> &str {
        &self.metadata.correlation_id
    }

    /// Which delivery of this event this is (1 for the first).
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// The handler's name.
    pub fn handler(&self) -> &str {
        &self.scope.handler
    }

    /// The service running the handler.
    pub fn service(&self) -> &str {
        self.scope.app.service()
    }

    /// A state value, if the app was given one of type `T`.
    pub fn state<T: Send + Sync + 'static>(&self) -> Option<State<T>> {
        self.scope.app.state::<T>()
    }
}

impl fmt::Debug for Context {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Context")
            .field("handler", &self.scope.handler)
            .field("event", &self.metadata.name)
            .field("id", &self.metadata.id)
            .field("attempt", &self.attempt)
            .finish()
    }
}

/// A handler parameter after the event: [`Context`], [`State<T>`], or your own.
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot be a handler parameter",
    label = "not `Context` or `State<T>`",
    note = "a handler takes exactly one event as its first parameter, then any of `Context` and `State<T>`"
)]
pub trait FromContext: Sized {
    /// The state this parameter needs, checked at startup.
    fn requirement() -> Option<Requirement> {
        None
    }

    /// Builds the parameter for one invocation.
    fn from_context(context: &Context) -> Result<Self, HandlerError>;
}

impl FromContext for Context {
    fn from_context(context: &Context) -> Result<Self, HandlerError> {
        Ok(context.clone())
    }
}

impl<T: Send + Sync + 'static> FromContext for State<T> {
    fn requirement() -> Option<Requirement> {
        Some(Requirement {
            type_id: TypeId::of::<T>(),
            type_name: std::any::type_name::<T>(),
        })
    }

    fn from_context(context: &Context) -> Result<Self, HandlerError> {
        context.state::<T>().ok_or_else(|| {
            HandlerError::permanent(format!(
                "no state of type `{}` was provided: add `.state(..)` to the app builder",
                std::any::type_name::<T>()
            ))
        })
    }
}

/// The first parameter of a handler: an [`Event`], an [`Envelope<E>`] or a [`RawEvent`].
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not an eda event",
    label = "the first parameter of a handler is its event",
    note = "add `#[event]` to the definition of `{Self}`, or take `Envelope<E>` (event with metadata) or `RawEvent` (any event)"
)]
pub trait EventParam: Sized + Send + 'static {
    /// The event type, `None` for [`RawEvent`].
    const EVENT: Option<EventRef>;

    /// Decodes the message.
    fn from_raw(raw: &RawEvent) -> Result<Self, DecodeError>;
}

const fn event_ref<E: Event>() -> Option<EventRef> {
    Some(EventRef {
        name: E::NAME,
        version: E::VERSION,
        oldest_version: E::OLDEST_VERSION,
    })
}

#[diagnostic::do_not_recommend]
impl<E: Event> EventParam for E {
    const EVENT: Option<EventRef> = event_ref::<E>();
    fn from_raw(raw: &RawEvent) -> Result<Self, DecodeError> {
        raw.decode::<E>()
    }
}

impl<E: Event> EventParam for Envelope<E> {
    const EVENT: Option<EventRef> = event_ref::<E>();
    fn from_raw(raw: &RawEvent) -> Result<Self, DecodeError> {
        Ok(Envelope {
            event: raw.decode::<E>()?,
            metadata: Arc::clone(raw.metadata_arc()),
            attempt: raw.attempt(),
        })
    }
}

impl EventParam for RawEvent {
    const EVENT: Option<EventRef> = None;
    fn from_raw(raw: &RawEvent) -> Result<Self, DecodeError> {
        Ok(raw.clone())
    }
}

/// What a handler may return: `()` or `Result<(), E>` with `E: Into<HandlerError>`.
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not a handler return type",
    label = "return `()` or `Result<(), E>` where `E: Into<HandlerError>`",
    note = "any `std::error::Error + Send + Sync` converts into a retryable `HandlerError`"
)]
pub trait HandlerReturn {
    /// Normalizes the return value.
    fn into_result(self) -> Result<(), HandlerError>;
}

impl HandlerReturn for () {
    fn into_result(self) -> Result<(), HandlerError> {
        Ok(())
    }
}

impl<E: Into<HandlerError>> HandlerReturn for Result<(), E> {
    fn into_result(self) -> Result<(), HandlerError> {
        self.map_err(Into::into)
    }
}
