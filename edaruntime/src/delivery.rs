//! What happens to a message after its handler ran: the outcome table of DESIGN.md §3,
//! implemented once here and used by every transport.
//!
//! | outcome | decision |
//! | --- | --- |
//! | `Ok` | record the id as processed (if idempotent), then ack |
//! | retryable error, timeout, panic | attempt ≤ retries: nak with the backoff delay; else dead-letter (`retries_exhausted`) |
//! | permanent error | dead-letter at once (`permanent`) |
//! | undecodable payload | dead-letter at once (`decode`) |
//! | version newer than known | retried like an error, then dead-lettered (`version`) |
//! | version older than the upcast chain | dead-letter at once (`version`) |
//! | already processed | ack, count as duplicate, do not call the handler |
//!
//! A dead letter is stored before the original is terminated; if storing it fails the original
//! is nak'd, so nothing is ever dropped. An idempotency store that cannot be read or written
//! leads to a nak too.

use std::fmt;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::FutureExt;
use tokio::sync::OwnedSemaphorePermit;
use tracing::Instrument;

use crate::event::{DecodeError, Metadata, RawEvent};
use crate::handler::{
    Backoff, BackoffPolicy, Context, Failure, HandlerDescriptor, HandlerError, HandlerOptions,
    Idempotency, Invocation, Scope,
};
use crate::idempotency::{IdempotencyStore, Recorded};
use crate::observe::{self, HandlerMetrics};
use crate::transport::{Acknowledge, Transport};

/// Why a message was dead-lettered (the `Eda-Dlq-Reason` header).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum DlqReason {
    /// The payload does not decode into the handler's event, or is another event.
    Decode,
    /// The version is unknown to the handler (after retries) or older than its upcast chain.
    Version,
    /// The handler returned a permanent error.
    Permanent,
    /// Every attempt failed (errors, timeouts or panics).
    RetriesExhausted,
}

impl DlqReason {
    /// The header value: `decode`, `version`, `permanent`, `retries_exhausted`.
    pub fn as_str(self) -> &'static str {
        match self {
            DlqReason::Decode => "decode",
            DlqReason::Version => "version",
            DlqReason::Permanent => "permanent",
            DlqReason::RetriesExhausted => "retries_exhausted",
        }
    }

    /// The reason a header value names.
    pub fn parse(value: &str) -> Option<DlqReason> {
        [
            DlqReason::Decode,
            DlqReason::Version,
            DlqReason::Permanent,
            DlqReason::RetriesExhausted,
        ]
        .into_iter()
        .find(|r| r.as_str() == value)
    }
}

impl fmt::Display for DlqReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A message a handler gave up on, as stored on `dlq.<service>.<handler>`.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct DeadLetter {
    /// `dlq.<service>.<handler>`.
    pub subject: String,
    /// The service whose handler gave up.
    pub service: String,
    /// The handler that gave up.
    pub handler: String,
    /// Why.
    pub reason: DlqReason,
    /// The last error, with its chain.
    pub error: String,
    /// How many attempts were made.
    pub attempts: u32,
    /// The original message's metadata (its subject and stream sequence included).
    pub metadata: Arc<Metadata>,
    /// The original payload, unchanged.
    pub payload: Bytes,
}

/// What one attempt came to.
#[derive(Debug)]
#[non_exhaustive]
pub enum Outcome {
    /// The handler returned `Ok`.
    Success,
    /// The handler returned an error.
    Failed(HandlerError),
    /// The attempt ran past the handler's timeout.
    TimedOut(Duration),
    /// The handler panicked (the message of the panic).
    Panicked(String),
    /// The message could not be decoded.
    Undecodable(DecodeError),
}

/// What to do with the message.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Decision {
    /// Done.
    Ack,
    /// Already processed before: ack without calling the handler.
    Duplicate,
    /// Deliver again after the delay.
    Retry {
        /// How long the broker holds it back.
        delay: Duration,
        /// What failed (for logs).
        error: String,
    },
    /// Store it on the dead-letter subject, then terminate it.
    DeadLetter {
        /// Why.
        reason: DlqReason,
        /// The error text with its chain.
        error: String,
    },
}

