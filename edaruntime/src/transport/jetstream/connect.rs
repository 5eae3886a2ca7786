//! Connecting: the URL list, credentials, TLS, the connection's events, and the number of
//! replicas new streams get.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_nats::jetstream;
use async_nats::ServerAddr;

use super::ack::AckSender;
use super::JetStream;
use crate::config::{NatsAuth, NatsSettings};
use crate::error::{Error, ErrorKind};
use crate::observe;

impl JetStream {
    /// Connects (bounded by the connect timeout), checking JetStream is enabled.
    pub(crate) async fn connect(
        settings: &NatsSettings,
        service: &str,
    ) -> Result<JetStream, Error> {
        let connected = Arc::new(AtomicBool::new(false));
        let reconnects = Arc::new(AtomicU64::new(0));
        let refusals = Arc::new(Refusals::default());
        let options = async_nats::ConnectOptions::new()
            .name(service)
            .max_reconnects(None)
            .event_callback({
                let connected = Arc::clone(&connected);
                let reconnects = Arc::clone(&reconnects);
                let refusals = Arc::clone(&refusals);
                // Set while the connection is lost: the next `Connected` is a reconnect.
                let lost = Arc::new(AtomicBool::new(false));
                move |event| {
                    match event {
                        async_nats::Event::Connected => {
                            connected.store(true, Ordering::SeqCst);
                            if lost.swap(false, Ordering::SeqCst) {
                                reconnects.fetch_add(1, Ordering::Relaxed);
                                observe::broker_reconnected();
                            }
                            observe::broker_connected(true);
                            tracing::info!("connected to NATS");
                        }
                        async_nats::Event::Disconnected => {
                            connected.store(false, Ordering::SeqCst);
                            lost.store(true, Ordering::SeqCst);
                            observe::broker_connected(false);
                            tracing::warn!("disconnected from NATS; reconnecting");
                        }
                        async_nats::Event::ServerError(async_nats::ServerError::Other(text))
                            if text.to_lowercase().contains("permissions violation") =>
                        {
                            tracing::warn!(error = %text, "the NATS server refused an operation");
                            refusals.record(text);
                        }
                        other => tracing::debug!(event = %other, "NATS event"),
                    }
                    async {}
                }
            });
        let client = connect_with(settings, options).await?;
        connected.store(true, Ordering::SeqCst);
        observe::broker_connected(true);
        let info = client.server_info();
        let replicas = settings.topology.replicas.unwrap_or_else(|| {
            match (&info.cluster, info.connect_urls.len()) {
                (Some(_), seen) if seen >= 3 => 3,
                (Some(cluster), seen) => {
                    // A cluster still forming its routes lists fewer servers: new streams
                    // would get one replica. Say so; EDA_STREAM_REPLICAS makes it explicit.
                    tracing::warn!(
                        cluster = %cluster,
                        servers = seen,
                        "the cluster lists fewer than 3 servers: new streams get 1 replica \
                         (set EDA_STREAM_REPLICAS to choose)"
                    );
                    1
                }
                (None, _) => 1,
            }
        });
        let context = jetstream::ContextBuilder::new()
            .timeout(settings.publish_timeout)
            .build(client.clone());
        Ok(JetStream {
            acks: Arc::new(AckSender::new(
                client.clone(),
                context.clone(),
                settings.topology.ack_wait,
            )),
            client,
            context,
            settings: settings.clone(),
            replicas,
            connected,
            reconnects,
            refusals,
        })
    }
}

/// Connects a client to the NATS server of `settings` as eda services connect: the URL list,
/// the credentials (also those written in a URL, which async-nats would not send), TLS and
/// mutual TLS, bounded by the connect timeout, with errors that say what to check and never
/// show a secret; the server must have JetStream. `options` carries the rest (a name,
/// reconnects, callbacks). For tools that talk to eda's streams, like the `eda` command.
///
/// ```no_run
/// # async fn demo() -> eda::Result<()> {
/// let settings = eda::NatsSettings::new("nats://127.0.0.1:4222");
/// let client = eda::connect_client(&settings, async_nats::ConnectOptions::new().name("tool")).await?;
/// # drop(client); Ok(()) }
/// ```
pub async fn connect_client(
    settings: &NatsSettings,
    options: async_nats::ConnectOptions,
) -> Result<async_nats::Client, Error> {
    let problems = settings.problems("NATS URL");
    if !problems.is_empty() {
        return Err(Error::new(ErrorKind::Config, problems.join("; ")));
    }
    connect_with(settings, options).await
}

