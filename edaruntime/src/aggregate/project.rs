//! Projections: read models built from one aggregate type's events in the order they were
//! stored, each keeping its own position next to its data, and rebuilt from the first event on
//! request. See [`Projection`].

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use futures_util::future::BoxFuture;
use tokio::sync::{mpsc, oneshot};

use super::appends::Appends;
use super::replay::decode;
use super::Aggregate;
use crate::error::BoxError;
use crate::port::{EventLog, Followed, LogAddress, LogError};

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
    /// Appends applied from the first, up to where the stream ended when the rebuild caught up.
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

/// The subject on which the instances of a service with projections answer requests to rebuild
/// one (`eda.control.<service>.rebuild`, one instance answering each, on NATS): the request's
/// payload is the projection's name, the answer JSON, `{"Ok":{"appends":N,"position":P}}` or
/// `{"Err":"why"}` (a `Result<Rebuilt, String>`). `eda projections rebuild` asks there.
pub fn projection_rebuild_subject(service: &str) -> String {
    format!("eda.control.{service}.rebuild")
}

/// Answers a rebuild request (`name` is the projection's name) with the JSON of
/// [`projection_rebuild_subject`].
pub(crate) async fn answer_rebuild(controls: &[ProjectionControl], name: &[u8]) -> Vec<u8> {
    let name = String::from_utf8_lossy(name);
    let result: Result<Rebuilt, String> = match controls.iter().find(|c| c.name == name) {
        Some(control) => control.rebuild().await.map_err(|e| e.to_string()),
        None => {
            let known: Vec<&str> = controls.iter().map(|c| c.name).collect();
            Err(ProjectionError::unknown(&name, &known).to_string())
        }
    };
    // A `Result` of a plain struct and a string always serializes.
    serde_json::to_vec(&result).unwrap_or_default()
}

/// A rebuild asked of a running projection, answered once it caught up (or failed).
type RebuildRequest = oneshot::Sender<Result<Rebuilt, ProjectionError>>;

/// How an app asks its running projection `name` for a rebuild.
#[derive(Debug, Clone)]
pub(crate) struct ProjectionControl {
    pub(crate) name: &'static str,
    requests: mpsc::Sender<RebuildRequest>,
}

impl ProjectionControl {
    /// Resets the read model and applies every append from the first; resolves once the
    /// projection read everything the stream held.
    pub(crate) async fn rebuild(&self) -> Result<Rebuilt, ProjectionError> {
        let (reply, answer) = oneshot::channel();
        let stopped = || {
            ProjectionError::new(
                format!(
                    "projection `{}` is not running (the app is stopping)",
                    self.name
                ),
                None,
            )
        };
        self.requests.send(reply).await.map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }
}

/// Starts a projection's work on the stream at the address given, answering rebuilds.
type StartProjection = Box<
    dyn FnOnce(
            Arc<dyn EventLog>,
            LogAddress,
            mpsc::Receiver<RebuildRequest>,
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
            start: Box::new(move |log, at, requests| {
                Box::pin(run(Arc::new(projection), log, at, requests))
            }),
        }
    }

    /// The projection's control, and its work reading the stream at `at` for as long as it
    /// runs (aborted at shutdown: the read model's position says where the next run starts).
    pub(crate) fn start(
        self,
        log: Arc<dyn EventLog>,
        at: LogAddress,
    ) -> (ProjectionControl, BoxFuture<'static, ()>) {
        let (requests, receiver) = mpsc::channel(4);
        let control = ProjectionControl {
            name: self.name,
            requests,
        };
        (control, (self.start)(log, at, receiver))
    }
}

/// The first pause after a failure; it doubles up to [`MOST_PAUSE`].
const FIRST_PAUSE: Duration = Duration::from_secs(1);
const MOST_PAUSE: Duration = Duration::from_secs(30);

/// A rebuild in progress: who waits for it, and how many appends it applied so far.
struct Rebuilding {
    reply: RebuildRequest,
    appends: u64,
}

async fn run<P: Projection>(
    projection: Arc<P>,
    log: Arc<dyn EventLog>,
    at: LogAddress,
    mut requests: mpsc::Receiver<RebuildRequest>,
) {
    let mut pause = FIRST_PAUSE;
    let mut rebuilding: Option<Rebuilding> = None;
    loop {
        match follow(
            &*projection,
            &*log,
            &at,
            &mut requests,
            &mut rebuilding,
            &mut pause,
        )
        .await
        {
            Ok(()) => return,
            Err(error) => {
                tracing::warn!(projection = P::NAME, stream = %at.stream, error = %error, retry_in = ?pause, "projection failed; it starts again from its position");
                if let Some(rebuild) = rebuilding.take() {
                    let _ = rebuild.reply.send(Err(ProjectionError::new(
                        format!("the rebuild of projection `{}` stopped after {} appends (the projection goes on trying)", P::NAME, rebuild.appends),
                        Some(error.into()),
                    )));
                }
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(MOST_PAUSE);
            }
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
    loop {
        let read = tokio::select! {
            biased;
            request = requests.recv() => {
                let Some(reply) = request else { return Ok(()) };
                projection
                    .reset()
                    .await
                    .map_err(|e| Failure(format!("cannot reset the read model: {e}")))?;
                tracing::info!(projection = P::NAME, stream = %at.stream, "read model reset; rebuilding it from the first event");
                *rebuilding = Some(Rebuilding { reply, appends: 0 });
                position = 0;
                reader = log.read_stream(at, 0).await.map_err(log_failure)?;
                appends = Appends::default();
                continue;
            }
            read = reader.next() => read.map_err(log_failure)?,
        };
        if read.is_empty() {
            if let Some(rebuild) = rebuilding.take() {
                tracing::info!(
                    projection = P::NAME,
                    appends = rebuild.appends,
                    position,
                    "projection rebuilt"
                );
                let _ = rebuild.reply.send(Ok(Rebuilt {
                    appends: rebuild.appends,
                    position,
                }));
            }
            continue;
        }
        for followed in read {
            let taken = appends
                .take_reading(followed, log, at)
                .await
                .map_err(log_failure)?;
            if taken.complete.is_empty() {
                continue;
            }
            let complete = taken.complete;
            let append = projected::<P>(complete, at)?;
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
