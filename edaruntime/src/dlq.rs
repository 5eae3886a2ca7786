//! Dead letters: why a message was given up on ([`DlqReason`]) and what is stored
//! ([`DeadLetter`]) on `dlq.<service>.<handler>`.

use std::fmt;
use std::sync::Arc;

use bytes::Bytes;

use crate::event::{DecodeError, Metadata};

/// Why a message was dead-lettered (the `Eda-Dlq-Reason` header).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum DlqReason {
    /// The payload does not decode into the handler's event, or is another event.
    Decode,
    /// The version is unknown to the handler (after retries) or older than its upcast chain.
    Version,
    /// The handler returned a permanent error.
    Permanent,
    /// Every attempt failed (errors, timeouts or panics).
    RetriesExhausted,
}

impl DlqReason {
    /// The header value: `decode`, `version`, `permanent`, `retries_exhausted`.
    pub fn as_str(self) -> &'static str {
        match self {
            DlqReason::Decode => "decode",
            DlqReason::Version => "version",
            DlqReason::Permanent => "permanent",
            DlqReason::RetriesExhausted => "retries_exhausted",
        }
    }

    /// The reason a header value names.
    pub fn parse(value: &str) -> Option<DlqReason> {
        [
            DlqReason::Decode,
            DlqReason::Version,
            DlqReason::Permanent,
            DlqReason::RetriesExhausted,
        ]
        .into_iter()
        .find(|r| r.as_str() == value)
    }
}

impl fmt::Display for DlqReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A message a handler gave up on, as stored on `dlq.<service>.<handler>`.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct DeadLetter {
    /// `dlq.<service>.<handler>`.
    pub subject: String,
    /// The service whose handler gave up.
    pub service: String,
    /// The handler that gave up.
    pub handler: String,
    /// Why.
    pub reason: DlqReason,
    /// The last error, with its chain.
    pub error: String,
    /// How many attempts were made.
    pub attempts: u32,
    /// The original message's metadata (its subject and stream sequence included).
    pub metadata: Arc<Metadata>,
    /// The original payload, unchanged — unless it did not fit in one broker message next to
    /// the dead-letter headers: then it is cut, and `payload_cut` says so.
    pub payload: Bytes,
    /// The original payload's length in bytes when `payload` holds only its beginning (fetch
    /// the whole message from the event stream by `metadata.sequence`); `None` when whole.
    pub payload_cut: Option<usize>,
    /// Set when the message given up on was itself a redriven dead letter (`eda dlq
    /// redrive`): its sequence on the redrive stream. Not read back from a stored letter.
    pub redrive: Option<String>,
}

impl DeadLetter {
    /// The dead letter's own `Nats-Msg-Id`: `<service>.<handler>.<event id>`, so that one
    /// event dead-lettered by two handlers is stored twice and a retried publish once; a
    /// redriven message given up on again adds `.redrive-<sequence>`, so that the broker's
    /// duplicate window does not take its new dead letter for the first one.
    pub fn message_id(&self) -> String {
        match &self.redrive {
            None => format!("{}.{}.{}", self.service, self.handler, self.metadata.id),
            Some(tag) => format!(
                "{}.{}.{}.redrive-{tag}",
                self.service, self.handler, self.metadata.id
            ),
        }
    }
}

/// `redrive.<service>.<handler>`: where `eda dlq redrive` sends a handler's dead letters
/// back, read by that handler's redrive consumer only.
pub fn redrive_subject(service: &str, handler: &str) -> String {
    format!("redrive.{service}.{handler}")
}

/// `<service>__<handler>__redrive`: the durable consumer of a handler's redriven dead letters
/// on the redrive stream.
pub fn redrive_durable(service: &str, handler: &str) -> String {
    format!("{service}__{handler}__redrive")
}

impl From<&DecodeError> for DlqReason {
    /// `version` for a version the handler cannot read, `decode` for everything else.
    fn from(error: &DecodeError) -> Self {
        match error {
            DecodeError::UnknownVersion { .. } | DecodeError::TooOld { .. } => DlqReason::Version,
            _ => DlqReason::Decode,
        }
    }
}
