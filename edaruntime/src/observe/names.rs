//! Every metric name, label key and histogram bucket set (DESIGN.md §6), defined once.

use metrics::Unit;

/// Counter, label `event`: events stored by the broker (publish returned `Ok`).
pub const EVENTS_PUBLISHED: &str = "eda_events_published_total";
/// Histogram, label `event`: time from publish call to the broker's confirmation.
pub const PUBLISH_DURATION: &str = "eda_publish_duration_seconds";
/// Counter, labels `service`, `handler`, `event`, `outcome` (`success`, `retry`,
/// `dead_letter`, `duplicate`): what became of each delivered message.
pub const EVENTS_HANDLED: &str = "eda_events_handled_total";
/// Histogram, labels `service`, `handler`: how long one handler attempt ran.
pub const HANDLER_DURATION: &str = "eda_handler_duration_seconds";
/// Histogram, labels `service`, `handler`: now minus the event time (`Eda-Time`, else the
/// broker's store time), at handler start.
pub const EVENT_LAG: &str = "eda_event_lag_seconds";
/// Gauge, labels `service`, `handler`: handler attempts running now.
pub const HANDLERS_IN_FLIGHT: &str = "eda_handlers_in_flight";
/// Counter, labels `service`, `handler`, `reason`: messages stored on the dead-letter subject.
pub const DEAD_LETTERS: &str = "eda_dead_letters_total";
/// Gauge, label `breaker`: 0 closed, 1 half-open, 2 open (registered by the breakers).
pub const CIRCUIT_BREAKER_STATE: &str = "eda_circuit_breaker_state";
/// Counter, labels `breaker`, `to`: breaker state changes.
pub const CIRCUIT_BREAKER_TRANSITIONS: &str = "eda_circuit_breaker_transitions_total";
/// Gauge, labels `service`, `handler`: messages the consumer has not delivered yet.
pub const CONSUMER_PENDING: &str = "eda_consumer_pending_messages";
/// Gauge, labels `service`, `handler`: messages delivered and not yet acknowledged.
pub const CONSUMER_ACK_PENDING: &str = "eda_consumer_ack_pending_messages";
/// Gauge: 1 while connected to the broker, else 0.
pub const BROKER_CONNECTED: &str = "eda_broker_connected";
/// Counter: connections re-established after a loss.
pub const BROKER_RECONNECTS: &str = "eda_broker_reconnects_total";
/// Counter, labels `service`, `handler`: messages handed back for redelivery without an
/// outcome (their handler was cut off at the shutdown deadline, or never started).
pub const MESSAGES_HANDED_BACK: &str = "eda_messages_handed_back_total";
/// Counter, labels `service`, `handler`: attempts to store a dead letter that failed (the
/// dead-letter stream missing or full); the message is kept and retried.
pub const DEAD_LETTER_FAILURES: &str = "eda_dead_letter_failures_total";

/// Label keys.
pub mod label {
    /// The service (app) name.
    pub const SERVICE: &str = "service";
    /// The handler name.
    pub const HANDLER: &str = "handler";
    /// The event name.
    pub const EVENT: &str = "event";
    /// What became of a message.
    pub const OUTCOME: &str = "outcome";
    /// Why a message was dead-lettered.
    pub const REASON: &str = "reason";
    /// A circuit breaker's name.
    pub const BREAKER: &str = "breaker";
    /// The state a breaker moved to.
    pub const TO: &str = "to";
}

/// Handler durations: 100 µs to 60 s, roughly ×2.5 per bucket.
pub const HANDLER_DURATION_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0, 30.0, 60.0,
];
/// Event lag: 1 ms to 6 h (a consumer catching up after an outage).
pub const EVENT_LAG_BUCKETS: &[f64] = &[
    0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 1800.0, 3600.0,
    7200.0, 21600.0,
];
/// Publish confirmations: 50 µs to 10 s.
pub const PUBLISH_DURATION_BUCKETS: &[f64] = &[
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
    2.5, 5.0, 10.0,
];

/// Describes every metric to the installed recorder (help texts and units for the exposition).
pub(crate) fn describe() {
    {
        metrics::describe_counter!(EVENTS_PUBLISHED, "Events stored by the broker");
        metrics::describe_histogram!(
            PUBLISH_DURATION,
            Unit::Seconds,
            "Time from publish to the broker's confirmation"
        );
        metrics::describe_counter!(EVENTS_HANDLED, "Delivered messages by outcome");
        metrics::describe_histogram!(
            HANDLER_DURATION,
            Unit::Seconds,
            "Duration of one handler attempt"
        );
        metrics::describe_histogram!(
            EVENT_LAG,
            Unit::Seconds,
            "Now minus the event's time, at handler start"
        );
        metrics::describe_gauge!(HANDLERS_IN_FLIGHT, "Handler attempts running now");
        metrics::describe_counter!(DEAD_LETTERS, "Messages stored on the dead-letter subject");
        metrics::describe_gauge!(
            CIRCUIT_BREAKER_STATE,
            "Circuit breaker state: 0 closed, 1 half-open, 2 open"
        );
        metrics::describe_counter!(CIRCUIT_BREAKER_TRANSITIONS, "Circuit breaker state changes");
        metrics::describe_gauge!(
            CONSUMER_PENDING,
            "Messages the consumer has not delivered yet"
        );
        metrics::describe_gauge!(
            CONSUMER_ACK_PENDING,
            "Messages delivered and not yet acknowledged"
        );
        metrics::describe_gauge!(BROKER_CONNECTED, "1 while connected to the broker");
        metrics::describe_counter!(BROKER_RECONNECTS, "Connections re-established after a loss");
        metrics::describe_counter!(
            MESSAGES_HANDED_BACK,
            "Messages handed back for redelivery without an outcome (cut off or never started)"
        );
        metrics::describe_counter!(
            DEAD_LETTER_FAILURES,
            "Failed attempts to store a dead letter (the message is kept)"
        );
    }
}

/// Distinct `event` label values one handler records before the rest are counted as
/// [`OTHER_EVENTS`].
pub const MAX_EVENT_LABELS: usize = 256;
/// The `event` label value for names past [`MAX_EVENT_LABELS`].
pub const OTHER_EVENTS: &str = "other";
