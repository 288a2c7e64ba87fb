"""Launch pieces for the fleet metrics profile (Prometheus shards + Thanos) on free ports.

The tests in test_thanos_*.py start the real binaries with these argument lists; each one binds
every listener to 127.0.0.1 (Thanos' own defaults are 0.0.0.0, the capnproto port included).
The argument lists and config renderers are the stack's own (ernie_otel/stack/thanos.py), so the
tests start exactly what `ernie-otel stack up --replicas N` starts; a test changes only ports,
data paths and intervals.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import subprocess
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, TypeVar

import pytest
import yaml
from helpers import free_port, http_get, run_process, wait_http
from test_alerts import alertmanager_config_for_test

from ernie_otel import names
from ernie_otel.stack import thanos as launch
from ernie_otel.stack.records import StackError
from ernie_otel.stack.webhook_sink import make_server

SHARD_CONFIG = launch.SHARD_CONFIG
THANOS_DIR = launch.THANOS_DIR
HOST = launch.HOST
REPLICA_LABEL = launch.REPLICA_LABEL
MODEL = "ernie-4.5-0.3b"
ALERTS_DIR = launch.ALERTS_DIR
T = TypeVar("T")

# The launch code the stack uses (ernie_otel/stack/thanos.py): one copy of every argument list.
hashmod = launch.hashmod
query_args = launch.query_args
receive_args = launch.receive_args
wait_receive_start = launch.wait_receive_start


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


# ------------------------------------------------------------------------ waits and set-up
def wait_for(check: Callable[[], T | None], timeout: float, what: str) -> T:
    """Poll `check` until it returns something other than None/False; fail the test after
    `timeout` s. An AssertionError or OSError inside (a query failing, a port refusing, while a
    component starts) counts as not yet."""
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        try:
            value = check()
        except (AssertionError, OSError) as err:
            value, last = None, err
        if value is not None and value is not False:
            return value
        time.sleep(0.5)
    pytest.fail(f"timed out after {timeout}s waiting for {what} (last: {last})")


def split_targets(count: int, shards: int = launch.SHARDS) -> list[CounterTarget]:
    """`count` targets whose addresses hash to every shard (each shard gets at least one)."""
    targets: list[CounterTarget] = []
    spare: list[CounterTarget] = []
    while len(targets) < count:
        target = CounterTarget()
        have = {hashmod(t.address, shards) for t in targets}
        missing = set(range(shards)) - have
        if len(targets) + len(missing) < count or hashmod(target.address, shards) in missing:
            targets.append(target)
        else:
            spare.append(target)
    for target in spare:
        target.close()
    return targets


def start_alertmanager(stack: contextlib.ExitStack, tmp: Path, sink_url: str) -> int:
    """alerts/alertmanager.yml (webhooks pointed at the sink, short group timings, and a repeat
    interval longer than the test so that a second notification can only be a duplicate)."""
    binary = shutil.which("prometheus-alertmanager") or shutil.which("alertmanager")
    if binary is None:
        pytest.fail("Alertmanager is not installed (Debian package prometheus-alertmanager)")
    secrets = tmp / "secrets"
    secrets.mkdir()
    config = alertmanager_config_for_test(sink_url, secrets,
                                          {"group_wait": "1s", "group_interval": "1s", "repeat_interval": "1h"})
    for receiver in config["receivers"]:
        for webhook in receiver.get("webhook_configs", []):
            token = webhook.get("http_config", {}).get("authorization", {}).get("credentials_file")
            if token:
                Path(token).write_text("test-token\n")
    (tmp / "alertmanager.yml").write_text(yaml.safe_dump(config))
    port = free_port()
    am = stack.enter_context(run_process(
        [binary, f"--config.file={tmp / 'alertmanager.yml'}", f"--storage.path={tmp / 'am-data'}",
         f"--web.listen-address={HOST}:{port}", "--cluster.listen-address="], tmp / "alertmanager.log"))
    wait_http(f"http://{HOST}:{port}/-/ready", timeout=30, proc=am)
    return port


def delivered(notifications: Path, alertname: str, status: str | None = None) -> list[dict[str, Any]]:
    """Every alert named `alertname` (and with this status, if given) in every webhook POST
    Alertmanager made so far (the webhook sink's JSON lines)."""
    if not notifications.exists():
        return []
    posts = [json.loads(line) for line in notifications.read_text().splitlines() if line.strip()]
    return [a for p in posts for a in p.get("alerts", [])
            if a["labels"].get("alertname") == alertname and status in (None, a.get("status"))]


def short_hold_shard_rules(tmp: Path, config: Path, hold: str = "2s") -> Path:
    """Point a rendered shard config at copies of its rule files (alerts/ernie-*.yml and
    alerts/fleet-store.yml) whose `for:` holds are all `hold` -- nothing else changed -- so that
    alerts fire within a test. Returns the copies' directory."""
    rules = tmp / "short-hold-rules"
    rules.mkdir(exist_ok=True)
    for source in [*sorted(ALERTS_DIR.glob("ernie-*.yml")), ALERTS_DIR / "fleet-store.yml"]:
        text = source.read_text()
        (rules / source.name).write_text(re.sub(r"^(\s+for:\s*)\S+$", rf"\g<1>{hold}", text, flags=re.M))
    text = config.read_text()
    assert text.count(f"{ALERTS_DIR}/") == 2, text
    config.write_text(text.replace(f"{ALERTS_DIR}/", f"{rules}/"))
    return rules


@contextlib.contextmanager
def small_filesystem(path: Path, size: str) -> Iterator[Path]:
    """A tmpfs of `size` mounted on `path` for the block: a real filesystem that fills up (ENOSPC),
    which neither a chmod (root ignores it) nor a per-process file size limit imitates. Mounting
    needs root or password-less sudo, as scripts/setup.sh's package installs do."""
    path.mkdir(parents=True, exist_ok=True)
    sudo = [] if os.geteuid() == 0 else ["sudo", "-n"]
    mount = subprocess.run([*sudo, "mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(path)],
                           capture_output=True, text=True, timeout=30, check=False, stdin=subprocess.DEVNULL)
    if mount.returncode != 0:
        pytest.fail(f"cannot mount a {size} tmpfs on {path} (needs root or password-less sudo): {mount.stderr}")
    try:
        yield path
    finally:
        # Lazy (-l): a process the test failed to stop must not leave the mount behind.
        subprocess.run([*sudo, "umount", "-l", str(path)], capture_output=True, timeout=30, check=False,
                       stdin=subprocess.DEVNULL)


def fill_up(path: Path) -> Path:
    """Write one file into the filesystem of `path` until it is full (ENOSPC); returns the file."""
    filler = path / "filler"
    chunk = b"\0" * (1 << 20)
    with filler.open("wb") as out:
        try:
            while True:
                out.write(chunk)
                out.flush()
        except OSError as err:
            if err.errno != 28:  # ENOSPC
                raise
    return filler


# ------------------------------------------------------------------- the bad-days fleet
INGESTERS = launch.INGESTERS
# Receivers in the store-trouble test cut (and ship) a block every minute instead of every 2 h, so
# that uploads happen within the test; Thanos receive's (hidden) TSDB block-duration flags.
SHORT_BLOCKS = ["--tsdb.min-block-duration=1m", "--tsdb.max-block-duration=1m"]


@dataclass
class BadDayFleet:
    """Targets under load -> 2 Prometheus shards (short-hold rule copies, 1 s scrapes) -> routing
    receiver -> 3 ingesting receivers (RF 2) -> Thanos Query; Alertmanager in front of the
    package's webhook sink. With a `bucket`: the receivers ship 1 min blocks to it, and a store
    gateway (and a compactor the test starts) work on it. Every Thanos HTTP port, started or not,
    is a meta-monitoring target of both shards, so the shards' store-health rules see them."""

    tmp: Path
    thanos: Path
    stack: contextlib.ExitStack
    targets: list[CounterTarget]
    load: Load
    notifications: Path
    alertmanager_port: int
    bucket: Path | None
    ingester_ports: list[ReceivePorts] = field(default_factory=lambda: [ReceivePorts() for _ in range(INGESTERS)])
    router_ports: ReceivePorts = field(default_factory=ReceivePorts)
    query_http: int = field(default_factory=free_port)
    query_grpc: int = field(default_factory=free_port)
    store_http: int = field(default_factory=free_port)
    store_grpc: int = field(default_factory=free_port)
    compactor_http: int = field(default_factory=free_port)
    shard_ports: list[int] = field(default_factory=lambda: [free_port() for _ in range(launch.SHARDS)])
    procs: dict[str, Any] = field(default_factory=dict)

    @property
    def query(self) -> str:
        return f"http://{HOST}:{self.query_http}"

    def shard(self, index: int) -> str:
        return f"http://{HOST}:{self.shard_ports[index]}"

    def objstore(self) -> Path:
        assert self.bucket is not None
        return objstore_config(self.tmp, self.bucket)

    def _start(self, name: str, args: list[str], ready: str | None, timeout: float = 60) -> Any:
        """Start a process (stopped with the fleet) and, unless `ready` is None, wait for it."""
        running = self.stack.enter_context(run_process(args, self.tmp / f"{name}.log"))
        if ready is not None:
            wait_http(ready, timeout=timeout, proc=running)
        self.procs[name] = running
        return running

    def start_ingesters(self) -> None:
        """All ingesting receivers at once (then each waited for): they start within a second or
        two of each other, inside the window wait_receive_start leaves (with the bucket, the
        receivers cut 1 min blocks, so their prune minute comes every other minute)."""
        wait_receive_start(1 if self.bucket is not None else launch.RECEIVE_MAX_BLOCK_MINUTES)
        for index, ports in enumerate(self.ingester_ports):
            args = receive_args(self.thanos, ports, self.tmp / f"receive-{index}", replica=f"r{index}")
            if self.bucket is not None:
                args += [f"--objstore.config-file={self.objstore()}", *SHORT_BLOCKS]
            self._start(f"receive-{index}", args, None)
        for index, ports in enumerate(self.ingester_ports):
            wait_http(f"http://{HOST}:{ports.http}/-/ready", timeout=60, proc=self.procs[f"receive-{index}"])

    def start_query(self) -> Any:
        endpoints = [p.grpc for p in self.ingester_ports]
        if self.bucket is not None:
            endpoints.append(self.store_grpc)
        return self._start("query", query_args(self.thanos, self.query_http, self.query_grpc, endpoints),
                           f"{self.query}/-/ready")

    def start_compactor(self, *extra: str) -> Any:
        """The stack's raw-tier compactor (--wait), re-running every 2 s instead of every 5 min, and
        taking blocks at once (they are seconds old here; live it waits 30 min for uploads to settle)."""
        args = [*launch.compact_args(self.thanos, self.tmp / "compact", self.objstore(), http=self.compactor_http,
                                     selector="compact-raw-selector.yml", raw_retention=launch.RAW_RETENTION),
                "--wait-interval=2s", "--consistency-delay=0s", *extra]
        return self._start("compact", args, f"http://{HOST}:{self.compactor_http}/-/ready")

    def metrics(self, port: int) -> str:
        code, body = http_get(f"http://{HOST}:{port}/metrics", timeout=10)
        assert code == 200, (port, code)
        return body

    def expected_total(self) -> int:
        return sum(t.total() for t in self.load.targets)

    def query_total(self) -> float | None:
        instances = "|".join(t.address for t in self.load.targets)
        return scalar_or_none(self.query, f'sum({names.REQUESTS.prom_name}{{instance=~"{instances}"}})')

    def wait_query_equals_targets(self, timeout: float = 90) -> float:
        """Query's deduplicated sum over the loaded targets catches up with their own counters
        (call with the load paused)."""
        expected = self.expected_total()
        return wait_for(lambda: self.query_total() == expected and expected, timeout,
                        f"sum({names.REQUESTS.prom_name}) through Thanos Query == {expected}")

    def writers_failed(self) -> float:
        """Samples the shards gave up on (a 4xx from the receivers, or the queue dropping them)."""
        return sum(metric_value(self.metrics(port), "prometheus_remote_storage_samples_failed_total")
                   for port in self.shard_ports)


def targets_and_alerting(stack: contextlib.ExitStack, tmp: Path,
                         count: int) -> tuple[list[CounterTarget], Load, Path, int]:
    """``count`` fake targets split over the shards under a paused load, and the notification path
    (the package's webhook sink behind the shipped Alertmanager config), all stopped by ``stack``:
    (targets, load, the sink's notifications file, Alertmanager's port)."""
    targets = split_targets(count)
    for target in targets:
        stack.callback(target.close)
    load = Load(targets)
    stack.callback(load.stop)
    notifications = tmp / "notifications.jsonl"
    sink = make_server(HOST, 0, notifications)
    threading.Thread(target=sink.serve_forever, daemon=True).start()
    stack.callback(sink.server_close)
    stack.callback(sink.shutdown)
    return targets, load, notifications, start_alertmanager(stack, tmp, f"http://{HOST}:{sink.server_address[1]}")


@contextlib.contextmanager
def bad_day_fleet(tmp: Path, *, targets: int = 4, bucket: Path | None = None) -> Iterator[BadDayFleet]:
    """A running BadDayFleet for the block (see there); every process and thread stopped after."""
    thanos = build_thanos()
    with contextlib.ExitStack() as stack:
        loaded, load, notifications, am_port = targets_and_alerting(stack, tmp, targets)

        fleet = BadDayFleet(tmp, thanos, stack, loaded, load, notifications, am_port, bucket)
        fleet.start_ingesters()
        fleet._start("router", receive_args(thanos, fleet.router_ports, tmp / "router",
                                            hashring=hashring_config(tmp, fleet.ingester_ports)),
                     f"http://{HOST}:{fleet.router_ports.http}/-/ready")
        if bucket is not None:
            fleet._start("store", [*launch.store_args(thanos, tmp / "store", fleet.objstore(), http=fleet.store_http,
                                                      grpc=fleet.store_grpc), "--sync-block-duration=3s"],
                         f"http://{HOST}:{fleet.store_http}/-/ready", timeout=120)
        fleet.start_query()

        thanos_http = [fleet.query_http, fleet.router_ports.http, *(p.http for p in fleet.ingester_ports)]
        if bucket is not None:
            thanos_http += [fleet.store_http, fleet.compactor_http]
        meta = {"prometheus-shard": [f"{HOST}:{p}" for p in fleet.shard_ports],
                "thanos": [f"{HOST}:{p}" for p in thanos_http]}
        for index, port in enumerate(fleet.shard_ports):
            config = shard_config(tmp, index, remote_write_port=fleet.router_ports.remote_write,
                                  alertmanager_port=am_port, targets=[t.address for t in loaded], meta_targets=meta)
            short_hold_shard_rules(tmp, config)
            fleet._start(f"shard-{index}", prometheus_args(config, port, tmp / f"shard-{index}"),
                         f"http://{HOST}:{port}/-/ready")
        yield fleet
