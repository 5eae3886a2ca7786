//! The application: builder, startup validation, lifecycle and graceful shutdown.

use std::fmt;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::config::{self, Env, NatsAuth, NatsSettings, ProcessEnv, Topology};
use crate::delivery::{Counters, DeadLetter, HandlerRuntime, HandlerStats};
use crate::error::{Error, Result};
use crate::handler::{HandlerDescriptor, Scope, State, StateMap};
use crate::idempotency::IdempotencyStore;
use crate::observe::{self, HandlerMetrics, Readiness};
use crate::publish::Publisher;
use crate::registry::{self, Catalog};
use crate::transport::jetstream::JetStream;
use crate::transport::memory::MemoryBroker;
use crate::transport::Transport;

/// How long [`RunningApp::settle`] waits on NATS at most.
pub const SETTLE_LIMIT: Duration = Duration::from_secs(120);

/// How long in-flight handlers may run on after shutdown starts, unless set.
pub const DEFAULT_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(30);

/// What every handler of one app shares.
pub(crate) struct AppShared {
    service: String,
    states: StateMap,
    transport: Arc<dyn Transport>,
}

impl AppShared {
    pub(crate) fn new(service: String, states: StateMap, transport: Arc<dyn Transport>) -> Self {
        AppShared {
            service,
            states,
            transport,
        }
    }

    pub(crate) fn service(&self) -> &str {
        &self.service
    }

    pub(crate) fn transport(&self) -> &dyn Transport {
        &*self.transport
    }

    pub(crate) fn state<T: Send + Sync + 'static>(&self) -> Option<State<T>> {
        self.states.get::<T>()
    }
}

impl fmt::Debug for AppShared {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AppShared")
            .field("service", &self.service)
            .finish()
    }
}

/// Where the app's events travel.
#[derive(Debug, Clone)]
enum TransportChoice {
    Memory(MemoryBroker),
    Nats(Box<NatsSettings>),
}

/// The broker a running app is bound to.
#[derive(Debug, Clone)]
pub(crate) enum Backend {
    Memory(MemoryBroker),
    Nats(Arc<JetStream>),
}

/// An eda service: `App::builder("notifications")...run().await`.
///
/// ```no_run
/// # async fn demo() -> eda::Result<()> {
/// eda::App::builder("notifications")
///     .in_memory()
///     .run() // discover, validate, consume; drain on SIGINT/SIGTERM
///     .await
/// # }
/// ```
pub struct App {
    service: String,
    states: StateMap,
    handlers: Vec<&'static HandlerDescriptor>,
    transport: TransportChoice,
    shutdown_timeout: Duration,
    metrics_addr: Option<SocketAddr>,
}

impl App {
    /// Starts configuring the service `service`.
    pub fn builder(service: impl Into<String>) -> AppBuilder {
        AppBuilder {
            service: service.into(),
            memory: None,
            nats: NatsSettings::new(""),
            use_nats: false,
            use_env: true,
            states: StateMap::default(),
            only: None,
            shutdown_timeout: DEFAULT_SHUTDOWN_TIMEOUT,
            metrics_addr: None,
        }
    }

    /// Every event and handler compiled into this binary, with schemas and options.
    pub fn catalog() -> Catalog {
        registry::catalog()
    }

    /// The service name.
    pub fn service(&self) -> &str {
        &self.service
    }

