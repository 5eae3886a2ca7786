//! The forwarder: an outbox on JetStream. Every event appended to an aggregate type's stream is
//! published again to `events.<name>` with its id as `Nats-Msg-Id`, so that ordinary handlers
//! of any service get it. It reads the stream through a durable follower (a durable consumer
//! on NATS) and acknowledges a message only after its publish was confirmed: an append that
//! returned `Ok` is eventually published, also across crashes, and a message published again
//! after a crash (between publish and acknowledgment) is dropped by the event stream's
//! duplicate window. The events of an append of several are published once all are stored in
//! a row, and never when another writer cut the append off (the rule loads follow).

use std::sync::Arc;
use std::time::Duration;

use super::appends::{header, Appends};
use crate::port::{EventLog, Followed, LogAddress, LogError, LogFollower, Outbound, Transport};
use crate::wire;

/// The durable follower's name: one per aggregate type's stream, shared by every instance and
/// service that forwards it (they compete; each event is forwarded once).
pub(crate) const FORWARDER: &str = "eda_forward";

/// How long the forwarder waits after a failure before it starts again.
const AFTER_FAILURE: Duration = Duration::from_secs(1);

/// Forwards the events of the aggregate stream `at` for as long as it runs (it is aborted at
/// shutdown: what it did not acknowledge comes again to the next forwarder).
pub(crate) async fn run(log: Arc<dyn EventLog>, transport: Arc<dyn Transport>, at: LogAddress) {
    loop {
        let mut follower = match log.follow(&at, FORWARDER).await {
            Ok(follower) => follower,
            Err(e) => {
                warn(&at, &e, "cannot follow the aggregate stream");
                tokio::time::sleep(AFTER_FAILURE).await;
                continue;
            }
        };
        let mut appends = Appends::default();
        'follow: loop {
            let batch = match follower.next().await {
                Ok(batch) => batch,
                Err(e) => {
                    warn(&at, &e, "cannot read the aggregate stream");
                    break 'follow;
                }
            };
            for followed in batch {
                let forwarded = forward(
                    &mut appends,
                    followed,
                    &mut *follower,
                    &*log,
                    &at,
                    &*transport,
                )
                .await;
                if let Err(e) = forwarded {
                    warn(&at, &e, "cannot forward an event; trying again");
                    break 'follow;
                }
            }
        }
        tokio::time::sleep(AFTER_FAILURE).await;
    }
}

fn warn(at: &LogAddress, error: &LogError, what: &str) {
    let error = match error {
        LogError::Conflict { .. } => "conflict".to_owned(),
        LogError::Failed { message, source } => format!("{message}: {source}"),
    };
    tracing::warn!(stream = %at.stream, error = %error, "{what}");
}

/// Forwards what `followed` completes and acknowledges what never counts.
async fn forward(
    appends: &mut Appends,
    followed: Followed,
    follower: &mut dyn LogFollower,
    log: &dyn EventLog,
    at: &LogAddress,
    transport: &dyn Transport,
) -> Result<(), LogError> {
    let taken = appends.take_reading(followed, log, at).await?;
    for sequence in taken.void {
        follower.ack(sequence).await?;
    }
    for event in &taken.complete {
        publish(event, transport).await?;
    }
    for event in &taken.complete {
        follower.ack(event.record.sequence).await?;
    }
    Ok(())
}

