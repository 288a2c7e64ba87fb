"""``ernie-otel stack``: the whole pipeline as local processes, on the default ports of ernie_otel/ports.py.

    ernie-otel stack up [--load] [--foreground] [--model tiny|DIR] [--state-dir DIR]
    ernie-otel stack status [--state-dir DIR]
    ernie-otel stack down [--state-dir DIR]

``up`` starts, in this order and each only once the previous one is healthy: Jaeger, the
Collector, a local alert webhook sink, Alertmanager, Prometheus, and ``ernie-serve`` under
``opentelemetry-instrument`` (plus, with ``--load``, a steady load generator and a trickle of bad
requests so every dashboard panel has data). Everything binds 127.0.0.1.

One state directory (``--state-dir``, default ``$ERNIE_OTEL_STACK_DIR`` or ``<repo>/.stack``) holds
it all: ``stack.json`` (pid, start time and command line of every process), ``logs/<component>.log``,
the generated Prometheus/Alertmanager configs, Prometheus' TSDB, Alertmanager's storage, and
``alerts.jsonl`` (every notification Alertmanager sent to the webhook sink).

The processes run detached (own session, output to their log) so ``up`` can return; ``down``
stops exactly what ``up`` recorded, and only after checking that the pid still is that process
(same start time and command line): pids get reused. Linux only (reads /proc).

:class:`Stack` is the same machinery for tests: free ports, extra environment, stopping and
starting one component, URLs.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .ports import DEFAULT_PORTS, PORT_PURPOSE

REPO_ROOT = Path(__file__).resolve().parent.parent
STACK_DIR_ENV = "ERNIE_OTEL_STACK_DIR"
BUILD_SCRIPT = REPO_ROOT / "collector" / "build.sh"
OTELCOL_CONFIG = REPO_ROOT / "collector" / "otelcol.yaml"
JAEGER_CONFIG = REPO_ROOT / "collector" / "jaeger.yaml"
PROMETHEUS_CONFIG = REPO_ROOT / "deploy" / "prometheus.yml"
ALERTMANAGER_CONFIG = REPO_ROOT / "alerts" / "alertmanager.yml"
STATE_FILE = "stack.json"

# Start order; `down` goes backwards. The two load processes exist only with --load.
CORE_COMPONENTS = ("jaeger", "collector", "webhook_sink", "alertmanager", "prometheus", "ernie_serve")
LOAD_COMPONENTS = ("load", "bad_requests")
COMPONENT_PORTS: dict[str, tuple[str, ...]] = {
    "jaeger": ("jaeger_otlp_grpc", "jaeger_otlp_http", "jaeger_query", "jaeger_query_grpc", "jaeger_health",
               "jaeger_metrics"),
    "collector": ("otlp_grpc", "otlp_http", "collector_prometheus", "collector_health", "collector_telemetry"),
    "webhook_sink": ("webhook_sink",),
    "alertmanager": ("alertmanager",),
    "prometheus": ("prometheus",),
    "ernie_serve": ("serve", "serve_metrics"),
    "load": (),
    "bad_requests": (),
}
TITLES = {
    "jaeger": "Jaeger", "collector": "Collector", "webhook_sink": "webhook sink", "alertmanager": "Alertmanager",
    "prometheus": "Prometheus", "ernie_serve": "ernie-serve", "load": "load (bench)", "bad_requests": "bad requests",
}
# Model loading dominates ernie-serve's start; the Go/Prometheus servers are up in a second or two.
HEALTH_TIMEOUT_S = {"ernie_serve": 300.0, "prometheus": 60.0}
DEFAULT_HEALTH_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 10.0

# --load: modest, so the demo leaves CPU for the rest of the stack on a small machine: Poisson
# arrivals at a few requests/s (a closed loop would saturate ernie-serve), at most 2 in flight.
LOAD_RATE = 3.0
LOAD_CONCURRENCY = 2
LOAD_MAX_TOKENS = 32
# One bad request every 20 s against ~3 good ones a second is ~1.6% errors: the error panels
# get data while HighErrorRate (5%) stays quiet unless something is really wrong (every 7 s put
# the ratio near 4.5% and the alert flapped between pending and firing in the demo).
BAD_REQUEST_INTERVAL_S = 20.0


class StackError(Exception):
    """Something the user must act on; the message says what."""


@dataclass
class Component:
    name: str
    argv: list[str]
    env: dict[str, str]
    health_url: str | None  # None: alive after a moment counts as healthy (load processes)
    ports: tuple[str, ...] = ()
    health_timeout: float = DEFAULT_HEALTH_TIMEOUT_S

    @property
    def title(self) -> str:
        return TITLES.get(self.name, self.name)


@dataclass
class Record:
    """What stack.json keeps per started process: enough to find it again, and to not kill a stranger."""

    pid: int
    start_ticks: int
    cmdline: list[str]
    log: str
    health_url: str | None
    started_at: float = field(default_factory=time.time)


# ------------------------------------------------------------------------------ /proc helpers
def _proc_stat(pid: int) -> tuple[str, int] | None:
    """(state letter, start time in clock ticks) of pid, or None if there is no such process."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except (OSError, ValueError):
        return None
    # comm (field 2) may contain spaces and parentheses: split after its closing paren.
    rest = raw[raw.rindex(")") + 2:].split()
    return rest[0], int(rest[19])


