"""A trickle of invalid requests (``stack up --load``), so the error panels and alerts of the demo have data."""

from __future__ import annotations

import argparse
import json
import signal
import threading
import time

from ..ports import DEFAULT_PORTS, HOST
from .components import BAD_REQUEST_INTERVAL_S
from .procs import http_request


def bad_request_cases(model: str) -> list[tuple[str, bytes]]:
    """Requests ernie-serve must refuse, one per error class the dashboards break down."""
    ok_messages = [{"role": "user", "content": "hi"}]
    return [
        ("unknown model", json.dumps({"model": model + "-does-not-exist", "messages": ok_messages}).encode()),
        ("invalid JSON", b'{"model": "' + model.encode() + b'", "messages": ['),
        ("max_tokens < 0", json.dumps({"model": model, "messages": ok_messages, "max_tokens": -3}).encode()),
    ]


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m ernie_otel.stack bad-requests")
    parser.add_argument("--url", default=f"http://{HOST}:{DEFAULT_PORTS['serve']}")
    parser.add_argument("--model", default="ernie-4.5-tiny")
    parser.add_argument("--interval", type=float, default=BAD_REQUEST_INTERVAL_S)
    args = parser.parse_args(argv)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    cases = bad_request_cases(args.model)
    i = 0
    while not stop.is_set():
        what, body = cases[i % len(cases)]
        try:
            status, _, _ = http_request(f"{args.url}/v1/chat/completions", body,
                                        {"Content-Type": "application/json"}, timeout=30)
            result = f"HTTP {status}" + (" (expected an error!)" if status < 400 else "")
        except OSError as err:
            result = f"no answer: {err}"
        print(f"{time.strftime('%H:%M:%S')} bad request ({what}): {result}", flush=True)
        i += 1
        stop.wait(args.interval)
    return 0

