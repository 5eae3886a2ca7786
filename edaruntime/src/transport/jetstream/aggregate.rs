//! The event log on JetStream (event sourcing): a stream per aggregate type (created on first
//! use, idempotently, like every stream eda provisions), appends with
//! `Nats-Expected-Last-Subject-Sequence`, reads of one subject, and the snapshot bucket.
//!
//! Reading uses only what nats-server 2.9 has: the stream's message get by subject (served
//! by the stream leader, so a load sees every append confirmed before it): the last message
//! of the subject, then the next one after a sequence, one by one; a long history is read
//! through a short-lived pull consumer filtered to the subject instead.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_nats::jetstream::{self, consumer, kv, stream::LastRawMessageErrorKind};
use async_nats::HeaderMap;
use bytes::Bytes;
use futures_util::future::BoxFuture;
use futures_util::{FutureExt, StreamExt};
use tokio::sync::{Mutex, OnceCell};

use super::provision::Retention;
use super::JetStream;
use crate::port::{
    EventLog, Followed, LogAddress, LogError, LogFollower, LogRead, LogRecord, LEASE_TTL,
};

/// The optimistic-concurrency header (nats-server 2.9 and later).
const EXPECTED_LAST_SUBJECT_SEQUENCE: &str = "Nats-Expected-Last-Subject-Sequence";
/// Messages read one by one before a consumer takes over the rest of a history; a history
/// spanning more stream sequences than this (after the position asked for) is read through a
/// consumer from the start: a get is a round trip, a consumer one round trip and a stream.
const GETS_BEFORE_CONSUMER: usize = 8;
/// Messages a reading consumer asks for at once.
const CONSUMER_BATCH: usize = 1000;
/// How long a reading consumer's request waits for messages the stream holds.
const CONSUMER_EXPIRES: Duration = Duration::from_secs(5);

impl JetStream {
    /// The event log on this connection.
    pub(crate) fn event_log(self: &Arc<Self>) -> Arc<dyn EventLog> {
        Arc::new(JetStreamLog {
            js: Arc::clone(self),
            streams: Mutex::default(),
            snapshots: OnceCell::new(),
            leases: OnceCell::new(),
        })
    }
}

/// Aggregates' streams (bound once each) and the snapshot bucket.
struct JetStreamLog {
    js: Arc<JetStream>,
    streams: Mutex<HashMap<String, jetstream::stream::Stream<()>>>,
    snapshots: OnceCell<kv::Store>,
    leases: OnceCell<kv::Store>,
}

impl fmt::Debug for JetStreamLog {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JetStreamLog")
            .field("js", &self.js)
            .finish()
    }
}

fn failed(message: String, source: impl Into<crate::error::BoxError>) -> LogError {
    LogError::Failed {
        message,
        source: source.into(),
    }
}

impl JetStreamLog {
    /// The aggregate type's stream, created if missing (checked if present) on first use.
    async fn stream(&self, at: &LogAddress) -> Result<jetstream::stream::Stream<()>, LogError> {
        let mut streams = self.streams.lock().await;
        if let Some(stream) = streams.get(&at.stream) {
            return Ok(stream.clone());
        }
        self.js
            .ensure_stream(
                &at.stream,
                &at.stream_subjects,
                Duration::ZERO,
                Retention::AGGREGATES,
            )
            .await
            .map_err(|e| failed(format!("cannot provision stream `{}`", at.stream), e))?;
        let stream = self
            .js
            .context
            .get_stream_no_info(&at.stream)
            .await
            .map_err(|e| failed(format!("cannot bind stream `{}`", at.stream), e))?;
        streams.insert(at.stream.clone(), stream.clone());
        Ok(stream)
    }

    async fn bucket(&self) -> Result<&kv::Store, LogError> {
        let bucket = &self.js.settings.topology.snapshots_bucket;
        self.snapshots
            .get_or_try_init(|| self.js.ensure_bucket(bucket, Duration::ZERO))
            .await
            .map_err(|e| failed(format!("cannot provision bucket `{bucket}`"), e))
    }

    async fn leases(&self) -> Result<&kv::Store, LogError> {
        let bucket = &self.js.settings.topology.leases_bucket;
        self.leases
            .get_or_try_init(|| self.js.ensure_bucket(bucket, LEASE_TTL))
            .await
            .map_err(|e| failed(format!("cannot provision bucket `{bucket}`"), e))
    }