    /// Names of the handlers this app runs.
    pub fn handler_names(&self) -> Vec<&'static str> {
        self.handlers.iter().map(|h| h.name).collect()
    }

    /// Connects, provisions, binds every handler and starts consuming; returns a handle to
    /// publish and stop. Broker problems (unreachable, bad credentials, conflicting streams)
    /// are errors here, within the connect timeout.
    pub async fn start(self) -> Result<RunningApp> {
        let (phase, signals_rx) = watch::channel(Phase::Running);
        let signals = Signals { rx: signals_rx };
        let mut tasks = JoinSet::new();
        let mut runtimes = Vec::new();
        // The recorder goes in before any handle is created, or the handles record nowhere.
        let listener = match self.metrics_addr {
            Some(addr) => {
                let prometheus = observe::prometheus();
                let listener = observe::bind(addr)
                    .await
                    .map_err(|e| Error::Config(format!("cannot serve metrics on {addr}: {e}")))?;
                Some((listener, prometheus))
            }
            None => None,
        };
        let (backend, transport, store): (Backend, Arc<dyn Transport>, Arc<dyn IdempotencyStore>) =
            match &self.transport {
                TransportChoice::Memory(broker) => (
                    Backend::Memory(broker.clone()),
                    broker.transport(),
                    broker.store(),
                ),
                TransportChoice::Nats(settings) => {
                    let js = Arc::new(JetStream::connect(settings, &self.service).await?);
                    js.provision().await?;
                    let store = js.store().await?;
                    let transport = js.transport();
                    (Backend::Nats(js), transport, store)
                }
            };
        let shared = Arc::new(AppShared::new(
            self.service.clone(),
            self.states.clone(),
            transport,
        ));
        for descriptor in &self.handlers {
            let runtime = Arc::new(self.runtime(descriptor, &shared, Arc::clone(&store)));
            match &backend {
                Backend::Memory(broker) => {
                    let consumer = broker.consumer(
                        &runtime.durable,
                        descriptor.subject,
                        descriptor.options.start,
                    );
                    let broker = broker.clone();
                    let (runtime, signals) = (Arc::clone(&runtime), signals.clone());
                    tasks.spawn(async move { broker.consume(runtime, consumer, signals).await });
                }
                Backend::Nats(js) => {
                    let consumer = js.consumer(&runtime.durable, descriptor).await?;
                    let js = Arc::clone(js);
                    let (runtime, signals) = (Arc::clone(&runtime), signals.clone());
                    tasks.spawn(async move { js.consume(runtime, consumer, signals).await });
                }
            }
            runtimes.push(runtime);
        }
        let mut background = Vec::new();
        let mut metrics_addr = None;
        if let Some((listener, prometheus)) = listener {
            metrics_addr = listener.local_addr().ok();
            let probe = readiness_probe(&backend, &runtimes);
            background
                .push(tokio::spawn(observe::serve(listener, prometheus, probe)).abort_handle());
            tracing::info!(addr = ?metrics_addr, "serving /metrics, /healthz and /readyz");
        }
        if let Backend::Nats(js) = &backend {
            background
                .push(tokio::spawn(poll_backlog(Arc::clone(js), runtimes.clone())).abort_handle());
        }
        tracing::info!(service = %self.service, handlers = self.handlers.len(), "started");
        Ok(RunningApp {
            shared,
            backend,
            runtimes,
            phase,
            tasks,
            shutdown_timeout: self.shutdown_timeout,
            metrics_addr,
            background,
        })
    }

    /// Starts, runs until SIGINT or SIGTERM, then shuts down gracefully.
    pub async fn run(self) -> Result<()> {
        // Listen before starting, so a signal during startup is a graceful stop too.
        let signal = shutdown_signal()?;
        let running = self.start().await?;
        signal.await;
        tracing::info!(service = %running.service(), "signal received; shutting down");
        running.shutdown().await
    }

    fn runtime(
        &self,
        descriptor: &'static HandlerDescriptor,
        shared: &Arc<AppShared>,
        store: Arc<dyn IdempotencyStore>,
    ) -> HandlerRuntime {
        let service = self.service();
        HandlerRuntime {
            descriptor,
            scope: Arc::new(Scope {
                handler: descriptor.name.to_owned(),
                app: Arc::clone(shared),
            }),
            service: Arc::from(service),
            durable: format!("{service}__{}", descriptor.name),
            dlq_subject: format!("dlq.{service}.{}", descriptor.name),
            transport: Arc::clone(&shared.transport),
            store,
            counters: Counters::default(),
            metrics: HandlerMetrics::new(
                &Arc::from(service),
                descriptor.name,
                descriptor.event.map(|e| e.name),
            ),
            bound: AtomicBool::new(false),
        }
    }
}

impl fmt::Debug for App {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("App")
            .field("service", &self.service())
            .field("handlers", &self.handler_names())
            .finish()
    }
}

/// Configures an [`App`]; every setting is checked when it is built.
#[must_use]
pub struct AppBuilder {
    service: String,
    memory: Option<MemoryBroker>,
    nats: NatsSettings,
    use_nats: bool,
    use_env: bool,
    states: StateMap,
    only: Option<Vec<String>>,
    shutdown_timeout: Duration,
    metrics_addr: Option<String>,
}

impl AppBuilder {
    /// Use a private in-memory broker (the default, unless `EDA_NATS_URL` is set; an explicit
    /// `in_memory()` is not overridden by the environment).
    pub fn in_memory(mut self) -> Self {
        self.memory = Some(MemoryBroker::new());
        self.use_nats = false;
        self
    }

    /// Use a shared in-memory broker (several apps in one process).
    pub fn memory_broker(mut self, broker: MemoryBroker) -> Self {
        self.memory = Some(broker);
        self.use_nats = false;
        self
    }

