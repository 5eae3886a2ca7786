//! The connection options every command that talks to NATS takes, and connecting with them
//! within a bounded time. Secrets (passwords, tokens, also inside URLs) never reach a message.

use std::path::PathBuf;
use std::time::Duration;

use async_nats::jetstream::{self, stream};
use clap::Args;
use eda::config::redacted_url;
use eda::{NatsAuth, NatsSettings};

use crate::{Failure, Result};

/// How long connecting may take before the command gives up.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long one JetStream API request may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// Where the broker is, how to authenticate, and eda's stream names. The same environment
/// variables as eda services read (`EDA_NATS_*`), so a shell set up for a service reaches
/// the same server.
#[derive(Debug, Clone, Args)]
pub struct NatsArgs {
    /// NATS server URL, or a comma-separated list.
    #[arg(
        long = "nats",
        env = "EDA_NATS_URL",
        value_name = "URL",
        default_value = "nats://127.0.0.1:4222",
        hide_env_values = true
    )]
    pub url: String,
    /// A `.creds` file (JWT and NKey seed).
    #[arg(long, env = "EDA_NATS_CREDS", value_name = "PATH")]
    pub creds: Option<PathBuf>,
    /// User name (with --password); wins over --creds.
    #[arg(long, env = "EDA_NATS_USER", requires = "password")]
    pub user: Option<String>,
    /// Password (with --user).
    #[arg(
        long,
        env = "EDA_NATS_PASSWORD",
        requires = "user",
        hide_env_values = true
    )]
    pub password: Option<String>,
    /// Token; wins over --user/--password and --creds.
    #[arg(long, env = "EDA_NATS_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// CA certificate (PEM) for TLS.
    #[arg(long, env = "EDA_NATS_TLS_CA", value_name = "PATH")]
    pub tls_ca: Option<PathBuf>,
    /// NKey user seed (the `SU...` line); wins over the other credentials.
    #[arg(
        long,
        env = "EDA_NATS_NKEY",
        value_name = "SEED",
        hide_env_values = true
    )]
    pub nkey: Option<String>,
    /// Client certificate (PEM) for mutual TLS (with --tls-key).
    #[arg(
        long,
        env = "EDA_NATS_TLS_CERT",
        value_name = "PATH",
        requires = "tls_key"
    )]
    pub tls_cert: Option<PathBuf>,
    /// The client certificate's private key (PEM).
    #[arg(
        long,
        env = "EDA_NATS_TLS_KEY",
        value_name = "PATH",
        requires = "tls_cert"
    )]
    pub tls_key: Option<PathBuf>,
    /// The event stream.
    #[arg(long, value_name = "NAME", default_value = "EDA_EVENTS")]
    pub events_stream: String,
    /// The dead-letter stream.
    #[arg(long, value_name = "NAME", default_value = "EDA_DLQ")]
    pub dlq_stream: String,
    /// The stream of redriven dead letters.
    #[arg(long, value_name = "NAME", default_value = "EDA_REDRIVE")]
    pub redrive_stream: String,
}

/// A connection to the broker, with eda's stream names.
#[derive(Debug)]
pub struct Broker {
    /// The JetStream context.
    pub js: jetstream::Context,
    /// The URL with its credentials masked, for messages.
    pub url: String,
    /// The event stream's name.
    pub events_stream: String,
    /// The dead-letter stream's name.
    pub dlq_stream: String,
    /// The redrive stream's name.
    pub redrive_stream: String,
}

impl NatsArgs {
    /// The runtime's settings for these options (the same precedence as a service's
    /// environment: creds, then user/password, then token, then NKey): what the command
    /// connects with, and what `eda actions run` runs its app with.
    fn settings(&self) -> NatsSettings {
        let mut settings = NatsSettings::new(self.url.clone());
        settings.connect_timeout = CONNECT_TIMEOUT;
        if let Some(path) = &self.creds {
            settings.auth = NatsAuth::CredentialsFile(path.clone());
        }
        if let (Some(user), Some(password)) = (&self.user, &self.password) {
            settings.auth = NatsAuth::UserPassword {
                user: user.clone(),
                password: password.clone(),
            };
        }
        if let Some(token) = &self.token {
            settings.auth = NatsAuth::Token(token.clone());
        }
        if let Some(seed) = &self.nkey {
            settings.auth = NatsAuth::Nkey(seed.clone());
        }
        settings.tls_ca = self.tls_ca.clone();
        if let (Some(cert), Some(key)) = (&self.tls_cert, &self.tls_key) {
            settings.tls_client_cert = Some((cert.clone(), key.clone()));
        }
        settings
            .topology
            .events_stream
            .clone_from(&self.events_stream);
        settings.topology.dlq_stream.clone_from(&self.dlq_stream);
        settings
            .topology
            .redrive_stream
            .clone_from(&self.redrive_stream);
        settings
    }