def _proc_cmdline(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


def process_matches(record: Record) -> bool:
    """Whether record.pid is still the process we started: alive (not a zombie), the same start
    time, and a command line that ends with the arguments we launched it with. Only the
    arguments, not argv[0]: a script's shebang puts its interpreter in front, and
    opentelemetry-instrument execs `python ernie-serve ...` in its own place."""
    stat = _proc_stat(record.pid)
    if stat is None or stat[0] in ("Z", "X") or stat[1] != record.start_ticks:
        return False
    current = _proc_cmdline(record.pid) or []
    tail = record.cmdline[1:]
    return bool(tail) and current[-len(tail):] == tail


def port_free(port: int, host: str = "127.0.0.1") -> bool:
    """Whether a server could listen on host:port now. SO_REUSEADDR as servers use it, so only a
    listener (not a TIME_WAIT leftover) counts as taken."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def http_status(url: str, timeout: float = 2.0) -> tuple[int | None, str]:
    """(HTTP status, first bytes of the body); (None, reason) when nothing answers."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status, response.read(300).decode("utf-8", "replace")
    except urllib.error.HTTPError as err:
        return err.code, err.read(300).decode("utf-8", "replace")
    except (OSError, ValueError) as err:
        return None, str(getattr(err, "reason", err))


def log_tail(path: Path, lines: int = 40) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return f"<no log at {path}>"
    return "\n".join(text.splitlines()[-lines:])


def default_state_dir() -> Path:
    return Path(os.environ.get(STACK_DIR_ENV) or REPO_ROOT / ".stack")


def find_alertmanager() -> str | None:
    # Debian installs it as prometheus-alertmanager; upstream tarballs as alertmanager.
    return shutil.which("alertmanager") or shutil.which("prometheus-alertmanager")


def _venv_script(name: str) -> str:
    """A console script of this environment (the venv's bin/ next to the running Python)."""
    candidate = Path(sys.executable).parent / name
    if candidate.exists():
        return str(candidate)
    found = shutil.which(name)
    if not found:
        raise StackError(f"{name} not found next to {sys.executable} or on PATH; install ernie-otel (make setup)")
    return found


def build_binaries(say: Callable[[str], None]) -> Path:
    """collector/build.sh: its progress goes straight to our stderr; the last stdout line is the dir."""
    if not BUILD_SCRIPT.exists():
        raise StackError(f"{BUILD_SCRIPT} is missing: `ernie-otel stack` runs from a checkout of ernie-otel")
    say("Collector and Jaeger binaries: collector/build.sh (cached after the first build, which takes long)")
    result = subprocess.run(["bash", str(BUILD_SCRIPT)], cwd=REPO_ROOT, stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, text=True, check=False)
    lines = result.stdout.strip().splitlines()
    if result.returncode != 0 or not lines:
        raise StackError(f"collector/build.sh failed (exit {result.returncode}); its messages are above")
    bin_dir = Path(lines[-1])
    for name in ("otelcol-ernie", "jaeger"):
        if not os.access(bin_dir / name, os.X_OK):
            raise StackError(f"collector/build.sh reported {bin_dir}, but {name} is not there")
    return bin_dir


def _substitute(text: str, pattern: str, repl: str | Callable[[re.Match[str]], str], what: str, source: Path) -> str:
    new, count = re.subn(pattern, repl, text, flags=re.MULTILINE)
    if count == 0:
        # The config changed shape: fail loudly rather than run a stack wired to the wrong ports.
        raise StackError(f"{source}: found no {what} to point at this stack (pattern {pattern!r}); "
                         "update ernie_otel/stack.py together with the config")
    return new


# ------------------------------------------------------------------------------------ Stack
class Stack:
    """The local pipeline. ``up()`` / ``down()`` for the whole, ``start(name)`` / ``stop(name)`` for one."""

    def __init__(
        self,
        state_dir: Path | str | None = None,
        *,
        model: str = "tiny",
        ports: Mapping[str, int] | None = None,
        env: Mapping[str, str] | None = None,
        bin_dir: Path | str | None = None,
        load: bool = False,
        say: Callable[[str], None] | None = None,
    ) -> None:
        unknown = set(ports or {}) - set(DEFAULT_PORTS)
        if unknown:
            raise ValueError(f"unknown port names {sorted(unknown)}; known: {sorted(DEFAULT_PORTS)}")
        self.state_dir = Path(state_dir) if state_dir is not None else default_state_dir()
        self.state_dir = self.state_dir.resolve()
        # The processes run from the repo root: a relative model directory must not change meaning.
        self.model = str(Path(model).resolve()) if model != "tiny" and Path(model).is_dir() else model
        self.ports = {**DEFAULT_PORTS, **(ports or {})}
        self.extra_env = dict(env or {})
        self.bin_dir = Path(bin_dir) if bin_dir is not None else None
        self.load = load
        self.say = say or (lambda line: print(f"[stack] {line}", flush=True))
        self._procs: dict[str, subprocess.Popen[bytes]] = {}
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ paths and URLs
    @property
    def log_dir(self) -> Path:
        return self.state_dir / "logs"

    def log_path(self, name: str) -> Path:
        return self.log_dir / f"{name}.log"

    @property
    def alerts_file(self) -> Path:
        return self.state_dir / "alerts.jsonl"

    def _addr(self, key: str) -> str:
        return f"127.0.0.1:{self.ports[key]}"

    def url(self, key: str) -> str:
        return f"http://{self._addr(key)}"

    @property
    def urls(self) -> dict[str, str]:
        return {
            "ernie_serve": f"{self.url('serve')}/v1",
            "ernie_serve_metrics": f"{self.url('serve_metrics')}/metrics",
            "jaeger": self.url("jaeger_query"),
            "prometheus": self.url("prometheus"),
            "alertmanager": self.url("alertmanager"),
            "collector_otlp_grpc": self.url("otlp_grpc"),
            "collector_otlp_http": self.url("otlp_http"),
            "collector_metrics": f"{self.url('collector_prometheus')}/metrics",
            "collector_health": f"{self.url('collector_health')}/",
            "webhook_sink": self.url("webhook_sink"),
        }

    @property
    def component_names(self) -> tuple[str, ...]:
        return CORE_COMPONENTS + (LOAD_COMPONENTS if self.load else ())

    @property
    def served_model_name(self) -> str:
        # ernie-serve's own rule (no --served-model-name): "ernie-4.5-tiny" or the directory's name.
        return "ernie-4.5-tiny" if self.model == "tiny" else self.model.rstrip("/").split("/")[-1]

    # ------------------------------------------------------------------ state file
    def _state_path(self) -> Path:
        return self.state_dir / STATE_FILE

    def read_records(self) -> dict[str, Record]:
        try:
            data = json.loads(self._state_path().read_text())
        except FileNotFoundError:
            return {}
        except (OSError, json.JSONDecodeError) as exc:
            raise StackError(f"{self._state_path()} is unreadable ({exc}); remove it after checking "
                             "that no stack processes are left (ps -ef)") from None
        return {name: Record(**rec) for name, rec in data.get("components", {}).items()}

    def _write_records(self, records: dict[str, Record]) -> None:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        data = {
            "repo": str(REPO_ROOT),
            "model": self.model,
            "ports": self.ports,
            "urls": self.urls,
            "components": {name: vars(rec) for name, rec in records.items()},
        }
        tmp = self._state_path().with_suffix(".tmp")
        tmp.write_text(json.dumps(data, indent=2) + "\n")
        tmp.replace(self._state_path())

    def _set_record(self, name: str, record: Record | None) -> None:
        with self._lock:
            records = self.read_records()
            if record is None:
                records.pop(name, None)
            else:
                records[name] = record
            if records:
                self._write_records(records)
            else:
                with contextlib.suppress(FileNotFoundError):
                    self._state_path().unlink()

    @classmethod
    def from_state(cls, state_dir: Path | str | None = None, **kwargs: Any) -> Stack:
        """The Stack a previous ``up`` recorded in state_dir (same ports and model)."""
        stack = cls(state_dir, **kwargs)
        try:
            data = json.loads(stack._state_path().read_text())
        except (OSError, json.JSONDecodeError):
            return stack
        stack.ports = {**DEFAULT_PORTS, **data.get("ports", {})}
        stack.model = data.get("model", stack.model)
        stack.load = any(name in data.get("components", {}) for name in LOAD_COMPONENTS)
        return stack

    # ------------------------------------------------------------------ configs
    def _prometheus_config(self) -> Path:
        """deploy/prometheus.yml with only the addresses and the rule path changed: targets follow
        this stack's ports, and rule_files (relative to deploy/) becomes absolute, because the copy
        lives in the state dir."""
        text = PROMETHEUS_CONFIG.read_text()
        text = _substitute(text, r"^(\s*-\s*)\.\./alerts/", rf"\g<1>{REPO_ROOT}/alerts/", "rule_files entry",
                           PROMETHEUS_CONFIG)
        for default_key in ("collector_prometheus", "serve_metrics", "collector_telemetry", "alertmanager"):
            text = _substitute(text, rf'"127\.0\.0\.1:{DEFAULT_PORTS[default_key]}"', f'"{self._addr(default_key)}"',
                               f"target 127.0.0.1:{DEFAULT_PORTS[default_key]}", PROMETHEUS_CONFIG)
        path = self.state_dir / "prometheus.yml"
        path.write_text(f"# Generated by ernie-otel stack from {PROMETHEUS_CONFIG}; edit that file.\n{text}")
        return path

    def _alertmanager_config(self) -> Path:
        """alerts/alertmanager.yml with the webhook URLs on this stack's sink and the bearer-token
        files in the state dir (the relay's real tokens live in /etc/alertmanager/secrets)."""
        text = ALERTMANAGER_CONFIG.read_text()
        text = _substitute(text, rf"http://127\.0\.0\.1:{DEFAULT_PORTS['webhook_sink']}/",
                           f"http://{self._addr('webhook_sink')}/", "webhook url on the relay port",
                           ALERTMANAGER_CONFIG)
        secrets_dir = self.state_dir / "secrets"
        secrets_dir.mkdir(parents=True, exist_ok=True)
        secrets_dir.chmod(0o700)

        def token_file(match: re.Match[str]) -> str:
            path = secrets_dir / Path(match.group(2)).name
            if not path.exists():
                path.write_text(secrets.token_hex(16) + "\n")
                path.chmod(0o600)
            return f"{match.group(1)}{path}"

        text = _substitute(text, r"^(\s*credentials_file:\s*)(\S+)", token_file, "credentials_file",
                           ALERTMANAGER_CONFIG)
        path = self.state_dir / "alertmanager.yml"
        path.write_text(f"# Generated by ernie-otel stack from {ALERTMANAGER_CONFIG}; edit that file.\n{text}")
        return path

    # ------------------------------------------------------------------ components
    def _bin(self) -> Path:
        if self.bin_dir is None:
            self.bin_dir = build_binaries(self.say)
        return self.bin_dir

    def component(self, name: str) -> Component:
        p, addr, url = self.ports, self._addr, self.url
        if name == "jaeger":
            env = {
                "JAEGER_OTLP_GRPC_ENDPOINT": addr("jaeger_otlp_grpc"),
                "JAEGER_OTLP_HTTP_ENDPOINT": addr("jaeger_otlp_http"),
                "JAEGER_QUERY_HTTP_ENDPOINT": addr("jaeger_query"),
                "JAEGER_QUERY_GRPC_ENDPOINT": addr("jaeger_query_grpc"),
                "JAEGER_HEALTH_ENDPOINT": addr("jaeger_health"),
                "JAEGER_METRICS_HOST": "127.0.0.1",
                "JAEGER_METRICS_PORT": str(p["jaeger_metrics"]),
                # Traces on disk (badger) in this stack's own state dir: they survive `down`/`up`
                # like Prometheus' data, and two stacks never share (or lock) one store.
                "JAEGER_BADGER_DIR": str(self.state_dir / "jaeger"),
            }
            return Component(name, [str(self._bin() / "jaeger"), "--config", str(JAEGER_CONFIG)], env,
                             f"{url('jaeger_query')}/api/services", COMPONENT_PORTS[name])
        if name == "collector":
            env = {
                "OTELCOL_OTLP_GRPC_ENDPOINT": addr("otlp_grpc"),
                "OTELCOL_OTLP_HTTP_ENDPOINT": addr("otlp_http"),
                "OTELCOL_PROMETHEUS_ENDPOINT": addr("collector_prometheus"),
                "OTELCOL_JAEGER_ENDPOINT": addr("jaeger_otlp_grpc"),
                "OTELCOL_HEALTH_ENDPOINT": addr("collector_health"),
                "OTELCOL_TELEMETRY_HOST": "127.0.0.1",
                "OTELCOL_TELEMETRY_PORT": str(p["collector_telemetry"]),
            }
            return Component(name, [str(self._bin() / "otelcol-ernie"), "--config", str(OTELCOL_CONFIG)], env,
                             f"{url('collector_health')}/", COMPONENT_PORTS[name])
        if name == "webhook_sink":
            argv = [sys.executable, "-m", "ernie_otel.webhook_sink", "--host", "127.0.0.1",
                    "--port", str(p["webhook_sink"]), "--out", str(self.alerts_file)]
            return Component(name, argv, {"PYTHONUNBUFFERED": "1"}, f"{url('webhook_sink')}/", COMPONENT_PORTS[name])
        if name == "alertmanager":
            binary = find_alertmanager()
            if binary is None:
                raise StackError("alertmanager not found (Debian package prometheus-alertmanager; make setup)")
            argv = [binary, f"--config.file={self._alertmanager_config()}",
                    f"--storage.path={self.state_dir / 'alertmanager'}",
                    f"--web.listen-address={addr('alertmanager')}",
                    # A single local instance: no gossip port (9094) to bind or clash on.
                    "--cluster.listen-address="]
            return Component(name, argv, {}, f"{url('alertmanager')}/-/ready", COMPONENT_PORTS[name])
        if name == "prometheus":
            binary = shutil.which("prometheus")
            if binary is None:
                raise StackError("prometheus not found (Debian package prometheus; make setup)")
            argv = [binary, f"--config.file={self._prometheus_config()}",
                    f"--storage.tsdb.path={self.state_dir / 'prometheus'}",
                    f"--web.listen-address={addr('prometheus')}",
                    "--web.enable-lifecycle",
                    # Histogram buckets -> trace ids, scraped from the Collector's OpenMetrics endpoint.
                    "--enable-feature=exemplar-storage"]
            return Component(name, argv, {}, f"{url('prometheus')}/-/ready", COMPONENT_PORTS[name],
                             HEALTH_TIMEOUT_S["prometheus"])
        if name == "ernie_serve":
            argv = [_venv_script("opentelemetry-instrument"), _venv_script("ernie-serve"), "--model", self.model,
                    "--host", "127.0.0.1", "--port", str(p["serve"]), "--metrics-port", str(p["serve_metrics"])]
            env = {
                "OTEL_EXPORTER_OTLP_ENDPOINT": url("otlp_grpc"),
                # Ours even where the generic opentelemetry-distro is installed too.
                "OTEL_PYTHON_DISTRO": "ernie_otel",
                "OTEL_PYTHON_CONFIGURATOR": "ernie_otel",
                "PYTHONUNBUFFERED": "1",
            }
            if self.model == "tiny" and "OMP_NUM_THREADS" not in os.environ:
                # The tiny model gains nothing from torch's intra-op threads, and on a small busy
                # machine (this stack plus a load generator on 2 cores) their spin-waiting turns a
                # 20 ms request into ~350 ms whenever another process holds a core.
                env["OMP_NUM_THREADS"] = "1"
            return Component(name, argv, env, f"{url('serve')}/health", COMPONENT_PORTS[name],
                             HEALTH_TIMEOUT_S["ernie_serve"])
        if name == "load":
            # `ernie-otel bench --duration 0` runs until stopped; its progress line goes to the log.
            argv = [sys.executable, "-m", "ernie_otel.cli", "bench", "--url", url("serve"),
                    "--model", self.served_model_name, "--rate", str(LOAD_RATE), "--concurrency", str(LOAD_CONCURRENCY),
                    "--max-tokens", str(LOAD_MAX_TOKENS), "--duration", "0"]
            return Component(name, argv, {"PYTHONUNBUFFERED": "1"}, None)
        if name == "bad_requests":
            argv = [sys.executable, "-m", "ernie_otel.stack", "bad-requests", "--url", url("serve"),
                    "--model", self.served_model_name, "--interval", str(BAD_REQUEST_INTERVAL_S)]
            return Component(name, argv, {"PYTHONUNBUFFERED": "1"}, None)
        raise KeyError(f"unknown component {name!r}; known: {', '.join(CORE_COMPONENTS + LOAD_COMPONENTS)}")

    # ------------------------------------------------------------------ checks
    def taken_ports(self, names: tuple[str, ...] | None = None) -> list[str]:
        """One line per port of these components that something already listens on."""
        taken = []
        for name in names or self.component_names:
            for key in COMPONENT_PORTS[name]:
                if not port_free(self.ports[key]):
                    taken.append(f"127.0.0.1:{self.ports[key]} is already in use; the stack needs it for "
                                 f"{PORT_PURPOSE[key]}")
        return taken

    def _check_ports(self, names: tuple[str, ...]) -> None:
        taken = self.taken_ports(names)
        if taken:
            raise StackError(
                "cannot start: " + ("\n  " if len(taken) > 1 else "") + "\n  ".join(taken) + "\n"
                "Nothing was started. Another stack may be running (`ernie-otel stack status` / `down`, with "
                "its --state-dir), or another program holds the port: `ss -ltnp` shows which.")

    def running(self) -> dict[str, Record]:
        """Recorded components whose process is still the one we started."""
        return {name: rec for name, rec in self.read_records().items() if process_matches(rec)}

    # ------------------------------------------------------------------ start / stop
    def start(self, name: str) -> Record:
        """Start one component and wait until it is healthy; on failure stop it and raise with its log."""
        current = self.read_records().get(name)
        if current is not None and process_matches(current):
            raise StackError(f"{TITLES.get(name, name)} is already running (pid {current.pid})")
        self._check_ports((name,))
        comp = self.component(name)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log_path = self.log_path(name)
        env = {**os.environ, **comp.env, **self.extra_env}
        self.say(f"starting {comp.title} ...")
        with open(log_path, "ab") as log:
            log.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} {' '.join(comp.argv)}\n".encode())
            log.flush()
            proc = subprocess.Popen(comp.argv, cwd=REPO_ROOT, env=env, stdin=subprocess.DEVNULL, stdout=log,
                                    stderr=subprocess.STDOUT, start_new_session=True)
        self._procs[name] = proc
        stat = _proc_stat(proc.pid)
        record = Record(proc.pid, stat[1] if stat else 0, comp.argv, str(log_path), comp.health_url)
        # Recorded before the health wait, so a `down` from another shell finds it even now.
        self._set_record(name, record)
        t0 = time.monotonic()
        try:
            self._wait_healthy(comp, proc)
        except BaseException:
            self.stop(name)
            raise
        where = f" ({comp.health_url})" if comp.health_url else ""
        self.say(f"{comp.title} healthy after {time.monotonic() - t0:.1f}s, pid {proc.pid}{where}")
        return record

    def _wait_healthy(self, comp: Component, proc: subprocess.Popen[bytes]) -> None:
        t0 = time.monotonic()
        deadline = t0 + comp.health_timeout
        next_note = t0 + 5
        last = "no answer yet"
        while True:
            code = proc.poll()
            if code is not None:
                raise StackError(f"{comp.title} exited with code {code} while starting. Last lines of "
                                 f"{self.log_path(comp.name)}:\n{log_tail(self.log_path(comp.name))}")
            if comp.health_url is None:
                if time.monotonic() - t0 >= 1.0:
                    return
            else:
                status, body = http_status(comp.health_url)
                if status == 200:
                    return
                last = f"HTTP {status}: {body.strip()[:120]}" if status is not None else body
            now = time.monotonic()
            if now >= deadline:
                raise StackError(f"{comp.title} not healthy after {comp.health_timeout:.0f}s "
                                 f"({comp.health_url}: {last}). Last lines of "
                                 f"{self.log_path(comp.name)}:\n{log_tail(self.log_path(comp.name))}")
            if now >= next_note:
                self.say(f"  ... waiting for {comp.title} ({now - t0:.0f}s): {last}")
                next_note = now + 5
            time.sleep(0.25)

    def stop(self, name: str, timeout: float = STOP_TIMEOUT_S) -> bool:
        """Stop one recorded component: SIGTERM to its process group, SIGKILL after `timeout`.
        Returns whether a process was stopped. A pid that is no longer ours is left alone."""
        record = self.read_records().get(name)
        proc = self._procs.pop(name, None)
        if record is None:
            return False
        title = TITLES.get(name, name)
        # A child of this very process is ours beyond doubt (e.g. stopping one that failed to start).
        owned = proc is not None and proc.pid == record.pid and proc.poll() is None
        if not owned and not process_matches(record):
            stat = _proc_stat(record.pid)
            if stat is not None and stat[0] not in ("Z", "X"):
                self.say(f"{title}: pid {record.pid} is now {' '.join(_proc_cmdline(record.pid) or ['?'])!r}, "
                         "not the process the stack started; leaving it alone")
            if proc is not None:
                proc.poll()  # reap our own zombie
            self._set_record(name, None)
            return False
        self._signal(record.pid, signal.SIGTERM)
        if not self._wait_gone(record, proc, timeout):
            self.say(f"{title} (pid {record.pid}) ignored SIGTERM for {timeout:.0f}s; sending SIGKILL")
            self._signal(record.pid, signal.SIGKILL)
            self._wait_gone(record, proc, 5.0)
        self._set_record(name, None)
        return True

    @staticmethod
    def _signal(pid: int, sig: signal.Signals) -> None:
        # Each component leads its own session and process group (start_new_session): signal the group
        # so helpers it spawned go too. Fall back to the pid if it somehow is not a group leader.
        try:
            if os.getpgid(pid) == pid:
                os.killpg(pid, sig)
            else:
                os.kill(pid, sig)
        except ProcessLookupError:
            pass

    @staticmethod
    def _wait_gone(record: Record, proc: subprocess.Popen[bytes] | None, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc is not None:
                if proc.poll() is not None:
                    return True
            elif not process_matches(record):
                return True
            time.sleep(0.1)
        return False

    def up(self) -> None:
        """Start every component in order; all healthy, or nothing left running and a StackError."""
        if not PROMETHEUS_CONFIG.exists() or not OTELCOL_CONFIG.exists():
            raise StackError(f"configs not found under {REPO_ROOT}: `ernie-otel stack` runs from a checkout")
        alive = self.running()
        if alive:
            raise StackError(f"a stack from {self.state_dir} is already running ({', '.join(alive)}); "
                             "see `ernie-otel stack status`, stop it with `ernie-otel stack down`")
        self._set_stale_records_aside()
        names = self.component_names
        self._check_ports(names)  # before the build: fail in a second, not after it
        self._bin()
        self._check_ports(names)  # the build can take long; check again right before starting
        started: list[str] = []
        try:
            for name in names:
                self.start(name)
                started.append(name)
        except BaseException:
            if started:
                self.say("stopping what was started: " + ", ".join(TITLES[n] for n in reversed(started)))
            for name in reversed(started):
                self.stop(name)
            raise

    def _set_stale_records_aside(self) -> None:
        """Records whose processes are gone (a reboot, a kill -9) must not confuse the next down."""
        for name, rec in self.read_records().items():
            if not process_matches(rec):
                self._set_record(name, None)

    def down(self) -> list[str]:
        """Stop everything recorded, in reverse start order; returns the names stopped."""
        records = self.read_records()
        order = [n for n in (*LOAD_COMPONENTS[::-1], *CORE_COMPONENTS[::-1]) if n in records]
        order += [n for n in records if n not in order]
        stopped = []
        for name in order:
            self.say(f"stopping {TITLES.get(name, name)} (pid {records[name].pid})")
            if self.stop(name):
                stopped.append(name)
        return stopped

    def status(self) -> dict[str, dict[str, Any]]:
        """Per recorded component: pid, alive (still our process), healthy (health URL answers 200)."""
        out: dict[str, dict[str, Any]] = {}
        for name, rec in self.read_records().items():
            alive = process_matches(rec)
            healthy: bool | None = None
            detail = ""
            if alive and rec.health_url:
                code, body = http_status(rec.health_url)
                healthy = code == 200
                detail = "" if healthy else (f"HTTP {code}: {body.strip()[:80]}" if code else body)
            elif alive:
                healthy = True
            out[name] = {"pid": rec.pid, "alive": alive, "healthy": healthy, "health_url": rec.health_url,
                         "detail": detail, "log": rec.log}
        return out

    def print_urls(self) -> None:
        u = self.urls
        lines = [
            f"ernie-serve (OpenAI API)    {u['ernie_serve']}   model {self.served_model_name}",
            f"ernie-serve metrics         {u['ernie_serve_metrics']}",
            f"Collector OTLP gRPC / HTTP  {self._addr('otlp_grpc')} / {self._addr('otlp_http')}",
            f"Collector Prometheus        {u['collector_metrics']}",
            f"Jaeger (API, UI stub)       {u['jaeger']}/api/services, {u['jaeger']}/api/traces/<trace id>",
            f"Prometheus                  {u['prometheus']}",
            f"Alertmanager                {u['alertmanager']}",
            f"alert notifications         {self.alerts_file}",
            f"logs                        {self.log_dir}/<component>.log",
            f"stop                        ernie-otel stack down --state-dir {self.state_dir}",
        ]
        self.say("all healthy:")
        for line in lines:
            self.say("  " + line)


# ------------------------------------------------------------------------------ bad requests
def _bad_request_cases(model: str) -> list[tuple[str, bytes]]:
    """Requests ernie-serve must refuse, one per error class the dashboards break down."""
    ok_messages = [{"role": "user", "content": "hi"}]
    return [
        ("unknown model", json.dumps({"model": model + "-does-not-exist", "messages": ok_messages}).encode()),
        ("invalid JSON", b'{"model": "' + model.encode() + b'", "messages": ['),
        ("max_tokens < 0", json.dumps({"model": model, "messages": ok_messages, "max_tokens": -3}).encode()),
    ]


def bad_requests_main(argv: list[str]) -> int:
    """A trickle of invalid requests, so the error panels and alerts of the demo have data."""
    parser = argparse.ArgumentParser(prog="python -m ernie_otel.stack bad-requests")
    parser.add_argument("--url", default=f"http://127.0.0.1:{DEFAULT_PORTS['serve']}")
    parser.add_argument("--model", default="ernie-4.5-tiny")
    parser.add_argument("--interval", type=float, default=BAD_REQUEST_INTERVAL_S)
    args = parser.parse_args(argv)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    cases = _bad_request_cases(args.model)
    i = 0
    while not stop.is_set():
        what, body = cases[i % len(cases)]
        request = urllib.request.Request(f"{args.url}/v1/chat/completions", data=body, method="POST",
                                         headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                result = f"HTTP {response.status} (expected an error!)"
        except urllib.error.HTTPError as err:
            result = f"HTTP {err.code}"
        except OSError as err:
            result = f"no answer: {err}"
        print(f"{time.strftime('%H:%M:%S')} bad request ({what}): {result}", flush=True)
        i += 1
        stop.wait(args.interval)
    return 0


# ------------------------------------------------------------------------------------ CLI
def _print_status(stack: Stack) -> int:
    status = stack.status()
    if not status:
        print(f"no stack recorded in {stack.state_dir}")
        return 3
    print(f"stack in {stack.state_dir}:")
    for name, st in status.items():
        state = "running" if st["alive"] else "NOT RUNNING"
        health = {True: "healthy", False: f"UNHEALTHY {st['detail']}", None: ""}[st["healthy"]]
        print(f"  {TITLES.get(name, name):<14} pid {st['pid']:<8} {state:<12} {health}")
    ok = all(st["alive"] and st["healthy"] for st in status.values())
    if ok:
        for key, url in stack.urls.items():
            print(f"  {key:<20} {url}")
    return 0 if ok else 1


def _foreground(stack: Stack) -> int:
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    stack.say("running in the foreground; Ctrl-C stops everything")
    reported: set[str] = set()
    while not stop.wait(2.0):
        for name, rec in stack.read_records().items():
            if name not in reported and not process_matches(rec):
                reported.add(name)
                stack.say(f"{TITLES.get(name, name)} exited unexpectedly; last lines of {rec.log}:\n"
                          f"{log_tail(Path(rec.log))}")
    stack.say("stopping ...")
    stack.down()
    stack.say("stopped")
    return 0


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="ernie-otel stack", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    state_help = f"state, logs and pids (default ${STACK_DIR_ENV} or <repo>/.stack)"
    up = sub.add_parser("up", help="start the whole stack and leave it running")
    up.add_argument("--load", action="store_true", help="also drive steady load (plus some bad requests)")
    up.add_argument("--foreground", action="store_true", help="stay attached; Ctrl-C or SIGTERM stops it all")
    up.add_argument("--model", default="tiny", help="'tiny' (built-in random-weight ERNIE-4.5) or a model dir")
    up.add_argument("--state-dir", type=Path, default=None, help=state_help)
    for name, text in (("status", "what runs, and whether it is healthy"), ("down", "stop what `up` started")):
        p = sub.add_parser(name, help=text)
        p.add_argument("--state-dir", type=Path, default=None, help=state_help)
    if argv[:1] == ["bad-requests"]:
        # Internal (the --load helper); argparse's REMAINDER would not pass its --options through.
        return bad_requests_main(argv[1:])
    args = parser.parse_args(argv)
    try:
        if args.command == "status":
            return _print_status(Stack.from_state(args.state_dir))
        if args.command == "down":
            stack = Stack.from_state(args.state_dir)
            if not stack.read_records():
                print(f"nothing recorded in {stack.state_dir}; nothing to stop")
                return 0
            stack.down()
            stack.say("stopped")
            return 0
        stack = Stack(args.state_dir, model=args.model, load=args.load)
        stack.say(f"state, logs and pids in {stack.state_dir}")
        try:
            stack.up()
        except KeyboardInterrupt:
            return 130
        stack.print_urls()
        if args.foreground:
            return _foreground(stack)
        return 0
    except StackError as exc:
        print(f"ernie-otel stack: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
