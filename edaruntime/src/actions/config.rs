//! The actions file (TOML): its shape, and the checks that make every mistake a load-time
//! error with file, line and column.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use super::template::Template;
use super::{Action, Body, Trigger};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    trigger: Vec<TriggerToml>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TriggerToml {
    name: Spanned<String>,
    event: Spanned<String>,
    retries: Option<u32>,
    breaker: Option<Spanned<String>>,
    concurrency: Option<Spanned<u32>>,
    #[serde(default)]
    action: Vec<ActionToml>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ActionToml {
    #[serde(rename = "type")]
    kind: Spanned<String>,
    url: Spanned<String>,
    method: Option<Spanned<String>>,
    timeout: Option<Spanned<String>>,
    #[serde(default)]
    headers: BTreeMap<String, Spanned<String>>,
    body: Option<Spanned<toml::Value>>,
    emit: Option<Spanned<String>>,
}

/// The HTTP methods an action may use.
const METHODS: &[&str] = &["GET", "POST", "PUT", "PATCH", "DELETE"];
/// An action's timeout unless it sets one.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// Where problems are reported: `<origin>:<line>:<column>: `.
struct Positions<'a> {
    origin: &'a str,
    text: &'a str,
    problems: Vec<String>,
}

impl Positions<'_> {
    fn at(&mut self, span: std::ops::Range<usize>, message: impl std::fmt::Display) {
        let before = &self.text[..span.start.min(self.text.len())];
        let line = before.matches('\n').count() + 1;
        let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
        self.problems
            .push(format!("{}:{line}:{column}: {message}", self.origin));
    }
}

