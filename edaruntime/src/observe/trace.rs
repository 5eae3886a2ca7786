//! W3C trace context (`traceparent: 00-<trace id>-<parent span id>-<flags>`): each published
//! event gets a span id of its own; an event published while handling another continues that
//! one's trace, so a trace follows a conversation across services.

/// A new trace: fresh trace id and span id, sampled.
pub fn new_traceparent() -> String {
    // Written in place: one allocation, no formatting machinery (it runs per publish).
    let mut value = String::with_capacity(55);
    value.push_str("00-");
    crate::random::push_hex(&mut value, 16);
    value.push('-');
    crate::random::push_hex(&mut value, 8);
    value.push_str("-01");
    value
}

/// A child of `parent` (a `traceparent` value): same trace id and flags, a new span id.
/// An unreadable parent starts a new trace.
pub fn child_of(parent: Option<&str>) -> String {
    match parent.and_then(parse) {
        Some((trace_id, flags)) => {
            let mut value = String::with_capacity(55);
            value.push_str("00-");
            value.push_str(trace_id);
            value.push('-');
            crate::random::push_hex(&mut value, 8);
            value.push('-');
            value.push_str(flags);
            value
        }
        None => new_traceparent(),
    }
}

/// The trace id of a `traceparent` value, if it is well formed.
pub fn trace_id(traceparent: &str) -> Option<&str> {
    parse(traceparent).map(|(trace_id, _)| trace_id)
}

fn parse(value: &str) -> Option<(&str, &str)> {
    let mut parts = value.trim().split('-');
    let (version, trace_id, span_id, flags) =
        (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    let hex = |s: &str, len: usize| s.len() == len && s.bytes().all(|b| b.is_ascii_hexdigit());
    let valid = hex(version, 2)
        && hex(trace_id, 32)
        && hex(span_id, 16)
        && hex(flags, 2)
        && trace_id.bytes().any(|b| b != b'0');
    valid.then_some((trace_id, flags))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn children_keep_the_trace_and_get_a_new_span() {
        let root = new_traceparent();
        assert_eq!(root.len(), 55, "{root}");
        let child = child_of(Some(&root));
        assert_eq!(trace_id(&child), trace_id(&root));
        assert_ne!(child, root);
        assert!(
            trace_id(&child_of(Some("garbage"))).is_some(),
            "a bad parent starts a new trace"
        );
        assert_eq!(
            trace_id("00-00000000000000000000000000000000-0000000000000001-01"),
            None
        );
    }
}
