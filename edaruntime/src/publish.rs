//! Publishing events: [`Publisher`] and [`PublishOptions`].

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock, PoisonError, RwLock};
use std::time::SystemTime;

use bytes::Bytes;
use tokio::time::Instant;
use tracing::Instrument;

use sha2::{Digest, Sha256};

use crate::error::PublishError;
use crate::event::{Event, Metadata};
use crate::observe::{trace, PublishMetrics};
use crate::port::{Outbound, Transport};

/// Overrides for one publish.
#[derive(Debug, Clone, Default)]
#[must_use]
pub struct PublishOptions {
    id: Option<String>,
    correlation_id: Option<String>,
    causation_id: Option<String>,
    traceparent: Option<String>,
    time: Option<SystemTime>,
}

impl PublishOptions {
    /// Use this event id instead of a new UUID v7 (e.g. when re-publishing from an outbox:
    /// the broker drops a repeat inside its duplicate window).
    pub fn id(mut self, id: impl Into<String>) -> Self {
        self.id = Some(id.into());
        self
    }

    /// Join an existing conversation.
    pub fn correlation_id(mut self, id: impl Into<String>) -> Self {
        self.correlation_id = Some(id.into());
        self
    }

    /// Name the event that caused this one.
    pub fn causation_id(mut self, id: impl Into<String>) -> Self {
        self.causation_id = Some(id.into());
        self
    }

    /// Continue the W3C trace of `traceparent` (the event gets a child span id). Without it
    /// an event published outside a handler carries no trace; the handlers of such an event
    /// each start one, which their follow-up events carry.
    pub fn traceparent(mut self, traceparent: impl Into<String>) -> Self {
        self.traceparent = Some(traceparent.into());
        self
    }

    /// The event happened at `time`, not now (e.g. republishing an event from an outbox or
    /// an archive): it travels as `Eda-Time`. Without it the event time is when the broker
    /// stored it.
    pub fn time(mut self, time: SystemTime) -> Self {
        self.time = Some(time);
        self
    }
}

/// Publishes events from outside handlers (inside a handler use `Context::publish`).
/// `Ok` means the broker stored the event.
#[derive(Clone)]
pub struct Publisher {
    /// The publishing service (`Eda-Source`).
    service: Arc<str>,
    transport: Arc<dyn Transport>,
}

impl Publisher {
    pub(crate) fn new(service: Arc<str>, transport: Arc<dyn Transport>) -> Publisher {
        Publisher { service, transport }
    }

    /// The service this publisher publishes as.
    pub fn service(&self) -> &str {
        &self.service
    }

    /// Publishes one event and waits for the broker to store it; returns its id.
    pub async fn publish<E: Event>(&self, event: &E) -> Result<String, PublishError> {
        self.send(event, PublishOptions::default()).await
    }

    /// Publishes one event with explicit ids.
    pub async fn publish_with<E: Event>(
        &self,
        event: &E,
        options: PublishOptions,
    ) -> Result<String, PublishError> {
        self.send(event, options).await
    }

    /// Publishes a payload as event `name` of `version` without a Rust type (bridges, replays,
    /// tests of bad payloads); returns its id once stored. A name that is no single subject
    /// (empty, an empty token, white space, a `*` or `>` token) is [`PublishError::Invalid`].
    pub async fn publish_raw(
        &self,
        name: &str,
        version: u32,
        payload: impl Into<Bytes>,
    ) -> Result<String, PublishError> {
        check_subject_name(name)?;
        let message = Outbound {
            metadata: Arc::new(Metadata::new(name, version, Arc::clone(&self.service))),
            payload: payload.into(),
            explicit_id: false,
            explicit_time: false,
        };
        self.store(message).await
    }

    /// Publishes many events with their broker confirmations in flight together (pipelined);
    /// returns their ids in order once every one is stored. On error some may be stored, and
    /// their ids are not returned: each event gets a fresh id, so calling `publish_all` again
    /// stores those twice. Where a retry must not duplicate, give each event its own id with
    /// [`Publisher::publish_with`] and [`PublishOptions::id`] (the broker then drops repeats
    /// inside its duplicate window).
    pub async fn publish_all<'a, E, I>(&self, events: I) -> Result<Vec<String>, PublishError>
    where
        E: Event,
        I: IntoIterator<Item = &'a E>,
        I::IntoIter: Send,
    {
        let (name, source) = (shared_name(E::NAME), &self.service);
        let mut ids = Vec::new();
        let started = Instant::now();
        let mut messages = events.into_iter().map(|event| {
            let message = outbound(event, PublishOptions::default(), &name, source)?;
            ids.push(message.metadata.id.clone());
            Ok(message)
        });
        let result = self
            .transport
            .publish_many(&mut messages)
            .instrument(tracing::info_span!("eda.publish", event = E::NAME))
            .await;
        drop(messages);
        let count = ids.len() as u64;
        result?;
        PublishMetrics::of(E::NAME).stored(count, started.elapsed());
        Ok(ids)
    }
}

