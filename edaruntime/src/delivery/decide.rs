//! The pure half of delivery: what an attempt's outcome means for its message (the table of
//! DESIGN.md §3), and the backoff between attempts. No I/O, no clock: randomness for the
//! jitter is a parameter.

use std::time::Duration;

use crate::dlq::DlqReason;
use crate::event::DecodeError;
use crate::handler::{Backoff, BackoffPolicy, HandlerError, HandlerOptions};

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

/// The longest delay a failure may ask for ([`HandlerError::retry_after`]): a downstream's
/// `Retry-After` of a year would hold the message back that long.
pub const MAX_ASKED_DELAY: Duration = Duration::from_secs(3600);

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
                reason: DlqReason::from(e),
                error: e.to_string(),
            }
        }
        Outcome::Undecodable(e) => (e.to_string(), DlqReason::from(e)),
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
    let backoff = backoff_delay(&options.backoff, attempt, random);
    let asked = match outcome {
        Outcome::Failed(e) => e.retry_delay(),
        _ => None,
    };
    Decision::Retry {
        delay: asked.map_or(backoff, |asked| asked.min(MAX_ASKED_DELAY).max(backoff)),
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::random::unit as random_unit;

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
    fn a_failure_that_asks_for_a_delay_waits_at_least_that_long() {
        let o = options(3, Backoff::Fixed, false);
        let asked = Outcome::Failed(HandlerError::retry_after("429", Duration::from_secs(5)));
        assert!(matches!(
            decide(&asked, 1, &o, 0.0),
            Decision::Retry { delay, .. } if delay == Duration::from_secs(5)
        ));
        let short = Outcome::Failed(HandlerError::retry_after("429", Duration::from_millis(1)));
        assert!(matches!(
            decide(&short, 1, &o, 0.0),
            Decision::Retry { delay, .. } if delay == Duration::from_millis(100)
        ));
        let huge = Outcome::Failed(HandlerError::retry_after(
            "429",
            Duration::from_secs(1 << 40),
        ));
        assert!(matches!(
            decide(&huge, 1, &o, 0.0),
            Decision::Retry { delay, .. } if delay == MAX_ASKED_DELAY
        ));
        assert!(matches!(
            decide(&asked, 4, &o, 0.0),
            Decision::DeadLetter {
                reason: DlqReason::RetriesExhausted,
                ..
            }
        ));
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
