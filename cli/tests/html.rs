//! `eda catalog --html` on the four shop example binaries, the page loaded in real headless
//! Chromium: the rendered DOM has a section per event and service of the merged catalog, the
//! inline SVG drawn by Graphviz a node per service and event and an edge per emit and
//! handler; a screenshot goes to `target/test-output/catalog.png`. Names from a hostile
//! catalog never become markup; bad output directories and a missing or failing `dot` are one
//! clear line.
//!
//! Needs Graphviz (`dot`) and Chromium: `apt-get install graphviz chromium` (`scripts/test`
//! installs both). Without them the tests fail saying so.
#![allow(missing_docs, missing_debug_implementations)]

mod support;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use support::{eda_command, shop, target_dir};

use serde_json::Value;

/// Fails the test, saying how to install it, when `tool` does not run.
fn require(tool: &str, probe: &str, package: &str) {
    let runs = Command::new(tool)
        .arg(probe)
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        runs,
        "`{tool}` is needed by this test and does not run: apt-get install {package} \
         (scripts/test installs it)"
    );
}

fn require_tools() {
    require("dot", "-V", "graphviz");
    require("chromium", "--version", "chromium");
}

/// A fresh directory under the system temp dir, named after the test.
fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("eda-html-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

/// Runs the built `eda` binary with `args` (no `EDA_*` variable of the caller), `path` as
/// `PATH` when given.
fn eda(args: &[&str], path: Option<&Path>) -> Output {
    let mut command = eda_command(args);
    if let Some(path) = path {
        command.env("PATH", path);
    }
    command.output().expect("eda runs")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// `eda <args>`, which must succeed; its stdout.
fn ok(args: &[&str]) -> String {
    let output = eda(args, None);
    assert!(
        output.status.success(),
        "eda {args:?}: {}\nstdout: {}",
        text(&output.stderr),
        text(&output.stdout)
    );
    text(&output.stdout)
}

/// `eda <args>` with `PATH=path`, which must fail with exit code 1 and one line on stderr.
fn fails(args: &[&str], path: Option<&Path>) -> String {
    let output = eda(args, path);
    let err = text(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "eda {args:?}: {err}");
    assert_eq!(err.trim_end().lines().count(), 1, "one line: {err}");
    err
}

/// Runs headless Chromium (as root it needs `--no-sandbox`) with a profile of its own.
fn chromium(profile: &Path, args: &[&str]) -> Output {
    let output = Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--disable-dev-shm-usage",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(args)
        .output()
        .expect("chromium runs");
    assert!(
        output.status.success(),
        "chromium {args:?}: {}",
        text(&output.stderr)
    );
    output
}

/// The DOM of `page` after Chromium loaded and rendered it.
fn rendered_dom(scratch: &Path, page: &Path) -> String {
    let url = format!("file://{}", page.display());
    let dom = text(&chromium(&scratch.join("profile"), &["--dump-dom", &url]).stdout);
    assert!(dom.contains("</html>"), "a whole document: {dom}");
    dom
}

/// The element that starts with `start` in `dom`, up to its closing `end` tag.
fn element<'a>(dom: &'a str, start: &str, end: &str) -> &'a str {
    let from = dom
        .find(start)
        .unwrap_or_else(|| panic!("`{start}` in the rendered page"));
    let len = dom[from..]
        .find(end)
        .unwrap_or_else(|| panic!("`{end}` after `{start}`"));
    &dom[from..from + len + end.len()]
}