impl fmt::Debug for Publisher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Publisher")
            .field("service", &self.service)
            .finish()
    }
}

impl Publisher {
    pub(crate) async fn send<E: Event>(
        &self,
        event: &E,
        options: PublishOptions,
    ) -> Result<String, PublishError> {
        let message = outbound(event, options, &shared_name(E::NAME), &self.service)?;
        self.store(message).await
    }

    /// [`Publisher::publish_raw`] with options (a handler's follow-up of a raw event).
    pub(crate) async fn send_raw(
        &self,
        name: &str,
        version: u32,
        payload: Bytes,
        options: PublishOptions,
    ) -> Result<String, PublishError> {
        check_subject_name(name)?;
        check_options(&options)?;
        let message = with_options(Arc::from(name), version, payload, options, &self.service);
        self.store(message).await
    }

    /// Hands one message to the transport, traced and counted; returns its id once stored.
    async fn store(&self, message: Outbound) -> Result<String, PublishError> {
        let id = message.metadata.id.clone();
        let name = message.metadata.name.clone();
        let span = tracing::info_span!("eda.publish", event = %name, id = %id);
        let started = Instant::now();
        self.transport.publish(message).instrument(span).await?;
        PublishMetrics::of(&name).stored(1, started.elapsed());
        Ok(id)
    }
}

/// The id of the `index`-th event (0-based) of one name a handler publishes while handling
/// an event — `parts` are the service, the handler, the causing event's id and the published
/// event's name: a UUID v8 made of a SHA-256 of them. A handler run again after a failure
/// publishes the same ids, so the broker's duplicate window (and downstream idempotency)
/// absorbs the repeats; two services, two handlers or two event types never share one.
/// An event name must name one subject: typed events are checked at compile time, raw names
/// here (a wildcard would be stored literally and reach the wrong handlers).
fn check_subject_name(name: &str) -> Result<(), PublishError> {
    let why = if name.is_empty() {
        Some("it is empty")
    } else if name.chars().any(char::is_whitespace) {
        Some("it contains white space")
    } else if name.split('.').any(str::is_empty) {
        Some("it has an empty token")
    } else if name.split('.').any(|t| t == "*" || t == ">") {
        Some("wildcards subscribe, they do not publish")
    } else {
        None
    };
    match why {
        Some(why) => Err(PublishError::Invalid(format!(
            "cannot publish event `{name}`: {why}; an event name is one subject, e.g. `user.created`"
        ))),
        None => Ok(()),
    }
}

pub(crate) fn derived_id(parts: [&str; 4], index: u32) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut hash = Sha256::new();
    for part in parts {
        hash.update(part.as_bytes());
        hash.update([0]);
    }
    hash.update(index.to_le_bytes());
    let digest = hash.finalize();
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&digest[..16]);
    bytes[6] = (bytes[6] & 0x0f) | 0x80; // version 8
    bytes[8] = (bytes[8] & 0x3f) | 0x80; // RFC 9562 variant
    let mut id = String::with_capacity(36);
    for (i, byte) in bytes.iter().enumerate() {
        if matches!(i, 4 | 6 | 8 | 10) {
            id.push('-');
        }
        id.push(char::from(HEX[usize::from(byte >> 4)]));
        id.push(char::from(HEX[usize::from(byte & 0x0f)]));
    }
    id
}

/// Serializes an event and builds its metadata.
pub(crate) fn outbound<E: Event>(
    event: &E,
    options: PublishOptions,
    name: &Arc<str>,
    source: &Arc<str>,
) -> Result<Outbound, PublishError> {
    check_options(&options)?;
    let payload = to_json(event).map_err(PublishError::Encode)?;
    Ok(with_options(
        Arc::clone(name),
        E::VERSION,
        Bytes::from(payload),
        options,
        source,
    ))
}

