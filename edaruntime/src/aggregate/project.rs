//! Projections: read models built from one aggregate type's events in the order they were
//! stored, each keeping its own position next to its data, and rebuilt from the first event on
//! request. See [`Projection`].

use std::fmt;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use futures_util::future::BoxFuture;
use tokio::sync::{mpsc, oneshot};

use super::appends::Appends;
use super::replay::decode;
use super::Aggregate;
use crate::error::BoxError;
use crate::port::{EventLog, Followed, LogAddress, LogError, LEASE_TTL};

/// A read model built from the events of one aggregate type (balances per account in a
/// database table, say), fed every append in the order the store took them, and rebuilt from
/// the first when asked ([`RunningApp::rebuild_projection`](crate::RunningApp::rebuild_projection)).
///
/// The projection keeps its **position** with its data: [`apply`](Projection::apply) writes
/// the append's events and `append.position` in one transaction, and
/// [`position`](Projection::position) reads it back when the projection starts. That makes a
/// crash between the write and anything after it harmless: the projection starts again after
/// the position the read model has, so no append is applied twice or skipped. Every instance
/// of a service runs its projections; an append at or below the stored position must change
/// nothing (check it in the transaction, as below), so two instances writing one read model
/// apply each append once.
///
/// An append is all or nothing: its events come in one call. A failure (of `position`,
/// `apply`, or an event this binary cannot read) is logged and the projection starts again
/// from its position after a pause (1 s, doubling up to 30 s): it waits on a bad event rather
/// than skip it, as a read model that skipped one would be wrong for good.
///
/// ```
/// use std::sync::Mutex;
/// use eda::prelude::*;
/// use eda::{Aggregate, AggregateEvents, BoxError, Projected, Projection};
///
/// #[event("counter.added")]
/// pub struct Added { pub n: u64 }
///
/// #[derive(AggregateEvents)]
/// pub enum CounterEvent { Added(Added) }
///
/// #[derive(Default, serde::Serialize, serde::Deserialize)]
/// pub struct Counter { pub total: u64 }
///
/// impl Aggregate for Counter {
///     const TYPE: &'static str = "counter";
///     type Event = CounterEvent;
///     fn apply(&mut self, CounterEvent::Added(a): &CounterEvent) { self.total += a.n }
/// }
///
/// /// The sum over every counter, and the position it is at (a table and a row, in a database).
/// #[derive(Default)]
/// pub struct Grand(Mutex<(u64, u64)>);
///
/// impl Projection for Grand {
///     const NAME: &'static str = "grand-total";
///     type Aggregate = Counter;
///     async fn position(&self) -> Result<u64, BoxError> {
///         Ok(self.0.lock().unwrap().1)
///     }
///     async fn apply(&self, append: Projected<CounterEvent>) -> Result<(), BoxError> {
///         let mut model = self.0.lock().unwrap(); // one transaction
///         if append.position <= model.1 {
///             return Ok(()); // applied already
///         }
///         for CounterEvent::Added(a) in &append.events {
///             model.0 += a.n;
///         }
///         model.1 = append.position;
///         Ok(())
///     }
///     async fn reset(&self) -> Result<(), BoxError> {
///         *self.0.lock().unwrap() = (0, 0);
///         Ok(())
///     }
/// }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let grand = std::sync::Arc::new(Grand::default());
/// let app = eda::App::builder("counters")
///     .in_memory()
///     .handlers(&[])
///     .projection(std::sync::Arc::clone(&grand))
///     .start()
///     .await?;
/// let store = app.event_store();
/// store.append::<Counter>("c-1", 0, &[CounterEvent::Added(Added { n: 2 })]).await?;
/// store.append::<Counter>("c-2", 0, &[CounterEvent::Added(Added { n: 3 })]).await?;
/// let rebuilt = app.rebuild_projection("grand-total").await?; // from the first event again
/// assert_eq!((rebuilt.appends, grand.0.lock().unwrap().0), (2, 5));
/// # app.shutdown().await?;
/// # Ok(()) }
/// ```
pub trait Projection: Send + Sync + 'static {
    /// Its name, for logs and [`RunningApp::rebuild_projection`](crate::RunningApp::rebuild_projection)
    /// (`balances`); unique within an app.
    const NAME: &'static str;

    /// The aggregate type whose events it reads.
    type Aggregate: Aggregate;

    /// The position the read model is at: the `position` of the last append it applied, as
    /// stored with its data (0 when it has none). Read when the projection starts, and again
    /// after a failure.
    fn position(&self) -> impl Future<Output = Result<u64, BoxError>> + Send;

    /// Applies one append's events and stores `append.position` with them, in one
    /// transaction. An append at or below the stored position must change nothing.
    fn apply(
        &self,
        append: Projected<<Self::Aggregate as Aggregate>::Event>,
    ) -> impl Future<Output = Result<(), BoxError>> + Send;

    /// Empties the read model and sets its position to 0: the first step of a rebuild.
    fn reset(&self) -> impl Future<Output = Result<(), BoxError>> + Send;
}

