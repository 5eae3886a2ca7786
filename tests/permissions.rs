//! Least privilege, generated: `App::permissions` / `eda::permissions` give a service exactly
//! the NATS subjects it needs. A nats-server started with that block for the service's user
//! runs it, and refuses what it did not declare; debug builds refuse an undeclared event
//! before it reaches the server.
#![allow(missing_docs, missing_debug_implementations)]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use eda::prelude::*;
use eda::testing::TestApp;
use eda::{App, PublishError};

mod support;

#[event("member.joined")]
pub struct MemberJoined {
    pub id: u32,
}

#[event("greeting.sent")]
pub struct GreetingSent {
    pub id: u32,
}

#[event("secret.leaked")]
pub struct SecretLeaked {
    pub id: u32,
}

#[handler(service = "greeter", emits = [GreetingSent])]
async fn greet(event: MemberJoined, ctx: Context) -> Result<(), HandlerError> {
    ctx.publish(&GreetingSent { id: event.id })
        .await
        .map_err(HandlerError::retry)?;
    Ok(())
}

/// What the leaky handler's publish of an undeclared event returned.
#[derive(Default)]
pub struct Refusals(Mutex<Vec<String>>);

#[handler(service = "leaky", emits = [GreetingSent])]
async fn leak(event: MemberJoined, ctx: Context, refusals: State<Refusals>) {
    let outcome = ctx.publish(&SecretLeaked { id: event.id }).await;
    let message = match outcome {
        Ok(id) => format!("published as {id}"),
        Err(e) => e.to_string(),
    };
    refusals.0.lock().unwrap().push(message);
}

async fn eventually(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while !done() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "not within a minute: {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_runs_with_exactly_its_generated_permissions_and_nothing_more() {
    // The block comes from the service as configured (no server needed to compute it).
    let configured = App::builder("greeter")
        .handlers(&["greet"])
        .emits::<MemberJoined>()
        .build()
        .unwrap();
    let block = configured.permissions();
    let from_catalog = eda::permissions(&App::catalog(), "greeter");
    assert!(
        block.publish.contains(&"events.member.joined".to_owned()),
        "declared on the builder: {block}"
    );
    assert!(
        block.publish.contains(&"events.greeting.sent".to_owned()),
        "{block}"
    );
    // Only its schema (every event compiled in is registered at startup), not its subject.
    assert!(
        !block.publish.contains(&"events.secret.leaked".to_owned()),
        "{block}"
    );
    assert!(
        !block.publish.iter().any(|s| s.contains("leaky")),
        "{block}"
    );
    assert_eq!(
        block.publish.len(),
        from_catalog.publish.len() + 1,
        "the catalog's block lacks only the builder's declaration"
    );

    let server = support::RestrictedServer::start("greeter", &block);
    let admin = TestApp::builder("admin-tool")
        .nats(server.url())
        .handlers(&[])
        .configure(|b| b.nats_user_password("admin", "admin"))
        .start()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let greeter = TestApp::builder("greeter")
        .nats(server.url())
        .handlers(&["greet"])
        .configure(|b| {
            b.nats_user_password("greeter", "greeter")
                .emits::<MemberJoined>()
        })
        .start()
        .await
        .unwrap_or_else(|e| panic!("the service starts with its permissions: {e}"));

    // It consumes, publishes what it declared, acks.
    admin.publish(&MemberJoined { id: 1 }).await.unwrap();
    greeter.publish(&MemberJoined { id: 2 }).await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let sent = admin.published::<GreetingSent>().await.unwrap();
        if sent.len() == 2 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "greetings: {}",
            sent.len()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eventually("both handled", || greeter.handled("greet") == 2).await;

    // An event it did not declare is refused by the server, and the caller is told why.
    let refused = greeter.publish(&SecretLeaked { id: 3 }).await.unwrap_err();
    let message = refused.to_string();
    assert!(
        matches!(refused, PublishError::Broker(_)),
        "a broker refusal: {refused:?}"
    );
    assert_eq!(
        message,
        "the broker did not store the message: the server refused it (Permissions Violation for Publish to \"events.secret.leaked\"): this connection's user may not publish to `events.secret.leaked`; declare the event (`emits`) and give the user the permissions `App::permissions` prints"
    );
    assert!(admin.published::<SecretLeaked>().await.unwrap().is_empty());
    greeter.shutdown().await.unwrap();
    admin.shutdown().await.unwrap();
}

#[cfg(debug_assertions)]
#[tokio::test(start_paused = true)]
async fn in_debug_builds_a_handler_publishing_an_undeclared_event_gets_a_clear_error() {
    let refusals = Arc::new(Refusals::default());
    let app = TestApp::builder("leaky")
        .handlers(&["leak"])
        .shared_state(Arc::clone(&refusals))
        .start()
        .await
        .unwrap();
    app.publish(&MemberJoined { id: 1 }).await.unwrap();
    app.settle().await;
    assert_eq!(
        *refusals.0.lock().unwrap(),
        ["handler `leak` publishes `secret.leaked`, which its `emits = [..]` does not list: add SecretLeaked to it (the service's NATS permissions are generated from that list; this check runs in debug builds)"]
    );
    assert!(app.published::<SecretLeaked>().await.unwrap().is_empty());
}
