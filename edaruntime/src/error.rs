//! Errors of the application lifecycle and of publishing.

use std::fmt;

/// What went wrong while building, starting or running an app.
#[derive(Debug)]
#[non_exhaustive]
pub enum Error {
    /// Startup validation found problems; each is one line that says what to fix.
    Startup {
        /// The service that could not start.
        service: String,
        /// One message per problem.
        problems: Vec<String>,
    },
    /// A configuration value (builder or environment) is invalid.
    Config(String),
    /// Connecting to or provisioning the broker failed.
    Broker(String),
    /// Publishing failed.
    Publish(PublishError),
    /// An operating-system error (signals, sockets).
    Io(std::io::Error),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Startup { service, problems } => {
                write!(f, "service `{service}` cannot start:")?;
                for problem in problems {
                    write!(f, "\n  - {problem}")?;
                }
                Ok(())
            }
            Error::Config(message) => write!(f, "invalid configuration: {message}"),
            Error::Broker(message) => write!(f, "broker: {message}"),
            Error::Publish(error) => write!(f, "publish failed: {error}"),
            Error::Io(error) => write!(f, "i/o error: {error}"),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Publish(error) => Some(error),
            Error::Io(error) => Some(error),
            _ => None,
        }
    }
}

impl From<PublishError> for Error {
    fn from(error: PublishError) -> Self {
        Error::Publish(error)
    }
}

impl From<std::io::Error> for Error {
    fn from(error: std::io::Error) -> Self {
        Error::Io(error)
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
    /// The broker refused or did not confirm the message.
    Broker(String),
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
            PublishError::Broker(message) => {
                write!(f, "the broker did not store the message: {message}")
            }
            PublishError::Timeout => write!(f, "the broker did not confirm the message in time"),
            PublishError::Invalid(message) => f.write_str(message),
        }
    }
}

impl std::error::Error for PublishError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            PublishError::Encode(e) => Some(e),
            _ => None,
        }
    }
}
