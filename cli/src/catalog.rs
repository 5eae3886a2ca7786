//! `eda catalog` and `eda permissions`: what eda binaries say about themselves when run with
//! `EDA_CATALOG=json` (one `ServiceCatalog` document on stdout, then exit 0), without a broker.

use std::collections::BTreeMap;
use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::dlq::to_json;
use crate::{Failure, Result};

/// How many lines of a failed binary's stderr an error shows.
const STDERR_LINES: usize = 10;

/// The parts of a `ServiceCatalog` the merge reads (the whole document is kept as it came).
#[derive(Debug, Deserialize)]
pub(crate) struct Catalog {
    pub(crate) service: String,
    #[serde(default = "default_subject_prefix")]
    pub(crate) subject_prefix: String,
    #[serde(default)]
    pub(crate) handlers: Vec<Handler>,
    #[serde(default)]
    pub(crate) events: Vec<EventInfo>,
    #[serde(default)]
    pub(crate) emits: Vec<String>,
    pub(crate) permissions: eda::Permissions,
}

#[derive(Debug, Deserialize)]
pub(crate) struct Handler {
    pub(crate) name: String,
    pub(crate) subject: String,
    pub(crate) event: Option<EventRef>,
    pub(crate) emits: Option<Vec<String>>,
}

#[derive(Debug, Deserialize)]
pub(crate) struct EventRef {
    pub(crate) name: String,
    pub(crate) version: u32,
    pub(crate) oldest_version: Option<u32>,
}

#[derive(Debug, Deserialize)]
pub(crate) struct EventInfo {
    pub(crate) name: String,
    pub(crate) version: u32,
    #[serde(default)]
    pub(crate) type_name: String,
    #[serde(default)]
    pub(crate) fingerprint: String,
    #[serde(default)]
    pub(crate) schema: Value,
    /// The Rust type it upcasts from (one version lower), if any.
    #[serde(default)]
    pub(crate) upcast_from: Option<String>,
}

/// One binary's catalog: the document as printed and what was read from it.
#[derive(Debug)]
pub(crate) struct Described {
    pub(crate) binary: String,
    pub(crate) document: Value,
    pub(crate) catalog: Catalog,
}

fn default_subject_prefix() -> String {
    eda::Topology::default().subject_prefix
}

/// Runs `binary` with `EDA_CATALOG=json` (the rest of the environment as it is) and reads its
/// catalog; an error names the binary and shows the first lines of its stderr.
pub(crate) fn describe(binary: &str, timeout: Duration) -> Result<Described> {
    let mut child = Command::new(binary)
        .env("EDA_CATALOG", "json")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| Failure::new(format!("cannot run `{binary}`: {e}")))?;
    let mut stdout = child.stdout.take();
    let mut stderr = child.stderr.take();
    let out = std::thread::spawn(move || {
        let mut buffer = Vec::new();
        if let Some(pipe) = stdout.as_mut() {
            let _ = pipe.read_to_end(&mut buffer);
        }
        buffer
    });
    let err = std::thread::spawn(move || {
        let mut buffer = Vec::new();
        if let Some(pipe) = stderr.as_mut() {
            let _ = pipe.read_to_end(&mut buffer);
        }
        buffer
    });
    let deadline = Instant::now() + timeout;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break Some(status),
            Ok(None) if Instant::now() >= deadline => {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(20)),
            Err(e) => return Err(Failure::new(format!("cannot wait for `{binary}`: {e}"))),
        }
    };
    let stdout = out.join().unwrap_or_default();
    let stderr = String::from_utf8_lossy(&err.join().unwrap_or_default()).into_owned();
    let stderr_head = || {
        let lines: Vec<&str> = stderr
            .lines()
            .filter(|l| !l.trim().is_empty())
            .take(STDERR_LINES)
            .collect();
        match lines.is_empty() {
            true => " (nothing on stderr)".to_owned(),
            false => format!("; its stderr begins:\n  {}", lines.join("\n  ")),
        }
    };
    let Some(status) = status else {
        return Err(Failure::new(format!(
            "`{binary}` printed no catalog within {} with EDA_CATALOG=json (is it an eda service?){}",
            humantime::format_duration(timeout),
            stderr_head()
        )));
    };
    if !status.success() {
        return Err(Failure::new(format!(
            "`{binary}` failed with EDA_CATALOG=json ({status}){}",
            stderr_head()
        )));
    }
    let document: Value = serde_json::from_slice(&stdout).map_err(|e| {
        Failure::new(format!(
            "`{binary}` printed no JSON catalog with EDA_CATALOG=json ({e}): is it an eda service built with this eda version?{}",
            stderr_head()
        ))
    })?;
    let catalog = Catalog::deserialize(&document).map_err(|e| {
        Failure::new(format!(
            "`{binary}` printed JSON that is not an eda service catalog: {e}"
        ))
    })?;
    Ok(Described {
        binary: binary.to_owned(),
        document,
        catalog,
    })
}

