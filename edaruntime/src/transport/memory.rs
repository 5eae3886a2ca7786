//! The in-memory transport: an in-process broker with JetStream's delivery semantics (durable
//! consumers shared by the instances of a service, redelivery after a nak delay, a duplicate
//! window for explicit ids, dead-letter subjects). The embedded default for development and
//! tests; messages live as long as the process.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::future::BoxFuture;
use tokio::sync::Notify;

use crate::delivery::{driver, HandlerRuntime};
use crate::dlq::DeadLetter;
use crate::error::{BoxError, PublishError};
use crate::event::{Metadata, RawEvent};
use crate::handler::Start;
use crate::idempotency::MemoryStore;
use crate::lifecycle::{Outstanding, Signals};
use crate::port::{Acknowledge, Delivery, EventLog, Outbound, OutboundStream, Source, Transport};

mod log;

/// Messages `publish_all` hands to the consumers' queues at once: few enough that handling
/// starts while the rest are still being encoded.
const PUBLISH_BATCH: usize = 64;

/// How many published messages a broker keeps for `start = "all"` consumers and inspection.
pub const DEFAULT_RETENTION: usize = 10_000;
/// After how long a message whose ack was lost is delivered again (as JetStream's default
/// ack wait in eda's topology).
pub const DEFAULT_ACK_WAIT: Duration = Duration::from_secs(30);
/// How long an explicitly given event id is remembered to drop repeats (as JetStream's
/// duplicate window).
pub const DEFAULT_DUPLICATE_WINDOW: Duration = Duration::from_secs(120);

/// An in-process broker. Clone it to let several apps (instances of one service, or
/// different services) share it; each app built with `.in_memory()` alone gets its own.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> eda::Result<()> {
/// let broker = eda::MemoryBroker::new();
/// let app = eda::App::builder("billing").memory_broker(broker.clone()).handlers(&[]).start().await?;
/// app.shutdown().await?;
/// assert!(broker.dead_letters().is_empty());
/// # Ok(()) }
/// ```
#[derive(Clone, Default)]
pub struct MemoryBroker {
    inner: Arc<BrokerInner>,
}

struct BrokerInner {
    consumers: RwLock<Vec<Arc<MemoryConsumer>>>,
    retained: Mutex<VecDeque<Arc<Stored>>>,
    retention: AtomicUsize,
    sequence: AtomicU64,
    duplicates: Mutex<DuplicateWindow>,
    dead_letters: Mutex<Vec<DeadLetter>>,
    store: Arc<MemoryStore>,
    /// Messages queued, in flight or waiting for a retry, so tests can wait for quiet.
    activity: Outstanding,
    lost_acks: AtomicU32,
    failing_dead_letters: AtomicU32,
    /// After how long a message whose ack was lost comes back (JetStream's ack wait).
    ack_wait: Mutex<Duration>,
    /// Aggregates' events and snapshots (event sourcing).
    log: Arc<log::MemoryLog>,
}

impl Default for BrokerInner {
    fn default() -> Self {
        BrokerInner {
            consumers: RwLock::default(),
            retained: Mutex::default(),
            retention: AtomicUsize::new(DEFAULT_RETENTION),
            sequence: AtomicU64::new(0),
            duplicates: Mutex::new(DuplicateWindow::new(DEFAULT_DUPLICATE_WINDOW)),
            dead_letters: Mutex::default(),
            store: Arc::new(MemoryStore::default()),
            activity: Outstanding::default(),
            lost_acks: AtomicU32::new(0),
            failing_dead_letters: AtomicU32::new(0),
            ack_wait: Mutex::new(DEFAULT_ACK_WAIT),
            log: Arc::default(),
        }
    }
}

