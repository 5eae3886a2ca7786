//! Observability through the public API (DESIGN.md §6): the exact `/metrics` values after a
//! scripted run, `/readyz` following the broker, the exposition checked by a real `promtool`
//! and scraped by a real `prometheus`, and the trace id carried from handler to handler.
//! The Prometheus recorder is process-wide, so every app here has a service name of its own
//! and the assertions select series by it.
#![allow(missing_docs, missing_debug_implementations)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use eda::prelude::*;
use eda::testing::{NatsServer, TestApp};

mod support;

#[event("obs.tick")]
pub struct ObsTick {
    pub n: u64,
}

#[event("obs.flaky")]
pub struct ObsFlaky {
    pub n: u64,
}

#[event("obs.poison")]
pub struct ObsPoison {
    pub n: u64,
}

#[event("obs.stuck")]
pub struct ObsStuck {
    pub n: u64,
}

#[event("obs.echo")]
pub struct ObsEcho {
    pub n: u64,
}

#[event("obs.echoed")]
pub struct ObsEchoed {
    pub n: u64,
}

#[derive(Default)]
pub struct Calls(AtomicU32);

#[handler]
async fn obs_ok(_event: ObsTick) {}

#[handler(retries = 2, base_delay = "10ms", jitter = false)]
async fn obs_flaky(_event: ObsFlaky, calls: State<Calls>) -> Result<(), HandlerError> {
    if calls.0.fetch_add(1, Ordering::SeqCst) == 0 {
        return Err(HandlerError::retry("warming up"));
    }
    Ok(())
}

#[handler]
async fn obs_poison(_event: ObsPoison) -> Result<(), HandlerError> {
    Err(HandlerError::permanent("never"))
}

#[handler]
async fn obs_stuck(_event: ObsStuck) {
    tokio::time::sleep(Duration::from_secs(600)).await;
}

#[handler(emits = [ObsEchoed])]
async fn obs_echo(event: ObsEcho, ctx: Context) -> Result<(), HandlerError> {
    ctx.publish(&ObsEchoed { n: event.n }).await?;
    Ok(())
}

async fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    support::http_get(addr, path).await
}

/// The samples of the exposition: (name, labels) -> value.
fn samples(text: &str) -> BTreeMap<(String, BTreeMap<String, String>), f64> {
    let mut out = BTreeMap::new();
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
    {
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let (name, labels) = match series.split_once('{') {
            Some((name, rest)) => (name, rest.trim_end_matches('}')),
            None => (series, ""),
        };
        let labels = labels
            .split("\",")
            .filter(|p| !p.is_empty())
            .filter_map(|pair| pair.split_once('='))
            .map(|(k, v)| (k.to_owned(), v.trim_matches('"').to_owned()))
            .collect();
        out.insert((name.to_owned(), labels), value.parse().unwrap_or(f64::NAN));
    }
    out
}

fn value(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let wanted: BTreeMap<String, String> = labels
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    samples(text).get(&(name.to_owned(), wanted)).copied()
}

