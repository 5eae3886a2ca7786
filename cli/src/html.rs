//! `eda catalog --html <dir> <binary>...`: the merged catalog as one static page,
//! `<dir>/index.html`, with inline CSS and the flow graph as inline SVG: no script, nothing
//! fetched (its Content-Security-Policy forbids both). Everything taken from a catalog is
//! escaped.
//!
//! Stable anchors: `id="service-<name>"`, `id="handler-<service>-<handler>"`,
//! `id="event-<name>"`, `id="event-<name>-v<version>"`, `id="flow"`; graph nodes
//! `id="node-service-<name>"` and `id="node-event-<name>"`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::Duration;

use serde::Deserialize;
use serde_json::Value;

use crate::{catalog, graph, Failure, Result};

/// The merged catalog (`eda catalog`'s JSON) as the page reads it.
#[derive(Debug, Deserialize)]
pub struct View {
    /// Each binary's catalog, in the order given.
    pub services: Vec<ServiceView>,
    /// Every event version, by name then version.
    pub events: Vec<EventView>,
    /// Event versions whose schemas differ between binaries.
    #[serde(default)]
    pub conflicts: Vec<String>,
}

/// One service's catalog.
#[derive(Debug, Deserialize)]
pub struct ServiceView {
    /// The service name.
    pub service: String,
    /// The binary it came from.
    #[serde(default)]
    pub binary: String,
    /// Its subject prefix.
    #[serde(default)]
    pub subject_prefix: String,
    /// Its handlers.
    #[serde(default)]
    pub handlers: Vec<HandlerView>,
    /// The event versions compiled into it.
    #[serde(default)]
    pub events: Vec<EventDef>,
    /// Events it publishes outside handlers.
    #[serde(default)]
    pub emits: Vec<String>,
}

impl ServiceView {
    /// Every event name it declares to publish (outside handlers and from handlers), sorted.
    pub fn emitted(&self) -> BTreeSet<&str> {
        let mut names: BTreeSet<&str> = self.emits.iter().map(String::as_str).collect();
        for h in &self.handlers {
            names.extend(h.emits.iter().flatten().map(String::as_str));
        }
        names
    }
}

/// One handler of a service.
#[derive(Debug, Deserialize)]
pub struct HandlerView {
    /// The handler's name.
    pub name: String,
    /// Its subject (a pattern for raw handlers).
    pub subject: String,
    /// The typed event it takes; none for raw (wildcard) handlers.
    #[serde(default)]
    pub event: Option<HandlerEvent>,
    /// Its options as the catalog shows them.
    #[serde(default)]
    pub options: Value,
    /// The events it declares to publish.
    #[serde(default)]
    pub emits: Option<Vec<String>>,
}

/// The event a typed handler takes.
#[derive(Debug, Deserialize)]
pub struct HandlerEvent {
    /// Event name.
    pub name: String,
    /// The version the handler receives.
    pub version: u32,
    /// The oldest version upcast to it.
    #[serde(default)]
    pub oldest_version: Option<u32>,
}

/// An event version compiled into a service.
#[derive(Debug, Deserialize)]
pub struct EventDef {
    /// Event name.
    pub name: String,
    /// Version.
    pub version: u32,
    /// The Rust type of the previous version it is upcast from.
    #[serde(default)]
    pub upcast_from: Option<String>,
}

/// One event version of the merged catalog.
#[derive(Debug, Deserialize)]
pub struct EventView {
    /// Event name.
    pub name: String,
    /// Version.
    pub version: u32,
    /// The Rust type.
    #[serde(default)]
    pub type_name: String,
    /// SHA-256 of the canonical schema.
    #[serde(default)]
    pub fingerprint: String,
    /// Its JSON Schema.
    #[serde(default)]
    pub schema: Value,
    /// The services whose binaries hold it.
    #[serde(default)]
    pub defined_in: Vec<String>,
    /// The services that publish it.
    #[serde(default)]
    pub emitted_by: Vec<String>,
    /// The handlers it reaches.
    #[serde(default)]
    pub handled_by: Vec<HandlerRef>,
}