/// A lock that a panicking holder poisoned still guards consistent data here (every critical
/// section is a single push or pop), so recover it rather than propagate the panic.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl MemoryBroker {
    /// A new, empty broker.
    pub fn new() -> MemoryBroker {
        MemoryBroker::default()
    }

    /// Keep the last `messages` published messages (default [`DEFAULT_RETENTION`]).
    #[must_use]
    pub fn with_retention(self, messages: usize) -> MemoryBroker {
        self.inner.retention.store(messages, Ordering::Relaxed);
        self
    }

    /// Drop a repeat of an explicitly given event id published within `window`
    /// (default [`DEFAULT_DUPLICATE_WINDOW`]; zero disables it).
    #[must_use]
    pub fn with_duplicate_window(self, window: Duration) -> MemoryBroker {
        *lock(&self.inner.duplicates) = DuplicateWindow::new(window);
        self
    }

    /// A message whose ack is lost comes back after `ack_wait` (default [`DEFAULT_ACK_WAIT`]),
    /// as on JetStream.
    #[must_use]
    pub fn with_ack_wait(self, ack_wait: Duration) -> MemoryBroker {
        *lock(&self.inner.ack_wait) = ack_wait;
        self
    }

    /// Fault injection for tests: the next `count` dead letters cannot be stored, as if the
    /// dead-letter stream were missing or full (delivery keeps the message and retries).
    pub fn fail_next_dead_letters(&self, count: u32) {
        self.inner
            .failing_dead_letters
            .store(count, Ordering::SeqCst);
    }

    /// Every dead letter stored so far.
    pub fn dead_letters(&self) -> Vec<DeadLetter> {
        lock(&self.inner.dead_letters).clone()
    }

    /// The retained published messages, oldest first.
    pub fn messages(&self) -> Vec<RawEvent> {
        lock(&self.inner.retained)
            .iter()
            .map(|m| RawEvent::new(Arc::clone(&m.metadata), m.payload.clone(), 1))
            .collect()
    }

    /// Resolves once no message is queued, in flight or waiting for a retry.
    pub async fn wait_idle(&self) {
        self.inner.activity.wait_zero().await;
    }

    /// Fault injection for tests: the next `count` acks are lost, as if the process died
    /// between recording its work and acking, so those messages are delivered again after the
    /// ack wait.
    pub fn lose_next_acks(&self, count: u32) {
        self.inner.lost_acks.store(count, Ordering::SeqCst);
    }

    pub(crate) fn transport(&self) -> Arc<dyn Transport> {
        Arc::new(MemoryTransport {
            inner: Arc::clone(&self.inner),
        })
    }

    pub(crate) fn store(&self) -> Arc<MemoryStore> {
        Arc::clone(&self.inner.store)
    }

    /// The aggregates' event log (event sourcing), shared by every app on this broker.
    pub(crate) fn event_log(&self) -> Arc<dyn EventLog> {
        self.inner.log.clone()
    }

    /// The durable consumer `durable`, created on first use.
    pub(crate) fn consumer(
        &self,
        durable: &str,
        pattern: &str,
        start: Start,
    ) -> Arc<MemoryConsumer> {
        let mut consumers = self
            .inner
            .consumers
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(existing) = consumers.iter().find(|c| c.durable == durable) {
            return Arc::clone(existing);
        }
        let consumer = Arc::new(MemoryConsumer {
            durable: durable.to_owned(),
            pattern: pattern.to_owned(),
            queue: Mutex::default(),
            notify: Notify::new(),
            closed: std::sync::atomic::AtomicBool::new(false),
        });
        if start == Start::All {
            for message in lock(&self.inner.retained).iter() {
                if subject_matches(pattern, &message.metadata.subject) {
                    self.inner.activity.add(1);
                    consumer.push(Queued::first(Arc::clone(message)));
                }
            }
        }
        consumers.push(Arc::clone(&consumer));
        consumer
    }

    /// Drops the durable consumer `durable` (a trigger a reload removed, once drained): its
    /// queued messages are done with, and it gets no more. On NATS the durable consumer stays
    /// on the server; in memory nothing would ever read it, and `settle` would wait for it.
    pub(crate) fn drop_consumer(&self, durable: &str) {
        let mut consumers = self
            .inner
            .consumers
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        let Some(at) = consumers.iter().position(|c| c.durable == durable) else {
            return;
        };
        let consumer = consumers.remove(at);
        let mut queue = lock(&consumer.queue);
        consumer
            .closed
            .store(true, std::sync::atomic::Ordering::SeqCst);
        for _ in queue.drain(..) {
            self.inner.activity.done();
        }
    }

    /// Runs one app instance's share of a durable consumer until `signals` says stop.
    pub(crate) async fn consume(
        &self,
        runtime: Arc<HandlerRuntime>,
        consumer: Arc<MemoryConsumer>,
        signals: Signals,
    ) {
        runtime.bound.store(true, Ordering::SeqCst);
        let source = MemorySource {
            inner: Arc::clone(&self.inner),
            consumer: Arc::clone(&consumer),
        };
        let concurrency = runtime.options().concurrency as usize;
        driver::drive(runtime, source, signals, concurrency).await;
        // A wake-up this worker took but did not use belongs to another instance.
        consumer.notify.notify_one();
    }
}