/// A projection shared with the code that reads its model: the app runs it, the caller keeps
/// an `Arc` to query it.
impl<P: Projection> Projection for Arc<P> {
    const NAME: &'static str = P::NAME;
    type Aggregate = P::Aggregate;

    fn position(&self) -> impl Future<Output = Result<u64, BoxError>> + Send {
        P::position(self)
    }

    fn apply(
        &self,
        append: Projected<<Self::Aggregate as Aggregate>::Event>,
    ) -> impl Future<Output = Result<(), BoxError>> + Send {
        P::apply(self, append)
    }

    fn reset(&self) -> impl Future<Output = Result<(), BoxError>> + Send {
        P::reset(self)
    }
}

/// One append, as a [`Projection`] gets it: the events one
/// [`EventStore::append`](crate::EventStore::append) stored together.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Projected<E> {
    /// The aggregate the events belong to (`a-1`).
    pub aggregate_id: String,
    /// Where the append ends in its aggregate type's stream (the stream sequence of its last
    /// event): store it with the read model, it is what [`Projection::position`] returns.
    pub position: u64,
    /// When the broker stored the append's last event.
    pub time: SystemTime,
    /// The events, in order, each decoded with its upcast chain.
    pub events: Vec<E>,
}

/// What a rebuild did (see [`RunningApp::rebuild_projection`](crate::RunningApp::rebuild_projection)).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[non_exhaustive]
pub struct Rebuilt {
    /// Appends applied from the first, up to where the stream ended when the rebuild started.
    pub appends: u64,
    /// The position the read model is at now.
    pub position: u64,
}

/// A projection could not be rebuilt.
#[derive(Debug)]
pub struct ProjectionError {
    message: String,
    source: Option<BoxError>,
}

impl ProjectionError {
    fn new(message: String, source: Option<BoxError>) -> ProjectionError {
        ProjectionError { message, source }
    }

    /// No projection `name` among `known`.
    pub(crate) fn unknown(name: &str, known: &[&str]) -> ProjectionError {
        let known = match known {
            [] => "it has none".to_owned(),
            known => format!("it has {}", known.join(", ")),
        };
        ProjectionError::new(
            format!("this app has no projection `{name}` ({known})"),
            None,
        )
    }
}

impl fmt::Display for ProjectionError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.source {
            Some(source) => write!(f, "{}: {source}", self.message),
            None => f.write_str(&self.message),
        }
    }
}

impl std::error::Error for ProjectionError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source
            .as_deref()
            .map(|e| e as &(dyn std::error::Error + 'static))
    }
}

/// The subject on which every instance of a service with projections answers requests to
/// rebuild one (`eda.control.<service>.rebuild`, on NATS; `eda projections rebuild` asks
/// there). The request's payload is the projection's name; each instance answers with
/// [`RebuildAnswer`]s as JSON on the request's reply subject: the one that runs the projection
/// [`Started`](RebuildAnswer::Started) and later [`Rebuilt`](RebuildAnswer::Rebuilt) or
/// [`Failed`](RebuildAnswer::Failed), the others [`Standby`](RebuildAnswer::Standby).
pub fn projection_rebuild_subject(service: &str) -> String {
    format!("eda.control.{service}.rebuild")
}

/// One instance's answer to a rebuild request (see [`projection_rebuild_subject`]).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum RebuildAnswer {
    /// This instance runs the projection and started the rebuild; its result follows.
    Started,
    /// The rebuild caught up.
    Rebuilt(Rebuilt),
    /// The rebuild failed: why.
    Failed(String),
    /// Another instance runs the projection now.
    Standby,
    /// The service has no projection of that name: the message lists those it has.
    Unknown(String),
}

