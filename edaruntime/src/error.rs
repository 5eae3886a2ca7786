//! Errors of the application lifecycle and of publishing, in the shape of async-nats' errors:
//! one [`Error`] with a [`kind()`](Error::kind) a caller can match, a message that says what
//! to do, and the underlying cause in [`source()`](std::error::Error::source).

use std::fmt;

/// A boxed cause, kept in `source()`.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// What kind of problem an [`Error`] is; match on it to branch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ErrorKind {
    /// Startup validation found problems ([`Error::problems`] lists them, one line each).
    Startup,
    /// A configuration value (builder or environment) is invalid or unusable.
    Config,
    /// The broker cannot be reached, or has JetStream disabled.
    Connect,
    /// The broker rejected the credentials, or TLS failed.
    Auth,
    /// A stream, consumer or bucket could not be created, read or updated, or exists with
    /// settings eda cannot use.
    Provision {
        /// Which kind of object.
        what: Provisioned,
    },
    /// A schema in the registry differs from this binary's under the same name and version.
    SchemaConflict,
    /// Publishing failed (the [`PublishError`] is the source).
    Publish,
    /// Reading from the broker failed (inspection: dead letters, events, consumer state).
    Broker,
    /// An operating-system error (signals, sockets).
    Io,
}

/// The JetStream object a [`ErrorKind::Provision`] error is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Provisioned {
    /// A stream (events, dead letters).
    Stream,
    /// A handler's durable consumer.
    Consumer,
    /// A key-value bucket (processed ids, schemas).
    Bucket,
}

/// What went wrong while building, starting or running an app.
///
/// ```
/// let error = eda::App::builder("Bad Name").in_memory().handlers(&[]).build().unwrap_err();
/// assert_eq!(error.kind(), eda::ErrorKind::Startup);
/// assert_eq!(error.problems().len(), 1);
/// ```
pub struct Error {
    kind: ErrorKind,
    message: String,
    problems: Vec<String>,
    source: Option<BoxError>,
}

impl Error {
    /// An error of `kind` saying `message`.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Error {
        Error {
            kind,
            message: message.into(),
            problems: Vec::new(),
            source: None,
        }
    }

    /// An error of `kind` saying `message`, caused by `source`.
    pub fn with_source(
        kind: ErrorKind,
        message: impl Into<String>,
        source: impl Into<BoxError>,
    ) -> Error {
        Error {
            source: Some(source.into()),
            ..Error::new(kind, message)
        }
    }

    /// Startup validation problems of `service`, one line each.
    pub(crate) fn startup(service: &str, problems: Vec<String>) -> Error {
        Error {
            problems,
            ..Error::new(
                ErrorKind::Startup,
                format!("service `{service}` cannot start:"),
            )
        }
    }

    /// What kind of problem this is.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// The problems startup validation found (empty for other kinds).
    pub fn problems(&self) -> &[String] {
        &self.problems
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)?;
        for problem in &self.problems {
            write!(f, "\n  - {problem}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut debug = f.debug_struct("Error");
        debug
            .field("kind", &self.kind)
            .field("message", &self.message);
        if !self.problems.is_empty() {
            debug.field("problems", &self.problems);
        }
        if let Some(source) = &self.source {
            debug.field("source", source);
        }
        debug.finish()
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source
            .as_deref()
            .map(|e| e as &(dyn std::error::Error + 'static))
    }
}

impl From<PublishError> for Error {
    fn from(error: PublishError) -> Self {
        Error::with_source(
            ErrorKind::Publish,
            format!("publish failed: {error}"),
            error,
        )
    }
}

impl From<std::io::Error> for Error {
    fn from(error: std::io::Error) -> Self {
        Error::with_source(ErrorKind::Io, format!("i/o error: {error}"), error)
    }
}

/// `Result` with eda's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Why a publish did not reach the broker. A publish that returns `Ok` is stored.
#[derive(Debug)]
#[non_exhaustive]
pub enum PublishError {
    /// The event could not be serialized to JSON.
    Encode(serde_json::Error),
    /// The app or its connection is shut down.
    Closed,
    /// The broker refused or did not confirm the message (the client's error is the source).
    Broker(BoxError),
    /// The broker did not confirm within the publish timeout.
    Timeout,
    /// An option of the publish is unusable (e.g. an id with a line break).
    Invalid(String),
}

impl fmt::Display for PublishError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PublishError::Encode(e) => write!(f, "cannot encode the event as JSON: {e}"),
            PublishError::Closed => write!(f, "the publisher is closed"),
            PublishError::Broker(e) => write!(f, "the broker did not store the message: {e}"),
            PublishError::Timeout => write!(f, "the broker did not confirm the message in time"),
            PublishError::Invalid(message) => f.write_str(message),
        }
    }
}

impl std::error::Error for PublishError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            PublishError::Encode(e) => Some(e),
            PublishError::Broker(e) => Some(&**e),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::error::Error as _;

    #[test]
    fn the_cause_is_kept_in_source_and_the_kind_is_matchable() {
        let io = std::io::Error::other("port taken");
        let error = Error::with_source(ErrorKind::Config, "cannot serve metrics", io);
        assert_eq!(error.kind(), ErrorKind::Config);
        assert_eq!(
            error.source().map(|s| s.to_string()).as_deref(),
            Some("port taken")
        );
        let publish = Error::from(PublishError::Broker("stream full".into()));
        assert_eq!(publish.kind(), ErrorKind::Publish);
        let cause = publish
            .source()
            .and_then(|s| s.source())
            .map(|s| s.to_string());
        assert_eq!(cause.as_deref(), Some("stream full"));
    }

    #[test]
    fn startup_errors_list_every_problem() {
        let error = Error::startup("svc", vec!["one".into(), "two".into()]);
        assert_eq!(
            error.to_string(),
            "service `svc` cannot start:\n  - one\n  - two"
        );
        assert_eq!(error.problems(), ["one", "two"]);
    }
}
