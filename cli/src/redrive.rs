//! `eda dlq redrive` and `eda dlq purge`: dead letters sent back to the one handler that gave
//! up on them, or deleted.
//!
//! A redrive publishes each dead letter, headers and payload as stored, to
//! `redrive.<service>.<handler>` on the redrive stream, which only that handler's own redrive
//! consumer reads (other services subscribed to the event never see it again). Each message is
//! confirmed by the broker before its dead letter is deleted, and carries the redrive id
//! `redrive.<dlq stream>.<dlq sequence>` as its `Nats-Msg-Id`: a run killed between the two
//! steps leaves the dead letter in place, and the next run's publish of it is dropped by the
//! broker's duplicate window (2 min by default) before the dead letter is deleted. Nothing is
//! lost, and nothing is redriven twice when the next run starts within the window.

use std::io::{IsTerminal, Write};
use std::time::{Duration, SystemTime};

use async_nats::jetstream::stream;
use async_nats::HeaderMap;
use bytes::Bytes;
use clap::Args;
use eda::wire::{DLQ_PAYLOAD_CUT, MSG_ID, ORIGINAL_ID, ORIGINAL_SEQ, ORIGINAL_SUBJECT};
use serde::Serialize;

use crate::connect::{Broker, NatsArgs};
use crate::dlq::{self, HandlerName, Stored};
use crate::table::Table;
use crate::{Failure, Result};

/// What `dlq redrive` sends back.
#[derive(Debug, Clone, Args)]
pub struct RedriveArgs {
    /// The handler whose dead letters go back to it (and to it only).
    #[arg(long, value_name = "SERVICE/HANDLER", value_parser = dlq::parse_handler)]
    pub handler: HandlerName,
    /// Send at most this many (oldest first).
    #[arg(long, value_name = "N")]
    pub limit: Option<usize>,
    /// Send at most this many per second (`10` or `10/s`).
    #[arg(long, value_name = "N/s", value_parser = parse_rate)]
    pub rate: Option<f64>,
    /// Only list what would be sent.
    #[arg(long)]
    pub dry_run: bool,
}

/// What `dlq purge` deletes.
#[derive(Debug, Clone, Args)]
pub struct PurgeArgs {
    /// The handler whose dead letters are deleted.
    #[arg(long, value_name = "SERVICE/HANDLER", value_parser = dlq::parse_handler)]
    pub handler: HandlerName,
    /// Only dead letters stored longer ago than this (`7d`, `12h`); all of them without it.
    #[arg(long, value_name = "DURATION", value_parser = crate::parse_duration)]
    pub older_than: Option<Duration>,
    /// Only dead letters with this reason.
    #[arg(long, value_name = "REASON", value_parser = ["decode", "version", "permanent", "retries_exhausted"])]
    pub reason: Option<String>,
    /// Do not ask for confirmation (for scripts).
    #[arg(long)]
    pub yes: bool,
}

/// `10`, `10/s`, `2.5/s`.
fn parse_rate(text: &str) -> Result<f64, String> {
    let number = text.strip_suffix("/s").unwrap_or(text);
    match number.trim().parse::<f64>() {
        Ok(rate) if rate.is_finite() && rate > 0.0 => Ok(rate),
        _ => Err(format!("`{text}`: expected messages per second, e.g. 10/s")),
    }
}

/// What `dlq redrive` did, for its summary and `--json`-free scripts reading stdout.
#[derive(Debug, Default, Serialize)]
struct Summary {
    /// Sent back and deleted from the dead-letter stream.
    redriven: usize,
    /// Found already sent by an earlier run (the broker's duplicate window), deleted now.
    already_sent: usize,
    /// Gone from the dead-letter stream before they were read (another run, a purge).
    gone: usize,
    /// Left in the dead-letter stream, with why.
    left: Vec<(u64, String)>,
}