/// Decides what an attempt's outcome means for the message. `attempt` is 1-based;
/// `random` in `[0, 1)` draws the jitter.
pub fn decide(outcome: &Outcome, attempt: u32, options: &HandlerOptions, random: f64) -> Decision {
    let (error, reason_when_exhausted) = match outcome {
        Outcome::Success => return Decision::Ack,
        Outcome::Failed(e) if e.is_permanent() => {
            return Decision::DeadLetter {
                reason: DlqReason::Permanent,
                error: e.chain(),
            }
        }
        Outcome::Undecodable(e) if !e.is_retryable() => {
            return Decision::DeadLetter {
                reason: e.reason(),
                error: e.to_string(),
            }
        }
        Outcome::Undecodable(e) => (e.to_string(), e.reason()),
        Outcome::Failed(e) => (e.chain(), DlqReason::RetriesExhausted),
        Outcome::TimedOut(limit) => (
            format!("timed out after {}", humantime::format_duration(*limit)),
            DlqReason::RetriesExhausted,
        ),
        Outcome::Panicked(message) => (format!("panicked: {message}"), DlqReason::RetriesExhausted),
    };
    if attempt > options.retries {
        return Decision::DeadLetter {
            reason: reason_when_exhausted,
            error,
        };
    }
    Decision::Retry {
        delay: backoff_delay(&options.backoff, attempt, random),
        error,
    }
}

/// The delay after failed attempt number `attempt` (1-based).
pub fn backoff_delay(policy: &BackoffPolicy, attempt: u32, random: f64) -> Duration {
    let n = attempt.max(1);
    let delay = match policy.kind {
        Backoff::Fixed => policy.base_delay,
        Backoff::Linear => policy.base_delay.saturating_mul(n),
        Backoff::Exponential => {
            let factor = 2u32.saturating_pow((n - 1).min(31));
            policy.base_delay.saturating_mul(factor)
        }
    };
    let delay = delay.min(policy.max_delay);
    if policy.jitter {
        delay.mul_f64(0.5 + 0.5 * random.clamp(0.0, 1.0))
    } else {
        delay
    }
}

/// A uniform number in `[0, 1)` for jitter (per-thread generator: no lock, no system call).
pub(crate) fn random_unit() -> f64 {
    crate::random::unit()
}

/// Counters of what one handler did, as [`crate::testing::TestApp`] reports them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct HandlerStats {
    /// Messages handled successfully.
    pub handled: u64,
    /// Attempts that failed and were scheduled again.
    pub retried: u64,
    /// Messages dead-lettered.
    pub dead_lettered: u64,
    /// Messages acked as already processed.
    pub duplicates: u64,
}

#[derive(Debug, Default)]
pub(crate) struct Counters {
    handled: AtomicU64,
    retried: AtomicU64,
    dead_lettered: AtomicU64,
    duplicates: AtomicU64,
}

impl Counters {
    pub(crate) fn snapshot(&self) -> HandlerStats {
        HandlerStats {
            handled: self.handled.load(Ordering::Relaxed),
            retried: self.retried.load(Ordering::Relaxed),
            dead_lettered: self.dead_lettered.load(Ordering::Relaxed),
            duplicates: self.duplicates.load(Ordering::Relaxed),
        }
    }
}

/// A message as a transport hands it to delivery.
#[derive(Debug)]
pub(crate) struct Delivery {
    pub(crate) raw: RawEvent,
    /// The broker's word that it delivered this message before.
    pub(crate) redelivered: bool,
    /// Set when the headers already make the message undecodable (they name another event
    /// than the subject, or carry a bad version).
    pub(crate) header_error: Option<DecodeError>,
}

