//! The application: builder, startup validation, lifecycle and graceful shutdown.

use std::fmt;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinSet;

use crate::aggregate::{
    EventStore, PendingProjection, ProjectionControl, ProjectionError, Rebuilt,
};
use crate::backend::{Backend, BackendChoice, Opened};
use crate::breaker::{Breaker, BreakerConfig, BreakerState};
use crate::config::{self, Env, NatsAuth, NatsSettings, ProcessEnv, Topology, WireFormat};
use crate::delivery::{HandlerStats, RuntimeSet};
use crate::dlq::DeadLetter;
use crate::error::{Error, ErrorKind, Result};
use crate::event::Event;
use crate::handler::{HandlerDescriptor, StateMap};
use crate::lifecycle::{self, Lifecycle};

mod triggers;
use crate::observe::{self, Readiness};
use crate::publish::Publisher;
use crate::registry::{self, Catalog};
use crate::transport::jetstream::permissions::{permissions_for, Permissions};
use crate::transport::memory::MemoryBroker;
use triggers::{Binder, Triggers};

pub use crate::lifecycle::wait_for_signal;

/// How long [`RunningApp::settle`] waits on NATS at most.
pub const SETTLE_LIMIT: Duration = Duration::from_secs(120);

/// How long in-flight handlers may run on after shutdown starts, unless set.
pub const DEFAULT_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(30);

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
    transport: BackendChoice,
    shutdown_timeout: Duration,
    metrics_addr: Option<SocketAddr>,
    breakers: Vec<(String, BreakerConfig)>,
    tripped: Vec<String>,
    emits: Vec<&'static str>,
    /// Aggregate types declared with [`AppBuilder::aggregate`] (for permissions).
    aggregates: Vec<&'static str>,
    /// Projections given with [`AppBuilder::projection`], started with the app.
    projections: Vec<PendingProjection>,
    /// `EDA_CATALOG=json`: print [`App::describe`] and exit instead of starting.
    print_catalog: bool,
}

/// What one service consumes and emits, as [`App::describe`] gives it and an app run with
/// `EDA_CATALOG=json` prints (one JSON document on stdout, then it exits with status 0): what
/// tools read to draw the event flow, write AsyncAPI or permissions without a broker.
#[derive(Debug, Clone, serde::Serialize)]
#[non_exhaustive]
pub struct ServiceCatalog {
    /// The service.
    pub service: String,
    /// The subject prefix events are published under.
    pub subject_prefix: String,
    /// The handlers this service runs.
    pub handlers: Vec<registry::HandlerInfo>,
    /// Every event version compiled into the binary, with its schema.
    pub events: Vec<registry::EventInfo>,
    /// Events declared with [`AppBuilder::emits`] (published outside handlers).
    pub emits: Vec<String>,
    /// Its NATS permissions ([`App::permissions`]).
    pub permissions: Permissions,
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
            breakers: Vec::new(),
            tripped: Vec::new(),
            emits: Vec::new(),
            aggregates: Vec::new(),
            projections: Vec::new(),
            actions: Vec::new(),
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

    /// What this service consumes and emits, as configured.
    pub fn describe(&self) -> ServiceCatalog {
        let catalog = self.catalog_with_actions();
        let topology = self.topology();
        let handlers = catalog
            .handlers
            .iter()
            .filter(|h| {
                self.handlers
                    .iter()
                    .any(|d| d.name == h.name && d.module_path == h.module_path)
            })
            .cloned()
            .collect();
        ServiceCatalog {
            service: self.service.clone(),
            subject_prefix: topology.subject_prefix,
            handlers,
            events: catalog.events,
            emits: self.emits.iter().map(|e| (*e).to_owned()).collect(),
            permissions: self.permissions(),
        }
    }

