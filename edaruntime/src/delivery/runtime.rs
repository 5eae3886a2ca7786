//! The I/O half of delivery: runs one message through its handler and carries out what
//! [`decide`](super::decide) says, with the idempotency store and the dead-letter subject.

use std::fmt;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::FutureExt;
use tokio::sync::OwnedSemaphorePermit;
use tracing::Instrument;

use super::decide::{backoff_delay, decide, Decision, Outcome};
use super::naming::Names;
use super::settlement::Settlement;
use crate::breaker::{Breaker, Call, Probe};
use crate::dlq::{DeadLetter, DlqReason};
use crate::event::RawEvent;
use crate::handler::{
    Backoff, BackoffPolicy, Context, Failure, HandlerDescriptor, HandlerOptions, Idempotency,
    Invocation, Scope,
};
use crate::idempotency::{Claim, Found, IdempotencyStore, Recorded};
use crate::observe::{self, HandlerMetrics, PublishMetrics};
use crate::port::{Acknowledge, Delivery, Transport};
use crate::random;

/// How long a dead letter that cannot be stored is retried in place (its message kept alive
/// with in-progress acks) before the message is handed back with [`DLQ_FAILING_DELAY`].
pub(crate) const DLQ_RETRY_LIMIT: Duration = Duration::from_secs(30);
/// The nak delay of a message whose dead letter could not be stored for [`DLQ_RETRY_LIMIT`]:
/// long, so that a missing or full dead-letter stream does not turn into a busy loop.
pub(crate) const DLQ_FAILING_DELAY: Duration = Duration::from_secs(60);

/// How much longer than the handler's timeout a claim holds (the id's record after a success
/// takes place inside it), and how long after a claim's end its other holder looks again.
const CLAIM_MARGIN: Duration = Duration::from_secs(2);
/// The longest a message whose claim another worker holds waits before it looks again (the
/// holder usually finishes well before its timeout).
const CLAIM_RECHECK: Duration = Duration::from_secs(5);

/// Retries of a store write or a dead-letter publish in place: 100 ms doubling to 5 s.
const IN_PLACE: BackoffPolicy = BackoffPolicy {
    kind: Backoff::Exponential,
    base_delay: Duration::from_millis(100),
    max_delay: Duration::from_secs(5),
    jitter: true,
};

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
    /// Messages acked as already processed, without calling the handler.
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

/// One handler bound in one app: everything delivery needs to process its messages.
pub(crate) struct HandlerRuntime {
    pub(crate) descriptor: &'static HandlerDescriptor,
    pub(crate) scope: Arc<Scope>,
    pub(crate) service: Arc<str>,
    pub(crate) names: Names,
    pub(crate) transport: Arc<dyn Transport>,
    pub(crate) store: Arc<dyn IdempotencyStore>,
    /// The circuit breaker the handler names, shared with the other handlers naming it.
    pub(crate) breaker: Option<Breaker>,
    pub(crate) counters: Counters,
    pub(crate) metrics: HandlerMetrics,
    /// Whether the transport has this handler's consumer bound and pulling (for `/readyz`).
    pub(crate) bound: AtomicBool,
    /// The stream position up to which the broker last said every message of this handler's
    /// consumer is acknowledged (where a consumer deleted behind the app's back restarts).
    pub(crate) acknowledged: AtomicU64,
}

impl fmt::Debug for HandlerRuntime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HandlerRuntime")
            .field("handler", &self.descriptor.name)
            .field("durable", &self.names.durable)
            .finish()
    }
}

/// What [`HandlerRuntime::process`] came to, for the settling half.
enum Processed {
    Decided(Decision),
    /// A record says the event was dead-lettered already: terminate it again.
    AlreadyDeadLettered,
    /// Handed back with `delay`, not counted as an attempt: a half-open breaker's probe
    /// failed (the outage's failure, not the message's), or another worker holds the event's
    /// claim.
    HandBack {
        delay: Duration,
        why: &'static str,
    },
}

impl HandlerRuntime {
    pub(crate) fn new(
        descriptor: &'static HandlerDescriptor,
        scope: Arc<Scope>,
        transport: Arc<dyn Transport>,
        store: Arc<dyn IdempotencyStore>,
        breaker: Option<Breaker>,
    ) -> HandlerRuntime {
        let service: Arc<str> = Arc::from(scope.publisher.service());
        // The events it declares it publishes get their publish series now, at 0: a series
        // born at its first value shows no increase to `rate()`, so a burst of follow-ups
        // finished between two scrapes would be missing from every rate and percentile.
        for name in descriptor.emits.unwrap_or_default() {
            PublishMetrics::of(name);
        }
        HandlerRuntime {
            names: Names::new(&service, descriptor.name),
            metrics: HandlerMetrics::new(
                &service,
                descriptor.name,
                descriptor.event.map(|e| e.name),
            ),
            descriptor,
            scope,
            service,
            transport,
            store,
            breaker,
            counters: Counters::default(),
            bound: AtomicBool::new(false),
            acknowledged: AtomicU64::new(0),
        }
    }

