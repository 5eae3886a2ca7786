//! `eda dlq list` and `eda dlq show`: the dead letters on `dlq.<service>.<handler>`, read from
//! the dead-letter stream without consuming them (a short-lived ephemeral consumer without
//! acks, or a get by sequence).

use std::time::{Duration, SystemTime};

use async_nats::jetstream::consumer::{self, DeliverPolicy};
use async_nats::jetstream::stream::{self, RawMessageErrorKind};
use clap::Args;
use eda::wire::{
    DLQ_ATTEMPTS, DLQ_ERROR, DLQ_HANDLER, DLQ_PAYLOAD_CUT, DLQ_REASON, ORIGINAL_ID, ORIGINAL_SEQ,
    ORIGINAL_SUBJECT, TIME,
};
use futures_util::StreamExt;
use serde::Serialize;

use crate::connect::{Broker, NatsArgs};
use crate::table::{self, Table};
use crate::{Failure, Result};

/// Which dead letters `dlq list` shows.
#[derive(Debug, Clone, Args)]
pub struct Filter {
    /// Only this handler's dead letters.
    #[arg(long, value_name = "SERVICE/HANDLER", value_parser = parse_handler)]
    pub handler: Option<HandlerName>,
    /// Only dead letters with this reason.
    #[arg(long, value_name = "REASON", value_parser = ["decode", "version", "permanent", "retries_exhausted"])]
    pub reason: Option<String>,
    /// Only dead letters stored within this long (`30m`, `1h`, `2d`).
    #[arg(long, value_name = "DURATION", value_parser = crate::parse_duration)]
    pub since: Option<Duration>,
}

/// `<service>/<handler>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HandlerName {
    /// The service.
    pub service: String,
    /// The handler.
    pub handler: String,
}

pub(crate) fn parse_handler(text: &str) -> Result<HandlerName, String> {
    let bad = |c: char| c.is_whitespace() || matches!(c, '.' | '*' | '>' | '/');
    match text.split_once('/') {
        Some((service, handler))
            if !service.is_empty()
                && !handler.is_empty()
                && !service.contains(bad)
                && !handler.contains(bad) =>
        {
            Ok(HandlerName {
                service: service.to_owned(),
                handler: handler.to_owned(),
            })
        }
        _ => Err(format!(
            "`{text}`: expected <service>/<handler>, e.g. billing/charge"
        )),
    }
}

/// One message of the dead-letter stream, as stored.
#[derive(Debug, Clone)]
pub struct Stored {
    /// Its sequence in the dead-letter stream.
    pub sequence: u64,
    /// `dlq.<service>.<handler>`.
    pub subject: String,
    /// When the dead-letter stream stored it.
    pub time: SystemTime,
    /// Every header, in order (a header with several values appears once per value).
    pub headers: Vec<(String, String)>,
}

impl Stored {
    /// The first value of header `name`.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The service and handler: from the subject `dlq.<service>.<handler>` and the
    /// `Eda-Dlq-Handler` header.
    pub fn service_and_handler(&self) -> (String, String) {
        let rest = self.subject.strip_prefix("dlq.").unwrap_or(&self.subject);
        let (service, handler) = rest.split_once('.').unwrap_or((rest, ""));
        let handler = self.header(DLQ_HANDLER).unwrap_or(handler);
        (service.to_owned(), handler.to_owned())
    }

    /// The `Eda-Dlq-Reason`, or `unknown` for a message eda did not write.
    pub fn reason(&self) -> String {
        self.header(DLQ_REASON).unwrap_or("unknown").to_owned()
    }
}

/// One row of `dlq list`.
#[derive(Debug, Serialize)]
pub struct Row {
    /// Sequence in the dead-letter stream (for `dlq show`).
    pub sequence: u64,
    /// `<service>/<handler>`.
    pub handler: String,
    /// The service.
    pub service: String,
    /// Why it was dead-lettered (`unknown` for messages eda did not write).
    pub reason: String,
    /// How many attempts were made.
    pub attempts: Option<u32>,
    /// The event's name.
    pub event: Option<String>,
    /// The event's id.
    pub event_id: Option<String>,
    /// The event's sequence in the event stream.
    pub event_sequence: Option<u64>,
    /// When it was dead-lettered (RFC 3339).
    pub time: String,
    /// The error with its chain.
    pub error: String,
}

