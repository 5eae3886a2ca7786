//! Peer benchmark, scenario "end-to-end", written with ruststream + ruststream-nats.
//!
//! ```text
//! eda-peer-ruststream --url nats://127.0.0.1:4222 --events 20000 --concurrency 64 --name t1
//! eda-peer-ruststream --url nats://127.0.0.1:4222 --events 20000 --concurrency 64 --name t2 --eda-headers
//! ```
//!
//! It creates the stream `PEER_<NAME>` (file storage) over `peer.<NAME>.order`, starts a
//! ruststream app whose one subscriber reads it through a durable pull consumer with `C`
//! workers, publishes `N` JSON events with `Nats-Msg-Id` set and 256 publish acks in flight,
//! and reports how long it took from the first publish until the `N`-th event was handled and
//! acked. The last stdout line is `{"events":N,"seconds":S,"events_per_s":R}`; the stream is
//! deleted before the program exits.
//!
//! With `--eda-headers` every event also carries the headers eda writes on a plain publish, with
//! the same names and value sizes (see [`EdaHeaders`]): the run then tells the cost of eda's
//! wire format from the cost of the framework around it.
//!
//! Exit codes: 0 on success, 1 on a runtime error or when the deadline passes, 2 on bad
//! arguments.

use std::error::Error;
use std::num::NonZeroUsize;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use async_nats::jetstream::stream::{Config as StreamConfig, StorageType};
use futures::{StreamExt, TryStreamExt, stream};
use ruststream::{Broker, ConnectedBroker, HeaderMap, Str};
use ruststream_nats::prelude::*;
use ruststream_nats::{ConnectedNatsBroker, JetStreamPublisher};
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;

type BoxError = Box<dyn Error + Send + Sync>;

/// How many `JetStream` publish acks may be outstanding at once while publishing.
const PUBLISH_WINDOW: usize = 256;

/// From the first publish: past this the run is abandoned and the program exits with code 1.
const DEADLINE: Duration = Duration::from_secs(300);

/// ruststream-nats' own default for a consumer's `max_ack_pending`. Kept unless the concurrency
/// asks for more, so the server never holds back deliveries the workers could take.
const MIN_MAX_ACK_PENDING: i64 = 1024;

/// The event of the benchmark: about 250 bytes of JSON.
///
/// `Outgoing` names no subject: each publish names it with `.to(..)`, since it depends on
/// `--name`.
#[derive(Debug, Serialize, Deserialize, Outgoing)]
struct BenchOrder {
    id: u64,
    sent_ns: u64,
    customer: String,
    email: String,
    items: Vec<String>,
    total_cents: u64,
    currency: String,
    note: String,
}

impl BenchOrder {
    fn new(id: u64) -> Self {
        Self {
            id,
            sent_ns: now_ns(),
            customer: format!("customer-{:08}", id % 100_000),
            email: format!("customer{:08}@example.com", id % 100_000),
            items: vec![
                "sku-00017 x2".to_owned(),
                "sku-00342 x1".to_owned(),
                "sku-10001 x4".to_owned(),
            ],
            total_cents: 1000 + id % 9000,
            currency: "EUR".to_owned(),
            note: "leave the parcel at the door, please ring twice".to_owned(),
        }
    }
}

fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| {
            u64::try_from(since.as_nanos()).unwrap_or(u64::MAX)
        })
}

// ---- command line ---------------------------------------------------------------------------

struct Args {
    url: String,
    events: u64,
    concurrency: NonZeroUsize,
    name: String,
    eda_headers: bool,
}

const USAGE: &str = "usage: eda-peer-ruststream --url nats://HOST:PORT --events N --concurrency C \
                     --name NAME [--eda-headers]";

