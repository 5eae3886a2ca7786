//! Rough throughput on NATS JetStream, eda next to hand-written async-nats in the same run.
//!
//! ```sh
//! cargo run --release --example throughput -- 20000
//! ```
//!
//! Starts its own `nats-server` (from `EDA_NATS_SERVER` or `PATH`) on a free port with a
//! temporary store, then measures: pipelined publishing (raw async-nats with `Nats-Msg-Id` vs
//! `Publisher::publish_all`), and end to end through a no-op handler with 64 in flight
//! (idempotency off, and on: one KV create per event). One run, no statistics: the benchmark
//! suite is the place for min/median/max.

#![allow(missing_docs, missing_debug_implementations)]

use std::time::{Duration, Instant};

use eda::prelude::*;
use eda::testing::NatsServer;
use std::future::IntoFuture;

use futures_util::StreamExt;

#[event("bench.tick")]
pub struct Tick {
    pub n: u64,
}

#[handler(concurrency = 64, idempotent = "off")]
async fn tick_plain(_event: Tick) {}

#[handler(concurrency = 64)]
async fn tick_idempotent(_event: Tick) {}

fn rate(count: u64, elapsed: Duration) -> f64 {
    count as f64 / elapsed.as_secs_f64()
}

/// Raw pipelined publishing; with `eda_headers`, every message also carries the header eda adds
/// on a plain publish (which tells the cost of the wire format apart from the cost of the
/// framework).
async fn raw_publish(
    url: &str,
    count: u64,
    eda_headers: bool,
) -> Result<Duration, async_nats::Error> {
    let js = async_nats::jetstream::new(async_nats::connect(url).await?);
    js.get_or_create_stream(async_nats::jetstream::stream::Config {
        name: "RAW".into(),
        subjects: vec!["raw.>".into()],
        ..Default::default()
    })
    .await?;
    let payload = serde_json::to_vec(&Tick { n: 0 })?;
    let started = Instant::now();
    let mut acks = futures_util::stream::FuturesUnordered::new();
    for i in 0..count {
        // As a competent user would: a message id, so that retries are deduplicated.
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("Nats-Msg-Id", format!("raw-{eda_headers}-{i}").as_str());
        if eda_headers {
            // What eda adds on a plain publish (DESIGN.md §4).
            headers.insert("Eda-Source", "bench-publish");
        }
        acks.push(
            js.publish_with_headers("raw.tick", headers, payload.clone().into())
                .await?
                .into_future(),
        );
        if acks.len() >= 1024 {
            acks.next().await.transpose()?;
        }
    }
    while let Some(ack) = acks.next().await {
        ack?;
    }
    Ok(started.elapsed())
}

async fn end_to_end(url: &str, handler: &'static str, count: u64) -> eda::Result<Duration> {
    let consumer = App::builder(format!("bench-{}", handler.replace('_', "-")))
        .nats(url)
        .without_env()
        .handlers(&[handler])
        .start()
        .await?;
    let producer = App::builder("bench-producer")
        .nats(url)
        .without_env()
        .handlers(&[])
        .start()
        .await?;
    let events: Vec<Tick> = (0..count).map(|n| Tick { n }).collect();
    let started = Instant::now();
    producer.publisher().publish_all(&events).await?;
    while consumer.stats(handler).map_or(0, |s| s.handled) < count {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let elapsed = started.elapsed();
    consumer.shutdown().await?;
    producer.shutdown().await?;
    Ok(elapsed)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let count: u64 = std::env::args().nth(1).map_or(Ok(20_000), |a| a.parse())?;
    let server = NatsServer::start()?;
    let url = server.url();

    let raw = raw_publish(&url, count, false)
        .await
        .map_err(|e| e.to_string())?;
    let raw_headers = raw_publish(&url, count, true)
        .await
        .map_err(|e| e.to_string())?;
    let producer = App::builder("bench-publish")
        .nats(&url)
        .without_env()
        .handlers(&[])
        .start()
        .await?;
    let events: Vec<Tick> = (0..count).map(|n| Tick { n }).collect();
    let started = Instant::now();
    producer.publisher().publish_all(&events).await?;
    let eda_publish = started.elapsed();
    producer.shutdown().await?;
    let plain = end_to_end(&url, "tick_plain", count).await?;
    let idempotent = end_to_end(&url, "tick_idempotent", count).await?;

    println!("{count} events, one run");
    println!(
        "  publish, raw async-nats (msg id, 1024 in flight): {:>9.0}/s",
        rate(count, raw)
    );
    println!(
        "  publish, raw with eda-sized headers:      {:>9.0}/s",
        rate(count, raw_headers)
    );
    println!(
        "  publish, eda publish_all:                  {:>9.0}/s  ({:.2}x raw)",
        rate(count, eda_publish),
        raw.as_secs_f64() / eda_publish.as_secs_f64()
    );
    println!(
        "  end to end, idempotency off:               {:>9.0}/s",
        rate(count, plain)
    );
    println!(
        "  end to end, idempotent (KV create each):   {:>9.0}/s",
        rate(count, idempotent)
    );
    Ok(())
}
