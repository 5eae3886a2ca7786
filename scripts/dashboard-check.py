#!/usr/bin/env python3
"""Checks the Grafana dashboard docs/grafana/eda.json, so that it cannot rot.

Without arguments it checks the dashboard alone, no Prometheus needed: the JSON model
(variables, panels, grid, datasource), that every metric a query uses is one docs/metrics.md
defines and edaruntime/src/observe/names.rs names (the two agree), that label keys and
values (`outcome`, `reason`, `to`) are the metric's own, that every Grafana variable a query
uses is defined, and that every metric of docs/metrics.md has a panel.

With --prometheus (scripts/demo --check passes the demo's) it also runs what Grafana would
run: the `service` and `handler` variable queries, then every panel's every query with the
variables substituted (`$service` and `$handler` as "All", `.*`, then as the --pick values;
`$__rate_interval`, `$__interval` and `$__range` from the time range and scrape interval), as
a range query over the run (an instant query for instant targets), and fails naming each
panel by title with its query when one returns no series or no finite value, or, for a
picked value, a series of another service, handler or instance. It also checks that every
metric the dashboard uses has series in Prometheus (see ABSENT_IN_DEMO).
"""
import argparse
import json
import math
import os
import re
import sys
import time
import urllib.error
import urllib.parse
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DASHBOARD = os.path.join(ROOT, "docs", "grafana", "eda.json")
METRICS_DOC = os.path.join(ROOT, "docs", "metrics.md")
NAMES_RS = os.path.join(ROOT, "edaruntime", "src", "observe", "names.rs")

# Metrics that may have no series in the demo, with the reason. Their panels still return
# data: they fall back to a 0 per instance.
ABSENT_IN_DEMO = {
    "eda_broker_reconnects_total": "created at an app's first reconnect; the demo never loses its broker",
}
# Labels Prometheus adds to every scraped series.
TARGET_LABELS = {"job", "instance"}
# Label keys whose values the metrics table lists (in backticks).
ENUM_LABELS = {"outcome", "reason", "to"}
GRAFANA_BUILTINS = {
    "__rate_interval", "__interval", "__interval_ms", "__range", "__range_s", "__range_ms",
}
# Instance-level series (publishes, breakers, the broker connection) carry no `service`
# label; panels keep the instances that run a selected service with
#   and on (job, instance) (eda_handlers_in_flight{service=~"$service"} or INSTANCE_ANY)
# where INSTANCE_ANY (every app has the gauge) matches every instance when $service is All:
# the regex .* matches the missing label, a service name does not.
INSTANCE_ANY = 'eda_broker_connected{service=~"$service"}'
PANEL_TYPES = {"row", "stat", "timeseries", "state-timeline", "bargauge", "table", "gauge", "text"}
VARIABLE = re.compile(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)|\[\[(\w+)\]\]")


def read_metrics_doc(path=METRICS_DOC):
    """{name: {"type", "labels", "values"}} from the table of docs/metrics.md."""
    metrics = {}
    with open(path) as f:
        for line in f:
            if not line.startswith("| `eda_"):
                continue
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            name = cells[0].strip("`")
            metrics[name] = {
                "type": cells[1],
                "labels": set(re.findall(r"`(\w+)`", cells[2])),
                "values": set(re.findall(r"`(\w+)`", cells[3])),
            }
    return metrics


def read_runtime_names(path=NAMES_RS):
    """Metric names and label keys defined in edaruntime::observe."""
    with open(path) as f:
        text = f.read()
    names = set(re.findall(r'pub const \w+: &str = "(eda_\w+)";', text))
    module = re.search(r"pub mod label \{(.*?)\}", text, re.S)
    labels = set(re.findall(r'pub const \w+: &str = "(\w+)";', module.group(1))) if module else set()
    return names, labels


def metric_refs(expr, metrics):
    """(name as written, metric base name) of every eda metric an expression selects."""
    refs = []
    for written in re.findall(r"\b(eda_\w+)\b", expr):
        base = written
        for suffix in ("_bucket", "_sum", "_count"):
            if written.endswith(suffix) and written[: -len(suffix)] in metrics:
                base = written[: -len(suffix)]
        refs.append((written, base))
    return refs


