//! CloudEvents 1.0 in binary content mode, as the NATS protocol binding (1.0.3) maps it: each
//! attribute a `ce-<attribute>` header (names matched case-insensitively), values
//! percent-encoded, the data as the payload. eda's own metadata without a CloudEvents
//! attribute travels as extensions: `edaversion` (when not 1), `correlationid` (when not the
//! id), `causationid`, and `traceparent` (the distributed-tracing extension).

use std::borrow::Cow;

use super::{Read, Slot};
use crate::event::{DecodeError, Metadata};

const SPECVERSION: &str = "ce-specversion";
const ID: &str = "ce-id";
const TYPE: &str = "ce-type";
const SOURCE: &str = "ce-source";
const TIME: &str = "ce-time";
const DATACONTENTTYPE: &str = "ce-datacontenttype";
/// The event's schema version, when it is not 1.
pub(super) const VERSION: &str = "ce-edaversion";
const CORRELATION_ID: &str = "ce-correlationid";
const CAUSATION_ID: &str = "ce-causationid";
const TRACEPARENT: &str = "ce-traceparent";

/// The only CloudEvents version eda reads and writes.
const SPEC: &str = "1.0";

/// Hands each CloudEvents header of an event to `put` (after eda's `Nats-Msg-Id`, which the
/// broker's duplicate window needs).
pub(super) fn encode_into(metadata: &Metadata, mut put: impl FnMut(&'static str, &str)) {
    put(SPECVERSION, SPEC);
    put(ID, &percent_encoded(&metadata.id));
    put(TYPE, &percent_encoded(&metadata.name));
    put(SOURCE, &percent_encoded(&metadata.source));
    put(TIME, &metadata.time_rfc3339());
    put(DATACONTENTTYPE, "application/json");
    if metadata.version != 1 {
        put(VERSION, &metadata.version.to_string());
    }
    if metadata.correlation_id != metadata.id {
        put(CORRELATION_ID, &percent_encoded(&metadata.correlation_id));
    }
    if let Some(causation) = &metadata.causation_id {
        put(CAUSATION_ID, &percent_encoded(causation));
    }
    if let Some(traceparent) = &metadata.traceparent {
        put(TRACEPARENT, traceparent);
    }
}

/// The CloudEvents attributes of a received message that eda's metadata has no field for, as
/// headers again (a dead letter keeps them).
pub(super) fn extension_headers(
    metadata: &Metadata,
) -> impl Iterator<Item = (Cow<'static, str>, String)> + '_ {
    metadata.extensions.iter().map(|(attribute, value)| {
        (
            Cow::Owned(format!("ce-{attribute}")),
            percent_encoded(value).into_owned(),
        )
    })
}

/// Reads one header that is not eda's: a `ce-*` one into its slot or the extensions;
/// anything else is ignored.
pub(super) fn read<'h>(read: &mut Read<'h>, name: &str, value: &'h str) {
    let Some(attribute) = name
        .get(..3)
        .filter(|prefix| prefix.eq_ignore_ascii_case("ce-"))
        .and_then(|_| name.get(3..))
    else {
        return;
    };
    let Some(value) = unescaped(value) else {
        read.error.get_or_insert(DecodeError::Header {
            header: name.to_owned(),
            value: value.to_owned(),
        });
        return;
    };
    let is = |known: &str| attribute.eq_ignore_ascii_case(known);
    let slot: &mut Slot<'h> = if is("id") {
        &mut read.id
    } else if is("type") {
        &mut read.event
    } else if is("source") {
        &mut read.source
    } else if is("time") {
        &mut read.time
    } else if is("edaversion") {
        &mut read.version
    } else if is("correlationid") {
        &mut read.correlation_id
    } else if is("causationid") {
        &mut read.causation_id
    } else if is("traceparent") {
        &mut read.traceparent
    } else if is("specversion") {
        if value != SPEC {
            read.error.get_or_insert(DecodeError::Header {
                header: name.to_owned(),
                value: value.into_owned(),
            });
        }
        return;
    } else {
        read.extensions
            .push((attribute.to_ascii_lowercase(), value.into_owned()));
        return;
    };
    slot.set(value, true);
}

