//! Publishing with broker confirmation: events (one, or many with confirmations in flight
//! together) and dead letters.

use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;

use async_nats::jetstream;
use async_nats::HeaderMap;
use bytes::Bytes;
use futures_util::future::BoxFuture;
use futures_util::stream::FuturesUnordered;
use futures_util::StreamExt;

use super::JetStream;
use crate::config::WireFormat;
use crate::dlq::DeadLetter;
use crate::error::PublishError;
use crate::event::Metadata;
use crate::port::{Outbound, OutboundStream, Transport};
use crate::wire;

/// Publishes awaiting confirmation at once in `publish_all`: as many as the hand-written
/// baseline of `benches/compare.rs` finds fastest. Concurrent `publish_all` calls, `Context::
/// publish` and dead letters share the client's limit of 5,000 acks in flight per connection;
/// past it the client waits (its backpressure is on), it does not fail.
const PUBLISH_WINDOW: usize = 1024;

/// Room left in a dead letter for the protocol line around headers and payload.
const PROTOCOL_SLACK: usize = 256;

impl JetStream {
    /// The publishing side.
    pub(crate) fn transport(&self) -> Arc<dyn Transport> {
        Arc::new(JetStreamTransport {
            client: self.client.clone(),
            context: self.context.clone(),
            prefix: self.settings.topology.subject_prefix.clone(),
            format: self.settings.wire_format,
            refusals: Arc::clone(&self.refusals),
        })
    }
}

/// The publishing side of JetStream.
struct JetStreamTransport {
    client: async_nats::Client,
    context: jetstream::Context,
    prefix: String,
    format: WireFormat,
    refusals: Arc<super::connect::Refusals>,
}

impl fmt::Debug for JetStreamTransport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JetStreamTransport")
            .field("prefix", &self.prefix)
            .finish()
    }
}

fn header_map(pairs: Vec<(Cow<'static, str>, String)>) -> HeaderMap {
    let mut headers = HeaderMap::new();
    for (name, value) in pairs {
        headers.insert(name.as_ref(), value.as_str());
    }
    headers
}

fn publish_error(error: jetstream::context::PublishError) -> PublishError {
    match error.kind() {
        jetstream::context::PublishErrorKind::TimedOut => PublishError::Timeout,
        _ => PublishError::Broker(Box::new(error)),
    }
}

impl JetStreamTransport {
    /// A publish to `subject` that timed out: refused, if the server said so.
    fn explained(&self, error: PublishError, subject: &str) -> PublishError {
        match (&error, self.refusals.of_publish_to(subject)) {
            (PublishError::Timeout, Some(refusal)) => PublishError::Broker(
                format!(
                    "the server refused it ({refusal}): this connection's user may not publish to `{subject}`; declare the event (`emits`) and give the user the permissions `App::permissions` prints"
                )
                .into(),
            ),
            _ => error,
        }
    }

    async fn send(
        &self,
        subject: String,
        headers: HeaderMap,
        payload: Bytes,
    ) -> Result<jetstream::context::PublishAckFuture, PublishError> {
        self.context
            .publish_with_headers(subject, headers, payload)
            .await
            .map_err(publish_error)
    }

    fn subject(&self, metadata: &Metadata) -> String {
        format!("{}.{}", self.prefix, metadata.subject)
    }

    fn event_headers(&self, message: &Outbound) -> HeaderMap {
        let mut headers = HeaderMap::new();
        // Static names: no parsing or allocation per header.
        wire::encode_into(
            &message.metadata,
            self.format,
            message.explicit_time,
            |name, value| headers.insert(async_nats::header::HeaderName::from_static(name), value),
        );
        headers
    }
}

impl Transport for JetStreamTransport {
    fn publish(&self, message: Outbound) -> BoxFuture<'_, Result<(), PublishError>> {
        Box::pin(async move {
            let subject = self.subject(&message.metadata);
            let headers = self.event_headers(&message);
            let ack = self.send(subject, headers, message.payload).await?;
            // The subject again only for an error: no copy on the way.
            ack.await
                .map_err(|e| self.explained(publish_error(e), &self.subject(&message.metadata)))?;
            Ok(())
        })
    }

    fn publish_many<'a>(
        &'a self,
        messages: &'a mut OutboundStream<'_>,
    ) -> BoxFuture<'a, Result<(), PublishError>> {
        Box::pin(async move {
            let mut pending: FuturesUnordered<
                <jetstream::context::PublishAckFuture as std::future::IntoFuture>::IntoFuture,
            > = FuturesUnordered::new();
            for message in messages {
                let message = message?;
                if pending.len() >= PUBLISH_WINDOW {
                    if let Some(result) = pending.next().await {
                        result.map_err(publish_error)?;
                    }
                }
                let subject = self.subject(&message.metadata);
                let headers = self.event_headers(&message);
                let ack = self.send(subject, headers, message.payload).await?;
                pending.push(std::future::IntoFuture::into_future(ack));
            }
            while let Some(result) = pending.next().await {
                result.map_err(publish_error)?;
            }
            Ok(())
        })
    }

    fn dead_letter(&self, letter: DeadLetter) -> BoxFuture<'_, Result<(), PublishError>> {
        Box::pin(async move {
            let original_subject = self.subject(&letter.metadata);
            let limit = self.client.server_info().max_payload;
            let letter = fit(letter, &original_subject, limit);
            let pairs = wire::dead_letter_headers(&letter, &original_subject);
            let ack = self
                .send(letter.subject.clone(), header_map(pairs), letter.payload)
                .await?;
            ack.await.map_err(publish_error)?;
            Ok(())
        })
    }
}

/// A dead letter that fits in one message of at most `limit` bytes (the server's
/// `max_payload`, headers included): the payload is kept whole when it fits, else cut to what
/// fits and marked (`Eda-Dlq-Payload-Cut`, with the original stored at `Eda-Original-Seq`).
fn fit(mut letter: DeadLetter, original_subject: &str, limit: usize) -> DeadLetter {
    if limit == 0 {
        return letter;
    }
    let length = letter.payload.len();
    letter.payload_cut = Some(length);
    let headers = wire::header_block_len(&wire::dead_letter_headers(&letter, original_subject));
    letter.payload_cut = None;
    let room = limit.saturating_sub(headers + PROTOCOL_SLACK);
    if length > room {
        letter.payload = letter.payload.slice(..room);
        letter.payload_cut = Some(length);
    }
    letter
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dlq::DlqReason;

    fn letter(payload: usize) -> DeadLetter {
        DeadLetter {
            subject: "dlq.s.h".into(),
            service: "s".into(),
            handler: "h".into(),
            reason: DlqReason::Permanent,
            error: "declined".into(),
            attempts: 1,
            metadata: Arc::new(Metadata::new("order.placed", 1, "s")),
            payload: Bytes::from(vec![b'x'; payload]),
            payload_cut: None,
            redrive: None,
        }
    }

    #[test]
    fn a_dead_letter_that_fits_keeps_its_payload_and_one_that_does_not_is_cut_and_marked() {
        let whole = fit(letter(1000), "events.order.placed", 8192);
        assert_eq!((whole.payload.len(), whole.payload_cut), (1000, None));
        let cut = fit(letter(8000), "events.order.placed", 8192);
        assert_eq!(cut.payload_cut, Some(8000));
        let headers =
            wire::header_block_len(&wire::dead_letter_headers(&cut, "events.order.placed"));
        assert!(
            cut.payload.len() + headers < 8192,
            "{} + {headers} bytes do not fit in 8192",
            cut.payload.len()
        );
    }
}
