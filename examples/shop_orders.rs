//! `orders`: the shop's producer, a load generator a user drives by hand.
//!
//! ```sh
//! cargo run --example shop_orders -- --rate 200 --seconds 10
//! ```
//!
//! Publishes, per user: `user.created` (every fifth one as v1, like an older producer), then
//! `bill.created` and `payment.requested` for one bill; every twentieth payment carries an
//! amount of 0, which the payment provider declines for good. At the end it prints what it
//! published as one JSON line (the demo checks every service against it).

#![allow(missing_docs, missing_debug_implementations)]

#[path = "shop/events.rs"]
mod events;

use std::time::{Duration, Instant};

use events::*;

fn arg(name: &str, default: u64) -> Result<u64, String> {
    let args: Vec<String> = std::env::args().collect();
    match args.iter().position(|a| a == name) {
        None => Ok(default),
        Some(i) => args
            .get(i + 1)
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| format!("{name} takes a number, e.g. {name} {default}")),
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let rate = arg("--rate", 200)?.max(1);
    let seconds = arg("--seconds", 10)?;
    let app = shop_app("orders")
        .handlers(&[])
        .emits::<UserCreated>()
        .emits::<BillCreated>()
        .emits::<PaymentRequested>()
        .start()
        .await?;
    let publisher = app.publisher();
    let (mut v1, mut v2, mut bills, mut payments, mut declined) = (0u64, 0u64, 0u64, 0u64, 0u64);
    let started = Instant::now();
    let deadline = started + Duration::from_secs(seconds);
    // Three events per user: pace users at rate / 3 per second.
    let per_user = Duration::from_secs_f64(3.0 / rate as f64);
    let mut user = 0u64;
    while Instant::now() < deadline {
        user += 1;
        let email = format!("user{user}@example.com");
        if user.is_multiple_of(5) {
            publisher
                .publish(&UserCreatedV1 { id: user, email })
                .await?;
            v1 += 1;
        } else {
            let name = format!("User {user}");
            publisher
                .publish(&UserCreated {
                    id: user,
                    email,
                    name,
                })
                .await?;
            v2 += 1;
        }
        let amount_cents = if user % 20 == 7 {
            0
        } else {
            500 + (user * 37) % 9500
        };
        declined += u64::from(amount_cents == 0);
        publisher
            .publish(&BillCreated {
                bill_id: user,
                user_id: user,
                amount_cents,
            })
            .await?;
        bills += 1;
        publisher
            .publish(&PaymentRequested {
                bill_id: user,
                user_id: user,
                amount_cents,
            })
            .await?;
        payments += 1;
        let next = started + per_user * u32::try_from(user).unwrap_or(u32::MAX);
        tokio::time::sleep_until(next.into()).await;
    }
    println!(
        "{{\"user.created.v1\": {v1}, \"user.created.v2\": {v2}, \"bill.created\": {bills}, \"payment.requested\": {payments}, \"declined\": {declined}}}"
    );
    app.shutdown().await?;
    Ok(())
}
