//! Test helpers: [`TestApp`] runs handlers on an in-memory broker and lets a test wait until
//! everything settled; [`TestContext`] calls one handler function directly; [`NatsServer`] and
//! [`NatsCluster`] run real `nats-server` processes for tests, [`PostgresServer`] a real
//! PostgreSQL server.

mod nats;
mod postgres;
pub use nats::{nats_server_binary, NatsCluster, NatsServer, TestServerError};
pub use postgres::PostgresServer;

use std::fmt;
use std::sync::Arc;

use crate::app::{AppBuilder, RunningApp};
use crate::delivery::HandlerStats;
use crate::dlq::DeadLetter;
use crate::error::{PublishError, Result};
use crate::event::{Event, Metadata, RawEvent};
use crate::handler::{Context, Scope, StateMap};
use crate::publish::Publisher;
use crate::transport::memory::MemoryBroker;
use crate::App;

/// An app for tests: on an in-memory broker that keeps every message (the default), or on
/// a real NATS server ([`TestAppBuilder::nats`]) with the same API, so one test runs on both.
///
/// ```
/// use eda::prelude::*;
/// use eda::testing::TestApp;
///
/// #[event("greeting.sent")]
/// pub struct GreetingSent { pub to: String }
///
/// #[handler(service = "doc-greeter")]
/// async fn log_greeting(event: GreetingSent) {
///     assert!(!event.to.is_empty());
/// }
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> eda::Result<()> {
/// let app = TestApp::start("doc-greeter").await?;
/// app.publish(&GreetingSent { to: "ada".into() }).await?;
/// app.settle().await;
/// assert_eq!(app.handled("log_greeting"), 1);
/// # Ok(()) }
/// ```
pub struct TestApp {
    app: RunningApp,
}

impl TestApp {
    /// Configures a test app for `service` (every handler of that service, unless narrowed).
    pub fn builder(service: impl Into<String>) -> TestAppBuilder {
        let broker = MemoryBroker::new().with_retention(usize::MAX);
        TestAppBuilder {
            builder: App::builder(service).memory_broker(broker),
        }
    }

    /// Starts every handler of `service`.
    pub async fn start(service: impl Into<String>) -> Result<TestApp> {
        TestApp::builder(service).start().await
    }

    /// Publishes an event as this service.
    pub async fn publish<E: Event>(&self, event: &E) -> Result<String, PublishError> {
        self.app.publisher().publish(event).await
    }

    /// A publisher, for `publish_with` and `publish_all`.
    pub fn publisher(&self) -> Publisher {
        self.app.publisher()
    }

    /// Resolves once no message is queued, in flight or waiting for a retry. In memory under
    /// tokio's paused clock (`#[tokio::test(start_paused = true)]`) retry delays pass
    /// instantly; on NATS it polls the consumers of this app until none has a message pending
    /// or unacknowledged and the streams stopped growing (at most two minutes).
    pub async fn settle(&self) {
        self.app.settle().await;
    }

    /// Every published event of type `E` (by name, upcast from older versions), in order.
    pub async fn published<E: Event>(&self) -> Result<Vec<E>> {
        Ok(self
            .published_raw()
            .await?
            .iter()
            .filter(|m| m.name() == E::NAME)
            .filter_map(|m| m.decode::<E>().ok())
            .collect())
    }

    /// Every published message, undecoded (to check metadata).
    pub async fn published_raw(&self) -> Result<Vec<RawEvent>> {
        self.app.backend().events().await
    }

    /// Every dead letter so far.
    pub async fn dead_letters(&self) -> Result<Vec<DeadLetter>> {
        self.app.dead_letters().await
    }

    /// How many messages handler `name` handled successfully.
    pub fn handled(&self, name: &str) -> u64 {
        self.stats(name).handled
    }

    /// Everything handler `name` did (zeros if this app does not run it).
    pub fn stats(&self, name: &str) -> HandlerStats {
        self.app.stats(name).unwrap_or_default()
    }

    /// Fault injection: the next `count` acks are lost, as if the process died between
    /// recording its work and acking, so those messages are delivered again (on NATS after
    /// the ack wait).
    pub fn lose_next_acks(&self, count: u32) {
        self.app.backend().lose_next_acks(count)
    }

    /// The running app underneath.
    pub fn app(&self) -> &RunningApp {
        &self.app
    }

    /// Shuts the app down gracefully.
    pub async fn shutdown(self) -> Result<()> {
        self.app.shutdown().await
    }
}

impl fmt::Debug for TestApp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TestApp").field("app", &self.app).finish()
    }
}

/// Configures a [`TestApp`].
#[must_use]
pub struct TestAppBuilder {
    builder: AppBuilder,
}