/// One handler bound in one app: everything delivery needs to process its messages.
pub(crate) struct HandlerRuntime {
    pub(crate) descriptor: &'static HandlerDescriptor,
    pub(crate) scope: Arc<Scope>,
    pub(crate) service: Arc<str>,
    /// `<service>__<handler>`: the durable consumer instances of one service share.
    pub(crate) durable: String,
    pub(crate) dlq_subject: String,
    pub(crate) transport: Arc<dyn Transport>,
    pub(crate) store: Arc<dyn IdempotencyStore>,
    pub(crate) counters: Counters,
    pub(crate) metrics: HandlerMetrics,
    /// Whether the transport has this handler's consumer bound (for `/readyz`).
    pub(crate) bound: AtomicBool,
}

impl fmt::Debug for HandlerRuntime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HandlerRuntime")
            .field("handler", &self.descriptor.name)
            .field("durable", &self.durable)
            .finish()
    }
}

impl HandlerRuntime {
    fn options(&self) -> &HandlerOptions {
        &self.descriptor.options
    }

    fn idempotency_key(&self, id: &str) -> String {
        format!("{}.{}.{}", self.service, self.descriptor.name, id)
    }

    /// Processes one delivered message end to end and settles it with the broker. `permit`
    /// (a concurrency slot) is released as soon as the handler returned, so that recording the
    /// id and acking overlap with the next message's handler.
    ///
    /// Not an `async fn` itself: a wrapper future would hold its arguments next to the inner
    /// future holding them too, and every message's task would be that much larger.
    pub(crate) fn deliver<'a, A: Acknowledge + 'a>(
        &'a self,
        delivery: Delivery,
        ack: A,
        permit: Option<OwnedSemaphorePermit>,
    ) -> impl std::future::Future<Output = ()> + Send + 'a {
        let metadata = delivery.raw.metadata();
        let span = tracing::info_span!(
            "eda.handle",
            event = %metadata.name,
            id = %metadata.id,
            version = metadata.version,
            handler = self.descriptor.name,
            attempt = delivery.raw.attempt(),
            correlation_id = %metadata.correlation_id,
            trace_id = metadata.traceparent.as_deref().and_then(observe::trace::trace_id),
        );
        self.deliver_inner(delivery, ack, permit).instrument(span)
    }

    async fn deliver_inner<A: Acknowledge>(
        &self,
        delivery: Delivery,
        ack: A,
        permit: Option<OwnedSemaphorePermit>,
    ) {
        let raw = delivery.raw.clone();
        let event = raw.metadata().name.as_str();
        let decision = self.process(delivery, permit).await;
        match decision {
            Decision::Ack => {
                self.counters.handled.fetch_add(1, Ordering::Relaxed);
                self.metrics.handled(event, observe::Outcome::Success);
                ack.ack().await;
            }
            Decision::Duplicate => {
                self.counters.duplicates.fetch_add(1, Ordering::Relaxed);
                self.metrics.handled(event, observe::Outcome::Duplicate);
                ack.ack().await;
            }
            // The failure paths run in futures of their own (boxed): kept inline, their
            // states (a dead-letter publish, a confirmed term) would make every message's
            // task several times larger, and spawning it copy that much.
            Decision::Retry { delay, error } => {
                tracing::warn!(error = %error, delay = ?delay, "handler failed; will retry");
                self.counters.retried.fetch_add(1, Ordering::Relaxed);
                self.metrics.handled(event, observe::Outcome::Retry);
                Box::pin(ack.nak(delay)).await;
            }
            Decision::DeadLetter { reason, error } => {
                Box::pin(self.dead_letter(&raw, reason, error, ack)).await;
            }
        }
    }

    /// Stores a dead letter, then terminates the original; naks it if the store fails.
    async fn dead_letter<A: Acknowledge>(
        &self,
        raw: &RawEvent,
        reason: DlqReason,
        error: String,
        ack: A,
    ) {
        let attempt = raw.attempt();
        let event = raw.metadata().name.as_str();
        let letter = DeadLetter {
            subject: self.dlq_subject.clone(),
            service: self.service.to_string(),
            handler: self.descriptor.name.to_owned(),
            reason,
            error: error.clone(),
            attempts: attempt,
            metadata: Arc::clone(raw.metadata_arc()),
            payload: raw.payload_bytes().clone(),
        };
        match self.transport.dead_letter(letter).await {
            Ok(()) => {
                tracing::error!(reason = %reason, error = %error, "dead-lettered");
                self.counters.dead_lettered.fetch_add(1, Ordering::Relaxed);
                self.metrics.handled(event, observe::Outcome::DeadLetter);
                self.metrics.dead_lettered(reason);
                ack.term().await;
            }
            Err(dlq_error) => {
                let delay = backoff_delay(&self.options().backoff, attempt, random_unit());
                tracing::error!(reason = %reason, error = %error, dlq_error = %dlq_error, delay = ?delay,
                    "cannot store the dead letter; will redeliver");
                self.counters.retried.fetch_add(1, Ordering::Relaxed);
                self.metrics.handled(event, observe::Outcome::Retry);
                ack.nak(delay).await;
            }
        }
    }

    /// Runs the handler (unless it is a duplicate) and decides; records the id on success.
    async fn process(&self, delivery: Delivery, permit: Option<OwnedSemaphorePermit>) -> Decision {
        let Delivery {
            raw,
            redelivered,
            header_error,
        } = delivery;
        let options = self.options();
        let attempt = raw.attempt();
        if let Some(error) = header_error {
            return decide(
                &Outcome::Undecodable(error),
                attempt,
                options,
                random_unit(),
            );
        }
        let check = match options.idempotent {
            Idempotency::Always => true,
            Idempotency::Redelivered => redelivered,
            Idempotency::Off => false,
        };
        let key = (options.idempotent != Idempotency::Off)
            .then(|| self.idempotency_key(&raw.metadata().id));
        if let (true, Some(key)) = (check, &key) {
            match self.store.contains(key).await {
                Ok(true) => return Decision::Duplicate,
                Ok(false) => {}
                Err(e) => return self.store_failure(attempt, e.to_string()),
            }
        }
        let outcome = self.run(raw).await;
        drop(permit);
        let decision = decide(&outcome, attempt, options, random_unit());
        match (decision, key) {
            (Decision::Ack, Some(key)) => match self.store.record(&key).await {
                Ok(Recorded::Created) => Decision::Ack,
                // Another worker finished the same event first (the broker redelivered it
                // while this one was still running): its record stands, this one is a duplicate.
                Ok(Recorded::AlreadyPresent) => Decision::Duplicate,
                Err(e) => self.store_failure(attempt, e.to_string()),
            },
            (decision, _) => decision,
        }
    }

    fn store_failure(&self, attempt: u32, error: String) -> Decision {
        Decision::Retry {
            delay: backoff_delay(&self.options().backoff, attempt, random_unit()),
            error: format!("idempotency store: {error}"),
        }
    }

    /// One attempt: the handler under its timeout, with panics caught.
    async fn run(&self, raw: RawEvent) -> Outcome {
        let timeout = self.options().timeout;
        let context = Context::new(
            Arc::clone(raw.metadata_arc()),
            raw.attempt(),
            Arc::clone(&self.scope),
        );
        let _running = self.metrics.attempt(raw.metadata().time);
        let invocation = Invocation { raw, context };
        let attempt = AssertUnwindSafe((self.descriptor.invoke)(invocation)).catch_unwind();
        match tokio::time::timeout(timeout, attempt).await {
            Err(_) => Outcome::TimedOut(timeout),
            Ok(Err(panic)) => Outcome::Panicked(panic_message(panic.as_ref())),
            Ok(Ok(Ok(()))) => Outcome::Success,
            Ok(Ok(Err(Failure::Handler(e)))) => Outcome::Failed(e),
            Ok(Ok(Err(Failure::Decode(e)))) => Outcome::Undecodable(e),
        }
    }

    pub(crate) fn stats(&self) -> HandlerStats {
        self.counters.snapshot()
    }
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = panic.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s.clone()
    } else {
        "a non-string panic payload".to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options(retries: u32, kind: Backoff, jitter: bool) -> HandlerOptions {
        HandlerOptions {
            retries,
            backoff: BackoffPolicy {
                kind,
                base_delay: Duration::from_millis(100),
                max_delay: Duration::from_secs(1),
                jitter,
            },
            ..HandlerOptions::default()
        }
    }

    #[test]
    fn success_acks() {
        assert_eq!(
            decide(
                &Outcome::Success,
                1,
                &options(3, Backoff::Fixed, false),
                0.0
            ),
            Decision::Ack
        );
    }

    #[test]
    fn retryable_errors_retry_until_attempts_run_out() {
        let o = options(2, Backoff::Exponential, false);
        let failed = || Outcome::Failed(HandlerError::retry("smtp down"));
        assert!(
            matches!(decide(&failed(), 1, &o, 0.0), Decision::Retry { delay, .. } if delay == Duration::from_millis(100))
        );
        assert!(
            matches!(decide(&failed(), 2, &o, 0.0), Decision::Retry { delay, .. } if delay == Duration::from_millis(200))
        );
        assert_eq!(
            decide(&failed(), 3, &o, 0.0),
            Decision::DeadLetter {
                reason: DlqReason::RetriesExhausted,
                error: "smtp down".into()
            }
        );
    }

    #[test]
    fn permanent_errors_and_bad_payloads_dead_letter_at_once() {
        let o = options(5, Backoff::Fixed, false);
        let permanent = decide(
            &Outcome::Failed(HandlerError::permanent("declined")),
            1,
            &o,
            0.0,
        );
        assert!(matches!(
            permanent,
            Decision::DeadLetter {
                reason: DlqReason::Permanent,
                ..
            }
        ));
        let payload = DecodeError::Payload {
            event: "a".into(),
            version: 1,
            message: "missing field `id`".into(),
        };
        let decision = decide(&Outcome::Undecodable(payload), 1, &o, 0.0);
        assert!(
            matches!(decision, Decision::DeadLetter { reason: DlqReason::Decode, ref error } if error.contains("missing field `id`"))
        );
    }

    #[test]
    fn newer_versions_are_retried_then_dead_lettered_as_version() {
        let o = options(1, Backoff::Fixed, false);
        let newer = || {
            Outcome::Undecodable(DecodeError::UnknownVersion {
                event: "a".into(),
                version: 3,
                newest: 2,
            })
        };
        assert!(matches!(
            decide(&newer(), 1, &o, 0.0),
            Decision::Retry { .. }
        ));
        assert!(matches!(
            decide(&newer(), 2, &o, 0.0),
            Decision::DeadLetter {
                reason: DlqReason::Version,
                ..
            }
        ));
    }

    #[test]
    fn timeouts_and_panics_are_retryable() {
        let o = options(1, Backoff::Fixed, false);
        assert!(matches!(
            decide(&Outcome::TimedOut(Duration::from_secs(1)), 1, &o, 0.0),
            Decision::Retry { .. }
        ));
        let last = decide(&Outcome::Panicked("boom".into()), 2, &o, 0.0);
        assert_eq!(
            last,
            Decision::DeadLetter {
                reason: DlqReason::RetriesExhausted,
                error: "panicked: boom".into()
            }
        );
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        let p = |kind| BackoffPolicy {
            kind,
            base_delay: Duration::from_millis(100),
            max_delay: Duration::from_millis(350),
            jitter: false,
        };
        let delays = |kind| {
            (1..=4)
                .map(|a| backoff_delay(&p(kind), a, 0.0).as_millis())
                .collect::<Vec<_>>()
        };
        assert_eq!(delays(Backoff::Fixed), [100, 100, 100, 100]);
        assert_eq!(delays(Backoff::Linear), [100, 200, 300, 350]);
        assert_eq!(delays(Backoff::Exponential), [100, 200, 350, 350]);
    }

    #[test]
    fn jitter_stays_within_half_and_full_delay() {
        let policy = BackoffPolicy {
            kind: Backoff::Fixed,
            base_delay: Duration::from_millis(100),
            max_delay: Duration::from_secs(1),
            jitter: true,
        };
        for _ in 0..1000 {
            let d = backoff_delay(&policy, 1, random_unit());
            assert!(
                d >= Duration::from_millis(50) && d <= Duration::from_millis(100),
                "{d:?}"
            );
        }
    }
}
