//! Discovery of the handlers and events in the binary, startup validation, and the catalog.

use std::collections::HashMap;

use serde::Serialize;

use crate::event::Event;
use crate::handler::{EventRef, HandlerDescriptor, HandlerOptions, StateMap};

/// The registration `#[event]` submits, for the catalog.
#[doc(hidden)]
#[derive(Debug)]
pub struct EventDescriptor {
    pub name: &'static str,
    pub version: u32,
    pub type_name: &'static str,
    pub upcast_from: Option<&'static str>,
    pub schema: fn() -> serde_json::Value,
    pub fingerprint: fn() -> String,
    /// The type's full path (`std::any::type_name`), to tell apart types of one name.
    pub rust_type: fn() -> &'static str,
}

impl EventDescriptor {
    /// The record for `E`.
    pub const fn of<E: Event>(type_name: &'static str, upcast_from: Option<&'static str>) -> Self {
        EventDescriptor {
            name: E::NAME,
            version: E::VERSION,
            type_name,
            upcast_from,
            schema: E::schema,
            fingerprint: E::fingerprint,
            rust_type: std::any::type_name::<E>,
        }
    }
}

inventory::collect!(EventDescriptor);

/// Every event and handler compiled into the binary; from [`crate::App::catalog`].
#[derive(Debug, Clone, Serialize)]
#[non_exhaustive]
pub struct Catalog {
    /// Events, by name then version.
    pub events: Vec<EventInfo>,
    /// Handlers, by name.
    pub handlers: Vec<HandlerInfo>,
}

/// One event version.
#[derive(Debug, Clone, Serialize)]
#[non_exhaustive]
pub struct EventInfo {
    /// Event name.
    pub name: String,
    /// Version.
    pub version: u32,
    /// The Rust type.
    pub type_name: String,
    /// The type it upcasts from (one version lower), if any.
    pub upcast_from: Option<String>,
    /// JSON Schema.
    pub schema: serde_json::Value,
    /// Fingerprint of the schema.
    pub fingerprint: String,
}

/// One handler.
#[derive(Debug, Clone, Serialize)]
#[non_exhaustive]
pub struct HandlerInfo {
    /// Handler name.
    pub name: String,
    /// Subject pattern.
    pub subject: String,
    /// The only service that runs it, if set.
    pub service: Option<String>,
    /// Its event type, for typed handlers.
    pub event: Option<EventRef>,
    /// Options.
    pub options: HandlerOptions,
    /// The events it publishes, when declared with `emits = [..]`.
    pub emits: Option<Vec<String>>,
    /// Where it is defined.
    pub module_path: String,
}

/// What the catalog says of one handler.
pub(crate) fn info(h: &HandlerDescriptor) -> HandlerInfo {
    HandlerInfo {
        name: h.name.to_owned(),
        subject: h.subject.to_owned(),
        service: h.service.map(str::to_owned),
        event: h.event,
        options: h.options,
        emits: h
            .emits
            .map(|names| names.iter().map(|n| (*n).to_owned()).collect()),
        module_path: h.module_path.to_owned(),
    }
}

pub(crate) fn catalog() -> Catalog {
    let mut events: Vec<EventInfo> = inventory::iter::<EventDescriptor>
        .into_iter()
        .map(|e| EventInfo {
            name: e.name.to_owned(),
            version: e.version,
            type_name: e.type_name.to_owned(),
            upcast_from: e.upcast_from.map(str::to_owned),
            schema: (e.schema)(),
            fingerprint: (e.fingerprint)(),
        })
        .collect();
    events.sort_by(|a, b| {
        (&a.name, a.version, &a.type_name).cmp(&(&b.name, b.version, &b.type_name))
    });
    let mut handlers: Vec<HandlerInfo> = inventory::iter::<HandlerDescriptor>
        .into_iter()
        .map(info)
        .collect();
    handlers.sort_by(|a, b| (&a.name, &a.module_path).cmp(&(&b.name, &b.module_path)));
    Catalog { events, handlers }
}

/// One line for each event name and version that types of this binary define with different
/// schemas: a name and version have one schema on the wire and in the registry, and which of
/// the types a publisher or a handler took would be an accident of the code. Types of one
/// shape (the same fingerprint, e.g. one renamed) are no problem.
pub(crate) fn event_problems() -> Vec<String> {
    let mut by_key: HashMap<(&str, u32), Vec<(&str, String)>> = HashMap::new();
    for event in inventory::iter::<EventDescriptor> {
        by_key
            .entry((event.name, event.version))
            .or_default()
            .push(((event.rust_type)(), (event.fingerprint)()));
    }
    let mut clashes: Vec<_> = by_key
        .into_iter()
        .filter(|(_, types)| types.iter().any(|(_, f)| *f != types[0].1))
        .collect();
    clashes.sort_by_key(|(key, _)| *key);
    clashes
        .into_iter()
        .map(|((name, version), mut types)| {
            types.sort();
            let listed: Vec<String> = types
                .iter()
                .map(|(ty, fingerprint)| format!("`{ty}` (fingerprint `{fingerprint}`)"))
                .collect();
            let listed = match listed.split_last() {
                Some((last, rest)) if !rest.is_empty() => {
                    format!("{} and {last}", rest.join(", "))
                }
                _ => listed.join(""),
            };
            format!(
                "event `{name}` v{version} has different schemas in this binary: {listed}; one name and version have one schema: give one of them another version (or another name)"
            )
        })
        .collect()
}