impl Args {
    fn parse(mut args: impl Iterator<Item = String>) -> Result<Self, String> {
        let (mut url, mut events, mut concurrency, mut name) = (None, None, None, None);
        let mut eda_headers = false;
        while let Some(flag) = args.next() {
            let mut value = || args.next().ok_or_else(|| format!("{flag} needs a value"));
            match flag.as_str() {
                "--url" => url = Some(value()?),
                "--events" => {
                    let text = value()?;
                    let n: u64 = text
                        .parse()
                        .map_err(|_| format!("--events: not a whole number: {text:?}"))?;
                    if n == 0 {
                        return Err("--events must be at least 1".to_owned());
                    }
                    events = Some(n);
                }
                "--concurrency" => {
                    let text = value()?;
                    concurrency = Some(
                        text.parse::<NonZeroUsize>()
                            .map_err(|_| format!("--concurrency: not a number >= 1: {text:?}"))?,
                    );
                }
                "--name" => {
                    let text = value()?;
                    // The name goes into a subject token and a stream name.
                    let valid = !text.is_empty()
                        && text
                            .chars()
                            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
                    if !valid {
                        return Err(format!("--name: use [A-Za-z0-9_-]+, not {text:?}"));
                    }
                    name = Some(text);
                }
                "--eda-headers" => eda_headers = true,
                other => return Err(format!("unknown argument {other:?}")),
            }
        }
        Ok(Self {
            url: url.ok_or("--url is required")?,
            events: events.ok_or("--events is required")?,
            concurrency: concurrency.ok_or("--concurrency is required")?,
            name: name.ok_or("--name is required")?,
            eda_headers,
        })
    }
}

// ---- the consuming service ------------------------------------------------------------------

/// What the handler reports to `main`: the app's state, shared with `main` through an `Arc`.
struct Progress {
    target: u64,
    acked: AtomicU64,
    /// When the `target`-th delivery was acked.
    finished_at: OnceLock<Instant>,
    finished: Notify,
}

impl Progress {
    fn count_one(&self) {
        if self.acked.fetch_add(1, Ordering::Relaxed) + 1 == self.target {
            let _ = self.finished_at.set(Instant::now());
            // `notify_one` keeps a permit when nobody waits yet, so the wake-up is never lost.
            self.finished.notify_one();
        }
    }
}

/// The handler body, written for ruststream's macro-free `subscriber(source, body)` path: the
/// `#[subscriber(..)]` attribute takes a source fixed at compile time, and this source (stream
/// and subject) depends on `--name`.
///
/// The input `&BenchOrder` is decoded from the JSON payload by ruststream's JSON codec before
/// the body runs. The body does nothing with it; returning `Ok(())` is ruststream's ack
/// outcome, and the runtime acks the delivery explicitly (`+ACK` on the `JetStream` message)
/// after the body has returned.
struct Consume;

impl Handle<BenchOrder, (), (), (), Arc<Progress>> for Consume {
    async fn handle(
        &self,
        _order: &BenchOrder,
        _outs: &(),
        ctx: &mut Context<'_, (), Arc<Progress>>,
    ) -> Result<(), HandlerOutcome> {
        // The end of the measurement is counted after the ack, in ruststream's post-ack hook:
        // the runtime spawns it once its settle step has sent the `+ACK` (async-nats'
        // `Message::ack`, which returns once the ack is handed to the connection, the same
        // point the raw async-nats baseline counts at), and only for an `Ack` outcome. The hook
        // costs a spawned task per delivery; counting in the body instead measured the same
        // within the noise.
        let progress = Arc::clone(ctx.state());
        ctx.after_ack(async move { progress.count_one() });
        Ok(())
    }
}

/// The service: one subscriber on a durable pull consumer of `stream`.
fn service(args: &Args, stream: &str, subject: &str, progress: Arc<Progress>) -> impl App {
    let source = JetStreamSubject::new(subject, stream)
        .durable(format!("peer_{}", args.name))
        .max_ack_pending(
            MIN_MAX_ACK_PENDING.max(i64::try_from(args.concurrency.get()).unwrap_or(i64::MAX)),
        );
    let concurrency = args.concurrency;
    RustStream::new(AppInfo::new(
        "eda-peer-ruststream",
        env!("CARGO_PKG_VERSION"),
    ))
    .on_startup(async move |()| Ok::<_, std::convert::Infallible>(progress))
    .with_broker(NatsBroker::new(args.url.as_str()), move |b| {
        // Concurrency: `workers(C)` is ruststream's mount-site spelling of
        // `#[subscriber(.., workers(C))]`, a pool of C long-lived workers fed by the
        // subscription's loop, so at most C deliveries are in a handler or being acked at
        // once.
        b.include(subscriber(source, Consume).workers(concurrency).build());
    })
}

