"""A local stand-in for the notification relay Alertmanager's webhooks point at.

``python -m ernie_otel.stack.webhook_sink [--port PORT] --out STATE/alerts.jsonl``

Every POST (any path: alerts/alertmanager.yml uses one path per channel, /pager, /email-slack,
/slack) whose body is JSON is appended to ``--out`` as one line, exactly as Alertmanager sent it
(its ``receiver`` field names the channel). ``GET /`` answers 200, for health checks. Stdlib
only, so the stack can run it with nothing but the package installed.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from ..ports import DEFAULT_PORTS, HOST

# Alertmanager payloads are a few KiB; anything far larger is not an Alertmanager webhook.
MAX_BODY_BYTES = 4 << 20


def make_server(host: str, port: int, out: Path) -> ThreadingHTTPServer:
    """A server that appends each POSTed JSON document to ``out``; call ``serve_forever``."""
    out.parent.mkdir(parents=True, exist_ok=True)
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        def _reply(self, code: int, text: str) -> None:
            body = (text + "\n").encode()
            self.send_response(code)
            self.send_header("Content-Type", "text/plain; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:
            self._reply(200, "ok")

        def do_POST(self) -> None:
            length = self.headers.get("Content-Length", "")
            if not length.isdigit() or int(length) > MAX_BODY_BYTES:
                self._reply(411 if not length.isdigit() else 413, "need a Content-Length within limits")
                return
            raw = self.rfile.read(int(length))
            try:
                payload = json.loads(raw)
            except json.JSONDecodeError as exc:
                self._reply(400, f"body is not JSON: {exc}")
                return
            line = json.dumps(payload, separators=(",", ":"), ensure_ascii=False) + "\n"
            # One write per payload under a lock: concurrent notifications never interleave lines.
            with lock, out.open("a", encoding="utf-8") as f:
                f.write(line)
            self._reply(200, "stored")

        def log_message(self, format: str, *args: Any) -> None:
            sys.stderr.write(f"webhook_sink: {self.command} {self.path} {format % args}\n")

    server = ThreadingHTTPServer((host, port), Handler)
    server.daemon_threads = True
    return server


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ernie_otel.stack.webhook_sink", description=__doc__.split("\n")[0])
    parser.add_argument("--host", default=HOST)
    parser.add_argument("--port", type=int, default=DEFAULT_PORTS["webhook_sink"])
    parser.add_argument("--out", type=Path, required=True, help="JSON-lines file to append payloads to")
    args = parser.parse_args(argv)
    try:
        server = make_server(args.host, args.port, args.out)
    except OSError as exc:
        print(f"webhook_sink: cannot listen on {args.host}:{args.port}: {exc}", file=sys.stderr)
        return 2

    def stop(*_: Any) -> None:
        # shutdown() blocks until serve_forever returns, so it must not run on that thread.
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    print(f"webhook_sink: listening on http://{args.host}:{args.port}, appending to {args.out}", file=sys.stderr)
    server.serve_forever()
    server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