    /// `builder` set to run on this server with these credentials and stream names (for
    /// `eda actions run`).
    pub fn app_builder(&self, builder: eda::AppBuilder) -> eda::AppBuilder {
        builder.nats_settings(self.settings())
    }

    /// Connects as eda services do (credentials, also in the URL, TLS, mutual TLS), within
    /// [`CONNECT_TIMEOUT`], to a server with JetStream.
    pub async fn connect(&self) -> Result<Broker> {
        let options = async_nats::ConnectOptions::new()
            .name("eda-cli")
            .request_timeout(Some(REQUEST_TIMEOUT))
            .max_reconnects(Some(0));
        let client = eda::connect_client(&self.settings(), options)
            .await
            .map_err(|e| Failure::new(e.to_string()))?;
        let js = jetstream::ContextBuilder::new()
            .timeout(REQUEST_TIMEOUT)
            .build(client);
        Ok(Broker {
            js,
            url: redacted_url(&self.url),
            events_stream: self.events_stream.clone(),
            dlq_stream: self.dlq_stream.clone(),
            redrive_stream: self.redrive_stream.clone(),
        })
    }
}

impl Broker {
    /// The stream `name`, or `None` when the server has none of that name.
    pub async fn stream(&self, name: &str) -> Result<Option<stream::Stream>> {
        use jetstream::context::GetStreamErrorKind;
        use jetstream::ErrorCode;
        match self.js.get_stream(name).await {
            Ok(stream) => Ok(Some(stream)),
            Err(e) => match e.kind() {
                GetStreamErrorKind::JetStream(js)
                    if js.error_code() == ErrorCode::STREAM_NOT_FOUND =>
                {
                    Ok(None)
                }
                _ => Err(self.broker_error(&format!("cannot read stream `{name}`"), &e)),
            },
        }
    }

    /// The event stream and the dead-letter stream (each `None` when missing); an error when
    /// both are missing: no eda service ever ran against this server.
    pub async fn eda_streams(&self) -> Result<(Option<stream::Stream>, Option<stream::Stream>)> {
        let events = self.stream(&self.events_stream).await?;
        let dlq = self.stream(&self.dlq_stream).await?;
        if events.is_none() && dlq.is_none() {
            return Err(self.no_eda_streams());
        }
        Ok((events, dlq))
    }

    /// The dead-letter stream, which must be there.
    pub async fn dlq(&self) -> Result<stream::Stream> {
        match self.eda_streams().await? {
            (_, Some(dlq)) => Ok(dlq),
            (Some(_), None) => Err(Failure::new(format!(
                "no dead-letter stream `{}` on {} (the event stream `{}` is there): give its name with --dlq-stream",
                self.dlq_stream, self.url, self.events_stream
            ))),
            (None, None) => Err(self.no_eda_streams()),
        }
    }

    fn no_eda_streams(&self) -> Failure {
        Failure::new(format!(
            "no eda streams on {}: is an eda service running against it? (looked for `{}` and `{}`; other names: --events-stream, --dlq-stream)",
            self.url, self.events_stream, self.dlq_stream
        ))
    }

    /// `what` failed with `error`, talking to this broker.
    pub fn broker_error(&self, what: &str, error: &dyn std::fmt::Display) -> Failure {
        Failure::new(format!("{what} on {}: {error}", self.url))
    }

    /// The event subjects' prefix with its dot (`events.`), from the event stream's subjects
    /// (`<prefix>.>`); `events.` when it cannot be told.
    pub async fn subject_prefix(&self, events: Option<&mut stream::Stream>) -> String {
        let from_stream = match events {
            Some(stream) => stream.info().await.ok().and_then(|info| {
                info.config
                    .subjects
                    .iter()
                    .find_map(|s| s.strip_suffix('>').map(str::to_owned))
            }),
            None => None,
        };
        from_stream.unwrap_or_else(|| "events.".to_owned())
    }
}