impl TestAppBuilder {
    /// Provide a `State<T>` value.
    pub fn state<T: Send + Sync + 'static>(mut self, value: T) -> Self {
        self.builder = self.builder.state(value);
        self
    }

    /// Provide a `State<T>` value the test keeps a handle to.
    pub fn shared_state<T: Send + Sync + 'static>(mut self, value: Arc<T>) -> Self {
        self.builder = self.builder.shared_state(value);
        self
    }

    /// Run only these handlers.
    pub fn handlers(mut self, names: &[&str]) -> Self {
        self.builder = self.builder.handlers(names);
        self
    }

    /// Use this in-memory broker (e.g. one shared with another app, or with another
    /// duplicate window).
    pub fn broker(mut self, broker: MemoryBroker) -> Self {
        self.builder = self.builder.memory_broker(broker);
        self
    }

    /// Run on the NATS server at `url` (e.g. [`NatsServer::url`]); the `EDA_*` environment
    /// is ignored so a test never reaches another server.
    pub fn nats(mut self, url: impl Into<String>) -> Self {
        self.builder = self.builder.nats(url).without_env();
        self
    }

    /// Adjust the underlying [`AppBuilder`].
    pub fn configure(mut self, f: impl FnOnce(AppBuilder) -> AppBuilder) -> Self {
        self.builder = f(self.builder);
        self
    }

    /// Builds and starts it.
    pub async fn start(self) -> Result<TestApp> {
        Ok(TestApp {
            app: self.builder.start().await?,
        })
    }
}

impl fmt::Debug for TestAppBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TestAppBuilder").finish_non_exhaustive()
    }
}

/// A [`Context`] for calling a handler function directly, capturing what it publishes.
///
/// ```
/// use eda::prelude::*;
/// use eda::testing::TestContext;
///
/// #[event("order.placed")]
/// pub struct OrderPlaced { pub id: u64 }
/// #[event("order.confirmed")]
/// pub struct OrderConfirmed { pub id: u64 }
///
/// #[handler(service = "doc-orders")]
/// async fn confirm(event: OrderPlaced, ctx: Context) -> Result<(), HandlerError> {
///     ctx.publish(&OrderConfirmed { id: event.id }).await?;
///     Ok(())
/// }
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let test = TestContext::new("doc-orders");
/// let event = OrderPlaced { id: 7 };
/// confirm(OrderPlaced { id: 7 }, test.context_for(&event)).await.unwrap();
/// assert_eq!(test.published::<OrderConfirmed>()[0].id, 7);
/// # }
/// ```
pub struct TestContext {
    broker: MemoryBroker,
    service: String,
    states: StateMap,
}

impl TestContext {
    /// A context factory for `service`.
    pub fn new(service: impl Into<String>) -> TestContext {
        TestContext {
            broker: MemoryBroker::new().with_retention(usize::MAX),
            service: service.into(),
            states: StateMap::default(),
        }
    }

    /// Provide a `State<T>` value that [`Context::state`] returns.
    #[must_use]
    pub fn state<T: Send + Sync + 'static>(mut self, value: T) -> Self {
        self.states.insert(value);
        self
    }

    /// A context as if handling `event`, freshly published, first attempt.
    pub fn context_for<E: Event>(&self, event: &E) -> Context {
        let _ = event;
        let metadata = Metadata::new(E::NAME, E::VERSION, "test");
        self.context_with(metadata, 1)
    }

    /// A context with the given metadata and attempt.
    pub fn context_with(&self, metadata: Metadata, attempt: u32) -> Context {
        let scope = Arc::new(Scope {
            handler: "test".to_owned(),
            emits: None,
            publisher: Publisher::new(Arc::from(self.service.as_str()), self.broker.transport()),
            states: self.states.clone(),
        });
        Context::new(Arc::new(metadata), attempt, scope)
    }

    /// Every event of type `E` published through these contexts.
    pub fn published<E: Event>(&self) -> Vec<E> {
        self.published_raw()
            .iter()
            .filter(|m| m.name() == E::NAME)
            .filter_map(|m| m.decode::<E>().ok())
            .collect()
    }

    /// Every message published through these contexts.
    pub fn published_raw(&self) -> Vec<RawEvent> {
        self.broker.messages()
    }
}

impl fmt::Debug for TestContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TestContext")
            .field("service", &self.service)
            .finish()
    }
}

/// Fault injection for event-sourcing tests: stores `bytes` as the snapshot of aggregate `id`
/// of type `kind` (e.g. garbage, to see it ignored), on whichever transport `store` uses.
pub async fn write_snapshot(
    store: &crate::EventStore,
    kind: &str,
    id: &str,
    bytes: impl Into<bytes::Bytes>,
) -> std::result::Result<(), crate::EventStoreError> {
    store.put_raw_snapshot(kind, id, bytes.into()).await
}

/// The snapshot of aggregate `id` of type `kind` as stored (JSON: `snapshot_version`,
/// `sequence`, `state`), if there is one.
pub async fn read_snapshot(
    store: &crate::EventStore,
    kind: &str,
    id: &str,
) -> std::result::Result<Option<bytes::Bytes>, crate::EventStoreError> {
    store.raw_snapshot(kind, id).await
}
