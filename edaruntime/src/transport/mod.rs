//! Transports carry bytes, acks and naks; what to do with a message is decided in
//! [`crate::delivery`], once for all of them.

pub(crate) mod jetstream;
pub mod memory;

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::BoxFuture;
use tokio::task::JoinSet;

use crate::delivery::DeadLetter;
use crate::error::PublishError;
use crate::event::Metadata;

/// A message on its way to the broker.
#[derive(Debug, Clone)]
pub(crate) struct Outbound {
    pub(crate) metadata: Arc<Metadata>,
    pub(crate) payload: Bytes,
    /// The caller chose the id: the broker's duplicate window applies to it.
    pub(crate) explicit_id: bool,
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

/// Settles one delivered message with the broker.
pub(crate) trait Acknowledge: Send {
    /// Done: do not deliver again.
    fn ack(self) -> impl std::future::Future<Output = ()> + Send;
    /// Deliver again after `delay`.
    fn nak(self, delay: Duration) -> impl std::future::Future<Output = ()> + Send;
    /// Never deliver again (after dead-lettering).
    fn term(self) -> impl std::future::Future<Output = ()> + Send;
}

/// Waits for a consume loop's spawned handlers after it stopped taking messages. Past the
/// shutdown deadline (`stopped`) the rest are dropped, which hands their messages back (the
/// in-memory ack requeues when dropped unsettled; on JetStream a guard in the task naks).
/// One wait per loop, rather than a stop signal watched by every message.
pub(crate) async fn finish_in_flight(
    tasks: &mut JoinSet<()>,
    stopped: impl std::future::Future<Output = ()>,
) {
    tokio::pin!(stopped);
    loop {
        tokio::select! {
            biased;
            next = tasks.join_next() => if next.is_none() { return },
            () = &mut stopped => break,
        }
    }
    tasks.abort_all();
    while tasks.join_next().await.is_some() {}
}