    /// The rest of a history after `position` up to `last`, through a pull consumer filtered
    /// to the subject (deleted afterwards; the server drops it after 30 s unused anyway).
    async fn read_with_consumer(
        &self,
        stream: &jetstream::stream::Stream<()>,
        at: &LogAddress,
        mut position: u64,
        last: u64,
        records: &mut Vec<LogRecord>,
    ) -> Result<(), LogError> {
        let mut name = String::from("eda_load_");
        crate::random::push_hex(&mut name, 8);
        let config = consumer::pull::Config {
            name: Some(name.clone()),
            filter_subject: at.subject.clone(),
            deliver_policy: consumer::DeliverPolicy::ByStartSequence {
                start_sequence: position + 1,
            },
            ack_policy: consumer::AckPolicy::None,
            memory_storage: true,
            num_replicas: 1,
            inactive_threshold: Duration::from_secs(30),
            ..Default::default()
        };
        let reader = stream
            .create_consumer(config)
            .await
            .map_err(|e| failed(format!("cannot read `{}`", at.subject), e))?;
        let result = async {
            let what = || format!("cannot read `{}`", at.subject);
            // A continuous pull: the next batch is on its way while this one is decoded.
            let mut messages = reader
                .stream()
                .max_messages_per_batch(CONSUMER_BATCH)
                .messages()
                .await
                .map_err(|e| failed(what(), e))?;
            while position < last {
                let next = tokio::time::timeout(CONSUMER_EXPIRES, messages.next()).await;
                let Ok(Some(message)) = next else {
                    return Err(failed(
                        what(),
                        format!("the stream delivered nothing after sequence {position}, though the subject's last message is {last}"),
                    ));
                };
                let message = message.map_err(|e| failed(what(), e))?;
                let info = message.info().map_err(|e| failed(what(), e))?;
                position = info.stream_sequence;
                records.push(LogRecord {
                    sequence: position,
                    time: SystemTime::from(info.published),
                    headers: pairs(message.headers.as_ref()),
                    payload: message.payload.clone(),
                });
            }
            Ok(())
        }
        .await;
        let stream = stream.clone();
        tokio::spawn(async move {
            let _ = stream.delete_consumer(&name).await;
        });
        result
    }
}

fn pairs(headers: Option<&HeaderMap>) -> Vec<(String, String)> {
    super::header_pairs(headers)
        .map(|(n, v)| (n.to_owned(), v.to_owned()))
        .collect()
}

/// The subject's last sequence from a `wrong last sequence: N (code 400, error code 10071)`
/// refusal.
fn actual_last(error: &jetstream::context::PublishError) -> Option<u64> {
    let text = std::error::Error::source(error)?.to_string();
    let (_, after) = text.split_once("last sequence:")?;
    let digits: String = after
        .trim_start()
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits.parse().ok()
}