/// `eda dlq redrive`.
pub async fn redrive(nats: NatsArgs, args: RedriveArgs) -> Result<()> {
    let broker = nats.connect().await?;
    let dlq = broker.dlq().await?;
    let HandlerName { service, handler } = &args.handler;
    let subject = eda::dlq::redrive_subject(service, handler);
    let target = check_target(&broker, service, handler).await?;
    let mut letters = dlq::read(&broker, &dlq, &format!("dlq.{service}.{handler}"), None).await?;
    if let Some(limit) = args.limit {
        letters.truncate(limit);
    }
    if letters.is_empty() {
        println!(
            "no dead letters of {service}/{handler} in `{}`",
            broker.dlq_stream
        );
        return Ok(());
    }
    if args.dry_run {
        print_letters(&letters);
        println!(
            "dry run: {} dead letter(s) of {service}/{handler} would go back to it on `{subject}`",
            letters.len()
        );
        return Ok(());
    }
    let mut events = broker.stream(&broker.events_stream).await?;
    let interval = args.rate.map(|rate| Duration::from_secs_f64(1.0 / rate));
    let mut pace = interval.map(tokio::time::interval);
    let progress = Progress::new(letters.len());
    let mut summary = Summary::default();
    for (done, letter) in letters.iter().enumerate() {
        if let Some(pace) = &mut pace {
            pace.tick().await;
        }
        match send_back(&broker, &dlq, events.as_mut(), &subject, letter).await? {
            Outcome::Redriven => summary.redriven += 1,
            Outcome::Earlier => summary.already_sent += 1,
            Outcome::Gone => summary.gone += 1,
            Outcome::Left(why) => summary.left.push((letter.sequence, why)),
        }
        progress.show(done + 1);
    }
    progress.finish();
    println!(
        "redriven {} dead letter(s) of {service}/{handler} to `{subject}` (consumer `{target}`){}",
        summary.redriven + summary.already_sent,
        match summary.already_sent {
            0 => String::new(),
            n => format!(", {n} of them sent by an earlier run"),
        }
    );
    if summary.gone > 0 {
        println!(
            "{} dead letter(s) were gone before they were read (another run, or a purge)",
            summary.gone
        );
    }
    for (sequence, why) in &summary.left {
        println!("left in `{}`: {sequence}: {why}", broker.dlq_stream);
    }
    if summary.left.is_empty() {
        Ok(())
    } else {
        Err(Failure::new(format!(
            "{} dead letter(s) could not be redriven and are still in `{}`",
            summary.left.len(),
            broker.dlq_stream
        )))
    }
}

/// The handler's redrive consumer must exist: else nobody would read what is sent (the
/// service never ran, runs an eda version without redrive, or the name is wrong).
async fn check_target(broker: &Broker, service: &str, handler: &str) -> Result<String> {
    let durable = eda::dlq::redrive_durable(service, handler);
    let stream_name = &broker.redrive_stream;
    let missing_stream = || {
        Failure::new(format!(
            "no redrive stream `{stream_name}` on {}: start the service `{service}` (an eda version with `eda dlq redrive` support creates it), or give its name with --redrive-stream",
            broker.url
        ))
    };
    let redrive = broker
        .stream(stream_name)
        .await?
        .ok_or_else(missing_stream)?;
    match redrive.consumer_info(&durable).await {
        Ok(_) => Ok(durable),
        Err(e) if consumer_missing(&e) => {
            Err(Failure::new(format!(
                "handler {service}/{handler} has no redrive consumer `{durable}` on `{stream_name}`: is the name right, and has the service started since it was updated? Nothing was sent"
            )))
        }
        Err(e) => Err(broker.broker_error(&format!("cannot read consumer `{durable}`"), &e)),
    }
}

fn consumer_missing(error: &async_nats::jetstream::context::ConsumerInfoError) -> bool {
    use async_nats::jetstream::context::ConsumerInfoErrorKind as Kind;
    match error.kind() {
        Kind::NotFound => true,
        Kind::JetStream(e) => {
            e.error_code() == async_nats::jetstream::ErrorCode::CONSUMER_NOT_FOUND
        }
        _ => false,
    }
}

