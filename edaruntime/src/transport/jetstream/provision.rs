//! Provisioning (DESIGN.md §5), idempotent and safe from many instances at once: the event
//! and dead-letter streams, the key-value buckets, the schema registry, and each handler's
//! durable consumer.

use std::time::Duration;

use async_nats::jetstream::{self, consumer, kv, stream};

use super::JetStream;
use crate::delivery::naming::Names;
use crate::error::{Error, ErrorKind, Provisioned};
use crate::handler::{HandlerDescriptor, Start};

const STREAM: ErrorKind = ErrorKind::Provision {
    what: Provisioned::Stream,
};
const CONSUMER: ErrorKind = ErrorKind::Provision {
    what: Provisioned::Consumer,
};
pub(super) const BUCKET: ErrorKind = ErrorKind::Provision {
    what: Provisioned::Bucket,
};

impl JetStream {
    /// Creates what is missing (streams, buckets) and checks what exists; registers schemas.
    /// Safe to run from many instances at once.
    pub(crate) async fn provision(&self) -> Result<(), Error> {
        let t = &self.settings.topology;
        self.ensure_stream(
            &t.events_stream,
            &format!("{}.>", t.subject_prefix),
            t.max_age,
            Retention::EVENTS,
        )
        .await?;
        // Dead letters wait for someone to look at them: no age limit.
        self.ensure_stream(&t.dlq_stream, "dlq.>", Duration::ZERO, Retention::EVENTS)
            .await?;
        self.ensure_redrive_stream().await?;
        self.ensure_bucket(&t.processed_bucket, t.processed_ttl)
            .await?;
        let schemas = self
            .ensure_bucket(&t.schemas_bucket, Duration::ZERO)
            .await?;
        self.register_schemas(&schemas).await
    }

    /// The redrive stream: redriven dead letters wait for their handler, and go once it has
    /// them.
    pub(super) async fn ensure_redrive_stream(&self) -> Result<(), Error> {
        let t = &self.settings.topology;
        self.ensure_stream(
            &t.redrive_stream,
            "redrive.>",
            Duration::ZERO,
            Retention::REDRIVE,
        )
        .await
    }

    pub(super) async fn ensure_stream(
        &self,
        name: &str,
        subject: &str,
        max_age: Duration,
        retention: Retention,
    ) -> Result<(), Error> {
        let t = &self.settings.topology;
        let wanted = stream::Config {
            name: name.to_owned(),
            subjects: vec![subject.to_owned()],
            storage: stream::StorageType::File,
            retention: retention.policy,
            duplicate_window: t.duplicate_window,
            max_age,
            num_replicas: self.replicas,
            ..Default::default()
        };
        for _ in 0..3 {
            match self.context.get_stream(name).await {
                Ok(mut existing) => {
                    let info = existing.info().await.map_err(|e| {
                        Error::with_source(STREAM, format!("cannot read stream `{name}`: {e}"), e)
                    })?;
                    return self.check_stream(name, subject, retention, &info.config);
                }
                Err(e) if is_code(&e, jetstream::ErrorCode::STREAM_NOT_FOUND) => {
                    match self.create_stream(wanted.clone()).await {
                        Ok(_) => {
                            tracing::info!(
                                stream = name,
                                subject,
                                replicas = self.replicas,
                                "created stream"
                            );
                            return Ok(());
                        }
                        // Another instance created it first: read and check it.
                        Err(e) if already_exists(&e) => continue,
                        Err(e) => {
                            let message =
                                format!("cannot create stream `{name}` for `{subject}`: {e}");
                            return Err(Error::with_source(STREAM, message, e));
                        }
                    }
                }
                Err(e) => {
                    let message = format!("cannot look up stream `{name}`: {e}");
                    return Err(Error::with_source(STREAM, message, e));
                }
            }
        }
        Err(Error::new(
            STREAM,
            format!("stream `{name}` could not be created or read"),
        ))
    }

