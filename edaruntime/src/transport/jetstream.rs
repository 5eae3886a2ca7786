//! The NATS JetStream transport: provisioning (DESIGN.md §5), publishing with broker
//! confirmation, pull consumers, acks. What to do with a message is decided in
//! [`crate::delivery`]; this module only carries bytes, acks and naks.

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_nats::jetstream::{self, consumer, kv, stream, AckKind};
use async_nats::{HeaderMap, ServerAddr};
use bytes::Bytes;
use futures_util::future::BoxFuture;
use futures_util::stream::FuturesUnordered;
use futures_util::{FutureExt, StreamExt};
use sha2::{Digest, Sha256};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use super::{Acknowledge, Outbound, OutboundStream, Outstanding, Transport};
use crate::app::Signals;
use crate::config::{NatsAuth, NatsSettings};
use crate::delivery::{DeadLetter, Delivery, DlqReason, HandlerRuntime};
use crate::error::{Error, PublishError};
use crate::event::RawEvent;
use crate::handler::{HandlerDescriptor, Start};
use crate::idempotency::{IdempotencyStore, Recorded, StoreError};
use crate::observe;
use crate::registry;
use crate::wire;

/// Publishes awaiting confirmation at once in `publish_all`: as many as the hand-written
/// baseline of `benches/compare.rs` finds fastest. Concurrent `publish_all` calls, `Context::
/// publish` and dead letters share the client's limit of 5,000 acks in flight per connection;
/// past it the client waits (its backpressure is on), it does not fail.
const PUBLISH_WINDOW: usize = 1024;

/// A connection to NATS with JetStream, and the topology eda needs on it.
pub(crate) struct JetStream {
    client: async_nats::Client,
    context: jetstream::Context,
    settings: NatsSettings,
    replicas: usize,
    connected: Arc<AtomicBool>,
    reconnects: Arc<AtomicU64>,
    acks: Arc<AckSender>,
}

impl fmt::Debug for JetStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JetStream")
            .field("url", &self.settings.url)
            .field("replicas", &self.replicas)
            .finish()
    }
}

fn broker_error(message: impl Into<String>) -> Error {
    Error::Broker(message.into())
}