    /// Use NATS JetStream at `url` (`nats://host:4222`, `tls://...`, or a comma-separated
    /// list of a cluster's URLs); `EDA_NATS_URL` wins.
    pub fn nats(mut self, url: impl Into<String>) -> Self {
        self.nats.url = url.into();
        self.use_nats = true;
        self.memory = None;
        self
    }

    /// Authenticate with a `.creds` file (`EDA_NATS_CREDS` wins).
    pub fn nats_credentials(mut self, path: impl Into<std::path::PathBuf>) -> Self {
        self.nats.auth = NatsAuth::CredentialsFile(path.into());
        self
    }

    /// Authenticate with user and password (`EDA_NATS_USER` + `EDA_NATS_PASSWORD` win).
    pub fn nats_user_password(
        mut self,
        user: impl Into<String>,
        password: impl Into<String>,
    ) -> Self {
        self.nats.auth = NatsAuth::UserPassword {
            user: user.into(),
            password: password.into(),
        };
        self
    }

    /// Authenticate with a token (`EDA_NATS_TOKEN` wins).
    pub fn nats_token(mut self, token: impl Into<String>) -> Self {
        self.nats.auth = NatsAuth::Token(token.into());
        self
    }

    /// Trust this CA certificate (PEM) for `tls://` URLs (`EDA_NATS_TLS_CA` wins).
    pub fn nats_tls_ca(mut self, path: impl Into<std::path::PathBuf>) -> Self {
        self.nats.tls_ca = Some(path.into());
        self
    }

    /// Subjects are `<prefix>.<event name>` (default `events`; `EDA_SUBJECT_PREFIX` wins).
    pub fn subject_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.nats.topology.subject_prefix = prefix.into();
        self
    }

    /// Replicas of streams and buckets (default: 1, or 3 on a cluster; `EDA_STREAM_REPLICAS`
    /// wins).
    pub fn stream_replicas(mut self, replicas: usize) -> Self {
        self.nats.topology.replicas = Some(replicas);
        self
    }

    /// How long the broker waits for an ack before redelivering (default 30 s).
    pub fn ack_wait(mut self, ack_wait: Duration) -> Self {
        self.nats.topology.ack_wait = ack_wait;
        self
    }

    /// Names and limits of every JetStream object (stream and bucket names, windows, TTLs).
    pub fn topology(mut self, topology: Topology) -> Self {
        self.nats.topology = topology;
        self
    }

    /// Give up connecting at startup after this long (default 5 s).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.nats.connect_timeout = timeout;
        self
    }

    /// Ignore the `EDA_*` environment variables (for tests that must not be redirected).
    pub fn without_env(mut self) -> Self {
        self.use_env = false;
        self
    }

    /// Provide a value handlers take as `State<T>`; one per type.
    pub fn state<T: Send + Sync + 'static>(mut self, value: T) -> Self {
        self.states.insert(value);
        self
    }

    /// Provide a value handlers take as `State<T>` that the caller keeps a handle to.
    pub fn shared_state<T: Send + Sync + 'static>(mut self, value: Arc<T>) -> Self {
        self.states.insert_arc(value);
        self
    }

    /// Run only these handlers (by name) instead of every one for this service.
    pub fn handlers(mut self, names: &[&str]) -> Self {
        self.only = Some(names.iter().map(|n| (*n).to_owned()).collect());
        self
    }

    /// Serve `/metrics` (Prometheus), `/healthz` and `/readyz` on `addr`, e.g.
    /// `"127.0.0.1:9464"`, `":9464"` (every interface) or `"127.0.0.1:0"` (a free port, see
    /// [`RunningApp::metrics_addr`]). Off unless set here or by `EDA_METRICS_ADDR` (which
    /// wins).
    pub fn metrics_addr(mut self, addr: impl Into<String>) -> Self {
        self.metrics_addr = Some(addr.into());
        self
    }

    /// How long in-flight handlers may finish after shutdown starts (default 30 s); those still
    /// running then are stopped and their messages redelivered.
    pub fn shutdown_timeout(mut self, timeout: Duration) -> Self {
        self.shutdown_timeout = timeout;
        self
    }

    /// Discovers this service's handlers and checks everything; every problem is reported at
    /// once, one line each.
    pub fn build(self) -> Result<App> {
        let mut problems = Vec::new();
        if let Err(why) = registry::check_plain_name("service name", &self.service) {
            problems.push(why);
        }
        let (handlers, found) = registry::select(&self.service, self.only.as_deref(), &self.states);
        problems.extend(found);
        let (nats, env_problems, url_source) = if self.use_env {
            config::apply_env(
                self.use_nats.then_some(self.nats),
                self.memory.is_some(),
                &ProcessEnv,
            )
        } else {
            (self.use_nats.then_some(self.nats), Vec::new(), "NATS URL")
        };
        problems.extend(env_problems);
        let metrics_addr = match (
            self.use_env
                .then(|| ProcessEnv.var("EDA_METRICS_ADDR"))
                .flatten(),
            &self.metrics_addr,
        ) {
            (Some(value), _) => {
                parse_metrics_addr(&value).map_err(|why| format!("EDA_METRICS_ADDR={why}"))
            }
            (None, Some(value)) => {
                parse_metrics_addr(value).map_err(|why| format!("metrics address {why}"))
            }
            (None, None) => Ok(None),
        };
        let metrics_addr = metrics_addr.unwrap_or_else(|problem| {
            problems.push(problem);
            None
        });
        let transport = match nats {
            Some(settings) => {
                problems.extend(settings.problems(url_source));
                TransportChoice::Nats(Box::new(settings))
            }
            None => TransportChoice::Memory(self.memory.unwrap_or_default()),
        };
        if !problems.is_empty() {
            return Err(Error::Startup {
                service: self.service,
                problems,
            });
        }
        Ok(App {
            service: self.service,
            states: self.states,
            handlers,
            transport,
            shutdown_timeout: self.shutdown_timeout,
            metrics_addr,
        })
    }

    /// Builds and starts the app.
    pub async fn start(self) -> Result<RunningApp> {
        self.build()?.start().await
    }

    /// Builds, starts and runs the app until SIGINT or SIGTERM.
    pub async fn run(self) -> Result<()> {
        self.build()?.run().await
    }
}

