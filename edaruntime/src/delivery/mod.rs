//! What happens to a message after its handler ran: the outcome table of DESIGN.md §3,
//! implemented once here and used by every transport.
//!
//! | outcome | decision |
//! | --- | --- |
//! | `Ok` | record the id as processed (if idempotent; retried in place until stored), then ack |
//! | retryable error, timeout, panic | attempt ≤ retries: nak with the backoff delay; else dead-letter (`retries_exhausted`) |
//! | permanent error | dead-letter at once (`permanent`) |
//! | undecodable payload | dead-letter at once (`decode`) |
//! | version newer than known | retried like an error, then dead-lettered (`version`) |
//! | version older than the upcast chain | dead-letter at once (`version`) |
//! | already processed | ack, count as duplicate, do not call the handler |
//!
//! A dead letter is stored before the original is terminated; if storing it fails it is
//! retried in place for a while, then the original is nak'd, so nothing is ever dropped. An
//! idempotency store that cannot be read before the handler leads to a nak (nothing ran); one
//! that cannot be written after it is retried in place (the handler must not run again).
//!
//! [`decide`] is the pure half; `runtime` drives it, `driver` is the consume loop both
//! transports share, `naming` holds every name derived from a service and a handler.

mod decide;
pub(crate) mod driver;
pub(crate) mod naming;
mod runtime;
mod settlement;

pub use crate::dlq::{DeadLetter, DlqReason};
pub use decide::{backoff_delay, decide, Decision, Outcome};
pub use runtime::HandlerStats;
pub(crate) use runtime::{HandlerRuntime, RuntimeSet};