/// The handlers `service` runs (all whose `service` is unset or equal, or just `only`),
/// and one line per problem found.
pub(crate) fn select(
    service: &str,
    only: Option<&[String]>,
    states: &StateMap,
) -> (Vec<&'static HandlerDescriptor>, Vec<String>) {
    let mut problems = Vec::new();
    let all: Vec<&'static HandlerDescriptor> =
        inventory::iter::<HandlerDescriptor>.into_iter().collect();
    let mut selected: Vec<&'static HandlerDescriptor> = all
        .iter()
        .copied()
        .filter(|h| h.service.is_none_or(|s| s == service))
        .collect();
    if let Some(names) = only {
        for name in names {
            if !selected.iter().any(|h| h.name == name) {
                let mut known: Vec<&str> = selected.iter().map(|h| h.name).collect();
                known.sort_unstable();
                problems.push(format!(
                    "no handler named `{name}` runs in service `{service}`; known: {}",
                    if known.is_empty() {
                        "none".to_owned()
                    } else {
                        known.join(", ")
                    }
                ));
            }
        }
        selected.retain(|h| names.iter().any(|n| n == h.name));
    }
    selected.sort_by_key(|h| (h.name, h.module_path));

    let mut by_name: HashMap<&str, Vec<&HandlerDescriptor>> = HashMap::new();
    for handler in &selected {
        by_name.entry(handler.name).or_default().push(handler);
    }
    let mut names: Vec<_> = by_name.into_iter().filter(|(_, v)| v.len() > 1).collect();
    names.sort_by_key(|(n, _)| *n);
    for (name, handlers) in names {
        let places: Vec<&str> = handlers.iter().map(|h| h.module_path).collect();
        problems.push(format!(
            "two handlers are named `{name}` (in {}): give one another name with `#[handler(name = \"...\")]`",
            places.join(" and ")
        ));
    }

    for handler in &selected {
        for requirement in handler.requirements.iter().filter_map(|r| r()) {
            if !states.contains(requirement.type_id) {
                problems.push(format!(
                    "handler `{}` takes `State<{ty}>` but no state of type `{ty}` was provided: add `.state(..)` with a `{ty}` to the app builder",
                    handler.name,
                    ty = requirement.type_name
                ));
            }
        }
        problems.extend(check_options(handler));
    }
    (selected, problems)
}

fn check_options(handler: &HandlerDescriptor) -> Vec<String> {
    let o = &handler.options;
    let mut problems = Vec::new();
    let name = handler.name;
    if o.concurrency == 0 {
        problems.push(format!(
            "handler `{name}`: `concurrency` must be at least 1"
        ));
    }
    if o.timeout.is_zero() {
        problems.push(format!(
            "handler `{name}`: `timeout` must be longer than zero"
        ));
    }
    if o.backoff.base_delay > o.backoff.max_delay {
        problems.push(format!(
            "handler `{name}`: `base_delay` is longer than `max_delay`"
        ));
    }
    if let Err(why) = check_plain_name("handler name", name) {
        problems.push(why);
    }
    problems
}

/// Names that become consumer names and metric labels: `[A-Za-z0-9_-]`.
pub(crate) fn check_plain_name(what: &str, s: &str) -> Result<(), String> {
    if s.is_empty() {
        return Err(format!("the {what} cannot be empty"));
    }
    match s
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || *c == '_' || *c == '-'))
    {
        Some(c) => Err(format!(
            "invalid {what} `{s}`: it contains `{c}`; use letters, digits, `_` and `-` only"
        )),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::handler::{HandlerOptions, Invocation, InvokeResult};
    use futures_util::future::BoxFuture;
    use std::time::Duration;

    fn never_called(_: Invocation) -> BoxFuture<'static, InvokeResult> {
        Box::pin(async { Ok(()) })
    }

    fn descriptor(name: &'static str, options: HandlerOptions) -> HandlerDescriptor {
        HandlerDescriptor {
            name,
            subject: "order.placed",
            service: None,
            event: None,
            options,
            emits: None,
            requirements: &[],
            invoke: never_called,
            module_path: "tests",
        }
    }

    #[test]
    fn invalid_options_are_each_one_line() {
        // The macros reject these at compile time; descriptors built by hand are checked again.
        let mut options = HandlerOptions {
            concurrency: 0,
            timeout: Duration::ZERO,
            ..HandlerOptions::default()
        };
        options.backoff.base_delay = Duration::from_secs(60);
        options.backoff.max_delay = Duration::from_secs(1);
        assert_eq!(
            check_options(&descriptor("bad name", options)),
            [
                "handler `bad name`: `concurrency` must be at least 1",
                "handler `bad name`: `timeout` must be longer than zero",
                "handler `bad name`: `base_delay` is longer than `max_delay`",
                "invalid handler name `bad name`: it contains ` `; use letters, digits, `_` and `-` only",
            ]
        );
        assert!(check_options(&descriptor("fine", HandlerOptions::default())).is_empty());
    }
}
