//! Every name delivery derives from a service and a handler, in one place: the durable
//! consumer instances share, the dead-letter subject, the idempotency keys.

/// The names of one handler of one service.
#[derive(Debug, Clone)]
pub(crate) struct Names {
    /// `<service>__<handler>`: the durable consumer the instances of one service share.
    pub(crate) durable: String,
    /// `dlq.<service>.<handler>`.
    pub(crate) dlq_subject: String,
    /// `<service>.<handler>.`: what idempotency keys start with.
    key_prefix: String,
}

impl Names {
    pub(crate) fn new(service: &str, handler: &str) -> Names {
        Names {
            durable: format!("{service}__{handler}"),
            dlq_subject: format!("dlq.{service}.{handler}"),
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
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_topology_of_design_5() {
        let names = Names::new("billing", "charge");
        assert_eq!(names.durable, "billing__charge");
        assert_eq!(names.dlq_subject, "dlq.billing.charge");
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