/// [`connect_client`] without checking the settings (an app checked them when it was built).
async fn connect_with(
    settings: &NatsSettings,
    options: async_nats::ConnectOptions,
) -> Result<async_nats::Client, Error> {
    let url = &crate::config::redacted_url(&settings.url);
    let parsed = settings
        .url
        .split(',')
        .map(|u| u.trim().parse::<ServerAddr>())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| {
            Error::with_source(
                ErrorKind::Config,
                format!("cannot parse NATS URL `{url}`: {e}"),
                e,
            )
        })?;
    let (addresses, url_auth) = without_credentials(parsed, url)?;
    let mut options = options.connection_timeout(settings.connect_timeout);
    options = match &settings.auth {
        // Credentials written in the URL, used only when no other credentials are set.
        NatsAuth::None => match url_auth {
            Some(UrlAuth::UserPassword(user, password)) => {
                options.user_and_password(user, password)
            }
            Some(UrlAuth::Token(token)) => options.token(token),
            None => options,
        },
        NatsAuth::UserPassword { user, password } => {
            options.user_and_password(user.clone(), password.clone())
        }
        NatsAuth::Token(token) => options.token(token.clone()),
        NatsAuth::CredentialsFile(path) => options.credentials_file(path).await.map_err(|e| {
            let message = format!("cannot read credentials file `{}`: {e}", path.display());
            Error::with_source(ErrorKind::Config, message, e)
        })?,
        NatsAuth::Nkey(seed) => options.nkey(seed.trim().to_owned()),
    };
    if let Some(ca) = &settings.tls_ca {
        options = options.add_root_certificates(ca.clone()).require_tls(true);
    }
    if let Some((cert, key)) = &settings.tls_client_cert {
        options = options.add_client_certificate(cert.clone(), key.clone());
    }
    let attempt = tokio::time::timeout(
        settings.connect_timeout + Duration::from_secs(1),
        options.connect(addresses),
    )
    .await;
    let client = match attempt {
        Err(_) => {
            return Err(Error::new(ErrorKind::Connect, format!(
                "cannot connect to NATS at `{url}`: no answer within {}; is nats-server running there?",
                humantime::format_duration(settings.connect_timeout)
            )))
        }
        Ok(Err(e)) => return Err(connect_error(url, settings, e)),
        Ok(Ok(client)) => client,
    };
    if !client.server_info().jetstream {
        return Err(Error::new(
            ErrorKind::Connect,
            format!(
                "the NATS server at `{url}` has JetStream disabled: start nats-server with `-js`"
            ),
        ));
    }
    Ok(client)
}

/// The permission violations the server reported last. Its `-ERR` arrives apart from the
/// publish it refused (whose confirmation then never comes), so a timed-out publish looks
/// here to say why.
#[derive(Debug, Default)]
pub(super) struct Refusals(Mutex<VecDeque<String>>);

impl Refusals {
    const KEPT: usize = 16;

    fn record(&self, text: String) {
        let mut kept = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        if kept.len() == Self::KEPT {
            kept.pop_front();
        }
        kept.push_back(text);
    }

    /// The server's refusal to let this connection publish to `subject`, if it sent one.
    pub(super) fn of_publish_to(&self, subject: &str) -> Option<String> {
        let quoted = format!("\"{subject}\"");
        let kept = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        kept.iter()
            .rev()
            .find(|text| text.to_lowercase().contains("for publish to") && text.contains(&quoted))
            .cloned()
    }
}

/// Credentials written in a server URL.
enum UrlAuth {
    UserPassword(String, String),
    Token(String),
}

/// The addresses with their credentials taken out (async-nats does not send a URL's
/// credentials, and its debug log prints the addresses), and the first address's credentials.
fn without_credentials(
    addresses: Vec<ServerAddr>,
    url: &str,
) -> Result<(Vec<ServerAddr>, Option<UrlAuth>), Error> {
    let unreadable = || {
        Error::new(
            ErrorKind::Config,
            format!("the credentials in the NATS URL `{url}` are not valid percent-encoding"),
        )
    };
    let mut auth = None;
    let mut stripped = Vec::with_capacity(addresses.len());
    for address in addresses {
        if !address.has_user_pass() {
            stripped.push(address);
            continue;
        }
        let decode = |s: &str| {
            crate::wire::percent_decoded(s)
                .map(|v| v.into_owned())
                .ok_or_else(unreadable)
        };
        let user = decode(address.username().unwrap_or_default())?;
        let found = match address.password() {
            Some(password) => UrlAuth::UserPassword(user, decode(password)?),
            None => UrlAuth::Token(user),
        };
        auth.get_or_insert(found);
        let mut bare = address.into_inner();
        // Both only fail for URLs that cannot have credentials, and this one had them.
        let _ = bare.set_username("");
        let _ = bare.set_password(None);
        stripped.push(ServerAddr::from_url(bare).map_err(|e| {
            Error::with_source(
                ErrorKind::Config,
                format!("cannot parse NATS URL `{url}`: {e}"),
                e,
            )
        })?);
    }
    Ok((stripped, auth))
}

