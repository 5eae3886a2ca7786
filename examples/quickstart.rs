//! The quickstart: events, handlers, retries, upcasting and a dead letter.
//!
//! `cargo run --example quickstart` runs it in memory. `cargo run --example quickstart -- --nats`
//! runs the same handlers, unchanged, on NATS JetStream at `EDA_NATS_URL` (default
//! `nats://127.0.0.1:4222`; the server needs JetStream, `nats-server -js`). Either way it
//! publishes a few events, waits until every handler has settled, prints what happened and
//! exits.

#![allow(missing_docs, missing_debug_implementations)] // example types speak for themselves

use std::sync::atomic::{AtomicU32, Ordering};

use eda::prelude::*;

/// Version 2 of `user.created`: adds the user's name.
#[event("user.created", version = 2, upcast_from = UserCreatedV1)]
pub struct UserCreated {
    pub id: u64,
    pub email: String,
    pub name: String,
}

/// Version 1, as an older producer still publishes it.
#[event("user.created", version = 1)]
pub struct UserCreatedV1 {
    pub id: u64,
    pub email: String,
}

impl From<UserCreatedV1> for UserCreated {
    fn from(v1: UserCreatedV1) -> Self {
        let name = v1.email.split('@').next().unwrap_or_default().to_owned();
        UserCreated {
            id: v1.id,
            email: v1.email,
            name,
        }
    }
}

/// The name is taken from the type: `payment.requested`.
#[event]
pub struct PaymentRequested {
    pub bill_id: u64,
    pub user_id: u64,
    pub amount_cents: u64,
}

#[event]
pub struct WelcomeSent {
    pub user_id: u64,
}

/// A flaky downstream: fails the first two calls.
#[derive(Default)]
struct PaymentProvider {
    calls: AtomicU32,
}

/// Typed handler: v1 and v2 messages both arrive as `UserCreated` v2.
#[handler(service = "quickstart")]
async fn send_welcome(event: UserCreated, ctx: Context) -> Result<(), HandlerError> {
    println!("  send_welcome: welcome {} <{}>", event.name, event.email);
    ctx.publish(&WelcomeSent { user_id: event.id }).await?;
    Ok(())
}

/// Fails twice with a retryable error, then succeeds; a negative amount is a poison message.
#[handler(
    service = "quickstart",
    retries = 3,
    backoff = "exponential",
    base_delay = "20ms"
)]
async fn charge(
    event: PaymentRequested,
    provider: State<PaymentProvider>,
) -> Result<(), HandlerError> {
    if event.amount_cents == 0 {
        return Err(HandlerError::permanent("amount must be positive"));
    }
    let call = provider.calls.fetch_add(1, Ordering::SeqCst) + 1;
    if call <= 2 {
        println!("  charge: provider unavailable (call {call}), will retry");
        return Err(HandlerError::retry("payment provider unavailable"));
    }
    println!(
        "  charge: bill {} charged {} cents",
        event.bill_id, event.amount_cents
    );
    Ok(())
}

/// Wildcard handler: sees every event, undecoded.
#[handler(">", service = "quickstart")]
async fn audit(event: RawEvent) {
    println!(
        "  audit: {} v{} ({} bytes)",
        event.name(),
        event.version(),
        event.payload().len()
    );
}

#[tokio::main]
async fn main() -> eda::Result<()> {
    let builder = App::builder("quickstart").state(PaymentProvider::default());
    let builder = if std::env::args().any(|arg| arg == "--nats") {
        // EDA_NATS_URL, when set, wins over this default.
        builder.nats("nats://127.0.0.1:4222")
    } else {
        builder.in_memory()
    };
    let app = builder.start().await?;
    let publisher = app.publisher();

    println!("publishing ...");
    let mut ids = Vec::new();
    ids.push(
        publisher
            .publish(&UserCreated {
                id: 1,
                email: "ada@example.com".into(),
                name: "Ada".into(),
            })
            .await?,
    );
    ids.push(
        publisher
            .publish(&UserCreatedV1 {
                id: 2,
                email: "grace@example.com".into(),
            })
            .await?,
    );
    ids.push(
        publisher
            .publish(&PaymentRequested {
                bill_id: 10,
                user_id: 1,
                amount_cents: 4200,
            })
            .await?,
    );
    ids.push(
        publisher
            .publish(&PaymentRequested {
                bill_id: 11,
                user_id: 2,
                amount_cents: 0,
            })
            .await?,
    );

    app.settle().await;

    println!("\nsummary");
    for name in ["send_welcome", "charge", "audit"] {
        if let Some(s) = app.stats(name) {
            println!(
                "  {name:<13} handled {}  retried {}  dead-lettered {}",
                s.handled, s.retried, s.dead_lettered
            );
        }
    }
    // On a shared broker the dead-letter stream also holds earlier runs' letters.
    let letters = app.dead_letters().await?;
    for letter in letters.iter().filter(|l| ids.contains(&l.metadata.id)) {
        println!(
            "  dead letter on {}: reason={} attempts={} error=\"{}\"",
            letter.subject, letter.reason, letter.attempts, letter.error
        );
    }
    app.shutdown().await
}
