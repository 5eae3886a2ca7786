//! `eda`: operate eda services on NATS JetStream.
//!
//! - `eda status`: streams, consumers, dead letters per handler and reason, schemas.
//! - `eda dlq list` / `eda dlq show <seq>`: the dead letters.
//! - `eda catalog <binary>...`: the merged catalog of eda binaries (`EDA_CATALOG=json`);
//!   `--html <dir>` writes it as a static page with the flow graph.
//! - `eda asyncapi <binary>...`: their events as one AsyncAPI 3.0.0 document (YAML, `--json`).
//! - `eda schemas check <binary>`: its event schemas against the registry on the server.
//! - `eda permissions <binary>`: the NATS permissions block of a service.
//!
//! - `eda actions check|graph|run <file>`: a file of triggers that call HTTP services.
//!
//! Errors are one line on stderr and exit code 1; usage errors exit 2.

use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

mod actions;
mod asyncapi;
mod catalog;
mod connect;
mod dlq;
mod graph;
mod html;
mod projections;
mod redrive;
mod schemas;
mod status;
mod table;
mod yaml;

use connect::NatsArgs;

/// Why a command failed: one line for stderr.
#[derive(Debug)]
pub struct Failure(pub String);

impl Failure {
    /// A failure saying `message`.
    pub fn new(message: impl Into<String>) -> Failure {
        Failure(message.into())
    }
}

/// What every command returns.
pub type Result<T, E = Failure> = std::result::Result<T, E>;

/// Operate eda services: broker status, dead letters, catalogs and permissions.
#[derive(Debug, Parser)]
#[command(name = "eda", version, about, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Actions without code: check, draw or run a file of triggers that call HTTP services.
    Actions {
        #[command(subcommand)]
        command: actions::ActionsCommand,
    },
    /// Streams, consumers, dead letters per handler and reason, registered schemas.
    Status {
        #[command(flatten)]
        nats: NatsArgs,
        /// Print one JSON object instead of tables.
        #[arg(long)]
        json: bool,
    },
    /// Read the dead-letter stream.
    Dlq {
        #[command(subcommand)]
        command: DlqCommand,
    },
    /// Run eda binaries with `EDA_CATALOG=json` and print their merged catalog as JSON.
    Catalog {
        /// The service binaries.
        #[arg(required = true, value_name = "BINARY")]
        binaries: Vec<String>,
        #[command(flatten)]
        run: RunArgs,
        /// Write a static HTML page of the catalog, `DIR/index.html`, instead: events with
        /// their schemas and upcasts, services with their handlers, and the flow drawn by
        /// Graphviz `dot`.
        #[arg(long, value_name = "DIR")]
        html: Option<std::path::PathBuf>,
        /// With `--html`: leave the flow graph out (no Graphviz needed).
        #[arg(long, requires = "html")]
        no_graph: bool,
    },
    /// Run eda binaries with `EDA_CATALOG=json` and print their events as one AsyncAPI 3.0.0
    /// document (YAML): a channel per subject, a message per event version, a `receive`
    /// operation per handler and a `send` operation per emitted event.
    Asyncapi {
        /// The service binaries.
        #[arg(required = true, value_name = "BINARY")]
        binaries: Vec<String>,
        #[command(flatten)]
        run: RunArgs,
        #[command(flatten)]
        args: asyncapi::AsyncApiArgs,
    },
    /// Projections (event sourcing) of running services: rebuild one from the first event.
    Projections {
        #[command(subcommand)]
        command: projections::ProjectionsCommand,
    },
    /// The schema registry on the server (`EDA_SCHEMAS`).
    Schemas {
        #[command(subcommand)]
        command: SchemasCommand,
    },
    /// Print the NATS permissions block of the service an eda binary runs.
    Permissions {
        /// The service binary.
        #[arg(value_name = "BINARY")]
        binary: String,
        /// Check that the binary runs this service.
        #[arg(value_name = "SERVICE")]
        service: Option<String>,
        #[command(flatten)]
        run: RunArgs,
    },
}

