// Parses an AsyncAPI document (stdin) with the official parser, @asyncapi/parser, and prints
// one JSON object: the parser's diagnostics by severity, and what the parsed document holds
// (messages, channels, operations with their bindings), read through the parser's model.
//
//   node asyncapi_parse.js <node_modules directory> < asyncapi.yaml
"use strict";

const path = require("path");

const modules = process.argv[2];
if (!modules) {
  console.error("usage: node asyncapi_parse.js <node_modules directory> < document");
  process.exit(2);
}
const { Parser } = require(path.resolve(modules, "@asyncapi", "parser"));

const SEVERITY = ["error", "warning", "info", "hint"];

async function main() {
  const chunks = [];
  for await (const chunk of process.stdin) chunks.push(chunk);
  const text = Buffer.concat(chunks).toString("utf8");
  const { document, diagnostics } = await new Parser().parse(text);
  const report = { diagnostics: {}, document: null };
  for (const severity of SEVERITY) report.diagnostics[severity] = [];
  for (const d of diagnostics) {
    report.diagnostics[SEVERITY[d.severity] || "error"].push(
      `${d.code}: ${d.message} at /${(d.path || []).join("/")}`
    );
  }
  if (document) {
    report.document = {
      version: document.version(),
      title: document.info().title(),
      servers: document.servers().all().map((s) => ({
        id: s.id(),
        host: s.host(),
        protocol: s.protocol(),
      })),
      messages: document.components().messages().all().map((m) => ({
        id: m.id(),
        name: m.name(),
        contentType: m.contentType(),
        schemaFormat: m.hasPayload() ? m.payload().schemaFormat() : null,
        // The schema itself, also inside a multi-format schema object.
        payload: m.hasPayload() ? schemaOf(m.payload().json()) : null,
        headers: m.hasHeaders()
          ? Object.keys(allProperties(m.headers().json()))
          : [],
      })),
      channels: document.channels().all().map((c) => ({
        id: c.id(),
        address: c.address(),
        messages: c.messages().all().map((m) => m.name()),
      })),
      operations: document.operations().all().map((o) => ({
        id: o.id(),
        action: o.action(),
        channels: o.channels().all().map((c) => c.address()),
        messages: o.messages().all().map((m) => m.name()),
        nats: o.bindings().has("nats") ? o.bindings().get("nats").value() : null,
        bindingVersion: o.bindings().has("nats")
          ? o.bindings().get("nats").version()
          : null,
      })),
    };
  }
  process.stdout.write(JSON.stringify(report));
}

function schemaOf(json) {
  return typeof json.schema === "object" ? json.schema : json;
}

// The properties of a (dereferenced) object schema, through `allOf` too.
function allProperties(schema) {
  const found = Object.assign({}, schema.properties || {});
  for (const part of schema.allOf || []) Object.assign(found, allProperties(part));
  return found;
}

main().catch((e) => {
  console.error(`the parser failed: ${e && e.stack ? e.stack : e}`);
  process.exit(1);
});