/// A handler in the merged catalog.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub(crate) struct HandlerRef {
    pub(crate) service: String,
    pub(crate) handler: String,
}

/// One event version in the merged catalog.
#[derive(Debug, Serialize)]
pub(crate) struct MergedEvent {
    pub(crate) name: String,
    pub(crate) version: u32,
    pub(crate) type_name: String,
    pub(crate) fingerprint: String,
    pub(crate) schema: Value,
    /// The services whose binaries hold this version.
    pub(crate) defined_in: Vec<String>,
    /// The services that publish it (declared with `emits`).
    pub(crate) emitted_by: Vec<String>,
    /// The handlers it is delivered to.
    pub(crate) handled_by: Vec<HandlerRef>,
}

/// What `eda catalog` prints.
#[derive(Debug, Serialize)]
pub(crate) struct Merged {
    pub(crate) services: Vec<Value>,
    pub(crate) events: Vec<MergedEvent>,
    /// One line per event version whose schema differs between binaries.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub(crate) conflicts: Vec<String>,
}

/// Whether NATS subject pattern `pattern` (`*` one token, `>` the rest) matches `subject`.
fn subject_matches(pattern: &str, subject: &str) -> bool {
    let mut subject = subject.split('.');
    for token in pattern.split('.') {
        match (token, subject.next()) {
            (">", Some(_)) => return true,
            ("*", Some(_)) => {}
            (t, Some(s)) if t == s => {}
            _ => return false,
        }
    }
    subject.next().is_none()
}

/// Whether `handler` gets messages of `event` version `version`: a typed handler every
/// version from its oldest (upcast) to its own; a wildcard (raw) handler every version of
/// every name its subject matches.
fn handles(handler: &Handler, name: &str, version: u32) -> bool {
    match &handler.event {
        Some(e) => {
            e.name == name && (e.oldest_version.unwrap_or(e.version)..=e.version).contains(&version)
        }
        None => subject_matches(&handler.subject, name),
    }
}

fn merge(described: Vec<Described>) -> Merged {
    let mut events: BTreeMap<(String, u32), MergedEvent> = BTreeMap::new();
    let mut conflicts = Vec::new();
    for d in &described {
        let c = &d.catalog;
        for e in &c.events {
            let merged = events
                .entry((e.name.clone(), e.version))
                .or_insert_with(|| MergedEvent {
                    name: e.name.clone(),
                    version: e.version,
                    type_name: e.type_name.clone(),
                    fingerprint: e.fingerprint.clone(),
                    schema: e.schema.clone(),
                    defined_in: Vec::new(),
                    emitted_by: Vec::new(),
                    handled_by: Vec::new(),
                });
            if merged.fingerprint != e.fingerprint {
                conflicts.push(format!(
                    "{} v{}: fingerprint {} in service `{}`, {} in service `{}` ({})",
                    e.name,
                    e.version,
                    merged.fingerprint,
                    merged.defined_in.first().map_or("?", String::as_str),
                    e.fingerprint,
                    c.service,
                    d.binary
                ));
            }
            push_unique(&mut merged.defined_in, c.service.clone());
        }
    }
    for d in &described {
        let c = &d.catalog;
        // A service publishes the newest version of each event it declares (the older ones
        // are compiled in to be upcast).
        let mut emitted: Vec<&str> = c.emits.iter().map(String::as_str).collect();
        for h in &c.handlers {
            emitted.extend(h.emits.iter().flatten().map(String::as_str));
        }
        for name in emitted {
            let newest = c
                .events
                .iter()
                .filter(|e| e.name == name)
                .map(|e| e.version)
                .max();
            if let Some(merged) = newest.and_then(|v| events.get_mut(&(name.to_owned(), v))) {
                push_unique(&mut merged.emitted_by, c.service.clone());
            }
        }
        for h in &c.handlers {
            for ((name, version), merged) in events.iter_mut() {
                if handles(h, name, *version) {
                    let r = HandlerRef {
                        service: c.service.clone(),
                        handler: h.name.clone(),
                    };
                    if !merged.handled_by.contains(&r) {
                        merged.handled_by.push(r);
                    }
                }
            }
        }
    }
    for merged in events.values_mut() {
        merged.defined_in.sort();
        merged.emitted_by.sort();
        merged.handled_by.sort();
    }
    let services = described
        .into_iter()
        .map(|d| {
            let mut document = d.document;
            if let Value::Object(map) = &mut document {
                map.insert("binary".to_owned(), Value::String(d.binary));
            }
            document
        })
        .collect();
    Merged {
        services,
        events: events.into_values().collect(),
        conflicts,
    }
}

