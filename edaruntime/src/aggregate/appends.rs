//! Appends read back from an aggregate type's whole stream, in stream order (the forwarder's
//! and a projection's view): an append of several events (`Eda-Batch: k/n`) counts once all
//! `n` messages are stored one after the other on its aggregate's subject; the beginning of an
//! append that another writer cut off never counts (the rule loads follow, see `replay`).
//! Appends of different aggregates interleave in the stream, so each subject has its own.

use std::collections::HashMap;

use super::replay::parse_batch;
use crate::port::Followed;
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

    /// Holds `beginning` (the first events of an append, in order, read back from the
    /// aggregate's subject) as if this reader had seen them: the orphan that follows them can
    /// then be taken again.
    pub(crate) fn restore(&mut self, beginning: Vec<Followed>) {
        if let Some(first) = beginning.first() {
            self.held.insert(first.subject.clone(), beginning);
        }
    }

    /// The append held for `subject` was cut off: its events never count.
    fn cut(&mut self, subject: &str, taken: &mut Taken) {
        if let Some(held) = self.held.remove(subject) {
            taken.void.extend(held.iter().map(|h| h.record.sequence));
        }
    }
}
