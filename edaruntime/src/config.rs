//! Broker settings and the environment variables that override them (DESIGN.md §3).
//!
//! | variable | overrides |
//! | --- | --- |
//! | `EDA_NATS_URL` | `.nats(url)` (and the in-memory default; not an explicit `.in_memory()`) |
//! | `EDA_NATS_CREDS` | `.nats_credentials(path)` |
//! | `EDA_NATS_USER` + `EDA_NATS_PASSWORD` | `.nats_user_password(user, password)` |
//! | `EDA_NATS_TOKEN` | `.nats_token(token)` |
//! | `EDA_NATS_NKEY` | `.nats_nkey(seed)` |
//! | `EDA_NATS_TLS_CA` | `.nats_tls_ca(path)` |
//! | `EDA_NATS_TLS_CERT` + `EDA_NATS_TLS_KEY` | `.nats_tls_client_cert(cert, key)` |
//! | `EDA_STREAM_REPLICAS` | `.stream_replicas(n)` |
//! | `EDA_SUBJECT_PREFIX` | `.subject_prefix(prefix)` |
//!
//! A bad value is a startup error naming the variable and the value.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

/// How to authenticate to NATS.
#[derive(Clone, Default)]
#[non_exhaustive]
pub enum NatsAuth {
    /// No credentials.
    #[default]
    None,
    /// User and password.
    UserPassword {
        /// User name.
        user: String,
        /// Password.
        password: String,
    },
    /// A token.
    Token(String),
    /// A `.creds` file (JWT and NKey seed).
    CredentialsFile(PathBuf),
    /// An NKey seed (`SU...`): the server knows the user by its public key.
    Nkey(String),
}

impl fmt::Debug for NatsAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NatsAuth::None => f.write_str("None"),
            NatsAuth::UserPassword { user, .. } => {
                write!(f, "UserPassword {{ user: {user:?}, password: \"***\" }}")
            }
            NatsAuth::Token(_) => f.write_str("Token(\"***\")"),
            NatsAuth::CredentialsFile(path) => write!(f, "CredentialsFile({path:?})"),
            NatsAuth::Nkey(_) => f.write_str("Nkey(\"***\")"),
        }
    }
}

/// How events' metadata goes on the wire (DESIGN.md §4). Either way eda reads both.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum WireFormat {
    /// eda's headers, only those the receiver cannot derive (a root event: `Nats-Msg-Id`
    /// and `Eda-Source`).
    #[default]
    Eda,
    /// CloudEvents 1.0 binary content mode (`ce-id`, `ce-type`, `ce-source`, `ce-time`,
    /// `ce-specversion`, `ce-datacontenttype`), for consumers that speak CloudEvents;
    /// `Nats-Msg-Id` too, for the broker's duplicate window.
    CloudEvents,
}

/// Names and limits of the JetStream objects eda provisions (DESIGN.md §5).
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Topology {
    /// Subjects are `<prefix>.<event name>` (default `events`).
    pub subject_prefix: String,
    /// The event stream (default `EDA_EVENTS`).
    pub events_stream: String,
    /// The dead-letter stream, subjects `dlq.>` (default `EDA_DLQ`).
    pub dlq_stream: String,
    /// The redrive stream, subjects `redrive.<service>.<handler>` (default `EDA_REDRIVE`):
    /// dead letters an operator sends back to the one handler that gave up on them
    /// (`eda dlq redrive`). Work-queue retention: a redriven message is gone once handled.
    pub redrive_stream: String,
    /// The processed-id bucket (default `EDA_PROCESSED`).
    pub processed_bucket: String,
    /// The schema registry bucket (default `EDA_SCHEMAS`).
    pub schemas_bucket: String,
    /// Stream and bucket replicas; `None`: 1 on a single server, 3 on a cluster of 3 or more.
    pub replicas: Option<usize>,
    /// The broker drops a repeated event id inside this window (default 2 min).
    pub duplicate_window: Duration,
    /// Events are kept this long (default 7 days).
    pub max_age: Duration,
    /// Processed ids are kept this long (default 24 h).
    pub processed_ttl: Duration,
    /// How long the broker waits for an ack before redelivering (default 30 s); eda sends
    /// in-progress acks every third of it while a handler runs.
    pub ack_wait: Duration,
    /// Event sourcing: the stream of aggregate type `t` is this prefix and `t` upper-cased
    /// (default `EDA_AGG_`, so `EDA_AGG_ACCOUNT`).
    pub aggregate_stream_prefix: String,
    /// Event sourcing: the events of aggregate `id` of type `t` are stored on
    /// `<prefix>.<t>.<id>` (default `agg`).
    pub aggregate_subject_prefix: String,
    /// Event sourcing: the snapshot bucket, key `<type>.<id>` (default `EDA_SNAPSHOTS`).
    pub snapshots_bucket: String,
    /// Projections: the bucket of leases that let one instance of a service run each
    /// projection, key `<service>.<projection>` (default `EDA_LEASES`).
    pub leases_bucket: String,
}

