//! Reading the broker's state, for settling, gauges, tests and tools: consumer backlogs,
//! stream positions, every event and dead letter; and closing the connection.

use std::fmt;
use std::time::{Duration, SystemTime};

use async_nats::jetstream::{self, consumer};
use futures_util::StreamExt;

use super::JetStream;
use crate::dlq::DeadLetter;
use crate::error::{Error, ErrorKind};
use crate::event::RawEvent;
use crate::wire;

/// A consumer's backlog as the broker reports it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Backlog {
    /// Messages not delivered yet.
    pub(crate) pending: u64,
    /// Messages delivered and not acknowledged yet.
    pub(crate) ack_pending: usize,
    /// The stream sequence up to which every message is acknowledged (the ack floor).
    pub(crate) acknowledged: u64,
}

impl JetStream {
    /// Messages pending and awaiting acks on a consumer.
    pub(crate) async fn pending(&self, durable: &str) -> Result<Backlog, Error> {
        let t = &self.settings.topology;
        let stream = self.stream(&t.events_stream, ErrorKind::Broker).await?;
        let info = stream.consumer_info(durable).await.map_err(|e| {
            Error::with_source(
                ErrorKind::Broker,
                format!("cannot read consumer `{durable}`: {e}"),
                e,
            )
        })?;
        Ok(Backlog {
            pending: info.num_pending,
            ack_pending: info.num_ack_pending,
            acknowledged: info.ack_floor.stream_sequence,
        })
    }

    /// The last sequence of the event and dead-letter streams (to tell when traffic stopped).
    pub(crate) async fn last_sequences(&self) -> Result<(u64, u64), Error> {
        let t = &self.settings.topology;
        let mut last = [0u64; 2];
        for (slot, name) in last.iter_mut().zip([&t.events_stream, &t.dlq_stream]) {
            let mut stream = self.stream(name, ErrorKind::Broker).await?;
            let info = stream.info().await.map_err(|e| {
                Error::with_source(
                    ErrorKind::Broker,
                    format!("cannot read stream `{name}`: {e}"),
                    e,
                )
            })?;
            *slot = info.state.last_sequence;
        }
        Ok((last[0], last[1]))
    }

    /// Polls `durables` until none has a message pending or unacknowledged and the streams
    /// stopped growing (two quiet polls in a row), for at most `limit`.
    pub(crate) async fn settle(&self, durables: &[String], limit: Duration) {
        let deadline = tokio::time::Instant::now() + limit;
        let mut quiet_polls = 0;
        let mut last_seen = None;
        while tokio::time::Instant::now() < deadline {
            let sequences = self.last_sequences().await.ok();
            let mut busy = sequences.is_none();
            for durable in durables {
                match self.pending(durable).await {
                    Ok(backlog) => busy |= backlog.pending > 0 || backlog.ack_pending > 0,
                    Err(_) => busy = true,
                }
            }
            if !busy && sequences == last_seen {
                quiet_polls += 1;
                if quiet_polls >= 2 {
                    return;
                }
            } else {
                quiet_polls = 0;
            }
            last_seen = sequences;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        tracing::warn!(?limit, "the consumers did not settle in time");
    }

    /// Every message of `stream` on `filter`, oldest first, read through a short-lived
    /// ephemeral consumer (for inspection and tests).
    async fn read_stream(
        &self,
        stream: &str,
        filter: &str,
    ) -> Result<Vec<jetstream::Message>, Error> {
        let read_error = |e: &dyn fmt::Display| {
            Error::new(
                ErrorKind::Broker,
                format!("cannot read stream `{stream}`: {e}"),
            )
        };
        let handle = self.stream(stream, ErrorKind::Broker).await?;
        let mut reader = handle
            .create_consumer(consumer::pull::Config {
                filter_subject: filter.to_owned(),
                ack_policy: consumer::AckPolicy::None,
                deliver_policy: consumer::DeliverPolicy::All,
                inactive_threshold: Duration::from_secs(30),
                ..Default::default()
            })
            .await
            .map_err(|e| read_error(&e))?;
        let total = usize::try_from(reader.info().await.map_err(|e| read_error(&e))?.num_pending)
            .unwrap_or(usize::MAX);
        let mut messages = Vec::with_capacity(total.min(100_000));
        while messages.len() < total {
            let before = messages.len();
            let mut batch = reader
                .fetch()
                .max_messages((total - before).min(1000))
                .expires(Duration::from_secs(2))
                .messages()
                .await
                .map_err(|e| read_error(&e))?;
            while let Some(message) = batch.next().await {
                messages.push(message.map_err(|e| read_error(&e))?);
            }
            if messages.len() == before {
                break;
            }
        }
        let name = reader.cached_info().name.clone();
        let _ = handle.delete_consumer(&name).await;
        Ok(messages)
    }

    /// Every event in the event stream, oldest first.
    pub(crate) async fn events(&self) -> Result<Vec<RawEvent>, Error> {
        let t = &self.settings.topology;
        let prefix = format!("{}.", t.subject_prefix);
        let messages = self
            .read_stream(&t.events_stream, &format!("{prefix}>"))
            .await?;
        Ok(messages
            .into_iter()
            .filter_map(|m| {
                let info = m.info().ok()?;
                let name = m
                    .subject
                    .as_str()
                    .strip_prefix(&prefix)
                    .unwrap_or(m.subject.as_str());
                let decoded = wire::decode(
                    name,
                    super::header_pairs(m.headers.as_ref()),
                    Some(info.stream_sequence),
                    Some(SystemTime::from(info.published)),
                );
                Some(RawEvent::new(decoded.metadata, m.payload.clone(), 1))
            })
            .collect())
    }

    /// Every dead letter in the dead-letter stream, oldest first.
    pub(crate) async fn dead_letters(&self) -> Result<Vec<DeadLetter>, Error> {
        let t = &self.settings.topology;
        let prefix = format!("{}.", t.subject_prefix);
        let messages = self.read_stream(&t.dlq_stream, "dlq.>").await?;
        Ok(messages
            .into_iter()
            .filter_map(|m| {
                let headers: Vec<_> = super::header_pairs(m.headers.as_ref()).collect();
                wire::dead_letter_from(m.subject.as_str(), &headers, m.payload.clone(), &prefix)
            })
            .collect())
    }

    /// Flushes pending publishes and drains the connection, for at most five seconds each
    /// (during a broker outage both would wait for a reconnect that may never come).
    pub(crate) async fn close(&self) {
        let limit = Duration::from_secs(5);
        match tokio::time::timeout(limit, self.client.flush()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "flushing the NATS connection failed"),
            Err(_) => tracing::warn!("flushing the NATS connection timed out"),
        }
        match tokio::time::timeout(limit, self.client.drain()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::debug!(error = %e, "draining the NATS connection failed"),
            Err(_) => tracing::warn!("draining the NATS connection timed out"),
        }
    }
}
