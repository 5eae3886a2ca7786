//! Folding an aggregate's stored messages into its state, pure (no broker): decoding each
//! message with its event's upcast chain, and the rule that makes an append of several events
//! all or nothing — its messages (`Eda-Batch: k/n`) count only once all `n` are stored one
//! after the other on the aggregate's subject. Each message after the first of an append is
//! stored only if the subject's last message is the one before it (the broker checks), so a
//! batch either completes in one run or another writer's message follows its beginning, which
//! then counts for nothing.

use super::error::{EventStoreError, EventStoreErrorKind};
use super::{Aggregate, AggregateEvents};
use crate::event::DecodeError;
use crate::port::{LogAddress, LogRecord};
use crate::wire;

/// An aggregate's state at a position of its subject.
#[derive(Debug)]
pub(crate) struct Replay<A: Aggregate> {
    /// The state: every complete append up to `applied_at` applied.
    pub(crate) state: A,
    /// The subject's last sequence seen (what the next append expects).
    pub(crate) version: u64,
    /// The sequence of the last message applied to `state` (where a snapshot of it stands).
    pub(crate) applied_at: u64,
    /// Events applied since the snapshot the replay started from (or since the beginning).
    pub(crate) since_snapshot: u64,
    /// The beginning of an append of several events, not complete (yet).
    pending: Vec<A::Event>,
    /// How many events that append has.
    pending_of: u32,
}

impl<A: Aggregate> Replay<A> {
    /// `state` as of sequence `at` (a snapshot's, or the default state at 0).
    pub(crate) fn new(state: A, at: u64) -> Replay<A> {
        Replay {
            state,
            version: at,
            applied_at: at,
            since_snapshot: 0,
            pending: Vec::new(),
            pending_of: 0,
        }
    }

    /// Whether an incomplete append sits at the end (a snapshot then would not be of one
    /// position).
    pub(crate) fn has_pending(&self) -> bool {
        !self.pending.is_empty()
    }

    /// Decodes and folds one stored message of `at`.
    pub(crate) fn record(
        &mut self,
        record: &LogRecord,
        at: &LogAddress,
    ) -> Result<(), EventStoreError> {
        let (batch, event) = decode::<A::Event>(record, at)?;
        self.push(record.sequence, batch, event);
        Ok(())
    }

    /// Folds one event at `sequence`; `batch` is its place in an append of several.
    pub(crate) fn push(&mut self, sequence: u64, batch: Option<(u32, u32)>, event: A::Event) {
        self.version = sequence;
        match batch {
            None | Some((1, 1)) => {
                // A single event: whatever append was incomplete before it never will be.
                self.pending.clear();
                self.state.apply(&event);
                self.applied_at = sequence;
                self.since_snapshot += 1;
            }
            Some((1, count)) => {
                self.pending.clear();
                self.pending.push(event);
                self.pending_of = count;
            }
            Some((index, count))
                if !self.pending.is_empty()
                    && count == self.pending_of
                    && index as usize == self.pending.len() + 1 =>
            {
                self.pending.push(event);
                if index == count {
                    for event in self.pending.drain(..) {
                        self.state.apply(&event);
                    }
                    self.applied_at = sequence;
                    self.since_snapshot += u64::from(count);
                }
            }
            // Not the next event of the append in progress: that append was cut off, and so
            // was the one this fragment belongs to.
            Some(_) => self.pending.clear(),
        }
    }

    /// Folds the events of an append that just succeeded, ending at `version`.
    pub(crate) fn appended(&mut self, events: &[A::Event], version: u64) {
        self.pending.clear();
        for event in events {
            self.state.apply(event);
        }
        self.version = version;
        self.applied_at = version;
        self.since_snapshot += events.len() as u64;
    }
}

