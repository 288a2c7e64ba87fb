"""Launch pieces for the fleet metrics profile (Prometheus shards + Thanos) on free ports.

The tests in test_thanos_*.py start the real binaries with these argument lists; each one binds
every listener to 127.0.0.1 (Thanos' own defaults are 0.0.0.0, the capnproto port included).
The configs come from deploy/ and deploy/thanos/, rewritten only where a test must differ: ports,
data paths, intervals.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import threading
import time
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml
from helpers import REPO_ROOT, free_port, http_get

from ernie_otel import names

THANOS_BUILD = REPO_ROOT / "deploy" / "thanos" / "build.sh"
THANOS_DIR = REPO_ROOT / "deploy" / "thanos"
SHARD_CONFIG = REPO_ROOT / "deploy" / "prometheus-shard.yml"
HOST = "127.0.0.1"
# The label each ingesting receiver puts on its data; Thanos Query deduplicates on it.
REPLICA_LABEL = "receive_replica"
MODEL = "ernie-4.5-0.3b"


def build_thanos() -> Path:
    """The cached `thanos` binary (deploy/thanos/build.sh); a failed build fails the test."""
    try:
        result = subprocess.run(
            ["bash", str(THANOS_BUILD)], cwd=REPO_ROOT, stdin=subprocess.DEVNULL,
            capture_output=True, text=True, timeout=3600, check=False,
        )
    except subprocess.TimeoutExpired as err:
        pytest.fail(f"deploy/thanos/build.sh did not finish: {err}")
    if result.returncode != 0:
        pytest.fail(f"deploy/thanos/build.sh failed ({result.returncode}):\n{result.stderr[-6000:]}")
    binary = Path(result.stdout.strip().splitlines()[-1])
    if not os.access(binary, os.X_OK):
        pytest.fail(f"deploy/thanos/build.sh reported {binary}, which is not executable")
    return binary


# ------------------------------------------------------------------------------ Thanos args
@dataclass(frozen=True)
class ReceivePorts:
    grpc: int = field(default_factory=free_port)
    http: int = field(default_factory=free_port)
    remote_write: int = field(default_factory=free_port)
    capnproto: int = field(default_factory=free_port)


def objstore_config(tmp: Path, bucket: Path) -> Path:
    """deploy/thanos/objstore.yml with the bucket directory made absolute."""
    config = yaml.safe_load((THANOS_DIR / "objstore.yml").read_text())
    config["config"]["directory"] = str(bucket)
    path = tmp / "objstore.yml"
    path.write_text(yaml.safe_dump(config))
    return path


def hashring_config(tmp: Path, ingesters: list[ReceivePorts]) -> Path:
    """deploy/thanos/hashring.json with the ingesting receivers' gRPC ports of this test."""
    config = json.loads((THANOS_DIR / "hashring.json").read_text())
    assert len(config[0]["endpoints"]) == len(ingesters)
    config[0]["endpoints"] = [f"{HOST}:{p.grpc}" for p in ingesters]
    path = tmp / "hashring.json"
    path.write_text(json.dumps(config))
    return path


def receive_args(thanos: Path, ports: ReceivePorts, data: Path, *, replica: str | None = None,
                 hashring: Path | None = None, replication_factor: int = 2) -> list[str]:
    """An ingesting receiver (replica set, no hashring) or the routing one (hashring, no TSDB use)."""
    args = [
        str(thanos), "receive",
        f"--grpc-address={HOST}:{ports.grpc}",
        f"--http-address={HOST}:{ports.http}",
        f"--remote-write.address={HOST}:{ports.remote_write}",
        f"--receive.capnproto-address={HOST}:{ports.capnproto}",
        f"--tsdb.path={data}",
        "--log.level=warn",
    ]
    # Receive refuses to start without an external label, even routing-only (it stores nothing).
    args.append(f'--label={REPLICA_LABEL}="{replica or "router"}"')
    if hashring is not None:
        args += [
            f"--receive.hashrings-file={hashring}",
            "--receive.hashrings-algorithm=ketama",
            f"--receive.replication-factor={replication_factor}",
        ]
    return args