/// Answers a rebuild request for projection `name` through `reply` (see
/// [`projection_rebuild_subject`]).
pub(crate) async fn answer_rebuild<R, F>(controls: &[ProjectionControl], name: &[u8], reply: R)
where
    R: Fn(RebuildAnswer) -> F,
    F: Future<Output = ()>,
{
    let name = String::from_utf8_lossy(name);
    let Some(control) = controls.iter().find(|c| c.name == name) else {
        let known: Vec<&str> = controls.iter().map(|c| c.name).collect();
        return reply(RebuildAnswer::Unknown(
            ProjectionError::unknown(&name, &known).to_string(),
        ))
        .await;
    };
    if !control.is_running() {
        return reply(RebuildAnswer::Standby).await;
    }
    reply(RebuildAnswer::Started).await;
    reply(match control.rebuild().await {
        Ok(rebuilt) => RebuildAnswer::Rebuilt(rebuilt),
        Err(e) => RebuildAnswer::Failed(e.to_string()),
    })
    .await;
}

/// A rebuild asked of a running projection, answered once it caught up (or failed).
type RebuildRequest = oneshot::Sender<Result<Rebuilt, ProjectionError>>;

/// How an app asks its projection `name` for a rebuild, and lets go of its lease at shutdown.
#[derive(Debug, Clone)]
pub(crate) struct ProjectionControl {
    pub(crate) name: &'static str,
    requests: mpsc::Sender<RebuildRequest>,
    lease: Arc<Lease>,
}

/// The lease that lets one instance of a service run a projection.
#[derive(Debug)]
struct Lease {
    log: Arc<dyn EventLog>,
    /// `<service>.<projection>`.
    key: String,
    /// This app instance.
    holder: String,
    held: AtomicBool,
}

impl ProjectionControl {
    /// Whether this instance runs the projection now (holds its lease).
    pub(crate) fn is_running(&self) -> bool {
        self.lease.held.load(Ordering::SeqCst)
    }

    /// Resets the read model and applies every append from the first; resolves once the
    /// projection read up to where the stream ended when the rebuild started.
    pub(crate) async fn rebuild(&self) -> Result<Rebuilt, ProjectionError> {
        if !self.is_running() {
            return Err(ProjectionError::new(
                format!(
                    "projection `{}` runs in another instance of this service now (this one stands by): ask through `eda projections rebuild`, which reaches the one that runs it",
                    self.name
                ),
                None,
            ));
        }
        let (reply, answer) = oneshot::channel();
        let stopped = || {
            ProjectionError::new(
                format!(
                    "projection `{}` stopped before the rebuild was done (the app is stopping, or another instance took the projection over)",
                    self.name
                ),
                None,
            )
        };
        self.requests.send(reply).await.map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }

    /// Lets go of the lease if this instance holds it, so another takes over at once (at
    /// shutdown; a crashed instance's lease lapses after `LEASE_TTL`).
    pub(crate) async fn release(&self) {
        let lease = &self.lease;
        if lease.held.swap(false, Ordering::SeqCst) {
            if let Err(e) = lease.log.release(&lease.key, &lease.holder).await {
                tracing::warn!(projection = self.name, error = %log_failure(e), "cannot release the projection's lease; another instance takes over when it lapses");
            }
        }
    }
}

/// Starts a projection's work on the stream at the address given, answering rebuilds.
type StartProjection = Box<
    dyn FnOnce(
            Arc<dyn EventLog>,
            LogAddress,
            mpsc::Receiver<RebuildRequest>,
            Arc<Lease>,
        ) -> BoxFuture<'static, ()>
        + Send,
>;

/// A projection given to the app builder, started with the app.
pub(crate) struct PendingProjection {
    pub(crate) name: &'static str,
    pub(crate) kind: &'static str,
    start: StartProjection,
}

impl fmt::Debug for PendingProjection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PendingProjection")
            .field("name", &self.name)
            .field("kind", &self.kind)
            .finish()
    }
}

impl PendingProjection {
    pub(crate) fn new<P: Projection>(projection: P) -> PendingProjection {
        PendingProjection {
            name: P::NAME,
            kind: <P::Aggregate as Aggregate>::TYPE,
            start: Box::new(move |log, at, requests, lease| {
                Box::pin(run(Arc::new(projection), log, at, requests, lease))
            }),
        }
    }

