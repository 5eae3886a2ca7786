//! Transports carry bytes, acks and naks; what to do with a message is decided in
//! [`crate::delivery`], once for all of them.

pub(crate) mod jetstream;
pub mod memory;

use std::fmt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::BoxFuture;
use tokio::sync::Notify;
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

/// A count of outstanding work that can be waited on until it reaches zero: the in-memory
/// broker's queued and in-flight messages, a consume loop's hand-back naks still being sent.
#[derive(Debug, Default)]
pub(crate) struct Outstanding {
    count: AtomicUsize,
    zero: Notify,
}

impl Outstanding {
    pub(crate) fn add(&self, n: usize) {
        self.count.fetch_add(n, Ordering::SeqCst);
    }

    pub(crate) fn done(&self) {
        if self.count.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.zero.notify_waiters();
        }
    }

    pub(crate) fn count(&self) -> usize {
        self.count.load(Ordering::Relaxed)
    }

    pub(crate) async fn wait_zero(&self) {
        loop {
            let zero = self.zero.notified();
            tokio::pin!(zero);
            zero.as_mut().enable();
            if self.count.load(Ordering::SeqCst) == 0 {
                return;
            }
            zero.await;
        }
    }
}
