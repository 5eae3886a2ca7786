//! The runtime of [eda](https://docs.rs/eda): typed events, handlers, the delivery semantics
//! shared by every transport, the in-memory transport, and test helpers. Depend on the `eda`
//! crate, which re-exports all of this together with the macros.

pub mod app;
pub mod config;
pub mod delivery;
pub mod error;
pub mod event;
pub mod handler;
pub mod idempotency;
pub mod observe;
pub mod publish;
pub mod registry;
pub mod testing;
pub mod transport;
pub mod wire;

#[doc(hidden)]
pub mod __private {
    pub use crate::private::*;
}
mod private;
mod random;

pub use app::{wait_for_signal, App, AppBuilder, RunningApp};
pub use config::{NatsAuth, NatsSettings, Topology};
pub use delivery::{DeadLetter, DlqReason, HandlerStats};
pub use error::{Error, PublishError, Result};
pub use event::{DecodeError, Envelope, Event, Metadata, RawEvent};
pub use handler::{Context, ErrorKind, FromContext, HandlerError, HandlerOptions, State};
pub use publish::{PublishOptions, Publisher};
pub use registry::Catalog;
pub use transport::memory::MemoryBroker;
