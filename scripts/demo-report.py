#!/usr/bin/env python3
"""Reads the shop demo's results back from Prometheus' HTTP API (used by scripts/demo).

Waits until every service has handled what the orders load generator published (or two
minutes pass), prints a summary, and with --check asserts the exact counts.
"""
import argparse
import json
import sys
import time
import urllib.parse
import urllib.request


def query(prometheus, promql):
    url = f"{prometheus}/api/v1/query?" + urllib.parse.urlencode({"query": promql})
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            body = json.load(response)
    except OSError:
        return []
    return body.get("data", {}).get("result", [])


def scalar(prometheus, promql):
    result = query(prometheus, promql)
    return float(result[0]["value"][1]) if result else 0.0


def handled(prometheus, service, handler, outcome):
    return scalar(
        prometheus,
        f'sum(eda_events_handled_total{{service="{service}",handler="{handler}",outcome="{outcome}"}})',
    )


def expectations(orders):
    users = orders["user.created.v1"] + orders["user.created.v2"]
    payments = orders["payment.requested"]
    declined = orders["declined"]
    paid = payments - declined
    seen = {
        "user.created": users,
        "bill.created": orders["bill.created"],
        "payment.requested": payments,
        "payment.succeeded": paid,
        "payment.failed": declined,
        "bill.paid": paid,
        "notification.sent": users + paid + declined + paid,
    }
    handlers = {
        ("billing", "record_bill", "success"): orders["bill.created"],
        ("billing", "charge", "success"): paid,
        ("billing", "charge", "dead_letter"): declined,
        ("notifications", "welcome", "success"): users,
        ("notifications", "receipt", "success"): paid,
        ("notifications", "payment_problem", "success"): declined,
        ("notifications", "bill_settled", "success"): paid,
        ("analytics", "count_events", "success"): sum(seen.values()),
    }
    return seen, handlers


