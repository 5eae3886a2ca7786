//! Observability: every metric name and label key (DESIGN.md §6) defined once here, the
//! handles delivery and publishing record into, the Prometheus exporter, and the small HTTP
//! listener serving `/metrics`, `/healthz` and `/readyz`.
//!
//! Metrics go through the [`metrics`] facade. eda installs a Prometheus recorder when an app
//! asks for a metrics address and no recorder is installed yet; if the application installed
//! its own recorder first, eda records into that one and serves no `/metrics` (only the health
//! endpoints). Label values are bounded: service, handler and event names (at most
//! [`MAX_EVENT_LABELS`] per handler), outcomes and reasons — never ids or error texts. Handles are created once per handler (and per event
//! name) and reused, so the hot path does no formatting or label allocation.

use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock, PoisonError, RwLock};
use std::time::{Duration, SystemTime};

use metrics::{Counter, Gauge, Histogram, Unit};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use crate::delivery::DlqReason;

/// Counter, label `event`: events stored by the broker (publish returned `Ok`).
pub const EVENTS_PUBLISHED: &str = "eda_events_published_total";
/// Histogram, label `event`: time from publish call to the broker's confirmation.
pub const PUBLISH_DURATION: &str = "eda_publish_duration_seconds";
/// Counter, labels `service`, `handler`, `event`, `outcome` (`success`, `retry`,
/// `dead_letter`, `duplicate`): what became of each delivered message.
pub const EVENTS_HANDLED: &str = "eda_events_handled_total";
/// Histogram, labels `service`, `handler`: how long one handler attempt ran.
pub const HANDLER_DURATION: &str = "eda_handler_duration_seconds";
/// Histogram, labels `service`, `handler`: now minus the event's `Eda-Time`, at handler start.
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
    }
}

/// Distinct `event` label values one handler records before the rest are counted as
/// [`OTHER_EVENTS`].
pub const MAX_EVENT_LABELS: usize = 256;
/// The `event` label value for names past [`MAX_EVENT_LABELS`].
pub const OTHER_EVENTS: &str = "other";

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
    /// The handles for `event`, created on first use and cached.
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

/// The Prometheus recorder eda installed for this process, if it could (`None` when the
/// application installed a recorder of its own first).
pub(crate) fn prometheus() -> Option<PrometheusHandle> {
    static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let builder = PrometheusBuilder::new();
            let builder = [
                (HANDLER_DURATION, HANDLER_DURATION_BUCKETS),
                (EVENT_LAG, EVENT_LAG_BUCKETS),
                (PUBLISH_DURATION, PUBLISH_DURATION_BUCKETS),
            ]
            .into_iter()
            .try_fold(builder, |b, (name, buckets)| {
                b.set_buckets_for_metric(Matcher::Full(name.to_owned()), buckets)
            });
            let recorder = match builder {
                Ok(builder) => builder.build_recorder(),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot configure the Prometheus exporter");
                    return None;
                }
            };
            let handle = recorder.handle();
            match metrics::set_global_recorder(recorder) {
                Ok(()) => {
                    describe();
                    Some(handle)
                }
                Err(_) => {
                    tracing::info!("a metrics recorder is already installed: eda records into it and serves no /metrics");
                    None
                }
            }
        })
        .clone()
}

/// What `/readyz` reports.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Readiness {
    /// Whether the broker connection is up.
    pub connected: bool,
    /// Handlers whose consumer is not bound yet (or lost).
    pub unbound: Vec<String>,
}

impl Readiness {
    /// Ready: connected and every consumer bound.
    pub fn is_ready(&self) -> bool {
        self.connected && self.unbound.is_empty()
    }

    fn body(&self) -> String {
        serde_json::json!({
            "ready": self.is_ready(),
            "broker_connected": self.connected,
            "consumers_not_bound": self.unbound,
        })
        .to_string()
    }
}

/// Something that knows whether the app is ready.
pub(crate) type ReadinessProbe = Arc<dyn Fn() -> Readiness + Send + Sync>;