/// A handler of a service.
#[derive(Debug, Deserialize)]
pub struct HandlerRef {
    /// The service.
    pub service: String,
    /// The handler.
    pub handler: String,
}

/// `eda catalog --html <out> <binary>...`: writes `<out>/index.html`, with the flow graph
/// drawn by Graphviz `dot` unless `graph` is false.
pub fn write(binaries: &[String], timeout: Duration, out: &Path, graph: bool) -> Result<()> {
    let merged = catalog::merged_json(binaries, timeout)?;
    let view = View::deserialize(&merged)
        .map_err(|e| Failure::new(format!("the merged catalog cannot be read for HTML: {e}")))?;
    let svg = match graph {
        true => Some(graph::render_svg(&graph::dot_source(&view))?),
        false => None,
    };
    let html = page(&view, svg.as_deref());
    std::fs::create_dir_all(out).map_err(|e| {
        Failure::new(format!(
            "cannot create the output directory `{}`: {e}",
            out.display()
        ))
    })?;
    let file = out.join("index.html");
    std::fs::write(&file, html)
        .map_err(|e| Failure::new(format!("cannot write `{}`: {e}", file.display())))?;
    let names: BTreeSet<&str> = view.events.iter().map(|e| e.name.as_str()).collect();
    println!(
        "wrote {} ({} services, {} events, {} event versions)",
        file.display(),
        view.services.len(),
        names.len(),
        view.events.len()
    );
    Ok(())
}

/// `text` safe in HTML text and in double-quoted attribute values.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// The element id of `name` of `kind` (`service`, `event`, ...): `<kind>-<name>`, with any
/// character other than ASCII letters, digits, `.`, `_` and `-` replaced by `_` (event and
/// service names never have one).
pub fn anchor(kind: &str, name: &str) -> String {
    let clean: String = name
        .chars()
        .map(|c| match c {
            'a'..='z' | 'A'..='Z' | '0'..='9' | '.' | '_' | '-' => c,
            _ => '_',
        })
        .collect();
    format!("{kind}-{clean}")
}

/// A link to the section of event `name`.
fn event_link(name: &str) -> String {
    format!(
        "<a class=\"event-ref\" href=\"#{}\">{}</a>",
        escape(&anchor("event", name)),
        escape(name)
    )
}

/// A link to the section of service `name`.
fn service_link(name: &str) -> String {
    format!(
        "<a class=\"service-ref\" href=\"#{}\">{}</a>",
        escape(&anchor("service", name)),
        escape(name)
    )
}

/// A link to handler `handler` of `service`.
fn handler_link(service: &str, handler: &str) -> String {
    format!(
        "<a class=\"handler-ref\" href=\"#{}\">{}/{}</a>",
        escape(&anchor("handler", &format!("{service}-{handler}"))),
        escape(service),
        escape(handler)
    )
}

/// `items` joined by `, `, or `none` in grey.
fn list_or_none(items: Vec<String>) -> String {
    match items.is_empty() {
        true => "<span class=\"none\">none</span>".to_owned(),
        false => items.join(", "),
    }
}