def observed(prometheus, seen, handlers):
    got_handlers = {key: handled(prometheus, *key) for key in handlers}
    got_seen = {
        event: scalar(prometheus, f'sum(shop_events_seen_total{{event="{event}"}})') for event in seen
    }
    return got_seen, got_handlers


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--prometheus", required=True)
    parser.add_argument("--orders", required=True, help="the JSON line shop_orders printed")
    parser.add_argument("--check", action="store_true")
    parser.add_argument("--streams", help="the JSON demo-streams.py printed (subjects per stream)")
    parser.add_argument("--outage", type=float, default=0, help="seconds the payment provider was down")
    args = parser.parse_args()
    with open(args.orders) as f:
        orders = json.loads(f.read().strip().splitlines()[-1])
    prometheus = args.prometheus
    seen, handlers = expectations(orders)

    deadline = time.time() + 120
    while True:
        got_seen, got_handlers = observed(prometheus, seen, handlers)
        done = all(got_handlers[k] >= v for k, v in handlers.items()) and all(
            got_seen[k] >= v for k, v in seen.items()
        )
        if done or time.time() > deadline:
            break
        time.sleep(1)
    time.sleep(3)  # one more scrape, so that nothing still arriving is missed
    got_seen, got_handlers = observed(prometheus, seen, handlers)

    print("events handled, by service and outcome:")
    for sample in sorted(
        query(prometheus, "sum by (service, outcome) (eda_events_handled_total) > 0"),
        key=lambda s: (s["metric"].get("service", ""), s["metric"].get("outcome", "")),
    ):
        m = sample["metric"]
        print(f"  {m.get('service', '?'):<14} {m.get('outcome', '?'):<12} {float(sample['value'][1]):>8.0f}")
    print("dead letters, by handler and reason:")
    for sample in query(prometheus, "sum by (service, handler, reason) (eda_dead_letters_total) > 0"):
        m = sample["metric"]
        print(f"  {m['service']}/{m['handler']:<16} {m['reason']:<18} {float(sample['value'][1]):>6.0f}")
    print("p99 handler latency over the whole run:")
    for sample in query(
        prometheus,
        "histogram_quantile(0.99, sum by (service, handler, le) (eda_handler_duration_seconds_bucket))",
    ):
        m = sample["metric"]
        value = sample["value"][1]
        shown = "n/a" if value == "NaN" else f"{float(value) * 1000:.1f} ms"
        print(f"  {m['service']}/{m['handler']:<16} {shown}")
    print("circuit breakers (transitions, state now):")
    moved = {
        (s["metric"]["breaker"], s["metric"]["to"]): float(s["value"][1])
        for s in query(prometheus, "sum by (breaker, to) (eda_circuit_breaker_transitions_total)")
    }
    states = {
        s["metric"]["breaker"]: float(s["value"][1])
        for s in query(prometheus, "max by (breaker) (eda_circuit_breaker_state)")
    }
    names = ("closed", "open", "half-open")
    for breaker in sorted(states):
        counts = ", ".join(f"{to} {moved.get((breaker, to), 0):.0f}" for to in ("open", "half_open", "closed"))
        print(f"  {breaker:<18} {counts}; now {names[int(states[breaker])]}")
    exhausted = scalar(prometheus, 'sum(eda_dead_letters_total{service="billing",reason="retries_exhausted"})')
    if args.outage:
        print(f"payment provider outage of {args.outage:g} s: {exhausted:.0f} payments dead-lettered for running out of retries")
    upgraded = scalar(prometheus, "sum(shop_users_upgraded_total)")
    print(f"user.created v1 handled as v2 by notifications: {upgraded:.0f}")
    up = query(prometheus, 'up{job="shop"}')
    print(f"targets up: {sum(1 for s in up if s['value'][1] == '1')} of {len(up)}")

    if not args.check:
        return 0
    problems = []
    for key, want in handlers.items():
        if got_handlers[key] != want:
            problems.append(f"{'/'.join(key)}: {got_handlers[key]:.0f}, expected {want}")
    for event, want in seen.items():
        if got_seen[event] != want:
            problems.append(f"analytics saw {got_seen[event]:.0f} `{event}`, expected {want}")
    declined = orders["declined"]
    permanent = scalar(prometheus, 'sum(eda_dead_letters_total{service="billing",reason="permanent"})')
    if permanent != declined:
        problems.append(f"dead letters with reason permanent: {permanent:.0f}, expected {declined}")
    if upgraded != orders["user.created.v1"]:
        problems.append(f"v1 users upgraded: {upgraded:.0f}, expected {orders['user.created.v1']}")
    if len(up) != 3 or any(s["value"][1] != "1" for s in up):
        problems.append(f"Prometheus does not scrape all three services: {up}")
    if args.outage:
        opened = moved.get(("payment_provider", "open"), 0)
        closed = moved.get(("payment_provider", "closed"), 0)
        if opened < 1 or closed < 1 or states.get("payment_provider") != 0:
            problems.append(f"the payment_provider breaker did not open and close again: {moved}, state {states}")
        if exhausted != 0:
            problems.append(f"{exhausted:.0f} payments ran out of retries during the outage; expected none")
    if args.streams:
        with open(args.streams) as f:
            streams = json.load(f)
        for event, want in seen.items():
            stored = streams["EDA_EVENTS"].get(f"events.{event}", 0)
            if stored != want:
                problems.append(f"the event stream holds {stored} `{event}`, expected {want}")
        letters = streams["EDA_DLQ"].get("dlq.billing.charge", 0)
        if letters != declined:
            problems.append(f"the dead-letter stream holds {letters} on dlq.billing.charge, expected {declined}")
    else:
        problems.append("no stream counts to check (--streams)")
    if declined == 0 or orders["user.created.v1"] == 0:
        problems.append(f"the run was too short to exercise dead letters and upcasting: {orders}")
    if problems:
        print("\ndemo check FAILED:", file=sys.stderr)
        for p in problems:
            print(f"  - {p}", file=sys.stderr)
        return 1
    outage = f", the {args.outage:g} s outage paused billing and dead-lettered nothing" if args.outage else ""
    print(f"\ndemo check passed: every event handled by every subscriber, declines dead-lettered, v1 upgraded, all targets up{outage}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
