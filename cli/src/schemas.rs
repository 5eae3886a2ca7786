//! `eda schemas check <binary>`: a service binary's event schemas against the schema registry
//! on the server (the `EDA_SCHEMAS` bucket, key `<name>.v<version>`, value the JSON
//! `{name, version, fingerprint, schema}` services write at startup) before it is deployed:
//!
//! - a version registered with another fingerprint is an error (the service would not start,
//!   and must not: its readers and writers disagree on the shape);
//! - a version new to the registry that the binary cannot upcast to from the newest version
//!   registered below it is a warning (its handlers cannot take the messages of that version);
//! - otherwise one line says what was checked.

use std::collections::{BTreeMap, BTreeSet};

use clap::Args;
use futures_util::StreamExt;
use serde_json::Value;

use crate::catalog::{Described, EventInfo};
use crate::connect::{Broker, NatsArgs};
use crate::{Failure, Result};

/// What `eda schemas check` takes besides the binary and the connection.
#[derive(Debug, Args)]
pub struct CheckArgs {
    /// The schema registry bucket.
    #[arg(long, value_name = "NAME", default_value = "EDA_SCHEMAS")]
    pub bucket: String,
}

/// A registry entry, as far as the check reads it.
#[derive(Debug, Clone, PartialEq)]
struct Registered {
    /// Empty when the value is not eda's JSON.
    fingerprint: String,
    /// The schema's `title`: the Rust type that registered it.
    type_name: Option<String>,
    schema: Value,
}

/// What the check found.
#[derive(Debug, Default, PartialEq)]
struct Report {
    /// Versions registered with the binary's fingerprint.
    same: usize,
    /// Versions the registry does not have yet.
    new: Vec<String>,
    /// Versions registered with another fingerprint: errors.
    conflicts: Vec<String>,
    /// New versions without an upcast path from the newest registered one below them.
    warnings: Vec<String>,
}

/// `eda schemas check <binary>`, the binary's catalog already read.
pub async fn check(described: Described, nats: NatsArgs, args: CheckArgs) -> Result<()> {
    let broker = nats.connect().await?;
    let registry = read_registry(&broker, &args.bucket).await?;
    let report = compare(&described.catalog.events, &registry, &args.bucket);
    for warning in &report.warnings {
        eprintln!("warning: {warning}");
    }
    let service = &described.catalog.service;
    if !report.conflicts.is_empty() {
        return Err(Failure::new(format!(
            "`{}` (service `{service}`) disagrees with the schema registry `{}` on {}: {}",
            described.binary,
            args.bucket,
            broker.url,
            report.conflicts.join("; ")
        )));
    }
    let checked = report.same + report.new.len();
    let mut line = format!(
        "ok: `{}` (service `{service}`): {checked} event version{} checked against `{}` on {}: {} registered with the same schema, {} new",
        described.binary,
        plural(checked),
        args.bucket,
        broker.url,
        report.same,
        report.new.len()
    );
    if !report.new.is_empty() {
        line.push_str(&format!(" ({})", report.new.join(", ")));
    }
    if !report.warnings.is_empty() {
        line.push_str(&format!(
            "; {} warning{}",
            report.warnings.len(),
            plural(report.warnings.len())
        ));
    }
    println!("{line}");
    Ok(())
}

fn plural(n: usize) -> &'static str {
    if n == 1 {
        ""
    } else {
        "s"
    }
}

/// Every entry of the registry by event name and version; a clear error when the server has
/// no eda streams or no registry.
async fn read_registry(
    broker: &Broker,
    bucket: &str,
) -> Result<BTreeMap<(String, u32), Registered>> {
    broker.eda_streams().await?;
    if broker.stream(&format!("KV_{bucket}")).await?.is_none() {
        return Err(Failure::new(format!(
            "no schema registry `{bucket}` on {} (eda's streams are there): no eda service has started against it yet, or the registry has another name (--bucket)",
            broker.url
        )));
    }
    let failed = |e: &dyn std::fmt::Display| {
        broker.broker_error(&format!("cannot read the schema registry `{bucket}`"), e)
    };
    let store = broker
        .js
        .get_key_value(bucket)
        .await
        .map_err(|e| failed(&e))?;
    let mut keys = store.keys().await.map_err(|e| failed(&e))?;
    let mut registry = BTreeMap::new();
    while let Some(key) = keys.next().await {
        let key = key.map_err(|e| failed(&e))?;
        let Some((name, version)) = parse_key(&key) else {
            continue;
        };
        let Some(value) = store.get(&key).await.map_err(|e| failed(&e))? else {
            continue;
        };
        registry.insert((name, version), registered(&value));
    }
    Ok(registry)
}