def targets(dashboard):
    """(panel, target) of every query of every panel (rows' collapsed panels too)."""
    for panel in dashboard.get("panels", []):
        for p in [panel] + panel.get("panels", []):
            for t in p.get("targets", []):
                yield p, t


def static_problems(dashboard, metrics, runtime_names, runtime_labels):
    problems = []
    doc_names = set(metrics)
    if doc_names != runtime_names:
        problems.append(
            f"docs/metrics.md and names.rs disagree: only in the doc {sorted(doc_names - runtime_names)}, "
            f"only in names.rs {sorted(runtime_names - doc_names)}"
        )
    for name, m in metrics.items():
        if not m["labels"] <= runtime_labels:
            problems.append(f"docs/metrics.md gives {name} labels {sorted(m['labels'] - runtime_labels)} names.rs does not define")

    for key in ("title", "uid", "panels", "templating", "time", "schemaVersion", "annotations"):
        if key not in dashboard:
            problems.append(f"the dashboard has no `{key}`")
    if not isinstance(dashboard.get("schemaVersion"), int) or dashboard["schemaVersion"] < 36:
        problems.append(f"schemaVersion {dashboard.get('schemaVersion')!r}: Grafana 10/11 dashboards have 36 or more")
    variables = {v.get("name"): v for v in dashboard.get("templating", {}).get("list", [])}
    ds = variables.get("datasource")
    if not ds or ds.get("type") != "datasource" or ds.get("query") != "prometheus":
        problems.append("no `datasource` variable of type datasource for prometheus")
    for name in ("service", "handler"):
        v = variables.get(name)
        if not v or v.get("type") != "query":
            problems.append(f"no `{name}` query variable")
            continue
        query = variable_query(v)
        if not re.match(r"label_values\(.*,\s*" + name + r"\)$", query or ""):
            problems.append(f"variable `{name}` is not fed by label_values(..., {name}): {query!r}")
        if not v.get("includeAll") or v.get("allValue") != ".*":
            problems.append(f"variable `{name}` needs includeAll with allValue .*")
        if (v.get("datasource") or {}).get("uid") != "${datasource}":
            problems.append(f"variable `{name}` does not use the ${{datasource}} variable")
        problems += expr_problems(f"variable `{name}`", query or "", metrics, variables)

    ids = set()
    cells = {}
    used = set()
    for panel in dashboard.get("panels", []):
        for p in [panel] + panel.get("panels", []):
            title = p.get("title") or "?"
            if p.get("id") in ids:
                problems.append(f"panel {title!r}: id {p.get('id')} used twice")
            ids.add(p.get("id"))
            if p.get("type") not in PANEL_TYPES:
                problems.append(f"panel {title!r}: type {p.get('type')!r}")
            g = p.get("gridPos", {})
            if not all(isinstance(g.get(k), int) for k in "hwxy") or g["x"] < 0 or g["x"] + g["w"] > 24:
                problems.append(f"panel {title!r}: gridPos {g}")
            else:
                area = {(x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])}
                for other in sorted({cells[c] for c in area if c in cells}):
                    problems.append(f"panel {title!r} overlaps panel {other!r}")
                cells.update(dict.fromkeys(area, title))
            if p.get("type") == "row":
                continue
            if not p.get("title"):
                problems.append(f"panel id {p.get('id')} has no title")
            if (p.get("datasource") or {}).get("uid") != "${datasource}":
                problems.append(f"panel {title!r} does not use the ${{datasource}} variable")
            refs = [t.get("refId") for t in p.get("targets", [])]
            if not refs:
                problems.append(f"panel {title!r} has no query")
            if len(set(refs)) != len(refs):
                problems.append(f"panel {title!r}: refIds {refs}")
    for p, t in targets(dashboard):
        where = f"panel {p.get('title')!r} ({t.get('refId')})"
        expr = t.get("expr", "")
        if not expr:
            problems.append(f"{where} has no expr")
        if (t.get("datasource") or p.get("datasource") or {}).get("uid") != "${datasource}":
            problems.append(f"{where} does not use the ${{datasource}} variable")
        if not metric_refs(expr, metrics):
            problems.append(f"{where} uses no eda metric: {expr}")
        used |= {base for _, base in metric_refs(expr, metrics)}
        problems += expr_problems(where, expr, metrics, variables)
    for name in sorted(set(metrics) - used):
        problems.append(f"no panel shows {name} (docs/metrics.md defines it)")
    return problems


