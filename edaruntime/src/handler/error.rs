//! The error a handler returns, and whether it is worth retrying.

use std::fmt;
use std::time::Duration;

use crate::error::BoxError;

/// Whether a failed handler may succeed if tried again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ErrorKind {
    /// Try again with backoff, then dead-letter (the default for any error).
    Retryable,
    /// Dead-letter at once.
    Permanent,
}

/// The error a handler returns. Any `std::error::Error` converts into a retryable one (as in
/// MassTransit and Watermill); say [`HandlerError::permanent`] for failures that no retry can fix.
///
/// ```
/// use eda::HandlerError;
///
/// let e = HandlerError::permanent("card declined");
/// assert!(e.is_permanent());
/// let io = std::io::Error::other("smtp down");
/// assert!(!HandlerError::from(io).is_permanent());
/// ```
pub struct HandlerError {
    kind: ErrorKind,
    error: BoxError,
    retry_after: Option<Duration>,
}

impl HandlerError {
    /// A failure worth retrying (network, downstream unavailable).
    pub fn retry(error: impl Into<BoxError>) -> HandlerError {
        HandlerError {
            kind: ErrorKind::Retryable,
            error: error.into(),
            retry_after: None,
        }
    }

    /// A failure worth retrying no sooner than `delay` from now — a downstream that said when
    /// to come back (HTTP 429 or 503 with `Retry-After`). The next attempt waits the longer of
    /// `delay` (at most an hour) and the handler's backoff; with retries left, never less
    /// than `delay`.
    ///
    /// ```
    /// use std::time::Duration;
    /// let e = eda::HandlerError::retry_after("rate limited", Duration::from_secs(2));
    /// assert_eq!(e.retry_delay(), Some(Duration::from_secs(2)));
    /// ```
    pub fn retry_after(error: impl Into<BoxError>, delay: Duration) -> HandlerError {
        HandlerError {
            retry_after: Some(delay),
            ..HandlerError::retry(error)
        }
    }

    /// The delay the failure asked for ([`HandlerError::retry_after`]).
    pub fn retry_delay(&self) -> Option<Duration> {
        self.retry_after
    }

    /// A failure no retry can fix (invalid data, business rule): dead-letter at once.
    pub fn permanent(error: impl Into<BoxError>) -> HandlerError {
        HandlerError {
            kind: ErrorKind::Permanent,
            error: error.into(),
            retry_after: None,
        }
    }

    /// Retryable or permanent.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// Whether this error dead-letters at once.
    pub fn is_permanent(&self) -> bool {
        self.kind == ErrorKind::Permanent
    }

    /// The underlying error.
    pub fn get_ref(&self) -> &(dyn std::error::Error + Send + Sync + 'static) {
        &*self.error
    }

    /// The message with its whole `source()` chain: `outer: cause: root cause`.
    pub fn chain(&self) -> String {
        let mut text = self.error.to_string();
        let mut source = self.error.source();
        while let Some(cause) = source {
            text.push_str(": ");
            text.push_str(&cause.to_string());
            source = cause.source();
        }
        text
    }
}

impl<E: std::error::Error + Send + Sync + 'static> From<E> for HandlerError {
    fn from(error: E) -> Self {
        HandlerError::retry(error)
    }
}

impl fmt::Display for HandlerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.chain())
    }
}

impl fmt::Debug for HandlerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HandlerError")
            .field("kind", &self.kind)
            .field("error", &self.chain())
            .finish()
    }
}
