//! JSON Schemas of events and their fingerprints (what the registry and the catalog compare).

use sha2::{Digest, Sha256};

/// The JSON Schema (draft 2020-12, from schemars) of `T`.
pub fn schema_of<T: schemars::JsonSchema>() -> serde_json::Value {
    schemars::SchemaGenerator::default()
        .into_root_schema_for::<T>()
        .to_value()
}

/// Fingerprint of a schema: lowercase hex SHA-256 of its canonical JSON (object keys sorted,
/// no white space) without the annotation keywords `title`, `description`, `$schema` and
/// `examples` at any level, so that doc comments and renaming the Rust type do not change it.
/// It changes whenever a field, a type, a constraint or a nested type's name changes.
pub fn fingerprint(schema: &serde_json::Value) -> String {
    let mut canonical = String::new();
    write_schema(schema, &mut canonical);
    let digest = Sha256::digest(canonical.as_bytes());
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// Keywords that annotate a schema without constraining instances.
const ANNOTATIONS: &[&str] = &["title", "description", "$schema", "examples"];
/// Keywords whose value maps names to schemas.
const SCHEMA_MAPS: &[&str] = &[
    "properties",
    "$defs",
    "definitions",
    "patternProperties",
    "dependentSchemas",
];
/// Keywords whose value is instance data, not a schema.
const DATA: &[&str] = &["enum", "const", "default", "required"];

fn write_schema(value: &serde_json::Value, out: &mut String) {
    match value {
        serde_json::Value::Object(map) => {
            let mut keys: Vec<&String> = map
                .keys()
                .filter(|k| !ANNOTATIONS.contains(&k.as_str()))
                .collect();
            keys.sort();
            out.push('{');
            for (i, key) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_key(key, out);
                let child = &map[key];
                match (key.as_str(), child) {
                    (k, serde_json::Value::Object(schemas)) if SCHEMA_MAPS.contains(&k) => {
                        let mut names: Vec<&String> = schemas.keys().collect();
                        names.sort();
                        out.push('{');
                        for (j, name) in names.into_iter().enumerate() {
                            if j > 0 {
                                out.push(',');
                            }
                            write_key(name, out);
                            write_schema(&schemas[name], out);
                        }
                        out.push('}');
                    }
                    (k, data) if DATA.contains(&k) => write_canonical(data, out),
                    (_, nested) => write_schema(nested, out),
                }
            }
            out.push('}');
        }
        serde_json::Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_schema(item, out);
            }
            out.push(']');
        }
        scalar => out.push_str(&scalar.to_string()),
    }
}

fn write_key(key: &str, out: &mut String) {
    out.push_str(&serde_json::Value::String(key.to_owned()).to_string());
    out.push(':');
}

fn write_canonical(value: &serde_json::Value, out: &mut String) {
    match value {
        serde_json::Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            out.push('{');
            for (i, key) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_key(key, out);
                write_canonical(&map[key], out);
            }
            out.push('}');
        }
        serde_json::Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_canonical(item, out);
            }
            out.push(']');
        }
        scalar => out.push_str(&scalar.to_string()),
    }
}