    /// The projection's control, and its work for as long as it runs (aborted at shutdown,
    /// after [`ProjectionControl::release`]: the read model's position says where the next
    /// run starts). `holder` names this app instance for the projection's lease, taken on the
    /// `service`'s key.
    pub(crate) fn start(
        self,
        log: Arc<dyn EventLog>,
        at: LogAddress,
        service: &str,
        holder: &str,
    ) -> (ProjectionControl, BoxFuture<'static, ()>) {
        let (requests, receiver) = mpsc::channel(4);
        let lease = Arc::new(Lease {
            log: Arc::clone(&log),
            key: format!("{service}.{}", self.name),
            holder: holder.to_owned(),
            held: AtomicBool::new(false),
        });
        let control = ProjectionControl {
            name: self.name,
            requests,
            lease: Arc::clone(&lease),
        };
        (control, (self.start)(log, at, receiver, lease))
    }
}

/// The first pause after a failure; it doubles up to [`MOST_PAUSE`].
const FIRST_PAUSE: Duration = Duration::from_secs(1);
const MOST_PAUSE: Duration = Duration::from_secs(30);
/// How often a lease is renewed (or, standing by, tried).
const LEASE_RENEW: Duration = Duration::from_secs(2);

/// A rebuild in progress: who waits for it, where the stream ended when it started, and how
/// many appends it applied so far.
struct Rebuilding {
    waiters: Vec<RebuildRequest>,
    target: u64,
    appends: u64,
}

impl Rebuilding {
    fn answer(self, result: impl Fn() -> Result<Rebuilt, ProjectionError>) {
        for waiter in self.waiters {
            let _ = waiter.send(result());
        }
    }
}

async fn run<P: Projection>(
    projection: Arc<P>,
    log: Arc<dyn EventLog>,
    at: LogAddress,
    mut requests: mpsc::Receiver<RebuildRequest>,
    lease: Arc<Lease>,
) {
    let mut pause = FIRST_PAUSE;
    let mut rebuilding: Option<Rebuilding> = None;
    loop {
        // Standing by until this instance holds the lease; requests meanwhile are refused.
        match log.lease(&lease.key, &lease.holder).await {
            Ok(true) => lease.held.store(true, Ordering::SeqCst),
            held => {
                if let Err(e) = held {
                    tracing::warn!(projection = P::NAME, error = %log_failure(e), "cannot take the projection's lease");
                }
                tokio::select! {
                    () = tokio::time::sleep(LEASE_RENEW) => {}
                    request = requests.recv() => match request {
                        Some(reply) => drop(reply), // answered as "stopped"; the control says standby first
                        None => return,
                    },
                }
                continue;
            }
        }
        tracing::info!(projection = P::NAME, "this instance runs the projection");
        let outcome = tokio::select! {
            outcome = follow(&*projection, &*log, &at, &mut requests, &mut rebuilding, &mut pause) => outcome,
            lost = keep(&*log, &lease) => Err(lost),
        };
        lease.held.store(false, Ordering::SeqCst);
        match outcome {
            Ok(()) => return,
            Err(error) => {
                tracing::warn!(projection = P::NAME, stream = %at.stream, error = %error, retry_in = ?pause, "projection stopped; it starts again from its position");
                if let Some(rebuild) = rebuilding.take() {
                    let appends = rebuild.appends;
                    rebuild.answer(|| {
                        Err(ProjectionError::new(
                            format!("the rebuild of projection `{}` stopped after {appends} appends: {error} (the projection goes on trying from its position)", P::NAME),
                            None,
                        ))
                    });
                }
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(MOST_PAUSE);
            }
        }
    }
}

/// Renews the lease until it is lost: returns why.
async fn keep(log: &dyn EventLog, lease: &Lease) -> Failure {
    let mut renewed = tokio::time::Instant::now();
    loop {
        tokio::time::sleep(LEASE_RENEW).await;
        match log.lease(&lease.key, &lease.holder).await {
            Ok(true) => renewed = tokio::time::Instant::now(),
            Ok(false) => {
                return Failure("another instance took the projection's lease over".into())
            }
            Err(e) if renewed.elapsed() + LEASE_RENEW >= LEASE_TTL => {
                return Failure(format!(
                    "cannot renew the projection's lease before it lapses: {}",
                    log_failure(e)
                ))
            }
            Err(_) => {}
        }
    }
}