/// Publishes one stored event to `events.<name>` with its id and time.
async fn publish(followed: &Followed, transport: &dyn Transport) -> Result<(), LogError> {
    let record = &followed.record;
    let name = header(followed, wire::EVENT).unwrap_or_default();
    let decoded = wire::decode(
        name,
        record.headers.iter().map(|(n, v)| (n.as_str(), v.as_str())),
        Some(record.sequence),
        Some(record.time),
    );
    transport
        .publish(Outbound {
            metadata: decoded.metadata,
            payload: record.payload.clone(),
            explicit_id: true,
            explicit_time: true,
        })
        .await
        .map_err(|e| LogError::Failed {
            message: format!("cannot forward `{name}` (sequence {})", record.sequence),
            source: Box::new(e),
        })
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;
    use std::time::SystemTime;

    use bytes::Bytes;
    use futures_util::future::BoxFuture;

    use super::*;
    use crate::dlq::DeadLetter;
    use crate::error::PublishError;
    use crate::port::{LogRecord, OutboundStream};

    /// Records what was published (by the event's payload).
    #[derive(Debug, Default)]
    struct Published(Mutex<Vec<String>>);

    impl Transport for Published {
        fn publish(&self, message: Outbound) -> BoxFuture<'_, Result<(), PublishError>> {
            let text = String::from_utf8_lossy(&message.payload).into_owned();
            self.0.lock().unwrap().push(text);
            Box::pin(async { Ok(()) })
        }
        fn publish_many<'a>(
            &'a self,
            _: &'a mut OutboundStream<'_>,
        ) -> BoxFuture<'a, Result<(), PublishError>> {
            Box::pin(async { Ok(()) })
        }
        fn dead_letter(&self, _: DeadLetter) -> BoxFuture<'_, Result<(), PublishError>> {
            Box::pin(async { Ok(()) })
        }
    }

    #[derive(Default)]
    struct Acks(Vec<u64>);

    impl LogFollower for Acks {
        fn next(&mut self) -> BoxFuture<'_, Result<Vec<Followed>, LogError>> {
            Box::pin(async { Ok(Vec::new()) })
        }
        fn ack(&mut self, sequence: u64) -> BoxFuture<'_, Result<(), LogError>> {
            self.0.push(sequence);
            Box::pin(async { Ok(()) })
        }
    }

    fn message(subject: &str, sequence: u64, batch: Option<&str>) -> Followed {
        let mut headers = vec![
            ("Nats-Msg-Id".to_owned(), format!("id-{sequence}")),
            ("Eda-Event".to_owned(), "money.deposited".to_owned()),
        ];
        if let Some(batch) = batch {
            headers.push(("Eda-Batch".to_owned(), batch.to_owned()));
        }
        Followed {
            redelivered: false,
            subject: subject.to_owned(),
            record: LogRecord {
                sequence,
                time: SystemTime::now(),
                headers,
                payload: Bytes::from(sequence.to_string()),
            },
        }
    }

    /// The stored messages, for the reads back and forward on a subject.
    #[derive(Debug)]
    struct Stored(Vec<Followed>);

    impl EventLog for Stored {
        fn append<'a>(
            &'a self,
            _: &'a LogAddress,
            _: u64,
            _: Vec<(&'static str, String)>,
            _: Bytes,
        ) -> BoxFuture<'a, Result<u64, LogError>> {
            unreachable!("the forwarder never appends")
        }
        fn read<'a>(
            &'a self,
            at: &'a LogAddress,
            after: u64,
            _: Option<u64>,
        ) -> BoxFuture<'a, Result<crate::port::LogRead, LogError>> {
            let records: Vec<LogRecord> = self
                .0
                .iter()
                .filter(|f| f.subject == at.subject && f.record.sequence > after)
                .map(|f| f.record.clone())
                .collect();
            let last = records.last().map_or(after, |r| r.sequence);
            Box::pin(async move { Ok(crate::port::LogRead { records, last }) })
        }
        fn snapshot<'a>(&'a self, _: &'a str) -> BoxFuture<'a, Result<Option<Bytes>, LogError>> {
            unreachable!()
        }
        fn put_snapshot<'a>(&'a self, _: &'a str, _: Bytes) -> BoxFuture<'a, Result<(), LogError>> {
            unreachable!()
        }
        fn follow<'a>(
            &'a self,
            _: &'a LogAddress,
            _: &'a str,
        ) -> BoxFuture<'a, Result<Box<dyn LogFollower>, LogError>> {
            unreachable!()
        }
        fn read_stream<'a>(
            &'a self,
            _: &'a LogAddress,
            _: u64,
        ) -> BoxFuture<'a, Result<Box<dyn LogFollower>, LogError>> {
            unreachable!()
        }
        fn last_sequence<'a>(&'a self, _: &'a LogAddress) -> BoxFuture<'a, Result<u64, LogError>> {
            unreachable!()
        }
        fn lease<'a>(&'a self, _: &'a str, _: &'a str) -> BoxFuture<'a, Result<bool, LogError>> {
            unreachable!()
        }
        fn release<'a>(&'a self, _: &'a str, _: &'a str) -> BoxFuture<'a, Result<(), LogError>> {
            unreachable!()
        }
    }

    fn stream() -> LogAddress {
        LogAddress {
            stream: "EDA_AGG_A".into(),
            stream_subjects: "agg.a.*".into(),
            subject: String::new(),
        }
    }

    #[tokio::test]
    async fn appends_cut_off_are_not_forwarded_and_complete_ones_are_once() {
        let (published, mut acks, mut appends) =
            (Published::default(), Acks::default(), Appends::default());
        let messages = [
            message("agg.a.1", 1, None),
            message("agg.a.1", 2, Some("1/2")),
            message("agg.a.2", 3, Some("1/2")),
            message("agg.a.2", 3, Some("1/2")), // delivered again while held
            message("agg.a.1", 4, None),        // cuts off 2
            message("agg.a.2", 5, Some("2/2")), // completes 3
            message("agg.a.3", 6, Some("2/2")), // a fragment
            message("agg.a.3", 7, Some("1/3")), // held at the end
        ];
        let log = Stored(messages.to_vec());
        for followed in messages {
            forward(
                &mut appends,
                followed,
                &mut acks,
                &log,
                &stream(),
                &published,
            )
            .await
            .unwrap();
        }
        assert_eq!(*published.0.lock().unwrap(), ["1", "4", "3", "5"]);
        let mut acked = acks.0.clone();
        acked.sort_unstable();
        assert_eq!(acked, [1, 2, 3, 4, 5, 6], "7 stays held, unacknowledged");
    }

    #[tokio::test]
    async fn an_append_split_between_readers_or_redeliveries_is_forwarded_whole() {
        let (published, mut acks, mut appends) =
            (Published::default(), Acks::default(), Appends::default());
        let (first, second) = (
            message("agg.a.1", 10, Some("1/2")),
            message("agg.a.1", 11, Some("2/2")),
        );
        let log = Stored(vec![first.clone(), second.clone()]);
        // The second event comes first (the first went to another reader, or waits for its
        // redelivery): the beginning is read back from the subject.
        forward(&mut appends, second, &mut acks, &log, &stream(), &published)
            .await
            .unwrap();
        assert_eq!(*published.0.lock().unwrap(), ["10", "11"]);
        // The first comes again later: the rest is read forward; published whole again (the
        // duplicate window drops it), and acknowledged instead of held for ever.
        let again = Followed {
            redelivered: true,
            ..first
        };
        forward(&mut appends, again, &mut acks, &log, &stream(), &published)
            .await
            .unwrap();
        assert_eq!(*published.0.lock().unwrap(), ["10", "11", "10", "11"]);
        let mut acked = acks.0.clone();
        acked.sort_unstable();
        assert_eq!(acked, [10, 10, 11, 11]);
    }
}
