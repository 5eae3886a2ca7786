//! The layering of DESIGN.md §1, checked on the sources: a module never names one above it.

/// The runtime's modules, bottom first; a module may use those of its own layer and below.
const LAYERS: &[&[&str]] = &[
    &["error", "config", "random", "lifecycle", "schema"],
    &["event"],
    &["dlq", "wire", "observe"],
    &["port", "idempotency"],
    &["publish", "aggregate"],
    &["handler"],
    &["registry"],
    &["delivery", "breaker", "private", "actions"],
    &["transport"],
    &["backend"],
    &["app"],
    &["testing"],
];

/// Test-only files allowed to reach up: the decode fuzz drives wire's private readers and
/// then the whole typed decode handlers use (`handler::EventParam`).
const TEST_ONLY: &[&str] = &["wire/fuzz.rs"];

fn layer(module: &str) -> Option<usize> {
    LAYERS.iter().position(|layer| layer.contains(&module))
}

/// The top-level module a source file belongs to (`delivery/driver.rs` -> `delivery`).
fn module_of(path: &std::path::Path, root: &std::path::Path) -> Option<String> {
    let relative = path.strip_prefix(root).ok()?;
    let first = relative.components().next()?.as_os_str().to_str()?;
    Some(first.trim_end_matches(".rs").to_owned())
}

/// Every `crate::<module>` a file's code (not its comments) names.
fn named_modules(source: &str) -> Vec<String> {
    let mut found = Vec::new();
    for line in source.lines() {
        let code = line.split("//").next().unwrap_or("");
        let mut rest = code;
        while let Some(at) = rest.find("crate::") {
            rest = &rest[at + "crate::".len()..];
            let name: String = rest
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            if !name.is_empty() {
                found.push(name);
            }
        }
    }
    found
}

fn sources(dir: &std::path::Path, out: &mut Vec<std::path::PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

#[test]
fn no_module_names_one_above_it() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    sources(&root, &mut files);
    assert!(
        files.len() > 20,
        "found the sources under {}",
        root.display()
    );
    let mut upward = Vec::new();
    for file in &files {
        let Some(module) = module_of(file, &root) else {
            continue;
        };
        if module == "lib" || module == "layers" {
            continue;
        }
        if TEST_ONLY.iter().any(|t| file.ends_with(t)) {
            continue;
        }
        let own = layer(&module).unwrap_or_else(|| {
            panic!("module `{module}` has no layer: add it to LAYERS (and DESIGN.md §1)")
        });
        let text = std::fs::read_to_string(file).unwrap();
        for named in named_modules(&text) {
            match layer(&named) {
                Some(theirs) if theirs > own => upward.push(format!(
                    "{} (layer {own}) names `crate::{named}` (layer {theirs})",
                    file.display()
                )),
                _ => {}
            }
        }
    }
    assert!(
        upward.is_empty(),
        "imports that run up the layers:\n{}",
        upward.join("\n")
    );
}

#[test]
fn names_in_code_are_found_and_names_in_comments_are_not() {
    assert_eq!(
        named_modules("use crate::app::App; // see crate::testing\n/// [`crate::backend`]"),
        ["app"]
    );
    assert!(
        layer("app") > layer("event"),
        "an event naming the app would be reported"
    );
}
