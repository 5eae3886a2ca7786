//! A small YAML writer for JSON values (block style, for `eda asyncapi`): every JSON document
//! has a YAML form, so this never fails. A string is written plain only when no YAML 1.1 or 1.2
//! parser can read it as anything but that string; every other string is double-quoted with
//! escapes for quotes, backslashes, line breaks and characters YAML does not print.

use serde_json::{Map, Value};

/// `entries` as a YAML document: a mapping with the entries in the order given.
pub fn document(entries: &[(&str, Value)]) -> String {
    let mut out = String::new();
    for (key, value) in entries {
        scalar_string(&mut out, key);
        out.push(':');
        node(&mut out, value, 2);
    }
    out
}

/// Writes `value`, which follows a `key:` or a `-` on the current line, with its nested lines
/// indented by `indent`.
fn node(out: &mut String, value: &Value, indent: usize) {
    match value {
        Value::Object(map) if !map.is_empty() => {
            out.push('\n');
            mapping(out, map, indent, false);
        }
        Value::Array(items) if !items.is_empty() => {
            out.push('\n');
            sequence(out, items, indent);
        }
        scalar => {
            out.push(' ');
            inline(out, scalar);
            out.push('\n');
        }
    }
}

/// The entries of `map` at `indent`; with `first_inline` the first one goes on the current
/// line (after a `- `).
fn mapping(out: &mut String, map: &Map<String, Value>, indent: usize, first_inline: bool) {
    for (i, (key, value)) in map.iter().enumerate() {
        if i > 0 || !first_inline {
            pad(out, indent);
        }
        scalar_string(out, key);
        out.push(':');
        node(out, value, indent + 2);
    }
}

fn sequence(out: &mut String, items: &[Value], indent: usize) {
    for item in items {
        pad(out, indent);
        match item {
            Value::Object(map) if !map.is_empty() => {
                out.push_str("- ");
                mapping(out, map, indent + 2, true);
            }
            other => {
                out.push('-');
                node(out, other, indent + 2);
            }
        }
    }
}

fn pad(out: &mut String, indent: usize) {
    out.extend(std::iter::repeat_n(' ', indent));
}

/// A scalar, or an empty collection, on one line.
fn inline(out: &mut String, value: &Value) {
    match value {
        Value::Null => out.push_str("null"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Number(n) => out.push_str(&n.to_string()),
        Value::String(s) => scalar_string(out, s),
        Value::Array(_) => out.push_str("[]"),
        Value::Object(_) => out.push_str("{}"),
    }
}

/// Words that YAML 1.1 or 1.2 reads as booleans or null when plain.
const RESERVED: [&str; 9] = ["true", "false", "yes", "no", "on", "off", "y", "n", "null"];

/// Whether `s` reads back as the same string when written plain: it starts with a letter,
/// `_`, `$` or `/` (so never a number, an indicator or `.inf`), holds only letters, digits,
/// `_.-/$` and single inner spaces, and is no boolean or null word.
fn plain(s: &str) -> bool {
    let mut chars = s.chars();
    let Some(first) = chars.next() else {
        return false;
    };
    (first.is_ascii_alphabetic() || "_$/".contains(first))
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "_.-/$ ".contains(c))
        && !s.ends_with(' ')
        && !s.contains("  ")
        && !RESERVED.iter().any(|r| s.eq_ignore_ascii_case(r))
}

fn scalar_string(out: &mut String, s: &str) {
    if plain(s) {
        out.push_str(s);
        return;
    }
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            // Not printable in YAML, or read as a line break (NEL, LS, PS), or a BOM.
            c if (c as u32) < 0x20
                || (0x7f..=0x9f).contains(&(c as u32))
                || matches!(
                    c,
                    '\u{2028}' | '\u{2029}' | '\u{feff}' | '\u{fffe}' | '\u{ffff}'
                ) =>
            {
                out.push_str(&format!("\\u{:04x}", c as u32));
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn nested_collections_are_block_style() {
        let text = document(&[
            ("asyncapi", json!("3.0.0")),
            (
                "info",
                json!({"title": "shop", "tags": [{"name": "a", "x": 1}, "b", [1, 2], []], "empty": {}}),
            ),
        ]);
        assert_eq!(
            text,
            "asyncapi: \"3.0.0\"\ninfo:\n  empty: {}\n  tags:\n    - name: a\n      x: 1\n    - b\n    -\n      - 1\n      - 2\n    - []\n  title: shop\n"
        );
    }

    #[test]
    fn strings_that_could_read_as_something_else_are_quoted() {
        for (s, written) in [
            ("user.created.v2", "user.created.v2"),
            ("$ref", "$ref"),
            ("#/components/messages/a", "\"#/components/messages/a\""),
            ("yes", "\"yes\""),
            ("Null", "\"Null\""),
            ("1.0", "\"1.0\""),
            ("0x1f", "\"0x1f\""),
            ("", "\"\""),
            ("a: b", "\"a: b\""),
            ("- x", "\"- x\""),
            ("line\nbreak \"q\" \\", "\"line\\nbreak \\\"q\\\" \\\\\""),
            (
                "bell\u{7}nel\u{85}ls\u{2028}",
                "\"bell\\u0007nel\\u0085ls\\u2028\"",
            ),
            ("émoji 🦀", "\"émoji 🦀\""),
            ("trailing ", "\"trailing \""),
        ] {
            let mut out = String::new();
            scalar_string(&mut out, s);
            assert_eq!(out, written, "{s:?}");
        }
    }
}