def expr_problems(where, written_expr, metrics, variables):
    problems = []
    expr = written_expr.replace(INSTANCE_ANY, "eda_broker_connected")
    refs = metric_refs(expr, metrics)
    for written, base in refs:
        if base not in metrics:
            problems.append(f"{where}: {written} is not a metric of docs/metrics.md: {written_expr}")
        elif written != base and metrics[base]["type"] != "histogram":
            problems.append(f"{where}: {written}: {base} is a {metrics[base]['type']}, not a histogram")
    carried = set(TARGET_LABELS)
    for written, base in refs:
        if base in metrics:
            carried |= metrics[base]["labels"] | ({"le"} if written.endswith("_bucket") else set())
    for written, body in re.findall(r"\b(eda_\w+)\s*\{([^}]*)\}", expr):
        base = dict(refs).get(written)
        if base not in metrics:
            continue
        own = metrics[base]["labels"] | TARGET_LABELS | ({"le"} if written.endswith("_bucket") else set())
        for key, _, value in re.findall(r'(\w+)\s*(=~|!~|!=|=)\s*"([^"]*)"', body):
            if key not in own:
                problems.append(f"{where}: {written} has no label `{key}`: {written_expr}")
            elif key in ENUM_LABELS and "$" not in value:
                for alternative in value.split("|"):
                    if alternative not in metrics[base]["values"]:
                        problems.append(f"{where}: `{key}` of {base} is never {alternative!r}: {written_expr}")
    for _, labels in re.findall(r"\b(by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)", expr):
        for key in filter(None, (k.strip() for k in labels.split(","))):
            if key not in carried:
                problems.append(f"{where}: no metric of the query has label `{key}`: {written_expr}")
    for opening, closing in ("()", "{}", "[]"):
        if expr.count(opening) != expr.count(closing):
            problems.append(f"{where}: unbalanced {opening}{closing}: {written_expr}")
    for m in VARIABLE.finditer(expr):
        name = next(g for g in m.groups() if g)
        if name not in GRAFANA_BUILTINS and name not in variables:
            problems.append(f"{where}: variable ${name} is not defined: {written_expr}")
    return problems


def variable_query(v):
    q = v.get("query")
    return q.get("query") if isinstance(q, dict) else q


def interpolate(expr, values):
    def sub(m):
        name = next(g for g in m.groups() if g)
        return values[name]

    return VARIABLE.sub(sub, expr)


def prometheus_get(url, path, params):
    full = f"{url}{path}?" + urllib.parse.urlencode(params, doseq=True)
    try:
        with urllib.request.urlopen(full, timeout=10) as response:
            body = json.load(response)
    except urllib.error.HTTPError as e:
        try:
            body = json.load(e)
        except ValueError:
            return None, f"HTTP {e.code}"
    except OSError as e:
        return None, str(e)
    if body.get("status") != "success":
        return None, f"{body.get('errorType')}: {body.get('error')}"
    return body["data"], None


def finite(value):
    try:
        return math.isfinite(float(value))
    except (TypeError, ValueError):
        return False


def duration(seconds):
    return f"{max(1, int(round(seconds)))}s"


