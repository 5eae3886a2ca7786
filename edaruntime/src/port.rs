//! The traits the core talks to, and the messages that cross them: [`Transport`] (the
//! publishing side of a broker), [`Source`] (where a consume loop takes messages from) and
//! [`Acknowledge`] (how one message is settled). Transports implement them; delivery and
//! publishing use them and never name a transport.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::BoxFuture;

use crate::dlq::DeadLetter;
use crate::error::{BoxError, PublishError};
use crate::event::{DecodeError, Metadata, RawEvent};

/// A message on its way to the broker.
#[derive(Debug, Clone)]
pub(crate) struct Outbound {
    pub(crate) metadata: Arc<Metadata>,
    pub(crate) payload: Bytes,
    /// The id is stable across retries (chosen by the caller, or derived from the causing
    /// event): the broker's duplicate window applies to it.
    pub(crate) explicit_id: bool,
    /// The event time was chosen by the caller (a republish keeping the original time): it
    /// travels as `Eda-Time` instead of being the broker's store time.
    pub(crate) explicit_time: bool,
}

/// Messages to publish, encoded one by one as they are taken.
pub(crate) type OutboundStream<'a> =
    dyn Iterator<Item = Result<Outbound, PublishError>> + Send + 'a;

/// The publishing side of a transport.
pub(crate) trait Transport: Send + Sync + fmt::Debug + 'static {
    /// Stores one message; `Ok` once the broker confirmed it.
    fn publish(&self, message: Outbound) -> BoxFuture<'_, Result<(), PublishError>>;

    /// Stores many messages with confirmations in flight together. The messages are encoded
    /// as the transport takes them, so encoding overlaps with the broker's work; the first
    /// error (encoding or broker) ends the call.
    fn publish_many<'a>(
        &'a self,
        messages: &'a mut OutboundStream<'_>,
    ) -> BoxFuture<'a, Result<(), PublishError>>;

    /// Stores a dead letter; `Ok` once the broker confirmed it.
    fn dead_letter(&self, letter: DeadLetter) -> BoxFuture<'_, Result<(), PublishError>>;
}

/// A message as a transport hands it to delivery.
#[derive(Debug)]
pub(crate) struct Delivery {
    pub(crate) raw: RawEvent,
    /// The broker's word that it delivered this message before (or that this consumer may
    /// have handled it before, e.g. after it was recreated from an older position).
    pub(crate) redelivered: bool,
    /// Set when the headers already make the message undecodable (they name another event
    /// than the subject, or carry a bad version).
    pub(crate) header_error: Option<DecodeError>,
    /// Set when the event id is only the message's stream position (a plain client sent no
    /// `Nats-Msg-Id`): names the stream's incarnation, so that the sequences of a recreated
    /// stream are not taken for the old stream's in idempotency keys.
    pub(crate) id_epoch: Option<Arc<str>>,
    /// Set for a dead letter sent back to its handler (`eda dlq redrive`): the message's
    /// sequence on the redrive stream. What belongs to the message rather than to the event
    /// (hand-backs, the dead-letter decision, the new dead letter's id) is keyed apart.
    pub(crate) redrive: Option<Arc<str>>,
}

/// Settles one delivered message with the broker. Cheap to clone (a running handler's
/// in-progress acks use a clone); the consume driver makes sure exactly one of `ack`, `nak`,
/// `term` or `hand_back` is called.
pub(crate) trait Acknowledge: Clone + Send + Sync + 'static {
    /// Done: do not deliver again.
    fn ack(&self) -> impl std::future::Future<Output = ()> + Send;
    /// Deliver again after `delay`.
    fn nak(&self, delay: Duration) -> impl std::future::Future<Output = ()> + Send;
    /// Never deliver again (after dead-lettering); `Ok` once the broker confirmed it.
    fn term(&self) -> impl std::future::Future<Output = Result<(), BoxError>> + Send;
    /// Still working on it: restart the broker's ack wait.
    fn in_progress(&self) -> impl std::future::Future<Output = ()> + Send;
    /// How often a running handler sends [`Acknowledge::in_progress`]; `None` where the
    /// broker has no ack wait.
    fn progress_period(&self) -> Option<Duration>;
    /// Gives the message back for redelivery now, without a delay: its handler was cut off
    /// (shutdown deadline) or never started. Runs from a drop guard, so it cannot wait: what
    /// must still be sent is returned, and the driver sends it before it returns.
    fn hand_back(&self) -> Option<BoxFuture<'static, ()>>;
}

/// Where a consume loop takes one handler's messages from.
pub(crate) trait Source: Send {
    /// How the messages of this source are settled.
    type Ack: Acknowledge;

    /// The next message. `room` is how many messages the loop can start right now (the one
    /// it will start included); `ahead` is how many more the source may have on their way
    /// (the loop allows some only while its handlers finish well within the ack wait, so that
    /// a message waiting in a client buffer is started long before its ack wait runs out).
    /// `None`: nothing this time (the source reopened, or failed and waited); the loop asks
    /// again. `room` 0: the loop is paused (its circuit breaker is open): ask for nothing,
    /// only bring what is already on its way (which the loop hands back), else wait forever.
    fn next(
        &mut self,
        room: usize,
        ahead: usize,
    ) -> impl std::future::Future<Output = Option<(Delivery, Self::Ack)>> + Send;

    /// How long the broker waits for a delivered message's ack before it redelivers it;
    /// `None` where it never does.
    fn ack_wait(&self) -> Option<Duration>;

    /// Shutdown started: give back what was received but not started.
    fn release(&mut self) -> impl std::future::Future<Output = ()> + Send;
}

