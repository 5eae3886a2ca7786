//! `eda actions check|graph|run`: an actions file (triggers that call HTTP services on events,
//! see `eda::actions`) checked, drawn, or run as a service of its own.

use std::path::Path;

use clap::{Subcommand, ValueEnum};
use eda::actions::Actions;
use eda::App;

use crate::connect::NatsArgs;
use crate::{Failure, Result};

/// What `eda actions` does.
// Parsed once per process: the size of its largest variant does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
pub enum ActionsCommand {
    /// Check an actions file without running it: every problem with its line and column.
    Check {
        /// The actions file (TOML).
        #[arg(value_name = "FILE")]
        file: String,
    },
    /// Print the workflow (triggers chained through the events they emit); `${env.*}`
    /// variables need not be set.
    Graph {
        /// The actions file (TOML).
        #[arg(value_name = "FILE")]
        file: String,
        /// Mermaid (for Markdown), DOT, or SVG drawn by Graphviz `dot`.
        #[arg(long, value_enum, default_value = "mermaid")]
        format: GraphFormat,
    },
    /// Run the triggers as a service of their own until SIGINT or SIGTERM.
    Run {
        /// The actions file (TOML).
        #[arg(value_name = "FILE")]
        file: String,
        /// The service name: its consumers are `<service>__<trigger>`.
        #[arg(long, value_name = "NAME")]
        service: String,
        #[command(flatten)]
        nats: NatsArgs,
    },
}

/// How `eda actions graph` draws.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum GraphFormat {
    /// A Mermaid flowchart.
    Mermaid,
    /// A Graphviz digraph.
    Dot,
    /// SVG, drawn by Graphviz `dot`.
    Svg,
}

fn load(file: &str) -> Result<Actions> {
    Actions::load(Path::new(file)).map_err(|e| Failure::new(e.to_string()))
}

/// Runs one `eda actions` command.
pub fn run(command: ActionsCommand) -> Result<()> {
    match command {
        ActionsCommand::Check { file } => {
            let actions = load(&file)?;
            let names = actions.trigger_names();
            println!(
                "{file}: {} trigger(s), no problems: {}",
                names.len(),
                names.join(", ")
            );
            Ok(())
        }
        ActionsCommand::Graph { file, format } => {
            // The drawing needs no secrets: every `${env.*}` may be unset here.
            let workflow = Actions::load_with_env(Path::new(&file), &|_| Some(String::new()))
                .map_err(|e| Failure::new(e.to_string()))?
                .workflow();
            match format {
                GraphFormat::Mermaid => print!("{}", workflow.mermaid()),
                GraphFormat::Dot => print!("{}", workflow.dot()),
                GraphFormat::Svg => print!("{}", crate::graph::render_svg(&workflow.dot())?),
            }
            Ok(())
        }
        ActionsCommand::Run {
            file,
            service,
            nats,
        } => {
            // Checked first: a bad file is one clear error before any connection.
            load(&file)?;
            let app = nats
                .app_builder(App::builder(service))
                .handlers(&[])
                .actions(&file);
            crate::block_on(async move { app.run().await.map_err(|e| Failure::new(e.to_string())) })
        }
    }
}
