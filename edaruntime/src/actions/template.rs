//! Templates of the actions file: `${event.<path>}` (a JSON path into the payload, arrays by
//! index: `items[0].sku` or `items.0.sku`), `${meta.<field>}`, `${env.<VAR>}`; a `?` at the
//! end (`${event.nickname?}`) makes a missing value empty (`null` where a whole value is
//! inserted) instead of an error; `$${` writes a literal `${`. Parsed once when the file is
//! loaded, so an unknown variable or a bad path is a load-time error.

use std::fmt::Write;

use serde_json::Value;

use crate::event::Metadata;

/// The metadata fields `${meta.<field>}` reads.
pub(crate) const META_FIELDS: &[&str] = &[
    "id",
    "name",
    "version",
    "time",
    "source",
    "correlation_id",
    "causation_id",
    "attempt",
];

/// One parsed template.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Template {
    parts: Vec<Part>,
}

#[derive(Debug, Clone, PartialEq)]
enum Part {
    Text(String),
    Var(Var),
}

/// A variable of a template.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Var {
    source: Source,
    /// May be missing (`?`).
    optional: bool,
    /// As written, for messages.
    written: String,
}

#[derive(Debug, Clone, PartialEq)]
enum Source {
    Event(Vec<Step>),
    Meta(&'static str),
    /// Read once at load time: the value itself (a secret: never in messages).
    Env {
        value: String,
    },
}

#[derive(Debug, Clone, PartialEq)]
enum Step {
    Key(String),
    Index(usize),
}

/// The values a template is rendered from.
pub(crate) struct Scope<'a> {
    pub(crate) event: &'a Value,
    pub(crate) meta: &'a Metadata,
    pub(crate) attempt: u32,
}

/// How inserted values are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Escape {
    /// As they are (header values, body strings).
    None,
    /// Percent-encoded, for a URL: the values of `event.*` and `meta.*` (the template's own
    /// text and `env.*` values, such as a base URL, go in as written).
    Url,
}