fn strings(value: &Value) -> Vec<String> {
    value
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn the_shop_catalog_page_renders_every_event_service_and_flow_edge_in_chromium() {
    require_tools();
    let binaries: Vec<&str> = shop().iter().map(String::as_str).collect();
    let merged: Value = serde_json::from_str(&ok(&[&["catalog"], &binaries[..]].concat()))
        .expect("eda catalog prints JSON");
    let out = scratch("shop");
    let out_text = out.join("site").to_string_lossy().into_owned();
    let said = ok(&[&["catalog", "--html", &out_text], &binaries[..]].concat());
    let page = out.join("site/index.html");
    assert!(
        said.contains(&format!("wrote {}", page.display())),
        "{said}"
    );

    let source = std::fs::read_to_string(&page).expect("index.html written");
    for forbidden in ["<script", "<link", " src=", "url(", "@import", "<iframe"] {
        assert!(
            !source.contains(forbidden),
            "the page is self-contained: no `{forbidden}`"
        );
    }
    assert!(source.contains("Content-Security-Policy\" content=\"default-src 'none'"));

    let dom = rendered_dom(&out, &page);
    let events = merged["events"].as_array().expect("events");
    let services = merged["services"].as_array().expect("services");
    let names: BTreeSet<&str> = events.iter().filter_map(|e| e["name"].as_str()).collect();
    assert!(
        names.len() >= 7,
        "the shop has at least 7 events: {names:?}"
    );

    for event in events {
        let name = event["name"].as_str().expect("name");
        let version = &event["version"];
        let article = element(
            &dom,
            &format!("<article class=\"event\" id=\"event-{name}\""),
            "</article>",
        );
        assert!(
            article.contains(&format!("id=\"event-{name}-v{version}\"")),
            "{name} v{version} has its block: {article}"
        );
        let fingerprint = event["fingerprint"].as_str().expect("fingerprint");
        assert!(article.contains(fingerprint), "{name}: {fingerprint}");
        let properties = event["schema"]["properties"].as_object().expect("fields");
        for field in properties.keys() {
            assert!(
                article.contains(&format!("<td><code>{field}</code></td>")),
                "{name} v{version}: field `{field}` in its table"
            );
        }
        assert!(article.contains("<summary>JSON Schema</summary>"), "{name}");
        for handler in event["handled_by"].as_array().expect("handled_by") {
            let (s, h) = (&handler["service"], &handler["handler"]);
            let link = format!(
                "href=\"#handler-{}-{}\"",
                s.as_str().unwrap(),
                h.as_str().unwrap()
            );
            assert!(article.contains(&link), "{name} handled by {s}/{h}");
        }
        for service in strings(&event["emitted_by"]) {
            assert!(
                article.contains(&format!("href=\"#service-{service}\"")),
                "{name} emitted by {service}"
            );
        }
    }

    // Upcast chains, from what the binaries say (`upcast_from`).
    for service in services {
        for def in service["events"].as_array().expect("events") {
            let Some(from) = def["upcast_from"].as_str() else {
                continue;
            };
            let name = def["name"].as_str().unwrap();
            let article = element(
                &dom,
                &format!("<article class=\"event\" id=\"event-{name}\""),
                "</article>",
            );
            let upcast = element(article, "<dd class=\"upcast\">", "</dd>");
            let link = format!(
                "{from} → v{} {}",
                def["version"],
                def["type_name"].as_str().unwrap()
            );
            assert!(upcast.contains(&link), "{link} in {upcast}");
        }
    }

    let svg = element(&dom, "<svg", "</svg>");
    let flow = element(&dom, "<section id=\"flow\"", "</section>");
    assert!(
        flow.contains(svg),
        "the graph is inline in the flow section"
    );
    for service in services {
        let name = service["service"].as_str().expect("service");
        let article = element(
            &dom,
            &format!("<article class=\"service\" id=\"service-{name}\""),
            "</article>",
        );
        assert!(
            article.contains(service["binary"].as_str().unwrap()),
            "{name}: its binary"
        );
        for handler in service["handlers"].as_array().expect("handlers") {
            let h = handler["name"].as_str().unwrap();
            let row = element(
                article,
                &format!("<tr class=\"handler\" id=\"handler-{name}-{h}\""),
                "</tr>",
            );
            let subject = handler["subject"].as_str().unwrap();
            assert!(
                row.contains(&format!("<code>{}</code>", subject.replace('>', "&gt;"))),
                "{name}/{h}: subject {subject} in {row}"
            );
            for (option, value) in handler["options"].as_object().expect("options") {
                if !value.is_null() {
                    assert!(
                        row.contains(&format!("<b>{option}</b>")),
                        "{name}/{h}: option {option} in {row}"
                    );
                }
            }
        }
        let node = element(
            svg,
            &format!("<g id=\"node-service-{name}\" class=\"node service\">"),
            "</g>",
        );
        assert!(node.contains(&format!(">{name}</text>")), "{node}");
    }
    for name in &names {
        let node = element(
            svg,
            &format!("<g id=\"node-event-{name}\" class=\"node event\">"),
            "</g>",
        );
        assert!(node.contains(&format!(">{name}</text>")), "{node}");
    }
    assert_eq!(
        svg.matches("class=\"node service\"").count(),
        services.len(),
        "one node per service"
    );
    assert_eq!(
        svg.matches("class=\"node event\"").count(),
        names.len(),
        "one node per event name"
    );
    let mut emits = 0;
    for event in events {
        let name = event["name"].as_str().unwrap();
        for service in strings(&event["emitted_by"]) {
            emits += 1;
            let edge = format!("<title>service:{service}-&gt;event:{name}</title>");
            assert!(svg.contains(&edge), "{edge} in the graph");
        }
        for handler in event["handled_by"].as_array().unwrap() {
            let service = handler["service"].as_str().unwrap();
            let edge = format!("<title>event:{name}-&gt;service:{service}</title>");
            assert!(svg.contains(&edge), "{edge} in the graph");
        }
    }
    assert!(emits >= 7, "the shop declares what it emits: {emits} edges");

    // A screenshot for people to look at.
    let output_dir = target_dir().join("test-output");
    std::fs::create_dir_all(&output_dir).expect("test output dir");
    let png = output_dir.join("catalog.png");
    let _ = std::fs::remove_file(&png);
    chromium(
        &out.join("profile"),
        &[
            &format!("--screenshot={}", png.display()),
            "--window-size=1280,2000",
            &format!("file://{}", page.display()),
        ],
    );
    let bytes = std::fs::read(&png).expect("the screenshot is written");
    assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n", "a PNG");
    let width = u32::from_be_bytes(bytes[16..20].try_into().unwrap());
    let height = u32::from_be_bytes(bytes[20..24].try_into().unwrap());
    assert_eq!((width, height), (1280, 2000), "the window size");
    // A blank 1280x2000 page compresses to a few kilobytes; text, tables and the graph do not.
    assert!(
        bytes.len() > 50_000,
        "the screenshot shows content: {} bytes",
        bytes.len()
    );
    let _ = std::fs::remove_dir_all(&out);
}

/// A "service binary" printing a catalog whose every name tries to inject markup.
fn hostile_binary(dir: &Path) -> String {
    let evil_event = "<img src=x onerror=alert(1)>";
    let evil_service = "\"><script>alert(2)</script>";
    let evil_handler = "</title><script>alert(3)</script>";
    let catalog = serde_json::json!({
        "service": evil_service,
        "subject_prefix": "events",
        "handlers": [{
            "name": evil_handler, "subject": evil_event,
            "event": {"name": evil_event, "version": 2, "oldest_version": 1},
            "options": {"breaker": "</td><script>alert(4)</script>"},
            "emits": [evil_event]
        }],
        "events": [
            {"name": evil_event, "version": 1, "type_name": "<b>V1</b>", "upcast_from": null,
             "fingerprint": "<i>f1</i>", "schema": {"type": "object", "properties": {}}},
            {"name": evil_event, "version": 2, "type_name": "<b>V2</b>", "upcast_from": "<b>V1</b>",
             "fingerprint": "<i>f2</i>",
             "schema": {"type": "object",
                        "properties": {"<svg onload=alert(5)>": {"type": "string",
                                       "description": "</pre></details><script>alert(6)</script>"}},
                        "required": ["<svg onload=alert(5)>"]}}
        ],
        "emits": [evil_event],
        "permissions": {"service": evil_service, "publish": [], "subscribe": [], "undeclared": []}
    });
    let json_path = dir.join("catalog.json");
    std::fs::write(&json_path, catalog.to_string()).expect("catalog written");
    let script = dir.join("evil-service");
    std::fs::write(
        &script,
        format!("#!/bin/sh\ncat '{}'\n", json_path.display()),
    )
    .expect("script written");
    let mut permissions = std::fs::metadata(&script).unwrap().permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut permissions, 0o755);
    std::fs::set_permissions(&script, permissions).unwrap();
    script.to_string_lossy().into_owned()
}