def live_problems(dashboard, metrics, prometheus, since, until, step, scrape, picks):
    problems = []
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    rng = until - since
    builtins = {
        "__interval": duration(step),
        "__interval_ms": str(int(step * 1000)),
        "__rate_interval": duration(max(step + scrape, 4 * scrape)),
        "__range": duration(rng),
        "__range_s": str(int(rng)),
        "__range_ms": str(int(rng * 1000)),
    }
    passes = [{"service": ".*", "handler": ".*"}]
    if picks:
        passes.append({**passes[0], **picks})
    checked = 0
    for chosen in passes:
        values = {**builtins, **chosen, "datasource": "prometheus"}
        shown = ", ".join(f"{k}={v}" for k, v in chosen.items())
        for name in ("service", "handler"):
            query = interpolate(variable_query(variables[name]), values)
            selector, label = re.match(r"label_values\((.*),\s*(\w+)\)$", query).groups()
            data, error = prometheus_get(
                prometheus, f"/api/v1/label/{label}/values", {"match[]": selector, "start": since, "end": until}
            )
            if error or not data:
                problems.append(f"variable `{name}` ({shown}): {error or 'no values'}: {query}")
            elif chosen[name] != ".*" and chosen[name] not in data:
                problems.append(f"variable `{name}` ({shown}) offers {data}, not {chosen[name]!r}: {query}")
        # The instances running the picked services: a panel may show no other.
        data, error = prometheus_get(
            prometheus, "/api/v1/series",
            {"match[]": interpolate('eda_handlers_in_flight{service=~"$service"}', values), "start": since, "end": until},
        )
        instances = {(s.get("job"), s.get("instance")) for s in data or []}
        for panel, target in targets(dashboard):
            expr = interpolate(target["expr"], values)
            if target.get("instant") and not target.get("range"):
                data, error = prometheus_get(prometheus, "/api/v1/query", {"query": expr, "time": until})
                samples = [s["value"][1] for s in (data or {}).get("result", [])]
            else:
                data, error = prometheus_get(
                    prometheus, "/api/v1/query_range", {"query": expr, "start": since, "end": until, "step": step}
                )
                samples = [v for s in (data or {}).get("result", []) for _, v in s["values"]]
            checked += 1
            why = error or ("no series" if not samples else None if any(map(finite, samples)) else "only NaN")
            for series in (data or {}).get("result", []) if not why else []:
                labels = series["metric"]
                for key, picked in chosen.items():
                    if key in labels and not re.fullmatch(picked, labels[key]):
                        why = f"shows {key}={labels[key]!r}, not only the picked {picked!r}"
                if "instance" in labels and (labels.get("job"), labels["instance"]) not in instances:
                    why = f"shows instance {labels['instance']!r}, which runs no picked service"
            if why:
                problems.append(f"panel {panel['title']!r} ({target['refId']}, {shown}): {why}: {expr}")
    names = sorted({w for _, t in targets(dashboard) for w, _ in metric_refs(t["expr"], metrics)})
    for name in names:
        data, error = prometheus_get(prometheus, "/api/v1/series", {"match[]": name, "start": since, "end": until})
        if (error or not data) and name not in ABSENT_IN_DEMO:
            problems.append(f"Prometheus has no series of {name}: {error or 'none'}")
    return problems, checked, len(passes)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dashboard", default=DASHBOARD)
    parser.add_argument("--prometheus", help="also run every query against this Prometheus")
    parser.add_argument("--since", type=float, help="start of the time range (Unix seconds); default: an hour ago")
    parser.add_argument("--step", type=float, default=1, help="seconds between points ($__interval)")
    parser.add_argument("--scrape-interval", type=float, default=1, help="Prometheus' scrape interval in seconds")
    parser.add_argument("--pick", action="append", default=[], metavar="VAR=VALUE",
                        help="also check with this variable value (e.g. service=billing)")
    args = parser.parse_args()

    with open(args.dashboard) as f:
        dashboard = json.load(f)
    metrics = read_metrics_doc()
    names, labels = read_runtime_names()
    problems = static_problems(dashboard, metrics, names, labels)
    queries = sum(1 for _ in targets(dashboard))
    panels = len({p["id"] for p, _ in targets(dashboard)})
    rel = os.path.relpath(args.dashboard, ROOT)
    if rel.startswith(".."):
        rel = args.dashboard
    if problems:
        print(f"\n{rel} FAILED its checks:", file=sys.stderr)
        for p in problems:
            print(f"  - {p}", file=sys.stderr)
        return 1
    if not args.prometheus:
        print(f"{rel}: {panels} panels, {queries} queries, every metric of docs/metrics.md shown, names and labels as defined")
        return 0

    picks = dict(p.split("=", 1) for p in args.pick)
    until = time.time()
    since = args.since if args.since else until - 3600
    problems, checked, passes = live_problems(
        dashboard, metrics, args.prometheus, since, until, args.step, args.scrape_interval, picks
    )
    if problems:
        print(f"\n{rel}: panels without data in Prometheus:", file=sys.stderr)
        for p in problems:
            print(f"  - {p}", file=sys.stderr)
        return 1
    chosen = "; ".join(["service and handler All"] + [", ".join(f"{k}={v}" for k, v in picks.items())] * bool(picks))
    print(f"{rel}: all {panels} panels return data: {checked} queries ({passes} variable choices: {chosen}) over the last {until - since:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
