//! Actions without code (`AppBuilder::actions`): triggers from a TOML file call a real HTTP
//! server (hyper, on a free port) for events on a real nats-server, with eda's retries, dead
//! letters, breakers and follow-up events.
#![allow(missing_docs, missing_debug_implementations)]

mod http_server;

use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use eda::prelude::*;
use eda::testing::NatsServer;
use eda::{App, BreakerConfig, RunningApp};
use http_server::{Answer, HttpServer};

/// The secret the actions read from the environment; never in a message or dead letter.
const SECRET: &str = "tok-5ecret-value";
const SECRET_VAR: &str = "EDA_ACTIONS_TEST_TOKEN";

#[event("act.user.created")]
pub struct UserCreated {
    pub id: u64,
    pub email: String,
}

#[event("act.user.synced")]
pub struct UserSynced {
    pub synced: bool,
    pub id: u64,
}

static SYNCED: Mutex<Vec<(u64, String)>> = Mutex::new(Vec::new());

/// Collects the events the first trigger emits, with their cause.
#[handler(service = "actions-test")]
async fn on_synced(event: UserSynced, ctx: Context) {
    assert!(event.synced);
    SYNCED.lock().unwrap().push((
        event.id,
        ctx.metadata().causation_id.clone().unwrap_or_default(),
    ));
}

/// Every log line of this test binary (all tests), as `tracing` formats its fields.
static LOGS: Mutex<String> = Mutex::new(String::new());

/// A subscriber that writes every event's and span's fields into [`LOGS`]: the secret must
/// never be there.
struct Capture;

impl tracing::Subscriber for Capture {
    fn enabled(&self, _: &tracing::Metadata<'_>) -> bool {
        true
    }
    fn new_span(&self, span: &tracing::span::Attributes<'_>) -> tracing::span::Id {
        let mut line = format!("span {}:", span.metadata().name());
        span.record(&mut Fields(&mut line));
        log(line);
        tracing::span::Id::from_u64(1)
    }
    fn record(&self, _: &tracing::span::Id, values: &tracing::span::Record<'_>) {
        let mut line = String::from("record:");
        values.record(&mut Fields(&mut line));
        log(line);
    }
    fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}
    fn event(&self, event: &tracing::Event<'_>) {
        let mut line = format!("{}:", event.metadata().level());
        event.record(&mut Fields(&mut line));
        log(line);
    }
    fn enter(&self, _: &tracing::span::Id) {}
    fn exit(&self, _: &tracing::span::Id) {}
}

fn log(line: String) {
    let mut logs = LOGS.lock().unwrap();
    logs.push_str(&line);
    logs.push('\n');
}

struct Fields<'a>(&'a mut String);

impl tracing::field::Visit for Fields<'_> {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        self.0.push_str(&format!(" {}={value:?}", field.name()));
    }
}

fn capture_logs() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| tracing::subscriber::set_global_default(Capture).unwrap());
}

