//! `eda projections rebuild`: asks a running instance of a service to rebuild one of its
//! projections (reset its read model, apply every append from the first), and waits for the
//! answer. The projection's `reset` lives in the service, so the service does the work; the
//! command only asks, on `eda.control.<service>.rebuild` (see `eda::projection_rebuild_subject`):
//! every instance answers, the one that runs the projection with the result.

use std::time::Duration;

use clap::{Args, Subcommand};
use futures_util::StreamExt;

use crate::connect::NatsArgs;
use crate::{parse_duration, Failure, Result};

/// What `eda projections` does.
#[derive(Debug, Subcommand)]
pub enum ProjectionsCommand {
    /// Rebuild a projection of a running service from the first event: its instance resets
    /// the read model and answers once it caught up.
    Rebuild {
        #[command(flatten)]
        nats: NatsArgs,
        #[command(flatten)]
        args: RebuildArgs,
    },
}

/// The projection to rebuild, and where.
#[derive(Debug, Args)]
pub struct RebuildArgs {
    /// The projection's name (its `Projection::NAME`).
    #[arg(value_name = "NAME")]
    pub name: String,
    /// The service that runs it.
    #[arg(long, value_name = "SERVICE")]
    pub service: String,
    /// Give up waiting for the answer after this long (the rebuild goes on in the service).
    #[arg(long, value_name = "DURATION", default_value = "10m", value_parser = parse_duration)]
    pub timeout: Duration,
}

/// Runs `eda projections ...`.
pub async fn run(command: ProjectionsCommand) -> Result<()> {
    match command {
        ProjectionsCommand::Rebuild { nats, args } => rebuild(nats, args).await,
    }
}

/// How long the instances have to answer that they started (or stand by).
const FIRST_ANSWER: Duration = Duration::from_secs(5);

async fn rebuild(nats: NatsArgs, args: RebuildArgs) -> Result<()> {
    let broker = nats.connect().await?;
    let subject = eda::projection_rebuild_subject(&args.service);
    let client = broker.js.client();
    let cannot = |e: &dyn std::fmt::Display| {
        Failure::new(format!("cannot ask service `{}`: {e}", args.service))
    };
    // Every instance answers: the one that runs the projection, and those standing by.
    let inbox = client.new_inbox();
    let mut answers = client
        .subscribe(inbox.clone())
        .await
        .map_err(|e| cannot(&e))?;
    client
        .publish_with_reply(subject.clone(), inbox, args.name.clone().into())
        .await
        .map_err(|e| cannot(&e))?;
    client.flush().await.map_err(|e| cannot(&e))?;
    let nobody = || {
        Failure::new(format!(
            "no running instance of service `{}` answers on `{subject}` at {}: is it running, on this server, with projections?",
            args.service, broker.url
        ))
    };
    let mut standing_by = 0;
    let first = tokio::time::Instant::now() + FIRST_ANSWER;
    loop {
        let next = match tokio::time::timeout_at(first, answers.next()).await {
            Ok(Some(message)) => message,
            Ok(None) => return Err(nobody()),
            Err(_) if standing_by > 0 => {
                return Err(Failure::new(format!(
                    "no instance of service `{}` runs projection `{}` now ({standing_by} stand by; one takes it over within 10 s of the last one stopping): try again",
                    args.service, args.name
                )))
            }
            Err(_) => return Err(nobody()),
        };
        if next.status == Some(async_nats::StatusCode::NO_RESPONDERS) {
            return Err(nobody());
        }
        match parse(&next.payload, &args.service)? {
            eda::RebuildAnswer::Standby => standing_by += 1,
            eda::RebuildAnswer::Unknown(why) => {
                return Err(Failure::new(format!(
                    "service `{}` could not rebuild projection `{}`: {why}",
                    args.service, args.name
                )))
            }
            eda::RebuildAnswer::Started => break,
            other => return finish(other, &args),
        }
    }
    eprintln!(
        "an instance of `{}` reset projection `{}` and replays it ...",
        args.service, args.name
    );
    let done = tokio::time::Instant::now() + args.timeout;
    loop {
        let next = match tokio::time::timeout_at(done, answers.next()).await {
            Ok(Some(message)) => message,
            Ok(None) => return Err(nobody()),
            Err(_) => {
                return Err(Failure::new(format!(
                    "service `{}` did not answer within {} (the rebuild goes on in the service; see its log)",
                    args.service,
                    humantime::format_duration(args.timeout)
                )))
            }
        };
        match parse(&next.payload, &args.service)? {
            eda::RebuildAnswer::Standby | eda::RebuildAnswer::Started => {}
            other => return finish(other, &args),
        }
    }
}

fn parse(payload: &[u8], service: &str) -> Result<eda::RebuildAnswer> {
    serde_json::from_slice(payload).map_err(|e| {
        Failure::new(format!(
            "service `{service}` answered something else than a rebuild answer: {e}"
        ))
    })
}

/// The last answer: the rebuild's result.
fn finish(answer: eda::RebuildAnswer, args: &RebuildArgs) -> Result<()> {
    match answer {
        eda::RebuildAnswer::Rebuilt(rebuilt) => {
            println!(
                "projection `{}` of service `{}` rebuilt: {} appends applied from the first, position {}",
                args.name, args.service, rebuilt.appends, rebuilt.position
            );
            Ok(())
        }
        eda::RebuildAnswer::Failed(why) => Err(Failure::new(format!(
            "service `{}` could not rebuild projection `{}`: {why}",
            args.service, args.name
        ))),
        other => Err(Failure::new(format!(
            "service `{}` answered {other:?} out of turn",
            args.service
        ))),
    }
}