impl Template {
    /// Parses `text`; `env` looks a variable up (the process environment, or a test's).
    /// The error says what is wrong, without the file position (the caller adds it).
    pub(crate) fn parse(
        text: &str,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Template, String> {
        let mut parts = Vec::new();
        let mut text_part = String::new();
        let mut rest = text;
        while let Some(at) = rest.find('$') {
            text_part.push_str(&rest[..at]);
            let after = &rest[at..];
            if let Some(tail) = after.strip_prefix("$${") {
                text_part.push_str("${");
                rest = tail;
            } else if let Some(tail) = after.strip_prefix("${") {
                let end = tail
                    .find('}')
                    .ok_or_else(|| format!("`${{` without a closing `}}` in `{text}`"))?;
                let var = parse_var(&tail[..end], env)?;
                if !text_part.is_empty() {
                    parts.push(Part::Text(std::mem::take(&mut text_part)));
                }
                parts.push(Part::Var(var));
                rest = &tail[end + 1..];
            } else {
                text_part.push('$');
                rest = &after[1..];
            }
        }
        text_part.push_str(rest);
        if !text_part.is_empty() {
            parts.push(Part::Text(text_part));
        }
        Ok(Template { parts })
    }

    /// The values of the `env.*` variables it reads (secrets, to keep out of messages).
    pub(crate) fn secrets(&self) -> impl Iterator<Item = &str> {
        self.parts.iter().filter_map(|p| match p {
            Part::Var(Var {
                source: Source::Env { value },
                ..
            }) => Some(value.as_str()),
            _ => None,
        })
    }

    /// The text with its variables' values.
    pub(crate) fn render(&self, scope: &Scope<'_>, escape: Escape) -> Result<String, String> {
        let mut out = String::new();
        for part in &self.parts {
            match part {
                Part::Text(text) => out.push_str(text),
                Part::Var(var) => {
                    let value = var.value(scope)?;
                    let text = match &value {
                        Value::Null => String::new(),
                        Value::String(s) => s.clone(),
                        other => other.to_string(),
                    };
                    // Configuration (a base URL) goes in as written; data is encoded.
                    match (escape, &var.source) {
                        (Escape::Url, Source::Event(_) | Source::Meta(_)) => {
                            percent_encode(&text, &mut out)
                        }
                        _ => out.push_str(&text),
                    }
                }
            }
        }
        Ok(out)
    }

    /// A JSON value: the variable's own value (a number stays a number) when the template is
    /// exactly one variable, else the rendered text.
    pub(crate) fn render_value(&self, scope: &Scope<'_>) -> Result<Value, String> {
        match self.parts.as_slice() {
            [Part::Var(var)] => var.value(scope),
            _ => self.render(scope, Escape::None).map(Value::String),
        }
    }
}

impl Var {
    fn value(&self, scope: &Scope<'_>) -> Result<Value, String> {
        let found = match &self.source {
            Source::Env { value } => Some(Value::String(value.clone())),
            Source::Meta(field) => meta_value(field, scope),
            Source::Event(steps) => {
                let mut at = scope.event;
                let mut found = true;
                for step in steps {
                    let next = match step {
                        Step::Key(key) => at.get(key.as_str()),
                        Step::Index(i) => at.get(*i),
                    };
                    match next {
                        Some(next) => at = next,
                        None => {
                            found = false;
                            break;
                        }
                    }
                }
                found.then(|| at.clone())
            }
        };
        match found {
            Some(value) => Ok(value),
            None if self.optional => Ok(Value::Null),
            None => Err(format!(
                "`${{{}}}` is not in the event (end it with `?` if it may be missing)",
                self.written
            )),
        }
    }
}

fn meta_value(field: &str, scope: &Scope<'_>) -> Option<Value> {
    let m = scope.meta;
    Some(match field {
        "id" => Value::String(m.id.clone()),
        "name" => Value::String(m.name.to_string()),
        "version" => Value::from(m.version),
        "time" => Value::String(humantime::format_rfc3339_millis(m.time).to_string()),
        "source" => Value::String(m.source.to_string()),
        "correlation_id" => Value::String(m.correlation_id.clone()),
        "causation_id" => return m.causation_id.clone().map(Value::String),
        "attempt" => Value::from(scope.attempt),
        _ => return None,
    })
}

fn parse_var(inner: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<Var, String> {
    let written = inner.trim().to_owned();
    let (path, optional) = match written.strip_suffix('?') {
        Some(path) => (path, true),
        None => (written.as_str(), false),
    };
    let (namespace, rest) = path.split_once('.').unwrap_or((path, ""));
    let source = match namespace {
        "event" => Source::Event(parse_path(rest).map_err(|why| {
            format!("bad path in `${{{written}}}`: {why} (e.g. `${{event.user.email}}`, `${{event.items[0].sku}}`)")
        })?),
        "meta" => match META_FIELDS.iter().find(|f| **f == rest) {
            Some(field) => Source::Meta(field),
            None => {
                return Err(format!(
                    "unknown variable `${{{written}}}`: `meta.` has {}",
                    META_FIELDS.join(", ")
                ))
            }
        },
        "env" => {
            let valid = !rest.is_empty()
                && rest.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
            if !valid {
                return Err(format!(
                    "bad variable `${{{written}}}`: an environment variable's name, e.g. `${{env.API_TOKEN}}`"
                ));
            }
            match env(rest) {
                Some(value) => Source::Env { value },
                None if optional => Source::Env {
                    value: String::new(),
                },
                None => {
                    return Err(format!(
                        "`${{{written}}}`: the environment variable `{rest}` is not set"
                    ))
                }
            }
        }
        _ => {
            return Err(format!(
                "unknown variable `${{{written}}}`: templates read `event.<path>`, `meta.<field>` or `env.<VAR>`"
            ))
        }
    };
    Ok(Var {
        source,
        optional,
        written,
    })
}

/// `user.email`, `items[0].sku`, `items.0.sku`; empty for the whole payload.
fn parse_path(path: &str) -> Result<Vec<Step>, String> {
    let mut steps = Vec::new();
    if path.is_empty() {
        return Ok(steps);
    }
    for token in path.split('.') {
        let (key, mut indexes) = match token.find('[') {
            Some(at) => (&token[..at], &token[at..]),
            None => (token, ""),
        };
        if key.is_empty() && indexes.is_empty() {
            return Err("an empty step".to_owned());
        }
        if !key.is_empty() {
            match key.parse::<usize>() {
                Ok(i) => steps.push(Step::Index(i)),
                Err(_) => steps.push(Step::Key(key.to_owned())),
            }
        }
        while !indexes.is_empty() {
            let close = indexes
                .find(']')
                .ok_or_else(|| format!("`{token}`: `[` without `]`"))?;
            let index = indexes[1..close]
                .parse::<usize>()
                .map_err(|_| format!("`{token}`: an index is a number"))?;
            steps.push(Step::Index(index));
            indexes = &indexes[close + 1..];
            if !indexes.is_empty() && !indexes.starts_with('[') {
                return Err(format!("`{token}`: text after `]`"));
            }
        }
    }
    Ok(steps)
}

/// Percent-encodes everything but RFC 3986's unreserved characters.
fn percent_encode(text: &str, out: &mut String) {
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(byte));
        } else {
            // Writing to a String cannot fail.
            let _ = write!(out, "%{byte:02X}");
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    fn env(name: &str) -> Option<String> {
        match name {
            "TOKEN" => Some("s3cret".to_owned()),
            "BASE" => Some("http://h:1".to_owned()),
            _ => None,
        }
    }

    fn render(template: &str, event: &Value, escape: Escape) -> Result<String, String> {
        let meta = Metadata::new("user.created", 2, Arc::from("users"));
        let t = Template::parse(template, &env)?;
        t.render(
            &Scope {
                event,
                meta: &meta,
                attempt: 3,
            },
            escape,
        )
    }

    #[test]
    fn variables_read_the_event_the_metadata_and_the_environment() {
        let event =
            serde_json::json!({"id": 7, "user": {"email": "a@b.c"}, "items": [{"sku": "x y"}]});
        assert_eq!(
            render(
                "/users/${event.id}/${event.items[0].sku}",
                &event,
                Escape::Url
            )
            .unwrap(),
            "/users/7/x%20y"
        );
        assert_eq!(
            render(
                "${event.items.0.sku}|${meta.name}|${meta.version}|${meta.attempt}|${meta.source}",
                &event,
                Escape::None
            )
            .unwrap(),
            "x y|user.created|2|3|users"
        );
        assert_eq!(
            render(
                "${env.BASE}/users/${event.items[0].sku}",
                &event,
                Escape::Url
            )
            .unwrap(),
            "http://h:1/users/x%20y"
        );
        assert_eq!(
            render("Bearer ${env.TOKEN} $${literal}", &event, Escape::None).unwrap(),
            "Bearer s3cret ${literal}"
        );
        assert_eq!(
            render("[${event.nick?}]", &event, Escape::None).unwrap(),
            "[]"
        );
        let missing = render("${event.nick}", &event, Escape::None).unwrap_err();
        assert!(
            missing.contains("`${event.nick}` is not in the event"),
            "{missing}"
        );
    }

    #[test]
    fn whole_value_templates_keep_json_types() {
        let event = serde_json::json!({"n": 7, "tags": ["a"]});
        let meta = Metadata::new("x", 1, Arc::from("s"));
        let scope = Scope {
            event: &event,
            meta: &meta,
            attempt: 1,
        };
        let one = Template::parse("${event.n}", &env).unwrap();
        assert_eq!(one.render_value(&scope).unwrap(), serde_json::json!(7));
        let tags = Template::parse("${event.tags}", &env).unwrap();
        assert_eq!(tags.render_value(&scope).unwrap(), serde_json::json!(["a"]));
        let text = Template::parse("n=${event.n}", &env).unwrap();
        assert_eq!(text.render_value(&scope).unwrap(), serde_json::json!("n=7"));
    }

    #[test]
    fn bad_templates_say_what_is_wrong() {
        for (template, expected) in [
            ("${user.id}", "unknown variable `${user.id}`: templates read `event.<path>`, `meta.<field>` or `env.<VAR>`"),
            ("${meta.nope}", "unknown variable `${meta.nope}`: `meta.` has id, name"),
            ("${env.MISSING}", "`${env.MISSING}`: the environment variable `MISSING` is not set"),
            ("${env.a-b}", "bad variable `${env.a-b}`"),
            ("${event.a[x]}", "bad path in `${event.a[x]}`: `a[x]`: an index is a number"),
            ("${event.a..b}", "bad path in `${event.a..b}`: an empty step"),
            ("${event.id", "`${` without a closing `}`"),
        ] {
            let error = Template::parse(template, &env).unwrap_err();
            assert!(error.contains(expected), "{template}: {error}");
            assert!(!error.contains("s3cret"));
        }
    }
}
