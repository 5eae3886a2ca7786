//! An application that installs its own `metrics` recorder keeps it: eda records into that
//! recorder and serves no `/metrics` of its own (the health endpoints still answer). Alone in
//! its binary, because the recorder is process-wide.
#![allow(missing_docs, missing_debug_implementations)]

use std::net::SocketAddr;

use eda::prelude::*;
use eda::testing::TestApp;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[event("own.tick")]
pub struct OwnTick {
    pub n: u64,
}

#[handler]
async fn own_ok(_event: OwnTick) {}

async fn status_of(addr: SocketAddr, path: &str) -> u16 {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eda_records_into_the_applications_own_recorder() {
    let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
    let handle = recorder.handle();
    metrics::set_global_recorder(recorder).expect("the application installs its recorder first");

    let app = TestApp::builder("own-recorder")
        .handlers(&["own_ok"])
        .configure(|b| b.metrics_addr("127.0.0.1:0"))
        .start()
        .await
        .expect("eda does not fight the installed recorder");
    app.publish(&OwnTick { n: 1 }).await.unwrap();
    app.settle().await;

    let addr = app
        .app()
        .metrics_addr()
        .expect("the health endpoints are still served");
    assert_eq!(
        status_of(addr, "/metrics").await,
        404,
        "no /metrics: the application exports its own"
    );
    assert_eq!(status_of(addr, "/healthz").await, 200);
    assert_eq!(status_of(addr, "/readyz").await, 200);
    let text = handle.render();
    assert!(
        text.lines()
            .any(|l| l.starts_with("eda_events_handled_total{")
                && l.contains("service=\"own-recorder\"")
                && l.contains("outcome=\"success\"")
                && l.ends_with(" 1")),
        "eda's counters are in the application's recorder:\n{text}"
    );
    app.shutdown().await.unwrap();
}
