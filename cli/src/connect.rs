//! The connection options every command that talks to NATS takes, and connecting with them
//! within a bounded time. Secrets (passwords, tokens, also inside URLs) never reach a message.

use std::path::PathBuf;
use std::time::Duration;

use async_nats::jetstream::{self, stream};
use async_nats::ServerAddr;
use clap::Args;

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

/// Credentials written in a server URL (async-nats does not send them itself).
enum UrlAuth {
    UserPassword(String, String),
    Token(String),
}

impl NatsArgs {
    /// Connects within [`CONNECT_TIMEOUT`] and checks that JetStream is enabled.
    pub async fn connect(&self) -> Result<Broker> {
        let url = redacted_url(&self.url);
        let mut addresses = Vec::new();
        let mut url_auth = None;
        for one in self.url.split(',').map(str::trim) {
            match one.split_once("://") {
                Some(("nats" | "tls", rest)) if !rest.is_empty() => {}
                _ => {
                    return Err(Failure::new(format!(
                        "bad NATS URL `{}`: expected a nats:// or tls:// URL (or a comma-separated list), e.g. nats://127.0.0.1:4222",
                        redacted_url(one)
                    )))
                }
            }
            let address: ServerAddr = one
                .parse()
                .map_err(|e| Failure::new(format!("bad NATS URL `{}`: {e}", redacted_url(one))))?;
            let (address, auth) = without_credentials(address, &url)?;
            if url_auth.is_none() {
                url_auth = auth;
            }
            addresses.push(address);
        }
        let mut options = async_nats::ConnectOptions::new()
            .name("eda-cli")
            .connection_timeout(CONNECT_TIMEOUT)
            .request_timeout(Some(REQUEST_TIMEOUT))
            .max_reconnects(Some(0));
        if let Some(path) = &self.creds {
            options = options.credentials_file(path).await.map_err(|e| {
                Failure::new(format!(
                    "cannot read credentials file `{}`: {e}",
                    path.display()
                ))
            })?;
        }
        let explicit = self.creds.is_some() || self.user.is_some() || self.token.is_some();
        if let (Some(user), Some(password)) = (&self.user, &self.password) {
            options = options.user_and_password(user.clone(), password.clone());
        }
        if let Some(token) = &self.token {
            options = options.token(token.clone());
        }
        if !explicit {
            options = match url_auth {
                Some(UrlAuth::UserPassword(user, password)) => {
                    options.user_and_password(user, password)
                }
                Some(UrlAuth::Token(token)) => options.token(token),
                None => options,
            };
        }
        if let Some(ca) = &self.tls_ca {
            if !ca.is_file() {
                return Err(Failure::new(format!(
                    "TLS CA `{}` is not a readable file",
                    ca.display()
                )));
            }
            options = options.add_root_certificates(ca.clone()).require_tls(true);
        }
        let attempt = tokio::time::timeout(
            CONNECT_TIMEOUT + Duration::from_secs(1),
            options.connect(addresses),
        )
        .await;
        let client = match attempt {
            Err(_) => return Err(unreachable_server(&url, &no_answer())),
            Ok(Err(e)) => return Err(connect_error(&url, e)),
            Ok(Ok(client)) => client,
        };
        if !client.server_info().jetstream {
            return Err(Failure::new(format!(
                "the NATS server at `{url}` has JetStream disabled, so it holds no eda streams: is this the server eda services use?"
            )));
        }
        let js = jetstream::ContextBuilder::new()
            .timeout(REQUEST_TIMEOUT)
            .build(client);
        Ok(Broker {
            js,
            url,
            events_stream: self.events_stream.clone(),
            dlq_stream: self.dlq_stream.clone(),
            redrive_stream: self.redrive_stream.clone(),
        })
    }
}

fn unreachable_server(url: &str, why: &str) -> Failure {
    Failure::new(format!(
        "cannot connect to NATS at `{url}`: {why}; is nats-server running there?"
    ))
}

fn no_answer() -> String {
    format!(
        "no answer within {}",
        humantime::format_duration(CONNECT_TIMEOUT)
    )
}

fn connect_error(url: &str, error: async_nats::ConnectError) -> Failure {
    use async_nats::ConnectErrorKind as Kind;
    match error.kind() {
        Kind::AuthorizationViolation | Kind::Authentication => Failure::new(format!(
            "the NATS server at `{url}` rejected the credentials ({error}): check --user/--password, --token or --creds (EDA_NATS_USER/EDA_NATS_PASSWORD, EDA_NATS_TOKEN, EDA_NATS_CREDS)"
        )),
        Kind::Tls => Failure::new(format!(
            "TLS with the NATS server at `{url}` failed ({error}): use a tls:// URL and --tls-ca (EDA_NATS_TLS_CA) with the CA that signed its certificate"
        )),
        Kind::TimedOut => unreachable_server(url, &no_answer()),
        Kind::ServerParse | Kind::Dns => {
            Failure::new(format!("cannot resolve the NATS URL `{url}`: {error}"))
        }
        _ => unreachable_server(url, &error.to_string()),
    }
}

/// The address without credentials, and the credentials it had (percent-decoded).
fn without_credentials(address: ServerAddr, url: &str) -> Result<(ServerAddr, Option<UrlAuth>)> {
    if !address.has_user_pass() {
        return Ok((address, None));
    }
    let decode = |s: &str| {
        percent_decoded(s).ok_or_else(|| {
            Failure::new(format!(
                "the credentials in the NATS URL `{url}` are not valid percent-encoding"
            ))
        })
    };
    let user = decode(address.username().unwrap_or_default())?;
    let auth = match address.password() {
        Some(password) => UrlAuth::UserPassword(user, decode(password)?),
        None => UrlAuth::Token(user),
    };
    let mut bare = address.into_inner();
    // Both only fail for URLs that cannot have credentials, and this one had them.
    let _ = bare.set_username("");
    let _ = bare.set_password(None);
    let bare = ServerAddr::from_url(bare)
        .map_err(|e| Failure::new(format!("bad NATS URL `{url}`: {e}")))?;
    Ok((bare, Some(auth)))
}

/// `%41` → `A`; `None` when an escape is malformed or the result is not UTF-8.
fn percent_decoded(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// `urls` with the password or token before every `@` masked (`nats://user:***@host`,
/// `nats://***@host`).
pub fn redacted_url(urls: &str) -> String {
    let mut out = String::with_capacity(urls.len());
    let mut done = 0;
    for (at, _) in urls.match_indices('@') {
        let region = &urls[done..at];
        let start = region.rfind("://").map_or(done, |i| done + i + 3);
        out.push_str(&urls[done..start]);
        match urls[start..at].split_once(':') {
            Some((user, _)) => {
                out.push_str(user);
                out.push_str(":***");
            }
            None => out.push_str("***"),
        }
        out.push('@');
        done = at + 1;
    }
    out.push_str(&urls[done..]);
    out
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_in_urls_are_masked() {
        assert_eq!(
            redacted_url("nats://ada:s3cr:et@host:4222,tls://tok@other"),
            "nats://ada:***@host:4222,tls://***@other"
        );
        assert_eq!(redacted_url("nats://host:4222"), "nats://host:4222");
    }

    #[test]
    fn percent_escapes_decode() {
        assert_eq!(percent_decoded("a%40b").as_deref(), Some("a@b"));
        assert_eq!(percent_decoded("a%4"), None);
    }
}
