//! Bad input at the broker and from peers, on real `nats-server` processes (one per test): URLs
//! eda cannot use, servers and existing JetStream objects it cannot work with, and messages
//! that peers (plain NATS clients) or eda's own publishers get wrong. Every row of
//! `docs/bad-input.md` that names this file is one test here.
#![allow(missing_docs, missing_debug_implementations)]

use std::io::Read;
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use async_nats::jetstream;
use async_nats::HeaderMap;
use eda::error::Provisioned;
use eda::prelude::*;
use eda::testing::{NatsServer, TestApp};
use eda::{DlqReason, ErrorKind, Metadata, PublishError};

mod support;

const SERVICE: &str = "bad-input";

#[event("parcel.sent")]
pub struct ParcelSent {
    pub id: u64,
}

#[event("parcel.refused")]
pub struct ParcelRefused {
    pub id: u64,
}

#[event("parcel.bulky")]
pub struct ParcelBulky {
    pub id: u64,
    pub filler: String,
}

/// What the handlers saw.
#[derive(Default)]
pub struct Seen {
    parcels: Mutex<Vec<(u64, Metadata)>>,
    refusals: AtomicU32,
    audited: Mutex<Vec<String>>,
}

impl Seen {
    fn parcels(&self) -> Vec<(u64, Metadata)> {
        self.parcels.lock().unwrap().clone()
    }
}

#[handler(service = "bad-input")]
async fn record_parcel(event: Envelope<ParcelSent>, seen: State<Seen>) {
    let metadata = (*event.metadata).clone();
    seen.parcels
        .lock()
        .unwrap()
        .push((event.event.id, metadata));
}

/// Every parcel event, by the subject it came on.
#[handler("parcel.*", service = "bad-input")]
async fn audit_parcels(event: RawEvent, seen: State<Seen>) {
    seen.audited
        .lock()
        .unwrap()
        .push(event.metadata().subject.to_string());
}

#[handler(service = "bad-input", retries = 0)]
async fn refuse_parcel(event: ParcelRefused, seen: State<Seen>) -> Result<(), HandlerError> {
    seen.refusals.fetch_add(1, Ordering::SeqCst);
    Err(HandlerError::permanent(format!(
        "parcel {} is refused",
        event.id
    )))
}

// ---- rigs and helpers -----------------------------------------------------------------------

fn server() -> NatsServer {
    NatsServer::start().unwrap_or_else(|e| panic!("{e}"))
}

/// A server started with a configuration file, removed with the returned guard.
fn server_with_config(name: &str, config: &str) -> (NatsServer, TempFile) {
    let file = TempFile::write(name, config);
    let server = NatsServer::start_with_args(&["-c", &file.0.to_string_lossy()])
        .unwrap_or_else(|e| panic!("{e}"));
    (server, file)
}

/// A temporary file, removed on drop.
pub struct TempFile(std::path::PathBuf);

impl TempFile {
    fn write(name: &str, text: &str) -> TempFile {
        let path = std::env::temp_dir().join(format!(
            "eda-bad-input-{name}-{}-{}",
            std::process::id(),
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0)
        ));
        std::fs::write(&path, text).expect("the file is written");
        TempFile(path)
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

async fn app(server: &NatsServer, seen: &Arc<Seen>, handlers: &[&str]) -> TestApp {
    TestApp::builder(SERVICE)
        .nats(server.url())
        .configure(|b| b.ack_wait(Duration::from_secs(2)))
        .shared_state(Arc::clone(seen))
        .handlers(handlers)
        .start()
        .await
        .unwrap_or_else(|e| panic!("the app starts: {e}"))
}

async fn plain_client(server: &NatsServer) -> jetstream::Context {
    let client = async_nats::connect(server.url())
        .await
        .expect("a plain client connects");
    jetstream::new(client)
}

/// Publishes with a plain client and waits until the server stored it; returns its sequence.
async fn publish_plain(
    js: &jetstream::Context,
    subject: &str,
    headers: HeaderMap,
    payload: &'static str,
) -> u64 {
    js.publish_with_headers(subject.to_owned(), headers, payload.into())
        .await
        .expect("sent")
        .await
        .expect("stored")
        .sequence
}

/// The error of a start that must fail.
fn start_error(result: eda::Result<impl std::fmt::Debug>) -> eda::Error {
    match result {
        Err(e) => e,
        Ok(app) => panic!("expected an error, but {app:?} started"),
    }
}

/// Bounds a call that must fail by itself: hanging is the bug these tests look for.
async fn within_a_minute<T>(what: &str, f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(60), f)
        .await
        .unwrap_or_else(|_| panic!("{what} hung instead of failing"))
}

fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
    let mut headers = HeaderMap::new();
    for (name, value) in pairs {
        headers.insert(*name, *value);
    }
    headers
}

fn nanos(time: SystemTime) -> i128 {
    time.duration_since(UNIX_EPOCH).unwrap().as_nanos() as i128
}