const STYLE: &str = r#"
:root { --fg: #0f172a; --muted: #64748b; --line: #e2e8f0; --bg: #f8fafc; --card: #fff;
  --svc: #1d4ed8; --svc-bg: #dbeafe; --evt: #b45309; --evt-bg: #fef3c7; }
* { box-sizing: border-box; }
body { margin: 0; font: 15px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, Helvetica, Arial, sans-serif;
  color: var(--fg); background: var(--bg); }
header { background: #0f172a; color: #f8fafc; padding: 20px 32px; }
header h1 { margin: 0 0 4px; font-size: 24px; }
header p { margin: 0; color: #cbd5e1; }
nav { padding: 8px 32px; background: #1e293b; }
nav a { color: #e2e8f0; margin-right: 20px; text-decoration: none; font-weight: 600; }
main { max-width: 1200px; margin: 0 auto; padding: 8px 32px 48px; }
h2 { font-size: 20px; margin: 32px 0 12px; padding-bottom: 4px; border-bottom: 2px solid var(--line); }
h3 { font-size: 17px; margin: 0 0 8px; }
h4 { font-size: 14px; margin: 16px 0 6px; color: var(--muted); text-transform: uppercase; letter-spacing: .04em; }
a { color: var(--svc); }
code, pre, .mono { font-family: ui-monospace, "SFMono-Regular", Menlo, Consolas, "DejaVu Sans Mono", monospace; font-size: 13px; }
article { background: var(--card); border: 1px solid var(--line); border-radius: 8px; padding: 16px 20px; margin: 0 0 16px; }
article.service { border-left: 5px solid var(--svc); }
article.event { border-left: 5px solid var(--evt); }
.tag { display: inline-block; font-size: 12px; padding: 1px 8px; border-radius: 10px; margin-left: 6px; vertical-align: middle; font-weight: 600; }
.tag.version { background: var(--evt-bg); color: #78350f; }
.tag.kind { background: var(--svc-bg); color: #1e3a8a; }
.none { color: var(--muted); font-style: italic; }
.meta { color: var(--muted); margin: 0 0 8px; }
table { border-collapse: collapse; width: 100%; margin: 4px 0 8px; }
th, td { text-align: left; padding: 5px 10px; border-bottom: 1px solid var(--line); vertical-align: top; }
th { font-size: 12px; color: var(--muted); text-transform: uppercase; letter-spacing: .04em; background: var(--bg); }
dl.facts { display: grid; grid-template-columns: max-content 1fr; gap: 2px 16px; margin: 4px 0 8px; }
dl.facts dt { color: var(--muted); }
dl.facts dd { margin: 0; overflow-wrap: anywhere; }
.version { border-top: 1px solid var(--line); padding-top: 8px; margin-top: 12px; }
h4.version-title { text-transform: none; letter-spacing: 0; color: var(--fg); font-size: 15px; }
.chain { font-weight: 600; }
.opt { display: inline-block; background: var(--bg); border: 1px solid var(--line); border-radius: 4px; padding: 0 6px; margin: 1px 2px; font-size: 12px; white-space: nowrap; }
.opt b { font-weight: 600; color: var(--muted); }
details summary { cursor: pointer; color: var(--svc); }
pre { background: #0f172a; color: #e2e8f0; padding: 12px; border-radius: 6px; overflow-x: auto; }
figure.graph { margin: 0; background: var(--card); border: 1px solid var(--line); border-radius: 8px; padding: 12px; overflow-x: auto; }
figure.graph svg { max-width: 100%; height: auto; display: block; margin: 0 auto; }
figure.graph svg a { text-decoration: none; }
.legend { color: var(--muted); font-size: 13px; }
.legend .svc { color: var(--svc); font-weight: 600; } .legend .evt { color: var(--evt); font-weight: 600; }
.warning { background: #fef2f2; border: 1px solid #fecaca; border-radius: 8px; padding: 8px 20px; color: #7f1d1d; }
"#;

/// The whole page.
pub fn page(view: &View, svg: Option<&str>) -> String {
    let event_names: BTreeSet<&str> = view.events.iter().map(|e| e.name.as_str()).collect();
    let mut html = String::new();
    html.push_str(
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
         <meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; \
         style-src 'unsafe-inline'\">\n\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n\
         <meta name=\"generator\" content=\"eda catalog --html\">\n<title>Event catalog</title>\n<style>",
    );
    html.push_str(STYLE);
    html.push_str("</style>\n</head>\n<body>\n<header>\n<h1>Event catalog</h1>\n");
    html.push_str(&format!(
        "<p id=\"summary\">{} services, {} events ({} versions)</p>\n</header>\n",
        view.services.len(),
        event_names.len(),
        view.events.len()
    ));
    html.push_str(
        "<nav><a href=\"#flow\">Flow</a><a href=\"#services\">Services</a>\
         <a href=\"#events\">Events</a></nav>\n<main>\n",
    );
    if !view.conflicts.is_empty() {
        html.push_str(
            "<section id=\"conflicts\" class=\"warning\">\n<h2>Schema conflicts</h2>\n\
             <p>These event versions have different schemas in different binaries: give the \
             changed schema a new version.</p>\n<ul>\n",
        );
        for c in &view.conflicts {
            html.push_str(&format!("<li>{}</li>\n", escape(c)));
        }
        html.push_str("</ul>\n</section>\n");
    }
    html.push_str(&flow_section(svg));
    html.push_str("<section id=\"services\">\n<h2>Services</h2>\n");
    for s in &view.services {
        html.push_str(&service_article(s));
    }
    html.push_str("</section>\n<section id=\"events\">\n<h2>Events</h2>\n");
    for name in &event_names {
        let versions: Vec<&EventView> = view.events.iter().filter(|e| e.name == *name).collect();
        html.push_str(&event_article(view, name, &versions));
    }
    html.push_str("</section>\n</main>\n</body>\n</html>\n");
    html
}

fn flow_section(svg: Option<&str>) -> String {
    let mut html = String::from("<section id=\"flow\">\n<h2>Flow</h2>\n");
    match svg {
        Some(svg) => {
            html.push_str(
                "<p class=\"legend\"><span class=\"svc\">Services</span> (boxes) publish the \
                 <span class=\"evt\">events</span> (notes) they declare with <code>emits</code> \
                 (solid arrows); events go to the services whose handlers take them (dashed \
                 arrows, labelled with the handlers; dotted for wildcard handlers). Click a \
                 node for its section.</p>\n\
                 <figure class=\"graph\">\n",
            );
            // dot's own output: every label and attribute in it is escaped by Graphviz, and
            // the node ids and links are built by `anchor` from safe characters only.
            html.push_str(svg);
            html.push_str("\n</figure>\n");
        }
        None => html.push_str(
            "<p class=\"no-graph\">The flow graph was left out (<code>--no-graph</code>).</p>\n",
        ),
    }
    html.push_str("</section>\n");
    html
}

fn service_article(s: &ServiceView) -> String {
    let mut html = format!(
        "<article class=\"service\" id=\"{}\">\n<h3>{}<span class=\"tag kind\">service</span></h3>\n",
        escape(&anchor("service", &s.service)),
        escape(&s.service)
    );
    html.push_str(&format!(
        "<p class=\"meta\">binary <code class=\"binary\">{}</code> · subject prefix <code>{}</code></p>\n",
        escape(&s.binary),
        escape(&s.subject_prefix)
    ));
    html.push_str("<h4>Handlers</h4>\n");
    if s.handlers.is_empty() {
        html.push_str("<p class=\"none\">no handlers</p>\n");
    } else {
        html.push_str(
            "<table class=\"handlers\">\n<thead><tr><th>handler</th><th>subject</th>\
             <th>event</th><th>emits</th><th>options</th></tr></thead>\n<tbody>\n",
        );
        for h in &s.handlers {
            let event = match &h.event {
                Some(e) => {
                    let oldest = e.oldest_version.unwrap_or(e.version);
                    let versions = match oldest < e.version {
                        true => format!("v{oldest}–v{} (upcast to v{})", e.version, e.version),
                        false => format!("v{}", e.version),
                    };
                    format!("{} {}", event_link(&e.name), escape(&versions))
                }
                None => "<span class=\"none\">any matching event, undecoded</span>".to_owned(),
            };
            let emits = match &h.emits {
                Some(list) => list_or_none(list.iter().map(|n| event_link(n)).collect()),
                None => "<span class=\"none\">not declared</span>".to_owned(),
            };
            html.push_str(&format!(
                "<tr class=\"handler\" id=\"{}\"><td><b>{}</b></td><td><code>{}</code></td>\
                 <td>{event}</td><td>{emits}</td><td class=\"options\">{}</td></tr>\n",
                escape(&anchor("handler", &format!("{}-{}", s.service, h.name))),
                escape(&h.name),
                escape(&h.subject),
                options(&h.options)
            ));
        }
        html.push_str("</tbody>\n</table>\n");
    }
    html.push_str("<h4>Emits</h4>\n<p class=\"emits\">");
    let outside: BTreeSet<&str> = s.emits.iter().map(String::as_str).collect();
    let emitted: Vec<String> = s
        .emitted()
        .into_iter()
        .map(|name| match outside.contains(name) {
            true => format!("{} (outside handlers)", event_link(name)),
            false => event_link(name),
        })
        .collect();
    if emitted.is_empty() {
        html.push_str(
            "<span class=\"none\">nothing declared (<code>#[handler(emits = [..])]</code>, \
             <code>.emits::&lt;E&gt;()</code> on the builder)</span>",
        );
    } else {
        html.push_str(&emitted.join(", "));
    }
    html.push_str("</p>\n</article>\n");
    html
}

/// A handler's options as small labelled chips, in the catalog's order; unset ones left out.
fn options(options: &Value) -> String {
    let Some(map) = options.as_object() else {
        return match options {
            Value::Null => String::new(),
            other => escape(&other.to_string()),
        };
    };
    map.iter()
        .filter(|(_, v)| !v.is_null())
        .map(|(k, v)| {
            format!(
                "<span class=\"opt\"><b>{}</b> {}</span>",
                escape(k),
                escape(&option_text(v))
            )
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// An option's value as text: objects as `kind a=b c=d` (the backoff).
fn option_text(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        Value::Bool(true) => "yes".to_owned(),
        Value::Bool(false) => "no".to_owned(),
        Value::Object(map) => {
            let mut parts = Vec::new();
            if let Some(kind) = map.get("kind") {
                parts.push(option_text(kind));
            }
            for (k, v) in map {
                if k != "kind" && !v.is_null() {
                    parts.push(format!("{k}={}", option_text(v)));
                }
            }
            parts.join(" ")
        }
        other => other.to_string(),
    }
}

fn event_article(view: &View, name: &str, versions: &[&EventView]) -> String {
    let mut html = format!(
        "<article class=\"event\" id=\"{}\">\n<h3>{}",
        escape(&anchor("event", name)),
        escape(name)
    );
    for e in versions {
        html.push_str(&format!(
            "<span class=\"tag version\">v{}</span>",
            e.version
        ));
    }
    html.push_str("</h3>\n");
    let emitted: BTreeSet<&str> = versions
        .iter()
        .flat_map(|e| e.emitted_by.iter().map(String::as_str))
        .collect();
    let handled: BTreeSet<(&str, &str)> = versions
        .iter()
        .flat_map(|e| {
            e.handled_by
                .iter()
                .map(|h| (h.service.as_str(), h.handler.as_str()))
        })
        .collect();
    html.push_str(&format!(
        "<dl class=\"facts\"><dt>emitted by</dt><dd class=\"emitted-by\">{}</dd>\
         <dt>handled by</dt><dd class=\"handled-by\">{}</dd>",
        list_or_none(emitted.iter().map(|s| service_link(s)).collect()),
        list_or_none(handled.iter().map(|(s, h)| handler_link(s, h)).collect()),
    ));
    if let Some(chain) = upcast_chain(view, name, versions) {
        html.push_str(&format!(
            "<dt>upcast chain</dt><dd class=\"upcast\"><span class=\"chain\">{}</span></dd>",
            escape(&chain)
        ));
    }
    html.push_str("</dl>\n");
    for e in versions.iter().rev() {
        html.push_str(&version_block(view, e, versions.len() > 1));
    }
    html.push_str("</article>\n");
    html
}

/// `v1 → v2 → v3` for the versions linked by `upcast_from` (each its own chain when a
/// version is not upcast from the one before); none for a single version without one.
fn upcast_chain(view: &View, name: &str, versions: &[&EventView]) -> Option<String> {
    let defs: BTreeMap<u32, &EventDef> = view
        .services
        .iter()
        .flat_map(|s| s.events.iter())
        .filter(|d| d.name == name)
        .map(|d| (d.version, d))
        .collect();
    if versions.len() < 2 && defs.values().all(|d| d.upcast_from.is_none()) {
        return None;
    }
    let mut chains: Vec<Vec<String>> = Vec::new();
    for e in versions {
        let from = defs.get(&e.version).and_then(|d| d.upcast_from.as_deref());
        let label = format!("v{} {}", e.version, e.type_name);
        match (from, chains.last_mut()) {
            (Some(_), Some(chain)) => chain.push(label),
            (Some(from), None) => chains.push(vec![from.to_owned(), label]),
            (None, _) => chains.push(vec![label]),
        }
    }
    Some(
        chains
            .iter()
            .map(|c| c.join(" → "))
            .collect::<Vec<_>>()
            .join(";  "),
    )
}

/// One version of an event: its facts, field tables and raw schema; which handlers take it
/// only when the event has several versions (else the event's own summary says it). Who
/// emits it is said for the event: `emits` declares names, not versions.
fn version_block(view: &View, e: &EventView, several: bool) -> String {
    let mut html = format!(
        "<div class=\"version\" id=\"{}-v{}\">\n<h4 class=\"version-title\">v{} · <code>{}</code></h4>\n",
        escape(&anchor("event", &e.name)),
        e.version,
        e.version,
        escape(&e.type_name)
    );
    let handled: Vec<String> = e
        .handled_by
        .iter()
        .map(|h| {
            let upcast = view
                .services
                .iter()
                .filter(|s| s.service == h.service)
                .flat_map(|s| s.handlers.iter())
                .find(|x| x.name == h.handler)
                .and_then(|x| x.event.as_ref())
                .filter(|t| t.version != e.version)
                .map(|t| format!(" (upcast to v{})", t.version))
                .unwrap_or_default();
            format!(
                "{}{}",
                handler_link(&h.service, &h.handler),
                escape(&upcast)
            )
        })
        .collect();
    html.push_str(&format!(
        "<dl class=\"facts\"><dt>fingerprint</dt><dd><code class=\"fingerprint\">{}</code></dd>",
        escape(&e.fingerprint)
    ));
    if several {
        html.push_str(&format!(
            "<dt>handled by</dt><dd>{}</dd>",
            list_or_none(handled)
        ));
    }
    html.push_str(&format!(
        "<dt>defined in</dt><dd>{}</dd></dl>\n",
        list_or_none(e.defined_in.iter().map(|s| service_link(s)).collect()),
    ));
    html.push_str(&schema_tables(&e.schema));
    // A `Value` always serializes (its map keys are strings).
    let raw = serde_json::to_string_pretty(&e.schema).unwrap_or_default();
    html.push_str(&format!(
        "<details class=\"schema\"><summary>JSON Schema</summary><pre>{}</pre></details>\n</div>\n",
        escape(&raw)
    ));
    html
}

/// A field of an object schema.
#[derive(Debug, PartialEq)]
struct Field {
    name: String,
    ty: String,
    required: bool,
    description: String,
}

/// The properties of an object schema: the required ones in their declared order, then the
/// others.
fn fields(schema: &Value) -> Option<Vec<Field>> {
    let properties = schema.get("properties")?.as_object()?;
    let required: BTreeSet<&str> = schema
        .get("required")
        .and_then(Value::as_array)
        .map(|r| r.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    let position = |name: &str| {
        schema
            .get("required")
            .and_then(Value::as_array)
            .and_then(|r| r.iter().position(|v| v.as_str() == Some(name)))
            .unwrap_or(usize::MAX)
    };
    let mut sorted: Vec<(&String, &Value)> = properties.iter().collect();
    // The catalog's properties come sorted by name; `required` keeps the declared order of the
    // required fields, which lead, the optional ones follow by name.
    sorted.sort_by_key(|(name, _)| position(name));
    Some(
        sorted
            .into_iter()
            .map(|(name, s)| Field {
                name: name.clone(),
                ty: type_label(s),
                required: required.contains(name.as_str()),
                description: s
                    .get("description")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_owned(),
            })
            .collect(),
    )
}

/// A schema's type in words: `integer (uint64)`, `string or null`, `array of Item`, `Item`
/// (a `$ref`), `one of "a", "b"`.
fn type_label(schema: &Value) -> String {
    let Some(obj) = schema.as_object() else {
        return match schema {
            Value::Bool(false) => "nothing".to_owned(),
            _ => "any".to_owned(),
        };
    };
    if let Some(r) = obj.get("$ref").and_then(Value::as_str) {
        return r.rsplit('/').next().unwrap_or(r).to_owned();
    }
    if let Some(c) = obj.get("const") {
        return c.to_string();
    }
    if let Some(values) = obj.get("enum").and_then(Value::as_array) {
        let values: Vec<String> = values.iter().map(Value::to_string).collect();
        return format!("one of {}", values.join(", "));
    }
    for key in ["anyOf", "oneOf", "allOf"] {
        if let Some(list) = obj.get(key).and_then(Value::as_array) {
            let labels: Vec<String> = list.iter().map(type_label).collect();
            return labels.join(if key == "allOf" { " and " } else { " | " });
        }
    }
    let types: Vec<&str> = match obj.get("type") {
        Some(Value::String(t)) => vec![t.as_str()],
        Some(Value::Array(list)) => list.iter().filter_map(Value::as_str).collect(),
        _ if obj.contains_key("properties") => vec!["object"],
        _ => Vec::new(),
    };
    let labels: Vec<String> = types
        .iter()
        .map(|t| match *t {
            "array" => match obj.get("items") {
                Some(items) if items.is_object() => format!("array of {}", type_label(items)),
                _ => "array".to_owned(),
            },
            "object" => match obj.get("additionalProperties") {
                Some(v) if v.is_object() && !obj.contains_key("properties") => {
                    format!("map of {}", type_label(v))
                }
                _ => "object".to_owned(),
            },
            t => match obj.get("format").and_then(Value::as_str) {
                Some(format) => format!("{t} ({format})"),
                None => t.to_owned(),
            },
        })
        .collect();
    match labels.is_empty() {
        true => "any".to_owned(),
        false => labels.join(" or "),
    }
}

/// The field tables of a schema: its own fields, then those of each definition it refers to.
fn schema_tables(schema: &Value) -> String {
    let mut html = String::new();
    match fields(schema) {
        Some(list) => html.push_str(&field_table(None, &list)),
        None => html.push_str(&format!(
            "<p class=\"shape\">payload: <code>{}</code></p>\n",
            escape(&type_label(schema))
        )),
    }
    for key in ["$defs", "definitions"] {
        let Some(defs) = schema.get(key).and_then(Value::as_object) else {
            continue;
        };
        for (name, def) in defs {
            match fields(def) {
                Some(list) => html.push_str(&field_table(Some(name), &list)),
                None => html.push_str(&format!(
                    "<p class=\"shape\"><code>{}</code>: <code>{}</code></p>\n",
                    escape(name),
                    escape(&type_label(def))
                )),
            }
        }
    }
    html
}

fn field_table(definition: Option<&str>, fields: &[Field]) -> String {
    let mut html = String::new();
    if let Some(name) = definition {
        html.push_str(&format!(
            "<p class=\"definition\"><code>{}</code>:</p>\n",
            escape(name)
        ));
    }
    let described = fields.iter().any(|f| !f.description.is_empty());
    html.push_str(
        "<table class=\"fields\">\n<thead><tr><th>field</th><th>type</th><th>required</th>",
    );
    if described {
        html.push_str("<th>description</th>");
    }
    html.push_str("</tr></thead>\n<tbody>\n");
    if fields.is_empty() {
        html.push_str("<tr><td colspan=\"4\" class=\"none\">no fields</td></tr>\n");
    }
    for f in fields {
        html.push_str(&format!(
            "<tr><td><code>{}</code></td><td>{}</td><td>{}</td>",
            escape(&f.name),
            escape(&f.ty),
            if f.required { "yes" } else { "no" },
        ));
        if described {
            html.push_str(&format!("<td>{}</td>", escape(&f.description)));
        }
        html.push_str("</tr>\n");
    }
    html.push_str("</tbody>\n</table>\n");
    html
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn escape_leaves_no_markup() {
        assert_eq!(
            escape(r#"<img src=x onerror="alert('1')">&"#),
            "&lt;img src=x onerror=&quot;alert(&#39;1&#39;)&quot;&gt;&amp;"
        );
    }

    #[test]
    fn anchors_keep_event_names_and_replace_anything_else() {
        assert_eq!(anchor("event", "user.created"), "event-user.created");
        assert_eq!(anchor("service", "a\"b c<"), "service-a_b_c_");
    }

    #[test]
    fn types_read_like_words() {
        assert_eq!(
            type_label(&json!({"type": "integer", "format": "uint64"})),
            "integer (uint64)"
        );
        assert_eq!(
            type_label(&json!({"type": ["string", "null"]})),
            "string or null"
        );
        assert_eq!(
            type_label(&json!({"type": "array", "items": {"$ref": "#/$defs/Line"}})),
            "array of Line"
        );
        assert_eq!(
            type_label(&json!({"enum": ["a", "b"]})),
            r#"one of "a", "b""#
        );
        assert_eq!(
            type_label(&json!({"anyOf": [{"$ref": "#/$defs/X"}, {"type": "null"}]})),
            "X | null"
        );
        assert_eq!(
            type_label(&json!({"type": "object", "additionalProperties": {"type": "string"}})),
            "map of string"
        );
    }

    #[test]
    fn fields_keep_their_order_and_say_which_are_required() {
        let schema = json!({
            "type": "object",
            "properties": {"id": {"type": "integer"}, "note": {"type": ["string", "null"], "description": "free text"}},
            "required": ["id"]
        });
        let list = fields(&schema).unwrap();
        assert_eq!(list.len(), 2);
        assert_eq!(list[0].name, "id");
        assert!(list[0].required);
        assert!(!list[1].required);
        assert_eq!(list[1].description, "free text");
    }

    fn hostile_view() -> View {
        let evil = "<script>alert(1)</script>\"'&";
        View::deserialize(&json!({
            "services": [{
                "service": evil, "binary": evil, "subject_prefix": evil,
                "handlers": [{"name": evil, "subject": evil, "event": {"name": evil, "version": 1},
                              "options": {"breaker": evil}, "emits": [evil]}],
                "events": [{"name": evil, "version": 1, "type_name": evil, "upcast_from": evil}],
                "emits": [evil]
            }],
            "events": [{
                "name": evil, "version": 1, "type_name": evil, "fingerprint": evil,
                "schema": {"properties": {evil: {"type": evil, "description": evil}}, "$defs": {evil: {"enum": [evil]}}},
                "defined_in": [evil], "emitted_by": [evil],
                "handled_by": [{"service": evil, "handler": evil}]
            }],
            "conflicts": [evil]
        }))
        .unwrap()
    }

    #[test]
    fn nothing_from_a_catalog_becomes_markup() {
        let html = page(&hostile_view(), None);
        assert!(!html.contains("<script"), "{html}");
        assert!(!html.contains("'&"), "{html}");
        assert!(html.contains("&lt;script&gt;alert(1)&lt;/script&gt;&quot;&#39;&amp;"));
        // Every tag in the page is one the page writes itself.
        for tag in html.split('<').skip(1) {
            let name: String = tag
                .trim_start_matches('/')
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '!')
                .collect();
            assert!(
                [
                    "!DOCTYPE", "html", "head", "meta", "title", "style", "body", "header", "h1",
                    "h2", "h3", "h4", "p", "nav", "a", "main", "section", "ul", "li", "article",
                    "span", "code", "table", "thead", "tbody", "tr", "th", "td", "b", "dl", "dt",
                    "dd", "div", "details", "summary", "pre"
                ]
                .contains(&name.as_str()),
                "unexpected tag <{name}"
            );
        }
    }

    #[test]
    fn dot_strings_stay_inside_their_quotes() {
        let source = graph::dot_source(&hostile_view());
        for line in source
            .lines()
            .filter(|l| l.contains("->") || l.contains('['))
        {
            // Outside quoted strings only DOT syntax is left.
            let mut outside = String::new();
            let mut quoted = false;
            let mut chars = line.chars();
            while let Some(c) = chars.next() {
                match (quoted, c) {
                    (true, '\\') => {
                        chars.next();
                    }
                    (_, '"') => quoted = !quoted,
                    (false, c) => outside.push(c),
                    (true, _) => {}
                }
            }
            assert!(!quoted, "unterminated string in {line}");
            assert!(!outside.contains("script"), "{line}");
        }
    }
}