impl Default for Topology {
    fn default() -> Self {
        Topology {
            subject_prefix: "events".into(),
            events_stream: "EDA_EVENTS".into(),
            dlq_stream: "EDA_DLQ".into(),
            redrive_stream: "EDA_REDRIVE".into(),
            processed_bucket: "EDA_PROCESSED".into(),
            schemas_bucket: "EDA_SCHEMAS".into(),
            replicas: None,
            duplicate_window: Duration::from_secs(120),
            max_age: Duration::from_secs(7 * 24 * 3600),
            processed_ttl: Duration::from_secs(24 * 3600),
            ack_wait: Duration::from_secs(30),
            aggregate_stream_prefix: "EDA_AGG_".into(),
            aggregate_subject_prefix: "agg".into(),
            snapshots_bucket: "EDA_SNAPSHOTS".into(),
            leases_bucket: "EDA_LEASES".into(),
        }
    }
}

/// Everything needed to reach and use a NATS server. Its `Debug` output masks every secret
/// (passwords and tokens, also inside URLs, and NKey seeds).
#[derive(Clone)]
#[non_exhaustive]
pub struct NatsSettings {
    /// One URL or a comma-separated list (`nats://` or `tls://`).
    pub url: String,
    /// Credentials.
    pub auth: NatsAuth,
    /// CA certificate for `tls://` URLs.
    pub tls_ca: Option<PathBuf>,
    /// Client certificate and its private key (PEM), for servers that verify clients
    /// (mutual TLS).
    pub tls_client_cert: Option<(PathBuf, PathBuf)>,
    /// Streams, buckets and limits.
    pub topology: Topology,
    /// Give up connecting at startup after this long (default 5 s).
    pub connect_timeout: Duration,
    /// A publish not confirmed within this long fails (default 5 s).
    pub publish_timeout: Duration,
    /// How published events' metadata is written (default: eda's headers).
    pub wire_format: WireFormat,
}

impl fmt::Debug for NatsSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NatsSettings")
            .field("url", &redacted_url(&self.url))
            .field("auth", &self.auth)
            .field("tls_ca", &self.tls_ca)
            .field("tls_client_cert", &self.tls_client_cert)
            .field("topology", &self.topology)
            .field("connect_timeout", &self.connect_timeout)
            .field("publish_timeout", &self.publish_timeout)
            .field("wire_format", &self.wire_format)
            .finish()
    }
}

impl NatsSettings {
    /// Settings for `url` with every default.
    pub fn new(url: impl Into<String>) -> NatsSettings {
        NatsSettings {
            url: url.into(),
            auth: NatsAuth::None,
            tls_ca: None,
            tls_client_cert: None,
            topology: Topology::default(),
            connect_timeout: Duration::from_secs(5),
            publish_timeout: Duration::from_secs(5),
            wire_format: WireFormat::default(),
        }
    }