impl JetStream {
    /// Connects (bounded by the connect timeout), checking JetStream is enabled.
    pub(crate) async fn connect(
        settings: &NatsSettings,
        service: &str,
    ) -> Result<JetStream, Error> {
        let url = &settings.url;
        let addresses = settings
            .url
            .split(',')
            .map(|u| u.trim().parse::<ServerAddr>())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| broker_error(format!("cannot parse NATS URL `{url}`: {e}")))?;
        let connected = Arc::new(AtomicBool::new(false));
        let reconnects = Arc::new(AtomicU64::new(0));
        let mut options = async_nats::ConnectOptions::new()
            .name(service)
            .connection_timeout(settings.connect_timeout)
            .max_reconnects(None)
            .event_callback({
                let connected = Arc::clone(&connected);
                let reconnects = Arc::clone(&reconnects);
                // Set while the connection is lost: the next `Connected` is a reconnect.
                let lost = Arc::new(AtomicBool::new(false));
                move |event| {
                    match event {
                        async_nats::Event::Connected => {
                            connected.store(true, Ordering::SeqCst);
                            if lost.swap(false, Ordering::SeqCst) {
                                reconnects.fetch_add(1, Ordering::Relaxed);
                                observe::broker_reconnected();
                            }
                            observe::broker_connected(true);
                            tracing::info!("connected to NATS");
                        }
                        async_nats::Event::Disconnected => {
                            connected.store(false, Ordering::SeqCst);
                            lost.store(true, Ordering::SeqCst);
                            observe::broker_connected(false);
                            tracing::warn!("disconnected from NATS; reconnecting");
                        }
                        other => tracing::debug!(event = %other, "NATS event"),
                    }
                    async {}
                }
            });
        options = match &settings.auth {
            NatsAuth::None => options,
            NatsAuth::UserPassword { user, password } => {
                options.user_and_password(user.clone(), password.clone())
            }
            NatsAuth::Token(token) => options.token(token.clone()),
            NatsAuth::CredentialsFile(path) => {
                options.credentials_file(path).await.map_err(|e| {
                    broker_error(format!(
                        "cannot read credentials file `{}`: {e}",
                        path.display()
                    ))
                })?
            }
        };
        if let Some(ca) = &settings.tls_ca {
            options = options.add_root_certificates(ca.clone()).require_tls(true);
        }
        let attempt = tokio::time::timeout(
            settings.connect_timeout + Duration::from_secs(1),
            options.connect(addresses),
        )
        .await;
        let client = match attempt {
            Err(_) => {
                return Err(broker_error(format!(
                    "cannot connect to NATS at `{url}`: no answer within {}; is nats-server running there?",
                    humantime::format_duration(settings.connect_timeout)
                )))
            }
            Ok(Err(e)) => return Err(connect_error(url, &e)),
            Ok(Ok(client)) => client,
        };
        connected.store(true, Ordering::SeqCst);
        observe::broker_connected(true);
        let info = client.server_info();
        if !info.jetstream {
            return Err(broker_error(format!(
                "the NATS server at `{url}` has JetStream disabled: start nats-server with `-js`"
            )));
        }
        let replicas = settings.topology.replicas.unwrap_or_else(|| {
            match (&info.cluster, info.connect_urls.len()) {
                (Some(_), seen) if seen >= 3 => 3,
                (Some(cluster), seen) => {
                    // A cluster still forming its routes lists fewer servers: new streams
                    // would get one replica. Say so; EDA_STREAM_REPLICAS makes it explicit.
                    tracing::warn!(
                        cluster = %cluster,
                        servers = seen,
                        "the cluster lists fewer than 3 servers: new streams get 1 replica \
                         (set EDA_STREAM_REPLICAS to choose)"
                    );
                    1
                }
                (None, _) => 1,
            }
        });
        let context = jetstream::ContextBuilder::new()
            .timeout(settings.publish_timeout)
            .build(client.clone());
        Ok(JetStream {
            acks: Arc::new(AckSender {
                client: client.clone(),
                context: context.clone(),
                lost_acks: AtomicU32::new(0),
            }),
            client,
            context,
            settings: settings.clone(),
            replicas,
            connected,
            reconnects,
        })
    }

    /// Whether the connection is up now.
    pub(crate) fn is_connected(&self) -> bool {
        self.connected.load(Ordering::SeqCst)
    }

    /// How many times the connection came back after being lost.
    #[allow(dead_code)]
    pub(crate) fn reconnects(&self) -> u64 {
        self.reconnects.load(Ordering::Relaxed)
    }

    /// Creates what is missing (streams, buckets) and checks what exists; registers schemas.
    /// Safe to run from many instances at once.
    pub(crate) async fn provision(&self) -> Result<(), Error> {
        let t = &self.settings.topology;
        self.ensure_stream(
            &t.events_stream,
            &format!("{}.>", t.subject_prefix),
            t.max_age,
        )
        .await?;
        // Dead letters wait for someone to look at them: no age limit.
        self.ensure_stream(&t.dlq_stream, "dlq.>", Duration::ZERO)
            .await?;
        self.ensure_bucket(&t.processed_bucket, t.processed_ttl)
            .await?;
        let schemas = self
            .ensure_bucket(&t.schemas_bucket, Duration::ZERO)
            .await?;
        self.register_schemas(&schemas).await
    }

    async fn ensure_stream(
        &self,
        name: &str,
        subject: &str,
        max_age: Duration,
    ) -> Result<(), Error> {
        let t = &self.settings.topology;
        let wanted = stream::Config {
            name: name.to_owned(),
            subjects: vec![subject.to_owned()],
            storage: stream::StorageType::File,
            retention: stream::RetentionPolicy::Limits,
            duplicate_window: t.duplicate_window,
            max_age,
            num_replicas: self.replicas,
            ..Default::default()
        };
        for _ in 0..3 {
            match self.context.get_stream(name).await {
                Ok(mut existing) => {
                    let info = existing
                        .info()
                        .await
                        .map_err(|e| broker_error(format!("cannot read stream `{name}`: {e}")))?;
                    return self.check_stream(name, subject, &info.config);
                }
                Err(e) if is_code(&e, jetstream::ErrorCode::STREAM_NOT_FOUND) => {
                    match self.context.create_stream(wanted.clone()).await {
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
                        Err(e) if e.to_string().contains("already in use") => continue,
                        Err(e) => {
                            return Err(broker_error(format!(
                                "cannot create stream `{name}` for `{subject}`: {e}"
                            )))
                        }
                    }
                }
                Err(e) => return Err(broker_error(format!("cannot look up stream `{name}`: {e}"))),
            }
        }
        Err(broker_error(format!(
            "stream `{name}` could not be created or read"
        )))
    }

    /// An existing stream must carry eda's subjects with limits retention; eda never rewrites
    /// a stream it finds.
    fn check_stream(
        &self,
        name: &str,
        subject: &str,
        config: &stream::Config,
    ) -> Result<(), Error> {
        let mut problems = Vec::new();
        if !config.subjects.iter().any(|s| s == subject) {
            problems.push(format!(
                "stream `{name}` exists with subjects {:?}, but eda needs `{subject}` in `subjects`: edit the stream, or choose another name with `.stream_name(..)`",
                config.subjects
            ));
        }
        if config.retention != stream::RetentionPolicy::Limits {
            problems.push(format!(
                "stream `{name}` exists with `retention` {:?}, but eda needs `limits` (every service reads every event)",
                config.retention
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
            Err(broker_error(problems.join("; ")))
        }
    }

    /// Binds the key-value bucket `bucket`, creating its stream if missing. The stream is
    /// created directly (with the key-value conventions) rather than through async-nats'
    /// `create_key_value`, which first asks for account info in a shape nats-server 2.9 does
    /// not send.
    async fn ensure_bucket(&self, bucket: &str, ttl: Duration) -> Result<kv::Store, Error> {
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
        let created = self.context.create_stream(config).await;
        // Another instance may have created it at the same moment: binding decides.
        self.context
            .get_key_value(bucket)
            .await
            .map_err(|bind_error| match created {
                Err(create_error) => broker_error(format!(
                    "cannot create key-value bucket `{bucket}`: {create_error}"
                )),
                Ok(_) => broker_error(format!(
                    "cannot bind key-value bucket `{bucket}`: {bind_error}"
                )),
            })
    }

    /// Writes each event version's schema to the registry if absent; a different fingerprint
    /// already there is a startup error.
    async fn register_schemas(&self, schemas: &kv::Store) -> Result<(), Error> {
        let bucket = &self.settings.topology.schemas_bucket;
        let mut problems = Vec::new();
        let mut seen: Vec<(String, String)> = Vec::new();
        for event in registry::catalog().events {
            let key = format!("{}.v{}", event.name, event.version);
            if let Some((_, other)) = seen.iter().find(|(k, _)| *k == key) {
                if *other != event.fingerprint {
                    problems.push(format!(
                        "event `{}` v{} has two different schemas in this binary (fingerprints `{other}` and `{}`): give one of them another version",
                        event.name, event.version, event.fingerprint
                    ));
                }
                continue;
            }
            seen.push((key.clone(), event.fingerprint.clone()));
            let value = serde_json::json!({
                "name": event.name,
                "version": event.version,
                "fingerprint": event.fingerprint,
                "schema": event.schema,
            });
            let bytes = Bytes::from(serde_json::to_vec(&value).unwrap_or_default());
            match schemas.create(&key, bytes).await {
                Ok(_) => {}
                Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => {
                    let stored = schemas.get(&key).await.map_err(|e| {
                        broker_error(format!("cannot read schema `{key}` from `{bucket}`: {e}"))
                    })?;
                    let registered = stored
                        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
                        .and_then(|v| v["fingerprint"].as_str().map(str::to_owned))
                        .unwrap_or_default();
                    if registered != event.fingerprint {
                        problems.push(format!(
                            "event `{}` v{}: this binary's schema has fingerprint `{}` but the registry `{bucket}` has `{registered}`; another service publishes or reads a different schema under this version — give the changed schema a new version",
                            event.name, event.version, event.fingerprint
                        ));
                    }
                }
                Err(e) => {
                    return Err(broker_error(format!(
                        "cannot register schema `{key}` in `{bucket}`: {e}"
                    )))
                }
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(broker_error(problems.join("; ")))
        }
    }

    /// The processed-id store on the `EDA_PROCESSED` bucket.
    pub(crate) async fn store(&self) -> Result<Arc<dyn IdempotencyStore>, Error> {
        let t = &self.settings.topology;
        let bucket = self
            .ensure_bucket(&t.processed_bucket, t.processed_ttl)
            .await?;
        Ok(Arc::new(KvStore { bucket }))
    }

    /// The publishing side.
    pub(crate) fn transport(&self) -> Arc<dyn Transport> {
        Arc::new(JetStreamTransport {
            context: self.context.clone(),
            prefix: self.settings.topology.subject_prefix.clone(),
        })
    }

    /// The consumer's filter subject for a handler's subject pattern.
    pub(crate) fn filter_subject(&self, subject: &str) -> String {
        format!("{}.{subject}", self.settings.topology.subject_prefix)
    }

    /// The durable pull consumer of one handler, created if missing. An existing one with
    /// another filter or ack policy is an error; its limits are updated to what the code asks.
    pub(crate) async fn consumer(
        &self,
        durable: &str,
        descriptor: &HandlerDescriptor,
    ) -> Result<consumer::PullConsumer, Error> {
        let t = &self.settings.topology;
        let stream = self
            .context
            .get_stream(&t.events_stream)
            .await
            .map_err(|e| {
                broker_error(format!("cannot look up stream `{}`: {e}", t.events_stream))
            })?;
        let options = &descriptor.options;
        let wanted = consumer::pull::Config {
            durable_name: Some(durable.to_owned()),
            filter_subject: self.filter_subject(descriptor.subject),
            ack_policy: consumer::AckPolicy::Explicit,
            ack_wait: t.ack_wait,
            // Dead-lettering is decided here from the delivery count; the server must never
            // stop redelivering on its own (a failed DLQ publish is retried through redelivery).
            max_deliver: -1,
            max_ack_pending: max_ack_pending(options.concurrency),
            deliver_policy: match options.start {
                Start::New => consumer::DeliverPolicy::New,
                Start::All => consumer::DeliverPolicy::All,
            },
            ..Default::default()
        };
        match stream.consumer_info(durable).await {
            Ok(info) => {
                let have = &info.config;
                if have.filter_subject != wanted.filter_subject {
                    return Err(broker_error(format!(
                        "consumer `{durable}` exists with `filter_subject` `{}`, but handler `{}` subscribes to `{}`: delete the consumer or rename the handler",
                        have.filter_subject, descriptor.name, wanted.filter_subject
                    )));
                }
                if have.ack_policy != consumer::AckPolicy::Explicit {
                    return Err(broker_error(format!(
                        "consumer `{durable}` exists with `ack_policy` {:?}, but eda needs explicit acks",
                        have.ack_policy
                    )));
                }
                if have.max_ack_pending != wanted.max_ack_pending
                    || have.ack_wait != wanted.ack_wait
                    || have.max_deliver != wanted.max_deliver
                {
                    if let Err(e) = stream.create_consumer(wanted.clone()).await {
                        tracing::warn!(consumer = durable, error = %e, "cannot update the consumer's limits; keeping the existing ones");
                    }
                }
            }
            Err(e) if consumer_missing(&e) => {
                if let Err(create_error) = stream.create_consumer(wanted.clone()).await {
                    // Another instance may have created it at the same moment.
                    if stream.consumer_info(durable).await.is_err() {
                        return Err(broker_error(format!(
                            "cannot create consumer `{durable}` on `{}`: {create_error}",
                            t.events_stream
                        )));
                    }
                }
            }
            Err(e) => {
                return Err(broker_error(format!(
                    "cannot look up consumer `{durable}`: {e}"
                )))
            }
        }
        stream
            .get_consumer(durable)
            .await
            .map_err(|e| broker_error(format!("cannot bind consumer `{durable}`: {e}")))
    }

    /// Messages pending and awaiting acks on a consumer.
    pub(crate) async fn pending(&self, durable: &str) -> Result<(u64, usize), Error> {
        let t = &self.settings.topology;
        let stream = self
            .context
            .get_stream(&t.events_stream)
            .await
            .map_err(|e| broker_error(e.to_string()))?;
        let info = stream
            .consumer_info(durable)
            .await
            .map_err(|e| broker_error(e.to_string()))?;
        Ok((info.num_pending, info.num_ack_pending))
    }

    /// Fault injection for tests: the next `count` acks are not sent, as if the process died
    /// between recording its work and acking; the broker redelivers after the ack wait.
    pub(crate) fn lose_next_acks(&self, count: u32) {
        self.acks.lost_acks.store(count, Ordering::SeqCst);
    }

    /// The last sequence of the event and dead-letter streams (to tell when traffic stopped).
    pub(crate) async fn last_sequences(&self) -> Result<(u64, u64), Error> {
        let t = &self.settings.topology;
        let mut last = [0u64; 2];
        for (slot, name) in last.iter_mut().zip([&t.events_stream, &t.dlq_stream]) {
            let mut stream = self
                .context
                .get_stream(name)
                .await
                .map_err(|e| broker_error(format!("cannot look up stream `{name}`: {e}")))?;
            let info = stream
                .info()
                .await
                .map_err(|e| broker_error(format!("cannot read stream `{name}`: {e}")))?;
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
                    Ok((pending, ack_pending)) => busy |= pending > 0 || ack_pending > 0,
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
        let read_error =
            |e: &dyn fmt::Display| broker_error(format!("cannot read stream `{stream}`: {e}"));
        let handle = self
            .context
            .get_stream(stream)
            .await
            .map_err(|e| read_error(&e))?;
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
            .filter_map(|m| self.to_delivery(m, &prefix))
            .map(|(delivery, _)| delivery.raw)
            .collect())
    }

    /// Every dead letter in the dead-letter stream, oldest first.
    pub(crate) async fn dead_letters(&self) -> Result<Vec<DeadLetter>, Error> {
        let t = &self.settings.topology;
        let prefix = format!("{}.", t.subject_prefix);
        let messages = self.read_stream(&t.dlq_stream, "dlq.>").await?;
        Ok(messages
            .into_iter()
            .filter_map(|m| dead_letter_from(m, &prefix))
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

    /// Runs one app instance's share of a durable consumer until `signals` says stop.
    pub(crate) async fn consume(
        self: Arc<Self>,
        runtime: Arc<HandlerRuntime>,
        consumer: consumer::PullConsumer,
        signals: Signals,
    ) {
        let concurrency = runtime.descriptor.options.concurrency.max(1) as usize;
        let permits = Arc::new(Semaphore::new(concurrency));
        let mut tasks = JoinSet::new();
        let batch = fetch_batch(runtime.descriptor.options.concurrency);
        let prefix = format!("{}.", self.settings.topology.subject_prefix);
        let draining = signals.draining();
        tokio::pin!(draining);
        // Hand-back naks still being sent.
        let hand_backs = Arc::new(Outstanding::default());
        'connect: loop {
            let opened = tokio::select! {
                biased;
                () = &mut draining => break 'connect,
                opened = consumer
                    .stream()
                    .max_messages_per_batch(batch)
                    .heartbeat(Duration::from_secs(5))
                    .expires(Duration::from_secs(30))
                    .messages() => opened,
            };
            let mut messages = match opened {
                Ok(messages) => {
                    runtime.bound.store(true, Ordering::SeqCst);
                    messages
                }
                Err(e) => {
                    runtime.bound.store(false, Ordering::SeqCst);
                    tracing::warn!(consumer = %runtime.durable, error = %e, "cannot pull messages; retrying");
                    tokio::select! {
                        () = &mut draining => break 'connect,
                        () = tokio::time::sleep(Duration::from_secs(1)) => continue 'connect,
                    }
                }
            };
            loop {
                let permit = match Arc::clone(&permits).try_acquire_owned() {
                    Ok(permit) => permit,
                    Err(_) => tokio::select! {
                        biased;
                        () = &mut draining => {
                            release_buffered(&mut messages).await;
                            break 'connect;
                        }
                        permit = Arc::clone(&permits).acquire_owned() => match permit {
                            Ok(permit) => permit,
                            Err(_) => break 'connect,
                        },
                    },
                };
                let next = tokio::select! {
                    biased;
                    () = &mut draining => {
                        release_buffered(&mut messages).await;
                        break 'connect;
                    }
                    next = messages.next() => next,
                };
                let message = match next {
                    Some(Ok(message)) => message,
                    Some(Err(e)) => {
                        use consumer::pull::MessagesErrorKind as Kind;
                        match e.kind() {
                            Kind::MissingHeartbeat => {
                                tracing::warn!(consumer = %runtime.durable, "missed heartbeats from the server; waiting");
                                continue;
                            }
                            Kind::ConsumerDeleted => {
                                runtime.bound.store(false, Ordering::SeqCst);
                                tracing::error!(consumer = %runtime.durable, "the consumer was deleted; recreating it");
                                if let Err(e) =
                                    self.consumer(&runtime.durable, runtime.descriptor).await
                                {
                                    tracing::error!(error = %e, "cannot recreate the consumer");
                                }
                            }
                            _ => {
                                tracing::warn!(consumer = %runtime.durable, error = %e, "pull failed; reopening")
                            }
                        }
                        tokio::select! {
                            () = &mut draining => break 'connect,
                            () = tokio::time::sleep(Duration::from_millis(500)) => continue 'connect,
                        }
                    }
                    None => continue 'connect,
                };
                let Some((delivery, ack)) = self.to_delivery(message, &prefix) else {
                    continue;
                };
                let runtime = Arc::clone(&runtime);
                let ack_wait = self.settings.topology.ack_wait;
                // Made before the task: a task aborted before its first poll hands back too.
                let hand_back = HandBack {
                    ack: Some(ack.clone()),
                    sending: Arc::clone(&hand_backs),
                };
                let work = async move {
                    let progress = ack.clone();
                    tokio::select! {
                        biased;
                        () = runtime.deliver(delivery, ack, Some(permit)) => {}
                        () = keep_in_progress(progress, ack_wait) => {}
                    }
                    hand_back.disarm();
                };
                tasks.spawn(work);
                while tasks.try_join_next().is_some() {}
            }
        }
        super::finish_in_flight(&mut tasks, signals.stopped()).await;
        // The naks of cut-off handlers go out before the app closes the connection.
        if tokio::time::timeout(Duration::from_secs(5), hand_backs.wait_zero())
            .await
            .is_err()
        {
            tracing::debug!(
                "handing back cut-off messages timed out; they return after the ack wait"
            );
        }
    }

    fn to_delivery(&self, message: jetstream::Message, prefix: &str) -> Option<(Delivery, JsAck)> {
        let info = match message.info() {
            Ok(info) => (
                info.delivered,
                info.stream_sequence,
                SystemTime::from(info.published),
            ),
            Err(e) => {
                tracing::warn!(error = %e, subject = %message.subject, "a message without JetStream metadata; skipping it");
                return None;
            }
        };
        let (delivered, sequence, published) = info;
        let subject = message.subject.as_str();
        let name = subject.strip_prefix(prefix).unwrap_or(subject);
        let headers = message.headers.as_ref();
        let lookup = |key: &str| headers.and_then(|h| h.get(key)).map(|v| v.as_str());
        let (metadata, header_error) = wire::decode(name, &lookup, Some(sequence), Some(published));
        let attempt = u32::try_from(delivered.max(1)).unwrap_or(u32::MAX);
        let raw = RawEvent::new(metadata, message.payload.clone(), attempt);
        let delivery = Delivery {
            raw,
            redelivered: attempt > 1,
            header_error,
        };
        let ack = JsAck {
            reply: message.reply.clone(),
            sender: Arc::clone(&self.acks),
        };
        Some((delivery, ack))
    }
}

/// Naks a message whose handler was dropped unfinished (past the shutdown deadline), so that
/// another instance takes it now rather than after the ack wait. A nak after an ack is
/// ignored by the server. It also fires when a task unwinds from a panic outside the handler
/// (handler panics are caught): the message comes back at once, as in memory.
struct HandBack {
    ack: Option<JsAck>,
    sending: Arc<Outstanding>,
}

impl HandBack {
    fn disarm(mut self) {
        self.ack = None;
    }
}

impl Drop for HandBack {
    fn drop(&mut self) {
        let Some(ack) = self.ack.take() else { return };
        // Without a runtime (it is shutting down) the message returns after the ack wait.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let sending = Arc::clone(&self.sending);
            sending.add(1);
            runtime.spawn(async move {
                if let Err(e) = ack.send(AckKind::Nak(None)).await {
                    tracing::debug!(error = %e, "handing back a cut-off message failed; it returns after the ack wait");
                }
                sending.done();
            });
        }
    }
}

/// Hands back what was pulled but not started, so that another instance takes it now rather
/// than after the ack wait.
async fn release_buffered(messages: &mut consumer::pull::Stream) {
    while let Some(Some(Ok(message))) = messages.next().now_or_never() {
        if let Err(e) = message.ack_with(AckKind::Nak(None)).await {
            tracing::debug!(error = %e, "releasing a pulled message failed; it returns after the ack wait");
        }
    }
}

/// Sends in-progress acks every third of the ack wait while a handler runs, so the broker
/// does not redeliver a message that is still being worked on.
async fn keep_in_progress(ack: JsAck, ack_wait: Duration) {
    let period = (ack_wait / 3).max(Duration::from_millis(100));
    let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    loop {
        ticks.tick().await;
        // Boxed: the client's publish future is large, and this one is part of every
        // message's task while it is sent only for long handlers.
        if let Err(e) = Box::pin(ack.send(AckKind::Progress)).await {
            tracing::debug!(error = %e, "in-progress ack failed");
        }
    }
}

/// Messages the broker may hold unacked for one consumer (all instances together).
fn max_ack_pending(concurrency: u32) -> i64 {
    i64::from(concurrency.max(1))
        .saturating_mul(64)
        .clamp(256, 100_000)
}

/// Messages one instance pulls ahead of its handlers. A pulled message's ack wait runs while
/// it waits for a free handler, so the batch stays near the concurrency: a message waits for
/// at most about two handler runs before it starts (and then in-progress acks cover it).
fn fetch_batch(concurrency: u32) -> usize {
    (concurrency.max(1) as usize * 2).clamp(2, 1024)
}

fn is_code(error: &jetstream::context::GetStreamError, code: jetstream::ErrorCode) -> bool {
    matches!(error.kind(), jetstream::context::GetStreamErrorKind::JetStream(e) if e.error_code() == code)
}

fn consumer_missing(error: &jetstream::context::ConsumerInfoError) -> bool {
    use jetstream::context::ConsumerInfoErrorKind as Kind;
    match error.kind() {
        Kind::NotFound => true,
        Kind::JetStream(e) => e.error_code() == jetstream::ErrorCode::CONSUMER_NOT_FOUND,
        _ => false,
    }
}

fn connect_error(url: &str, error: &async_nats::ConnectError) -> Error {
    use async_nats::ConnectErrorKind as Kind;
    let message = match error.kind() {
        Kind::AuthorizationViolation | Kind::Authentication => format!(
            "the NATS server at `{url}` rejected the credentials ({error}): check EDA_NATS_USER/EDA_NATS_PASSWORD, EDA_NATS_TOKEN or EDA_NATS_CREDS"
        ),
        Kind::Tls => format!("TLS with the NATS server at `{url}` failed ({error}): check EDA_NATS_TLS_CA and the URL's host name"),
        Kind::TimedOut => format!("cannot connect to NATS at `{url}`: timed out; is nats-server running there?"),
        Kind::ServerParse | Kind::Dns => format!("cannot resolve the NATS URL `{url}`: {error}"),
        _ => format!("cannot connect to NATS at `{url}`: {error}; is nats-server running there?"),
    };
    broker_error(message)
}

/// The publishing side of JetStream.
struct JetStreamTransport {
    context: jetstream::Context,
    prefix: String,
}

impl fmt::Debug for JetStreamTransport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JetStreamTransport")
            .field("prefix", &self.prefix)
            .finish()
    }
}

