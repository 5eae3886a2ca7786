//! Appends read back from an aggregate type's whole stream, in stream order (the forwarder's
//! and a projection's view): an append of several events (`Eda-Batch: k/n`) counts once all
//! `n` messages are stored one after the other on its aggregate's subject; the beginning of an
//! append that another writer cut off never counts (the rule loads follow, see `replay`).
//! Appends of different aggregates interleave in the stream, so each subject has its own.

use std::collections::HashMap;

use super::replay::parse_batch;
use crate::port::{EventLog, Followed, LogAddress, LogError};
use crate::wire;

/// The value of header `name` of a stored message.
pub(crate) fn header<'a>(followed: &'a Followed, name: &str) -> Option<&'a str> {
    followed
        .record
        .headers
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
}

/// What one more message of the stream made of the appends seen so far.
#[derive(Debug, Default)]
pub(crate) struct Taken {
    /// An append this message completed, its messages in order (one, for an append of one).
    pub(crate) complete: Vec<Followed>,
    /// Sequences that never count: appends cut off, fragments, messages that are no event.
    pub(crate) void: Vec<u64>,
    /// This message is event `k` of an append of `n` (k > 1) whose beginning this reader has
    /// not seen: cut off, or begun before the reader's first message (its sequence is also in
    /// `void`).
    pub(crate) orphan: Option<(u32, u32)>,
}

/// The beginnings of appends of several events, by aggregate subject, not complete yet.
#[derive(Debug, Default)]
pub(crate) struct Appends {
    held: HashMap<String, Vec<Followed>>,
}

impl Appends {
    /// Takes the next message of the stream.
    pub(crate) fn take(&mut self, followed: Followed) -> Taken {
        let mut taken = Taken::default();
        let sequence = followed.record.sequence;
        if header(&followed, wire::EVENT).is_none() {
            tracing::warn!(sequence, subject = %followed.subject, "a message without `Eda-Event` on an aggregate stream is not an event eda appended; skipped");
            taken.void.push(sequence);
            return taken;
        }
        let held = self.held.get(&followed.subject);
        if held.is_some_and(|held| held.iter().any(|h| h.record.sequence == sequence)) {
            // Delivered again while held (a durable reader's ack wait ran out).
            return taken;
        }
        match header(&followed, wire::BATCH).and_then(parse_batch) {
            None | Some((1, 1)) => {
                self.cut(&followed.subject, &mut taken);
                taken.complete.push(followed);
            }
            Some((1, _)) => {
                self.cut(&followed.subject, &mut taken);
                self.held.insert(followed.subject.clone(), vec![followed]);
            }
            Some((index, count)) => {
                let next_of_held = held.is_some_and(|held| {
                    held.len() + 1 == index as usize
                        && held.last().is_some_and(|last| {
                            last.record.sequence < sequence
                                && header(last, wire::BATCH).and_then(parse_batch)
                                    == Some((index - 1, count))
                        })
                });
                if !next_of_held {
                    if held.is_none() {
                        taken.orphan = Some((index, count));
                    }
                    self.cut(&followed.subject, &mut taken);
                    taken.void.push(sequence);
                    return taken;
                }
                let subject = followed.subject.clone();
                if let Some(held) = self.held.get_mut(&subject) {
                    held.push(followed);
                }
                if index == count {
                    taken.complete = self.held.remove(&subject).unwrap_or_default();
                }
            }
        }
        taken
    }

    /// Takes the next message as [`take`](Self::take) does, reading the aggregate's subject
    /// (in `at`'s stream) when what this reader saw is not enough:
    /// - an orphan (event `k` of `n`, its beginning unseen: stored before the reader's start,
    ///   or handed to another reader of a shared durable consumer, or still waiting for its
    ///   redelivery) is completed from the `k - 1` messages before it on the subject, when they
    ///   are that append's beginning (else it is a fragment of an append cut off);
    /// - a redelivered beginning (event 1 of `n`, handed out again after the rest went by,
    ///   completed then through the orphan rule) is completed from the messages after it.
    ///
    /// An append completed that way may have been taken whole before (by another reader, or
    /// before a restart): a forwarder's publish again is dropped by the event stream's
    /// duplicate window, which is longer than the ack wait that brings a message back.
    pub(crate) async fn take_reading(
        &mut self,
        followed: Followed,
        log: &dyn EventLog,
        at: &LogAddress,
    ) -> Result<Taken, LogError> {
        let again = followed.clone();
        let sequence = again.record.sequence;
        let taken = self.take(followed);
        let subject = LogAddress {
            subject: again.subject.clone(),
            ..at.clone()
        };
        if let Some((index, count)) = taken.orphan {
            let history = log.read(&subject, 0, None).await?;
            let before: Vec<_> = history
                .records
                .into_iter()
                .filter(|r| r.sequence < sequence)
                .collect();
            let Some(from) = before.len().checked_sub(index as usize - 1) else {
                return Ok(taken);
            };
            let beginning: Vec<Followed> = before[from..]
                .iter()
                .map(|record| Followed {
                    subject: again.subject.clone(),
                    record: record.clone(),
                    redelivered: false,
                })
                .collect();
            if !is_part_of(&beginning, 1, count) {
                return Ok(taken); // a fragment of an append that was cut off
            }
            self.held.insert(again.subject.clone(), beginning);
            return Ok(self.take(again));
        }
        let batch = header(&again, wire::BATCH).and_then(parse_batch);
        let Some((1, count)) = batch.filter(|(_, count)| *count > 1) else {
            return Ok(taken);
        };
        let held_alone = self
            .held
            .get(&again.subject)
            .is_some_and(|held| held.len() == 1 && held[0].record.sequence == sequence);
        if !again.redelivered || !held_alone {
            return Ok(taken);
        }
        let after = log.read(&subject, sequence, None).await?;
        let rest: Vec<Followed> = after
            .records
            .into_iter()
            .take(count as usize - 1)
            .map(|record| Followed {
                subject: again.subject.clone(),
                record,
                redelivered: false,
            })
            .collect();
        let whole = rest.len() == count as usize - 1 && is_part_of(&rest, 2, count);
        let mut taken = taken;
        if whole {
            self.held.remove(&again.subject);
            taken.complete = std::iter::once(again).chain(rest).collect();
        } else if rest
            .first()
            .is_some_and(|next| header(next, wire::BATCH).and_then(parse_batch) != Some((2, count)))
        {
            // Another writer's message follows it: this append was cut off.
            self.held.remove(&again.subject);
            taken.void.push(sequence);
        }
        Ok(taken)
    }

    /// The append held for `subject` was cut off: its events never count.
    fn cut(&mut self, subject: &str, taken: &mut Taken) {
        if let Some(held) = self.held.remove(subject) {
            taken.void.extend(held.iter().map(|h| h.record.sequence));
        }
    }
}

/// Whether `messages` are events `first`, `first + 1`, ... of an append of `count`.
fn is_part_of(messages: &[Followed], first: u32, count: u32) -> bool {
    messages.iter().enumerate().all(|(i, m)| {
        header(m, wire::BATCH).and_then(parse_batch) == Some((first + i as u32, count))
    })
}