    /// Checks the settings; one message per problem.
    pub(crate) fn problems(&self, url_source: &str) -> Vec<String> {
        let mut problems = Vec::new();
        let urls: Vec<&str> = self.url.split(',').map(str::trim).collect();
        let mut tls = false;
        for url in &urls {
            match url.split_once("://") {
                Some(("nats", rest)) | Some(("tls", rest)) if !rest.is_empty() => {
                    tls |= url.starts_with("tls://");
                }
                _ => problems.push(format!(
                    "{}: expected a nats:// or tls:// URL (or a comma-separated list), e.g. nats://127.0.0.1:4222",
                    labelled(url_source, &self.url)
                )),
            }
        }
        if tls && self.tls_ca.is_none() {
            problems.push(format!(
                "{} uses tls:// but no CA certificate was given: set EDA_NATS_TLS_CA or call `.nats_tls_ca(path)`",
                labelled(url_source, &self.url)
            ));
        }
        if let Some(ca) = &self.tls_ca {
            if !ca.is_file() {
                problems.push(format!("TLS CA `{}` is not a readable file", ca.display()));
            }
        }
        if let Some((cert, key)) = &self.tls_client_cert {
            for (what, path) in [("certificate", cert), ("key", key)] {
                if !path.is_file() {
                    problems.push(format!(
                        "TLS client {what} `{}` is not a readable file",
                        path.display()
                    ));
                }
            }
            if !tls && self.tls_ca.is_none() {
                problems.push(
                    "a TLS client certificate was given but neither a tls:// URL nor a CA certificate: set EDA_NATS_TLS_CA or call `.nats_tls_ca(path)`".into(),
                );
            }
        }
        match &self.auth {
            NatsAuth::CredentialsFile(path) if !path.is_file() => problems.push(format!(
                "credentials file `{}` is not a readable file",
                path.display()
            )),
            NatsAuth::Nkey(seed) if !looks_like_user_seed(seed) => problems.push(
                "the NKey seed is not a user seed: expected the `SU...` line of an nkey file (the seed itself is not shown)".into(),
            ),
            _ => {}
        }
        let prefix = &self.topology.subject_prefix;
        if !is_subject_prefix(prefix) {
            problems.push(format!(
                "subject prefix `{prefix}` must be dot-separated tokens without wildcards or spaces, e.g. `events`"
            ));
        }
        if let Some(replicas) = self.topology.replicas {
            if !(1..=5).contains(&replicas) {
                problems.push(format!(
                    "stream replicas must be from 1 to 5, not {replicas}"
                ));
            }
        }
        problems
    }
}

/// Dot-separated tokens, none empty, without wildcards or spaces: the start of every event
/// subject.
fn is_subject_prefix(prefix: &str) -> bool {
    !prefix.is_empty()
        && prefix
            .split('.')
            .all(|t| !t.is_empty() && !t.contains(['*', '>', ' ']))
}

/// `EDA_NATS_URL=`x`` for a variable, `NATS URL `x`` for a builder value; credentials in the
/// URL are masked.
fn labelled(source: &str, value: &str) -> String {
    let value = redacted_url(value);
    if source.starts_with("EDA_") {
        format!("{source}=`{value}`")
    } else {
        format!("{source} `{value}`")
    }
}