async fn scripted_run(service: &str) -> TestApp {
    let app = TestApp::builder(service)
        .state(Calls::default())
        .handlers(&["obs_ok", "obs_flaky", "obs_poison"])
        .configure(|b| b.metrics_addr("127.0.0.1:0"))
        .start()
        .await
        .unwrap();
    app.publish(&ObsTick { n: 1 }).await.unwrap();
    app.publish(&ObsTick { n: 2 }).await.unwrap();
    app.settle().await;
    app.lose_next_acks(1); // handled and recorded, then redelivered: a duplicate
    app.publish(&ObsTick { n: 3 }).await.unwrap();
    app.publish(&ObsFlaky { n: 1 }).await.unwrap();
    app.publish(&ObsPoison { n: 1 }).await.unwrap();
    app.settle().await;
    app
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_show_exact_counts_after_a_scripted_run() {
    let app = scripted_run("obs-script").await;
    let addr = app.app().metrics_addr().expect("metrics are served");
    let (status, text) = get(addr, "/metrics").await;
    assert_eq!(status, 200);
    let handled = |handler: &str, event: &str, outcome: &str| {
        value(
            &text,
            "eda_events_handled_total",
            &[
                ("service", "obs-script"),
                ("handler", handler),
                ("event", event),
                ("outcome", outcome),
            ],
        )
    };
    assert_eq!(
        handled("obs_ok", "obs.tick", "success"),
        Some(3.0),
        "{text}"
    );
    assert_eq!(handled("obs_ok", "obs.tick", "duplicate"), Some(1.0));
    assert_eq!(
        handled("obs_ok", "obs.tick", "retry"),
        Some(0.0),
        "registered up front at 0"
    );
    assert_eq!(handled("obs_flaky", "obs.flaky", "retry"), Some(1.0));
    assert_eq!(handled("obs_flaky", "obs.flaky", "success"), Some(1.0));
    assert_eq!(
        handled("obs_poison", "obs.poison", "dead_letter"),
        Some(1.0)
    );
    assert_eq!(
        value(
            &text,
            "eda_dead_letters_total",
            &[
                ("service", "obs-script"),
                ("handler", "obs_poison"),
                ("reason", "permanent")
            ]
        ),
        Some(1.0)
    );
    assert!(
        value(
            &text,
            "eda_events_published_total",
            &[("event", "obs.poison")]
        ) >= Some(1.0)
    );
    let runs = value(
        &text,
        "eda_handler_duration_seconds_count",
        &[("service", "obs-script"), ("handler", "obs_flaky")],
    );
    assert_eq!(runs, Some(2.0), "two attempts of obs_flaky were timed");
    assert!(
        value(
            &text,
            "eda_handler_duration_seconds_bucket",
            &[
                ("service", "obs-script"),
                ("handler", "obs_flaky"),
                ("le", "0.0001")
            ]
        )
        .is_some(),
        "handler durations start at 100 µs"
    );
    assert_eq!(
        value(
            &text,
            "eda_event_lag_seconds_count",
            &[("service", "obs-script"), ("handler", "obs_ok")]
        ),
        Some(3.0),
        "lag recorded at each handler start (the duplicate redelivery never started it)"
    );
    assert_eq!(
        value(
            &text,
            "eda_handlers_in_flight",
            &[("service", "obs-script"), ("handler", "obs_ok")]
        ),
        Some(0.0)
    );
    // Label values stay bounded: no event ids or error texts anywhere.
    assert!(
        !text.contains("warming up") && !text.contains("never\""),
        "no error texts in labels"
    );
    let (status, body) = get(addr, "/healthz").await;
    assert_eq!((status, body.trim()), (200, "ok"));
    let (status, body) = get(addr, "/readyz").await;
    assert_eq!(status, 200, "{body}");
    app.shutdown().await.unwrap();
}

/// Published outside handlers only (declared with `AppBuilder::emits`).
#[event("obs.outside")]
pub struct ObsOutside {
    pub n: u32,
}

/// The events a handler declares with `emits = [..]` have their publish series from the
/// start, at 0: Prometheus sees them before the first follow-up, so a burst of follow-ups
/// between two scrapes is an increase to `rate()` (a series born at its first value is not).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn declared_follow_ups_have_publish_series_at_zero_before_the_first() {
    let app = TestApp::builder("obs-emits")
        .handlers(&["obs_echo"])
        .configure(|b| b.metrics_addr("127.0.0.1:0").emits::<ObsOutside>())
        .start()
        .await
        .unwrap();
    let addr = app.app().metrics_addr().expect("metrics are served");
    let published = |text: &str| {
        [
            "eda_publish_duration_seconds_count",
            "eda_events_published_total",
        ]
        .map(|name| value(text, name, &[("event", "obs.echoed")]))
    };
    let (_, text) = get(addr, "/metrics").await;
    assert_eq!(published(&text), [Some(0.0); 2], "{text}");
    // Declared on the builder (published outside handlers): there at 0 too.
    assert_eq!(
        value(
            &text,
            "eda_events_published_total",
            &[("event", "obs.outside")]
        ),
        Some(0.0),
        "{text}"
    );
    app.publish(&ObsEcho { n: 1 }).await.unwrap();
    app.settle().await;
    let (_, text) = get(addr, "/metrics").await;
    assert_eq!(published(&text), [Some(1.0); 2], "{text}");
    app.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_follows_the_broker_connection() {
    let mut server = NatsServer::start().unwrap_or_else(|e| panic!("{e}"));
    let app = TestApp::builder("obs-ready")
        .nats(server.url())
        .handlers(&["obs_ok"])
        .configure(|b| b.metrics_addr("127.0.0.1:0"))
        .start()
        .await
        .unwrap();
    let addr = app.app().metrics_addr().unwrap();
    let until = |want: u16| async move {
        for _ in 0..300 {
            let (status, body) = get(addr, "/readyz").await;
            if status == want {
                return body;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("/readyz never answered {want}");
    };
    until(200).await;
    server.stop();
    let body = until(503).await;
    let body: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(body["ready"], false);
    assert_eq!(
        body["broker_connected"], false,
        "the body says what is not ready: {body}"
    );
    let (status, text) = get(addr, "/metrics").await;
    assert_eq!(status, 200);
    assert_eq!(value(&text, "eda_broker_connected", &[]), Some(0.0));
    server.restart().unwrap_or_else(|e| panic!("{e}"));
    until(200).await;
    let (_, text) = get(addr, "/metrics").await;
    assert_eq!(value(&text, "eda_broker_connected", &[]), Some(1.0));
    assert!(
        value(&text, "eda_broker_reconnects_total", &[]) >= Some(1.0),
        "{text}"
    );
    app.shutdown().await.unwrap();
}

/// A handler cut off at the shutdown deadline hands its message back, and the hand-back is
/// counted (`eda_messages_handed_back_total`), not lost among the outcomes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handler_cut_off_at_the_shutdown_deadline_is_counted_as_handed_back() {
    let app = TestApp::builder("obs-cutoff")
        .handlers(&["obs_stuck"])
        .configure(|b| {
            b.metrics_addr("127.0.0.1:0")
                .shutdown_timeout(Duration::from_millis(200))
        })
        .start()
        .await
        .unwrap();
    let addr = app.app().metrics_addr().expect("metrics are served");
    app.publish(&ObsStuck { n: 1 }).await.unwrap();
    let labels = [("service", "obs-cutoff"), ("handler", "obs_stuck")];
    let mut running = false;
    for _ in 0..100 {
        let (_, text) = get(addr, "/metrics").await;
        if value(&text, "eda_handlers_in_flight", &labels) == Some(1.0) {
            running = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(running, "the handler started");
    app.shutdown().await.unwrap();
    // The recorder is process-wide: another app's listener shows the first app's series.
    let reader = TestApp::builder("obs-cutoff-reader")
        .handlers(&[])
        .configure(|b| b.metrics_addr("127.0.0.1:0"))
        .start()
        .await
        .unwrap();
    let (_, text) = get(reader.app().metrics_addr().unwrap(), "/metrics").await;
    assert_eq!(
        value(&text, "eda_messages_handed_back_total", &labels),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        value(
            &text,
            "eda_events_handled_total",
            &[
                ("service", "obs-cutoff"),
                ("handler", "obs_stuck"),
                ("event", "obs.stuck"),
                ("outcome", "success"),
            ],
        ),
        Some(0.0),
        "a cut-off handler has no outcome"
    );
}

#[test]
fn a_bad_metrics_address_is_a_startup_error() {
    let error = App::builder("obs-bad")
        .handlers(&[])
        .metrics_addr("localhost")
        .without_env()
        .build()
        .unwrap_err();
    assert!(
        error
            .to_string()
            .contains("metrics address `localhost`: expected host:port such as 127.0.0.1:9464"),
        "{error}"
    );
}

// ---- real Prometheus tools ------------------------------------------------------------------

fn tool(name: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!("`{name}` is not installed: run scripts/test (it installs Debian's `prometheus` package, which has `{name}`) or `apt-get install prometheus`")
        })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn promtool_accepts_the_exposition() {
    let app = scripted_run("obs-promtool").await;
    let (_, text) = get(app.app().metrics_addr().unwrap(), "/metrics").await;
    let mut check = Command::new(tool("promtool"))
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    check
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let output = check.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "promtool check metrics: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    app.shutdown().await.unwrap();
}

struct Prometheus {
    child: Child,
    dir: PathBuf,
    addr: String,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn start_prometheus(target: SocketAddr) -> Prometheus {
    let dir = std::env::temp_dir().join(format!(
        "eda-prometheus-{}-{}",
        std::process::id(),
        target.port()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let config = format!(
        "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: eda\n    static_configs:\n      - targets: ['{target}']\n"
    );
    std::fs::write(dir.join("prometheus.yml"), config).unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr = format!("127.0.0.1:{port}");
    let child = Command::new(tool("prometheus"))
        .arg(format!(
            "--config.file={}",
            dir.join("prometheus.yml").display()
        ))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.join("data").display()
        ))
        .arg(format!("--web.listen-address={addr}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    Prometheus { child, dir, addr }
}

async fn query(prometheus: &Prometheus, promql: &str) -> Option<serde_json::Value> {
    let addr: SocketAddr = prometheus.addr.parse().unwrap();
    let encoded: String = promql
        .bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"_-.".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect();
    let (status, body) = support::http_get(addr, &format!("/api/v1/query?query={encoded}")).await;
    if status == 0 {
        return None;
    }
    // Chunked or not, the JSON object is the part between the outer braces.
    let json = &body[body.find('{')?..=body.rfind('}')?];
    serde_json::from_str(json).ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_prometheus_scrapes_the_app() {
    let app = scripted_run("obs-scraped").await;
    let prometheus = start_prometheus(app.app().metrics_addr().unwrap());
    let promql =
        r#"eda_events_handled_total{service="obs-scraped",handler="obs_ok",outcome="success"}"#;
    let mut seen = None;
    for _ in 0..600 {
        if let Some(answer) = query(&prometheus, promql).await {
            if let Some(sample) = answer["data"]["result"].as_array().and_then(|r| r.first()) {
                seen = sample["value"][1].as_str().map(str::to_owned);
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        seen.as_deref(),
        Some("3"),
        "Prometheus scraped the app and holds its counter"
    );
    let up = query(&prometheus, "up").await.expect("prometheus answers");
    assert_eq!(
        up["data"]["result"][0]["value"][1], "1",
        "the target is up: {up}"
    );
    app.shutdown().await.unwrap();
}
