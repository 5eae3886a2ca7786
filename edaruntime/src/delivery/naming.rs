//! Every name delivery derives from a service and a handler, in one place: the durable
//! consumer instances share, the dead-letter subject, the idempotency keys.

use std::borrow::Cow;

/// The names of one handler of one service.
#[derive(Debug, Clone)]
pub(crate) struct Names {
    /// `<service>__<handler>`: the durable consumer the instances of one service share.
    pub(crate) durable: String,
    /// `dlq.<service>.<handler>`.
    pub(crate) dlq_subject: String,
    /// `<service>__<handler>__redrive`: the durable consumer of the handler's redriven dead
    /// letters on the redrive stream.
    pub(crate) redrive_durable: String,
    /// `redrive.<service>.<handler>`: where `eda dlq redrive` sends this handler's dead
    /// letters back.
    pub(crate) redrive_subject: String,
    /// `<service>.<handler>.`: what idempotency keys start with.
    key_prefix: String,
}

impl Names {
    pub(crate) fn new(service: &str, handler: &str) -> Names {
        Names {
            durable: format!("{service}__{handler}"),
            dlq_subject: format!("dlq.{service}.{handler}"),
            redrive_durable: crate::dlq::redrive_durable(service, handler),
            redrive_subject: crate::dlq::redrive_subject(service, handler),
            key_prefix: format!("{service}.{handler}."),
        }
    }

    /// `<service>.<handler>.<event id>`, or `<service>.<handler>.<epoch>.<event id>` for an
    /// id that is only a stream position (`epoch` names the stream's incarnation, so a
    /// recreated stream's sequence 1 is not the old one's).
    pub(crate) fn idempotency_key(&self, id: &str, epoch: Option<&str>) -> String {
        match epoch {
            None => format!("{}{id}", self.key_prefix),
            Some(epoch) => format!("{}{epoch}.{id}", self.key_prefix),
        }
    }

    /// `back.<idempotency key>`: how often the event's message was handed back unstarted.
    pub(crate) fn hand_back_key(idempotency_key: &str) -> String {
        format!("back.{idempotency_key}")
    }

    /// `claim.<idempotency key>`: the in-progress claim of `idempotent = "claim"`.
    pub(crate) fn claim_key(idempotency_key: &str) -> String {
        format!("claim.{idempotency_key}")
    }

    /// `dlq.<idempotency key>`: where the decision to dead-letter an event is recorded (read
    /// only for redeliveries of the same message, whose terminate was not confirmed).
    pub(crate) fn dead_letter_key(idempotency_key: &str) -> String {
        format!("dlq.{idempotency_key}")
    }

    /// The key of what belongs to one message rather than to its event (hand-backs, the
    /// dead-letter decision): a redriven dead letter (`redrive`: its sequence on the redrive
    /// stream) is a new message of the same event, and must not inherit the decision that
    /// sent it to the dead-letter stream.
    pub(crate) fn message_key<'k>(idempotency_key: &'k str, redrive: Option<&str>) -> Cow<'k, str> {
        match redrive {
            None => Cow::Borrowed(idempotency_key),
            Some(tag) => Cow::Owned(format!("{idempotency_key}.redrive-{tag}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_topology_of_design_5() {
        let names = Names::new("billing", "charge");
        assert_eq!(names.durable, "billing__charge");
        assert_eq!(names.dlq_subject, "dlq.billing.charge");
        assert_eq!(names.redrive_durable, "billing__charge__redrive");
        assert_eq!(names.redrive_subject, "redrive.billing.charge");
        assert_eq!(
            Names::message_key("billing.charge.0190", None),
            "billing.charge.0190"
        );
        assert_eq!(
            Names::message_key("billing.charge.0190", Some("EDA_REDRIVE-17-4")),
            "billing.charge.0190.redrive-EDA_REDRIVE-17-4"
        );
        assert_eq!(names.idempotency_key("0190", None), "billing.charge.0190");
        assert_eq!(
            names.idempotency_key("7", Some("EDA_EVENTS-1700000000")),
            "billing.charge.EDA_EVENTS-1700000000.7"
        );
        assert_eq!(
            Names::dead_letter_key("billing.charge.0190"),
            "dlq.billing.charge.0190"
        );
    }
}