#[test]
fn names_from_a_catalog_never_become_markup_in_the_page_or_the_graph() {
    require_tools();
    let dir = scratch("hostile");
    let binary = hostile_binary(&dir);
    let site = dir.join("site").to_string_lossy().into_owned();
    ok(&["catalog", "--html", &site, &binary]);
    let page = dir.join("site/index.html");
    let dom = rendered_dom(&dir, &page);
    for tag in [
        "<script",
        "<img",
        "<i>",
        "<b>V",
        "<svg onload",
        "<td><script",
    ] {
        assert!(!dom.contains(tag), "`{tag}` became markup:\n{dom}");
    }
    assert_eq!(dom.matches("<svg").count(), 1, "only the graph's own svg");
    assert_eq!(
        dom.matches("<details").count(),
        2,
        "one raw schema per version"
    );
    for shown in [
        "&lt;img src=x onerror=alert(1)&gt;",
        "\"&gt;&lt;script&gt;alert(2)&lt;/script&gt;",
        "&lt;/title&gt;&lt;script&gt;alert(3)&lt;/script&gt;",
        "&lt;/pre&gt;&lt;/details&gt;&lt;script&gt;alert(6)&lt;/script&gt;",
    ] {
        assert!(dom.contains(shown), "`{shown}` shown as text:\n{dom}");
    }
    let svg = element(&dom, "<svg", "</svg>");
    assert!(
        svg.contains("class=\"node service\"") && svg.contains("class=\"node event\""),
        "the graph still has its nodes: {svg}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn bad_output_directories_and_a_missing_or_failing_dot_are_one_clear_line() {
    let billing = &shop()[1];
    let dir = scratch("errors");
    let file = dir.join("a-file");
    std::fs::write(&file, "not a directory").unwrap();
    let under_file = file.join("site").to_string_lossy().into_owned();
    let err = fails(
        &["catalog", "--html", &under_file, billing, "--no-graph"],
        None,
    );
    assert!(
        err.contains(&format!(
            "cannot create the output directory `{under_file}`"
        )),
        "{err}"
    );

    let site = dir.join("site").to_string_lossy().into_owned();
    let err = fails(&["catalog", "--html", &site, "/bin/false"], None);
    assert!(
        err.contains("`/bin/false` failed with EDA_CATALOG=json"),
        "{err}"
    );

    // No `dot` on PATH.
    let empty = dir.join("empty-path");
    std::fs::create_dir_all(&empty).unwrap();
    let err = fails(&["catalog", "--html", &site, billing], Some(&empty));
    assert!(
        err.contains("`dot` (Graphviz) is not installed")
            && err.contains("apt-get install graphviz"),
        "{err}"
    );
    assert!(err.contains("--no-graph"), "{err}");
    assert!(!dir.join("site/index.html").exists(), "nothing written");

    // `--no-graph` needs no Graphviz.
    let said = eda(
        &["catalog", "--html", &site, "--no-graph", billing],
        Some(&empty),
    );
    assert!(said.status.success(), "{}", text(&said.stderr));
    let page = std::fs::read_to_string(dir.join("site/index.html")).unwrap();
    assert!(page.contains("class=\"no-graph\"") && !page.contains("<svg"));
    assert!(page.contains("id=\"service-billing\""));

    // A `dot` that fails.
    let broken = dir.join("broken-dot");
    std::fs::create_dir_all(&broken).unwrap();
    let dot = broken.join("dot");
    std::fs::write(
        &dot,
        "#!/bin/sh\necho 'Error: <stdin>: syntax error in line 1' >&2\nexit 1\n",
    )
    .unwrap();
    let mut permissions = std::fs::metadata(&dot).unwrap().permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut permissions, 0o755);
    std::fs::set_permissions(&dot, permissions).unwrap();
    let err = fails(&["catalog", "--html", &site, billing], Some(&broken));
    assert!(
        err.contains("`dot` (Graphviz) failed to draw the flow graph (exit status: 1)")
            && err.contains("syntax error in line 1"),
        "{err}"
    );

    let usage = eda(&["catalog", "--no-graph", billing], None);
    assert_eq!(
        usage.status.code(),
        Some(2),
        "--no-graph without --html: {}",
        text(&usage.stderr)
    );
    let _ = std::fs::remove_dir_all(&dir);
}