// ---- eda's headers, written by hand --------------------------------------------------------

/// The headers eda's wire format puts on a plain publish besides `Nats-Msg-Id` (a UUID v7),
/// with the same names and value sizes as eda's end-to-end scenario sends: `Eda-Source`
/// (`bench-publisher`) alone. eda sends nothing the receiver can derive (DESIGN.md §4): no
/// version 1, no correlation id equal to the event id, no time (the stored message's
/// timestamp is the event time), no trace outside a trace. This crate does not depend on eda:
/// the values are made here, per event, as eda makes them.
///
/// ruststream's header map keeps names in lowercase (`eda-source`): the same bytes on the wire.
struct EdaHeaders {
    /// Start of the run in Unix milliseconds: the time part of the ids.
    millis: u64,
    /// Mixed into the ids' random part, so two runs do not send the same ones.
    seed: u64,
}

impl EdaHeaders {
    fn new() -> Self {
        let now = now_ns();
        Self {
            millis: now / 1_000_000,
            seed: splitmix64(now),
        }
    }

    /// A UUID-v7-shaped id, 36 characters, unique in the run (event `id` in its last 48 bits).
    fn event_id(&self, id: u64) -> String {
        let random = splitmix64(self.seed ^ id);
        format!(
            "{:08x}-{:04x}-7{:03x}-{:04x}-{:012x}",
            (self.millis >> 16) & 0xffff_ffff,
            self.millis & 0xffff,
            random & 0xfff,
            0x8000 | ((random >> 12) & 0x3fff),
            id & 0xffff_ffff_ffff
        )
    }

    fn headers(&self) -> HeaderMap {
        let mut headers = HeaderMap::with_capacity(1);
        headers.insert(Str::from_static("eda-source"), "bench-publisher");
        headers
    }
}

/// A cheap, well-mixed 64-bit hash (splitmix64's finalizer): stands in for random digits.
fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}


// ---- the run --------------------------------------------------------------------------------

/// Publishes `count` events to `subject`, each with `Nats-Msg-Id` `<name>-<id>` (or, with
/// `eda`, a UUID-sized id and eda's other headers), with at most `PUBLISH_WINDOW` awaiting
/// their publish ack.
///
/// Through ruststream's own `JetStream` publisher: its `publish()` sends and then awaits the
/// stream's ack, so `PUBLISH_WINDOW` of those futures driven at once is a pipeline with that
/// many acks in flight. Its builder carries a header map (`with_headers`) next to the message
/// id, so eda's headers go through the same publisher.
async fn publish_all(
    publisher: &JetStreamPublisher,
    subject: &str,
    name: &str,
    count: u64,
    eda: Option<&EdaHeaders>,
) -> Result<(), BoxError> {
    stream::iter(0..count)
        .map(|id| async move {
            let order = BenchOrder::new(id);
            let message = publisher.message(&order).to(subject);
            let published = match eda {
                None => message.message_id(format!("{name}-{id}")).publish().await,
                Some(eda) => {
                    message
                        .message_id(eda.event_id(id))
                        .with_headers(eda.headers())
                        .publish()
                        .await
                }
            };
            published.map_err(|err| format!("publish of event {id} failed: {err}"))
        })
        .buffer_unordered(PUBLISH_WINDOW)
        .try_for_each(|()| async { Ok(()) })
        .await?;
    Ok(())
}

