//! Acks, naks, terms and in-progress acks of pulled messages, and what a pulled message's
//! reply subject says about it.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_nats::jetstream::{self, AckKind};
use futures_util::future::BoxFuture;

use super::JetStream;
use crate::error::BoxError;
use crate::port::Acknowledge;

/// What the acks of every message of one connection share (one `Arc` per message: cloning a
/// JetStream context, as `Acker` needs, allocates).
pub(super) struct AckSender {
    client: async_nats::Client,
    context: jetstream::Context,
    /// How often a running handler sends an in-progress ack: a third of the ack wait.
    progress_period: Duration,
    /// Fault injection for tests: acks still to lose.
    lost_acks: AtomicU32,
}

impl AckSender {
    pub(super) fn new(
        client: async_nats::Client,
        context: jetstream::Context,
        ack_wait: Duration,
    ) -> AckSender {
        AckSender {
            client,
            context,
            progress_period: (ack_wait / 3).max(Duration::from_millis(100)),
            lost_acks: AtomicU32::new(0),
        }
    }
}

impl JetStream {
    /// Fault injection for tests: the next `count` acks are not sent, as if the process died
    /// between recording its work and acking; the broker redelivers after the ack wait.
    pub(crate) fn lose_next_acks(&self, count: u32) {
        self.acks.lost_acks.store(count, Ordering::SeqCst);
    }

    pub(super) fn ack_for(&self, reply: async_nats::Subject) -> JsAck {
        JsAck {
            reply,
            sender: Arc::clone(&self.acks),
        }
    }
}

/// Acks one JetStream message.
#[derive(Clone)]
pub(crate) struct JsAck {
    reply: async_nats::Subject,
    sender: Arc<AckSender>,
}

impl JsAck {
    /// Sends `kind` on the message's reply subject without waiting for the server (as
    /// async-nats' own `ack_with` does).
    async fn send(&self, kind: AckKind) -> Result<(), async_nats::PublishError> {
        self.sender
            .client
            .publish(self.reply.clone(), kind.into())
            .await
    }

    /// Terminates without waiting for the server (a message eda cannot read, whose sender may
    /// not be JetStream at all).
    pub(super) async fn terminate_now(&self) {
        if let Err(e) = self.send(AckKind::Term).await {
            tracing::debug!(error = %e, "terminating it failed");
        }
    }
}

impl Acknowledge for JsAck {
    async fn ack(&self) {
        let lost = self
            .sender
            .lost_acks
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok();
        if lost {
            return;
        }
        // A lost ack means a redelivery, which idempotency absorbs: no need to wait for the
        // server's confirmation on the hot path.
        if let Err(e) = self.send(AckKind::Ack).await {
            tracing::warn!(error = %e, "ack failed; the message will be redelivered");
        }
    }

    async fn nak(&self, delay: Duration) {
        if let Err(e) = self.send(AckKind::Nak(Some(delay))).await {
            tracing::warn!(error = %e, "nak failed; the message will be redelivered after the ack wait");
        }
    }

    async fn term(&self) -> Result<(), BoxError> {
        // Confirmed by the server: the dead letter is stored, the original must stop.
        let acker =
            jetstream::message::Acker::new(self.sender.context.clone(), Some(self.reply.clone()));
        acker.double_ack_with(AckKind::Term).await
    }

    async fn in_progress(&self) {
        if let Err(e) = self.send(AckKind::Progress).await {
            tracing::debug!(error = %e, "in-progress ack failed");
        }
    }

    fn progress_period(&self) -> Option<Duration> {
        Some(self.sender.progress_period)
    }

    fn hand_back(&self) -> Option<BoxFuture<'static, ()>> {
        let ack = self.clone();
        Some(Box::pin(async move {
            if let Err(e) = ack.send(AckKind::Nak(None)).await {
                tracing::debug!(error = %e, "handing a message back failed; it returns after the ack wait");
            }
        }))
    }
}

/// What a JetStream message's reply subject says about it:
/// `$JS.ACK.<stream>.<consumer>.<delivered>.<stream seq>.<consumer seq>.<time>.<pending>`, or
/// with `<domain>.<account hash>.` before the stream (ADR-15).
#[derive(Debug, PartialEq, Eq)]
pub(super) struct AckInfo {
    pub(super) delivered: u64,
    pub(super) stream_sequence: u64,
    pub(super) published: SystemTime,
}

impl AckInfo {
    pub(super) fn parse(reply: &str) -> Option<AckInfo> {
        let rest = reply.strip_prefix("$JS.ACK.")?;
        let tokens: Vec<&str> = rest.split('.').collect();
        let numbers = match tokens.len() {
            7 | 8 => &tokens[2..],
            n if n >= 9 => &tokens[4..],
            _ => return None,
        };
        let delivered = numbers.first()?.parse().ok()?;
        let stream_sequence = numbers.get(1)?.parse().ok()?;
        let nanos: u64 = numbers.get(3)?.parse().ok()?;
        Some(AckInfo {
            delivered,
            stream_sequence,
            published: UNIX_EPOCH + Duration::from_nanos(nanos),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reply_subjects_of_both_formats_are_read() {
        let v1 = AckInfo::parse("$JS.ACK.EDA_EVENTS.svc__h.2.17.5.1700000000000000000.3");
        assert_eq!(
            v1,
            Some(AckInfo {
                delivered: 2,
                stream_sequence: 17,
                published: UNIX_EPOCH + Duration::from_nanos(1_700_000_000_000_000_000),
            })
        );
        let v2 =
            AckInfo::parse("$JS.ACK._.ACCHASH.EDA_EVENTS.svc__h.1.9.9.1700000000000000000.0.tok");
        assert_eq!(v2.map(|i| (i.delivered, i.stream_sequence)), Some((1, 9)));
        assert_eq!(AckInfo::parse("_INBOX.abc"), None);
        assert_eq!(AckInfo::parse("$JS.ACK.too.few"), None);
    }
}