/// A header value as the binding writes it: space, `"`, `%` and everything outside printable
/// ASCII as `%XY` of its UTF-8 bytes.
fn percent_encoded(value: &str) -> Cow<'_, str> {
    let plain = |b: u8| (0x21..=0x7e).contains(&b) && b != b'"' && b != b'%';
    if value.bytes().all(plain) {
        return Cow::Borrowed(value);
    }
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    let mut encoded = String::with_capacity(value.len() * 3);
    for byte in value.bytes() {
        if plain(byte) {
            encoded.push(char::from(byte));
        } else {
            encoded.push('%');
            encoded.push(char::from(HEX[usize::from(byte >> 4)]));
            encoded.push(char::from(HEX[usize::from(byte & 0x0f)]));
        }
    }
    Cow::Owned(encoded)
}

/// A header value as the binding reads it: a double-quoted string unquoted (older writers),
/// then one round of percent-decoding; `None` when that is not valid UTF-8 or a `%` is not
/// followed by two hex digits.
fn unescaped(value: &str) -> Option<Cow<'_, str>> {
    let value = value.trim();
    let unquoted: Cow<'_, str> = match value
        .strip_prefix('"')
        .and_then(|rest| rest.strip_suffix('"'))
    {
        Some(inner) => {
            let mut text = String::with_capacity(inner.len());
            let mut chars = inner.chars();
            while let Some(c) = chars.next() {
                text.push(if c == '\\' { chars.next()? } else { c });
            }
            Cow::Owned(text)
        }
        None => Cow::Borrowed(value),
    };
    match unquoted {
        Cow::Borrowed(value) => percent_decoded(value),
        Cow::Owned(value) => percent_decoded(&value).map(|v| Cow::Owned(v.into_owned())),
    }
}

/// One round of percent-decoding; `None` when a `%` is not followed by two hex digits, the
/// result is not valid UTF-8 or holds a control character.
pub(crate) fn percent_decoded(unquoted: &str) -> Option<Cow<'_, str>> {
    if !unquoted.contains('%') {
        return Some(Cow::Borrowed(unquoted));
    }
    let bytes = unquoted.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = unquoted.get(i + 1..i + 3)?;
            if !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
                return None;
            }
            decoded.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            decoded.push(bytes[i]);
            i += 1;
        }
    }
    // Rejects overlong and otherwise invalid UTF-8, as the binding requires, and control
    // characters (attribute values may not hold them, and a line break would break the
    // headers eda writes from them: follow-ups, dead letters).
    let text = String::from_utf8(decoded).ok()?;
    if text.chars().any(char::is_control) {
        return None;
    }
    Some(Cow::Owned(text))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_percent_encoded_as_the_binding_says() {
        assert_eq!(percent_encoded("order.placed"), "order.placed");
        assert_eq!(
            percent_encoded("Euro € 😀"),
            "Euro%20%E2%82%AC%20%F0%9F%98%80"
        );
        assert_eq!(percent_encoded("50% \"off\""), "50%25%20%22off%22");
    }

    #[test]
    fn values_are_unquoted_and_percent_decoded_once() {
        assert_eq!(
            unescaped("Euro%20%e2%82%ac%20%F0%9F%98%80").as_deref(),
            Some("Euro € 😀")
        );
        assert_eq!(unescaped("%2541").as_deref(), Some("%41"), "one round only");
        assert_eq!(unescaped(r#""a \"b\" c""#).as_deref(), Some(r#"a "b" c"#));
        assert_eq!(unescaped("%C0%A0"), None, "overlong UTF-8 is rejected");
        assert_eq!(unescaped("100%"), None);
        assert_eq!(unescaped("%zz"), None);
        assert_eq!(unescaped("%+A"), None, "only hex digits");
        assert_eq!(unescaped("x%0Ay"), None, "no line breaks in a value");
        assert_eq!(unescaped("a%0D%0Ab"), None);
    }
}