/// Why the projection stopped reading: what was attempted, and the error.
#[derive(Debug)]
struct Failure(String);

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Failure {}

fn log_failure(error: LogError) -> Failure {
    Failure(match error {
        LogError::Conflict { .. } => "unexpected conflict".to_owned(),
        LogError::Failed { message, source } => format!("{message}: {source}"),
    })
}

/// Reads the stream from the read model's position and applies each complete append, until
/// a failure (`Err`) or the app stops (`Ok`, no more requests can come).
async fn follow<P: Projection>(
    projection: &P,
    log: &dyn EventLog,
    at: &LogAddress,
    requests: &mut mpsc::Receiver<RebuildRequest>,
    rebuilding: &mut Option<Rebuilding>,
    pause: &mut Duration,
) -> Result<(), Failure> {
    let mut position = projection
        .position()
        .await
        .map_err(|e| Failure(format!("cannot read the read model's position: {e}")))?;
    let mut reader = log.read_stream(at, position).await.map_err(log_failure)?;
    let mut appends = Appends::default();
    // The last sequence read (applied, held or skipped).
    let mut seen = position;
    loop {
        if let Some(rebuild) = rebuilding.take() {
            if seen >= rebuild.target {
                let appends = rebuild.appends;
                tracing::info!(
                    projection = P::NAME,
                    appends,
                    position,
                    "projection rebuilt"
                );
                rebuild.answer(|| Ok(Rebuilt { appends, position }));
            } else {
                *rebuilding = Some(rebuild);
            }
        }
        let read = tokio::select! {
            biased;
            request = requests.recv() => {
                let Some(reply) = request else { return Ok(()) };
                if let Some(rebuild) = rebuilding.as_mut() {
                    rebuild.waiters.push(reply); // one rebuild answers both
                    continue;
                }
                if let Err(e) = projection.reset().await {
                    let why = format!("cannot reset the read model: {e}");
                    let _ = reply.send(Err(ProjectionError::new(
                        format!("projection `{}` was not rebuilt: {why}", P::NAME),
                        None,
                    )));
                    return Err(Failure(why));
                }
                let target = log.last_sequence(at).await.map_err(log_failure)?;
                tracing::info!(projection = P::NAME, stream = %at.stream, target, "read model reset; rebuilding it from the first event");
                *rebuilding = Some(Rebuilding { waiters: vec![reply], target, appends: 0 });
                (position, seen) = (0, 0);
                reader = log.read_stream(at, 0).await.map_err(log_failure)?;
                appends = Appends::default();
                continue;
            }
            read = reader.next() => read.map_err(log_failure)?,
        };
        for followed in read {
            seen = seen.max(followed.record.sequence);
            let taken = appends
                .take_reading(followed, log, at)
                .await
                .map_err(log_failure)?;
            if taken.complete.is_empty() {
                continue;
            }
            let append = projected::<P>(taken.complete, at)?;
            let end = append.position;
            projection
                .apply(append)
                .await
                .map_err(|e| Failure(format!("cannot apply the append ending at {end}: {e}")))?;
            position = end;
            *pause = FIRST_PAUSE;
            if let Some(rebuild) = rebuilding.as_mut() {
                rebuild.appends += 1;
            }
        }
    }
}

/// A complete append's messages as the projection's events.
fn projected<P: Projection>(
    complete: Vec<Followed>,
    at: &LogAddress,
) -> Result<Projected<<P::Aggregate as Aggregate>::Event>, Failure> {
    let last = complete
        .last()
        .map(|f| (f.subject.clone(), f.record.sequence, f.record.time));
    let Some((subject, position, time)) = last else {
        return Err(Failure("an empty append".to_owned()));
    };
    let prefix = at.stream_subjects.trim_end_matches('*');
    let aggregate_id = subject.strip_prefix(prefix).unwrap_or(&subject).to_owned();
    let at = LogAddress {
        subject,
        ..at.clone()
    };
    let mut events = Vec::with_capacity(complete.len());
    for followed in &complete {
        let (_, event) = decode::<<P::Aggregate as Aggregate>::Event>(&followed.record, &at)
            .map_err(|e| Failure(e.to_string()))?;
        events.push(event);
    }
    Ok(Projected {
        aggregate_id,
        position,
        time,
        events,
    })
}
