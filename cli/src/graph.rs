//! The flow graph of `eda catalog --html`: services and events as a Graphviz DOT graph
//! (service -> event for what it emits, event -> service for what its handlers take), drawn
//! to SVG by `dot`.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{ErrorKind, Write};
use std::process::{Command, Stdio};

use crate::html::{anchor, View};
use crate::{Failure, Result};

/// How many lines of `dot`'s stderr an error shows.
const STDERR_LINES: usize = 3;

/// `text` as a DOT quoted string: `"` and `\` escaped (so a label's `\n`, `\l` escapes cannot
/// be smuggled in), line breaks as DOT's `\n`.
pub fn quote(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => {}
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// The DOT source of the flow: one node per service (`id="node-service-<name>"`, class
/// `service`) and per event name (`id="node-event-<name>"`, class `event`, its versions in
/// the label), an `emits` edge from a service to each event it declares to publish, a
/// `handles` edge from an event to each service with handlers for it (labelled with them).
/// Nodes link to their sections of the page.
pub fn dot_source(view: &View) -> String {
    let mut versions: BTreeMap<&str, Vec<u32>> = BTreeMap::new();
    for e in &view.events {
        versions.entry(&e.name).or_default().push(e.version);
    }
    let mut emits: BTreeSet<(&str, &str)> = BTreeSet::new();
    for s in &view.services {
        for name in s.emitted() {
            versions.entry(name).or_default();
            emits.insert((s.service.as_str(), name));
        }
    }
    // (event, service) -> the service's handlers of any version of the event.
    let mut handles: BTreeMap<(&str, &str), BTreeSet<&str>> = BTreeMap::new();
    for e in &view.events {
        for h in &e.handled_by {
            handles
                .entry((e.name.as_str(), h.service.as_str()))
                .or_default()
                .insert(h.handler.as_str());
        }
    }
    // Raw handlers with a wildcard subject (they take every event): drawn lighter.
    let wildcard: BTreeSet<(&str, &str)> = view
        .services
        .iter()
        .flat_map(|s| {
            s.handlers
                .iter()
                .filter(|h| h.event.is_none())
                .map(move |h| (s.service.as_str(), h.name.as_str()))
        })
        .collect();
    let mut services: BTreeSet<&str> = view.services.iter().map(|s| s.service.as_str()).collect();
    services.extend(handles.keys().map(|(_, s)| *s));

    let mut out = String::from(
        "digraph eda {\n  graph [rankdir=LR, bgcolor=\"transparent\", fontname=\"Helvetica\", \
         nodesep=0.25, ranksep=0.6, pad=0.1];\n  node [fontname=\"Helvetica\", fontsize=14, \
         penwidth=1.2];\n  edge [fontname=\"Helvetica\", fontsize=11, arrowsize=0.7];\n",
    );
    for s in &services {
        out.push_str(&format!(
            "  {} [id={}, class=\"service\", label={}, tooltip={}, URL={}, shape=box, \
             style=\"rounded,filled\", fillcolor=\"#dbeafe\", color=\"#1d4ed8\", \
             fontcolor=\"#0f172a\", margin=\"0.25,0.12\"];\n",
            quote(&format!("service:{s}")),
            quote(&format!("node-{}", anchor("service", s))),
            quote(s),
            quote(&format!("service {s}")),
            quote(&format!("#{}", anchor("service", s))),
        ));
    }
    for (name, vs) in &versions {
        let label = match vs.as_slice() {
            [] => (*name).to_owned(),
            vs => {
                let list: Vec<String> = vs.iter().map(|v| format!("v{v}")).collect();
                format!("{name}\n{}", list.join(", "))
            }
        };
        out.push_str(&format!(
            "  {} [id={}, class=\"event\", label={}, tooltip={}, URL={}, shape=note, \
             style=\"filled\", fillcolor=\"#fef3c7\", color=\"#b45309\", fontcolor=\"#0f172a\"];\n",
            quote(&format!("event:{name}")),
            quote(&format!("node-{}", anchor("event", name))),
            quote(&label),
            quote(&format!("event {name}")),
            quote(&format!("#{}", anchor("event", name))),
        ));
    }
    for (service, event) in &emits {
        out.push_str(&format!(
            "  {} -> {} [class=\"emits\", color=\"#1d4ed8\"];\n",
            quote(&format!("service:{service}")),
            quote(&format!("event:{event}")),
        ));
    }
    for ((event, service), handlers) in &handles {
        let label: Vec<&str> = handlers.iter().copied().collect();
        let style = match handlers.iter().all(|h| wildcard.contains(&(*service, *h))) {
            true => "class=\"handles wildcard\", color=\"#94a3b8\", fontcolor=\"#64748b\", style=\"dotted\"",
            false => "class=\"handles\", color=\"#b45309\", fontcolor=\"#78350f\", style=\"dashed\"",
        };
        out.push_str(&format!(
            "  {} -> {} [{style}, label={}];\n",
            quote(&format!("event:{event}")),
            quote(&format!("service:{service}")),
            quote(&label.join("\n")),
        ));
    }
    out.push_str("}\n");
    out
}

/// Runs `dot -Tsvg` on `source`; the `<svg>` element it prints (without the XML prolog and
/// doctype, to be inlined into HTML). Graphviz escapes every label and attribute it writes.
pub fn render_svg(source: &str) -> Result<String> {
    let mut child = Command::new("dot")
        .arg("-Tsvg")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| match e.kind() {
            ErrorKind::NotFound => Failure::new(
                "`dot` (Graphviz) is not installed and draws the flow graph: apt-get install \
                 graphviz, or pass --no-graph to write the page without it",
            ),
            _ => Failure::new(format!("cannot run `dot` (Graphviz): {e}")),
        })?;
    let stdin = child.stdin.take();
    let input = source.to_owned();
    // dot reads its whole input before it writes: feeding it from another thread keeps a large
    // graph from filling both pipes at once.
    let writer = std::thread::spawn(move || match stdin {
        Some(mut pipe) => pipe.write_all(input.as_bytes()),
        None => Ok(()),
    });
    let output = child
        .wait_with_output()
        .map_err(|e| Failure::new(format!("cannot wait for `dot` (Graphviz): {e}")))?;
    let written = writer.join();
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        let lines: Vec<&str> = stderr
            .lines()
            .filter(|l| !l.trim().is_empty())
            .take(STDERR_LINES)
            .collect();
        return Err(Failure::new(format!(
            "`dot` (Graphviz) failed to draw the flow graph ({}): {}",
            output.status,
            match lines.is_empty() {
                true => "nothing on stderr".to_owned(),
                false => lines.join(" / "),
            }
        )));
    }
    if let Ok(Err(e)) = written {
        return Err(Failure::new(format!(
            "cannot send the flow graph to `dot` (Graphviz): {e}"
        )));
    }
    let svg = String::from_utf8_lossy(&output.stdout);
    match svg.find("<svg") {
        Some(start) => Ok(svg[start..].trim_end().to_owned()),
        None => Err(Failure::new(
            "`dot` (Graphviz) printed no SVG for the flow graph (is `dot -Tsvg` supported?)",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoted_strings_cannot_end_early_or_carry_escapes() {
        assert_eq!(quote(r#"a"b"#), r#""a\"b""#);
        assert_eq!(quote(r"tail\"), r#""tail\\""#);
        assert_eq!(quote("x\\l\ny"), r#""x\\l\ny""#);
    }
}