/// Deleted already (another run, a purge, a redrive at the same time).
fn message_gone(error: &stream::DeleteMessageError) -> bool {
    use async_nats::jetstream::ErrorCode;
    // nats-server answers 10057 ("no message found") to a delete of a missing sequence.
    match error.kind() {
        stream::DeleteMessageErrorKind::JetStream(e) => match e.error_code() {
            ErrorCode::NO_MESSAGE_FOUND | ErrorCode::SEQUENCE_NOT_FOUND => true,
            ErrorCode(10057) => e.to_string().contains("no message found"),
            _ => false,
        },
        _ => false,
    }
}

/// What became of one dead letter.
enum Outcome {
    Redriven,
    Earlier,
    Gone,
    Left(String),
}

/// Sends one dead letter back and, once the broker confirmed it, deletes it.
async fn send_back(
    broker: &Broker,
    dlq: &stream::Stream,
    events: Option<&mut stream::Stream>,
    subject: &str,
    letter: &Stored,
) -> Result<Outcome> {
    let failed = |what: String| move |e: &dyn std::fmt::Display| broker.broker_error(&what, e);
    let message = match dlq.get_raw_message(letter.sequence).await {
        Ok(message) => message,
        // Deleted since it was listed (another run, a purge): nothing to do.
        Err(e) if e.kind() == stream::RawMessageErrorKind::NoMessageFound => {
            return Ok(Outcome::Gone)
        }
        Err(e) => {
            return Err(failed(format!(
                "cannot read dead letter {}",
                letter.sequence
            ))(&e))
        }
    };
    let mut payload = message.payload.clone();
    if letter.header(DLQ_PAYLOAD_CUT).is_some() {
        // The dead letter holds the payload's start: the whole one is in the event stream.
        match original_payload(events, letter).await {
            Some(whole) => payload = whole,
            None => {
                return Ok(Outcome::Left(format!(
                    "its payload was cut and the original (event stream sequence {}) is no longer in `{}`",
                    letter.header(ORIGINAL_SEQ).unwrap_or("unknown"),
                    broker.events_stream
                )))
            }
        }
    }
    if letter.header(ORIGINAL_SUBJECT).is_none() {
        return Ok(Outcome::Left(
            "not a dead letter eda wrote (no Eda-Original-Subject)".to_owned(),
        ));
    }
    let mut headers = HeaderMap::new();
    for (name, value) in &letter.headers {
        // The cut marker went with the cut payload; the id is the redrive's own.
        if name != MSG_ID && !(name == DLQ_PAYLOAD_CUT && payload.len() != message.payload.len()) {
            headers.append(name.as_str(), value.as_str());
        }
    }
    headers.insert(
        MSG_ID,
        format!("redrive.{}.{}", broker.dlq_stream, letter.sequence).as_str(),
    );
    let ack = broker
        .js
        .publish_with_headers(subject.to_owned(), headers, payload)
        .await
        .map_err(|e| failed(format!("cannot send dead letter {} back", letter.sequence))(&e))?
        .await
        .map_err(|e| {
            failed(format!(
                "the broker did not confirm dead letter {} sent back (it stays in the dead-letter stream; run the command again)",
                letter.sequence
            ))(&e)
        })?;
    match dlq.delete_message(letter.sequence).await {
        Ok(_) => {}
        Err(e) if message_gone(&e) => {}
        Err(e) => {
            return Err(failed(format!(
                "dead letter {} was sent back but could not be deleted (run the command again within the duplicate window: it is not sent twice)",
                letter.sequence
            ))(&e))
        }
    }
    Ok(if ack.duplicate {
        Outcome::Earlier
    } else {
        Outcome::Redriven
    })
}

/// The whole payload of a dead letter's original, from the event stream.
async fn original_payload(events: Option<&mut stream::Stream>, letter: &Stored) -> Option<Bytes> {
    let sequence: u64 = letter.header(ORIGINAL_SEQ)?.parse().ok()?;
    let message = events?.get_raw_message(sequence).await.ok()?;
    // Only the same event: the sequence may have been reused by a recreated stream.
    let id = letter.header(ORIGINAL_ID);
    let same = message
        .headers
        .get(MSG_ID)
        .map(|v| Some(v.as_str()) == id)
        .unwrap_or(id == Some(&sequence.to_string()));
    same.then_some(message.payload)
}