def query_args(thanos: Path, http: int, grpc: int, endpoints: list[int]) -> list[str]:
    return [
        str(thanos), "query",
        f"--http-address={HOST}:{http}",
        f"--grpc-address={HOST}:{grpc}",
        f"--query.replica-label={REPLICA_LABEL}",
        # Re-check the endpoints often, so a receiver that comes back is queried within seconds.
        "--store.sd-interval=2s",
        "--log.level=warn",
        *[f"--endpoint={HOST}:{port}" for port in endpoints],
    ]


def rule_args(thanos: Path, tmp: Path, *, http: int, grpc: int, query_http: int, alertmanager_port: int,
              rule_file: Path = REPO_ROOT / "alerts" / "fleet-global.yml", objstore: Path | None = None,
              eval_interval: str = "2s") -> list[str]:
    """The Thanos ruler of the fleet: alerts/fleet-global.yml over Query, to Alertmanager, its
    blocks labelled tier="1m" (the 1 min tier) -- deploy/thanos/rule-*.yml with this test's ports."""
    query = yaml.safe_load((THANOS_DIR / "rule-query.yml").read_text())
    query[0]["static_configs"] = [f"{HOST}:{query_http}"]
    (tmp / "rule-query.yml").write_text(yaml.safe_dump(query))
    alertmanagers = yaml.safe_load((THANOS_DIR / "rule-alertmanagers.yml").read_text())
    alertmanagers["alertmanagers"][0]["static_configs"] = [f"{HOST}:{alertmanager_port}"]
    (tmp / "rule-alertmanagers.yml").write_text(yaml.safe_dump(alertmanagers))
    args = [
        str(thanos), "rule",
        f"--http-address={HOST}:{http}",
        f"--grpc-address={HOST}:{grpc}",
        f"--data-dir={tmp / 'rule'}",
        f"--rule-file={rule_file}",
        f"--query.config-file={tmp / 'rule-query.yml'}",
        f"--alertmanagers.config-file={tmp / 'rule-alertmanagers.yml'}",
        '--label=tier="1m"',
        "--alert.label-drop=tier",
        f"--eval-interval={eval_interval}",
        "--log.level=warn",
    ]
    if objstore is not None:
        args.append(f"--objstore.config-file={objstore}")
    return args


# ---------------------------------------------------------------------- Prometheus shards
def hashmod(value: str, modulus: int) -> int:
    """Prometheus' `hashmod` relabel action: the low 8 bytes of the MD5 sum, big-endian, mod."""
    digest = hashlib.md5(value.encode()).digest()  # Prometheus hashes with MD5; not a security use
    return int.from_bytes(digest[8:], "big") % modulus


def shard_config(tmp: Path, index: int, *, remote_write_port: int, alertmanager_port: int,
                 targets: list[str], meta_targets: dict[str, list[str]], interval: str = "1s") -> Path:
    """deploy/prometheus-shard.yml as shard `index`: the two `shard-index` fields changed, the
    ports of this test, rule files from the repository, targets in file_sd files next to it."""
    config = yaml.safe_load(SHARD_CONFIG.read_text())
    config["global"]["scrape_interval"] = interval
    config["global"]["evaluation_interval"] = interval
    config["global"]["external_labels"]["prometheus_shard"] = str(index)
    config["rule_files"] = [str(REPO_ROOT / "alerts" / Path(p).name) for p in config["rule_files"]]
    config["remote_write"][0]["url"] = f"http://{HOST}:{remote_write_port}/api/v1/receive"
    config["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"] = [f"{HOST}:{alertmanager_port}"]
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    keep = jobs["ernie-serve-direct"]["relabel_configs"][1]
    assert keep["action"] == "keep" and keep["regex"] == "0"
    keep["regex"] = str(index)
    sd_dir = tmp / "fleet-targets"
    sd_dir.mkdir(exist_ok=True)
    (sd_dir / "ernie-serve-test.json").write_text(json.dumps([{"targets": targets}]))
    for job, addresses in meta_targets.items():
        (sd_dir / f"{job}-test.json").write_text(json.dumps([{"targets": addresses}]))
    path = tmp / f"prometheus-shard-{index}.yml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def prometheus_args(config: Path, port: int, data: Path) -> list[str]:
    return [
        "prometheus", f"--config.file={config}", f"--web.listen-address={HOST}:{port}",
        f"--storage.tsdb.path={data}", "--storage.tsdb.retention.time=1d", "--log.level=warn",
    ]


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
