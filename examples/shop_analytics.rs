//! `analytics`: a wildcard handler (`>`) that sees every event of the shop, undecoded, and
//! counts them by name in `shop_events_seen_total{event}`. It looks up every event id
//! (`idempotent = "always"`), so a republished event is not counted twice.

#![allow(missing_docs, missing_debug_implementations)]

#[path = "shop/events.rs"]
mod events;

use eda::prelude::*;
use events::*;

#[handler(">", service = "analytics", idempotent = "always", concurrency = 16)]
async fn count_events(event: RawEvent) {
    metrics::counter!("shop_events_seen_total", "event" => event.name().to_owned()).increment(1);
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    metrics::describe_counter!("shop_events_seen_total", "Events seen, by name");
    shop_app("analytics").run().await?;
    Ok(())
}
