//! `eda status`: streams, eda's consumers on the event stream, dead letters per handler and
//! reason, and the schemas registered.

use std::collections::BTreeMap;
use std::time::SystemTime;

use futures_util::StreamExt;
use serde::Serialize;

use crate::connect::{Broker, NatsArgs};
use crate::dlq::{self, rfc3339, to_json};
use crate::table::{heading, Table};
use crate::Result;

/// Everything `eda status` reports; `--json` prints it as is.
#[derive(Debug, Serialize)]
pub struct Status {
    /// The server (credentials masked).
    pub url: String,
    /// eda's streams: events, dead letters and the two buckets'.
    pub streams: Vec<StreamRow>,
    /// Every eda consumer (`<service>__<handler>`) on the event stream.
    pub consumers: Vec<ConsumerRow>,
    /// Dead letters per handler and reason.
    pub dead_letters: DeadLetters,
    /// The keys of the schema registry bucket (`<event>.v<N>`).
    pub schemas: Vec<String>,
}

/// One stream.
#[derive(Debug, Serialize)]
pub struct StreamRow {
    /// Its name.
    pub name: String,
    /// What eda keeps in it.
    pub role: &'static str,
    /// Whether the server has it.
    pub present: bool,
    /// Messages stored.
    pub messages: u64,
    /// Bytes stored.
    pub bytes: u64,
}

/// One durable consumer of a handler.
#[derive(Debug, Serialize)]
pub struct ConsumerRow {
    /// `<service>__<handler>`.
    pub name: String,
    /// The service.
    pub service: String,
    /// The handler.
    pub handler: String,
    /// Messages not delivered yet.
    pub pending: u64,
    /// Messages delivered and not acknowledged yet.
    pub ack_pending: usize,
    /// Messages delivered more than once.
    pub redelivered: usize,
    /// Pull requests waiting at the server (0: no instance is running).
    pub waiting: usize,
    /// When a message was last delivered (RFC 3339), if ever.
    pub last_active: Option<String>,
}

/// Dead letters per handler and reason.
#[derive(Debug, Serialize)]
pub struct DeadLetters {
    /// Every dead letter in the dead-letter stream.
    pub total: usize,
    /// Per handler, by service then handler.
    pub handlers: Vec<HandlerDeadLetters>,
}

/// The dead letters of one handler.
#[derive(Debug, Serialize)]
pub struct HandlerDeadLetters {
    /// The service.
    pub service: String,
    /// The handler.
    pub handler: String,
    /// All of this handler's.
    pub total: usize,
    /// Per reason (`decode`, `version`, `permanent`, `retries_exhausted`).
    pub reasons: BTreeMap<String, usize>,
}

/// `eda status`.
pub async fn status(nats: NatsArgs, json: bool) -> Result<()> {
    let broker = nats.connect().await?;
    let status = gather(&broker).await?;
    if json {
        println!("{}", to_json(&status));
    } else {
        print(&broker, &status);
    }
    Ok(())
}

async fn gather(broker: &Broker) -> Result<Status> {
    let (events, dlq) = broker.eda_streams().await?;
    let defaults = eda::Topology::default();
    let processed = format!("KV_{}", defaults.processed_bucket);
    let schemas_stream = format!("KV_{}", defaults.schemas_bucket);
    let mut streams = Vec::new();
    for (name, role) in [
        (broker.events_stream.as_str(), "events"),
        (broker.dlq_stream.as_str(), "dead letters"),
        (processed.as_str(), "processed ids"),
        (schemas_stream.as_str(), "schemas"),
    ] {
        let stream = match name == broker.events_stream {
            true => events.clone(),
            false if name == broker.dlq_stream => dlq.clone(),
            false => broker.stream(name).await?,
        };
        let state = stream.as_ref().map(|s| &s.cached_info().state);
        streams.push(StreamRow {
            name: name.to_owned(),
            role,
            present: stream.is_some(),
            messages: state.map_or(0, |s| s.messages),
            bytes: state.map_or(0, |s| s.bytes),
        });
    }
    let mut consumers = Vec::new();
    if let Some(events) = &events {
        let mut list = events.consumers();
        while let Some(info) = list.next().await {
            let info = info.map_err(|e| {
                broker.broker_error(
                    &format!("cannot list the consumers of `{}`", broker.events_stream),
                    &e,
                )
            })?;
            if info.config.durable_name.is_none() {
                continue;
            }
            let Some((service, handler)) = info.name.split_once("__") else {
                continue;
            };
            consumers.push(ConsumerRow {
                service: service.to_owned(),
                handler: handler.to_owned(),
                pending: info.num_pending,
                ack_pending: info.num_ack_pending,
                redelivered: info.num_redelivered,
                waiting: info.num_waiting,
                last_active: info
                    .delivered
                    .last_active
                    .map(|t| rfc3339(SystemTime::from(t))),
                name: info.name,
            });
        }
    }
    consumers.sort_by(|a, b| a.name.cmp(&b.name));
    let mut per_handler: BTreeMap<(String, String), BTreeMap<String, usize>> = BTreeMap::new();
    let mut total = 0;
    if let Some(dlq) = &dlq {
        for stored in dlq::read(broker, dlq, "dlq.>", None).await? {
            total += 1;
            *per_handler
                .entry(stored.service_and_handler())
                .or_default()
                .entry(stored.reason())
                .or_default() += 1;
        }
    }
    let handlers = per_handler
        .into_iter()
        .map(|((service, handler), reasons)| HandlerDeadLetters {
            service,
            handler,
            total: reasons.values().sum(),
            reasons,
        })
        .collect();
    let schemas = schema_keys(broker, &defaults.schemas_bucket, streams[3].present).await?;
    Ok(Status {
        url: broker.url.clone(),
        streams,
        consumers,
        dead_letters: DeadLetters { total, handlers },
        schemas,
    })
}