/// Starts the service, publishes, and waits for the last ack: the seconds from the first
/// publish to the `N`-th ack. `Ok(None)` when the deadline passed.
async fn measure(
    args: &Args,
    producer: &ConnectedNatsBroker,
    stream: &str,
    subject: &str,
) -> Result<Option<f64>, BoxError> {
    let progress = Arc::new(Progress {
        target: args.events,
        acked: AtomicU64::new(0),
        finished_at: OnceLock::new(),
        finished: Notify::new(),
    });
    // `start` returns once the consumer exists and its subscription is open.
    let running = service(args, stream, subject, Arc::clone(&progress))
        .start()
        .await
        .map_err(|err| format!("cannot start the ruststream app: {err}"))?;

    let publisher = producer.publisher(JetStreamPublish::default());
    let started = Instant::now();
    let run = async {
        let eda = args.eda_headers.then(EdaHeaders::new);
        publish_all(&publisher, subject, &args.name, args.events, eda.as_ref()).await?;
        progress.finished.notified().await;
        let finished_at = progress.finished_at.get().copied();
        finished_at.ok_or_else(|| BoxError::from("woken before the last ack"))
    };
    let outcome = tokio::time::timeout(DEADLINE, run).await;

    let seconds = match outcome {
        Ok(Ok(finished_at)) => Some(finished_at.duration_since(started).as_secs_f64()),
        Ok(Err(err)) => {
            let _ = running.shutdown().await;
            return Err(err);
        }
        Err(_elapsed) => {
            eprintln!(
                "deadline of {} s passed: {} of {} events handled and acked",
                DEADLINE.as_secs(),
                progress.acked.load(Ordering::Relaxed),
                args.events
            );
            None
        }
    };
    running
        .shutdown()
        .await
        .map_err(|err| format!("cannot shut the ruststream app down: {err}"))?;
    Ok(seconds)
}

/// The last line of stdout.
#[derive(Serialize)]
struct Report {
    events: u64,
    seconds: f64,
    events_per_s: f64,
}

async fn run(args: Args) -> Result<ExitCode, BoxError> {
    let stream = format!("PEER_{}", args.name);
    let subject = format!("peer.{}.order", args.name);

    // A connection of its own for the producer and the stream administration, as a separate
    // producing service would have.
    let producer = NatsBroker::new(args.url.as_str())
        .connect()
        .await
        .map_err(|err| format!("cannot connect to {}: {err}", args.url))?;
    let js = producer.jetstream();
    js.create_stream(StreamConfig {
        name: stream.clone(),
        subjects: vec![subject.clone()],
        storage: StorageType::File,
        ..Default::default()
    })
    .await
    .map_err(|err| format!("cannot create stream {stream}: {err}"))?;

    let measured = measure(&args, &producer, &stream, &subject).await;

    // The stream goes whatever happened above.
    let deleted = js
        .delete_stream(&stream)
        .await
        .map_err(|err| format!("cannot delete stream {stream}: {err}"));
    let _ = producer.shutdown().await;

    let Some(seconds) = measured? else {
        deleted?;
        return Ok(ExitCode::FAILURE);
    };
    deleted?;
    // Lossless for any count this benchmark runs (below 2^53).
    #[allow(clippy::cast_precision_loss)]
    let events_per_s = args.events as f64 / seconds;
    // A struct rather than `json!`, so the keys keep this order.
    let report = Report {
        events: args.events,
        seconds,
        events_per_s,
    };
    println!("{}", serde_json::to_string(&report)?);
    Ok(ExitCode::SUCCESS)
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = match Args::parse(std::env::args().skip(1)) {
        Ok(args) => args,
        Err(err) => {
            eprintln!("eda-peer-ruststream: {err}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    match run(args).await {
        Ok(code) => code,
        Err(err) => {
            eprintln!("eda-peer-ruststream: {err}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn eda_headers_have_eda_sizes() {
        let eda = EdaHeaders::new();
        assert_eq!(eda.event_id(12_345).len(), 36);
        let headers = eda.headers();
        assert_eq!(headers.len(), 1);
        assert_eq!(headers.get_str("eda-source"), Some("bench-publisher"));
    }
}