    /// The binary's catalog with the handlers the app runs that it lacks (the triggers of
    /// actions files).
    fn catalog_with_actions(&self) -> Catalog {
        let mut catalog = registry::catalog();
        for descriptor in &self.handlers {
            let known = catalog
                .handlers
                .iter()
                .any(|h| h.name == descriptor.name && h.module_path == descriptor.module_path);
            if !known {
                catalog.handlers.push(registry::info(descriptor));
            }
        }
        catalog
    }

    fn topology(&self) -> Topology {
        match &self.transport {
            BackendChoice::Nats(settings) => settings.topology.clone(),
            BackendChoice::Memory(_) => Topology::default(),
        }
    }

    /// The NATS permissions this service needs as configured: its handlers' consumers, the
    /// events they declare with `emits = [..]` and those declared with
    /// [`AppBuilder::emits`], its dead letters and records, on its topology (see
    /// [`permissions`](crate::permissions)).
    pub fn permissions(&self) -> Permissions {
        let topology = self.topology();
        let only: Vec<&'static str> = self.handlers.iter().map(|h| h.name).collect();
        permissions_for(
            &self.catalog_with_actions(),
            &self.service,
            &topology,
            Some(&only),
            &self.emits,
            &self.aggregates,
            &self.projected(),
        )
    }

