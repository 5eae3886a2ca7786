//! Observability: every metric name and label key (DESIGN.md §6) defined once (`names`), the
//! handles delivery and publishing record into (`handles`), the Prometheus exporter and the
//! small HTTP listener serving `/metrics`, `/healthz` and `/readyz` (`http`), and W3C trace
//! context ([`trace`]).
//!
//! Metrics go through the [`metrics`] facade. eda installs a Prometheus recorder when an app
//! asks for a metrics address and no recorder is installed yet; if the application installed
//! its own recorder first, eda records into that one and serves no `/metrics` (only the health
//! endpoints). Label values are bounded: service, handler and event names (at most
//! [`MAX_EVENT_LABELS`] per handler), outcomes and reasons — never ids or error texts. Handles are created once per handler (and per event
//! name) and reused, so the hot path does no formatting or label allocation.

mod handles;
mod http;
mod names;
pub mod trace;

pub(crate) use handles::{broker_connected, broker_reconnected, BreakerMetrics, PublishMetrics};
pub use handles::{Attempt, HandlerMetrics, Outcome};
pub use http::Readiness;
pub(crate) use http::{bind, prometheus, serve, ReadinessProbe};
pub use names::*;