fn event_headers(metadata: &crate::event::Metadata) -> HeaderMap {
    let mut headers = HeaderMap::new();
    // Static names: no parsing or allocation per header.
    wire::encode_into(metadata, |name, value| {
        headers.insert(async_nats::header::HeaderName::from_static(name), value)
    });
    headers
}

fn header_map(pairs: Vec<(&'static str, String)>) -> HeaderMap {
    let mut headers = HeaderMap::new();
    for (name, value) in pairs {
        headers.insert(name, value.as_str());
    }
    headers
}

fn publish_error(error: &jetstream::context::PublishError) -> PublishError {
    match error.kind() {
        jetstream::context::PublishErrorKind::TimedOut => PublishError::Timeout,
        _ => PublishError::Broker(error.to_string()),
    }
}

impl JetStreamTransport {
    async fn send(
        &self,
        subject: String,
        headers: HeaderMap,
        payload: Bytes,
    ) -> Result<jetstream::context::PublishAckFuture, PublishError> {
        self.context
            .publish_with_headers(subject, headers, payload)
            .await
            .map_err(|e| publish_error(&e))
    }

    fn subject(&self, message: &Outbound) -> String {
        format!("{}.{}", self.prefix, message.metadata.subject)
    }
}

impl Transport for JetStreamTransport {
    fn publish(&self, message: Outbound) -> BoxFuture<'_, Result<(), PublishError>> {
        Box::pin(async move {
            let subject = self.subject(&message);
            let headers = event_headers(&message.metadata);
            let ack = self.send(subject, headers, message.payload).await?;
            ack.await.map_err(|e| publish_error(&e))?;
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
                        result.map_err(|e| publish_error(&e))?;
                    }
                }
                let subject = self.subject(&message);
                let headers = event_headers(&message.metadata);
                let ack = self.send(subject, headers, message.payload).await?;
                pending.push(std::future::IntoFuture::into_future(ack));
            }
            while let Some(result) = pending.next().await {
                result.map_err(|e| publish_error(&e))?;
            }
            Ok(())
        })
    }

    fn dead_letter(&self, letter: DeadLetter) -> BoxFuture<'_, Result<(), PublishError>> {
        Box::pin(async move {
            let mut pairs = wire::encode(&letter.metadata);
            // One dead letter per event and handler, even if the publish is retried.
            for pair in pairs.iter_mut().filter(|(name, _)| *name == wire::MSG_ID) {
                pair.1 = format!(
                    "{}.{}.{}",
                    letter.service, letter.handler, letter.metadata.id
                );
            }
            pairs.push((wire::ORIGINAL_ID, letter.metadata.id.clone()));
            pairs.push((wire::DLQ_REASON, letter.reason.as_str().to_owned()));
            pairs.push((
                wire::DLQ_ERROR,
                header_safe(&truncated(&letter.error, 1024)),
            ));
            pairs.push((wire::DLQ_ATTEMPTS, letter.attempts.to_string()));
            pairs.push((wire::DLQ_HANDLER, letter.handler.clone()));
            pairs.push((
                wire::ORIGINAL_SUBJECT,
                format!("{}.{}", self.prefix, letter.metadata.subject),
            ));
            if let Some(sequence) = letter.metadata.sequence {
                pairs.push((wire::ORIGINAL_SEQ, sequence.to_string()));
            }
            let ack = self
                .send(letter.subject.clone(), header_map(pairs), letter.payload)
                .await?;
            ack.await.map_err(|e| publish_error(&e))?;
            Ok(())
        })
    }
}