/// `user.created.v2` as (`user.created`, 2).
fn parse_key(key: &str) -> Option<(String, u32)> {
    let (name, version) = key.rsplit_once(".v")?;
    let version = version.parse().ok().filter(|v| *v > 0)?;
    Some((name.to_owned(), version))
}

fn registered(value: &[u8]) -> Registered {
    let json: Value = serde_json::from_slice(value).unwrap_or(Value::Null);
    Registered {
        fingerprint: json["fingerprint"].as_str().unwrap_or_default().to_owned(),
        type_name: json["schema"]["title"].as_str().map(str::to_owned),
        schema: json["schema"].clone(),
    }
}

/// The binary's event versions against the registry.
fn compare(
    events: &[EventInfo],
    registry: &BTreeMap<(String, u32), Registered>,
    bucket: &str,
) -> Report {
    let mut report = Report::default();
    let mut seen = BTreeSet::new();
    let ours: BTreeMap<(&str, u32), &EventInfo> = events
        .iter()
        .map(|e| ((e.name.as_str(), e.version), e))
        .collect();
    for event in events {
        if !seen.insert((event.name.as_str(), event.version)) {
            continue;
        }
        let what = format!("`{}` v{}", event.name, event.version);
        match registry.get(&(event.name.clone(), event.version)) {
            Some(r) if r.fingerprint == event.fingerprint => report.same += 1,
            Some(r) => report.conflicts.push(conflict(event, r, bucket)),
            None => {
                report
                    .new
                    .push(format!("{} v{}", event.name, event.version));
                let previous = registry
                    .keys()
                    .filter(|(name, v)| *name == event.name && *v < event.version)
                    .map(|(_, v)| *v)
                    .max();
                let Some(previous) = previous else {
                    continue;
                };
                // Each version down to the registered one must upcast from the one below.
                let broken = (previous + 1..=event.version).rev().find_map(|v| {
                    match ours.get(&(event.name.as_str(), v)) {
                        None => Some(format!("this binary has no v{v}")),
                        Some(e) if e.upcast_from.is_none() => Some(format!(
                            "`{}` (v{v}) has no `upcast_from` v{}",
                            e.type_name,
                            v - 1
                        )),
                        Some(_) => None,
                    }
                });
                if let Some(broken) = broken {
                    report.warnings.push(format!(
                        "{what} is new to `{bucket}`, whose newest earlier version is v{previous}, and this binary cannot upcast v{previous} to v{}: {broken}; its handlers of v{} cannot take v{previous} messages still in the stream or sent by older services",
                        event.version, event.version
                    ));
                }
            }
        }
    }
    report
}

/// One conflict: both fingerprints, both types, and the top-level fields that differ.
fn conflict(event: &EventInfo, registered: &Registered, bucket: &str) -> String {
    let theirs = match (&registered.type_name, registered.fingerprint.is_empty()) {
        (_, true) => format!("`{bucket}` holds a value that is not an eda schema record"),
        (Some(t), false) => format!(
            "`{bucket}` has fingerprint `{}` (type `{t}`)",
            registered.fingerprint
        ),
        (None, false) => format!("`{bucket}` has fingerprint `{}`", registered.fingerprint),
    };
    let mut text = format!(
        "`{}` v{}: this binary's fingerprint is `{}` (type `{}`), {theirs}",
        event.name, event.version, event.fingerprint, event.type_name
    );
    let differs = field_differences(&event.schema, &registered.schema);
    if !differs.is_empty() {
        text.push_str(&format!(" ({differs})"));
    }
    text.push_str(" — give the changed schema a new version");
    text
}

