//! # eda — typed, versioned event-driven microservices
//!
//! Annotate structs with `#[event]` and async functions with `#[handler]`; `App` discovers the
//! handlers at startup and runs them with at-least-once delivery, retries with backoff,
//! dead-letter queues and idempotency — in memory (the default) or on NATS JetStream.
//!
//! ```
//! use eda::prelude::*;
//! use eda::testing::TestApp;
//!
//! #[event("user.created", version = 2, upcast_from = UserCreatedV1)]
//! pub struct UserCreated { pub id: u64, pub email: String, pub name: String }
//!
//! #[event("user.created", version = 1)]
//! pub struct UserCreatedV1 { pub id: u64, pub email: String }
//!
//! impl From<UserCreatedV1> for UserCreated {
//!     fn from(v1: UserCreatedV1) -> Self {
//!         UserCreated { id: v1.id, email: v1.email, name: String::new() }
//!     }
//! }
//!
//! #[event]
//! pub struct WelcomeSent { pub user_id: u64 }
//!
//! #[handler(retries = 5, backoff = "exponential", timeout = "10s", service = "doc-notifications")]
//! async fn send_welcome(event: UserCreated, ctx: Context) -> Result<(), HandlerError> {
//!     ctx.publish(&WelcomeSent { user_id: event.id }).await?;
//!     Ok(())
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> eda::Result<()> {
//! let app = TestApp::start("doc-notifications").await?;
//! app.publish(&UserCreatedV1 { id: 1, email: "ada@example.com".into() }).await?;
//! app.settle().await;
//! assert_eq!(app.published::<WelcomeSent>().await?.len(), 1);
//! # Ok(()) }
//! ```
//!
//! See the README for the delivery guarantees and the list of compile-time checks.

pub use edamacros::{event, handler, AggregateEvents, Event};
pub use edaruntime::*;

/// The names most services need: `use eda::prelude::*;`.
pub mod prelude {
    pub use crate::{
        event, handler, App, BreakerConfig, Context, Envelope, Event, HandlerError, Publisher,
        RawEvent, State,
    };
}

/// The README's examples compile as doc tests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
