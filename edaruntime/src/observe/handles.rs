//! The metric handles delivery and publishing record into, created once per handler (and per
//! event name) and reused, so the hot path does no formatting or label allocation.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, OnceLock, PoisonError, RwLock};
use std::time::{Duration, SystemTime};

use metrics::{Counter, Gauge, Histogram};

use super::names::*;
use crate::dlq::DlqReason;

/// What became of a delivered message (the `outcome` label). Public only for the
/// micro-benchmarks (`benches/micro.rs`); not part of the API.
#[doc(hidden)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Handled and acked.
    Success,
    /// Failed; redelivered later.
    Retry,
    /// Dead-lettered.
    DeadLetter,
    /// Already handled (idempotency); acked without running the handler.
    Duplicate,
}

impl Outcome {
    const ALL: [Outcome; 4] = [
        Outcome::Success,
        Outcome::Retry,
        Outcome::DeadLetter,
        Outcome::Duplicate,
    ];

    fn as_str(self) -> &'static str {
        match self {
            Outcome::Success => "success",
            Outcome::Retry => "retry",
            Outcome::DeadLetter => "dead_letter",
            Outcome::Duplicate => "duplicate",
        }
    }
}

const REASONS: [DlqReason; 4] = [
    DlqReason::Decode,
    DlqReason::Version,
    DlqReason::Permanent,
    DlqReason::RetriesExhausted,
];

/// The outcome counters of one handler for one event name.
#[derive(Debug)]
struct OutcomeCounters([Counter; 4]);

/// One handler's metric handles, created when the app starts.
#[doc(hidden)]
pub struct HandlerMetrics {
    service: Arc<str>,
    handler: &'static str,
    by_event: RwLock<HashMap<Arc<str>, Arc<OutcomeCounters>>>,
    /// A typed handler's one event and its counters: counted without a lock or a lookup.
    typed: Option<(&'static str, Arc<OutcomeCounters>)>,
    duration: Histogram,
    lag: Histogram,
    in_flight: Gauge,
    dead_letters: [Counter; 4],
    handed_back: Counter,
    dead_letter_failures: Counter,
    pending: Gauge,
    ack_pending: Gauge,
}

impl fmt::Debug for HandlerMetrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HandlerMetrics")
            .field("handler", &self.handler)
            .finish()
    }
}

impl HandlerMetrics {
    /// Creates (registers) the handles of one handler; `event` pre-registers its outcomes.
    pub fn new(
        service: &Arc<str>,
        handler: &'static str,
        event: Option<&'static str>,
    ) -> HandlerMetrics {
        describe();
        let labels = [
            (label::SERVICE, service.to_string()),
            (label::HANDLER, handler.to_owned()),
        ];
        let mut metrics = HandlerMetrics {
            service: Arc::clone(service),
            handler,
            by_event: RwLock::default(),
            typed: None,
            duration: metrics::histogram!(HANDLER_DURATION, &labels),
            lag: metrics::histogram!(EVENT_LAG, &labels),
            in_flight: metrics::gauge!(HANDLERS_IN_FLIGHT, &labels),
            dead_letters: REASONS.map(|reason| {
                metrics::counter!(
                    DEAD_LETTERS,
                    &[
                        (label::SERVICE, service.to_string()),
                        (label::HANDLER, handler.to_owned()),
                        (label::REASON, reason.as_str().to_owned()),
                    ]
                )
            }),
            handed_back: metrics::counter!(MESSAGES_HANDED_BACK, &labels),
            dead_letter_failures: metrics::counter!(DEAD_LETTER_FAILURES, &labels),
            pending: metrics::gauge!(CONSUMER_PENDING, &labels),
            ack_pending: metrics::gauge!(CONSUMER_ACK_PENDING, &labels),
        };
        if let Some(event) = event {
            // Typed handlers see one event name: register its series up front, so they
            // show as 0 before the first message.
            metrics.typed = Some((event, metrics.outcomes(event)));
        }
        metrics
    }

    fn outcomes(&self, event: &str) -> Arc<OutcomeCounters> {
        if let Some(found) = self
            .by_event
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(event)
        {
            return Arc::clone(found);
        }
        // Wildcard handlers see names from subjects anyone can publish to: past a bound, the
        // rest share one series.
        let known = self
            .by_event
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .len();
        let event = if known >= MAX_EVENT_LABELS {
            OTHER_EVENTS
        } else {
            event
        };
        let counters = Arc::new(OutcomeCounters(Outcome::ALL.map(|outcome| {
            metrics::counter!(
                EVENTS_HANDLED,
                &[
                    (label::SERVICE, self.service.to_string()),
                    (label::HANDLER, self.handler.to_owned()),
                    (label::EVENT, event.to_owned()),
                    (label::OUTCOME, outcome.as_str().to_owned()),
                ]
            )
        })));
        let mut map = self
            .by_event
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        Arc::clone(map.entry(Arc::from(event)).or_insert(counters))
    }

    /// Counts one message's outcome.
    pub fn handled(&self, event: &str, outcome: Outcome) {
        let index = Outcome::ALL.iter().position(|o| *o == outcome).unwrap_or(0);
        match &self.typed {
            Some((name, counters)) if *name == event => counters.0[index].increment(1),
            _ => self.outcomes(event).0[index].increment(1),
        }
    }

