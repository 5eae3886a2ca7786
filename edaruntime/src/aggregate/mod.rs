//! Event sourcing on the broker: an [`Aggregate`]'s state is the fold of its events, stored on
//! a subject of its own (`agg.<type>.<id>` in stream `EDA_AGG_<TYPE>` on NATS), appended with
//! optimistic concurrency and replayed with each event's upcast chain; snapshots shorten the
//! replay. [`EventStore`] holds the logic once; transports only store and read the bytes
//! (`crate::port::EventLog`). An app built with
//! [`AppBuilder::aggregate`](crate::AppBuilder::aggregate) also forwards each appended event to
//! `events.<name>` for other services' handlers (an outbox on the broker, resuming where it
//! stopped; see the README's "Event sourcing").
//!
//! ```
//! use eda::prelude::*;
//! use eda::{Aggregate, AggregateEvents};
//!
//! #[event("account.opened")]
//! pub struct AccountOpened { pub owner: String }
//!
//! #[event("money.deposited")]
//! pub struct MoneyDeposited { pub cents: u64 }
//!
//! #[derive(AggregateEvents)]
//! pub enum AccountEvent { Opened(AccountOpened), Deposited(MoneyDeposited) }
//!
//! #[derive(Default, serde::Serialize, serde::Deserialize)]
//! pub struct Account { pub balance: u64, pub open: bool }
//!
//! impl Aggregate for Account {
//!     const TYPE: &'static str = "account";
//!     type Event = AccountEvent;
//!     fn apply(&mut self, event: &AccountEvent) {
//!         match event {
//!             AccountEvent::Opened(_) => self.open = true,
//!             AccountEvent::Deposited(d) => self.balance += d.cents,
//!         }
//!     }
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let app = eda::App::builder("bank").in_memory().handlers(&[]).start().await?;
//! let store = app.event_store();
//! let opened = AccountEvent::Opened(AccountOpened { owner: "ada".into() });
//! let version = store.append::<Account>("a-1", 0, &[opened]).await?;
//! let (account, now) = store
//!     .execute::<Account, _>("a-1", |account| {
//!         if !account.open {
//!             return Err("the account is not open");
//!         }
//!         Ok(vec![AccountEvent::Deposited(MoneyDeposited { cents: 5 })])
//!     })
//!     .await?;
//! assert_eq!((account.balance, now > version), (5, true));
//! let stale = store.append::<Account>("a-1", version, &[]).await; // nothing to append: Ok
//! assert!(stale.is_ok());
//! let conflict = store
//!     .append::<Account>("a-1", version, &[AccountEvent::Deposited(MoneyDeposited { cents: 1 })])
//!     .await
//!     .unwrap_err();
//! assert!(conflict.is_conflict());
//! # app.shutdown().await?;
//! # Ok(()) }
//! ```

mod appends;
mod error;
pub(crate) mod forward;
mod project;
pub(crate) mod replay;
mod store;

pub use error::{EventStoreError, EventStoreErrorKind, ExecuteError};
pub(crate) use project::{answer_rebuild, PendingProjection, ProjectionControl};
pub use project::{
    projection_rebuild_subject, Projected, Projection, ProjectionError, RebuildAnswer, Rebuilt,
};
pub use store::{EventStore, DEFAULT_MAX_ATTEMPTS, DEFAULT_SNAPSHOT_EVERY};

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::event::{DecodeError, Event};

/// A consistency boundary whose state is rebuilt from its events: implement it for the state
/// type, with an enum of its events (`#[derive(AggregateEvents)]`) as [`Aggregate::Event`].
/// See the [module docs](self) for an example.
pub trait Aggregate: Default + Serialize + DeserializeOwned + Send + 'static {
    /// The aggregate type: one token of `[a-z0-9_-]` (`account`); names its stream
    /// (`EDA_AGG_ACCOUNT`), its subjects (`agg.account.<id>`) and its snapshot keys.
    const TYPE: &'static str;

    /// The version of the state's shape in snapshots: raise it when the state type changes in
    /// a way older snapshots no longer fit; snapshots of another version are ignored (the
    /// state is replayed from the events, and a new snapshot is written).
    const SNAPSHOT_VERSION: u32 = 1;

    /// The events of this aggregate: an enum with `#[derive(AggregateEvents)]`.
    type Event: AggregateEvents;

    /// Applies one event to the state. Called for every stored event on load, so it must not
    /// fail and must depend on nothing but the state and the event.
    fn apply(&mut self, event: &Self::Event);
}

/// An enum whose variants each hold one eda event: the events of an [`Aggregate`].
/// Implemented by `#[derive(AggregateEvents)]`; do not implement it by hand.
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not an enum of aggregate events",
    label = "not aggregate events",
    note = "add `#[derive(eda::AggregateEvents)]` to an enum whose variants each hold one event: `enum AccountEvent {{ Opened(AccountOpened), Deposited(MoneyDeposited) }}`"
)]
pub trait AggregateEvents: Sized + Send + Sync + 'static {
    /// The names of the events, one per variant, in order.
    const NAMES: &'static [&'static str];

    /// The event's name, version and JSON.
    fn encode(&self) -> Result<EncodedEvent, serde_json::Error>;

    /// Decodes `payload`, stored as event `name` of `version`, upcasting an older version
    /// through the event's `upcast_from` chain; `None` when `name` is none of these events.
    fn decode(name: &str, version: u32, payload: &[u8]) -> Option<Result<Self, DecodeError>>;
}

/// One event of an aggregate, encoded for storage.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct EncodedEvent {
    /// The event's name (`Eda-Event`).
    pub name: &'static str,
    /// Its version (`Eda-Version`).
    pub version: u32,
    /// Its JSON.
    pub payload: Vec<u8>,
}

impl EncodedEvent {
    /// `event` as JSON, with its name and version.
    pub fn of<E: Event>(event: &E) -> Result<EncodedEvent, serde_json::Error> {
        Ok(EncodedEvent {
            name: E::NAME,
            version: E::VERSION,
            payload: serde_json::to_vec(event)?,
        })
    }
}