/// `fields only here: a; only registered: b; changed: c`, from the top-level properties.
fn field_differences(ours: &Value, theirs: &Value) -> String {
    let (Some(a), Some(b)) = (
        ours["properties"].as_object(),
        theirs["properties"].as_object(),
    ) else {
        return String::new();
    };
    let list = |names: Vec<&String>| {
        names
            .iter()
            .map(|n| format!("`{n}`"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let mut parts = Vec::new();
    let only_ours: Vec<&String> = a.keys().filter(|k| !b.contains_key(*k)).collect();
    let only_theirs: Vec<&String> = b.keys().filter(|k| !a.contains_key(*k)).collect();
    let changed: Vec<&String> = a
        .iter()
        .filter(|(k, v)| b.get(*k).is_some_and(|w| w != *v))
        .map(|(k, _)| k)
        .collect();
    if !only_ours.is_empty() {
        parts.push(format!("fields only here: {}", list(only_ours)));
    }
    if !only_theirs.is_empty() {
        parts.push(format!("only registered: {}", list(only_theirs)));
    }
    if !changed.is_empty() {
        parts.push(format!("changed: {}", list(changed)));
    }
    parts.join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn event(name: &str, version: u32, fingerprint: &str, upcast: Option<&str>) -> EventInfo {
        serde_json::from_value(json!({
            "name": name, "version": version, "type_name": format!("T{version}"),
            "fingerprint": fingerprint, "upcast_from": upcast,
            "schema": {"title": format!("T{version}"), "properties": {"id": {"type": "integer"}}},
        }))
        .unwrap()
    }

    fn registry(entries: &[(&str, u32, &str)]) -> BTreeMap<(String, u32), Registered> {
        entries
            .iter()
            .map(|(name, version, fingerprint)| {
                let value = json!({
                    "name": name, "version": version, "fingerprint": fingerprint,
                    "schema": {"title": "Old", "properties": {"id": {"type": "string"}, "gone": {}}},
                });
                (
                    ((*name).to_owned(), *version),
                    registered(&serde_json::to_vec(&value).unwrap()),
                )
            })
            .collect()
    }

    #[test]
    fn keys_name_an_event_version() {
        assert_eq!(
            parse_key("user.created.v2"),
            Some(("user.created".into(), 2))
        );
        assert_eq!(parse_key("user.created"), None);
        assert_eq!(parse_key("a.v0"), None);
        assert_eq!(parse_key("a.vx"), None);
    }

    #[test]
    fn same_new_conflicting_and_unreachable_versions() {
        let events = [
            event("a", 1, "fa1", None),
            event("a", 2, "fa2", Some("T1")),
            event("b", 1, "fb1", None),
            event("c", 3, "fc3", None),
            event("d", 2, "fd2", Some("T1")),
        ];
        let registry = registry(&[
            ("a", 1, "fa1"),
            ("b", 1, "other"),
            ("c", 1, "fc1"),
            ("d", 1, "fd1"),
        ]);
        let report = compare(&events, &registry, "EDA_SCHEMAS");
        assert_eq!(report.same, 1);
        assert_eq!(report.new, ["a v2", "c v3", "d v2"]);
        assert_eq!(report.conflicts.len(), 1);
        let conflict = &report.conflicts[0];
        for expected in [
            "`b` v1: this binary's fingerprint is `fb1` (type `T1`)",
            "`EDA_SCHEMAS` has fingerprint `other` (type `Old`)",
            "only registered: `gone`; changed: `id`",
            "give the changed schema a new version",
        ] {
            assert!(conflict.contains(expected), "{expected} in {conflict}");
        }
        // `a` v2 and `d` v2 upcast from v1; `c` v3 has no path from v1.
        assert_eq!(report.warnings.len(), 1, "{:?}", report.warnings);
        assert!(
            report.warnings[0]
                .contains("`c` v3 is new to `EDA_SCHEMAS`, whose newest earlier version is v1")
                && report.warnings[0].contains("`T3` (v3) has no `upcast_from` v2"),
            "{}",
            report.warnings[0]
        );
    }
}