/// The keys of the schema registry bucket, sorted; none when it is missing.
async fn schema_keys(broker: &Broker, bucket: &str, present: bool) -> Result<Vec<String>> {
    if !present {
        return Ok(Vec::new());
    }
    let failed = |e: &dyn std::fmt::Display| {
        broker.broker_error(&format!("cannot read the schema registry `{bucket}`"), e)
    };
    let store = broker
        .js
        .get_key_value(bucket)
        .await
        .map_err(|e| failed(&e))?;
    let mut keys = Vec::new();
    let mut list = store.keys().await.map_err(|e| failed(&e))?;
    while let Some(key) = list.next().await {
        keys.push(key.map_err(|e| failed(&e))?);
    }
    keys.sort();
    Ok(keys)
}

/// `1.5 KiB`.
fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    match unit {
        0 => format!("{n} B"),
        _ => format!("{value:.1} {}", UNITS[unit]),
    }
}

/// `12s ago` for an RFC 3339 time.
fn ago(time: &str) -> String {
    let Ok(then) = humantime::parse_rfc3339(time) else {
        return time.to_owned();
    };
    match SystemTime::now().duration_since(then) {
        Ok(age) => format!(
            "{} ago",
            humantime::format_duration(std::time::Duration::from_secs(age.as_secs()))
        ),
        Err(_) => "now".to_owned(),
    }
}

fn print(broker: &Broker, status: &Status) {
    println!("{}", heading(&format!("eda on {}", status.url)));
    println!();
    let mut streams = Table::new(&["STREAM", "HOLDS", ">MESSAGES", ">BYTES"]);
    for s in &status.streams {
        let (messages, size) = match s.present {
            true => (s.messages.to_string(), bytes(s.bytes)),
            false => ("missing".to_owned(), "-".to_owned()),
        };
        streams.row(vec![s.name.clone(), s.role.to_owned(), messages, size]);
    }
    streams.print();
    println!();
    println!(
        "{}",
        heading(&format!(
            "consumers on `{}` ({})",
            broker.events_stream,
            status.consumers.len()
        ))
    );
    if status.consumers.is_empty() {
        println!("  none: no eda handler has run against this server");
    } else {
        let mut consumers = Table::new(&[
            "SERVICE",
            "HANDLER",
            ">PENDING",
            ">ACK PENDING",
            ">REDELIVERED",
            ">WAITING",
            "LAST ACTIVE",
        ]);
        for c in &status.consumers {
            consumers.row(vec![
                c.service.clone(),
                c.handler.clone(),
                c.pending.to_string(),
                c.ack_pending.to_string(),
                c.redelivered.to_string(),
                c.waiting.to_string(),
                c.last_active
                    .as_deref()
                    .map_or_else(|| "never".to_owned(), ago),
            ]);
        }
        consumers.print();
    }
    println!();
    let dead = &status.dead_letters;
    println!(
        "{}",
        heading(&format!(
            "dead letters in `{}` ({})",
            broker.dlq_stream, dead.total
        ))
    );
    if dead.handlers.is_empty() {
        println!("  none");
    } else {
        let mut letters = Table::new(&["HANDLER", "REASON", ">COUNT"]);
        for h in &dead.handlers {
            for (reason, count) in &h.reasons {
                letters.row(vec![
                    format!("{}/{}", h.service, h.handler),
                    reason.clone(),
                    count.to_string(),
                ]);
            }
        }
        letters.print();
        println!("  (`eda dlq list --handler <service>/<handler>` lists them)");
    }
    println!();
    println!(
        "{}",
        heading(&format!("schemas registered ({})", status.schemas.len()))
    );
    if status.schemas.is_empty() {
        println!("  none");
    }
    for key in &status.schemas {
        println!("  {key}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_are_readable() {
        assert_eq!(bytes(12), "12 B");
        assert_eq!(bytes(1536), "1.5 KiB");
        assert_eq!(bytes(3 * 1024 * 1024), "3.0 MiB");
    }
}