/// The options' ids and traceparent travel as headers: non-empty, on one line.
fn check_options(options: &PublishOptions) -> Result<(), PublishError> {
    for (what, value) in [
        ("event id", &options.id),
        ("correlation id", &options.correlation_id),
        ("causation id", &options.causation_id),
        ("traceparent", &options.traceparent),
    ] {
        if let Some(value) = value {
            if value.is_empty() || value.contains(['\r', '\n']) {
                return Err(PublishError::Invalid(format!(
                    "the {what} `{}` must be non-empty and on one line (it travels as a header)",
                    value.escape_debug()
                )));
            }
        }
    }
    Ok(())
}

/// A message of event `name` with `options` applied to its metadata.
fn with_options(
    name: Arc<str>,
    version: u32,
    payload: Bytes,
    options: PublishOptions,
    source: &Arc<str>,
) -> Outbound {
    let mut metadata = Metadata::new(name, version, Arc::clone(source));
    let explicit_id = options.id.is_some();
    if let Some(id) = options.id {
        metadata.correlation_id.clone_from(&id);
        metadata.id = id;
    }
    if let Some(correlation) = options.correlation_id {
        metadata.correlation_id = correlation;
    }
    metadata.causation_id = options.causation_id;
    metadata.traceparent = options
        .traceparent
        .map(|parent| trace::child_of(Some(&parent)));
    let explicit_time = options.time.is_some();
    if let Some(time) = options.time {
        metadata.time = time;
    }
    Outbound {
        metadata: Arc::new(metadata),
        payload,
        explicit_id,
        explicit_time,
    }
}

/// The event name `name` as one shared string: every event of a type points at it instead of
/// owning a copy (freed, per message, on the consumer's thread).
fn shared_name(name: &'static str) -> Arc<str> {
    static NAMES: OnceLock<RwLock<HashMap<&'static str, Arc<str>>>> = OnceLock::new();
    let names = NAMES.get_or_init(Default::default);
    if let Some(shared) = names
        .read()
        .unwrap_or_else(PoisonError::into_inner)
        .get(name)
    {
        return Arc::clone(shared);
    }
    let mut names = names.write().unwrap_or_else(PoisonError::into_inner);
    Arc::clone(names.entry(name).or_insert_with(|| name.into()))
}

/// Serializes into a buffer sized like the payloads before it, so that serializing does not
/// grow the buffer step by step (each step a reallocation and a copy).
fn to_json<E: serde::Serialize>(event: &E) -> Result<Vec<u8>, serde_json::Error> {
    static SIZE_HINT: AtomicUsize = AtomicUsize::new(256);
    let hint = SIZE_HINT.load(Ordering::Relaxed);
    let mut buffer = Vec::with_capacity(hint);
    serde_json::to_writer(&mut buffer, event)?;
    // Written only on a change of size class: publishers on several threads do not fight
    // over the cache line.
    let wanted = buffer.len().next_power_of_two().clamp(64, 64 * 1024);
    if wanted != hint {
        SIZE_HINT.store(wanted, Ordering::Relaxed);
    }
    // A small event after large ones (the hint is shared by every type) must not keep the
    // large buffer: the in-memory broker retains payloads.
    if buffer.capacity() > 2 * buffer.len() + 64 {
        buffer.shrink_to_fit();
    }
    Ok(buffer)
}

#[cfg(test)]
mod tests {
    use super::derived_id;

    #[test]
    fn derived_ids_are_stable_uuid_v8_and_differ_by_every_part_and_the_index() {
        let of = |service, handler, cause, name, index| {
            derived_id([service, handler, cause, name], index)
        };
        let id = of("shop", "ship", "0190-cause", "order.shipped", 0);
        assert_eq!(id, of("shop", "ship", "0190-cause", "order.shipped", 0));
        assert_eq!(id.len(), 36);
        assert_eq!(id.as_bytes()[14], b'8', "version 8: {id}");
        assert!(
            matches!(id.as_bytes()[19], b'8' | b'9' | b'a' | b'b'),
            "variant: {id}"
        );
        for other in [
            of("shop", "ship", "0190-cause", "order.shipped", 1),
            of("shop", "bill", "0190-cause", "order.shipped", 0),
            of("shop", "ship", "0190-other", "order.shipped", 0),
            of("shop", "ship", "0190-cause", "order.billed", 0),
            of("depot", "ship", "0190-cause", "order.shipped", 0),
        ] {
            assert_ne!(id, other);
        }
    }
}