impl fmt::Debug for AppBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AppBuilder")
            .field("service", &self.service)
            .field("nats", &self.use_nats.then_some(&self.nats))
            .finish()
    }
}

/// How often consumer backlogs are read from the broker for the gauges.
const BACKLOG_POLL: Duration = Duration::from_secs(5);

/// Reads each consumer's pending and unacknowledged counts into the gauges.
async fn poll_backlog(js: Arc<JetStream>, runtimes: Vec<Arc<HandlerRuntime>>) {
    let mut ticks = tokio::time::interval(BACKLOG_POLL);
    loop {
        ticks.tick().await;
        for runtime in &runtimes {
            if let Ok((pending, ack_pending)) = js.pending(&runtime.durable).await {
                runtime.metrics.consumer_backlog(pending, ack_pending);
            }
        }
    }
}

/// Ready: connected to the broker and every handler's consumer bound.
fn readiness_probe(backend: &Backend, runtimes: &[Arc<HandlerRuntime>]) -> observe::ReadinessProbe {
    let backend = backend.clone();
    let runtimes = runtimes.to_vec();
    Arc::new(move || Readiness {
        connected: match &backend {
            Backend::Memory(_) => true,
            Backend::Nats(js) => js.is_connected(),
        },
        unbound: runtimes
            .iter()
            .filter(|r| !r.bound.load(Ordering::SeqCst))
            .map(|r| r.durable.clone())
            .collect(),
    })
}

/// `"127.0.0.1:9464"`, `":9464"` (every interface), `"0"`/`"off"`/empty: off.
fn parse_metrics_addr(value: &str) -> std::result::Result<Option<SocketAddr>, String> {
    let value = value.trim();
    if value.is_empty() || value == "off" {
        return Ok(None);
    }
    let full = if value.starts_with(':') {
        format!("0.0.0.0{value}")
    } else {
        value.to_owned()
    };
    full.parse::<SocketAddr>().map(Some).map_err(|_| {
        format!("`{value}`: expected host:port such as 127.0.0.1:9464, :9464, or 127.0.0.1:0 for a free port")
    })
}

/// A started app: publish with it, read its counters, shut it down.
pub struct RunningApp {
    shared: Arc<AppShared>,
    backend: Backend,
    runtimes: Vec<Arc<HandlerRuntime>>,
    phase: watch::Sender<Phase>,
    tasks: JoinSet<()>,
    shutdown_timeout: Duration,
    metrics_addr: Option<SocketAddr>,
    /// The HTTP listener and the consumer-backlog poller, stopped at shutdown.
    background: Vec<tokio::task::AbortHandle>,
}

impl RunningApp {
    /// A publisher for this service's events.
    pub fn publisher(&self) -> Publisher {
        Publisher::new(Arc::clone(&self.shared))
    }

    /// The service name.
    pub fn service(&self) -> &str {
        self.shared.service()
    }

    /// The broker this app is bound to.
    pub(crate) fn backend(&self) -> &Backend {
        &self.backend
    }

