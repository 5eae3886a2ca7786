//! `billing`: records bills and charges payments through a payment provider that fails now
//! and then (retried with exponential backoff) and declines zero amounts for good (the payment
//! is dead-lettered with reason `permanent`, after `payment.failed` is published).
//!
//! `SHOP_FAILURE_RATE` (default 0.1): the share of provider calls that fail transiently.
//! `SHOP_OUTAGE_SECONDS` (default 0): the provider is down for this long from the first charge.
//! The `payment_provider` circuit breaker opens, billing stops taking payments (they wait in
//! the broker), probes the provider now and then, and takes them all once it answers again:
//! an outage far longer than the retries' backoff dead-letters nothing.

#![allow(missing_docs, missing_debug_implementations)]

#[path = "shop/events.rs"]
mod events;

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use eda::prelude::*;
use events::*;

/// A simulated payment provider.
struct Provider {
    calls: AtomicU64,
    /// Every `fail_every`-th call fails transiently (0: never).
    fail_every: u64,
    /// Down for this long from the first call.
    outage: Duration,
    first_call: OnceLock<Instant>,
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
        if self.first_call.get_or_init(Instant::now).elapsed() < self.outage {
            return Err(ChargeError::Unavailable);
        }
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
    breaker = "payment_provider",
    concurrency = 8,
    retries = 5,
    backoff = "exponential",
    base_delay = "50ms",
    max_delay = "2s",
    emits = [PaymentSucceeded, BillPaid, PaymentFailed]
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
    let outage = std::env::var("SHOP_OUTAGE_SECONDS")
        .ok()
        .map(|v| {
            v.parse::<f64>()
                .ok()
                .and_then(|s| Duration::try_from_secs_f64(s).ok())
                .ok_or_else(|| format!("SHOP_OUTAGE_SECONDS=`{v}`: expected seconds such as 4"))
        })
        .transpose()?
        .unwrap_or_default();
    shop_app("billing")
        .state(Provider {
            calls: AtomicU64::new(0),
            fail_every,
            outage,
            first_call: OnceLock::new(),
        })
        // The transient failures (a tenth of the calls) never reach half; an outage does
        // within 20 calls. Probed after 1 s, then 2 s, up to every 4 s.
        .breaker(
            "payment_provider",
            BreakerConfig::default()
                .failure_ratio(0.5)
                .min_calls(20)
                .window(Duration::from_secs(10))
                .open_for(Duration::from_secs(1))
                .max_open_for(Duration::from_secs(4)),
        )
        .state(Bills::default())
        .run()
        .await?;
    Ok(())
}