/// A dead letter as stored on the dead-letter stream; `None` for messages eda did not write.
fn dead_letter_from(message: jetstream::Message, prefix: &str) -> Option<DeadLetter> {
    let headers = message.headers.as_ref()?;
    let borrowed = |key: &str| headers.get(key).map(|v| v.as_str());
    let header = |key: &str| borrowed(key).map(str::to_owned);
    let original_subject = borrowed(wire::ORIGINAL_SUBJECT)?;
    let name = original_subject
        .strip_prefix(prefix)
        .unwrap_or(original_subject);
    let sequence = borrowed(wire::ORIGINAL_SEQ).and_then(|s| s.parse().ok());
    let (metadata, _) = wire::decode(name, &borrowed, sequence, None);
    let mut metadata = Arc::unwrap_or_clone(metadata);
    if let Some(id) = header(wire::ORIGINAL_ID) {
        metadata.id = id;
    }
    let subject = message.subject.to_string();
    let mut parts = subject.splitn(3, '.').skip(1);
    Some(DeadLetter {
        service: parts.next().unwrap_or_default().to_owned(),
        handler: header(wire::DLQ_HANDLER).unwrap_or_default(),
        reason: DlqReason::parse(&header(wire::DLQ_REASON)?)?,
        error: header(wire::DLQ_ERROR).unwrap_or_default(),
        attempts: header(wire::DLQ_ATTEMPTS)
            .and_then(|a| a.parse().ok())
            .unwrap_or(0),
        metadata: Arc::new(metadata),
        payload: message.payload.clone(),
        subject,
    })
}