impl Row {
    fn of(stored: &Stored, prefix: &str) -> Row {
        let (service, handler) = stored.service_and_handler();
        Row {
            sequence: stored.sequence,
            handler: format!("{service}/{handler}"),
            service,
            reason: stored.reason(),
            attempts: stored.header(DLQ_ATTEMPTS).and_then(|a| a.parse().ok()),
            event: stored
                .header(ORIGINAL_SUBJECT)
                .map(|s| s.strip_prefix(prefix).unwrap_or(s).to_owned()),
            event_id: stored.header(ORIGINAL_ID).map(str::to_owned),
            event_sequence: stored.header(ORIGINAL_SEQ).and_then(|s| s.parse().ok()),
            time: rfc3339(stored.time),
            error: stored.header(DLQ_ERROR).unwrap_or_default().to_owned(),
        }
    }
}

/// `time` as RFC 3339 in UTC, to the second.
pub fn rfc3339(time: SystemTime) -> String {
    humantime::format_rfc3339_seconds(time).to_string()
}

/// The header pairs of a message, every value of each.
fn header_pairs(headers: Option<&async_nats::HeaderMap>) -> Vec<(String, String)> {
    let mut pairs = Vec::new();
    for (name, values) in headers.into_iter().flat_map(|map| map.iter()) {
        for value in values {
            pairs.push((name.to_string(), value.as_str().to_owned()));
        }
    }
    pairs
}

/// Every message of the dead-letter stream on `filter` (`dlq.>` for all), stored after
/// `since` if given, oldest first, headers only — read through an ephemeral consumer without
/// acks, deleted afterwards (and by the server after 30 s of inactivity if this process dies).
pub async fn read(
    broker: &Broker,
    dlq: &stream::Stream,
    filter: &str,
    since: Option<SystemTime>,
) -> Result<Vec<Stored>> {
    let name = &broker.dlq_stream;
    let failed = |e: &dyn std::fmt::Display| {
        broker.broker_error(&format!("cannot read the dead-letter stream `{name}`"), e)
    };
    let deliver_policy = match since {
        Some(time) => DeliverPolicy::ByStartTime {
            start_time: time.into(),
        },
        None => DeliverPolicy::All,
    };
    let reader = dlq
        .create_consumer(consumer::pull::Config {
            filter_subject: filter.to_owned(),
            ack_policy: consumer::AckPolicy::None,
            deliver_policy,
            headers_only: true,
            inactive_threshold: Duration::from_secs(30),
            description: Some("eda-cli: reading dead letters".to_owned()),
            ..Default::default()
        })
        .await
        .map_err(|e| failed(&e))?;
    let total = usize::try_from(reader.cached_info().num_pending).unwrap_or(usize::MAX);
    let mut letters = Vec::with_capacity(total.min(100_000));
    let mut outcome = Ok(());
    while letters.len() < total {
        let before = letters.len();
        let batch = reader
            .fetch()
            .max_messages((total - before).min(1000))
            .expires(Duration::from_secs(2))
            .messages()
            .await;
        let mut batch = match batch {
            Ok(batch) => batch,
            Err(e) => {
                outcome = Err(failed(&e));
                break;
            }
        };
        while let Some(message) = batch.next().await {
            let message = match message {
                Ok(message) => message,
                Err(e) => {
                    outcome = Err(failed(&e));
                    break;
                }
            };
            let Ok(info) = message.info() else { continue };
            letters.push(Stored {
                sequence: info.stream_sequence,
                subject: message.subject.to_string(),
                time: SystemTime::from(info.published),
                headers: header_pairs(message.headers.as_ref()),
            });
        }
        if outcome.is_err() || letters.len() == before {
            break;
        }
    }
    let consumer_name = reader.cached_info().name.clone();
    let _ = dlq.delete_consumer(&consumer_name).await;
    outcome.map(|()| letters)
}