fn actions_file(toml: &str) -> PathBuf {
    static N: AtomicU32 = AtomicU32::new(0);
    let dir = std::env::temp_dir().join(format!("eda-actions-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(format!("actions-{}.toml", N.fetch_add(1, Ordering::SeqCst)));
    std::fs::write(&path, toml).unwrap();
    path
}

fn set_secret() {
    // Set before any app reads it; every test sets the same value.
    std::env::set_var(SECRET_VAR, SECRET);
}

async fn start(server: &NatsServer, service: &str, toml: &str, only: &[&str]) -> RunningApp {
    capture_logs();
    builder(server, service, toml, only)
        .start()
        .await
        .unwrap_or_else(|e| panic!("{e}"))
}

fn builder(server: &NatsServer, service: &str, toml: &str, only: &[&str]) -> eda::AppBuilder {
    set_secret();
    App::builder(service)
        .without_env()
        .nats(server.url())
        .ack_wait(Duration::from_secs(2))
        .handlers(only)
        .actions(actions_file(toml))
}

async fn eventually(what: &str, mut done: impl FnMut() -> bool) {
    for _ in 0..300 {
        if done() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("not within 30 s: {what}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trigger_calls_with_templated_url_headers_and_body_and_emits_the_answer() {
    let nats = NatsServer::start().unwrap_or_else(|e| panic!("{e}"));
    let http = HttpServer::start(|request, _| {
        let id: u64 = request.path.rsplit('/').next().unwrap().parse().unwrap();
        Answer::json(201, serde_json::json!({"synced": true, "id": id}))
    })
    .await;
    let toml = format!(
        r#"
[[trigger]]
name = "sync_user"
event = "act.user.created"
retries = 5
[[trigger.action]]
type = "web_service"
url = "{}/api/users/${{event.id}}"
method = "put"
timeout = "5s"
headers = {{ Authorization = "Bearer ${{env.{SECRET_VAR}}}", X-Correlation-Id = "${{meta.correlation_id}}" }}
body = {{ userId = "${{event.id}}", email = "${{event.email}}", source = "${{meta.source}}", tags = ["new", "${{meta.name}}"], vip = false }}
emit = "act.user.synced"
"#,
        http.url()
    );
    let app = start(&nats, "actions-test", &toml, &["on_synced"]).await;
    let id = app
        .publisher()
        .publish(&UserCreated {
            id: 7,
            email: "ada@example.com".into(),
        })
        .await
        .unwrap();
    eventually("the emitted event is handled", || {
        !SYNCED.lock().unwrap().is_empty()
    })
    .await;
    let requests = http.requests();
    assert_eq!(requests.len(), 1);
    let call = &requests[0];
    assert_eq!(call.method, "PUT");
    assert_eq!(call.path, "/api/users/7");
    assert_eq!(
        call.header("authorization"),
        Some(&*format!("Bearer {SECRET}"))
    );
    assert_eq!(call.header("x-correlation-id"), Some(id.as_str()));
    assert_eq!(
        call.header("idempotency-key"),
        Some(&*format!("{id}.sync_user"))
    );
    assert_eq!(call.header("content-type"), Some("application/json"));
    assert_eq!(
        call.json(),
        serde_json::json!({
            "userId": 7,
            "email": "ada@example.com",
            "source": "actions-test",
            "tags": ["new", "act.user.created"],
            "vip": false,
        })
    );
    assert_eq!(
        *SYNCED.lock().unwrap(),
        [(7, id.clone())],
        "emitted once, caused by the event"
    );
    assert_eq!(app.stats("sync_user").unwrap().handled, 1);
    app.shutdown().await.unwrap();
}

#[event("act.order.placed")]
pub struct OrderPlaced {
    pub order: u64,
}

fn two_answers(first: u16, then: Answer) -> impl Fn(&http_server::Request, usize) -> Answer {
    move |_, before| match before {
        0 | 1 => Answer::status(first).body("backend busy"),
        _ => then.clone(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_codes_decide_retry_or_dead_letter() {
    let nats = NatsServer::start().unwrap_or_else(|e| panic!("{e}"));
    // /retry: 500 twice, then 200. /refuse: 400 always. /slow: 429 with Retry-After: 1 once.
    let http = HttpServer::start(
        |request, before| match request.path.split('?').next().unwrap() {
            "/retry/1" => two_answers(500, Answer::status(200))(request, before),
            // An error page that echoes the request's credentials.
            "/refuse/1" => Answer::status(400).body(&format!(
                "{{\"error\":\"no such customer\",\"you sent\":\"{}\"}}{}",
                request.header("authorization").unwrap_or_default(),
                "x".repeat(3000)
            )),
            "/slow/1" if before == 0 => Answer::status(429).header("Retry-After", "1"),
            "/slow/1" => Answer::status(204),
            "/hang/1" => Answer::status(200).after(Duration::from_secs(3)),
            _ => Answer::status(404),
        },
    )
    .await;
    let action = |name: &str, path: &str, extra: &str| {
        format!(
            r#"
[[trigger]]
name = "{name}"
event = "act.order.placed"
retries = 3
[[trigger.action]]
type = "web_service"
url = "{}/{path}/${{event.order}}?token=${{env.{SECRET_VAR}}}"
headers = {{ Authorization = "Bearer ${{env.{SECRET_VAR}}}" }}
{extra}
"#,
            http.url()
        )
    };
    let toml = [
        action("retry", "retry", ""),
        action("refuse", "refuse", ""),
        action("slow", "slow", ""),
        action("hang", "hang", "timeout = \"300ms\""),
    ]
    .concat();
    let app = start(&nats, "orders-actions", &toml, &[]).await;
    app.publisher()
        .publish(&OrderPlaced { order: 1 })
        .await
        .unwrap();
    eventually("every trigger settled", || {
        let s = |n| app.stats(n).unwrap();
        s("retry").handled == 1
            && s("refuse").dead_lettered == 1
            && s("slow").handled == 1
            && s("hang").dead_lettered == 1
    })
    .await;
    app.settle().await;

    let retried = http.requests_to(&format!("/retry/1?token={SECRET}"));
    assert_eq!(retried.len(), 3, "500, 500, 200");
    let keys: Vec<_> = retried
        .iter()
        .map(|r| r.header("idempotency-key").unwrap().to_owned())
        .collect();
    assert!(
        keys.iter().all(|k| *k == keys[0] && k.ends_with(".retry")),
        "{keys:?}"
    );
    assert_eq!(app.stats("retry").unwrap().retried, 2);

    assert_eq!(
        http.requests_to(&format!("/refuse/1?token={SECRET}")).len(),
        1,
        "400: not retried"
    );
    let slow = http.requests_to(&format!("/slow/1?token={SECRET}"));
    assert_eq!(slow.len(), 2);
    assert!(
        slow[1].at.duration_since(slow[0].at) >= Duration::from_secs(1),
        "Retry-After: 1 was waited: {:?}",
        slow[1].at.duration_since(slow[0].at)
    );
    assert_eq!(
        http.requests_to(&format!("/hang/1?token={SECRET}")).len(),
        4,
        "timed out 4 times"
    );

    let letters = app.dead_letters().await.unwrap();
    assert_eq!(letters.len(), 2, "{letters:?}");
    let refused = letters.iter().find(|l| l.handler == "refuse").unwrap();
    assert_eq!(refused.reason, eda::DlqReason::Permanent);
    assert_eq!(refused.attempts, 1);
    assert!(
        refused.error.contains("trigger `refuse`, POST ")
            && refused.error.contains("/refuse/${event.order}?token=${env.EDA_ACTIONS_TEST_TOKEN} answered 400 Bad Request: {\"error\":\"no such customer\",\"you sent\":\"Bearer ***\"}xxx"),
        "{}",
        refused.error
    );
    assert!(
        refused.error.len() < 1400,
        "the first KiB of the answer: {}",
        refused.error.len()
    );
    let hung = letters.iter().find(|l| l.handler == "hang").unwrap();
    assert_eq!(hung.reason, eda::DlqReason::RetriesExhausted);
    assert!(
        hung.error.contains("no answer within 300ms"),
        "{}",
        hung.error
    );
    for letter in &letters {
        let headers = format!("{letter:?}");
        assert!(
            !headers.contains(SECRET),
            "the secret is in a dead letter: {headers}"
        );
    }
    let logs = LOGS.lock().unwrap().clone();
    assert!(
        logs.contains("handler failed; will retry"),
        "logs are captured: {logs}"
    );
    assert!(
        logs.contains("answered 500 Internal Server Error"),
        "{logs}"
    );
    assert!(!logs.contains(SECRET), "the secret is in the logs");
    app.shutdown().await.unwrap();
}

#[event("act.shop.ordered")]
pub struct ShopOrdered {
    pub order: u64,
    pub cents: u64,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_two_step_workflow_runs_end_to_end() {
    let nats = NatsServer::start().unwrap_or_else(|e| panic!("{e}"));
    let http = HttpServer::start(|request, _| match request.path.as_str() {
        "/charge" => {
            let asked = request.json();
            Answer::json(200, serde_json::json!({"order": asked["order"], "payment": "pay-1", "cents": asked["cents"]}))
        }
        "/ship" => Answer::status(202),
        _ => Answer::status(404),
    })
    .await;
    let toml = format!(
        r#"
[[trigger]]
name = "charge"
event = "act.shop.ordered"
[[trigger.action]]
type = "web_service"
url = "{url}/charge"
body = {{ order = "${{event.order}}", cents = "${{event.cents}}" }}
emit = "act.shop.charged"

[[trigger]]
name = "ship"
event = "act.shop.charged"
[[trigger.action]]
type = "web_service"
url = "{url}/ship"
body = {{ order = "${{event.order}}", payment = "${{event.payment}}", by = "${{meta.source}}/${{meta.name}}" }}
"#,
        url = http.url()
    );
    let app = start(&nats, "workflow", &toml, &[]).await;
    app.publisher()
        .publish(&ShopOrdered {
            order: 9,
            cents: 1250,
        })
        .await
        .unwrap();
    eventually("shipped", || !http.requests_to("/ship").is_empty()).await;
    assert_eq!(
        http.requests_to("/ship")[0].json(),
        serde_json::json!({"order": 9, "payment": "pay-1", "by": "workflow/act.shop.charged"})
    );
    assert_eq!(http.requests_to("/charge").len(), 1);
    app.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_endpoint_opens_the_breaker_and_nothing_is_dead_lettered() {
    let nats = NatsServer::start().unwrap_or_else(|e| panic!("{e}"));
    // A port that nothing listens on yet: the backend is down.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let toml = format!(
        r#"
[[trigger]]
name = "notify"
event = "act.order.placed"
retries = 20
breaker = "backend"
[[trigger.action]]
type = "web_service"
url = "http://{addr}/notify/${{event.order}}"
timeout = "1s"
"#
    );
    let app = builder(&nats, "breaker-actions", &toml, &[])
        .breaker(
            "backend",
            BreakerConfig::default()
                .min_calls(3)
                .failure_ratio(0.5)
                .open_for(Duration::from_millis(500)),
        )
        .start()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    for order in 1..=5 {
        app.publisher()
            .publish(&OrderPlaced { order })
            .await
            .unwrap();
    }
    eventually("the breaker opens", || {
        app.breaker("backend")
            .is_some_and(|b| b.state() != eda::BreakerState::Closed)
    })
    .await;
    assert!(app.dead_letters().await.unwrap().is_empty());
    // The backend comes up on that port: everything goes through, once, no dead letters.
    let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
    let http = HttpServer::serve(listener, |_, _| Answer::status(200));
    eventually("all five delivered", || {
        app.stats("notify").unwrap().handled == 5
    })
    .await;
    let mut paths: Vec<String> = http.requests().iter().map(|r| r.path.clone()).collect();
    paths.sort();
    paths.dedup();
    assert_eq!(paths.len(), 5, "{paths:?}");
    assert!(app.dead_letters().await.unwrap().is_empty());
    app.shutdown().await.unwrap();
}

#[test]
fn every_mistake_in_the_file_is_a_load_error_with_its_position() {
    let env = |name: &str| (name == "SET").then(|| "x".to_owned());
    let parse = |text: &str| {
        eda::actions::Actions::parse(text, "actions.toml", &env)
            .map(|_| ())
            .unwrap_err()
            .to_string()
    };
    let trigger = |action: &str| {
        format!("[[trigger]]\nname = \"t\"\nevent = \"a.b\"\n[[trigger.action]]\ntype = \"web_service\"\n{action}\n")
    };
    for (text, expected) in [
        (trigger("url = \"http://h/${user.id}\""), "actions.toml:6:7: unknown variable `${user.id}`: templates read `event.<path>`, `meta.<field>` or `env.<VAR>`"),
        (trigger("url = \"http://h/${event.a[x]}\""), "actions.toml:6:7: bad path in `${event.a[x]}`"),
        (trigger("url = \"http://h/${env.UNSET}\""), "actions.toml:6:7: `${env.UNSET}`: the environment variable `UNSET` is not set"),
        (trigger("url = \"http://h/\"\nmethod = \"FETCH\""), "actions.toml:7:10: method `FETCH`: one of GET, POST, PUT, PATCH, DELETE"),
        (trigger("url = \"http://h/\"\ntimeout = \"soon\""), "actions.toml:7:11: timeout `soon`: a duration such as `5s` or `500ms`"),
        (trigger("url = \"ftp://h/\""), "actions.toml:6:7: url `ftp://h/`: an http:// or https:// URL"),
        (trigger("url = \"http://h/\"\nemit = \"a.*\""), "actions.toml:7:8: emit `a.*`: one event name, without wildcards"),
        (trigger("url = \"http://h/\"\nretry = 3"), "actions.toml:7:1: unknown field `retry`"),
        (trigger("url = \"http://h/\"").replace("web_service", "email"), "actions.toml:5:8: unknown action type `email`: the action type is `web_service`"),
        ("[[trigger]]\nname = \"has space\"\nevent = \"a.b\"\n".to_owned(), "actions.toml:2:8: trigger name `has space`: letters, digits, `_` and `-` only"),
        ("[[trigger]]\nname = \"t\"\nevent = \"a..b\"\n".to_owned(), "actions.toml:3:9: event `a..b`: dot-separated names without empty ones"),
        ("[[trigger]]\nname = \"t\"\n".to_owned(), "missing field `event`"),
        ("trigger = 3".to_owned(), "actions.toml:1:11: invalid type: integer `3`, expected a sequence"),
        ("".to_owned(), "actions.toml: no triggers"),
    ] {
        let error = parse(&text);
        assert!(error.contains(expected), "{text}\n=> {error}");
    }
    // An app given a bad file does not start, and says which file and where.
    let path = actions_file("[[trigger]]\nname = \"t\"\nevent = \"a.b\"\n");
    let error = App::builder("bad-actions")
        .without_env()
        .in_memory()
        .actions(&path)
        .build()
        .unwrap_err()
        .to_string();
    assert!(
        error.contains(&format!(
            "{}:2:8: trigger `t` has no `[[trigger.action]]`",
            path.display()
        )),
        "{error}"
    );
    let missing = App::builder("bad-actions")
        .without_env()
        .in_memory()
        .actions("/nonexistent/actions.toml")
        .build()
        .unwrap_err()
        .to_string();
    assert!(
        missing.contains("cannot read actions file `/nonexistent/actions.toml`"),
        "{missing}"
    );
}

#[test]
fn triggers_are_in_the_catalog_and_the_generated_permissions() {
    let path = actions_file(
        r#"
[[trigger]]
name = "sync_user"
event = "act.user.created"
[[trigger.action]]
type = "web_service"
url = "http://127.0.0.1:9/users"
emit = "act.user.synced"
"#,
    );
    let app = App::builder("integrations")
        .without_env()
        .in_memory()
        .handlers(&[])
        .actions(&path)
        .build()
        .unwrap_or_else(|e| panic!("{e}"));
    let permissions = app.permissions();
    for subject in [
        "$JS.API.CONSUMER.MSG.NEXT.EDA_EVENTS.integrations__sync_user",
        "$JS.ACK.EDA_EVENTS.integrations__sync_user.>",
        "events.act.user.synced",
    ] {
        assert!(
            permissions.publish.contains(&subject.to_owned()),
            "{subject}: {permissions}"
        );
    }
    let catalog = app.describe();
    let trigger = catalog
        .handlers
        .iter()
        .find(|h| h.name == "sync_user")
        .unwrap();
    assert_eq!(trigger.subject, "act.user.created");
    assert_eq!(
        trigger.emits.as_deref(),
        Some(&["act.user.synced".to_owned()][..])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_swaps_changed_actions_keeps_the_old_set_on_errors_and_follows_sighup() {
    let nats = NatsServer::start().unwrap_or_else(|e| panic!("{e}"));
    let http = HttpServer::start(|_, _| Answer::status(200)).await;
    let trigger = |path: &str| {
        format!(
            "[[trigger]]\nname = \"relay\"\nevent = \"act.reload.ping\"\n[[trigger.action]]\ntype = \"web_service\"\nurl = \"{}/{path}/${{event.n}}\"\n",
            http.url()
        )
    };
    let file = actions_file(&trigger("v1"));
    set_secret();
    capture_logs();
    let app = App::builder("reloading")
        .without_env()
        .nats(nats.url())
        .handlers(&[])
        .actions(&file)
        .start()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let ping = |n: u64| {
        let publisher = app.publisher();
        async move {
            publisher
                .publish_raw("act.reload.ping", 1, format!("{{\"n\":{n}}}"))
                .await
                .unwrap()
        }
    };
    ping(1).await;
    eventually("v1 called", || !http.requests_to("/v1/1").is_empty()).await;

    std::fs::write(&file, trigger("v2")).unwrap();
    let report = app.reload_actions().await.unwrap();
    assert_eq!(report.updated, ["relay"]);
    assert!(
        report.started.is_empty() && report.need_restart.is_empty(),
        "{report:?}"
    );
    ping(2).await;
    eventually("v2 called", || !http.requests_to("/v2/2").is_empty()).await;

    std::fs::write(&file, trigger("v3").replace("${event.n}", "${event.n")).unwrap();
    let error = app.reload_actions().await.unwrap_err().to_string();
    assert!(
        error.contains(&format!(
            "{}:6:7: `${{` without a closing `}}`",
            file.display()
        )),
        "{error}"
    );
    ping(3).await;
    eventually("still v2", || !http.requests_to("/v2/3").is_empty()).await;

    std::fs::write(&file, trigger("v4")).unwrap();
    let hup = std::process::Command::new("kill")
        .args(["-HUP", &std::process::id().to_string()])
        .status()
        .unwrap();
    assert!(hup.success());
    let mut n = 4;
    loop {
        ping(n).await;
        eventually("the ping is handled", || {
            http.requests()
                .iter()
                .any(|r| r.path.ends_with(&format!("/{n}")))
        })
        .await;
        if !http.requests_to(&format!("/v4/{n}")).is_empty() {
            break;
        }
        assert!(n < 100, "SIGHUP never reloaded the file");
        n += 1;
    }
    app.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_starts_new_triggers_stops_removed_ones_after_draining_and_restarts_changed_ones() {
    let nats = NatsServer::start().unwrap_or_else(|e| panic!("{e}"));
    // `/slow/..` answers after a while: a call in flight when its trigger is removed.
    let http = HttpServer::start(|request, _| {
        if request.path.starts_with("/slow/") {
            Answer::status(200).after(Duration::from_millis(800))
        } else {
            Answer::status(200)
        }
    })
    .await;
    let trigger = |name: &str, event: &str, extra: &str| {
        format!(
            "[[trigger]]\nname = \"{name}\"\nevent = \"{event}\"\n{extra}[[trigger.action]]\ntype = \"web_service\"\nurl = \"{}/{name}/${{event.n}}\"\n",
            http.url()
        )
    };
    let file = actions_file(
        &(trigger("slow", "act.live.ping", "") + &trigger("witness", "act.live.ping", "")),
    );
    capture_logs();
    let app = App::builder("live-reload")
        .without_env()
        .nats(nats.url())
        .handlers(&[])
        .actions(&file)
        .start()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let ping = |n: u64| {
        let publisher = app.publisher();
        async move {
            publisher
                .publish_raw("act.live.ping", 1, format!("{{\"n\":{n}}}"))
                .await
                .unwrap()
        }
    };
    ping(1).await;
    eventually("slow's call is in flight", || {
        !http.requests_to("/slow/1").is_empty()
    })
    .await;

    // `slow` removed while its call is in flight, `fresh` added, `witness` with other retries.
    std::fs::write(
        &file,
        trigger("witness", "act.live.ping", "retries = 1\n")
            + &trigger("fresh", "act.live.ping", ""),
    )
    .unwrap();
    let report = app.reload_actions().await.unwrap();
    assert_eq!(report.stopped, ["slow"]);
    assert_eq!(report.started, ["fresh"]);
    assert_eq!(report.restarted, ["witness"]);
    assert!(report.need_restart.is_empty(), "{report:?}");
    assert_eq!(
        app.stats("slow").map(|s| s.handled),
        None,
        "slow's consumer is gone from the app"
    );
    // Its call in flight finished before it stopped: acknowledged, never called again.
    let js = async_nats::jetstream::new(async_nats::connect(nats.url()).await.unwrap());
    let events = js.get_stream("EDA_EVENTS").await.unwrap();
    let slow = events
        .consumer_info("live-reload__slow")
        .await
        .unwrap()
        .clone();
    assert_eq!((slow.num_pending, slow.num_ack_pending), (0, 0), "{slow:?}");

    ping(2).await;
    eventually(
        "the restarted and the new trigger take the next event",
        || !http.requests_to("/witness/2").is_empty() && !http.requests_to("/fresh/2").is_empty(),
    )
    .await;
    let slow = events
        .consumer_info("live-reload__slow")
        .await
        .unwrap()
        .clone();
    assert_eq!(
        slow.num_pending, 1,
        "no one reads for the removed trigger: {slow:?}"
    );
    assert!(http.requests_to("/slow/2").is_empty());
    assert_eq!(http.requests_to("/slow/1").len(), 1);
    assert_eq!(
        http.requests_to("/witness/1").len(),
        1,
        "handled once across the restart"
    );

    // Another event for a running trigger is not applied: its consumer reads the old subject.
    std::fs::write(
        &file,
        trigger("witness", "act.live.other", "retries = 1\n")
            + &trigger("fresh", "act.live.ping", ""),
    )
    .unwrap();
    let report = app.reload_actions().await.unwrap();
    assert_eq!(
        report.need_restart,
        ["`witness` changed its event (`act.live.ping` to `act.live.other`): its durable consumer reads the old subject; give the trigger a new name"]
    );
    ping(3).await;
    eventually("witness still takes its old event", || {
        !http.requests_to("/witness/3").is_empty()
    })
    .await;
    app.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_memory_a_removed_triggers_events_do_not_keep_settle_waiting() {
    let http = HttpServer::start(|_, _| Answer::status(200)).await;
    let trigger = |name: &str| {
        format!(
            "[[trigger]]\nname = \"{name}\"\nevent = \"act.mem.ping\"\n[[trigger.action]]\ntype = \"web_service\"\nurl = \"{}/{name}/${{event.n}}\"\n",
            http.url()
        )
    };
    let file = actions_file(&(trigger("kept") + &trigger("gone")));
    let app = App::builder("memory-reload")
        .without_env()
        .in_memory()
        .handlers(&[])
        .actions(&file)
        .start()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    std::fs::write(&file, trigger("kept")).unwrap();
    let report = app.reload_actions().await.unwrap();
    assert_eq!(report.stopped, ["gone"]);
    app.publisher()
        .publish_raw("act.mem.ping", 1, "{\"n\":1}")
        .await
        .unwrap();
    tokio::time::timeout(Duration::from_secs(60), app.settle())
        .await
        .expect("settle returns: no one waits for the removed trigger's consumer");
    assert_eq!(http.requests_to("/kept/1").len(), 1);
    assert!(http.requests_to("/gone/1").is_empty());
    app.shutdown().await.unwrap();
}

#[test]
fn the_shop_examples_actions_file_loads() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/actions.toml");
    let actions = eda::actions::Actions::load_with_env(path, &|name| {
        name.starts_with("SHOP_WEBHOOK_")
            .then(|| "http://127.0.0.1:9".to_owned())
    })
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(actions.trigger_names(), ["crm_paid", "payment_alert"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_payload_that_is_not_json_and_clashing_names_are_refused() {
    let toml = "[[trigger]]\nname = \"relay\"\nevent = \"act.raw.bytes\"\n[[trigger.action]]\ntype = \"web_service\"\nurl = \"http://127.0.0.1:9/x\"\n";
    let app = App::builder("raw-actions")
        .without_env()
        .in_memory()
        .handlers(&[])
        .actions(actions_file(toml))
        .start()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    app.publisher()
        .publish_raw("act.raw.bytes", 1, "not json")
        .await
        .unwrap();
    app.settle().await;
    let letters = app.dead_letters().await.unwrap();
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0].reason, eda::DlqReason::Permanent);
    assert!(
        letters[0]
            .error
            .contains("trigger `relay`: the payload of `act.raw.bytes` is not JSON"),
        "{}",
        letters[0].error
    );
    app.shutdown().await.unwrap();

    // A trigger named like a handler of the service, and one named in two files.
    let clash = toml.replace("relay", "on_synced");
    let error = App::builder("actions-test")
        .without_env()
        .in_memory()
        .actions(actions_file(&clash))
        .build()
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("trigger `on_synced` has the name of a handler of this service"),
        "{error}"
    );
    let twice = App::builder("raw-actions")
        .without_env()
        .in_memory()
        .handlers(&[])
        .actions(actions_file(toml))
        .actions(actions_file(toml))
        .build()
        .unwrap_err()
        .to_string();
    assert!(
        twice.contains("two actions files name a trigger `relay`"),
        "{twice}"
    );
}
