//! Publishing events: [`Publisher`] and [`PublishOptions`].

use std::any::TypeId;
use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock, RwLock};

use bytes::Bytes;
use tokio::time::Instant;
use tracing::Instrument;

use crate::app::AppShared;
use crate::error::PublishError;
use crate::event::{Event, Metadata};
use crate::observe::{trace, PublishMetrics};
use crate::transport::Outbound;

/// Overrides for one publish.
#[derive(Debug, Clone, Default)]
#[must_use]
pub struct PublishOptions {
    id: Option<String>,
    correlation_id: Option<String>,
    causation_id: Option<String>,
    traceparent: Option<String>,
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

    /// Continue the W3C trace of `traceparent` (the event gets a child span id); without
    /// it, each event published outside a handler starts a new trace.
    pub fn traceparent(mut self, traceparent: impl Into<String>) -> Self {
        self.traceparent = Some(traceparent.into());
        self
    }
}

/// Publishes events from outside handlers (inside a handler use `Context::publish`).
/// `Ok` means the broker stored the event.
#[derive(Clone)]
pub struct Publisher {
    app: Arc<AppShared>,
}

impl Publisher {
    pub(crate) fn new(app: Arc<AppShared>) -> Publisher {
        Publisher { app }
    }

    /// Publishes one event and waits for the broker to store it; returns its id.
    pub async fn publish<E: Event>(&self, event: &E) -> Result<String, PublishError> {
        send(&self.app, event, PublishOptions::default()).await
    }

    /// Publishes one event with explicit ids.
    pub async fn publish_with<E: Event>(
        &self,
        event: &E,
        options: PublishOptions,
    ) -> Result<String, PublishError> {
        send(&self.app, event, options).await
    }

    /// Publishes a payload as event `name` of `version` without a Rust type (bridges, replays,
    /// tests of bad payloads); returns its id once stored.
    pub async fn publish_raw(
        &self,
        name: &str,
        version: u32,
        payload: impl Into<Bytes>,
    ) -> Result<String, PublishError> {
        let mut metadata = Metadata::new(name, version, self.app.service());
        metadata.traceparent = Some(trace::new_traceparent());
        let message = Outbound {
            metadata: Arc::new(metadata),
            payload: payload.into(),
            explicit_id: false,
        };
        store(&self.app, message).await
    }

    /// Publishes many events with their broker confirmations in flight together (pipelined);
    /// returns their ids in order once every one is stored. On error some may be stored:
    /// publishing the same ids again is safe (the broker drops repeats).
    pub async fn publish_all<'a, E, I>(&self, events: I) -> Result<Vec<String>, PublishError>
    where
        E: Event,
        I: IntoIterator<Item = &'a E>,
        I::IntoIter: Send,
    {
        let source = self.app.service();
        let mut ids = Vec::new();
        let started = Instant::now();
        let mut messages = events.into_iter().map(|event| {
            let message = outbound(event, PublishOptions::default(), source)?;
            ids.push(message.metadata.id.clone());
            Ok(message)
        });
        let result = self
            .app
            .transport()
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
            .field("service", &self.app.service())
            .finish()
    }
}

pub(crate) async fn send<E: Event>(
    app: &AppShared,
    event: &E,
    options: PublishOptions,
) -> Result<String, PublishError> {
    let message = outbound(event, options, app.service())?;
    store(app, message).await
}

/// Hands one message to the transport, traced and counted; returns its id once stored.
async fn store(app: &AppShared, message: Outbound) -> Result<String, PublishError> {
    let id = message.metadata.id.clone();
    let name = message.metadata.name.clone();
    let span = tracing::info_span!("eda.publish", event = %name, id = %id);
    let started = Instant::now();
    app.transport().publish(message).instrument(span).await?;
    PublishMetrics::of(&name).stored(1, started.elapsed());
    Ok(id)
}

/// Serializes an event and builds its metadata.
pub(crate) fn outbound<E: Event>(
    event: &E,
    options: PublishOptions,
    source: &str,
) -> Result<Outbound, PublishError> {
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
    let payload = to_json(event).map_err(PublishError::Encode)?;
    let mut metadata = Metadata::new(E::NAME, E::VERSION, source);
    let explicit_id = options.id.is_some();
    if let Some(id) = options.id {
        metadata.correlation_id.clone_from(&id);
        metadata.id = id;
    }
    if let Some(correlation) = options.correlation_id {
        metadata.correlation_id = correlation;
    }
    metadata.causation_id = options.causation_id;
    metadata.traceparent = Some(trace::child_of(options.traceparent.as_deref()));
    metadata.schema = Some(cached_fingerprint::<E>());
    Ok(Outbound {
        metadata: Arc::new(metadata),
        payload: Bytes::from(payload),
        explicit_id,
    })
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

/// Fingerprints cost a schema generation and a hash: compute each type's once.
fn cached_fingerprint<E: Event>() -> String {
    static CACHE: OnceLock<RwLock<HashMap<TypeId, String>>> = OnceLock::new();
    let cache = CACHE.get_or_init(Default::default);
    let key = TypeId::of::<E>();
    if let Some(found) = cache.read().ok().and_then(|map| map.get(&key).cloned()) {
        return found;
    }
    let fingerprint = E::fingerprint();
    if let Ok(mut map) = cache.write() {
        map.insert(key, fingerprint.clone());
    }
    fingerprint
}