/// `eda dlq list`.
pub async fn list(nats: NatsArgs, filter: Filter, json: bool) -> Result<()> {
    let broker = nats.connect().await?;
    let dlq = broker.dlq().await?;
    let mut events = broker.stream(&broker.events_stream).await?;
    let prefix = broker.subject_prefix(events.as_mut()).await;
    let subject = match &filter.handler {
        Some(h) => format!("dlq.{}.{}", h.service, h.handler),
        None => "dlq.>".to_owned(),
    };
    let since = filter.since.map(|d| SystemTime::now() - d);
    let rows: Vec<Row> = read(&broker, &dlq, &subject, since)
        .await?
        .iter()
        .map(|stored| Row::of(stored, &prefix))
        .filter(|row| filter.reason.as_ref().is_none_or(|r| *r == row.reason))
        .collect();
    if json {
        println!("{}", to_json(&rows));
        return Ok(());
    }
    if rows.is_empty() {
        println!(
            "no dead letters in `{}`{}",
            broker.dlq_stream,
            describe(&filter)
        );
        return Ok(());
    }
    let mut table = Table::new(&[
        ">SEQ",
        "HANDLER",
        "REASON",
        ">ATTEMPTS",
        "EVENT",
        "EVENT ID",
        "TIME",
        "ERROR",
    ]);
    let none = || "-".to_owned();
    for row in &rows {
        table.row(vec![
            row.sequence.to_string(),
            row.handler.clone(),
            row.reason.clone(),
            row.attempts.map_or_else(none, |a| a.to_string()),
            row.event.clone().unwrap_or_else(none),
            row.event_id.clone().unwrap_or_else(none),
            row.time.clone(),
            table::cut(&row.error, 60),
        ]);
    }
    table.print();
    Ok(())
}

/// ` for billing/charge, reason permanent, within 1h`.
fn describe(filter: &Filter) -> String {
    let mut parts = Vec::new();
    if let Some(h) = &filter.handler {
        parts.push(format!("for {}/{}", h.service, h.handler));
    }
    if let Some(reason) = &filter.reason {
        parts.push(format!("with reason {reason}"));
    }
    if let Some(since) = filter.since {
        parts.push(format!("within {}", humantime::format_duration(since)));
    }
    match parts.is_empty() {
        true => String::new(),
        false => format!(" {}", parts.join(", ")),
    }
}

/// A value as pretty JSON (everything the CLI prints serializes).
pub fn to_json(value: &impl Serialize) -> String {
    serde_json::to_string_pretty(value).unwrap_or_default()
}

/// What `dlq show --json` prints.
#[derive(Debug, Serialize)]
struct Shown {
    sequence: u64,
    stream: String,
    subject: String,
    time: String,
    service: String,
    handler: String,
    reason: String,
    headers: Vec<(String, String)>,
    error: Option<String>,
    /// The payload as JSON when it parses, else as text.
    payload: serde_json::Value,
    payload_is_json: bool,
}

