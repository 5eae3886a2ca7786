#!/usr/bin/env python3
"""The receiving end of the shop demo's actions (examples/actions.toml): an HTTP server on
127.0.0.1:<port> that answers every POST with 200 and JSON, checks the bearer token, and
writes what it received to <out> (JSON: calls per path prefix, distinct Idempotency-Keys,
refused calls) when it gets SIGTERM. Used by scripts/demo.

    python3 demo-webhook.py <port> <token> <out.json>
"""
import json
import signal
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

port, token, out = int(sys.argv[1]), sys.argv[2], sys.argv[3]
calls = {}
keys = {}
refused = 0


class Handler(BaseHTTPRequestHandler):
    def do_POST(self):
        global refused
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        if self.headers.get("Authorization") != f"Bearer {token}":
            refused += 1
            self.send_response(401)
            self.end_headers()
            return
        json.loads(body or b"{}")
        kind = self.path.split("/")[1]
        calls[kind] = calls.get(kind, 0) + 1
        keys.setdefault(kind, set()).add(self.headers.get("Idempotency-Key"))
        reply = b'{"ok":true}'
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(reply)))
        self.end_headers()
        self.wfile.write(reply)

    def log_message(self, *args):
        pass


def stop(*_):
    with open(out, "w") as f:
        json.dump({"calls": calls, "distinct": {k: len(v) for k, v in keys.items()}, "refused": refused}, f)
    sys.exit(0)


signal.signal(signal.SIGTERM, stop)
ThreadingHTTPServer(("127.0.0.1", port), Handler).serve_forever()