// ---- URLs and reaching the server -----------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nats_url_that_cannot_be_parsed_is_a_config_error() {
    let error = start_error(
        within_a_minute(
            "starting with an unparsable URL",
            App::builder(SERVICE)
                .nats("nats://127.0.0.1:notaport")
                .without_env()
                .handlers(&[])
                .start(),
        )
        .await,
    );
    assert_eq!(error.kind(), ErrorKind::Config, "{error:?}");
    let message = error.to_string();
    assert!(
        message.starts_with("cannot parse NATS URL `nats://127.0.0.1:notaport`: ")
            && message.contains("invalid port number"),
        "{message}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_in_the_url_that_are_not_percent_encoding_are_a_config_error() {
    let server = server();
    let url = format!("nats://ada:100%@127.0.0.1:{}", server.port());
    let error = start_error(
        within_a_minute(
            "starting with badly encoded credentials",
            App::builder(SERVICE)
                .nats(url)
                .without_env()
                .handlers(&[])
                .start(),
        )
        .await,
    );
    assert_eq!(error.kind(), ErrorKind::Config, "{error:?}");
    assert_eq!(
        error.to_string(),
        format!(
            "the credentials in the NATS URL `nats://ada:***@127.0.0.1:{}` are not valid percent-encoding",
            server.port()
        )
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_name_that_does_not_resolve_is_a_config_error() {
    let error = start_error(
        within_a_minute(
            "starting against a host that does not resolve",
            App::builder(SERVICE)
                .nats("nats://no-such-host.invalid:4222")
                .without_env()
                .handlers(&[])
                .connect_timeout(Duration::from_secs(2))
                .start(),
        )
        .await,
    );
    assert_eq!(error.kind(), ErrorKind::Config, "{error:?}");
    let message = error.to_string();
    assert!(
        message.starts_with("cannot resolve the NATS URL `nats://no-such-host.invalid:4222`: ")
            && message.contains("DNS error"),
        "{message}"
    );
}

/// A `nats-server` without `-js` (which `NatsServer` always passes), killed on drop.
struct ServerWithoutJetStream {
    child: Child,
    port: u16,
}

impl ServerWithoutJetStream {
    fn start() -> ServerWithoutJetStream {
        let binary = eda::testing::nats_server_binary().unwrap_or_else(|e| panic!("{e}"));
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let child = Command::new(binary)
            .args(["-a", "127.0.0.1", "-p", &port.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nats-server runs");
        let mut server = ServerWithoutJetStream { child, port };
        let deadline = Instant::now() + Duration::from_secs(20);
        while !server.answers() {
            if let Ok(Some(status)) = server.child.try_wait() {
                panic!("nats-server without -js exited at start: {status}");
            }
            assert!(
                Instant::now() < deadline,
                "nats-server without -js did not answer on port {port}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        server
    }

    /// Whether the client port answers with its INFO line.
    fn answers(&self) -> bool {
        let Ok(mut stream) = TcpStream::connect(("127.0.0.1", self.port)) else {
            return false;
        };
        let _ = stream.set_read_timeout(Some(Duration::from_millis(500)));
        let mut buf = [0u8; 4];
        stream.read_exact(&mut buf).is_ok() && &buf == b"INFO"
    }

    fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }
}

impl Drop for ServerWithoutJetStream {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_without_jetstream_is_a_connect_error_that_says_so() {
    let server = ServerWithoutJetStream::start();
    let error = start_error(
        within_a_minute(
            "starting against a server without JetStream",
            App::builder(SERVICE)
                .nats(server.url())
                .without_env()
                .handlers(&[])
                .start(),
        )
        .await,
    );
    assert_eq!(error.kind(), ErrorKind::Connect, "{error:?}");
    assert_eq!(
        error.to_string(),
        format!(
            "the NATS server at `{}` has JetStream disabled: start nats-server with `-js`",
            server.url()
        )
    );
}

#[test]
fn a_tls_ca_file_that_does_not_exist_is_a_startup_error() {
    let error = App::builder(SERVICE)
        .nats("tls://127.0.0.1:4443")
        .nats_tls_ca("/nonexistent/eda-ca.pem")
        .without_env()
        .handlers(&[])
        .build()
        .unwrap_err();
    assert_eq!(error.kind(), ErrorKind::Startup, "{error:?}");
    assert_eq!(
        error.problems(),
        ["TLS CA `/nonexistent/eda-ca.pem` is not a readable file"]
    );
}

// ---- streams and consumers that already exist -----------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_existing_stream_without_limits_retention_stops_startup_and_is_left_alone() {
    let server = server();
    let js = plain_client(&server).await;
    js.create_stream(jetstream::stream::Config {
        name: "EDA_EVENTS".into(),
        subjects: vec!["events.>".into()],
        retention: jetstream::stream::RetentionPolicy::WorkQueue,
        ..Default::default()
    })
    .await
    .unwrap();
    let error = start_error(
        within_a_minute(
            "starting against a work-queue stream",
            App::builder(SERVICE)
                .nats(server.url())
                .without_env()
                .handlers(&[])
                .start(),
        )
        .await,
    );
    assert_eq!(
        error.kind(),
        ErrorKind::Provision {
            what: Provisioned::Stream
        },
        "{error:?}"
    );
    assert_eq!(
        error.to_string(),
        "stream `EDA_EVENTS` exists with `retention` WorkQueue, but eda needs `limits` (every service reads every event)"
    );
    let config = js
        .get_stream("EDA_EVENTS")
        .await
        .unwrap()
        .info()
        .await
        .unwrap()
        .config
        .clone();
    assert_eq!(
        config.retention,
        jetstream::stream::RetentionPolicy::WorkQueue,
        "the stream was left as it was"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_existing_stream_with_other_replicas_than_asked_for_stops_startup() {
    let server = server();
    let js = plain_client(&server).await;
    js.create_stream(jetstream::stream::Config {
        name: "EDA_EVENTS".into(),
        subjects: vec!["events.>".into()],
        num_replicas: 1,
        ..Default::default()
    })
    .await
    .unwrap();
    let error = start_error(
        within_a_minute(
            "starting against a stream of one replica, asking for three",
            App::builder(SERVICE)
                .nats(server.url())
                .without_env()
                .stream_replicas(3)
                .handlers(&[])
                .start(),
        )
        .await,
    );
    assert_eq!(
        error.kind(),
        ErrorKind::Provision {
            what: Provisioned::Stream
        },
        "{error:?}"
    );
    assert_eq!(
        error.to_string(),
        "stream `EDA_EVENTS` exists with `num_replicas` 1, but 3 was asked for"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_existing_consumer_without_explicit_acks_stops_startup() {
    let server = server();
    let seen = Arc::new(Seen::default());
    // The streams first, with no handler; then the handler's durable, made by hand.
    app(&server, &seen, &[]).await.shutdown().await.unwrap();
    let js = plain_client(&server).await;
    js.get_stream("EDA_EVENTS")
        .await
        .unwrap()
        .create_consumer(jetstream::consumer::pull::Config {
            durable_name: Some("bad-input__record_parcel".into()),
            filter_subject: "events.parcel.sent".into(),
            ack_policy: jetstream::consumer::AckPolicy::None,
            ..Default::default()
        })
        .await
        .unwrap();
    let error = start_error(
        within_a_minute(
            "starting against a consumer without acks",
            TestApp::builder(SERVICE)
                .nats(server.url())
                .shared_state(Arc::clone(&seen))
                .handlers(&["record_parcel"])
                .start(),
        )
        .await,
    );
    assert_eq!(
        error.kind(),
        ErrorKind::Provision {
            what: Provisioned::Consumer
        },
        "{error:?}"
    );
    assert_eq!(
        error.to_string(),
        "consumer `bad-input__record_parcel` exists with `ack_policy` None, but eda needs explicit acks"
    );
}

// ---- publishing ------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_payload_over_the_max_payload_is_a_broker_error_and_nothing_is_stored() {
    const MAX_PAYLOAD: usize = 4096;
    let (server, _config) =
        server_with_config("max-payload", &format!("max_payload: {MAX_PAYLOAD}\n"));
    let seen = Arc::new(Seen::default());
    let app = app(&server, &seen, &[]).await;
    let bulky = ParcelBulky {
        id: 1,
        filler: "x".repeat(2 * MAX_PAYLOAD),
    };
    let typed = within_a_minute("publishing too much", app.publish(&bulky))
        .await
        .unwrap_err();
    let raw = within_a_minute(
        "publishing too much raw",
        app.publisher()
            .publish_raw("parcel.bulky", 1, vec![b'x'; 2 * MAX_PAYLOAD]),
    )
    .await
    .unwrap_err();
    for error in [typed, raw] {
        assert!(matches!(error, PublishError::Broker(_)), "{error:?}");
        let message = error.to_string();
        assert!(
            message.starts_with("the broker did not store the message: ")
                && message.contains(&format!(
                    "max payload size exceeded: Payload size limit of {MAX_PAYLOAD} exceeded by message size of "
                )),
            "{message}"
        );
    }
    assert!(
        app.published_raw().await.unwrap().is_empty(),
        "nothing was stored"
    );
    app.publish(&ParcelBulky {
        id: 2,
        filler: "x".into(),
    })
    .await
    .expect("a small event still goes through the same connection");
    assert_eq!(app.published_raw().await.unwrap().len(), 1);
}

/// What a peer that speaks the NATS protocol by hand gets for a `PUB` of `size` bytes to
/// `subject`: the server's first `-ERR` line (the protocol has no other answer to a refused
/// publish), or what the connection said instead.
async fn raw_publish_answer(port: u16, subject: &str, size: usize) -> String {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    let stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("the client port answers");
    let (read, mut write) = stream.into_split();
    let mut lines = BufReader::new(read).lines();
    let info = lines.next_line().await.expect("INFO").unwrap_or_default();
    assert!(info.starts_with("INFO "), "{info}");
    let mut out =
        format!("CONNECT {{\"verbose\":false,\"pedantic\":false}}\r\nPUB {subject} {size}\r\n")
            .into_bytes();
    out.extend(std::iter::repeat_n(b'x', size));
    out.extend(b"\r\nPING\r\n");
    // The server may close the connection before it read everything.
    let _ = write.write_all(&out).await;
    loop {
        match lines.next_line().await {
            Ok(Some(line)) if line.starts_with("-ERR") => return line,
            Ok(Some(_)) => continue,
            Ok(None) => return "the connection was closed without -ERR".into(),
            Err(e) => return format!("the connection failed without -ERR: {e}"),
        }
    }
}

/// A peer's message over the server's `max_payload`: async-nats refuses it before sending, a
/// peer writing the protocol by hand gets the server's `-ERR 'Maximum Payload Violation'`
/// (and loses its connection); nothing is stored, so no handler sees it. The eda service keeps
/// running: the events before and after it are each handled once, and nothing is
/// dead-lettered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peers_payload_over_the_max_payload_is_refused_by_the_server_and_the_service_goes_on() {
    const MAX_PAYLOAD: usize = 4096;
    let (server, _config) =
        server_with_config("peer-max-payload", &format!("max_payload: {MAX_PAYLOAD}\n"));
    let seen = Arc::new(Seen::default());
    let app = app(&server, &seen, &["record_parcel"]).await;
    let js = plain_client(&server).await;
    publish_plain(&js, "events.parcel.sent", headers(&[]), r#"{"id": 1}"#).await;

    let bulky = format!(
        r#"{{"id": 2, "filler": "{}"}}"#,
        "x".repeat(2 * MAX_PAYLOAD)
    );
    let refused = within_a_minute(
        "a plain client publishing too much",
        js.publish("events.parcel.sent", bulky.into()),
    )
    .await
    .expect_err("async-nats refuses a message over the server's max_payload");
    assert!(
        refused.to_string().contains(&format!(
            "Payload size limit of {MAX_PAYLOAD} exceeded by message size of"
        )),
        "{refused}"
    );
    let answer = within_a_minute(
        "a hand-written PUB over max_payload",
        raw_publish_answer(server.port(), "events.parcel.sent", 2 * MAX_PAYLOAD),
    )
    .await;
    assert_eq!(answer, "-ERR 'Maximum Payload Violation'");

    publish_plain(&js, "events.parcel.sent", headers(&[]), r#"{"id": 3}"#).await;
    app.settle().await;
    let mut ids: Vec<u64> = seen.parcels().iter().map(|(id, _)| *id).collect();
    ids.sort_unstable();
    assert_eq!(ids, [1, 3], "the events around the refused ones, each once");
    let stored = js
        .get_stream("EDA_EVENTS")
        .await
        .unwrap()
        .info()
        .await
        .unwrap()
        .state
        .messages;
    assert_eq!(stored, 2, "the refused messages were not stored");
    assert!(app.dead_letters().await.unwrap().is_empty());
    let stats = app.stats("record_parcel");
    assert_eq!((stats.handled, stats.dead_lettered), (2, 0), "{stats:?}");
    app.publish(&ParcelSent { id: 4 })
        .await
        .expect("the service still publishes");
    app.settle().await;
    assert_eq!(app.stats("record_parcel").handled, 3, "and still handles");
}

/// `publish_raw` takes names checked at run time (typed events' names are checked at compile
/// time): one that is not a single subject is refused before anything is sent (a wildcard
/// would be stored literally and reach only the wrong handlers).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_raw_refuses_names_that_are_not_one_subject() {
    let server = server();
    let seen = Arc::new(Seen::default());
    let app = app(&server, &seen, &["record_parcel", "audit_parcels"]).await;
    let publisher = app.publisher();
    for (name, why) in [
        ("parcel sent", "it contains white space"),
        ("parcel.*", "wildcards subscribe, they do not publish"),
        ("parcel.>", "wildcards subscribe, they do not publish"),
        ("parcel..sent", "it has an empty token"),
        ("", "it is empty"),
    ] {
        let refused = publisher
            .publish_raw(name, 1, r#"{"id": 1}"#)
            .await
            .unwrap_err();
        assert!(matches!(refused, PublishError::Invalid(_)), "{refused:?}");
        assert_eq!(
            refused.to_string(),
            format!("cannot publish event `{name}`: {why}; an event name is one subject, e.g. `user.created`")
        );
    }
    publisher
        .publish_raw("parcel.sent", 1, r#"{"id": 2}"#)
        .await
        .unwrap();
    app.settle().await;
    let stored: Vec<String> = app
        .published_raw()
        .await
        .unwrap()
        .iter()
        .map(|m| m.metadata().subject.to_string())
        .collect();
    assert_eq!(stored, ["parcel.sent"], "only the good one was sent");
    let parcels: Vec<u64> = seen.parcels().iter().map(|(id, _)| *id).collect();
    assert_eq!(parcels, [2]);
    assert!(app.dead_letters().await.unwrap().is_empty());
}

// ---- payloads and headers from peers --------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_with_extra_fields_is_decoded_and_the_extras_ignored() {
    let server = server();
    let seen = Arc::new(Seen::default());
    let app = app(&server, &seen, &["record_parcel"]).await;
    let js = plain_client(&server).await;
    publish_plain(
        &js,
        "events.parcel.sent",
        headers(&[("Nats-Msg-Id", "extra-1")]),
        r#"{"id": 7, "colour": "red", "dimensions": {"cm": [10, 20, 30]}}"#,
    )
    .await;
    app.publisher()
        .publish_raw("parcel.sent", 1, r#"{"weight": 2.5, "id": 8}"#)
        .await
        .expect("stored");
    app.settle().await;
    let mut ids: Vec<u64> = seen.parcels().iter().map(|(id, _)| *id).collect();
    ids.sort_unstable();
    assert_eq!(ids, [7, 8]);
    assert!(app.dead_letters().await.unwrap().is_empty());
    assert_eq!(app.stats("record_parcel").handled, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_eda_time_that_is_not_rfc_3339_is_ignored_for_the_store_time() {
    let server = server();
    let seen = Arc::new(Seen::default());
    let app = app(&server, &seen, &["record_parcel"]).await;
    let js = plain_client(&server).await;
    let unreadable = publish_plain(
        &js,
        "events.parcel.sent",
        headers(&[("Nats-Msg-Id", "late-1"), ("Eda-Time", "yesterday at noon")]),
        r#"{"id": 1}"#,
    )
    .await;
    publish_plain(
        &js,
        "events.parcel.sent",
        headers(&[
            ("Nats-Msg-Id", "dated-2"),
            ("Eda-Time", "2020-01-02T03:04:05Z"),
        ]),
        r#"{"id": 2}"#,
    )
    .await;
    app.settle().await;
    assert!(app.dead_letters().await.unwrap().is_empty());
    let parcels = seen.parcels();
    assert_eq!(parcels.len(), 2, "both are handled: {parcels:?}");
    let stored = js
        .get_stream("EDA_EVENTS")
        .await
        .unwrap()
        .get_raw_message(unreadable)
        .await
        .unwrap()
        .time;
    let late = &parcels.iter().find(|(id, _)| *id == 1).unwrap().1;
    assert_eq!(late.id, "late-1");
    assert_eq!(
        nanos(late.time),
        stored.unix_timestamp_nanos(),
        "an unreadable Eda-Time gives way to the time the broker stored the message"
    );
    let dated = &parcels.iter().find(|(id, _)| *id == 2).unwrap().1;
    assert_eq!(
        nanos(dated.time),
        1_577_934_245_000_000_000,
        "a readable Eda-Time is taken"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_dead_letter_headers_on_an_event_subject_are_ignored() {
    let server = server();
    let seen = Arc::new(Seen::default());
    let app = app(&server, &seen, &["record_parcel"]).await;
    let js = plain_client(&server).await;
    let sequence = publish_plain(
        &js,
        "events.parcel.sent",
        headers(&[
            ("Nats-Msg-Id", "forged-1"),
            ("Eda-Dlq-Reason", "permanent"),
            ("Eda-Dlq-Error", "forged"),
            ("Eda-Dlq-Attempts", "9"),
            ("Eda-Dlq-Handler", "record_parcel"),
            ("Eda-Dlq-Payload-Cut", "1000000"),
            ("Eda-Original-Subject", "events.parcel.lost"),
            ("Eda-Original-Id", "someone-else"),
            ("Eda-Original-Seq", "99"),
        ]),
        r#"{"id": 1}"#,
    )
    .await;
    app.settle().await;
    let parcels = seen.parcels();
    assert_eq!(parcels.len(), 1, "handled once: {parcels:?}");
    let metadata = &parcels[0].1;
    assert_eq!(
        (
            metadata.id.as_str(),
            &*metadata.name,
            &*metadata.subject,
            metadata.sequence
        ),
        ("forged-1", "parcel.sent", "parcel.sent", Some(sequence)),
        "the event's own id, name, subject and sequence, not the forged ones"
    );
    assert!(metadata.extensions.is_empty(), "{:?}", metadata.extensions);
    let stats = app.stats("record_parcel");
    assert_eq!((stats.handled, stats.dead_lettered), (1, 0));
    assert!(app.dead_letters().await.unwrap().is_empty());
}

/// Headers a peer gets wrong, sent by a plain client to a running service, each between good
/// events: an unreadable `Eda-Version` (`0`) or `ce-edaversion` (`x`), a CloudEvent whose
/// `ce-type` names another event than the subject, and one of spec version 0.3. Each becomes
/// one dead letter with reason `decode` at the first attempt (the reasons `wire::decode` gives
/// them), its handler is never called for it, and every good event is handled once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn headers_a_peer_gets_wrong_are_each_one_decode_dead_letter_and_good_events_go_on() {
    let server = server();
    let seen = Arc::new(Seen::default());
    let app = app(&server, &seen, &["record_parcel"]).await;
    let js = plain_client(&server).await;
    let cloudevent = |id: &'static str, pairs: &[(&'static str, &'static str)]| {
        let mut all = vec![
            ("ce-specversion", "1.0"),
            ("ce-id", id),
            ("ce-source", "/depot"),
            ("ce-type", "parcel.sent"),
        ];
        for (name, value) in pairs {
            all.retain(|(n, _)| n != name);
            all.push((name, value));
        }
        headers(&all)
    };
    let good = |id: &'static str| headers(&[("Nats-Msg-Id", id)]);
    let sent: [(HeaderMap, &'static str); 9] = [
        (good("good-1"), r#"{"id": 1}"#),
        (
            headers(&[("Nats-Msg-Id", "version-0"), ("Eda-Version", "0")]),
            r#"{"id": 100}"#,
        ),
        (good("good-2"), r#"{"id": 2}"#),
        (
            cloudevent("refund", &[("ce-type", "com.example.refund")]),
            r#"{"id": 101}"#,
        ),
        (cloudevent("good-3", &[]), r#"{"id": 3}"#),
        (
            cloudevent("spec-0.3", &[("ce-specversion", "0.3")]),
            r#"{"id": 102}"#,
        ),
        (good("good-4"), r#"{"id": 4}"#),
        (
            cloudevent("edaversion-x", &[("ce-edaversion", "x")]),
            r#"{"id": 103}"#,
        ),
        (good("good-5"), r#"{"id": 5}"#),
    ];
    let mut sequences = Vec::new();
    for (headers, payload) in sent {
        sequences.push(publish_plain(&js, "events.parcel.sent", headers, payload).await);
    }
    app.settle().await;

    let mut ids: Vec<u64> = seen.parcels().iter().map(|(id, _)| *id).collect();
    ids.sort_unstable();
    assert_eq!(
        ids,
        [1, 2, 3, 4, 5],
        "every good event once, and the handler never saw a bad one"
    );
    let mut letters: Vec<(String, DlqReason, u32, String, Option<u64>)> = app
        .dead_letters()
        .await
        .unwrap()
        .into_iter()
        .map(|l| {
            (
                l.metadata.id.clone(),
                l.reason,
                l.attempts,
                l.error.clone(),
                l.metadata.sequence,
            )
        })
        .collect();
    letters.sort_by_key(|l| l.4);
    let expected = [
        (
            "version-0",
            "header `Eda-Version` has an unreadable value `0`",
            sequences[1],
        ),
        (
            "refund",
            "expected event `parcel.sent` but the message is `com.example.refund`",
            sequences[3],
        ),
        (
            "spec-0.3",
            "header `ce-specversion` has an unreadable value `0.3`",
            sequences[5],
        ),
        (
            "edaversion-x",
            "header `ce-edaversion` has an unreadable value `x`",
            sequences[7],
        ),
    ];
    assert_eq!(
        letters.len(),
        expected.len(),
        "one dead letter each: {letters:?}"
    );
    for (letter, (id, error, sequence)) in letters.iter().zip(expected) {
        assert_eq!(
            (letter.0.as_str(), letter.1, letter.2, letter.4),
            (id, DlqReason::Decode, 1, Some(sequence)),
            "{letter:?}"
        );
        assert!(
            letter.3.contains(error),
            "the dead letter of `{id}` says `{error}`: {}",
            letter.3
        );
    }
    let stats = app.stats("record_parcel");
    assert_eq!((stats.handled, stats.dead_lettered), (5, 4), "{stats:?}");
}

/// The value of the counter `name` for handler `handler` on the metrics page, 0 if absent.
async fn counter(metrics: std::net::SocketAddr, name: &str, handler: &str) -> u64 {
    let (_, body) = support::http_get(metrics, "/metrics").await;
    let label = format!("handler=\"{handler}\"");
    body.lines()
        .filter(|l| l.starts_with(name) && l.contains(&label))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .map(|v| v as u64)
        .sum()
}

/// Headers over 64 KiB: the server does not store them, from a peer or from eda. A peer's
/// message whose headers fit but whose dead letter's would not (a `Nats-Msg-Id` of 30,000
/// bytes, which the dead letter carries three times: its own `Nats-Msg-Id`,
/// `Eda-Original-Id` and `Eda-Correlation-Id`) is dead-lettered with its long values
/// shortened (start and SHA-256) and `Eda-Dlq-Headers-Cut: true`; the whole original stays
/// in the event stream at `Eda-Original-Seq`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn headers_over_64_kib_are_refused_and_a_dead_letter_that_would_pass_them_is_stored_shortened(
) {
    let server = server();
    let seen = Arc::new(Seen::default());
    let app = TestApp::builder(SERVICE)
        .nats(server.url())
        .configure(|b| {
            b.ack_wait(Duration::from_secs(2))
                .metrics_addr("127.0.0.1:0")
        })
        .shared_state(Arc::clone(&seen))
        .handlers(&["refuse_parcel"])
        .start()
        .await
        .unwrap_or_else(|e| panic!("the app starts: {e}"));
    let js = plain_client(&server).await;
    let refused = "the broker did not store the message: publish failed: header size exceeds maximum allowed of 64k (code 400, error code 10097)";

    // From a peer, and from eda: not stored.
    let huge = "x".repeat(70_000);
    let from_peer = js
        .publish_with_headers(
            "events.parcel.refused",
            headers(&[("Eda-Correlation-Id", &huge)]),
            r#"{"id": 0}"#.into(),
        )
        .await
        .expect("sent")
        .await
        .unwrap_err();
    assert_eq!(
        from_peer.to_string(),
        "publish failed: header size exceeds maximum allowed of 64k (code 400, error code 10097)"
    );
    let from_eda = app
        .publisher()
        .publish_with(
            &ParcelRefused { id: 0 },
            eda::PublishOptions::default().correlation_id(huge),
        )
        .await
        .unwrap_err();
    assert!(matches!(from_eda, PublishError::Broker(_)), "{from_eda:?}");
    assert_eq!(from_eda.to_string(), refused);
    assert!(app.published_raw().await.unwrap().is_empty());

    // Stored, refused by the handler, and dead-lettered with its long values shortened (the
    // id, carried three times, would push the dead letter's headers past 64 KiB).
    let id = format!("huge-{}", "x".repeat(30_000));
    let sequence = js
        .publish_with_headers(
            "events.parcel.refused",
            headers(&[("Nats-Msg-Id", &id)]),
            r#"{"id": 1}"#.into(),
        )
        .await
        .expect("sent")
        .await
        .expect("the original is stored: its headers are under 64 KiB")
        .sequence;
    app.settle().await;
    let letters = app.dead_letters().await.unwrap();
    assert_eq!(letters.len(), 1, "dead-lettered once: {letters:?}");
    let letter = &letters[0];
    assert!(
        letter.metadata.id.starts_with("huge-xxx") && letter.metadata.id.contains("…sha256:"),
        "the id kept shortened, with a digest of the whole: {}",
        letter.metadata.id
    );
    assert_eq!(
        letter.metadata.sequence,
        Some(sequence),
        "and where the whole original is"
    );
    let stored = js
        .get_stream("EDA_DLQ")
        .await
        .unwrap()
        .get_raw_message(1)
        .await
        .unwrap();
    assert_eq!(
        stored
            .headers
            .get("Eda-Dlq-Headers-Cut")
            .map(|v| v.as_str()),
        Some("true")
    );
    let stats = app.stats("refuse_parcel");
    assert_eq!(stats.dead_lettered, 1, "{stats:?}");
    assert_eq!(
        seen.refusals.load(Ordering::SeqCst),
        1,
        "the handler ran once"
    );
    let metrics = app.app().metrics_addr().expect("metrics are served");
    assert_eq!(
        counter(metrics, "eda_dead_letter_failures_total", "refuse_parcel").await,
        0,
        "stored at the first try"
    );
    let original = js
        .get_stream("EDA_EVENTS")
        .await
        .unwrap()
        .get_raw_message(sequence)
        .await
        .unwrap();
    assert_eq!(
        original.headers.get("Nats-Msg-Id").map(|v| v.as_str()),
        Some(id.as_str()),
        "the original is on the stream, whole"
    );
}

/// A schema registry entry that is not eda's (not JSON, or JSON without a fingerprint) counts
/// as a conflict with an empty fingerprint: the service does not start on a registry it
/// cannot read, and says which entry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registry_entry_that_is_not_a_schema_stops_startup_naming_it() {
    let server = server();
    let seen = Arc::new(Seen::default());
    app(&server, &seen, &[]).await.shutdown().await.unwrap();
    let js = plain_client(&server).await;
    let schemas = js.get_key_value("EDA_SCHEMAS").await.unwrap();
    for junk in [&b"not json"[..], br#"{"name": "parcel.sent"}"#] {
        schemas
            .put("parcel.sent.v1", junk.to_vec().into())
            .await
            .unwrap();
        let error = App::builder(SERVICE)
            .nats(server.url())
            .without_env()
            .handlers(&[])
            .start()
            .await
            .unwrap_err();
        assert_eq!(error.kind(), eda::ErrorKind::SchemaConflict);
        assert!(
            error.to_string().contains(&format!(
                "event `parcel.sent` v1: this binary's schema has fingerprint `{}` but the registry `EDA_SCHEMAS` has ``",
                <ParcelSent as eda::Event>::fingerprint()
            )),
            "{error}"
        );
    }
}

/// Warnings and errors logged anywhere in this test binary, as text (message and fields).
fn logged() -> &'static Mutex<Vec<String>> {
    static LOGGED: OnceLock<Mutex<Vec<String>>> = OnceLock::new();
    LOGGED.get_or_init(Default::default)
}

/// The warnings and errors logged so far that contain every one of `texts`.
fn logged_with(texts: &[&str]) -> Vec<String> {
    logged()
        .lock()
        .unwrap()
        .iter()
        .filter(|line| texts.iter().all(|t| line.contains(t)))
        .cloned()
        .collect()
}

/// Records every warning and error (the global subscriber of the tests that look at logs:
/// global, so that the app's tasks on every thread are seen).
struct WarnLog;

struct Text(String);

impl tracing::field::Visit for Text {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        self.0.push_str(&format!(" {}={value:?}", field.name()));
    }
}

impl tracing::Subscriber for WarnLog {
    fn enabled(&self, metadata: &tracing::Metadata<'_>) -> bool {
        *metadata.level() <= tracing::Level::WARN
    }
    fn new_span(&self, _: &tracing::span::Attributes<'_>) -> tracing::span::Id {
        tracing::span::Id::from_u64(1)
    }
    fn record(&self, _: &tracing::span::Id, _: &tracing::span::Record<'_>) {}
    fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}
    fn event(&self, event: &tracing::Event<'_>) {
        let mut text = Text(format!("{}:", event.metadata().level()));
        event.record(&mut text);
        logged().lock().unwrap().push(text.0);
    }
    fn enter(&self, _: &tracing::span::Id) {}
    fn exit(&self, _: &tracing::span::Id) {}
}

/// Polls `done` until it holds or `within` passed; whether it held.
async fn eventually<F: std::future::Future<Output = bool>>(
    within: Duration,
    mut done: impl FnMut() -> F,
) -> bool {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if done().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    done().await
}

/// The fingerprint the registry holds for `key`, if any.
async fn registered(schemas: &jetstream::kv::Store, key: &str) -> Option<String> {
    let stored = schemas.get(key).await.unwrap()?;
    let value: serde_json::Value = serde_json::from_slice(&stored).unwrap();
    value["fingerprint"].as_str().map(str::to_owned)
}

/// A schema change that slips past startup: while a service runs with `parcel.sent` v1 of
/// fingerprint A, its registry entry is replaced by that of a binary whose `parcel.sent` v1
/// has another shape (fingerprint B; what such a binary registers once the entry was deleted:
/// here the shape of `ParcelBulky`). The running service logs an error naming both
/// fingerprints, once, and goes on; a binary whose fingerprint differs from the registry's
/// cannot start (`SchemaConflict`, both fingerprints); a deleted entry is registered again by
/// the running service, so that the next binary of another shape is stopped at its startup.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_schema_registered_over_a_running_service_is_logged_with_both_fingerprints() {
    let _ = tracing::subscriber::set_global_default(WarnLog);
    let server = server();
    let seen = Arc::new(Seen::default());
    let app = app(&server, &seen, &["record_parcel"]).await;
    let ours = <ParcelSent as eda::Event>::fingerprint();
    let theirs = <ParcelBulky as eda::Event>::fingerprint();
    assert_ne!(ours, theirs);
    let js = plain_client(&server).await;
    let schemas = js.get_key_value("EDA_SCHEMAS").await.unwrap();
    assert_eq!(
        registered(&schemas, "parcel.sent.v1").await,
        Some(ours.clone())
    );

    // Deleted and registered by the other binary in one step (a put), so that the running
    // service cannot register its own again in between.
    let other = serde_json::json!({
        "name": "parcel.sent",
        "version": 1,
        "fingerprint": theirs,
        "schema": <ParcelBulky as eda::Event>::schema(),
    });
    schemas
        .put("parcel.sent.v1", serde_json::to_vec(&other).unwrap().into())
        .await
        .unwrap();
    let naming_both = [
        "ERROR:",
        "another fingerprint for an event this service runs",
        "event=parcel.sent",
        "version=1",
        &format!("this_binary={ours}"),
        &format!("registry={theirs}"),
        "give the changed schema a new version",
    ];
    assert!(
        eventually(Duration::from_secs(60), || async {
            !logged_with(&naming_both).is_empty()
        })
        .await,
        "the running service logs the change with both fingerprints; logged: {:?}",
        logged_with(&["parcel.sent"])
    );

    // It goes on.
    app.publish(&ParcelSent { id: 1 }).await.unwrap();
    app.settle().await;
    assert_eq!(seen.parcels().len(), 1);
    assert!(app.dead_letters().await.unwrap().is_empty());

    // A binary whose schema differs from the registry's does not start (this one, now).
    let error = within_a_minute(
        "starting against a registry with another fingerprint",
        App::builder(SERVICE)
            .nats(server.url())
            .without_env()
            .handlers(&[])
            .start(),
    )
    .await
    .unwrap_err();
    assert_eq!(error.kind(), ErrorKind::SchemaConflict, "{error:?}");
    assert!(
        error.to_string().contains(&format!(
            "event `parcel.sent` v1: this binary's schema has fingerprint `{ours}` but the registry `EDA_SCHEMAS` has `{theirs}`"
        )),
        "{error}"
    );

    // Deleted: the running service registers its schema again.
    schemas.delete("parcel.sent.v1").await.unwrap();
    assert!(
        eventually(Duration::from_secs(60), || async {
            registered(&schemas, "parcel.sent.v1").await.as_deref() == Some(ours.as_str())
        })
        .await,
        "the running service registers its schema again"
    );
    let again = [
        "WARN:",
        "was deleted; registered again",
        "event=parcel.sent",
        &format!("fingerprint={ours}"),
    ];
    assert!(
        eventually(Duration::from_secs(10), || async {
            !logged_with(&again).is_empty()
        })
        .await,
        "and says so: {:?}",
        logged_with(&["parcel.sent"])
    );
    assert_eq!(logged_with(&naming_both).len(), 1, "one change, one error");
}