/// `eda dlq purge`.
pub async fn purge(nats: NatsArgs, args: PurgeArgs) -> Result<()> {
    let broker = nats.connect().await?;
    let dlq = broker.dlq().await?;
    let HandlerName { service, handler } = &args.handler;
    let cutoff = args.older_than.map(|age| SystemTime::now() - age);
    let letters: Vec<Stored> = dlq::read(&broker, &dlq, &format!("dlq.{service}.{handler}"), None)
        .await?
        .into_iter()
        .filter(|l| cutoff.is_none_or(|cutoff| l.time < cutoff))
        .filter(|l| args.reason.as_ref().is_none_or(|r| *r == l.reason()))
        .collect();
    let what = format!(
        "dead letter(s) of {service}/{handler}{}{}",
        args.reason
            .as_ref()
            .map_or_else(String::new, |r| format!(" with reason {r}")),
        args.older_than.map_or_else(String::new, |age| format!(
            " older than {}",
            humantime::format_duration(age)
        )),
    );
    if letters.is_empty() {
        println!("no {what} in `{}`", broker.dlq_stream);
        return Ok(());
    }
    if !args.yes {
        confirm(&format!(
            "delete {} {what} from `{}` for good?",
            letters.len(),
            broker.dlq_stream
        ))?;
    }
    let mut deleted = 0;
    for letter in &letters {
        match dlq.delete_message(letter.sequence).await {
            Ok(_) => deleted += 1,
            Err(e) if message_gone(&e) => {}
            Err(e) => {
                return Err(broker.broker_error(
                    &format!(
                        "deleted {deleted}, then cannot delete dead letter {}",
                        letter.sequence
                    ),
                    &e,
                ))
            }
        }
    }
    println!("deleted {deleted} {what} from `{}`", broker.dlq_stream);
    Ok(())
}

/// Asks on the terminal; without one, refuses (scripts pass `--yes`).
fn confirm(question: &str) -> Result<()> {
    if !std::io::stdin().is_terminal() {
        return Err(Failure::new(format!(
            "{question} — not asking without a terminal: pass --yes to confirm"
        )));
    }
    eprint!("{question} [y/N] ");
    let _ = std::io::stderr().flush();
    let mut answer = String::new();
    std::io::stdin()
        .read_line(&mut answer)
        .map_err(|e| Failure::new(format!("cannot read the answer: {e}")))?;
    match answer.trim() {
        "y" | "Y" | "yes" => Ok(()),
        _ => Err(Failure::new("not confirmed: nothing was deleted")),
    }
}

fn print_letters(letters: &[Stored]) {
    let mut table = Table::new(&[">SEQ", "REASON", "EVENT ID", "TIME"]);
    for letter in letters {
        table.row(vec![
            letter.sequence.to_string(),
            letter.reason(),
            letter.header(ORIGINAL_ID).unwrap_or("-").to_owned(),
            dlq::rfc3339(letter.time),
        ]);
    }
    table.print();
}

/// A progress line on stderr while a long redrive runs, on a terminal only.
struct Progress {
    total: usize,
    shown: bool,
}

impl Progress {
    fn new(total: usize) -> Progress {
        Progress {
            total,
            shown: std::io::stderr().is_terminal() && total >= 20,
        }
    }

    fn show(&self, done: usize) {
        if self.shown {
            let width = 30;
            let filled = done * width / self.total.max(1);
            eprint!(
                "\r[{}{}] {done}/{} redriven",
                "#".repeat(filled),
                " ".repeat(width - filled),
                self.total
            );
            let _ = std::io::stderr().flush();
        }
    }

    fn finish(&self) {
        if self.shown {
            eprintln!();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_are_per_second() {
        assert_eq!(parse_rate("10/s"), Ok(10.0));
        assert_eq!(parse_rate("2.5"), Ok(2.5));
        for bad in ["0", "-1/s", "fast", "10/m", "inf"] {
            let message = parse_rate(bad).unwrap_err();
            assert!(message.contains("e.g. 10/s"), "{bad}: {message}");
        }
    }
}