/// A stored message as one of `E`, with its place in an append of several.
pub(crate) fn decode<E: AggregateEvents>(
    record: &LogRecord,
    at: &LogAddress,
) -> Result<(Option<(u32, u32)>, E), EventStoreError> {
    let sequence = record.sequence;
    let header = |name: &str| {
        record
            .headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    };
    let header_error = |header: &str, value: &str| {
        let error = DecodeError::Header {
            header: header.to_owned(),
            value: value.to_owned(),
        };
        EventStoreError::new(
            EventStoreErrorKind::Decode {
                sequence,
                error: error.clone(),
            },
            format!(
                "message {sequence} of `{}` in stream `{}` cannot be read: {error}",
                at.subject, at.stream
            ),
        )
    };
    let Some(name) = header(wire::EVENT) else {
        return Err(header_error(wire::EVENT, ""));
    };
    let batch = match header(wire::BATCH) {
        None => None,
        Some(value) => Some(parse_batch(value).ok_or_else(|| header_error(wire::BATCH, value))?),
    };
    let decoded = wire::decode(
        name,
        record.headers.iter().map(|(n, v)| (n.as_str(), v.as_str())),
        Some(sequence),
        Some(record.time),
    );
    let version = decoded.metadata.version;
    let result = match decoded.error {
        Some(error) => Some(Err(error)),
        None => E::decode(name, version, &record.payload),
    };
    match result {
        Some(Ok(event)) => Ok((batch, event)),
        Some(Err(error)) => Err(EventStoreError::new(
            EventStoreErrorKind::Decode {
                sequence,
                error: error.clone(),
            },
            format!(
                "event {sequence} of `{}` (stream `{}`) cannot be loaded: {error}",
                at.subject, at.stream
            ),
        )),
        None => Err(EventStoreError::new(
            EventStoreErrorKind::UnknownEvent {
                name: name.to_owned(),
                sequence,
            },
            format!(
                "event {sequence} of `{}` (stream `{}`) is `{name}` v{version}, which is none of this aggregate's events ({}): add it to the enum of the aggregate's events",
                at.subject,
                at.stream,
                E::NAMES.join(", ")
            ),
        )),
    }
}

/// `k/n` with `1 <= k <= n`.
pub(crate) fn parse_batch(value: &str) -> Option<(u32, u32)> {
    let (index, count) = value.trim().split_once('/')?;
    let (index, count) = (index.parse::<u32>().ok()?, count.parse::<u32>().ok()?);
    (1..=count).contains(&index).then_some((index, count))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::{Deserialize, Serialize};

    #[derive(Debug, Default, Serialize, Deserialize)]
    struct Sum(Vec<u32>);

    #[derive(Debug)]
    struct Add(u32);

    impl AggregateEvents for Add {
        const NAMES: &'static [&'static str] = &["add"];
        fn encode(&self) -> Result<super::super::EncodedEvent, serde_json::Error> {
            Ok(super::super::EncodedEvent {
                name: "add",
                version: 1,
                payload: serde_json::to_vec(&self.0)?,
            })
        }
        fn decode(name: &str, _: u32, payload: &[u8]) -> Option<Result<Self, DecodeError>> {
            (name == "add").then(|| Ok(Add(serde_json::from_slice(payload).unwrap_or(0))))
        }
    }

    impl Aggregate for Sum {
        const TYPE: &'static str = "sum";
        type Event = Add;
        fn apply(&mut self, event: &Add) {
            self.0.push(event.0);
        }
    }

    /// A stored message: its sequence, its place in an append of several, its value.
    type Message = (u64, Option<(u32, u32)>, u32);

    fn fold(messages: &[Message]) -> Replay<Sum> {
        let mut replay = Replay::new(Sum::default(), 0);
        for (sequence, batch, value) in messages {
            replay.push(*sequence, *batch, Add(*value));
        }
        replay
    }

    #[test]
    fn an_append_of_several_counts_once_complete() {
        let replay = fold(&[(1, None, 1), (2, Some((1, 2)), 2), (3, Some((2, 2)), 3)]);
        assert_eq!(replay.state.0, [1, 2, 3]);
        assert_eq!((replay.version, replay.applied_at), (3, 3));
        assert!(!replay.has_pending());
    }

    #[test]
    fn an_incomplete_append_at_the_end_is_not_applied_but_moves_the_version() {
        let replay = fold(&[(1, None, 1), (2, Some((1, 3)), 2), (3, Some((2, 3)), 3)]);
        assert_eq!(replay.state.0, [1]);
        assert_eq!((replay.version, replay.applied_at), (3, 1));
        assert!(replay.has_pending());
    }

    #[test]
    fn an_append_cut_off_by_another_writer_counts_for_nothing() {
        let replay = fold(&[
            (1, Some((1, 2)), 1),
            (5, None, 7),
            (6, Some((1, 2)), 8),
            (9, Some((1, 2)), 9),
            (10, Some((2, 2)), 10),
        ]);
        assert_eq!(replay.state.0, [7, 9, 10], "1 and 8 began appends cut off");
        assert_eq!(replay.since_snapshot, 3);
    }

    #[test]
    fn fragments_out_of_place_are_ignored() {
        let replay = fold(&[
            (1, Some((2, 2)), 1),
            (2, Some((1, 2)), 2),
            (3, Some((2, 3)), 3),
        ]);
        assert!(replay.state.0.is_empty());
        assert_eq!(parse_batch("2/3"), Some((2, 3)));
        assert_eq!(parse_batch("0/3"), None);
        assert_eq!(parse_batch("4/3"), None);
        assert_eq!(parse_batch("x"), None);
    }
}