fn push_unique(list: &mut Vec<String>, value: String) {
    if !list.contains(&value) {
        list.push(value);
    }
}

/// Runs `binaries` and merges their catalogs; schema conflicts are warned about on stderr.
pub(crate) fn load(binaries: &[String], timeout: Duration) -> Result<Merged> {
    let described = binaries
        .iter()
        .map(|b| describe(b, timeout))
        .collect::<Result<Vec<_>>>()?;
    let merged = merge(described);
    for conflict in &merged.conflicts {
        eprintln!("warning: schema conflict: {conflict}");
    }
    Ok(merged)
}

/// `eda catalog <binary>...`.
pub fn catalog(binaries: &[String], timeout: Duration) -> Result<()> {
    println!("{}", to_json(&load(binaries, timeout)?));
    Ok(())
}

/// The merged catalog of `binaries` as the JSON `eda catalog` prints (for `--html`).
pub fn merged_json(binaries: &[String], timeout: Duration) -> Result<Value> {
    serde_json::to_value(load(binaries, timeout)?)
        .map_err(|e| Failure::new(format!("cannot represent the merged catalog as JSON: {e}")))
}

/// `eda permissions <binary> [<service>]`.
pub fn permissions(binary: &str, service: Option<&str>, timeout: Duration) -> Result<()> {
    let described = describe(binary, timeout)?;
    let runs = &described.catalog.service;
    if let Some(wanted) = service {
        if wanted != runs {
            return Err(Failure::new(format!(
                "`{binary}` runs service `{runs}`, not `{wanted}`"
            )));
        }
    }
    println!("{}", described.catalog.permissions);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subject_patterns_match_like_nats() {
        assert!(subject_matches("payment.*", "payment.failed"));
        assert!(!subject_matches("payment.*", "payment.card.failed"));
        assert!(subject_matches("payment.>", "payment.card.failed"));
        assert!(!subject_matches("payment.>", "payment"));
        assert!(subject_matches("order.placed", "order.placed"));
        assert!(!subject_matches("order.placed", "order.placed.v2"));
    }

    fn described(service: &str, json: Value) -> Described {
        let mut document = json;
        document["service"] = Value::String(service.into());
        document["permissions"] = serde_json::json!({
            "service": service, "publish": [], "subscribe": ["_INBOX.>"], "undeclared": []
        });
        Described {
            binary: format!("bin/{service}"),
            catalog: Catalog::deserialize(&document).unwrap(),
            document,
        }
    }

    #[test]
    fn events_are_merged_by_name_and_version_with_emitters_and_handlers() {
        let event = |name: &str, version: u32| serde_json::json!({"name": name, "version": version, "fingerprint": "f"});
        let shop = described(
            "shop",
            serde_json::json!({
                "events": [event("order.placed", 1), event("order.placed", 2)],
                "emits": ["order.placed"],
                "handlers": []
            }),
        );
        let billing = described(
            "billing",
            serde_json::json!({
                "events": [event("order.placed", 1), event("order.placed", 2)],
                "handlers": [
                    {"name": "bill", "subject": "order.placed",
                     "event": {"name": "order.placed", "version": 2, "oldest_version": 1}},
                    {"name": "audit", "subject": "order.*", "event": null}
                ]
            }),
        );
        let merged = merge(vec![shop, billing]);
        assert_eq!(merged.events.len(), 2);
        let v2 = &merged.events[1];
        assert_eq!((v2.name.as_str(), v2.version), ("order.placed", 2));
        assert_eq!(v2.emitted_by, ["shop"]);
        assert_eq!(v2.defined_in, ["billing", "shop"]);
        let handlers: Vec<&str> = v2.handled_by.iter().map(|h| h.handler.as_str()).collect();
        assert_eq!(handlers, ["audit", "bill"]);
        assert!(merged.events[0].emitted_by.is_empty(), "v1 is only upcast");
        assert_eq!(merged.services[0]["binary"], "bin/shop");
        assert!(merged.conflicts.is_empty());
    }
}
