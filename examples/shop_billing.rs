//! `billing`: records bills and charges payments through a payment provider that fails now
//! and then (retried with exponential backoff) and declines zero amounts for good (the payment
//! is dead-lettered with reason `permanent`, after `payment.failed` is published).
//!
//! `SHOP_FAILURE_RATE` (default 0.1): the share of provider calls that fail transiently.

#![allow(missing_docs, missing_debug_implementations)]

#[path = "shop/events.rs"]
mod events;

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use eda::prelude::*;
use events::*;

/// A simulated payment provider.
struct Provider {
    calls: AtomicU64,
    /// Every `fail_every`-th call fails transiently (0: never).
    fail_every: u64,
}

#[derive(Debug)]
enum ChargeError {
    Unavailable,
    Declined,
}

impl std::fmt::Display for ChargeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ChargeError::Unavailable => f.write_str("payment provider unavailable"),
            ChargeError::Declined => f.write_str("card declined: amount must be positive"),
        }
    }
}

impl std::error::Error for ChargeError {}

impl Provider {
    fn charge(&self, amount_cents: u64) -> Result<(), ChargeError> {
        let call = self.calls.fetch_add(1, Ordering::Relaxed) + 1;
        if self.fail_every > 0 && call.is_multiple_of(self.fail_every) {
            return Err(ChargeError::Unavailable);
        }
        if amount_cents == 0 {
            return Err(ChargeError::Declined);
        }
        Ok(())
    }
}

#[derive(Default)]
struct Bills(Mutex<HashSet<u64>>);

#[handler(service = "billing")]
async fn record_bill(event: BillCreated, bills: State<Bills>) {
    if let Ok(mut open) = bills.0.lock() {
        open.insert(event.bill_id);
    }
}

#[handler(
    service = "billing",
    concurrency = 8,
    retries = 5,
    backoff = "exponential",
    base_delay = "50ms",
    max_delay = "2s"
)]
async fn charge(
    event: PaymentRequested,
    ctx: Context,
    provider: State<Provider>,
) -> Result<(), HandlerError> {
    match provider.charge(event.amount_cents) {
        Ok(()) => {
            let (bill_id, user_id) = (event.bill_id, event.user_id);
            ctx.publish(&PaymentSucceeded {
                bill_id,
                user_id,
                amount_cents: event.amount_cents,
            })
            .await?;
            ctx.publish(&BillPaid { bill_id, user_id }).await?;
            Ok(())
        }
        Err(ChargeError::Unavailable) => Err(HandlerError::retry(ChargeError::Unavailable)),
        Err(ChargeError::Declined) => {
            let reason = ChargeError::Declined.to_string();
            ctx.publish(&PaymentFailed {
                bill_id: event.bill_id,
                user_id: event.user_id,
                reason,
            })
            .await?;
            Err(HandlerError::permanent(ChargeError::Declined))
        }
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let rate: f64 = std::env::var("SHOP_FAILURE_RATE")
        .ok()
        .map(|v| {
            v.parse()
                .map_err(|_| format!("SHOP_FAILURE_RATE=`{v}`: expected a share such as 0.1"))
        })
        .transpose()?
        .unwrap_or(0.1);
    let fail_every = if rate > 0.0 {
        (1.0 / rate).round().max(1.0) as u64
    } else {
        0
    };
    shop_app("billing")
        .state(Provider {
            calls: AtomicU64::new(0),
            fail_every,
        })
        .state(Bills::default())
        .run()
        .await?;
    Ok(())
}