    /// The aggregate types this app's projections read.
    fn projected(&self) -> Vec<&'static str> {
        let mut kinds: Vec<&'static str> = self.projections.iter().map(|p| p.kind).collect();
        kinds.sort_unstable();
        kinds.dedup();
        kinds
    }

    /// Names of the handlers this app runs.
    pub fn handler_names(&self) -> Vec<&'static str> {
        self.handlers.iter().map(|h| h.name).collect()
    }

    /// Connects, provisions, binds every handler and starts consuming; returns a handle to
    /// publish and stop. Broker problems (unreachable, bad credentials, conflicting streams)
    /// are errors here, within the connect timeout.
    pub async fn start(self) -> Result<RunningApp> {
        if self.print_catalog {
            // A catalog always serializes (plain strings, numbers and JSON values).
            let json = serde_json::to_string_pretty(&self.describe()).unwrap_or_default();
            println!("{json}");
            std::process::exit(0);
        }
        let lifecycle = Arc::new(Lifecycle::new());
        let mut tasks = JoinSet::new();
        let runtimes = RuntimeSet::default();
        // The recorder goes in before any handle is created, or the handles record nowhere.
        let listener = match self.metrics_addr {
            Some(addr) => {
                let prometheus = observe::prometheus();
                let listener = observe::bind(addr).await.map_err(|e| {
                    Error::with_source(
                        ErrorKind::Config,
                        format!("cannot serve metrics on {addr}: {e}"),
                        e,
                    )
                })?;
                Some((listener, prometheus))
            }
            None => None,
        };
        let Opened {
            backend,
            transport,
            store,
            log,
        } = Backend::open(&self.transport, &self.service).await?;
        let event_store = EventStore::new(log, &self.service, &self.topology());
        // Handlers take it as a parameter (`store: EventStore`).
        let mut states = self.states.clone();
        states.insert(event_store.clone());
        let publisher = Publisher::new(Arc::from(self.service.as_str()), Arc::clone(&transport));
        // Events published outside handlers get their publish series now, at 0, as handlers'
        // declared follow-ups do (a series born at its first value shows no `rate()`).
        for name in &self.emits {
            crate::observe::PublishMetrics::of(name);
        }
        let breakers = self.breakers();
        let binder = Binder {
            backend: backend.clone(),
            transport: Arc::clone(&transport),
            store,
            publisher: publisher.clone(),
            states,
            breakers: breakers.clone(),
        };
        let runner = self
            .states
            .get::<crate::actions::Runner>()
            .map(|s| Arc::clone(s.arc()));
        let triggers = runner.map(|runner| {
            let others = self
                .handlers
                .iter()
                .filter(|h| !runner.has_trigger(h.name))
                .map(|h| h.name)
                .collect();
            Arc::new(Triggers::new(
                runner,
                binder.clone(),
                Arc::clone(&lifecycle),
                runtimes.clone(),
                others,
                self.shutdown_timeout,
            ))
        });
        for descriptor in &self.handlers {
            // A trigger of an actions file is a consumer of its own, which a reload can stop.
            if let Some(triggers) = triggers.as_ref().filter(|t| t.runs(descriptor.name)) {
                triggers.start(descriptor).await?;
                continue;
            }
            let (runtime, consume) = binder.bind(descriptor, lifecycle.signals()).await?;
            tasks.spawn(consume);
            runtimes.push(runtime);
        }
        let mut background = Vec::new();
        let mut metrics_addr = None;
        if let Some((listener, prometheus)) = listener {
            metrics_addr = listener.local_addr().ok();
            let probe = readiness_probe(&backend, &runtimes, &breakers);
            background
                .push(tokio::spawn(observe::serve(listener, prometheus, probe)).abort_handle());
            tracing::info!(addr = ?metrics_addr, "serving /metrics, /healthz and /readyz");
        }
        if let Some(work) = backend.background(&runtimes) {
            background.push(tokio::spawn(work).abort_handle());
        }
        // Each declared aggregate type's appended events, forwarded to `events.<name>`.
        for kind in &self.aggregates {
            let at = event_store.stream_address(kind);
            let work =
                crate::aggregate::forward::run(event_store.log(), Arc::clone(&transport), at);
            background.push(tokio::spawn(work).abort_handle());
        }
        let mut projections = Vec::new();
        // This app instance, as the holder of its projections' leases.
        let mut holder = format!("{}-", self.service);
        crate::random::push_hex(&mut holder, 12);
        for pending in self.projections {
            let at = event_store.stream_address(pending.kind);
            let (control, work) = pending.start(event_store.log(), at, &self.service, &holder);
            background.push(tokio::spawn(work).abort_handle());
            projections.push(control);
        }
        if let Some(serve) = backend.serve_rebuilds(&self.service, projections.clone()) {
            background.push(tokio::spawn(serve).abort_handle());
        }
        if let Some(triggers) = &triggers {
            let reload = triggers::reload_on_hangup(Arc::clone(triggers)).map_err(|e| {
                Error::with_source(
                    ErrorKind::Io,
                    format!("cannot listen for SIGHUP (actions reload): {e}"),
                    e,
                )
            })?;
            background.push(tokio::spawn(reload).abort_handle());
        }
        tracing::info!(service = %self.service, handlers = self.handlers.len(), "started");
        Ok(RunningApp {
            publisher,
            event_store,
            backend,
            runtimes,
            breakers,
            lifecycle,
            tasks,
            shutdown_timeout: self.shutdown_timeout,
            metrics_addr,
            background,
            triggers,
            projections,
        })
    }

    /// One breaker per name the handlers use, configured or with the defaults.
    fn breakers(&self) -> Vec<Breaker> {
        let mut names: Vec<&str> = self
            .handlers
            .iter()
            .filter_map(|h| h.options.breaker)
            .collect();
        names.sort_unstable();
        names.dedup();
        names
            .into_iter()
            .map(|name| {
                let config = self
                    .breakers
                    .iter()
                    .find(|(configured, _)| configured == name)
                    .map_or_else(BreakerConfig::default, |(_, config)| *config);
                let breaker = Breaker::new(name, config);
                if self.tripped.iter().any(|t| t == name) {
                    breaker.trip();
                }
                breaker
            })
            .collect()
    }

    /// Starts, runs until SIGINT or SIGTERM, then shuts down gracefully.
    pub async fn run(self) -> Result<()> {
        // Listen before starting, so a signal during startup is a graceful stop too.
        let signal = lifecycle::shutdown_signal()?;
        let running = self.start().await?;
        signal.await;
        tracing::info!(service = %running.service(), "signal received; shutting down");
        running.shutdown().await
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
    breakers: Vec<(String, BreakerConfig)>,
    tripped: Vec<String>,
    emits: Vec<&'static str>,
    aggregates: Vec<&'static str>,
    projections: Vec<PendingProjection>,
    actions: Vec<std::path::PathBuf>,
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

    /// Use NATS JetStream with all of `settings` at once (URL, credentials, TLS, topology,
    /// timeouts, wire format), e.g. settings a tool built from its own options; the
    /// `EDA_NATS_*` variables still win unless [`without_env`](Self::without_env).
    pub fn nats_settings(mut self, settings: NatsSettings) -> Self {
        self.nats = settings;
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

    /// Authenticate with an NKey seed, the `SU...` line of an nkey file (`EDA_NATS_NKEY` wins).
    pub fn nats_nkey(mut self, seed: impl Into<String>) -> Self {
        self.nats.auth = NatsAuth::Nkey(seed.into());
        self
    }

    /// Present this client certificate and key (PEM files) to a server that verifies clients
    /// (mutual TLS; `EDA_NATS_TLS_CERT` + `EDA_NATS_TLS_KEY` win). Needs a CA too.
    pub fn nats_tls_client_cert(
        mut self,
        cert: impl Into<std::path::PathBuf>,
        key: impl Into<std::path::PathBuf>,
    ) -> Self {
        self.nats.tls_client_cert = Some((cert.into(), key.into()));
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

    /// Publish events in CloudEvents 1.0 binary content mode (`ce-id`, `ce-type`,
    /// `ce-source`, `ce-time`, `ce-specversion` headers; the payload stays the event's JSON)
    /// instead of eda's headers, for consumers that speak CloudEvents. eda services read both
    /// formats whatever this says; dead letters keep eda's format. No effect in memory (there
    /// is no wire).
    pub fn cloudevents(mut self) -> Self {
        self.nats.wire_format = WireFormat::CloudEvents;
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

    /// Configures the circuit breaker `name` that handlers name with
    /// `#[handler(breaker = "name")]` (a breaker no handler of this app names is a startup
    /// error: a typo). Unconfigured breakers get [`BreakerConfig::default`].
    ///
    /// ```no_run
    /// # async fn demo() -> eda::Result<()> {
    /// use std::time::Duration;
    /// eda::App::builder("notifications")
    ///     .breaker("smtp", eda::BreakerConfig::default().open_for(Duration::from_secs(30)))
    ///     .run()
    ///     .await
    /// # }
    /// ```
    pub fn breaker(mut self, name: impl Into<String>, config: BreakerConfig) -> Self {
        let name = name.into();
        self.breakers.retain(|(configured, _)| *configured != name);
        self.breakers.push((name, config));
        self
    }

    /// Starts with the circuit breaker `name` tripped: the handlers behind it take nothing
    /// until [`Breaker::reset`] (through [`RunningApp::breaker`]). For a downstream known to be
    /// down when the service starts, such as during its maintenance.
    pub fn trip_breaker(mut self, name: impl Into<String>) -> Self {
        self.tripped.push(name.into());
        self
    }

    /// Declares that this service publishes `E` outside its handlers (through
    /// [`RunningApp::publisher`]), for [`App::permissions`]. Handlers declare theirs with
    /// `#[handler(emits = [..])]`.
    pub fn emits<E: Event>(mut self) -> Self {
        self.emits.push(E::NAME);
        self
    }

    /// Declares that this service stores aggregates of type `A` through
    /// [`RunningApp::event_store`]: it forwards their appended events to `events.<name>`
    /// for other services' handlers (the forwarder, an outbox on the broker: see
    /// [`crate::aggregate`]), and [`App::permissions`] includes their stream, subjects,
    /// snapshot keys and events. Loading and appending work without it.
    pub fn aggregate<A: crate::aggregate::Aggregate>(mut self) -> Self {
        if !self.aggregates.contains(&A::TYPE) {
            self.aggregates.push(A::TYPE);
        }
        for name in <A::Event as crate::aggregate::AggregateEvents>::NAMES {
            if !self.emits.contains(name) {
                self.emits.push(name);
            }
        }
        self
    }

    /// Runs `projection` with the app: a read model fed every append of its aggregate type in
    /// order, from the position it keeps, and rebuilt with
    /// [`RunningApp::rebuild_projection`] (see [`Projection`](crate::Projection)). Pass an
    /// `Arc` of it to keep querying the model it builds.
    pub fn projection<P: crate::aggregate::Projection>(mut self, projection: P) -> Self {
        self.projections.push(PendingProjection::new(projection));
        self
    }

    /// Runs the triggers of an actions file (TOML) as handlers of this service: each calls
    /// HTTP services for its events, with the retries, dead letters, breakers and metrics of
    /// any handler (see [`crate::actions`]). Every problem of the file is reported by
    /// [`AppBuilder::build`] with its line and column. Several files may be given.
    pub fn actions(mut self, path: impl Into<std::path::PathBuf>) -> Self {
        self.actions.push(path.into());
        self
    }

    /// Discovers this service's handlers and checks everything; every problem is reported at
    /// once, one line each.
    pub fn build(self) -> Result<App> {
        let mut problems = Vec::new();
        if let Err(why) = registry::check_plain_name("service name", &self.service) {
            problems.push(why);
        }
        let (mut handlers, found) =
            registry::select(&self.service, self.only.as_deref(), &self.states);
        problems.extend(found);
        problems.extend(registry::event_problems());
        let mut states = self.states;
        if !self.actions.is_empty() {
            match load_actions(&self.actions, &handlers) {
                Ok((descriptors, runner)) => {
                    handlers.extend(descriptors);
                    states.insert(runner);
                }
                Err(found) => problems.extend(found),
            }
        }
        problems.extend(projection_problems(&self.projections));
        problems.extend(breaker_problems(&self.breakers, &self.tripped, &handlers));
        let (nats, env_problems, url_source) = if self.use_env {
            config::apply_env(self.nats, self.use_nats, self.memory.is_some(), &ProcessEnv)
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
        let print_catalog = match self
            .use_env
            .then(|| ProcessEnv.var("EDA_CATALOG"))
            .flatten()
        {
            None => false,
            Some(value) if value == "json" => true,
            Some(value) => {
                problems.push(format!(
                    "EDA_CATALOG=`{value}`: the only catalog format is `json`"
                ));
                false
            }
        };
        let metrics_addr = metrics_addr.unwrap_or_else(|problem| {
            problems.push(problem);
            None
        });
        let transport = match nats {
            Some(settings) => {
                problems.extend(settings.problems(url_source));
                BackendChoice::Nats(Box::new(settings))
            }
            None => BackendChoice::Memory(self.memory.unwrap_or_default()),
        };
        if !problems.is_empty() {
            return Err(Error::startup(&self.service, problems));
        }
        Ok(App {
            service: self.service,
            states,
            handlers,
            transport,
            shutdown_timeout: self.shutdown_timeout,
            metrics_addr,
            breakers: self.breakers,
            tripped: self.tripped,
            emits: self.emits,
            aggregates: self.aggregates,
            projections: self.projections,
            print_catalog,
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

/// Each configured breaker's mistakes, and the configured or tripped ones no handler names.
/// The triggers of the actions files as handlers, and what they need at run time; a trigger
/// Projection names must be tokens and unique.
fn projection_problems(projections: &[PendingProjection]) -> Vec<String> {
    let mut problems = Vec::new();
    for (i, p) in projections.iter().enumerate() {
        if let Err(why) = registry::check_plain_name("projection name", p.name) {
            problems.push(why);
        }
        if projections[..i].iter().any(|q| q.name == p.name) {
            problems.push(format!(
                "projection `{}` is given twice: give each projection of an app its own `NAME`",
                p.name
            ));
        }
    }
    problems
}

/// may not take a name another handler of the service has.
fn load_actions(
    paths: &[std::path::PathBuf],
    handlers: &[&'static HandlerDescriptor],
) -> std::result::Result<(Vec<&'static HandlerDescriptor>, crate::actions::Runner), Vec<String>> {
    let mut problems = Vec::new();
    let mut loaded: Option<crate::actions::Actions> = None;
    for path in paths {
        match crate::actions::Actions::load(path) {
            Ok(actions) => match &mut loaded {
                None => loaded = Some(actions),
                Some(all) => {
                    if let Err(e) = all.merge(actions) {
                        problems.extend(e.problems().iter().cloned());
                    }
                }
            },
            Err(e) => problems.extend(e.problems().iter().cloned()),
        }
    }
    let Some(actions) = loaded.filter(|_| problems.is_empty()) else {
        return Err(problems);
    };
    for name in actions.trigger_names() {
        if handlers.iter().any(|h| h.name == name) {
            problems.push(format!(
                "trigger `{name}` has the name of a handler of this service: rename one (a name names the durable consumer)"
            ));
        }
    }
    let runner = actions.runner(paths).map_err(|e| vec![e])?;
    if problems.is_empty() {
        Ok((actions.descriptors(), runner))
    } else {
        Err(problems)
    }
}

fn breaker_problems(
    configured: &[(String, BreakerConfig)],
    tripped: &[String],
    handlers: &[&'static HandlerDescriptor],
) -> Vec<String> {
    let mut named: Vec<&str> = handlers.iter().filter_map(|h| h.options.breaker).collect();
    named.sort_unstable();
    named.dedup();
    let known = if named.is_empty() {
        "none".to_owned()
    } else {
        named.join(", ")
    };
    let mut problems = Vec::new();
    let mut unnamed = |name: &str, what: &str| {
        if !named.contains(&name) {
            problems.push(format!(
                "breaker `{name}` is {what} but no handler of this app names it (with `#[handler(breaker = \"{name}\")]`); named: {known}"
            ));
        }
    };
    for (name, _) in configured {
        unnamed(name, "configured");
    }
    for name in tripped {
        unnamed(name, "tripped");
    }
    for (name, config) in configured {
        problems.extend(config.problems(name));
    }
    problems
}

/// Ready: connected to the broker and every handler's consumer bound. Open breakers are
/// listed, and do not make the app unready: the process is fine, its downstream is not.
fn readiness_probe(
    backend: &Backend,
    runtimes: &RuntimeSet,
    breakers: &[Breaker],
) -> observe::ReadinessProbe {
    let backend = backend.clone();
    let runtimes = runtimes.clone();
    let breakers = breakers.to_vec();
    Arc::new(move || Readiness {
        open_breakers: breakers
            .iter()
            .filter(|b| b.state() == BreakerState::Open)
            .map(|b| b.name().to_owned())
            .collect(),
        connected: backend.is_connected(),
        unbound: runtimes
            .snapshot()
            .iter()
            .filter(|r| !r.bound.load(Ordering::SeqCst))
            .map(|r| r.durable().to_owned())
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
    publisher: Publisher,
    event_store: EventStore,
    backend: Backend,
    runtimes: RuntimeSet,
    breakers: Vec<Breaker>,
    lifecycle: Arc<Lifecycle>,
    tasks: JoinSet<()>,
    shutdown_timeout: Duration,
    metrics_addr: Option<SocketAddr>,
    /// The HTTP listener and the consumer-backlog poller, stopped at shutdown.
    background: Vec<tokio::task::AbortHandle>,
    /// The triggers of its actions files, if it was given any.
    triggers: Option<Arc<Triggers>>,
    /// Its projections, to ask for rebuilds.
    projections: Vec<ProjectionControl>,
}

impl RunningApp {
    /// Reads the app's actions files again and applies them, as SIGHUP does; a file with
    /// errors changes nothing (its problems are the error). Triggers whose actions changed run
    /// the new ones from their next event; new triggers start; removed ones stop taking
    /// events and finish those in flight (up to the shutdown timeout); triggers with other
    /// retries, concurrency, breaker or `emit` are stopped that way and started again. A
    /// trigger with another event, or naming a breaker the app did not start with, is left as
    /// it was (`need_restart` says why). A removed trigger's durable consumer stays on the
    /// server, as a handler's does when it leaves the code.
    pub async fn reload_actions(
        &self,
    ) -> std::result::Result<crate::actions::Reloaded, crate::actions::ActionsError> {
        let result = match &self.triggers {
            Some(triggers) => triggers.reload().await,
            None => Ok(crate::actions::Reloaded::default()),
        };
        crate::actions::log_reload(&result);
        result
    }

    /// Rebuilds the projection `name` (see [`Projection`](crate::Projection)): calls its
    /// `reset`, then applies every append of its aggregate type from the first, and resolves
    /// once it has read everything the stream held (a read came back empty). The projection
    /// keeps running afterwards. Fails if this app has no projection of that name, or if the
    /// reset or an append fails (the projection then goes on trying from its position).
    pub async fn rebuild_projection(
        &self,
        name: &str,
    ) -> std::result::Result<Rebuilt, ProjectionError> {
        let Some(control) = self.projections.iter().find(|p| p.name == name) else {
            let known: Vec<&str> = self.projections.iter().map(|p| p.name).collect();
            return Err(ProjectionError::unknown(name, &known));
        };
        control.rebuild().await
    }

    /// A publisher for this service's events.
    pub fn publisher(&self) -> Publisher {
        self.publisher.clone()
    }

    /// The service name.
    pub fn service(&self) -> &str {
        self.publisher.service()
    }

    /// The event store on this app's broker (event sourcing; see [`EventStore`]): aggregates'
    /// events appended with optimistic concurrency, loaded from a snapshot and the events
    /// after it. Cheap to clone.
    pub fn event_store(&self) -> EventStore {
        self.event_store.clone()
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
        self.backend
            .settle(&self.runtimes.snapshot(), SETTLE_LIMIT)
            .await;
    }

    /// Every dead letter the broker holds (on NATS: the whole dead-letter stream, every
    /// service's), oldest first.
    pub async fn dead_letters(&self) -> Result<Vec<DeadLetter>> {
        self.backend.dead_letters().await
    }

    /// Whether the app is connected to its broker (always, in memory).
    pub fn is_connected(&self) -> bool {
        self.backend.is_connected()
    }

    /// What the handler `name` has done so far, if this app runs it.
    pub fn stats(&self, name: &str) -> Option<HandlerStats> {
        self.runtimes
            .snapshot()
            .iter()
            .find(|r| r.descriptor.name == name)
            .map(|r| r.stats())
    }

    /// The circuit breaker `name`, if a handler of this app names it: read its state, trip
    /// it or reset it. Breakers live with the app: a restarted app starts with every breaker
    /// closed.
    pub fn breaker(&self, name: &str) -> Option<Breaker> {
        self.breakers.iter().find(|b| b.name() == name).cloned()
    }

    /// Stops fetching, lets in-flight handlers finish up to the shutdown timeout, then stops
    /// the rest (their messages are redelivered) and returns.
    pub async fn shutdown(mut self) -> Result<()> {
        self.lifecycle.drain();
        for task in &self.background {
            task.abort();
        }
        // Another instance takes the projections over at once.
        for projection in &self.projections {
            projection.release().await;
        }
        let triggers = self.triggers.clone();
        let finished = || async {
            if let Some(triggers) = &triggers {
                triggers.finished().await;
            }
        };
        let drained = tokio::time::timeout(self.shutdown_timeout, async {
            while self.tasks.join_next().await.is_some() {}
            finished().await;
        })
        .await;
        if drained.is_err() {
            tracing::warn!(service = %self.service(), "shutdown timeout reached; stopping in-flight handlers");
            self.lifecycle.stop();
            while self.tasks.join_next().await.is_some() {}
            finished().await;
        }
        self.backend.close().await;
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
            .field("handlers", &self.runtimes.snapshot().len())
            .finish()
    }
}