/// Parses and checks an actions file; every problem, or the triggers.
pub(super) fn parse(
    text: &str,
    origin: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Vec<Trigger>, Vec<String>> {
    let file: File = toml::from_str(text).map_err(|e| {
        let message = e.message().trim().to_owned();
        let mut at = Positions {
            origin,
            text,
            problems: Vec::new(),
        };
        match e.span() {
            Some(span) => at.at(span, message),
            None => at.problems.push(format!("{origin}: {message}")),
        }
        at.problems
    })?;
    let mut at = Positions {
        origin,
        text,
        problems: Vec::new(),
    };
    if file.trigger.is_empty() {
        at.problems.push(format!(
            "{origin}: no triggers: add a `[[trigger]]` table with `name`, `event` and an `[[trigger.action]]`"
        ));
    }
    let mut triggers: Vec<Trigger> = Vec::new();
    for t in file.trigger {
        if let Some(trigger) = check_trigger(t, &mut at, env) {
            if triggers.iter().any(|other| other.name == trigger.name) {
                at.problems.push(format!(
                    "{origin}: two triggers are named `{}`: a name names the durable consumer `<service>__<name>`, so it is unique",
                    trigger.name
                ));
            }
            triggers.push(trigger);
        }
    }
    if at.problems.is_empty() {
        Ok(triggers)
    } else {
        Err(at.problems)
    }
}

fn check_trigger(
    t: TriggerToml,
    at: &mut Positions<'_>,
    env: &dyn Fn(&str) -> Option<String>,
) -> Option<Trigger> {
    let before = at.problems.len();
    let name = t.name.get_ref().clone();
    let name_ok = !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if !name_ok {
        at.at(t.name.span(), format!("trigger name `{name}`: letters, digits, `_` and `-` only (it names a durable consumer)"));
    }
    let event = t.event.get_ref().clone();
    if let Err(why) = check_subject(&event, true) {
        at.at(t.event.span(), format!("event `{event}`: {why}"));
    }
    if let Some(c) = &t.concurrency {
        if *c.get_ref() == 0 {
            at.at(c.span(), "concurrency must be at least 1");
        }
    }
    if t.action.is_empty() {
        at.at(
            t.name.span(),
            format!("trigger `{name}` has no `[[trigger.action]]`"),
        );
    }
    let mut actions = Vec::new();
    for a in t.action {
        if let Some(action) = check_action(a, at, env) {
            actions.push(action);
        }
    }
    (at.problems.len() == before).then(|| Trigger {
        name,
        event,
        retries: t.retries,
        breaker: t.breaker.map(Spanned::into_inner),
        concurrency: t.concurrency.map(Spanned::into_inner),
        actions,
    })
}

fn check_action(
    a: ActionToml,
    at: &mut Positions<'_>,
    env: &dyn Fn(&str) -> Option<String>,
) -> Option<Action> {
    let before = at.problems.len();
    if a.kind.get_ref() != "web_service" {
        at.at(
            a.kind.span(),
            format!(
                "unknown action type `{}`: the action type is `web_service`",
                a.kind.get_ref()
            ),
        );
    }
    let url = template(&a.url, at, env);
    let written = a.url.get_ref();
    if !(written.starts_with("http://")
        || written.starts_with("https://")
        || written.starts_with("${"))
    {
        at.at(
            a.url.span(),
            format!("url `{written}`: an http:// or https:// URL"),
        );
    }
    let method = match &a.method {
        None => reqwest::Method::POST,
        Some(m) => {
            let upper = m.get_ref().to_ascii_uppercase();
            match METHODS.contains(&upper.as_str()) {
                true => {
                    reqwest::Method::from_bytes(upper.as_bytes()).unwrap_or(reqwest::Method::POST)
                }
                false => {
                    at.at(
                        m.span(),
                        format!("method `{}`: one of {}", m.get_ref(), METHODS.join(", ")),
                    );
                    reqwest::Method::POST
                }
            }
        }
    };
    let timeout = match &a.timeout {
        None => DEFAULT_TIMEOUT,
        Some(t) => match humantime::parse_duration(t.get_ref()) {
            Ok(d) if !d.is_zero() => d,
            _ => {
                at.at(
                    t.span(),
                    format!(
                        "timeout `{}`: a duration such as `5s` or `500ms`",
                        t.get_ref()
                    ),
                );
                DEFAULT_TIMEOUT
            }
        },
    };
    let mut headers = Vec::new();
    for (name, value) in &a.headers {
        match reqwest::header::HeaderName::from_bytes(name.as_bytes()) {
            Ok(header) => {
                if let Some(t) = template(value, at, env) {
                    headers.push((header, t));
                }
            }
            Err(_) => at.at(value.span(), format!("`{name}` is not a header name")),
        }
    }
    let body = a.body.as_ref().and_then(|b| {
        body(b.get_ref(), env)
            .map_err(|why| at.at(b.span(), why))
            .ok()
    });
    if let Some(emit) = &a.emit {
        if let Err(why) = check_subject(emit.get_ref(), false) {
            at.at(emit.span(), format!("emit `{}`: {why}", emit.get_ref()));
        }
    }
    let url = url?;
    (at.problems.len() == before).then(|| Action {
        method,
        url_text: written.clone(),
        url,
        timeout,
        headers,
        body,
        emit: a.emit.map(Spanned::into_inner),
    })
}

fn template(
    value: &Spanned<String>,
    at: &mut Positions<'_>,
    env: &dyn Fn(&str) -> Option<String>,
) -> Option<Template> {
    Template::parse(value.get_ref(), env)
        .map_err(|why| at.at(value.span(), why))
        .ok()
}

/// The body's value, every string in it a template.
fn body(value: &toml::Value, env: &dyn Fn(&str) -> Option<String>) -> Result<Body, String> {
    Ok(match value {
        toml::Value::String(s) => Body::Text(Template::parse(s, env)?),
        toml::Value::Array(items) => Body::List(
            items
                .iter()
                .map(|item| body(item, env))
                .collect::<Result<_, _>>()?,
        ),
        toml::Value::Table(table) => Body::Object(
            table
                .iter()
                .map(|(k, v)| Ok((k.clone(), body(v, env)?)))
                .collect::<Result<_, String>>()?,
        ),
        other => Body::Literal(
            serde_json::to_value(other)
                .map_err(|e| format!("body value {other:?} is not JSON: {e}"))?,
        ),
    })
}

/// An event subject: dot-separated tokens; `*` tokens and a last `>` only where `pattern`.
pub(super) fn check_subject(subject: &str, pattern: bool) -> Result<(), &'static str> {
    let tokens: Vec<&str> = subject.split('.').collect();
    if subject.is_empty() || tokens.iter().any(|t| t.is_empty()) {
        return Err("dot-separated names without empty ones, e.g. `user.created`");
    }
    if subject.chars().any(char::is_whitespace) {
        return Err("no white space");
    }
    for (i, token) in tokens.iter().enumerate() {
        let wildcard = *token == "*" || (*token == ">" && i == tokens.len() - 1);
        if !pattern && (*token == "*" || *token == ">") {
            return Err("one event name, without wildcards");
        }
        if !wildcard && token.contains(['*', '>']) {
            return Err("`*` and `>` stand alone as a token (`>` last)");
        }
    }
    Ok(())
}
