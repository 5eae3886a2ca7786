//! `eda projections rebuild`: asks a running instance of a service to rebuild one of its
//! projections (reset its read model, apply every append from the first), and waits for the
//! answer. The projection's `reset` lives in the service, so the service does the work; the
//! command only asks, on `eda.control.<service>.rebuild` (see `eda::projection_rebuild_subject`).

use std::time::Duration;

use clap::{Args, Subcommand};

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

async fn rebuild(nats: NatsArgs, args: RebuildArgs) -> Result<()> {
    let broker = nats.connect().await?;
    let subject = eda::projection_rebuild_subject(&args.service);
    let request = async_nats::Request::new()
        .payload(args.name.clone().into())
        .timeout(Some(args.timeout));
    eprintln!(
        "asking service `{}` to rebuild projection `{}` ...",
        args.service, args.name
    );
    let answer = broker
        .js
        .client()
        .send_request(subject.clone(), request)
        .await
        .map_err(|e| match e.kind() {
            async_nats::client::RequestErrorKind::NoResponders => Failure::new(format!(
                "no running instance of service `{}` answers on `{subject}` at {}: is it running, on this server, with projections?",
                args.service, broker.url
            )),
            async_nats::client::RequestErrorKind::TimedOut => Failure::new(format!(
                "service `{}` did not answer within {} (the rebuild goes on in the service; see its log)",
                args.service,
                humantime::format_duration(args.timeout)
            )),
            _ => Failure::new(format!("cannot ask service `{}`: {e}", args.service)),
        })?;
    let result: std::result::Result<eda::Rebuilt, String> = serde_json::from_slice(&answer.payload)
        .map_err(|e| {
            Failure::new(format!(
                "service `{}` answered something else than a rebuild result: {e}",
                args.service
            ))
        })?;
    match result {
        Ok(rebuilt) => {
            println!(
                "projection `{}` of service `{}` rebuilt: {} appends applied from the first, position {}",
                args.name, args.service, rebuilt.appends, rebuilt.position
            );
            Ok(())
        }
        Err(why) => Err(Failure::new(format!(
            "service `{}` could not rebuild projection `{}`: {why}",
            args.service, args.name
        ))),
    }
}
