//! Handlers: their errors, options and registration record, and what they can take as
//! parameters ([`Context`], [`State`]).

mod context;
mod descriptor;
mod error;
mod options;
mod params;

pub use context::{Context, State};
pub(crate) use context::{Scope, StateMap};
pub use descriptor::{EventRef, Failure, HandlerDescriptor, Invocation, InvokeResult, Requirement};
pub use error::{ErrorKind, HandlerError};
pub use options::{Backoff, BackoffPolicy, HandlerOptions, Idempotency, Start};
pub use params::{EventParam, FromContext, HandlerReturn};