/// `urls` (one or a comma-separated list) with the password or token before every `@` masked
/// (`nats://user:password@host`, `nats://token@host`, also without a scheme), for messages and
/// logs. Each `@` masks back to the `://` before it (or the previous `@`, or the start), so a
/// password holding `/`, `,` or `:` is masked whole; an `@` in a path over-masks, harmlessly.
pub fn redacted_url(urls: &str) -> String {
    let mut out = String::with_capacity(urls.len());
    let mut done = 0;
    for (at, _) in urls.match_indices('@') {
        let region = &urls[done..at];
        let start = region.rfind("://").map_or(done, |i| done + i + 3);
        let secret = &urls[start..at];
        out.push_str(&urls[done..start]);
        match secret.split_once(':') {
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

/// An NKey user seed: `SU` and 56 more base32 characters. Checked before connecting so that a
/// public key or an account seed given by mistake is a startup error naming the setting.
fn looks_like_user_seed(seed: &str) -> bool {
    let seed = seed.trim();
    seed.len() == 58
        && seed.starts_with("SU")
        && seed
            .bytes()
            .all(|b| b.is_ascii_uppercase() || (b'2'..=b'7').contains(&b))
}

/// A source of environment variables (the process, or a map in tests).
pub(crate) trait Env {
    fn var(&self, name: &str) -> Option<String>;
}

/// The process environment.
pub(crate) struct ProcessEnv;

impl Env for ProcessEnv {
    fn var(&self, name: &str) -> Option<String> {
        std::env::var(name).ok().filter(|v| !v.is_empty())
    }
}

/// Applies the `EDA_NATS_*`, `EDA_STREAM_REPLICAS` and `EDA_SUBJECT_PREFIX` variables.
/// Returns the settings to use (if NATS was chosen by code or environment) and the problems.
pub(crate) fn apply_env(
    settings: NatsSettings,
    use_nats: bool,
    explicit_memory: bool,
    env: &dyn Env,
) -> (Option<NatsSettings>, Vec<String>, &'static str) {
    let mut problems = Vec::new();
    let mut url_source = "NATS URL";
    let mut s = settings;
    // The builder's other NATS settings (topology, wire format) apply to EDA_NATS_URL too.
    match env.var("EDA_NATS_URL") {
        Some(url) if !explicit_memory => {
            s.url = url;
            url_source = "EDA_NATS_URL";
        }
        _ if !use_nats => return (None, problems, url_source),
        _ => {}
    }
    if let Some(path) = env.var("EDA_NATS_CREDS") {
        s.auth = NatsAuth::CredentialsFile(path.into());
    }
    match (env.var("EDA_NATS_USER"), env.var("EDA_NATS_PASSWORD")) {
        (Some(user), Some(password)) => s.auth = NatsAuth::UserPassword { user, password },
        (Some(user), None) => problems.push(format!(
            "EDA_NATS_USER=`{user}` is set but EDA_NATS_PASSWORD is not: set both"
        )),
        (None, Some(_)) => {
            problems.push("EDA_NATS_PASSWORD is set but EDA_NATS_USER is not: set both".into())
        }
        (None, None) => {}
    }
    if let Some(token) = env.var("EDA_NATS_TOKEN") {
        s.auth = NatsAuth::Token(token);
    }
    if let Some(seed) = env.var("EDA_NATS_NKEY") {
        s.auth = NatsAuth::Nkey(seed);
    }
    if let Some(ca) = env.var("EDA_NATS_TLS_CA") {
        s.tls_ca = Some(ca.into());
    }
    match (env.var("EDA_NATS_TLS_CERT"), env.var("EDA_NATS_TLS_KEY")) {
        (Some(cert), Some(key)) => s.tls_client_cert = Some((cert.into(), key.into())),
        (Some(cert), None) => problems.push(format!(
            "EDA_NATS_TLS_CERT=`{cert}` is set but EDA_NATS_TLS_KEY is not: set both"
        )),
        (None, Some(key)) => problems.push(format!(
            "EDA_NATS_TLS_KEY=`{key}` is set but EDA_NATS_TLS_CERT is not: set both"
        )),
        (None, None) => {}
    }
    if let Some(replicas) = env.var("EDA_STREAM_REPLICAS") {
        match replicas.parse::<usize>() {
            Ok(n) if (1..=5).contains(&n) => s.topology.replicas = Some(n),
            _ => problems.push(format!(
                "EDA_STREAM_REPLICAS=`{replicas}`: expected a number of replicas from 1 to 5"
            )),
        }
    }
    // Checked here, where the variable is known, so that the message names it; a bad value
    // is not applied (the builder's prefix is then checked on its own).
    if let Some(prefix) = env.var("EDA_SUBJECT_PREFIX") {
        if is_subject_prefix(&prefix) {
            s.topology.subject_prefix = prefix;
        } else {
            problems.push(format!(
                "EDA_SUBJECT_PREFIX=`{prefix}`: expected dot-separated tokens without wildcards or spaces, e.g. `events`"
            ));
        }
    }
    (Some(s), problems, url_source)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    struct MapEnv(HashMap<&'static str, &'static str>);

    impl Env for MapEnv {
        fn var(&self, name: &str) -> Option<String> {
            self.0.get(name).map(|v| (*v).to_owned())
        }
    }

    fn env(pairs: &[(&'static str, &'static str)]) -> MapEnv {
        MapEnv(pairs.iter().copied().collect())
    }

    #[test]
    fn the_environment_wins_over_the_builder() {
        let (s, problems, source) = apply_env(
            NatsSettings::new("nats://code:4222"),
            true,
            false,
            &env(&[
                ("EDA_NATS_URL", "nats://env:4222"),
                ("EDA_STREAM_REPLICAS", "3"),
                ("EDA_SUBJECT_PREFIX", "prod.events"),
            ]),
        );
        let s = s.unwrap();
        assert_eq!(s.url, "nats://env:4222");
        assert_eq!(source, "EDA_NATS_URL");
        assert_eq!(s.topology.replicas, Some(3));
        assert_eq!(s.topology.subject_prefix, "prod.events");
        assert!(problems.is_empty());
    }

    #[test]
    fn eda_nats_url_switches_the_default_but_not_an_explicit_in_memory_choice() {
        let e = env(&[("EDA_NATS_URL", "nats://env:4222")]);
        let mut builder = NatsSettings::new("");
        builder.wire_format = WireFormat::CloudEvents;
        let chosen = apply_env(builder.clone(), false, false, &e).0;
        assert_eq!(
            chosen.map(|s| (s.url, s.wire_format)),
            Some(("nats://env:4222".to_owned(), WireFormat::CloudEvents)),
            "the builder's other settings apply to the environment's URL"
        );
        assert!(apply_env(builder.clone(), false, true, &e).0.is_none());
        assert!(apply_env(builder, false, false, &env(&[])).0.is_none());
    }

    #[test]
    fn nkey_and_client_certificate_variables_apply_and_half_a_pair_is_a_problem() {
        let seed = "SUAKYITMHPMSYUGPNQBLLPGOPFQN44XNCGXHNSHLJJVMD3IKYGBOLAI7TI";
        let (s, problems, _) = apply_env(
            NatsSettings::new("tls://n:4222"),
            true,
            false,
            &env(&[
                ("EDA_NATS_NKEY", seed),
                ("EDA_NATS_TLS_CERT", "/c.pem"),
                ("EDA_NATS_TLS_KEY", "/k.pem"),
            ]),
        );
        let s = s.unwrap();
        assert!(problems.is_empty(), "{problems:?}");
        assert!(matches!(&s.auth, NatsAuth::Nkey(given) if given == seed));
        assert_eq!(s.tls_client_cert, Some(("/c.pem".into(), "/k.pem".into())));
        assert!(!format!("{s:?}").contains(seed), "the seed is masked");
        for (name, other) in [
            ("EDA_NATS_TLS_CERT", "EDA_NATS_TLS_KEY"),
            ("EDA_NATS_TLS_KEY", "EDA_NATS_TLS_CERT"),
        ] {
            let (_, problems, _) = apply_env(
                NatsSettings::new("tls://n:4222"),
                true,
                false,
                &env(&[(name, "/x.pem")]),
            );
            assert_eq!(
                problems,
                [format!(
                    "{name}=`/x.pem` is set but {other} is not: set both"
                )]
            );
        }
    }

    #[test]
    fn passwords_and_tokens_in_urls_are_masked() {
        assert_eq!(
            redacted_url("nats://ada:pw@h:4222, tls://tok@h2:4222,nats://plain:4222"),
            "nats://ada:***@h:4222, tls://***@h2:4222,nats://plain:4222"
        );
        assert_eq!(redacted_url("not a url"), "not a url");
        assert_eq!(redacted_url("ada:pw@h:4222"), "ada:***@h:4222", "no scheme");
        assert_eq!(
            redacted_url("nats://u:p/ss@h"),
            "nats://u:***@h",
            "a / in the password"
        );
        assert_eq!(
            redacted_url("nats://u:pa,ss@h"),
            "nats://u:***@h",
            "a , in the password"
        );
        assert_eq!(
            redacted_url("nats://a:p@h1,nats://h2,nats://tok@h3"),
            "nats://a:***@h1,nats://h2,nats://***@h3"
        );
    }

    #[test]
    fn only_user_seeds_pass_as_nkey_seeds() {
        assert!(looks_like_user_seed(
            "SUAKYITMHPMSYUGPNQBLLPGOPFQN44XNCGXHNSHLJJVMD3IKYGBOLAI7TI\n"
        ));
        for wrong in [
            "UDXU4RCSJNZOIQHZNWXHXORDPRTGNJAHAHFRGZNEEJCPQTT2M7NLCNF4",
            "SAAKYITMHPMSYUGPNQBLLPGOPFQN44XNCGXHNSHLJJVMD3IKYGBOLAI7TI",
            "",
            "SU",
        ] {
            assert!(!looks_like_user_seed(wrong), "{wrong}");
        }
    }

    #[test]
    fn bad_values_name_the_variable_and_the_value() {
        let (s, problems, source) = apply_env(
            NatsSettings::new(""),
            false,
            false,
            &env(&[
                ("EDA_NATS_URL", "ftp://x"),
                ("EDA_STREAM_REPLICAS", "three"),
                ("EDA_NATS_USER", "ada"),
            ]),
        );
        assert_eq!(
            problems,
            [
                "EDA_NATS_USER=`ada` is set but EDA_NATS_PASSWORD is not: set both",
                "EDA_STREAM_REPLICAS=`three`: expected a number of replicas from 1 to 5",
            ]
        );
        assert_eq!(
            s.unwrap().problems(source),
            ["EDA_NATS_URL=`ftp://x`: expected a nats:// or tls:// URL (or a comma-separated list), e.g. nats://127.0.0.1:4222"]
        );
    }

    #[test]
    fn a_password_without_a_user_is_a_problem_that_does_not_show_the_password() {
        let (s, problems, _) = apply_env(
            NatsSettings::new("nats://n:4222"),
            true,
            false,
            &env(&[("EDA_NATS_PASSWORD", "hunter2")]),
        );
        assert_eq!(
            problems,
            ["EDA_NATS_PASSWORD is set but EDA_NATS_USER is not: set both"]
        );
        assert!(
            matches!(s.unwrap().auth, NatsAuth::None),
            "half a pair is not used"
        );
    }

    #[test]
    fn bad_subject_prefixes_from_the_environment_or_the_builder_are_problems() {
        let expected = |prefix: &str| {
            [format!(
                "subject prefix `{prefix}` must be dot-separated tokens without wildcards or spaces, e.g. `events`"
            )]
        };
        for prefix in [
            "prod..events",
            ".events",
            "events.",
            "events.*",
            "events.>",
            "my events",
        ] {
            let (s, problems, source) = apply_env(
                NatsSettings::new("nats://n:4222"),
                true,
                false,
                &env(&[("EDA_SUBJECT_PREFIX", prefix)]),
            );
            assert_eq!(
                problems,
                [format!(
                    "EDA_SUBJECT_PREFIX=`{prefix}`: expected dot-separated tokens without wildcards or spaces, e.g. `events`"
                )],
                "the message names the variable"
            );
            let s = s.unwrap();
            assert_eq!(
                s.topology.subject_prefix, "events",
                "a bad value is not applied"
            );
            assert!(s.problems(source).is_empty(), "and reported once");
        }
        let mut settings = NatsSettings::new("nats://n:4222");
        settings.topology.subject_prefix = String::new();
        assert_eq!(settings.problems("NATS URL"), expected(""));
        settings.topology.subject_prefix = "prod.events".into();
        assert!(settings.problems("NATS URL").is_empty());
    }

    #[test]
    fn a_missing_ca_file_and_a_client_certificate_without_tls_are_problems() {
        let mut settings = NatsSettings::new("nats://n:4222");
        settings.tls_ca = Some("/nonexistent/ca.pem".into());
        assert_eq!(
            settings.problems("NATS URL"),
            ["TLS CA `/nonexistent/ca.pem` is not a readable file"]
        );
        let mut settings = NatsSettings::new("nats://n:4222");
        let readable = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml");
        settings.tls_client_cert = Some((readable.clone(), readable));
        assert_eq!(
            settings.problems("NATS URL"),
            ["a TLS client certificate was given but neither a tls:// URL nor a CA certificate: set EDA_NATS_TLS_CA or call `.nats_tls_ca(path)`"]
        );
    }

    #[test]
    fn tls_urls_need_a_ca() {
        let s = NatsSettings::new("tls://127.0.0.1:4222");
        assert_eq!(
            s.problems("NATS URL"),
            ["NATS URL `tls://127.0.0.1:4222` uses tls:// but no CA certificate was given: set EDA_NATS_TLS_CA or call `.nats_tls_ca(path)`"]
        );
    }

    #[test]
    fn secrets_are_redacted_in_debug() {
        let auth = NatsAuth::UserPassword {
            user: "ada".into(),
            password: "hunter2".into(),
        };
        assert!(!format!("{auth:?}").contains("hunter2"));
        assert!(!format!("{:?}", NatsAuth::Token("s3cret".into())).contains("s3cret"));
    }
}
