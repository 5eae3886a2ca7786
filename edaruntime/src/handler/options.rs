//! A handler's options, as written in `#[handler(...)]`.

use std::time::Duration;

use serde::Serialize;

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
    /// As `Always`, and an in-progress claim is taken before the handler runs (expiring
    /// just after the handler's timeout), so two holders of one event never both run it: the
    /// second hands its message back until the first has finished (then it is a duplicate)
    /// or failed. For handlers whose side effect must not run twice even while the broker
    /// redelivers a message that is still being handled (a stalled or partitioned worker,
    /// the same event published twice outside the duplicate window). Costs two more store
    /// writes per message.
    Claim,
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