/// One instance's share of an in-memory consumer: it takes a message only when the driver can
/// start it, so nothing waits unstarted (the in-memory broker has no ack wait to run out).
struct MemorySource {
    inner: Arc<BrokerInner>,
    consumer: Arc<MemoryConsumer>,
}

impl Source for MemorySource {
    type Ack = MemoryAck;

    async fn next(&mut self, room: usize, _ahead: usize) -> Option<(Delivery, MemoryAck)> {
        if room == 0 {
            // Paused (an open circuit breaker): nothing is dequeued.
            return std::future::pending().await;
        }
        let queued = self.consumer.next().await;
        let delivery = Delivery {
            raw: RawEvent::new(
                Arc::clone(&queued.message.metadata),
                queued.message.payload.clone(),
                queued.deliveries,
            ),
            redelivered: queued.deliveries > 1,
            header_error: None,
            id_epoch: None,
            redrive: None,
        };
        let ack = MemoryAck {
            inner: Arc::clone(&self.inner),
            consumer: Arc::clone(&self.consumer),
            queued,
        };
        Some((delivery, ack))
    }

    async fn release(&mut self) {}

    fn ack_wait(&self) -> Option<Duration> {
        None
    }
}

impl fmt::Debug for MemoryBroker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryBroker")
            .field("published", &self.inner.sequence.load(Ordering::Relaxed))
            .field("outstanding", &self.inner.activity.count())
            .finish()
    }
}

/// A stored message.
#[derive(Debug)]
pub(crate) struct Stored {
    metadata: Arc<Metadata>,
    payload: Bytes,
}

#[derive(Debug, Clone)]
pub(crate) struct Queued {
    message: Arc<Stored>,
    deliveries: u32,
}

impl Queued {
    fn first(message: Arc<Stored>) -> Queued {
        Queued {
            message,
            deliveries: 1,
        }
    }

    fn again(mut self) -> Queued {
        self.deliveries = self.deliveries.saturating_add(1);
        self
    }
}

/// A durable consumer: one queue the instances of a service compete for.
#[derive(Debug)]
pub(crate) struct MemoryConsumer {
    durable: String,
    pattern: String,
    queue: Mutex<VecDeque<Queued>>,
    notify: Notify,
    /// Dropped from its broker (a trigger a reload removed): what comes back to it (a
    /// delayed redelivery) is done with, not queued for no one.
    closed: std::sync::atomic::AtomicBool,
}

impl MemoryConsumer {
    /// Queues `queued`; `false` (nothing queued) when the consumer was dropped.
    fn push(&self, queued: Queued) -> bool {
        let mut queue = lock(&self.queue);
        if self.closed.load(std::sync::atomic::Ordering::SeqCst) {
            return false;
        }
        queue.push_back(queued);
        drop(queue);
        self.notify.notify_one();
        true
    }

    /// Queues a message that came back to it, or counts it done when the consumer was dropped.
    fn push_again(&self, queued: Queued, activity: &Outstanding) {
        if !self.push(queued) {
            activity.done();
        }
    }

