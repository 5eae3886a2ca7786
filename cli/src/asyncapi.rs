//! `eda asyncapi`: the merged catalog of service binaries as one AsyncAPI 3.0.0 document.
//!
//! - a channel per subject: `<prefix>.<event name>`, and one per wildcard subscription;
//! - a message per event version (`user.created.v2`): JSON payload, eda's headers;
//! - a `receive` operation per handler, with its durable consumer as the NATS `queue`;
//! - a `send` operation per event a service emits (the version it publishes).
//!
//! Payload schemas are schemars' JSON Schema 2020-12 turned into draft-07 (what AsyncAPI
//! parsers read): schemars' own draft-07 transforms, `$schema` dropped, and `$defs` moved to
//! `components/schemas` with every `$ref` pointed there (a name taken by a different schema
//! of another event is qualified with the event: `user.created.v2.Address`).

use std::collections::{BTreeMap, BTreeSet};

use clap::Args;
use schemars::transform::{
    RemoveRefSiblings, ReplacePrefixItems, ReplaceUnevaluatedProperties, Transform,
};
use serde::ser::{Serialize, SerializeMap, Serializer};
use serde_json::{json, Map, Value};

use crate::catalog::{self, Catalog, Merged, MergedEvent};
use crate::{yaml, Failure, Result};

/// The payloads' schema format: JSON Schema draft-07.
const SCHEMA_FORMAT: &str = "application/schema+json;version=draft-07";
/// The version of the AsyncAPI NATS operation binding.
const NATS_BINDING_VERSION: &str = "0.1.0";
/// The key of eda's headers schema in `components/schemas` (no Rust type is named so).
const HEADERS: &str = "eda-headers";

/// What `eda asyncapi` takes besides the binaries.
#[derive(Debug, Args)]
pub struct AsyncApiArgs {
    /// `info.title` (default: the services' names).
    #[arg(long)]
    pub title: Option<String>,
    /// `info.version`, the version of the document.
    #[arg(long, value_name = "VERSION", default_value = "1.0.0")]
    pub api_version: String,
    /// The NATS server named in `servers` (a comma-separated list for a cluster); never
    /// with credentials.
    #[arg(long, value_name = "URL", default_value = "nats://localhost:4222")]
    pub server_url: String,
    /// Print JSON instead of YAML.
    #[arg(long)]
    pub json: bool,
}

/// `eda asyncapi <binary>...`.
pub fn asyncapi(
    binaries: &[String],
    timeout: std::time::Duration,
    args: &AsyncApiArgs,
) -> Result<()> {
    let merged = catalog::load(binaries, timeout)?;
    let document = build(&merged, args)?;
    if args.json {
        // A map of `Value`s always serializes.
        let text = serde_json::to_string_pretty(&Ordered(&document)).unwrap_or_default();
        println!("{text}");
    } else {
        print!("{}", yaml::document(&document));
    }
    Ok(())
}

/// The document's top-level entries in the order AsyncAPI documents are written.
struct Ordered<'a>(&'a [(&'static str, Value)]);

impl Serialize for Ordered<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(self.0.len()))?;
        for (key, value) in self.0 {
            map.serialize_entry(key, value)?;
        }
        map.end()
    }
}

/// One service: its catalog and its document as printed (for the handlers' options).
struct Service<'a> {
    catalog: Catalog,
    document: &'a Value,
}