    /// An existing stream must carry eda's subjects with the retention eda gives it; eda never
    /// rewrites a stream it finds.
    fn check_stream(
        &self,
        name: &str,
        subject: &str,
        retention: Retention,
        config: &stream::Config,
    ) -> Result<(), Error> {
        let mut problems = Vec::new();
        if !config.subjects.iter().any(|s| s == subject) {
            problems.push(format!(
                "stream `{name}` exists with subjects {:?}, but eda needs `{subject}` in `subjects`: edit the stream, or give eda other stream names with `.topology(..)`",
                config.subjects
            ));
        }
        if config.retention != retention.policy {
            problems.push(format!(
                "stream `{name}` exists with `retention` {:?}, but eda needs {}",
                config.retention, retention.why
            ));
        }
        if let Some(replicas) = self.settings.topology.replicas {
            if config.num_replicas != replicas {
                problems.push(format!(
                    "stream `{name}` exists with `num_replicas` {}, but {replicas} was asked for",
                    config.num_replicas
                ));
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(Error::new(STREAM, problems.join("; ")))
        }
    }

    /// Binds the key-value bucket `bucket`, creating its stream if missing. The stream is
    /// created directly (with the key-value conventions) rather than through async-nats'
    /// `create_key_value`, which first asks for account info in a shape nats-server 2.9 does
    /// not send.
    pub(super) async fn ensure_bucket(
        &self,
        bucket: &str,
        ttl: Duration,
    ) -> Result<kv::Store, Error> {
        if let Ok(store) = self.context.get_key_value(bucket).await {
            return Ok(store);
        }
        let config = stream::Config {
            name: format!("KV_{bucket}"),
            subjects: vec![format!("$KV.{bucket}.>")],
            max_messages_per_subject: 1,
            max_age: ttl,
            storage: stream::StorageType::File,
            allow_rollup: true,
            deny_delete: true,
            allow_direct: true,
            discard: stream::DiscardPolicy::New,
            num_replicas: self.replicas,
            // The duplicate window may not exceed the age limit.
            duplicate_window: if ttl.is_zero() {
                Duration::from_secs(120)
            } else {
                ttl.min(Duration::from_secs(120))
            },
            ..Default::default()
        };
        let created = self.create_stream(config).await;
        // Another instance may have created it at the same moment: binding decides.
        self.context
            .get_key_value(bucket)
            .await
            .map_err(|bind_error| match created {
                Err(create_error) => Error::with_source(
                    BUCKET,
                    format!("cannot create key-value bucket `{bucket}`: {create_error}"),
                    create_error,
                ),
                Ok(_) => Error::with_source(
                    BUCKET,
                    format!("cannot bind key-value bucket `{bucket}`: {bind_error}"),
                    bind_error,
                ),
            })
    }

    /// The consumer's filter subject for a handler's subject pattern.
    pub(crate) fn filter_subject(&self, subject: &str) -> String {
        format!("{}.{subject}", self.settings.topology.subject_prefix)
    }

    /// The durable pull consumer of one handler, created if missing. An existing one with
    /// another filter or ack policy is an error; its limits are updated to what the code asks
    /// (a limit that cannot be updated is an error too). Returns its info.
    pub(crate) async fn consumer(
        &self,
        durable: &str,
        descriptor: &HandlerDescriptor,
    ) -> Result<consumer::Info, Error> {
        let t = &self.settings.topology;
        let stream = self.stream(&t.events_stream, CONSUMER).await?;
        let wanted = self.consumer_config(durable, descriptor, None);
        self.bind_consumer(&stream, durable, descriptor, wanted)
            .await
    }

    /// The durable consumer of a handler's redriven dead letters (`redrive.<service>.<handler>`
    /// on the redrive stream), created if missing. It delivers everything on its subject: the
    /// stream is a work queue, so what is there is what was not handled yet.
    pub(crate) async fn redrive_consumer(
        &self,
        names: &Names,
        descriptor: &HandlerDescriptor,
    ) -> Result<consumer::Info, Error> {
        let t = &self.settings.topology;
        let stream = self.stream(&t.redrive_stream, CONSUMER).await?;
        let wanted = consumer::pull::Config {
            durable_name: Some(names.redrive_durable.clone()),
            filter_subject: names.redrive_subject.clone(),
            ack_policy: consumer::AckPolicy::Explicit,
            ack_wait: t.ack_wait,
            max_deliver: -1,
            max_ack_pending: max_ack_pending(1),
            deliver_policy: consumer::DeliverPolicy::All,
            ..Default::default()
        };
        self.bind_consumer(&stream, &names.redrive_durable, descriptor, wanted)
            .await
    }

    /// What eda asks of a handler's consumer; `start_after` makes it start after that stream
    /// sequence (a consumer recreated where the old one was) instead of the handler's `start`.
    fn consumer_config(
        &self,
        durable: &str,
        descriptor: &HandlerDescriptor,
        start_after: Option<u64>,
    ) -> consumer::pull::Config {
        let t = &self.settings.topology;
        let options = &descriptor.options;
        consumer::pull::Config {
            durable_name: Some(durable.to_owned()),
            filter_subject: self.filter_subject(descriptor.subject),
            ack_policy: consumer::AckPolicy::Explicit,
            ack_wait: t.ack_wait,
            // Dead-lettering is decided here from the delivery count; the server must never
            // stop redelivering on its own (a failed DLQ publish is retried through redelivery).
            max_deliver: -1,
            max_ack_pending: max_ack_pending(options.concurrency),
            deliver_policy: match (start_after, options.start) {
                (Some(sequence), _) => consumer::DeliverPolicy::ByStartSequence {
                    start_sequence: sequence + 1,
                },
                (None, Start::New) => consumer::DeliverPolicy::New,
                (None, Start::All) => consumer::DeliverPolicy::All,
            },
            ..Default::default()
        }
    }

    /// Recreates a consumer deleted behind the app's back, starting after `position` (the last
    /// stream sequence the app knows to be acknowledged), so that its backlog is not skipped.
    pub(crate) async fn recreate_consumer(
        &self,
        durable: &str,
        descriptor: &HandlerDescriptor,
        position: u64,
    ) -> Result<consumer::Info, Error> {
        let t = &self.settings.topology;
        let stream = self.stream(&t.events_stream, CONSUMER).await?;
        let wanted = self.consumer_config(durable, descriptor, Some(position));
        self.bind_consumer(&stream, durable, descriptor, wanted)
            .await
    }

    /// Whether the handler's consumer exists (an error when the broker cannot say).
    pub(crate) async fn consumer_exists(&self, durable: &str) -> Result<bool, Error> {
        let t = &self.settings.topology;
        let stream = self.stream(&t.events_stream, CONSUMER).await?;
        match stream.consumer_info(durable).await {
            Ok(_) => Ok(true),
            Err(e) if consumer_missing(&e) => Ok(false),
            Err(e) => {
                let message = format!("cannot look up consumer `{durable}`: {e}");
                Err(Error::with_source(CONSUMER, message, e))
            }
        }
    }

    async fn bind_consumer(
        &self,
        stream: &jetstream::stream::Stream,
        durable: &str,
        descriptor: &HandlerDescriptor,
        wanted: consumer::pull::Config,
    ) -> Result<consumer::Info, Error> {
        match stream.consumer_info(durable).await {
            Ok(info) => {
                let have = &info.config;
                if have.filter_subject != wanted.filter_subject {
                    return Err(Error::new(CONSUMER, format!(
                        "consumer `{durable}` exists with `filter_subject` `{}`, but handler `{}` subscribes to `{}`: delete the consumer or rename the handler",
                        have.filter_subject, descriptor.name, wanted.filter_subject
                    )));
                }
                if have.ack_policy != consumer::AckPolicy::Explicit {
                    return Err(Error::new(CONSUMER, format!(
                        "consumer `{durable}` exists with `ack_policy` {:?}, but eda needs explicit acks",
                        have.ack_policy
                    )));
                }
                if have.max_ack_pending != wanted.max_ack_pending
                    || have.ack_wait != wanted.ack_wait
                    || have.max_deliver != wanted.max_deliver
                {
                    // With the server's own `max_deliver` the server could drop a message
                    // before eda dead-letters it: a consumer eda cannot update does not start.
                    let updating = consumer::pull::Config {
                        deliver_policy: have.deliver_policy,
                        ..wanted.clone()
                    };
                    if let Err(e) = stream.create_consumer(updating).await {
                        return Err(Error::with_source(CONSUMER, format!(
                            "consumer `{durable}` exists with `max_deliver` {}, `max_ack_pending` {} and `ack_wait` {:?}, and eda cannot update them to {}, {} and {:?}: {e}; delete the consumer (it is recreated) or fix its permissions",
                            have.max_deliver, have.max_ack_pending, have.ack_wait,
                            wanted.max_deliver, wanted.max_ack_pending, wanted.ack_wait
                        ), e));
                    }
                }
            }
            Err(e) if consumer_missing(&e) => {
                if let Err(create_error) = stream.create_consumer(wanted.clone()).await {
                    // Another instance may have created it at the same moment.
                    if stream.consumer_info(durable).await.is_err() {
                        let message = format!(
                            "cannot create consumer `{durable}` on `{}`: {create_error}",
                            stream.cached_info().config.name
                        );
                        return Err(Error::with_source(CONSUMER, message, create_error));
                    }
                }
            }
            Err(e) => {
                let message = format!("cannot look up consumer `{durable}`: {e}");
                return Err(Error::with_source(CONSUMER, message, e));
            }
        }
        stream.consumer_info(durable).await.map_err(|e| {
            Error::with_source(
                CONSUMER,
                format!("cannot bind consumer `{durable}`: {e}"),
                e,
            )
        })
    }
}

/// The retention eda gives a stream, and why (for the message when a stream has another).
#[derive(Debug, Clone, Copy)]
pub(super) struct Retention {
    policy: stream::RetentionPolicy,
    why: &'static str,
}

impl Retention {
    /// Events and dead letters: every service reads every event.
    const EVENTS: Retention = Retention {
        policy: stream::RetentionPolicy::Limits,
        why: "`limits` (every service reads every event)",
    };
    /// An aggregate type's events (event sourcing): kept for ever, read by subject.
    pub(super) const AGGREGATES: Retention = Retention {
        policy: stream::RetentionPolicy::Limits,
        why: "`limits` (an aggregate's events are its state)",
    };
    /// Redriven dead letters: one consumer per subject, a message gone once handled.
    const REDRIVE: Retention = Retention {
        policy: stream::RetentionPolicy::WorkQueue,
        why: "`workqueue` (a redriven dead letter goes once its handler has it)",
    };
}

/// Messages the broker may hold unacked for one consumer (all instances together).
pub(super) fn max_ack_pending(concurrency: u32) -> i64 {
    i64::from(concurrency.max(1))
        .saturating_mul(64)
        .clamp(256, 100_000)
}

fn is_code(error: &jetstream::context::GetStreamError, code: jetstream::ErrorCode) -> bool {
    matches!(error.kind(), jetstream::context::GetStreamErrorKind::JetStream(e) if e.error_code() == code)
}

/// How long creating a stream waits for a cluster that cannot place its replicas yet.
const PLACEMENT_WAIT: Duration = Duration::from_secs(30);

impl JetStream {
    /// Creates a stream, waiting (up to [`PLACEMENT_WAIT`]) while the cluster says it has no
    /// suitable peers: right after a cluster forms, or while a node restarts, not every node
    /// counts as a JetStream peer yet, and services started with a new cluster would fail.
    async fn create_stream(
        &self,
        config: stream::Config,
    ) -> Result<stream::Stream, jetstream::context::CreateStreamError> {
        let deadline = tokio::time::Instant::now() + PLACEMENT_WAIT;
        let mut delay = Duration::from_millis(250);
        loop {
            match self.context.create_stream(config.clone()).await {
                Err(e) if no_peers(&e) && tokio::time::Instant::now() + delay < deadline => {
                    tracing::warn!(stream = %config.name, error = %e, "the cluster cannot place the stream's replicas yet; waiting");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(2));
                }
                created => return created,
            }
        }
    }
}

fn no_peers(error: &jetstream::context::CreateStreamError) -> bool {
    matches!(error.kind(), jetstream::context::CreateStreamErrorKind::JetStream(e)
        if e.error_code() == jetstream::ErrorCode::CLUSTER_NO_PEERS)
}

/// Another instance created the stream first.
fn already_exists(error: &jetstream::context::CreateStreamError) -> bool {
    matches!(error.kind(), jetstream::context::CreateStreamErrorKind::JetStream(e)
        if e.error_code() == jetstream::ErrorCode::STREAM_NAME_EXIST)
}

pub(super) fn consumer_missing(error: &jetstream::context::ConsumerInfoError) -> bool {
    use jetstream::context::ConsumerInfoErrorKind as Kind;
    match error.kind() {
        Kind::NotFound => true,
        Kind::JetStream(e) => e.error_code() == jetstream::ErrorCode::CONSUMER_NOT_FOUND,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::max_ack_pending;

    #[test]
    fn limits_grow_with_concurrency() {
        assert_eq!(max_ack_pending(1), 256);
        assert_eq!(max_ack_pending(64), 4096);
    }
}
