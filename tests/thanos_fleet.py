"""Launch pieces for the fleet metrics profile (Prometheus shards + Thanos) on free ports.

The tests in test_thanos_*.py start the real binaries with these argument lists; each one binds
every listener to 127.0.0.1 (Thanos' own defaults are 0.0.0.0, the capnproto port included).
The argument lists and config renderers are the stack's own (ernie_otel/stack/thanos.py), so the
tests start exactly what `ernie-otel stack up --replicas N` starts; a test changes only ports,
data paths and intervals.
"""

from __future__ import annotations

import json
import threading
import time
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from helpers import free_port, http_get

from ernie_otel import names
from ernie_otel.stack import thanos as launch
from ernie_otel.stack.records import StackError

SHARD_CONFIG = launch.SHARD_CONFIG
THANOS_DIR = launch.THANOS_DIR
HOST = launch.HOST
REPLICA_LABEL = launch.REPLICA_LABEL
MODEL = "ernie-4.5-0.3b"

# The launch code the stack uses (ernie_otel/stack/thanos.py): one copy of every argument list.
hashmod = launch.hashmod
query_args = launch.query_args
receive_args = launch.receive_args


def build_thanos() -> Path:
    """The cached `thanos` binary (deploy/thanos/build.sh); a failed build fails the test."""
    try:
        return launch.build_thanos(timeout=3600)
    except StackError as err:
        pytest.fail(str(err))


@dataclass(frozen=True)
class ReceivePorts(launch.ReceivePorts):
    """A receiver's listeners on free ports."""

    grpc: int = field(default_factory=free_port)
    http: int = field(default_factory=free_port)
    remote_write: int = field(default_factory=free_port)
    capnproto: int = field(default_factory=free_port)


def objstore_config(tmp: Path, bucket: Path) -> Path:
    return launch.objstore_config(tmp, bucket)


def hashring_config(tmp: Path, ingesters: list[ReceivePorts]) -> Path:
    return launch.hashring_config(tmp, list(ingesters))


def rule_args(thanos: Path, tmp: Path, *, http: int, grpc: int, query_http: int, alertmanager_port: int,
              rule_file: Path = launch.FLEET_GLOBAL_RULES, objstore: Path | None = None,
              eval_interval: str = "2s") -> list[str]:
    """The stack's ruler, evaluating every 2 s (not every minute) so that alerts fire within a test."""
    return launch.rule_args(thanos, tmp, http=http, grpc=grpc, query_http=query_http,
                           alertmanager_port=alertmanager_port, rule_file=rule_file, objstore=objstore,
                           eval_interval=eval_interval)


def shard_config(tmp: Path, index: int, *, remote_write_port: int, alertmanager_port: int,
                 targets: list[str], meta_targets: dict[str, list[str]], interval: str = "1s") -> Path:
    """The stack's shard `index` config, scraping every `interval`, with these targets."""
    launch.write_targets(tmp, "ernie-serve-test", targets)
    for job, addresses in meta_targets.items():
        launch.write_targets(tmp, f"{job}-test", addresses)
    return launch.shard_config(tmp, index, remote_write=f"{HOST}:{remote_write_port}",
                              alertmanager=f"{HOST}:{alertmanager_port}", interval=interval)


def prometheus_args(config: Path, port: int, data: Path) -> list[str]:
    return launch.prometheus_shard_args("prometheus", config, port, data)


# -------------------------------------------------------------------------- fake targets
class CounterTarget:
    """A tiny HTTP server serving a fixed-shape ernie-serve exposition whose counters the test
    moves: it stands in for an ernie-serve replica's --metrics-port (the store path under test
    does not care who produced the text, and three real servers would not fit on 2 cores)."""

    STATUSES = ("ok", "error")

    def __init__(self) -> None:
        self.counts = dict.fromkeys(self.STATUSES, 0)
        self._lock = threading.Lock()
        target = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                body = target.exposition().encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer((HOST, 0), Handler)
        self.port = int(self.server.server_address[1])
        self.address = f"{HOST}:{self.port}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def exposition(self) -> str:
        name = names.REQUESTS.prom_name
        with self._lock:
            counts = dict(self.counts)
        lines = [f"# TYPE {name} counter"]
        for status, value in counts.items():
            lines.append(
                f'{name}{{{names.ATTR_MODEL}="{MODEL}",{names.ATTR_OPERATION}="chat",'
                f'{names.ATTR_STATUS}="{status}"}} {value}'
            )
        # Like ernie-serve, the errors counter exists only from the first error on.
        if counts["error"]:
            model, operation, error_type = names.ERRORS.prom_labels
            lines += [f"# TYPE {names.ERRORS.prom_name} counter",
                      f'{names.ERRORS.prom_name}{{{model}="{MODEL}",{operation}="chat",{error_type}="internal"}} '
                      f'{counts["error"]}']
        return "\n".join(lines) + "\n"

    def add(self, ok: int, error: int = 0) -> None:
        with self._lock:
            self.counts["ok"] += ok
            self.counts["error"] += error

    def total(self) -> int:
        with self._lock:
            return sum(self.counts.values())

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class Load:
    """Moves every target's counters at a steady rate in a thread until paused or stopped."""

    def __init__(self, targets: list[CounterTarget], per_second: int = 20) -> None:
        self.targets = targets
        self.per_second = per_second
        self._running = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        tick = 0.1
        while not self._stop.is_set():
            if self._running.is_set():
                for i, target in enumerate(self.targets):
                    # A different rate per target; the odd ones also fail one request per tick.
                    target.add(max(1, int(self.per_second * tick * (i + 1))), error=i % 2)
            time.sleep(tick)

    def resume(self) -> None:
        self._running.set()

    def pause(self) -> None:
        self._running.clear()
        time.sleep(0.3)  # let a tick in progress finish

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


# ----------------------------------------------------------------------------- PromQL API
def api(base: str, path: str, **params: Any) -> Any:
    url = f"{base}{path}?{urllib.parse.urlencode(params)}"
    code, body = http_get(url, timeout=30)
    assert code == 200, f"{url}: HTTP {code}: {body[:500]}"
    doc = json.loads(body)
    assert doc["status"] == "success", doc
    return doc["data"]


def instant(base: str, expr: str, **params: Any) -> list[dict[str, Any]]:
    return list(api(base, "/api/v1/query", query=expr, **params)["result"])


def scalar_or_none(base: str, expr: str, **params: Any) -> float | None:
    result = instant(base, expr, **params)
    return float(result[0]["value"][1]) if result else None


def metric_value(metrics_text: str, name: str, *, required: bool = True) -> float:
    """Sum of every sample of `name` in a Prometheus text exposition. A family that is absent is
    an error unless not `required` (labelled counters appear only at their first increment)."""
    total = 0.0
    found = False
    for line in metrics_text.splitlines():
        if line.startswith(name) and line[len(name):len(name) + 1] in ("{", " "):
            total += float(line.rsplit(" ", 1)[1])
            found = True
    assert found or not required, f"{name} not in the exposition"
    return total


def iter_blocks(bucket: Path) -> Iterator[dict[str, Any]]:
    """meta.json of every block in a FILESYSTEM bucket not marked for deletion."""
    for meta in sorted(bucket.glob("*/meta.json")):
        if (meta.parent / "deletion-mark.json").exists():
            continue
        doc = json.loads(meta.read_text())
        doc["_dir"] = meta.parent
        yield doc