/// Serves `/metrics`, `/healthz` and `/readyz` on `listener` until the task is aborted.
pub(crate) async fn serve(
    listener: TcpListener,
    metrics: Option<PrometheusHandle>,
    ready: ReadinessProbe,
) {
    loop {
        let Ok((mut stream, _)) = listener.accept().await else {
            continue;
        };
        let metrics = metrics.clone();
        let ready = Arc::clone(&ready);
        tokio::spawn(async move {
            let mut request = [0u8; 1024];
            let read = match tokio::time::timeout(Duration::from_secs(5), stream.read(&mut request))
                .await
            {
                Ok(Ok(n)) => n,
                _ => return,
            };
            let line = String::from_utf8_lossy(&request[..read]);
            let path = line.split_whitespace().nth(1).unwrap_or("/");
            let path = path.split('?').next().unwrap_or(path);
            let (status, content_type, body) = respond(path, metrics.as_ref(), &ready);
            let response = format!(
                "HTTP/1.1 {status}\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = stream.write_all(response.as_bytes()).await;
            let _ = stream.shutdown().await;
        });
    }
}

fn respond(
    path: &str,
    metrics: Option<&PrometheusHandle>,
    ready: &ReadinessProbe,
) -> (&'static str, &'static str, String) {
    const TEXT: &str = "text/plain; charset=utf-8";
    const JSON: &str = "application/json";
    match path {
        "/metrics" => match metrics {
            Some(handle) => (
                "200 OK",
                "text/plain; version=0.0.4; charset=utf-8",
                handle.render(),
            ),
            None => (
                "404 Not Found",
                TEXT,
                "metrics go to the application's own recorder\n".to_owned(),
            ),
        },
        "/healthz" => ("200 OK", TEXT, "ok\n".to_owned()),
        "/readyz" => {
            let readiness = ready();
            let status = if readiness.is_ready() {
                "200 OK"
            } else {
                "503 Service Unavailable"
            };
            (status, JSON, readiness.body())
        }
        _ => (
            "404 Not Found",
            TEXT,
            "try /metrics, /healthz or /readyz\n".to_owned(),
        ),
    }
}

/// Binds the metrics address; `SocketAddr` with port 0 picks a free port.
pub(crate) async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readiness_names_what_is_not_ready() {
        let r = Readiness {
            connected: false,
            unbound: vec!["billing__charge".into()],
        };
        assert!(!r.is_ready());
        assert_eq!(
            r.body(),
            r#"{"broker_connected":false,"consumers_not_bound":["billing__charge"],"ready":false}"#
        );
        let probe: ReadinessProbe = Arc::new(|| Readiness {
            connected: true,
            unbound: vec![],
        });
        assert_eq!(respond("/readyz", None, &probe).0, "200 OK");
        assert_eq!(respond("/healthz", None, &probe).0, "200 OK");
        assert_eq!(respond("/metrics", None, &probe).0, "404 Not Found");
    }

    #[test]
    fn bucket_bounds_increase() {
        for buckets in [
            HANDLER_DURATION_BUCKETS,
            EVENT_LAG_BUCKETS,
            PUBLISH_DURATION_BUCKETS,
        ] {
            assert!(buckets.windows(2).all(|w| w[0] < w[1]));
        }
        assert_eq!(HANDLER_DURATION_BUCKETS.first(), Some(&0.0001));
        assert_eq!(HANDLER_DURATION_BUCKETS.last(), Some(&60.0));
    }
}

/// W3C trace context (`traceparent: 00-<trace id>-<parent span id>-<flags>`): each published
/// event gets a span id of its own; an event published while handling another continues that
/// one's trace, so a trace follows a conversation across services.
pub mod trace {

    /// A new trace: fresh trace id and span id, sampled.
    pub fn new_traceparent() -> String {
        // Written in place: one allocation, no formatting machinery (it runs per publish).
        let mut value = String::with_capacity(55);
        value.push_str("00-");
        crate::random::push_hex(&mut value, 16);
        value.push('-');
        crate::random::push_hex(&mut value, 8);
        value.push_str("-01");
        value
    }

    /// A child of `parent` (a `traceparent` value): same trace id and flags, a new span id.
    /// An unreadable parent starts a new trace.
    pub fn child_of(parent: Option<&str>) -> String {
        match parent.and_then(parse) {
            Some((trace_id, flags)) => {
                let mut value = String::with_capacity(55);
                value.push_str("00-");
                value.push_str(trace_id);
                value.push('-');
                crate::random::push_hex(&mut value, 8);
                value.push('-');
                value.push_str(flags);
                value
            }
            None => new_traceparent(),
        }
    }

    /// The trace id of a `traceparent` value, if it is well formed.
    pub fn trace_id(traceparent: &str) -> Option<&str> {
        parse(traceparent).map(|(trace_id, _)| trace_id)
    }

    fn parse(value: &str) -> Option<(&str, &str)> {
        let mut parts = value.trim().split('-');
        let (version, trace_id, span_id, flags) =
            (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
        let hex = |s: &str, len: usize| s.len() == len && s.bytes().all(|b| b.is_ascii_hexdigit());
        let valid = hex(version, 2)
            && hex(trace_id, 32)
            && hex(span_id, 16)
            && hex(flags, 2)
            && trace_id.bytes().any(|b| b != b'0');
        valid.then_some((trace_id, flags))
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn children_keep_the_trace_and_get_a_new_span() {
            let root = new_traceparent();
            assert_eq!(root.len(), 55, "{root}");
            let child = child_of(Some(&root));
            assert_eq!(trace_id(&child), trace_id(&root));
            assert_ne!(child, root);
            assert!(
                trace_id(&child_of(Some("garbage"))).is_some(),
                "a bad parent starts a new trace"
            );
            assert_eq!(
                trace_id("00-00000000000000000000000000000000-0000000000000001-01"),
                None
            );
        }
    }
}