    async fn next(&self) -> Queued {
        loop {
            let notified = self.notify.notified();
            if let Some(queued) = lock(&self.queue).pop_front() {
                return queued;
            }
            notified.await;
        }
    }
}

/// Remembers explicitly given ids for the duplicate window.
#[derive(Debug)]
struct DuplicateWindow {
    window: Duration,
    seen: HashMap<String, Instant>,
    order: VecDeque<(Instant, String)>,
}

impl DuplicateWindow {
    fn new(window: Duration) -> DuplicateWindow {
        DuplicateWindow {
            window,
            seen: HashMap::new(),
            order: VecDeque::new(),
        }
    }

    /// True if `id` was seen inside the window; records it otherwise.
    fn is_repeat(&mut self, id: &str) -> bool {
        if self.window.is_zero() {
            return false;
        }
        let now = Instant::now();
        while let Some((at, _)) = self.order.front() {
            if now.duration_since(*at) < self.window {
                break;
            }
            if let Some((_, old)) = self.order.pop_front() {
                self.seen.remove(&old);
            }
        }
        if self.seen.contains_key(id) {
            return true;
        }
        self.seen.insert(id.to_owned(), now);
        self.order.push_back((now, id.to_owned()));
        false
    }
}

impl BrokerInner {
    fn publish(&self, message: Outbound) {
        self.route(self.accept(message).as_slice());
    }

    /// Publishes in batches: one lock and one wake-up per consumer for a batch.
    fn publish_batch(&self, messages: Vec<Outbound>) {
        let stored: Vec<Arc<Stored>> = messages
            .into_iter()
            .filter_map(|message| self.accept(message))
            .collect();
        self.route(&stored);
    }

    /// Sequences and retains a message, unless it repeats an explicit id inside the window.
    /// The event time is kept as published (there is no store time to derive it from).
    fn accept(&self, message: Outbound) -> Option<Arc<Stored>> {
        let Outbound {
            mut metadata,
            payload,
            explicit_id,
            explicit_time: _,
        } = message;
        if explicit_id && lock(&self.duplicates).is_repeat(&metadata.id) {
            return None;
        }
        let sequence = self.sequence.fetch_add(1, Ordering::Relaxed) + 1;
        Arc::make_mut(&mut metadata).sequence = Some(sequence);
        let stored = Arc::new(Stored { metadata, payload });
        let retention = self.retention.load(Ordering::Relaxed);
        if retention > 0 {
            let mut retained = lock(&self.retained);
            if retained.len() >= retention {
                retained.pop_front();
            }
            retained.push_back(Arc::clone(&stored));
        }
        Some(stored)
    }

    /// Queues stored messages for every consumer whose pattern matches.
    fn route(&self, stored: &[Arc<Stored>]) {
        let consumers = self
            .consumers
            .read()
            .unwrap_or_else(PoisonError::into_inner);
        for consumer in consumers.iter() {
            let matching = stored
                .iter()
                .filter(|m| subject_matches(&consumer.pattern, &m.metadata.subject));
            let mut queue = lock(&consumer.queue);
            let before = queue.len();
            queue.extend(matching.map(|m| Queued::first(Arc::clone(m))));
            let added = queue.len() - before;
            drop(queue);
            if added > 0 {
                self.activity.add(added);
                // Every waiting instance: a batch is work for more than one.
                consumer.notify.notify_waiters();
            }
        }
    }

    /// Whether this ack is lost (fault injection).
    fn ack_is_lost(&self) -> bool {
        self.lost_acks
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
    }
}

struct MemoryTransport {
    inner: Arc<BrokerInner>,
}

impl fmt::Debug for MemoryTransport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("MemoryTransport")
    }
}