/// What to check after a failed TLS handshake, read from rustls' error text (async-nats
/// reports most handshake failures as I/O errors): `None` if it is not a TLS failure.
fn tls_hint(error: &str, client_cert: bool) -> Option<&'static str> {
    // rustls writes some reasons as words ("certificate expired"), others as names.
    let error = error.to_ascii_lowercase().replace(['_', ' '], "");
    if error.contains("receivedfatalalert") {
        // The server refused the handshake: it checks clients.
        Some(if client_cert && !error.contains("certificaterequired") {
            "the server refused the client certificate (EDA_NATS_TLS_CERT, EDA_NATS_TLS_KEY): check it is signed by a CA the server trusts and still valid"
        } else {
            "the server wants a client certificate its CA signed (mutual TLS): set EDA_NATS_TLS_CERT and EDA_NATS_TLS_KEY (or `.nats_tls_client_cert(cert, key)`)"
        })
    } else if !error.contains("invalidpeercertificate") {
        None
    } else if error.contains("notvalidforname") {
        Some("the server's certificate is not for the URL's host name: connect by a name the certificate lists")
    } else if error.contains("certificateexpired")
        || error.contains("certificate:expired")
        || error.contains("notvalidyet")
    {
        Some("the server's certificate is expired or not yet valid: renew it")
    } else if error.contains("unknownissuer") || error.contains("badsignature") {
        Some("the server's certificate is not signed by a trusted CA: set EDA_NATS_TLS_CA (or `.nats_tls_ca(path)`) to the CA that signed it")
    } else {
        Some("the server's certificate was refused: check it against EDA_NATS_TLS_CA")
    }
}

fn connect_error(url: &str, settings: &NatsSettings, error: async_nats::ConnectError) -> Error {
    use async_nats::ConnectErrorKind as Kind;
    let text = error.to_string();
    let hint = tls_hint(&text, settings.tls_client_cert.is_some());
    if matches!(error.kind(), Kind::Tls) || hint.is_some() {
        let message = if settings.tls_ca.is_some() {
            let hint = hint.unwrap_or(
                "check EDA_NATS_TLS_CA, the client certificate (EDA_NATS_TLS_CERT, EDA_NATS_TLS_KEY) and the URL's host name",
            );
            format!("TLS with the NATS server at `{url}` failed ({error}): {hint}")
        } else {
            format!("the NATS server at `{url}` requires TLS ({error}): use a tls:// URL and set EDA_NATS_TLS_CA (or `.nats_tls_ca(path)`) to the CA that signed its certificate")
        };
        return Error::with_source(ErrorKind::Auth, message, error);
    }
    let (kind, message) = match error.kind() {
        Kind::AuthorizationViolation | Kind::Authentication => (ErrorKind::Auth, format!(
            "the NATS server at `{url}` rejected the credentials ({error}): check EDA_NATS_USER/EDA_NATS_PASSWORD, EDA_NATS_TOKEN, EDA_NATS_NKEY or EDA_NATS_CREDS"
        )),
        Kind::TimedOut => (ErrorKind::Connect, format!("cannot connect to NATS at `{url}`: timed out; is nats-server running there?")),
        Kind::ServerParse | Kind::Dns => (ErrorKind::Config, format!("cannot resolve the NATS URL `{url}`: {error}")),
        _ => (ErrorKind::Connect, format!("cannot connect to NATS at `{url}`: {error}; is nats-server running there?")),
    };
    Error::with_source(kind, message, error)
}

#[cfg(test)]
mod tests {
    use super::tls_hint;

    #[test]
    fn tls_failures_are_told_apart_by_rustls_text() {
        let cases = [
            ("IO error: invalid peer certificate: UnknownIssuer", false, "not signed by a trusted CA"),
            ("IO error: invalid peer certificate: BadSignature", false, "not signed by a trusted CA"),
            ("IO error: invalid peer certificate: certificate expired: verification time 1796224201 (UNIX), but certificate is not valid after 1609459200 (186765001 seconds ago)", false, "expired or not yet valid"),
            ("IO error: invalid peer certificate: certificate not valid for name \"expired.example\"; certificate is only valid for DnsName(\"other\")", false, "not for the URL's host name"),
            ("IO error: invalid peer certificate: Revoked", false, "was refused: check it against EDA_NATS_TLS_CA"),
            ("IO error: received fatal alert: BadCertificate", false, "wants a client certificate"),
            ("IO error: received fatal alert: BadCertificate", true, "refused the client certificate"),
            ("IO error: received fatal alert: CertificateRequired", true, "wants a client certificate"),
        ];
        for (error, client_cert, hint) in cases {
            let got = tls_hint(error, client_cert).unwrap_or_default();
            assert!(
                got.contains(hint),
                "{error} (client cert {client_cert}): {got}"
            );
        }
        assert_eq!(tls_hint("IO error: connection refused", false), None);
    }
}