/// How service binaries are run for their catalog.
#[derive(Debug, Args)]
struct RunArgs {
    /// Give up on a binary that has not printed its catalog after this long.
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = parse_duration)]
    timeout: Duration,
}

#[derive(Debug, Subcommand)]
enum SchemasCommand {
    /// Check an eda binary's event schemas against the registry before deploying it: a
    /// version registered with another schema is an error (exit 1), a new version the binary
    /// cannot upcast to from the newest registered one a warning.
    Check {
        /// The service binary (run with `EDA_CATALOG=json` for its schemas).
        #[arg(value_name = "BINARY")]
        binary: String,
        #[command(flatten)]
        nats: NatsArgs,
        #[command(flatten)]
        run: RunArgs,
        #[command(flatten)]
        args: schemas::CheckArgs,
    },
}

#[derive(Debug, Subcommand)]
enum DlqCommand {
    /// One row per dead letter, oldest first.
    List {
        #[command(flatten)]
        nats: NatsArgs,
        #[command(flatten)]
        filter: dlq::Filter,
        /// Print a JSON array instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Send a handler's dead letters back to that handler only (not to every service of the
    /// event), each confirmed before it leaves the dead-letter stream.
    Redrive {
        #[command(flatten)]
        nats: NatsArgs,
        #[command(flatten)]
        args: redrive::RedriveArgs,
    },
    /// Delete a handler's dead letters for good (asks first; `--yes` for scripts).
    Purge {
        #[command(flatten)]
        nats: NatsArgs,
        #[command(flatten)]
        args: redrive::PurgeArgs,
    },
    /// Every header, the error and the payload of the dead letter at a DLQ stream sequence.
    Show {
        #[command(flatten)]
        nats: NatsArgs,
        /// The dead letter's sequence in the dead-letter stream (the `SEQ` column of `list`).
        #[arg(value_name = "SEQ")]
        sequence: u64,
        /// Print a JSON object instead of text.
        #[arg(long)]
        json: bool,
    },
}

/// `1h`, `30m`, `2d`, `500ms`.
fn parse_duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text).map_err(|e| format!("`{text}`: {e} (e.g. 30s, 15m, 1h, 2d)"))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Actions { command } => actions::run(command),
        Command::Asyncapi {
            binaries,
            run,
            args,
        } => asyncapi::asyncapi(&binaries, run.timeout, &args),
        Command::Catalog {
            binaries,
            run,
            html,
            no_graph,
        } => match html {
            Some(dir) => html::write(&binaries, run.timeout, &dir, !no_graph),
            None => catalog::catalog(&binaries, run.timeout),
        },
        Command::Permissions {
            binary,
            service,
            run,
        } => catalog::permissions(&binary, service.as_deref(), run.timeout),
        Command::Status { nats, json } => block_on(status::status(nats, json)),
        Command::Projections { command } => block_on(projections::run(command)),
        Command::Schemas {
            command:
                SchemasCommand::Check {
                    binary,
                    nats,
                    run,
                    args,
                },
        } => catalog::describe(&binary, run.timeout)
            .and_then(|described| block_on(schemas::check(described, nats, args))),
        Command::Dlq { command } => match command {
            DlqCommand::List { nats, filter, json } => block_on(dlq::list(nats, filter, json)),
            DlqCommand::Redrive { nats, args } => block_on(redrive::redrive(nats, args)),
            DlqCommand::Purge { nats, args } => block_on(redrive::purge(nats, args)),
            DlqCommand::Show {
                nats,
                sequence,
                json,
            } => block_on(dlq::show(nats, sequence, json)),
        },
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure(message)) => {
            eprintln!("error: {message}");
            ExitCode::FAILURE
        }
    }
}

fn block_on(work: impl std::future::Future<Output = Result<()>>) -> Result<()> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| Failure::new(format!("cannot start the async runtime: {e}")))?
        .block_on(work)
}
