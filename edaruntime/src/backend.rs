//! The broker an app is bound to, in memory or on NATS: every place the app and the test
//! helpers would otherwise match on the transport, once.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;

use crate::aggregate::{answer_rebuild, projection_rebuild_subject, ProjectionControl};
use crate::config::NatsSettings;
use crate::delivery::{HandlerRuntime, RuntimeSet};
use crate::dlq::DeadLetter;
use crate::error::Result;
use crate::event::RawEvent;
use crate::idempotency::IdempotencyStore;
use crate::lifecycle::Signals;
use crate::port::{EventLog, Transport};
use crate::transport::jetstream::{Answer, JetStream};
use crate::transport::memory::MemoryBroker;

/// Where an app's events travel, as configured.
#[derive(Debug, Clone)]
pub(crate) enum BackendChoice {
    Memory(MemoryBroker),
    Nats(Box<NatsSettings>),
}

/// The broker a running app is bound to.
#[derive(Debug, Clone)]
pub(crate) enum Backend {
    Memory(MemoryBroker),
    Nats(Arc<JetStream>),
}

/// A connected backend with its publishing side and processed-id store.
pub(crate) struct Opened {
    pub(crate) backend: Backend,
    pub(crate) transport: Arc<dyn Transport>,
    pub(crate) store: Arc<dyn IdempotencyStore>,
    /// Where aggregates' events and snapshots are stored (event sourcing).
    pub(crate) log: Arc<dyn EventLog>,
}

/// How often consumer backlogs are read from the broker for the gauges.
const BACKLOG_POLL: Duration = Duration::from_secs(5);

impl Backend {
    /// Connects and provisions (on NATS, bounded by the connect timeout).
    pub(crate) async fn open(choice: &BackendChoice, service: &str) -> Result<Opened> {
        match choice {
            BackendChoice::Memory(broker) => Ok(Opened {
                transport: broker.transport(),
                store: broker.store(),
                log: broker.event_log(),
                backend: Backend::Memory(broker.clone()),
            }),
            BackendChoice::Nats(settings) => {
                let js = Arc::new(JetStream::connect(settings, service).await?);
                js.provision().await?;
                Ok(Opened {
                    store: js.store().await?,
                    transport: js.transport(),
                    log: js.event_log(),
                    backend: Backend::Nats(js),
                })
            }
        }
    }

    /// Binds a handler's consumer (creating it if missing; on NATS also the consumer of its
    /// redriven dead letters); returns its consume loop, to be spawned.
    pub(crate) async fn bind(
        &self,
        runtime: &Arc<HandlerRuntime>,
        signals: Signals,
    ) -> Result<BoxFuture<'static, ()>> {
        let runtime = Arc::clone(runtime);
        match self {
            Backend::Memory(broker) => {
                let descriptor = runtime.descriptor;
                let consumer = broker.consumer(
                    runtime.durable(),
                    descriptor.subject,
                    descriptor.options.start,
                );
                let broker = broker.clone();
                Ok(Box::pin(async move {
                    broker.consume(runtime, consumer, signals).await
                }))
            }
            Backend::Nats(js) => {
                let info = js.consumer(runtime.durable(), runtime.descriptor).await?;
                js.redrive_consumer(&runtime.names, runtime.descriptor)
                    .await?;
                let acknowledged = info.ack_floor.stream_sequence;
                let js = Arc::clone(js);
                Ok(Box::pin(js.consume(runtime, acknowledged, signals)))
            }
        }
    }

    /// Work the backend does beside consuming while the app runs (on NATS: reading each
    /// consumer's backlog into the gauges and its acknowledged position, and one of this
    /// binary's schema registry entries, checked against its fingerprint).
    pub(crate) fn background(&self, runtimes: &RuntimeSet) -> Option<BoxFuture<'static, ()>> {
        let Backend::Nats(js) = self else { return None };
        let (js, runtimes) = (Arc::clone(js), runtimes.clone());
        Some(Box::pin(async move {
            let mut ticks = tokio::time::interval(BACKLOG_POLL);
            let mut schemas = js.schema_watch();
            loop {
                ticks.tick().await;
                for runtime in &runtimes.snapshot() {
                    if let Ok(backlog) = js.pending(runtime.durable()).await {
                        runtime
                            .metrics
                            .consumer_backlog(backlog.pending, backlog.ack_pending);
                        runtime
                            .acknowledged
                            .store(backlog.acknowledged, Ordering::SeqCst);
                    }
                }
                js.check_next_schema(&mut schemas).await;
            }
        }))
    }

    /// Lets go of a handler's consumer for good (a trigger a reload removed, drained): in
    /// memory it is dropped from the broker; on NATS its durable consumer stays on the server,
    /// as a handler's does when it leaves the code.
    pub(crate) fn unbind(&self, durable: &str) {
        if let Backend::Memory(broker) = self {
            broker.drop_consumer(durable);
        }
    }

    /// On NATS: answering requests to rebuild the app's projections
    /// ([`crate::projection_rebuild_subject`]) for as long as the app runs. In memory there is
    /// no one else to ask: `RunningApp::rebuild_projection` is the way.
    pub(crate) fn serve_rebuilds(
        &self,
        service: &str,
        controls: Vec<ProjectionControl>,
    ) -> Option<BoxFuture<'static, ()>> {
        let Backend::Nats(js) = self else { return None };
        if controls.is_empty() {
            return None;
        }
        let controls = Arc::new(controls);
        let answer: Answer = Arc::new(move |name, reply| {
            let controls = Arc::clone(&controls);
            Box::pin(async move {
                answer_rebuild(&controls, &name, |answer| {
                    // An enum of strings and numbers always serializes.
                    let json = serde_json::to_vec(&answer).unwrap_or_default();
                    reply(json)
                })
                .await;
            })
        });
        Some(Box::pin(
            Arc::clone(js).serve(projection_rebuild_subject(service), answer),
        ))
    }

    /// Whether the app is connected to its broker (always, in memory).
    pub(crate) fn is_connected(&self) -> bool {
        match self {
            Backend::Memory(_) => true,
            Backend::Nats(js) => js.is_connected(),
        }
    }

    /// Resolves once `runtimes` have nothing left (see `RunningApp::settle`).
    pub(crate) async fn settle(&self, runtimes: &[Arc<HandlerRuntime>], limit: Duration) {
        match self {
            Backend::Memory(broker) => broker.wait_idle().await,
            Backend::Nats(js) => {
                let durables: Vec<String> =
                    runtimes.iter().map(|r| r.durable().to_owned()).collect();
                js.settle(&durables, limit).await;
            }
        }
    }

    /// Every dead letter the broker holds, oldest first.
    pub(crate) async fn dead_letters(&self) -> Result<Vec<DeadLetter>> {
        match self {
            Backend::Memory(broker) => Ok(broker.dead_letters()),
            Backend::Nats(js) => js.dead_letters().await,
        }
    }

    /// Every published event the broker holds, oldest first.
    pub(crate) async fn events(&self) -> Result<Vec<RawEvent>> {
        match self {
            Backend::Memory(broker) => Ok(broker.messages()),
            Backend::Nats(js) => js.events().await,
        }
    }

    /// Fault injection for tests: the next `count` acks are lost.
    pub(crate) fn lose_next_acks(&self, count: u32) {
        match self {
            Backend::Memory(broker) => broker.lose_next_acks(count),
            Backend::Nats(js) => js.lose_next_acks(count),
        }
    }

    /// Flushes and closes the connection.
    pub(crate) async fn close(&self) {
        if let Backend::Nats(js) = self {
            js.close().await;
        }
    }
}