fn build(merged: &Merged, args: &AsyncApiArgs) -> Result<Vec<(&'static str, Value)>> {
    let services = merged
        .services
        .iter()
        .map(|document| {
            serde::Deserialize::deserialize(document)
                .map(|catalog| Service { catalog, document })
                .map_err(|e| Failure::new(format!("cannot read a service catalog: {e}")))
        })
        .collect::<Result<Vec<Service>>>()?;
    let prefix = subject_prefix(&services)?;
    let mut names: Vec<&str> = services
        .iter()
        .map(|s| s.catalog.service.as_str())
        .collect();
    names.sort_unstable();
    names.dedup();
    let upcasts: BTreeMap<(&str, u32), &str> = services
        .iter()
        .flat_map(|s| &s.catalog.events)
        .filter_map(|e| Some(((e.name.as_str(), e.version), e.upcast_from.as_deref()?)))
        .collect();

    let mut schemas = Map::new();
    schemas.insert(HEADERS.to_owned(), headers_schema());
    let mut messages = Map::new();
    let mut channels: BTreeMap<String, Value> = BTreeMap::new();
    for event in &merged.events {
        let id = message_id(&event.name, event.version);
        let payload = payload(event, &id, &mut schemas)?;
        let upcast = upcasts.get(&(event.name.as_str(), event.version)).copied();
        messages.insert(id.clone(), message(event, &id, payload, upcast));
        let channel = channels.entry(event.name.clone()).or_insert_with(|| {
            json!({
                "address": format!("{prefix}.{}", event.name),
                "title": event.name,
                "description": format!("Events `{}`, every version.", event.name),
                "messages": {},
            })
        });
        channel["messages"][&id] = json!({"$ref": format!("#/components/messages/{id}")});
    }

    let mut operations = Map::new();
    for service in &services {
        let c = &service.catalog;
        for handler in &c.handlers {
            let handled: Vec<&MergedEvent> = merged
                .events
                .iter()
                .filter(|e| {
                    e.handled_by
                        .iter()
                        .any(|h| h.service == c.service && h.handler == handler.name)
                })
                .collect();
            let channel_id = match &handler.event {
                Some(event) => event.name.clone(),
                None => {
                    let id = wildcard_channel_id(&handler.subject);
                    let channel = channels.entry(id.clone()).or_insert_with(|| {
                        json!({
                            "address": format!("{prefix}.{}", handler.subject),
                            "title": handler.subject,
                            "description": format!(
                                "Every event whose name matches `{}` (a wildcard subscription).",
                                handler.subject
                            ),
                            "messages": {},
                        })
                    });
                    for event in &handled {
                        let id = message_id(&event.name, event.version);
                        channel["messages"][&id] =
                            json!({"$ref": format!("#/components/messages/{id}")});
                    }
                    id
                }
            };
            let refs: Vec<Value> = handled
                .iter()
                .map(|e| message_ref(&channel_id, &message_id(&e.name, e.version)))
                .collect();
            let options = service.document["handlers"]
                .as_array()
                .and_then(|hs| hs.iter().find(|h| h["name"] == handler.name.as_str()))
                .map(|h| h["options"].clone())
                .unwrap_or(Value::Null);
            let what = match &handler.event {
                Some(e) => match e.oldest_version {
                    Some(oldest) if oldest < e.version => format!(
                        "`{}` v{} (older versions from v{oldest} upcast)",
                        e.name, e.version
                    ),
                    _ => format!("`{}` v{}", e.name, e.version),
                },
                None => format!("every event matching `{}`", handler.subject),
            };
            let mut operation = json!({
                "action": "receive",
                "channel": {"$ref": format!("#/channels/{channel_id}")},
                "messages": refs,
                "title": format!("{}/{}", c.service, handler.name),
                "summary": format!(
                    "Handler `{}` of service `{}` takes {what}.",
                    handler.name, c.service
                ),
                "tags": [{"name": c.service}],
                "bindings": {"nats": {
                    "queue": format!("{}__{}", c.service, handler.name),
                    "bindingVersion": NATS_BINDING_VERSION,
                }},
            });
            if !options.is_null() {
                operation["x-eda-options"] = options;
            }
            operations.insert(format!("{}.{}", c.service, handler.name), operation);
        }
    }
    for event in &merged.events {
        let id = message_id(&event.name, event.version);
        for service in &event.emitted_by {
            operations.insert(
                format!("{service}.send.{}", event.name),
                json!({
                    "action": "send",
                    "channel": {"$ref": format!("#/channels/{}", event.name)},
                    "messages": [message_ref(&event.name, &id)],
                    "title": format!("{service} sends {}", event.name),
                    "summary": format!(
                        "Service `{service}` publishes `{}` v{}.",
                        event.name, event.version
                    ),
                    "tags": [{"name": service}],
                }),
            );
        }
    }

    let title = args
        .title
        .clone()
        .unwrap_or_else(|| format!("eda services: {}", names.join(", ")));
    let description = format!(
        "The events of the eda services {} on NATS JetStream: a channel per subject \
         (`{prefix}.<event name>`), a message per event version (a JSON payload and eda's \
         headers), a `receive` operation per handler (its durable consumer \
         `<service>__<handler>` as the NATS queue) and a `send` operation per event a service \
         emits. Generated by `eda asyncapi` from the services' catalogs.",
        names
            .iter()
            .map(|n| format!("`{n}`"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    Ok(vec![
        ("asyncapi", json!("3.0.0")),
        (
            "info",
            json!({"title": title, "version": args.api_version, "description": description}),
        ),
        ("servers", servers(&args.server_url)?),
        ("defaultContentType", json!("application/json")),
        ("channels", Value::Object(channels.into_iter().collect())),
        ("operations", Value::Object(operations)),
        (
            "components",
            json!({
                "messages": messages,
                "schemas": schemas,
                "correlationIds": {"eda": {
                    "location": "$message.header#/Eda-Correlation-Id",
                    "description": "The id of the event that started the flow; absent, the event's own id (`Nats-Msg-Id`).",
                }},
            }),
        ),
    ])
}

/// The subject prefix all services share.
fn subject_prefix(services: &[Service]) -> Result<String> {
    let mut prefixes: Vec<(&str, &str)> = services
        .iter()
        .map(|s| {
            (
                s.catalog.subject_prefix.as_str(),
                s.catalog.service.as_str(),
            )
        })
        .collect();
    prefixes.sort_unstable();
    prefixes.dedup_by(|a, b| a.0 == b.0);
    match prefixes.as_slice() {
        [(prefix, _)] => Ok((*prefix).to_owned()),
        _ => Err(Failure::new(format!(
            "the services publish under different subject prefixes ({}), so they do not see each other's events: run `eda asyncapi` once per prefix",
            prefixes
                .iter()
                .map(|(p, s)| format!("`{p}` in `{s}`"))
                .collect::<Vec<_>>()
                .join(", ")
        ))),
    }
}

fn message_id(name: &str, version: u32) -> String {
    format!("{name}.v{version}")
}

fn message_ref(channel: &str, message: &str) -> Value {
    json!({"$ref": format!("#/channels/{channel}/messages/{message}")})
}

/// The id of the channel of a wildcard subscription: `*` is `ANY`, `>` is `ALL` (event names
/// are lowercase, so these never clash with an event's channel).
fn wildcard_channel_id(subject: &str) -> String {
    subject
        .split('.')
        .map(|token| match token {
            "*" => "ANY",
            ">" => "ALL",
            other => other,
        })
        .collect::<Vec<_>>()
        .join(".")
}

fn message(event: &MergedEvent, id: &str, payload: Value, upcast: Option<&str>) -> Value {
    let mut summary = format!("Rust type `{}`", event.type_name);
    if let Some(from) = upcast {
        summary.push_str(&format!(
            "; upcast from v{} (`{from}`) by handlers of this version",
            event.version.saturating_sub(1)
        ));
    }
    summary.push('.');
    let headers = if event.version == 1 {
        json!({"$ref": format!("#/components/schemas/{HEADERS}")})
    } else {
        let version = event.version.to_string();
        json!({
            "type": "object",
            "allOf": [
                {"$ref": format!("#/components/schemas/{HEADERS}")},
                {"properties": {"Eda-Version": {
                    "const": version,
                    "description": format!("Sent as `{version}`: without it the message is read as version 1."),
                }}},
            ],
        })
    };
    let mut message = json!({
        "name": id,
        "title": format!("{} v{}", event.name, event.version),
        "summary": summary,
        "contentType": "application/json",
        "headers": headers,
        "payload": {"schemaFormat": SCHEMA_FORMAT, "schema": payload},
        "correlationId": {"$ref": "#/components/correlationIds/eda"},
        "x-eda-event": event.name,
        "x-eda-version": event.version,
        "x-eda-type": event.type_name,
        "x-eda-fingerprint": event.fingerprint,
    });
    if upcast.is_some() {
        message["x-eda-upcast-from"] = json!(message_id(&event.name, event.version - 1));
    }
    message
}

/// eda's headers (README "On the wire"): all optional when received.
fn headers_schema() -> Value {
    let string = |description: &str| json!({"type": "string", "description": description});
    json!({
        "type": "object",
        "description": "The NATS headers of an eda event. Every one is optional when received (plain NATS clients send none); eda sends `Nats-Msg-Id` and `Eda-Source` always and the others when they carry something.",
        "properties": {
            "Nats-Msg-Id": string("The event id (eda: a UUID v7; a handler's follow-ups: derived from the causing event, the handler and an index); JetStream drops a repeat within its duplicate window. Absent: the stream sequence is the id."),
            "Eda-Source": string("The publishing service."),
            "Eda-Version": {
                "type": "string",
                "pattern": "^[1-9][0-9]*$",
                "description": "The event version, sent when it is not 1 (absent: version 1).",
            },
            "Eda-Correlation-Id": string("The id of the event that started the flow, sent when it differs from the event id (absent: the event id)."),
            "Eda-Causation-Id": string("The id of the event whose handler published this one (absent: a root event)."),
            "Eda-Time": {
                "type": "string",
                "format": "date-time",
                "description": "When the event happened (RFC 3339), sent when it was set explicitly (absent: when the broker stored the message).",
            },
            "traceparent": {
                "type": "string",
                "pattern": "^[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$",
                "description": "W3C trace context, sent when the publish happens inside a trace.",
            },
        },
        "additionalProperties": {"type": "string"},
    })
}

/// The `servers` entries of `urls` (comma-separated `nats://` or `tls://` URLs).
fn servers(urls: &str) -> Result<Value> {
    let mut servers = Map::new();
    for (i, url) in urls.split(',').map(str::trim).enumerate() {
        let (scheme, rest) = url.split_once("://").unwrap_or(("", url));
        let tls = match scheme {
            "nats" => false,
            "tls" => true,
            _ => {
                return Err(Failure::new(format!(
                    "--server-url `{url}`: expected a nats:// or tls:// URL such as nats://nats.example.com:4222"
                )))
            }
        };
        let host = rest.split('/').next().unwrap_or_default();
        if host.contains('@') {
            return Err(Failure::new(format!(
                "--server-url `{scheme}://***@{}`: leave the credentials out of the document",
                host.rsplit('@').next().unwrap_or_default()
            )));
        }
        if host.is_empty() {
            return Err(Failure::new(format!(
                "--server-url `{url}`: no host (e.g. nats://nats.example.com:4222)"
            )));
        }
        let id = match i {
            0 => "nats".to_owned(),
            n => format!("nats-{}", n + 1),
        };
        let description = match tls {
            true => "NATS with JetStream, over TLS.",
            false => "NATS with JetStream.",
        };
        servers.insert(
            id,
            json!({"host": host, "protocol": "nats", "description": description}),
        );
    }
    Ok(Value::Object(servers))
}

/// The payload schema of `event` as draft-07, its definitions moved into `schemas`.
fn payload(event: &MergedEvent, id: &str, schemas: &mut Map<String, Value>) -> Result<Value> {
    let mut root = event.schema.clone();
    let mut defs: BTreeMap<String, Value> = BTreeMap::new();
    if let Value::Object(map) = &mut root {
        map.remove("$schema");
        for key in ["$defs", "definitions"] {
            if let Some(Value::Object(found)) = map.remove(key) {
                defs.extend(found);
            }
        }
    }
    draft07(&mut root);
    for def in defs.values_mut() {
        draft07(def);
    }
    let self_referenced = refers_to_root(&root) || defs.values().any(refers_to_root);
    // Where each definition goes: its own name, unless another event put a different schema
    // there, then qualified with this event's message id.
    let mut qualified: BTreeSet<&str> = BTreeSet::new();
    let placed = loop {
        let keys: BTreeMap<&str, String> = defs
            .keys()
            .map(|name| {
                let key = match qualified.contains(name.as_str()) {
                    true => format!("{id}.{}", component_key(name)),
                    false => component_key(name),
                };
                (name.as_str(), key)
            })
            .collect();
        let unique: BTreeSet<&String> = keys.values().collect();
        if unique.len() != keys.len() {
            return Err(Failure::new(format!(
                "event `{}` v{}: its schema's definitions {} cannot be told apart as AsyncAPI component names",
                event.name,
                event.version,
                keys.keys().map(|k| format!("`{k}`")).collect::<Vec<_>>().join(", ")
            )));
        }
        let mut placed = Vec::new();
        for (name, def) in &defs {
            let mut def = def.clone();
            rewrite_refs(&mut def, &keys, id, event)?;
            placed.push((name.as_str(), keys[name.as_str()].clone(), def));
        }
        let clashes: Vec<&str> = placed
            .iter()
            .filter(|(name, key, def)| {
                !qualified.contains(name) && schemas.get(key).is_some_and(|there| there != def)
            })
            .map(|(name, _, _)| *name)
            .collect();
        if clashes.is_empty() {
            break placed;
        }
        qualified.extend(clashes);
    };
    let keys: BTreeMap<&str, String> = placed
        .iter()
        .map(|(name, key, _)| (*name, key.clone()))
        .collect();
    rewrite_refs(&mut root, &keys, id, event)?;
    for (_, key, def) in placed {
        schemas.insert(key, def);
    }
    if self_referenced {
        // `#` meant this schema; in the document it is the component of the message's id.
        schemas.insert(id.to_owned(), root);
        return Ok(json!({"$ref": format!("#/components/schemas/{id}")}));
    }
    Ok(root)
}

/// schemars' own draft-07 transforms (what `SchemaSettings::draft07()` applies).
fn draft07(schema: &mut Value) {
    if let Ok(schema) = <&mut schemars::Schema>::try_from(&mut *schema) {
        ReplaceUnevaluatedProperties::default().transform(schema);
        RemoveRefSiblings::default().transform(schema);
        ReplacePrefixItems::default().transform(schema);
    }
}

/// A name as a key of `components/schemas` (`^[\w\d.\-_]+$`).
fn component_key(name: &str) -> String {
    name.chars()
        .map(|c| match c.is_ascii_alphanumeric() || "._-".contains(c) {
            true => c,
            false => '_',
        })
        .collect()
}

fn refers_to_root(schema: &Value) -> bool {
    match schema {
        Value::Object(map) => {
            map.get("$ref").is_some_and(|r| r == "#") || map.values().any(refers_to_root)
        }
        Value::Array(items) => items.iter().any(refers_to_root),
        _ => false,
    }
}

/// Points every local `$ref` of `schema` at `components/schemas`.
fn rewrite_refs(
    schema: &mut Value,
    keys: &BTreeMap<&str, String>,
    id: &str,
    event: &MergedEvent,
) -> Result<()> {
    match schema {
        Value::Object(map) => {
            if let Some(Value::String(target)) = map.get_mut("$ref") {
                if let Some(pointer) = target.strip_prefix('#') {
                    let name = pointer
                        .strip_prefix("/$defs/")
                        .or_else(|| pointer.strip_prefix("/definitions/"))
                        .map(|token| token.replace("~1", "/").replace("~0", "~"));
                    *target = match (pointer, name.as_deref().and_then(|n| keys.get(n))) {
                        ("", _) => format!("#/components/schemas/{id}"),
                        (_, Some(key)) => format!("#/components/schemas/{key}"),
                        _ => {
                            return Err(Failure::new(format!(
                                "event `{}` v{}: its schema refers to `{target}`, which it does not define",
                                event.name, event.version
                            )))
                        }
                    };
                }
            }
            for value in map.values_mut() {
                rewrite_refs(value, keys, id, event)?;
            }
        }
        Value::Array(items) => {
            for item in items {
                rewrite_refs(item, keys, id, event)?;
            }
        }
        _ => {}
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(name: &str, version: u32, schema: Value) -> MergedEvent {
        MergedEvent {
            name: name.into(),
            version,
            type_name: "T".into(),
            fingerprint: "f".into(),
            schema,
            defined_in: Vec::new(),
            emitted_by: Vec::new(),
            handled_by: Vec::new(),
        }
    }

    #[test]
    fn definitions_move_to_components_and_refs_follow() {
        let mut schemas = Map::new();
        let a = event(
            "order.placed",
            1,
            json!({
                "$schema": "https://json-schema.org/draft/2020-12/schema",
                "type": "object",
                "properties": {
                    "to": {"$ref": "#/$defs/Address"},
                    "pair": {"type": "array", "prefixItems": [{"type": "string"}, {"$ref": "#/$defs/Kind"}], "items": false},
                },
                "$defs": {
                    "Address": {"type": "object", "properties": {"kind": {"$ref": "#/$defs/Kind", "description": "how"}}},
                    "Kind": {"enum": ["home", "work"]},
                },
            }),
        );
        let payload_a = payload(&a, "order.placed.v1", &mut schemas).unwrap();
        assert_eq!(
            payload_a["properties"]["to"]["$ref"],
            "#/components/schemas/Address"
        );
        assert!(payload_a.get("$schema").is_none() && payload_a.get("$defs").is_none());
        let pair = &payload_a["properties"]["pair"];
        assert_eq!(pair["items"][1]["$ref"], "#/components/schemas/Kind");
        assert_eq!(pair["additionalItems"], false);
        assert_eq!(
            schemas["Address"]["properties"]["kind"],
            json!({"description": "how", "allOf": [{"$ref": "#/components/schemas/Kind"}]})
        );

        // The same `Kind`, a different `Address`: shared and qualified.
        let b = event(
            "user.moved",
            2,
            json!({
                "properties": {"to": {"$ref": "#/$defs/Address"}, "kind": {"$ref": "#/$defs/Kind"}},
                "$defs": {
                    "Address": {"type": "string"},
                    "Kind": {"enum": ["home", "work"]},
                },
            }),
        );
        let payload_b = payload(&b, "user.moved.v2", &mut schemas).unwrap();
        assert_eq!(
            payload_b["properties"]["to"]["$ref"],
            "#/components/schemas/user.moved.v2.Address"
        );
        assert_eq!(
            payload_b["properties"]["kind"]["$ref"],
            "#/components/schemas/Kind"
        );
        assert_eq!(schemas["user.moved.v2.Address"], json!({"type": "string"}));
        assert_eq!(schemas.len(), 3);
    }

    #[test]
    fn a_schema_that_refers_to_itself_becomes_a_component() {
        let mut schemas = Map::new();
        let tree = event(
            "tree.grown",
            1,
            json!({"type": "object", "properties": {"children": {"type": "array", "items": {"$ref": "#"}}}}),
        );
        let p = payload(&tree, "tree.grown.v1", &mut schemas).unwrap();
        assert_eq!(p, json!({"$ref": "#/components/schemas/tree.grown.v1"}));
        assert_eq!(
            schemas["tree.grown.v1"]["properties"]["children"]["items"]["$ref"],
            "#/components/schemas/tree.grown.v1"
        );

        let dangling = event("x.y", 1, json!({"$ref": "#/$defs/Nope"}));
        let err = payload(&dangling, "x.y.v1", &mut schemas).unwrap_err();
        assert!(err.0.contains("refers to `#/$defs/Nope`"), "{}", err.0);
    }

    #[test]
    fn server_urls_are_checked() {
        let two = servers("nats://a:4222, tls://b:4443").unwrap();
        assert_eq!(two["nats"]["host"], "a:4222");
        assert_eq!(two["nats-2"]["protocol"], "nats");
        let secret = servers("nats://ops:hunter2@a:4222").unwrap_err().0;
        assert!(secret.contains("leave the credentials out"), "{secret}");
        assert!(!secret.contains("hunter2"), "{secret}");
        assert!(servers("http://a").unwrap_err().0.contains("nats://"));
        assert_eq!(wildcard_channel_id("payment.*"), "payment.ANY");
        assert_eq!(wildcard_channel_id(">"), "ALL");
    }
}