/// At most `max` bytes of `text` (on a character boundary), marked when cut: a dead letter's
/// error must not push it over the server's message size.
fn truncated(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_owned();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}

/// Header values cannot hold line breaks.
fn header_safe(text: &str) -> String {
    text.replace(['\r', '\n'], " ")
}

/// What the acks of every message of one connection share (one `Arc` per message: cloning a
/// JetStream context, as `Acker` needs, allocates).
struct AckSender {
    client: async_nats::Client,
    context: jetstream::Context,
    /// Fault injection for tests: acks still to lose.
    lost_acks: AtomicU32,
}

/// Acks one JetStream message.
#[derive(Clone)]
struct JsAck {
    reply: Option<async_nats::Subject>,
    sender: Arc<AckSender>,
}

impl JsAck {
    /// Sends `kind` on the message's reply subject without waiting for the server (as
    /// async-nats' own `ack_with` does).
    async fn send(&self, kind: AckKind) -> Result<(), async_nats::Error> {
        let reply = self
            .reply
            .clone()
            .ok_or("not a JetStream message: it has no reply subject")?;
        self.sender.client.publish(reply, kind.into()).await?;
        Ok(())
    }
}

impl Acknowledge for JsAck {
    async fn ack(self) {
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

    async fn nak(self, delay: Duration) {
        if let Err(e) = self.send(AckKind::Nak(Some(delay))).await {
            tracing::warn!(error = %e, "nak failed; the message will be redelivered after the ack wait");
        }
    }

    async fn term(self) {
        // Confirmed by the server: the dead letter is stored, the original must stop.
        let acker = jetstream::message::Acker::new(self.sender.context.clone(), self.reply);
        if let Err(e) = acker.double_ack_with(AckKind::Term).await {
            tracing::warn!(error = %e, "terminating a dead-lettered message was not confirmed; a redelivery will dead-letter it again (deduplicated)");
        }
    }
}

/// Processed ids in a JetStream key-value bucket; `record` is the bucket's atomic create.
struct KvStore {
    bucket: kv::Store,
}

impl fmt::Debug for KvStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("KvStore")
    }
}