/// One message of an aggregate's history as the broker stored it (event sourcing).
#[derive(Debug, Clone)]
pub(crate) struct LogRecord {
    /// Its sequence in the aggregate type's stream.
    pub(crate) sequence: u64,
    /// When the broker stored it.
    pub(crate) time: std::time::SystemTime,
    /// Its headers, as written (eda's, with `Eda-Event`).
    pub(crate) headers: Vec<(String, String)>,
    /// The event's JSON.
    pub(crate) payload: Bytes,
}

/// Where one aggregate's history lives.
#[derive(Debug, Clone)]
pub(crate) struct LogAddress {
    /// The aggregate type's stream (`EDA_AGG_ACCOUNT`).
    pub(crate) stream: String,
    /// What the stream holds (`agg.account.*`).
    pub(crate) stream_subjects: String,
    /// The aggregate's subject (`agg.account.a-1`).
    pub(crate) subject: String,
}

/// The messages of one aggregate after a position, and its last position.
#[derive(Debug, Default)]
pub(crate) struct LogRead {
    /// The messages after the position asked for, oldest first.
    pub(crate) records: Vec<LogRecord>,
    /// The sequence of the subject's last message (0: none).
    pub(crate) last: u64,
}

/// Why the log did not do what was asked.
#[derive(Debug)]
pub(crate) enum LogError {
    /// The subject's last sequence is not the one expected (`actual`, when the broker said).
    Conflict { actual: Option<u64> },
    /// The broker failed or refused; the message says what was attempted.
    Failed { message: String, source: BoxError },
}

/// How long a lease ([`EventLog::lease`]) lasts without renewal.
pub(crate) const LEASE_TTL: std::time::Duration = std::time::Duration::from_secs(10);

/// Where aggregates' histories and snapshots are stored: a stream per aggregate type with a
/// subject per aggregate, and a key-value bucket of snapshots. The event store's logic
/// (`crate::aggregate`) talks to this only; transports carry the bytes.
pub(crate) trait EventLog: Send + Sync + fmt::Debug + 'static {
    /// Stores one message on `at.subject` if the subject's last sequence is `expected` (0: it
    /// has none), creating the stream on first use; returns the message's sequence.
    fn append<'a>(
        &'a self,
        at: &'a LogAddress,
        expected: u64,
        headers: Vec<(&'static str, String)>,
        payload: Bytes,
    ) -> BoxFuture<'a, Result<u64, LogError>>;

    /// The messages on `at.subject` after sequence `after`, oldest first, up to the last one;
    /// `last` is that last sequence when the caller knows it (from a conflict), else `None`.
    fn read<'a>(
        &'a self,
        at: &'a LogAddress,
        after: u64,
        last: Option<u64>,
    ) -> BoxFuture<'a, Result<LogRead, LogError>>;

    /// The snapshot stored under `key`, if any.
    fn snapshot<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<Bytes>, LogError>>;

    /// Stores the snapshot `value` under `key`, replacing the previous one.
    fn put_snapshot<'a>(
        &'a self,
        key: &'a str,
        value: Bytes,
    ) -> BoxFuture<'a, Result<(), LogError>>;

    /// The durable follower `durable` of the whole stream `at.stream` (created if missing):
    /// what the forwarder reads.
    fn follow<'a>(
        &'a self,
        at: &'a LogAddress,
        durable: &'a str,
    ) -> BoxFuture<'a, Result<Box<dyn LogFollower>, LogError>>;

    /// The last sequence of the stream `at.stream` (0: empty).
    fn last_sequence<'a>(&'a self, at: &'a LogAddress) -> BoxFuture<'a, Result<u64, LogError>>;

    /// Takes or renews the lease `key` for `holder`: `true` when `holder` holds it now. One
    /// holder at a time, across apps and processes; a lease not renewed within [`LEASE_TTL`]
    /// lapses, and another may take it.
    fn lease<'a>(&'a self, key: &'a str, holder: &'a str) -> BoxFuture<'a, Result<bool, LogError>>;

    /// Lets go of the lease `key` if `holder` holds it.
    fn release<'a>(&'a self, key: &'a str, holder: &'a str) -> BoxFuture<'a, Result<(), LogError>>;

    /// A reader of the whole stream `at.stream` from the message after sequence `after` on,
    /// whose position only it keeps (a projection stores its own with its read model):
    /// acknowledging is a no-op, and a new reader starts where it is told.
    fn read_stream<'a>(
        &'a self,
        at: &'a LogAddress,
        after: u64,
    ) -> BoxFuture<'a, Result<Box<dyn LogFollower>, LogError>>;
}

/// One message of an aggregate type's stream as a [`LogFollower`] hands it over.
#[derive(Debug, Clone)]
pub(crate) struct Followed {
    /// The aggregate's subject.
    pub(crate) subject: String,
    /// The message.
    pub(crate) record: LogRecord,
    /// Handed out before (a durable reader's ack wait ran out, or its reader went away).
    pub(crate) redelivered: bool,
}

/// A reader of an aggregate type's whole stream: messages come in stream order. A durable one
/// (the forwarder's) hands out again what was not acknowledged (after a while, or after a
/// restart); one from [`EventLog::read_stream`] never does.
pub(crate) trait LogFollower: Send {
    /// The next messages, waiting a little (under a second) for some; empty when none came:
    /// the reader is at the end of the stream.
    fn next(&mut self) -> BoxFuture<'_, Result<Vec<Followed>, LogError>>;
    /// Done with message `sequence`: it is not delivered again.
    fn ack(&mut self, sequence: u64) -> BoxFuture<'_, Result<(), LogError>>;
}