/// `eda dlq show <seq>`.
pub async fn show(nats: NatsArgs, sequence: u64, json: bool) -> Result<()> {
    let broker = nats.connect().await?;
    let dlq = broker.dlq().await?;
    let name = &broker.dlq_stream;
    let message = match dlq.get_raw_message(sequence).await {
        Ok(message) => message,
        Err(e) => {
            return Err(match e.kind() {
                RawMessageErrorKind::NoMessageFound => Failure::new(format!(
                    "no dead letter at sequence {sequence} in `{name}` on {}: `eda dlq list` shows the sequences",
                    broker.url
                )),
                _ => broker.broker_error(
                    &format!("cannot read sequence {sequence} of `{name}`"),
                    &e,
                ),
            })
        }
    };
    let stored = Stored {
        sequence: message.sequence,
        subject: message.subject.to_string(),
        time: SystemTime::from(message.time),
        headers: header_pairs(Some(&message.headers)),
    };
    let (service, handler) = stored.service_and_handler();
    let parsed: Option<serde_json::Value> = serde_json::from_slice(&message.payload).ok();
    let text = String::from_utf8_lossy(&message.payload).into_owned();
    if json {
        let shown = Shown {
            sequence,
            stream: name.clone(),
            subject: stored.subject.clone(),
            time: rfc3339(stored.time),
            service,
            handler,
            reason: stored.reason(),
            headers: stored.headers.clone(),
            error: stored.header(DLQ_ERROR).map(str::to_owned),
            payload_is_json: parsed.is_some(),
            payload: parsed.unwrap_or(serde_json::Value::String(text)),
        };
        println!("{}", to_json(&shown));
        return Ok(());
    }
    let mut out = String::new();
    let mut field = |label: &str, value: &str| out.push_str(&format!("{label:<10}  {value}\n"));
    field("sequence", &format!("{sequence} in `{name}`"));
    field("subject", &stored.subject);
    field("stored", &rfc3339(stored.time));
    field("handler", &format!("{service}/{handler}"));
    field("reason", &stored.reason());
    if let Some(attempts) = stored.header(DLQ_ATTEMPTS) {
        field("attempts", attempts);
    }
    if let Some(subject) = stored.header(ORIGINAL_SUBJECT) {
        let mut event = subject.to_owned();
        if let Some(id) = stored.header(ORIGINAL_ID) {
            event.push_str(&format!(", id {id}"));
        }
        if let Some(seq) = stored.header(ORIGINAL_SEQ) {
            event.push_str(&format!(", sequence {seq} in `{}`", broker.events_stream));
        }
        field("event", &event);
    }
    if let Some(time) = stored.header(TIME) {
        field("event time", time);
    }
    if stored.header(DLQ_REASON).is_none() {
        out.push_str("(not written by eda: it has no `Eda-Dlq-Reason` header)\n");
    }
    out.push_str(&format!("\n{}\n", table::heading("headers")));
    for (key, value) in &stored.headers {
        out.push_str(&format!("  {key}: {value}\n"));
    }
    if let Some(error) = stored.header(DLQ_ERROR) {
        out.push_str(&format!(
            "\n{}\n",
            table::heading("error (with its chain: outer: cause: root cause)")
        ));
        out.push_str(&format!("  {error}\n"));
    }
    let size = message.payload.len();
    let what = match (&parsed, stored.header(DLQ_PAYLOAD_CUT)) {
        (_, Some(whole)) => format!(
            "payload (cut: {size} of {whole} bytes; the whole event is in `{}`{})",
            broker.events_stream,
            stored
                .header(ORIGINAL_SEQ)
                .map(|s| format!(" at sequence {s}"))
                .unwrap_or_default()
        ),
        (Some(_), None) => format!("payload ({size} bytes, JSON)"),
        (None, None) if std::str::from_utf8(&message.payload).is_ok() => {
            format!("payload ({size} bytes, not JSON)")
        }
        (None, None) => format!("payload ({size} bytes, not UTF-8: shown lossily)"),
    };
    out.push_str(&format!("\n{}\n", table::heading(&what)));
    match &parsed {
        Some(value) => out.push_str(&to_json(value)),
        None => out.push_str(&text),
    }
    println!("{out}");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handlers_are_named_service_slash_handler() {
        let h = parse_handler("billing/charge").unwrap();
        assert_eq!(
            (h.service.as_str(), h.handler.as_str()),
            ("billing", "charge")
        );
        for bad in ["billing", "billing/", "/charge", "a.b/c", "a/*", "a/b/c"] {
            assert!(parse_handler(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn service_and_handler_come_from_subject_and_header() {
        let stored = Stored {
            sequence: 1,
            subject: "dlq.billing.charge".into(),
            time: SystemTime::UNIX_EPOCH,
            headers: vec![],
        };
        assert_eq!(
            stored.service_and_handler(),
            ("billing".to_owned(), "charge".to_owned())
        );
        assert_eq!(stored.reason(), "unknown");
    }
}
