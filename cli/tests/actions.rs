//! `eda actions check|graph|run` on real files, a real HTTP server and a real nats-server.
#![allow(missing_docs, missing_debug_implementations)]

#[path = "../../tests/http_server/mod.rs"]
mod http_server;
mod support;

use std::process::{Output, Stdio};
use std::time::Duration;

use eda::testing::NatsServer;
use http_server::{Answer, HttpServer};
use support::eda_command;

fn eda(args: &[&str]) -> Output {
    eda_command(args).output().expect("eda runs")
}

fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

fn file(name: &str, toml: &str) -> String {
    let dir = std::env::temp_dir().join(format!("eda-cli-actions-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, toml).unwrap();
    path.to_string_lossy().into_owned()
}

const WORKFLOW: &str = r#"
[[trigger]]
name = "charge"
event = "cli.order.placed"
[[trigger.action]]
type = "web_service"
url = "http://127.0.0.1:9/charge"
emit = "cli.order.charged"

[[trigger]]
name = "ship"
event = "cli.order.charged"
[[trigger.action]]
type = "web_service"
url = "http://127.0.0.1:9/ship"
"#;

#[test]
fn check_and_graph_a_workflow() {
    let path = file("workflow.toml", WORKFLOW);
    let checked = eda(&["actions", "check", &path]);
    assert!(checked.status.success(), "{}", text(&checked));
    assert!(
        text(&checked).contains("2 trigger(s), no problems: charge, ship"),
        "{}",
        text(&checked)
    );
    let mermaid = eda(&["actions", "graph", &path]);
    assert!(mermaid.status.success(), "{}", text(&mermaid));
    let mermaid = text(&mermaid);
    assert!(mermaid.starts_with("flowchart LR\n"), "{mermaid}");
    assert!(mermaid.contains("t0 --> e_cli_order_charged"), "{mermaid}");
    assert!(
        mermaid.contains("e_cli_order_charged([\"cli.order.charged\"]) --> t1"),
        "{mermaid}"
    );
    let dot = text(&eda(&["actions", "graph", "--format", "dot", &path]));
    assert!(dot.starts_with("digraph actions {"), "{dot}");
    let svg = eda(&["actions", "graph", "--format", "svg", &path]);
    assert!(
        svg.status.success(),
        "needs Graphviz `dot` (apt-get install graphviz; scripts/test installs it): {}",
        text(&svg)
    );
    let svg = text(&svg);
    assert!(
        svg.starts_with("<svg") && svg.contains(">charge</text>"),
        "{svg}"
    );

    let bad = file(
        "bad.toml",
        &WORKFLOW.replace(
            "url = \"http://127.0.0.1:9/ship\"",
            "url = \"http://127.0.0.1:9/${event.id\"",
        ),
    );
    let refused = eda(&["actions", "check", &bad]);
    assert_eq!(refused.status.code(), Some(1), "{}", text(&refused));
    assert!(
        text(&refused).contains(&format!("{bad}:15:7: `${{` without a closing `}}`")),
        "{}",
        text(&refused)
    );
    let missing = eda(&["actions", "check", "/nonexistent.toml"]);
    assert!(
        text(&missing).contains("cannot read actions file `/nonexistent.toml`"),
        "{}",
        text(&missing)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_serves_the_triggers_as_a_service_of_their_own() {
    let nats = NatsServer::start().unwrap_or_else(|e| panic!("{e}"));
    let http = HttpServer::start(|_, _| Answer::status(204)).await;
    let path = file(
        "run.toml",
        &format!(
            r#"
[[trigger]]
name = "notify"
event = "cli.order.placed"
[[trigger.action]]
type = "web_service"
url = "{}/orders/${{event.order}}"
"#,
            http.url()
        ),
    );
    let bad_url = eda(&[
        "actions",
        "run",
        &path,
        "--service",
        "integrations",
        "--nats",
        "http://x",
    ]);
    assert_eq!(bad_url.status.code(), Some(1), "{}", text(&bad_url));
    assert!(
        text(&bad_url).contains("expected a nats:// or tls:// URL"),
        "{}",
        text(&bad_url)
    );

    let mut child = eda_command(&[
        "actions",
        "run",
        &path,
        "--service",
        "integrations",
        "--nats",
        &nats.url(),
    ])
    .stdout(Stdio::null())
    .stderr(Stdio::null())
    .spawn()
    .expect("eda starts");
    let js = async_nats::jetstream::new(async_nats::connect(nats.url()).await.unwrap());
    // The service creates its consumer (with `start = "new"`) when it is up: publish after.
    for _ in 0..300 {
        if let Ok(stream) = js.get_stream("EDA_EVENTS").await {
            if stream.consumer_info("integrations__notify").await.is_ok() {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    js.publish("events.cli.order.placed", r#"{"order":42}"#.into())
        .await
        .unwrap()
        .await
        .unwrap();
    for _ in 0..300 {
        if !http.requests().is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let requests = http.requests();
    assert_eq!(requests.len(), 1, "{requests:?}");
    assert_eq!(requests[0].path, "/orders/42");
    assert_eq!(requests[0].method, "POST");
}
