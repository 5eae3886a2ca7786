#!/usr/bin/env python3
"""The receiving end of the shop demo's actions (examples/actions.toml), used by scripts/demo.

    python3 demo-webhook.py serve <port> <token>
        An HTTP server on 127.0.0.1:<port>: every POST with the bearer token gets 200 and JSON
        (others 401); GET /stats answers what it received as JSON: calls per first path
        segment, distinct Idempotency-Keys per segment, refused calls.
    python3 demo-webhook.py check <port> <streams.json> [seconds]
        Waits (at most [seconds], default 30) until the server has one distinct call per
        `bill.paid` (/crm) and per `payment.failed` (/alerts) in the event stream, with nothing
        refused and no dead letter of the integrations service; exits 1 if not.
"""
import json
import sys
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def serve(port, token):
    lock = threading.Lock()
    calls, keys, refused = {}, {}, [0]

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            if self.headers.get("Authorization") != f"Bearer {token}":
                with lock:
                    refused[0] += 1
                self.reply(401, b"{}")
                return
            json.loads(body or b"{}")
            kind = self.path.split("/")[1]
            with lock:
                calls[kind] = calls.get(kind, 0) + 1
                keys.setdefault(kind, set()).add(self.headers.get("Idempotency-Key"))
            self.reply(200, b'{"ok":true}')

        def do_GET(self):
            with lock:
                stats = {
                    "calls": calls,
                    "distinct": {k: len(v) for k, v in keys.items()},
                    "refused": refused[0],
                }
            self.reply(200, json.dumps(stats).encode())

        def reply(self, status, body):
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    ThreadingHTTPServer(("127.0.0.1", port), Handler).serve_forever()


def stats(port):
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/stats", timeout=5) as answer:
        return json.load(answer)


def check(port, streams_file, seconds):
    with open(streams_file) as f:
        streams = json.load(f)
    events = streams.get("EDA_EVENTS", {})
    wanted = {
        "crm": events.get("events.bill.paid", 0),
        "alerts": events.get("events.payment.failed", 0),
    }
    letters = {s: n for s, n in streams.get("EDA_DLQ", {}).items() if s.startswith("dlq.integrations.")}
    deadline = time.time() + seconds
    while True:
        got = stats(port)
        distinct = {k: got["distinct"].get(k, 0) for k in wanted}
        if distinct == wanted or time.time() > deadline:
            break
        time.sleep(0.5)
    ok = distinct == wanted and got["refused"] == 0 and not letters
    print(
        f"actions: {distinct['crm']} paid bills sent to the CRM (of {wanted['crm']}), "
        f"{distinct['alerts']} alerts (of {wanted['alerts']}), "
        f"{sum(got['calls'].values())} calls in all, {got['refused']} refused, "
        f"dead letters {letters or 'none'}: {'OK' if ok else 'FAILED'}"
    )
    return 0 if ok else 1


if __name__ == "__main__":
    if sys.argv[1] == "serve":
        serve(int(sys.argv[2]), sys.argv[3])
    elif sys.argv[1] == "check":
        sys.exit(check(int(sys.argv[2]), sys.argv[3], float(sys.argv[4]) if len(sys.argv) > 4 else 30))
    else:
        sys.exit(__doc__)
