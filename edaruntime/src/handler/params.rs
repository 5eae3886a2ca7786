//! What a handler function may take and return: the traits the generated code checks each
//! parameter against.

use std::any::TypeId;
use std::sync::Arc;

use super::{Context, EventRef, HandlerError, Requirement, State};
use crate::aggregate::EventStore;
use crate::event::{DecodeError, Envelope, Event, RawEvent};

/// A handler parameter after the event: [`Context`], [`State<T>`], or your own.
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot be a handler parameter",
    label = "not `Context`, `State<T>` or `EventStore`",
    note = "a handler takes exactly one event as its first parameter, then any of `Context`, `State<T>` and `EventStore`"
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

/// The app's event store: a handler takes `store: eda::EventStore` to load and change
/// aggregates (see [`crate::aggregate`]).
impl FromContext for EventStore {
    fn from_context(context: &Context) -> Result<Self, HandlerError> {
        match context.state::<EventStore>() {
            Some(store) => Ok((*store).clone()),
            None => Err(HandlerError::permanent(
                "no event store here: a handler gets one when it runs in an app (`App::start`, `TestApp`), not when called with a `TestContext`",
            )),
        }
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