    /// Where `/metrics`, `/healthz` and `/readyz` are served, if they are (with the port
    /// actually bound when `:0` was asked for).
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_addr
    }

    /// Resolves once this app's handlers have nothing left: no message queued, in flight or
    /// waiting for a retry. For batch jobs, demos and tests; a service normally runs until a
    /// signal. In memory (under tokio's paused clock, retry delays pass instantly) it waits
    /// for the broker to go idle; on NATS it polls this app's consumers until none has a
    /// message pending or unacknowledged and the streams stopped growing, for at most
    /// [`SETTLE_LIMIT`] (then it logs a warning and returns).
    pub async fn settle(&self) {
        match &self.backend {
            Backend::Memory(broker) => broker.wait_idle().await,
            Backend::Nats(js) => {
                let durables: Vec<String> =
                    self.runtimes.iter().map(|r| r.durable.clone()).collect();
                js.settle(&durables, SETTLE_LIMIT).await;
            }
        }
    }

    /// Every dead letter the broker holds (on NATS: the whole dead-letter stream, every
    /// service's), oldest first.
    pub async fn dead_letters(&self) -> Result<Vec<DeadLetter>> {
        match &self.backend {
            Backend::Memory(broker) => Ok(broker.dead_letters()),
            Backend::Nats(js) => js.dead_letters().await,
        }
    }

    /// Whether the app is connected to its broker (always, in memory).
    pub fn is_connected(&self) -> bool {
        match &self.backend {
            Backend::Memory(_) => true,
            Backend::Nats(js) => js.is_connected(),
        }
    }

    /// What the handler `name` has done so far, if this app runs it.
    pub fn stats(&self, name: &str) -> Option<HandlerStats> {
        self.runtimes
            .iter()
            .find(|r| r.descriptor.name == name)
            .map(|r| r.stats())
    }

    /// Stops fetching, lets in-flight handlers finish up to the shutdown timeout, then stops
    /// the rest (their messages are redelivered) and returns.
    pub async fn shutdown(mut self) -> Result<()> {
        self.phase.send_replace(Phase::Draining);
        for task in &self.background {
            task.abort();
        }
        let drained = tokio::time::timeout(self.shutdown_timeout, async {
            while self.tasks.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            tracing::warn!(service = %self.service(), "shutdown timeout reached; stopping in-flight handlers");
            self.phase.send_replace(Phase::Stopped);
            while self.tasks.join_next().await.is_some() {}
        }
        if let Backend::Nats(js) = &self.backend {
            js.close().await;
        }
        tracing::info!(service = %self.service(), "stopped");
        Ok(())
    }
}

impl Drop for RunningApp {
    /// A running app dropped without `shutdown()` stops its listener and poller too.
    fn drop(&mut self) {
        for task in &self.background {
            task.abort();
        }
    }
}

impl fmt::Debug for RunningApp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RunningApp")
            .field("service", &self.service())
            .field("handlers", &self.runtimes.len())
            .finish()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Phase {
    Running,
    Draining,
    Stopped,
}

/// What consume loops watch to know when to stop.
#[derive(Debug, Clone)]
pub(crate) struct Signals {
    rx: watch::Receiver<Phase>,
}

impl Signals {
    /// Resolves once shutdown started (or the app is gone). The future owns its receiver:
    /// a consume loop pins it once and polls it by reference, rather than registering a new
    /// waiter for every message.
    pub(crate) fn draining(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        self.phase(Phase::Draining)
    }

    /// Resolves once the shutdown deadline passed (or the app is gone).
    pub(crate) fn stopped(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        self.phase(Phase::Stopped)
    }

    fn phase(&self, phase: Phase) -> impl std::future::Future<Output = ()> + Send + 'static {
        let mut rx = self.rx.clone();
        async move {
            let _ = rx.wait_for(|p| *p >= phase).await;
        }
    }
}

/// Resolves on SIGINT (Ctrl-C) or, on Unix, SIGTERM.
pub async fn wait_for_signal() -> Result<()> {
    shutdown_signal()?.await;
    Ok(())
}

/// Starts listening for SIGINT and SIGTERM now; the future resolves on the first of them.
fn shutdown_signal() -> Result<impl std::future::Future<Output = ()>> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut interrupt = signal(SignalKind::interrupt())?;
        let mut terminate = signal(SignalKind::terminate())?;
        Ok(async move {
            tokio::select! {
                _ = interrupt.recv() => {}
                _ = terminate.recv() => {}
            }
        })
    }
    #[cfg(not(unix))]
    {
        Ok(async {
            // Without a handler to install there is nothing to stop on: wait forever.
            if tokio::signal::ctrl_c().await.is_err() {
                std::future::pending::<()>().await;
            }
        })
    }
}