/// KV keys allow `[-/_=.a-zA-Z0-9]`: ids from plain clients outside that set are hashed.
fn kv_key(key: &str) -> String {
    let plain = key.len() <= 256
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-/_=.".contains(c))
        && !key.starts_with('.')
        && !key.ends_with('.')
        && !key.contains("..");
    if plain {
        return key.to_owned();
    }
    let digest = Sha256::digest(key.as_bytes());
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

impl IdempotencyStore for KvStore {
    fn contains<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<bool, StoreError>> {
        Box::pin(async move {
            self.bucket
                .get(kv_key(key))
                .await
                .map(|v| v.is_some())
                .map_err(|e| StoreError(e.to_string()))
        })
    }

    fn record<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Recorded, StoreError>> {
        Box::pin(async move {
            match self.bucket.create(kv_key(key), Bytes::new()).await {
                Ok(_) => Ok(Recorded::Created),
                Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => {
                    Ok(Recorded::AlreadyPresent)
                }
                Err(e) => Err(StoreError(e.to_string())),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_errors_are_cut_on_a_character_boundary() {
        assert_eq!(truncated("short", 10), "short");
        assert_eq!(truncated("ééé", 3), "é…");
    }

    #[test]
    fn kv_keys_are_kept_when_valid_and_hashed_otherwise() {
        assert_eq!(kv_key("svc.handler.0190-abc"), "svc.handler.0190-abc");
        assert_eq!(
            kv_key("svc.handler.a..b").len(),
            64,
            "an empty token is hashed"
        );
        assert_eq!(kv_key(&"x".repeat(300)).len(), 64, "a long key is hashed");
        let hashed = kv_key("svc.handler.order 7:placed");
        assert_eq!(hashed.len(), 64);
        assert!(hashed.chars().all(|c| c.is_ascii_hexdigit()));
    }

    #[test]
    fn limits_grow_with_concurrency() {
        assert_eq!(max_ack_pending(1), 256);
        assert_eq!(max_ack_pending(64), 4096);
        assert_eq!(fetch_batch(1), 2);
        assert_eq!(fetch_batch(100), 200);
    }
}