    pub(crate) fn options(&self) -> &HandlerOptions {
        &self.descriptor.options
    }

    pub(crate) fn durable(&self) -> &str {
        &self.names.durable
    }

    /// Processes one delivered message end to end and settles it with the broker. `permit`
    /// (a concurrency slot) is released once the message is settled; `probe` is set when a
    /// half-open breaker let the message through to test the downstream.
    ///
    /// Not an `async fn` itself: a wrapper future would hold its arguments next to the inner
    /// future holding them too, and every message's task would be that much larger.
    pub(crate) fn deliver<'a, A: Acknowledge>(
        &'a self,
        delivery: Delivery,
        settlement: Settlement<A>,
        permit: Option<OwnedSemaphorePermit>,
        probe: Option<Probe>,
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
        self.deliver_inner(delivery, settlement, permit, probe)
            .instrument(span)
    }

    async fn deliver_inner<A: Acknowledge>(
        &self,
        delivery: Delivery,
        settlement: Settlement<A>,
        permit: Option<OwnedSemaphorePermit>,
        probe: Option<Probe>,
    ) {
        let key = self.idempotency_key(&delivery);
        let delivery = self.real_attempt(delivery, key.as_deref()).await;
        let raw = delivery.raw.clone();
        let event = &*raw.metadata().name;
        // The slot is held until the message is settled, except after a success whose id
        // is recorded at the first try: a record or a dead letter retried in place keeps (or
        // takes back) a slot, so an outage of the store or of the dead-letter stream stops
        // this handler's intake instead of piling up messages.
        let mut permit = permit;
        let epoch = delivery.id_epoch.clone();
        let redrive = delivery.redrive.clone();
        let processed = self
            .process(delivery, key.as_deref(), &mut permit, probe)
            .await;
        let decision = match processed {
            Processed::Decided(decision) => decision,
            Processed::HandBack { delay, why } => {
                tracing::warn!(delay = ?delay, "{why}; handing the message back (not counted as an attempt)");
                let key =
                    self.hand_back_key(&raw.metadata().id, epoch.as_deref(), redrive.as_deref());
                self.count_hand_back(&key).await;
                self.metrics.handed_back().increment(1);
                Box::pin(settlement.nak(delay)).await;
                return;
            }
            Processed::AlreadyDeadLettered => {
                tracing::info!("already dead-lettered; terminating it again");
                if let Err(e) = settlement.term().await {
                    tracing::warn!(error = %e, "terminating an already dead-lettered message was not confirmed; it will be terminated again");
                }
                return;
            }
        };
        match decision {
            Decision::Ack => {
                self.counters.handled.fetch_add(1, Ordering::Relaxed);
                self.metrics.handled(event, observe::Outcome::Success);
                settlement.ack().await;
            }
            Decision::Duplicate => {
                self.counters.duplicates.fetch_add(1, Ordering::Relaxed);
                self.metrics.handled(event, observe::Outcome::Duplicate);
                settlement.ack().await;
            }
            // The failure paths run in futures of their own (boxed): kept inline, their
            // states (a dead-letter publish, a confirmed term) would make every message's
            // task several times larger, and spawning it copy that much.
            Decision::Retry { delay, error } => {
                tracing::warn!(error = %error, delay = ?delay, "handler failed; will retry");
                self.counters.retried.fetch_add(1, Ordering::Relaxed);
                self.metrics.handled(event, observe::Outcome::Retry);
                Box::pin(settlement.nak(delay)).await;
            }
            Decision::DeadLetter { reason, error } => {
                Box::pin(self.dead_letter(&raw, reason, error, settlement, key, redrive)).await;
            }
        }
    }

    pub(crate) fn idempotency_key(&self, delivery: &Delivery) -> Option<String> {
        (self.options().idempotent != Idempotency::Off).then(|| {
            self.names
                .idempotency_key(&delivery.raw.metadata().id, delivery.id_epoch.as_deref())
        })
    }

    /// Where the hand-backs of the message of event `id` are counted (with or without
    /// idempotency records).
    fn hand_back_key(&self, id: &str, epoch: Option<&str>, redrive: Option<&str>) -> String {
        let key = self.names.idempotency_key(id, epoch);
        Names::hand_back_key(&Names::message_key(&key, redrive))
    }

    /// Counts a hand-back of a message that did not reach its handler, or reached it as a
    /// failed probe, so that its next delivery is not taken for an attempt.
    async fn count_hand_back(&self, key: &str) {
        if let Err(e) = self.store.record_hand_back(key).await {
            tracing::debug!(error = %e, "cannot count the hand-back; the next delivery counts it as an attempt");
        }
    }

    /// Gives back a message that never reached its handler (shutdown began, or its breaker
    /// opened): counted, then nak'd with `delay` (zero: at once). True if it was handed back.
    pub(crate) async fn hand_back_unstarted<A: Acknowledge>(
        &self,
        delivery: &Delivery,
        ack: &A,
        delay: Duration,
    ) -> bool {
        if self.options().idempotent != Idempotency::Off || self.breaker.is_some() {
            let metadata = delivery.raw.metadata();
            let key = self.hand_back_key(
                &metadata.id,
                delivery.id_epoch.as_deref(),
                delivery.redrive.as_deref(),
            );
            self.count_hand_back(&key).await;
        }
        self.metrics.handed_back().increment(1);
        if !delay.is_zero() {
            ack.nak(delay).await;
            return true;
        }
        match ack.hand_back() {
            Some(sending) => {
                sending.await;
                true
            }
            None => false,
        }
    }

    /// The attempt number counts only deliveries that reached the handler: hand-backs of the
    /// message that never started (it arrived after shutdown began, or while its breaker was
    /// open) and failed probes are subtracted. Looked up for redeliveries only.
    async fn real_attempt(&self, mut delivery: Delivery, key: Option<&str>) -> Delivery {
        let delivered = delivery.raw.attempt();
        if delivered <= 1 {
            return delivery;
        }
        let key = match key {
            Some(key) => {
                Names::hand_back_key(&Names::message_key(key, delivery.redrive.as_deref()))
            }
            None if self.breaker.is_some() => self.hand_back_key(
                &delivery.raw.metadata().id,
                delivery.id_epoch.as_deref(),
                delivery.redrive.as_deref(),
            ),
            // No records and no breaker: hand-backs (at shutdown only) are not counted.
            None => return delivery,
        };
        match self.store.hand_backs(&key).await {
            Ok(0) => {}
            Ok(unstarted) => {
                let attempt = delivered.saturating_sub(unstarted).max(1);
                tracing::Span::current().record("attempt", attempt);
                delivery.raw = delivery.raw.with_attempt(attempt);
            }
            Err(e) => {
                tracing::debug!(error = %e, "cannot read the hand-backs; the delivery count stands")
            }
        }
        delivery
    }

    /// Stores a dead letter, then terminates the original. A dead letter that cannot be
    /// stored is retried in place (the driver keeps the message alive) for at most
    /// [`DLQ_RETRY_LIMIT`]; then the message is handed back with a long delay. Never dropped.
    async fn dead_letter<A: Acknowledge>(
        &self,
        raw: &RawEvent,
        reason: DlqReason,
        error: String,
        settlement: Settlement<A>,
        key: Option<String>,
        redrive: Option<Arc<str>>,
    ) {
        let attempt = raw.attempt();
        let event = &*raw.metadata().name;
        let letter = DeadLetter {
            subject: self.names.dlq_subject.clone(),
            service: self.service.to_string(),
            handler: self.descriptor.name.to_owned(),
            reason,
            error: error.clone(),
            attempts: attempt,
            metadata: Arc::clone(raw.metadata_arc()),
            payload: raw.payload_bytes().clone(),
            payload_cut: None,
            redrive: redrive.as_deref().map(str::to_owned),
        };
        let started = tokio::time::Instant::now();
        let mut tries = 0u32;
        loop {
            match self.transport.dead_letter(letter.clone()).await {
                Ok(()) => break,
                Err(dlq_error) => {
                    tries += 1;
                    self.metrics.dead_letter_failed();
                    if started.elapsed() >= DLQ_RETRY_LIMIT {
                        tracing::error!(reason = %reason, error = %error, dlq_error = %dlq_error,
                            failing_for = ?started.elapsed(), delay = ?DLQ_FAILING_DELAY,
                            "the dead letter cannot be stored (is the dead-letter stream missing or full?); handing the message back");
                        self.counters.retried.fetch_add(1, Ordering::Relaxed);
                        self.metrics.handled(event, observe::Outcome::Retry);
                        settlement.nak(DLQ_FAILING_DELAY).await;
                        return;
                    }
                    if tries == 1 {
                        tracing::error!(reason = %reason, error = %error, dlq_error = %dlq_error,
                            "cannot store the dead letter; retrying (the message is kept)");
                    }
                    tokio::time::sleep(backoff_delay(&IN_PLACE, tries, random::unit())).await;
                }
            }
        }
        tracing::error!(reason = %reason, error = %error, "dead-lettered");
        self.counters.dead_lettered.fetch_add(1, Ordering::Relaxed);
        self.metrics.handled(event, observe::Outcome::DeadLetter);
        self.metrics.dead_lettered(reason);
        // Remembered before the terminate: should the terminate not reach the server, the
        // redelivery is terminated without running the handler again.
        if let Some(key) = &key {
            if let Err(e) = self
                .store
                .record_dead_letter(&Names::dead_letter_key(&Names::message_key(
                    key,
                    redrive.as_deref(),
                )))
                .await
            {
                tracing::warn!(error = %e, "cannot record the dead-letter decision; should the terminate fail, a redelivery dead-letters it again (deduplicated)");
            }
        }
        if let Err(e) = settlement.term().await {
            tracing::warn!(error = %e, "terminating the dead-lettered message was not confirmed; its redelivery is terminated without running the handler");
        }
    }

    /// Runs the handler (unless a record says it ran) and decides; records the id on success.
    async fn process(
        &self,
        delivery: Delivery,
        key: Option<&str>,
        permit: &mut Option<OwnedSemaphorePermit>,
        probe: Option<Probe>,
    ) -> Processed {
        let Delivery {
            raw,
            redelivered,
            header_error,
            redrive,
            ..
        } = delivery;
        let options = self.options();
        let attempt = raw.attempt();
        if let Some(error) = header_error {
            let outcome = Outcome::Undecodable(error);
            return Processed::Decided(decide(&outcome, attempt, options, random::unit()));
        }
        let look_up = match options.idempotent {
            Idempotency::Always | Idempotency::Claim => true,
            Idempotency::Redelivered => redelivered,
            Idempotency::Off => false,
        };
        if let (true, Some(key)) = (look_up, key) {
            // The dead-letter record is read only for a redelivery of this very message (its
            // terminate was not confirmed): a first delivery of the same id — a producer
            // sending it again, a redrive — is handled afresh.
            let dead_letter_key = (attempt > 1)
                .then(|| Names::dead_letter_key(&Names::message_key(key, redrive.as_deref())));
            match self.look_up(key, dead_letter_key.as_deref()).await {
                Ok(Some(Found::Processed)) => return Processed::Decided(Decision::Duplicate),
                Ok(Some(Found::DeadLettered)) => return Processed::AlreadyDeadLettered,
                Ok(None) => {}
                Err(e) => {
                    // Nothing ran yet: a failed attempt, retried with backoff.
                    return Processed::Decided(Decision::Retry {
                        delay: backoff_delay(&options.backoff, attempt, random::unit()),
                        error: format!("idempotency store: {e}"),
                    });
                }
            }
        }
        let claim_key = match (options.idempotent, key) {
            (Idempotency::Claim, Some(key)) => Some(Names::claim_key(key)),
            _ => None,
        };
        if let Some(claim_key) = &claim_key {
            match self
                .store
                .claim(claim_key, options.timeout + CLAIM_MARGIN)
                .await
            {
                Ok(Claim::Taken) => {}
                Ok(Claim::HeldFor(left)) => {
                    return Processed::HandBack {
                        delay: (left + CLAIM_MARGIN).min(CLAIM_RECHECK),
                        why: "another worker is handling this event",
                    }
                }
                Err(e) => {
                    return Processed::Decided(Decision::Retry {
                        delay: backoff_delay(&options.backoff, attempt, random::unit()),
                        error: format!("idempotency store (claim): {e}"),
                    });
                }
            }
        }
        let processed = self.attempt(raw, key, permit, probe).await;
        if let Some(claim_key) = &claim_key {
            // A failed attempt gives its claim up, so that its retry (on any worker) can take
            // it at once; a success keeps it (the processed record decides from now on).
            if !matches!(processed, Processed::Decided(Decision::Ack)) {
                if let Err(e) = self.store.release(claim_key).await {
                    tracing::debug!(error = %e, "cannot give the claim up; the retry waits until it expires");
                }
            }
        }
        processed
    }

    /// Runs the handler once and decides, recording the id of a success.
    async fn attempt(
        &self,
        raw: RawEvent,
        key: Option<&str>,
        permit: &mut Option<OwnedSemaphorePermit>,
        probe: Option<Probe>,
    ) -> Processed {
        let options = self.options();
        let attempt = raw.attempt();
        // The clock is read for the breaker's slow-call rule only.
        let started = self.breaker.as_ref().map(|_| tokio::time::Instant::now());
        let outcome = self.run(raw).await;
        if let (Some(breaker), Some(started)) = (&self.breaker, started) {
            let now = tokio::time::Instant::now();
            let call = breaker_call(&outcome, breaker.is_slow(now - started));
            match probe {
                Some(probe) => {
                    // A slow success reopens the breaker all the same, but it is done: acked.
                    if let (Some(delay), false) =
                        (probe.finish(now, call), matches!(outcome, Outcome::Success))
                    {
                        return Processed::HandBack {
                            delay,
                            why: "the breaker's probe failed",
                        };
                    }
                }
                None => breaker.record(now, call),
            }
        }
        let decision = decide(&outcome, attempt, options, random::unit());
        if let (Decision::Ack, Some(key)) = (&decision, key) {
            // The slot goes to the next message while the id is recorded; a record that has to
            // be retried takes a slot again.
            let semaphore = permit.take().map(|p| Arc::clone(p.semaphore()));
            if self.store.record(key).await.is_err() {
                if let Some(semaphore) = semaphore {
                    *permit = semaphore.acquire_owned().await.ok();
                }
                self.record_in_place(key).await;
            }
        }
        Processed::Decided(decision)
    }

    /// The processed-id record of `key`, else (for a redelivery) the dead-letter record.
    async fn look_up(
        &self,
        key: &str,
        dead_letter_key: Option<&str>,
    ) -> Result<Option<Found>, crate::idempotency::StoreError> {
        let found = self.store.lookup(key).await?;
        match (found, dead_letter_key) {
            (None, Some(dead_letter_key)) => self.store.lookup(dead_letter_key).await,
            (found, _) => Ok(found),
        }
    }

    /// Records a handled event's id, retrying until the store takes it: the handler ran, so
    /// running it again (nak) would repeat its side effect. The driver keeps the message alive
    /// meanwhile; at the shutdown deadline the message is handed back.
    async fn record_in_place(&self, key: &str) {
        let mut tries = 0u32;
        loop {
            match self.store.record(key).await {
                // Already present: another worker finished the same event first (the broker
                // redelivered it while this one was still running). Its record stands.
                Ok(Recorded::Created | Recorded::AlreadyPresent) => return,
                Err(e) => {
                    tries += 1;
                    let delay = backoff_delay(&IN_PLACE, tries, random::unit());
                    if tries == 1 {
                        tracing::warn!(error = %e, "cannot record the processed id; retrying (the handler is not run again)");
                    } else {
                        tracing::debug!(error = %e, tries, "cannot record the processed id; retrying");
                    }
                    tokio::time::sleep(delay).await;
                }
            }
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
        let running = self.metrics.attempt(raw.metadata().time);
        let invocation = Invocation { raw, context };
        let attempt = AssertUnwindSafe((self.descriptor.invoke)(invocation)).catch_unwind();
        // The deadline from the attempt's start: one clock read less per message.
        match tokio::time::timeout_at(running.started() + timeout, attempt).await {
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

/// How an attempt counts for the handler's breaker: only what says the downstream is failing.
fn breaker_call(outcome: &Outcome, slow: bool) -> Call {
    match outcome {
        Outcome::Success if slow => Call::Failed,
        Outcome::Success => Call::Succeeded,
        Outcome::Failed(e) if e.is_permanent() => Call::NotCounted,
        Outcome::Failed(_) | Outcome::TimedOut(_) | Outcome::Panicked(_) => Call::Failed,
        Outcome::Undecodable(_) => Call::NotCounted,
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

/// The handler runtimes an app runs now: fixed at start, but for the triggers of its actions
/// files, which a reload starts and stops. Readiness, the backlog poller and `settle` read it
/// each time.
#[derive(Debug, Clone, Default)]
pub(crate) struct RuntimeSet(Arc<std::sync::RwLock<Vec<Arc<HandlerRuntime>>>>);

impl RuntimeSet {
    /// The runtimes now.
    pub(crate) fn snapshot(&self) -> Vec<Arc<HandlerRuntime>> {
        self.0
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    pub(crate) fn push(&self, runtime: Arc<HandlerRuntime>) {
        self.0
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(runtime);
    }

    /// Takes out the runtime of handler `name` (one at most: names are unique in an app).
    pub(crate) fn remove(&self, name: &str) {
        self.0
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .retain(|r| r.descriptor.name != name);
    }
}