impl EventLog for JetStreamLog {
    fn append<'a>(
        &'a self,
        at: &'a LogAddress,
        expected: u64,
        headers: Vec<(&'static str, String)>,
        payload: Bytes,
    ) -> BoxFuture<'a, Result<u64, LogError>> {
        Box::pin(async move {
            self.stream(at).await?;
            let mut map = HeaderMap::new();
            for (name, value) in headers {
                map.insert(name, value.as_str());
            }
            map.insert(
                EXPECTED_LAST_SUBJECT_SEQUENCE,
                expected.to_string().as_str(),
            );
            let what = || format!("cannot append to `{}`", at.subject);
            let ack = self
                .js
                .context
                .publish_with_headers(at.subject.clone(), map, payload)
                .await
                .map_err(|e| failed(what(), e))?;
            match ack.await {
                Ok(ack) => Ok(ack.sequence),
                Err(e) if e.kind() == jetstream::context::PublishErrorKind::WrongLastSequence => {
                    Err(LogError::Conflict {
                        actual: actual_last(&e),
                    })
                }
                Err(e) => {
                    if e.kind() == jetstream::context::PublishErrorKind::StreamNotFound {
                        // Deleted behind the app's back: provisioned again on the next use.
                        self.streams.lock().await.remove(&at.stream);
                    }
                    Err(failed(what(), e))
                }
            }
        })
    }

    fn read<'a>(
        &'a self,
        at: &'a LogAddress,
        after: u64,
        last: Option<u64>,
    ) -> BoxFuture<'a, Result<LogRead, LogError>> {
        Box::pin(async move {
            let stream = self.stream(at).await?;
            let what = || format!("cannot read `{}`", at.subject);
            let last = match last {
                Some(last) => last,
                None => match stream.get_last_raw_message_by_subject(&at.subject).await {
                    Ok(message) => message.sequence,
                    Err(e) if e.kind() == LastRawMessageErrorKind::NoMessageFound => 0,
                    Err(e) => return Err(failed(what(), e)),
                },
            };
            let mut records = Vec::new();
            let mut position = after;
            if last.saturating_sub(after) > GETS_BEFORE_CONSUMER as u64 {
                // More stream sequences than gets are worth: a consumer at once (a long
                // history, or the tail after a snapshot).
                self.read_with_consumer(&stream, at, position, last, &mut records)
                    .await?;
                return Ok(LogRead { records, last });
            }
            while position < last {
                if records.len() == GETS_BEFORE_CONSUMER {
                    self.read_with_consumer(&stream, at, position, last, &mut records)
                        .await?;
                    break;
                }
                let message = stream
                    .raw_message_builder()
                    .sequence(position + 1)
                    .next_by_subject(at.subject.clone())
                    .send()
                    .await;
                match message {
                    Ok(message) => {
                        position = message.sequence;
                        records.push(LogRecord {
                            sequence: message.sequence,
                            time: SystemTime::from(message.time),
                            headers: pairs(Some(&message.headers)),
                            payload: message.payload,
                        });
                    }
                    Err(e) if e.kind() == LastRawMessageErrorKind::NoMessageFound => break,
                    Err(e) => return Err(failed(what(), e)),
                }
            }
            Ok(LogRead { records, last })
        })
    }

    fn snapshot<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<Bytes>, LogError>> {
        Box::pin(async move {
            self.bucket()
                .await?
                .get(key)
                .await
                .map_err(|e| failed(format!("cannot read snapshot `{key}`"), e))
        })
    }

    fn put_snapshot<'a>(
        &'a self,
        key: &'a str,
        value: Bytes,
    ) -> BoxFuture<'a, Result<(), LogError>> {
        Box::pin(async move {
            self.bucket()
                .await?
                .put(key, value)
                .await
                .map(|_| ())
                .map_err(|e| failed(format!("cannot write snapshot `{key}`"), e))
        })
    }

    fn follow<'a>(
        &'a self,
        at: &'a LogAddress,
        durable: &'a str,
    ) -> BoxFuture<'a, Result<Box<dyn LogFollower>, LogError>> {
        Box::pin(async move {
            let stream = self.stream(at).await?;
            let what = || format!("cannot follow stream `{}`", at.stream);
            let config = consumer::pull::Config {
                durable_name: Some(durable.to_owned()),
                filter_subject: at.stream_subjects.clone(),
                ack_policy: consumer::AckPolicy::Explicit,
                ack_wait: self.js.settings.topology.ack_wait,
                max_deliver: -1,
                deliver_policy: consumer::DeliverPolicy::All,
                ..Default::default()
            };
            let consumer: consumer::PullConsumer = match stream.get_consumer(durable).await {
                Ok(consumer) => consumer,
                Err(_) => match stream.create_consumer(config).await {
                    Ok(consumer) => consumer,
                    // Another instance created it at the same moment.
                    Err(create) => stream
                        .get_consumer(durable)
                        .await
                        .map_err(|_| failed(what(), create))?,
                },
            };
            JetStreamFollower::start(&consumer, &at.stream, true).await
        })
    }

    fn last_sequence<'a>(&'a self, at: &'a LogAddress) -> BoxFuture<'a, Result<u64, LogError>> {
        Box::pin(async move {
            let stream = self.stream(at).await?;
            let info = stream
                .get_info()
                .await
                .map_err(|e| failed(format!("cannot read stream `{}`", at.stream), e))?;
            Ok(info.state.last_sequence)
        })
    }

    fn lease<'a>(&'a self, key: &'a str, holder: &'a str) -> BoxFuture<'a, Result<bool, LogError>> {
        Box::pin(async move {
            let leases = self.leases().await?;
            let what = || format!("cannot take lease `{key}`");
            let entry = leases.entry(key).await.map_err(|e| failed(what(), e))?;
            // The bucket's age limit is the lease's term: a value not written again lapses.
            let taken = match entry.filter(|e| e.operation == kv::Operation::Put) {
                None => leases.create(key, holder.to_owned().into()).await.is_ok(),
                Some(entry) if entry.value.as_ref() == holder.as_bytes() => leases
                    .update(key, holder.to_owned().into(), entry.revision)
                    .await
                    .is_ok(),
                Some(_) => false,
            };
            Ok(taken)
        })
    }

    fn release<'a>(&'a self, key: &'a str, holder: &'a str) -> BoxFuture<'a, Result<(), LogError>> {
        Box::pin(async move {
            let leases = self.leases().await?;
            let what = || format!("cannot release lease `{key}`");
            let entry = leases.entry(key).await.map_err(|e| failed(what(), e))?;
            if let Some(entry) = entry.filter(|e| e.value.as_ref() == holder.as_bytes()) {
                // Only if no one took it since.
                leases
                    .delete_expect_revision(key, Some(entry.revision))
                    .await
                    .map_err(|e| failed(what(), e))?;
            }
            Ok(())
        })
    }

    fn read_stream<'a>(
        &'a self,
        at: &'a LogAddress,
        after: u64,
    ) -> BoxFuture<'a, Result<Box<dyn LogFollower>, LogError>> {
        Box::pin(async move {
            let stream = self.stream(at).await?;
            let mut name = String::from("eda_read_");
            crate::random::push_hex(&mut name, 8);
            let deliver_policy = match after {
                0 => consumer::DeliverPolicy::All,
                after => consumer::DeliverPolicy::ByStartSequence {
                    start_sequence: after + 1,
                },
            };
            // Not durable: the reader's position is the caller's. Dropped by the server once
            // unused for a while (a reader that stalls is started again where it was).
            let config = consumer::pull::Config {
                name: Some(name),
                filter_subject: at.stream_subjects.clone(),
                deliver_policy,
                ack_policy: consumer::AckPolicy::None,
                memory_storage: true,
                num_replicas: 1,
                inactive_threshold: Duration::from_secs(30),
                ..Default::default()
            };
            let consumer: consumer::PullConsumer = stream
                .create_consumer(config)
                .await
                .map_err(|e| failed(format!("cannot read stream `{}`", at.stream), e))?;
            JetStreamFollower::start(&consumer, &at.stream, false).await
        })
    }
}

