//! The runtime of [eda](https://docs.rs/eda): typed events, handlers, the delivery semantics
//! shared by every transport, the in-memory transport, and test helpers. Depend on the `eda`
//! crate, which re-exports all of this together with the macros.
//!
//! The modules form layers; a module never imports one above it (checked by a unit test,
//! `layers::no_module_names_one_above_it`):
//! `error`, `config`, `random`, `lifecycle`, `schema` → `event` → `dlq`, `wire`, `observe` →
//! `port`, `idempotency` → `publish`, `aggregate` → `handler` → `registry` → `delivery`, `breaker`, `private` →
//! `transport` → `backend` → `app` → `testing`.

pub mod actions;
pub mod aggregate;
pub mod app;
mod backend;
pub mod breaker;
pub mod config;
pub mod delivery;
pub mod dlq;
pub mod error;
pub mod event;
pub mod handler;
pub mod idempotency;
mod lifecycle;
pub mod observe;
mod port;
pub mod publish;
mod random;
pub mod registry;
pub mod schema;
pub mod testing;
pub mod transport;
pub mod wire;

#[doc(hidden)]
pub mod __private {
    pub use crate::private::*;
}
mod private;

#[cfg(test)]
mod layers;

pub use aggregate::{
    projection_rebuild_subject, Aggregate, AggregateEvents, EventStore, EventStoreError,
    EventStoreErrorKind, ExecuteError, Projected, Projection, ProjectionError, RebuildAnswer,
    Rebuilt,
};
pub use app::{App, AppBuilder, RunningApp, ServiceCatalog};
pub use breaker::{Breaker, BreakerConfig, BreakerState};
pub use config::{NatsAuth, NatsSettings, Topology, WireFormat};
pub use delivery::HandlerStats;
pub use dlq::{DeadLetter, DlqReason};
pub use error::{BoxError, Error, ErrorKind, PublishError, Result};
pub use event::{DecodeError, Envelope, Event, Metadata, RawEvent};
pub use handler::{Context, FromContext, HandlerError, HandlerOptions, State};
pub use lifecycle::wait_for_signal;
pub use publish::{PublishOptions, Publisher};
pub use registry::Catalog;
pub use transport::jetstream::connect_client;
pub use transport::jetstream::permissions::{permissions, Permissions};
pub use transport::memory::MemoryBroker;