    /// Counts a stored dead letter.
    pub(crate) fn dead_lettered(&self, reason: DlqReason) {
        if let Some(i) = REASONS.iter().position(|r| *r == reason) {
            self.dead_letters[i].increment(1);
        }
    }

    /// The counter of messages handed back without an outcome.
    pub(crate) fn handed_back(&self) -> Counter {
        self.handed_back.clone()
    }

    /// A dead letter could not be stored.
    pub(crate) fn dead_letter_failed(&self) {
        self.dead_letter_failures.increment(1);
    }

    /// An attempt starts: records the event's lag and counts the attempt in flight until the
    /// guard drops (also when the attempt is cut off), recording its duration then.
    pub fn attempt(&self, event_time: SystemTime) -> Attempt<'_> {
        self.in_flight.increment(1.0);
        let lag = SystemTime::now()
            .duration_since(event_time)
            .unwrap_or(Duration::ZERO);
        self.lag.record(lag.as_secs_f64());
        Attempt {
            metrics: self,
            started: tokio::time::Instant::now(),
        }
    }

    /// The consumer's backlog, polled from the broker.
    pub(crate) fn consumer_backlog(&self, pending: u64, ack_pending: usize) {
        self.pending.set(pending as f64);
        self.ack_pending.set(ack_pending as f64);
    }
}

/// A running handler attempt (see [`HandlerMetrics::attempt`]).
#[doc(hidden)]
#[derive(Debug)]
pub struct Attempt<'a> {
    metrics: &'a HandlerMetrics,
    started: tokio::time::Instant,
}

impl Attempt<'_> {
    /// When the attempt started.
    pub fn started(&self) -> tokio::time::Instant {
        self.started
    }
}

impl Drop for Attempt<'_> {
    fn drop(&mut self) {
        self.metrics.in_flight.decrement(1.0);
        self.metrics
            .duration
            .record(self.started.elapsed().as_secs_f64());
    }
}

/// Publish metrics of one event name.
#[derive(Debug)]
pub(crate) struct PublishMetrics {
    published: Counter,
    duration: Histogram,
}

impl PublishMetrics {
    /// The handles for `event`, created on first use and cached (for the events a handler
    /// declares with `emits = [..]`, when the app starts, so they show as 0 before the first
    /// publish).
    pub(crate) fn of(event: &str) -> Arc<PublishMetrics> {
        static CACHE: OnceLock<RwLock<HashMap<String, Arc<PublishMetrics>>>> = OnceLock::new();
        let cache = CACHE.get_or_init(Default::default);
        if let Some(found) = cache
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(event)
        {
            return Arc::clone(found);
        }
        describe();
        let known = cache.read().unwrap_or_else(PoisonError::into_inner).len();
        let event = if known >= MAX_EVENT_LABELS {
            OTHER_EVENTS
        } else {
            event
        };
        let labels = [(label::EVENT, event.to_owned())];
        let handles = Arc::new(PublishMetrics {
            published: metrics::counter!(EVENTS_PUBLISHED, &labels),
            duration: metrics::histogram!(PUBLISH_DURATION, &labels),
        });
        let mut map = cache.write().unwrap_or_else(PoisonError::into_inner);
        Arc::clone(map.entry(event.to_owned()).or_insert(handles))
    }

    /// `count` events stored after `took`.
    pub(crate) fn stored(&self, count: u64, took: Duration) {
        self.published.increment(count);
        self.duration.record(took.as_secs_f64());
    }
}

/// Broker connection metrics.
pub(crate) fn broker_connected(connected: bool) {
    describe();
    metrics::gauge!(BROKER_CONNECTED).set(if connected { 1.0 } else { 0.0 });
}

/// A reconnect after a loss.
pub(crate) fn broker_reconnected() {
    metrics::counter!(BROKER_RECONNECTS).increment(1);
}

/// One circuit breaker's state gauge and transition counters.
#[derive(Debug)]
pub(crate) struct BreakerMetrics {
    state: Gauge,
    /// Indexed by the state moved to: closed, half-open, open.
    transitions: [Counter; 3],
}

impl BreakerMetrics {
    /// The handles of breaker `name`, its transitions registered at 0.
    pub(crate) fn new(name: &str) -> BreakerMetrics {
        describe();
        let transition = |to: &str| {
            metrics::counter!(
                CIRCUIT_BREAKER_TRANSITIONS,
                &[
                    (label::BREAKER, name.to_owned()),
                    (label::TO, to.to_owned())
                ]
            )
        };
        let metrics = BreakerMetrics {
            state: metrics::gauge!(CIRCUIT_BREAKER_STATE, &[(label::BREAKER, name.to_owned())]),
            transitions: [
                transition("closed"),
                transition("half_open"),
                transition("open"),
            ],
        };
        metrics.state.set(0.0);
        metrics
    }

    /// The breaker moved to the state numbered `to` (0 closed, 1 half-open, 2 open).
    pub(crate) fn moved(&self, to: u8) {
        self.state.set(f64::from(to));
        if let Some(counter) = self.transitions.get(usize::from(to)) {
            counter.increment(1);
        }
    }
}