impl Transport for MemoryTransport {
    fn publish(&self, message: Outbound) -> BoxFuture<'_, Result<(), PublishError>> {
        self.inner.publish(message);
        Box::pin(async { Ok(()) })
    }

    fn publish_many<'a>(
        &'a self,
        messages: &'a mut OutboundStream<'_>,
    ) -> BoxFuture<'a, Result<(), PublishError>> {
        Box::pin(async move {
            let mut batch = Vec::with_capacity(PUBLISH_BATCH);
            for message in messages {
                match message {
                    Ok(message) => batch.push(message),
                    Err(e) => {
                        // As on a broker: what came before the failure is published.
                        self.inner.publish_batch(batch);
                        return Err(e);
                    }
                }
                if batch.len() == PUBLISH_BATCH {
                    let full = std::mem::replace(&mut batch, Vec::with_capacity(PUBLISH_BATCH));
                    self.inner.publish_batch(full);
                }
            }
            self.inner.publish_batch(batch);
            Ok(())
        })
    }

    fn dead_letter(&self, letter: DeadLetter) -> BoxFuture<'_, Result<(), PublishError>> {
        let refused = self
            .inner
            .failing_dead_letters
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok();
        if refused {
            return Box::pin(async {
                Err(PublishError::Broker(
                    "the in-memory dead-letter store refused it (fault injection)".into(),
                ))
            });
        }
        lock(&self.inner.dead_letters).push(letter);
        Box::pin(async { Ok(()) })
    }
}

/// Settles one in-memory delivery; handed back, the message goes to the back of the queue,
/// as JetStream redelivers one that was nak'd without a delay.
#[derive(Clone)]
struct MemoryAck {
    inner: Arc<BrokerInner>,
    consumer: Arc<MemoryConsumer>,
    queued: Queued,
}

impl Acknowledge for MemoryAck {
    async fn ack(&self) {
        if self.inner.ack_is_lost() {
            // Lost on the way: the message comes back after the ack wait, as on JetStream.
            let ack_wait = *lock(&self.inner.ack_wait);
            let (consumer, inner) = (Arc::clone(&self.consumer), Arc::clone(&self.inner));
            let again = self.queued.clone().again();
            tokio::spawn(async move {
                tokio::time::sleep(ack_wait).await;
                consumer.push_again(again, &inner.activity);
            });
            return;
        }
        self.inner.activity.done();
    }

    async fn nak(&self, delay: Duration) {
        let (consumer, inner) = (Arc::clone(&self.consumer), Arc::clone(&self.inner));
        let again = self.queued.clone().again();
        if delay.is_zero() {
            consumer.push_again(again, &inner.activity);
        } else {
            tokio::spawn(async move {
                tokio::time::sleep(delay).await;
                consumer.push_again(again, &inner.activity);
            });
        }
    }

    async fn term(&self) -> Result<(), BoxError> {
        self.inner.activity.done();
        Ok(())
    }

    async fn in_progress(&self) {}

    fn progress_period(&self) -> Option<Duration> {
        None
    }

    fn hand_back(&self) -> Option<BoxFuture<'static, ()>> {
        self.consumer
            .push_again(self.queued.clone().again(), &self.inner.activity);
        None
    }
}

/// NATS subject matching: `*` matches one token, `>` one or more trailing tokens.
pub fn subject_matches(pattern: &str, subject: &str) -> bool {
    if pattern == subject {
        return true;
    }
    let mut subject_tokens = subject.split('.');
    for token in pattern.split('.') {
        match (token, subject_tokens.next()) {
            (">", Some(_)) => return true,
            ("*", Some(_)) => {}
            (t, Some(s)) if t == s => {}
            _ => return false,
        }
    }
    subject_tokens.next().is_none()
}

#[cfg(test)]
mod tests {
    use super::subject_matches;

    #[test]
    fn wildcards_match_as_in_nats() {
        assert!(subject_matches("payment.*", "payment.failed"));
        assert!(!subject_matches("payment.*", "payment.card.failed"));
        assert!(!subject_matches("payment.*", "payment"));
        assert!(subject_matches("payment.>", "payment.card.failed"));
        assert!(!subject_matches("payment.>", "payment"));
        assert!(subject_matches(">", "anything.at.all"));
        assert!(subject_matches("*.created", "user.created"));
        assert!(!subject_matches("user.created", "user.created.v2"));
    }
}