/// How long a follower waits for a first message before it says it has none.
const FOLLOW_WAIT: Duration = Duration::from_millis(500);
/// Messages a follower hands out at once, at most.
const FOLLOW_BATCH: usize = 256;

/// A pull consumer on an aggregate type's stream, read as a continuous stream of messages,
/// and (when it acknowledges) the messages it handed out that are not acknowledged yet.
struct JetStreamFollower {
    messages: consumer::pull::Stream,
    acks: bool,
    held: HashMap<u64, jetstream::Message>,
    stream: String,
}

impl JetStreamFollower {
    async fn start(
        consumer: &consumer::PullConsumer,
        stream: &str,
        acks: bool,
    ) -> Result<Box<dyn LogFollower>, LogError> {
        let messages = consumer
            .stream()
            .max_messages_per_batch(FOLLOW_BATCH)
            .messages()
            .await
            .map_err(|e| failed(format!("cannot follow stream `{stream}`"), e))?;
        Ok(Box::new(JetStreamFollower {
            messages,
            acks,
            held: HashMap::new(),
            stream: stream.to_owned(),
        }))
    }

    fn keep(
        &mut self,
        message: Result<jetstream::Message, consumer::pull::MessagesError>,
        out: &mut Vec<Followed>,
    ) -> Result<(), LogError> {
        let what = || format!("cannot follow stream `{}`", self.stream);
        let message = message.map_err(|e| failed(what(), e))?;
        let info = message.info().map_err(|e| failed(what(), e))?;
        let sequence = info.stream_sequence;
        out.push(Followed {
            redelivered: info.delivered > 1,
            subject: message.subject.to_string(),
            record: LogRecord {
                sequence,
                time: SystemTime::from(info.published),
                headers: pairs(message.headers.as_ref()),
                payload: message.payload.clone(),
            },
        });
        if self.acks {
            self.held.insert(sequence, message);
        }
        Ok(())
    }
}

impl LogFollower for JetStreamFollower {
    fn next(&mut self) -> BoxFuture<'_, Result<Vec<Followed>, LogError>> {
        Box::pin(async move {
            let mut out = Vec::new();
            // Waits for one message (a plain fetch would come back at once when there is
            // none, and its caller would ask again and again), then takes what else is here.
            let first = match tokio::time::timeout(FOLLOW_WAIT, self.messages.next()).await {
                Err(_) => return Ok(out),
                Ok(None) => {
                    return Err(failed(
                        format!("cannot follow stream `{}`", self.stream),
                        "the consumer's messages ended",
                    ))
                }
                Ok(Some(message)) => message,
            };
            self.keep(first, &mut out)?;
            while out.len() < FOLLOW_BATCH {
                match self.messages.next().now_or_never() {
                    Some(Some(message)) => self.keep(message, &mut out)?,
                    _ => break,
                }
            }
            Ok(out)
        })
    }

    fn ack(&mut self, sequence: u64) -> BoxFuture<'_, Result<(), LogError>> {
        Box::pin(async move {
            let Some(message) = self.held.remove(&sequence) else {
                return Ok(());
            };
            message
                .double_ack()
                .await
                .map_err(|e| failed(format!("cannot acknowledge message {sequence}"), e))
        })
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_actual_sequence_is_read_from_the_refusal() {
        let error = async_nats::jetstream::context::PublishError::with_source(
            async_nats::jetstream::context::PublishErrorKind::WrongLastSequence,
            "wrong last sequence: 42 (code 400, error code 10071)",
        );
        assert_eq!(super::actual_last(&error), Some(42));
    }
}
