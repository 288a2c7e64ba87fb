"""The local pipeline as one object: :class:`Stack` starts the components of the table in order,
records them, checks their health and stops them again.

``up()`` / ``down()`` for the whole, ``start(name)`` / ``stop(name)`` for one; the CLI (cli.py)
and the tests drive the same object. What runs is the component table (components.py); how a
process is started, waited on and stopped is procs.py and records.py.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from .. import consoles, jaeger_ui
from ..ports import DEFAULT_PORTS, HOST
from . import components as table
from . import fleet as fleet_profile
from . import thanos
from .components import Component
from .procs import REPO_ROOT, NotHealthyError, http_status, log_tail, port_free, spawn, wait_http
from .records import Record, RecordFile, StackError, process_matches, record_of, stop_recorded, wait_gone
from .render import OTELCOL_CONFIG, PROMETHEUS_CONFIG

STACK_DIR_ENV = "ERNIE_OTEL_STACK_DIR"
STATE_FILE = "stack.json"
STOP_TIMEOUT_S = 10.0
# A component that has run this long since its last (re)start is stable: its back-off starts over.
STABLE_AFTER_S = 60.0


def default_state_dir() -> Path:
    return Path(os.environ.get(STACK_DIR_ENV) or REPO_ROOT / ".stack")


class Stack:
    """The local pipeline. ``components``: the table to run (default: components.COMPONENTS)."""

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
        components: Sequence[Component] | None = None,
        replicas: int = 1,
        fleet: bool = False,
        trace_store: str = "badger",
    ) -> None:
        # replicas > 1 or fleet: the fleet profile (fleet.py); else the single-server table as it was.
        self.replicas = replicas
        self.fleet = fleet or replicas > 1
        self.trace_store = trace_store
        chosen = (components if components is not None
                  else fleet_profile.stack_components(replicas, fleet=fleet, trace_store=trace_store))
        self.table = {c.name: c for c in sorted(chosen, key=lambda c: c.order)}
        defaults = {**DEFAULT_PORTS}
        for comp in self.table.values():
            defaults.update(comp.ports)
        unknown = set(ports or {}) - set(defaults)
        if unknown:
            raise ValueError(f"unknown port names {sorted(unknown)}; known: {sorted(defaults)}")
        self.state_dir = (Path(state_dir) if state_dir is not None else default_state_dir()).resolve()
        # The processes run from the repo root: a relative model directory must not change meaning.
        self.model = str(Path(model).resolve()) if model != "tiny" and Path(model).is_dir() else model
        self.ports = {**defaults, **(ports or {})}
        self.extra_env = dict(env or {})
        self.bin_dir = Path(bin_dir) if bin_dir is not None else None
        self.load = load
        self.say = say or (lambda line: print(f"[stack] {line}", flush=True))
        self._procs: dict[str, subprocess.Popen[bytes]] = {}
        self._records = RecordFile(self.state_dir / STATE_FILE)

    # ------------------------------------------------------------------ paths and URLs
    @property
    def log_dir(self) -> Path:
        return self.state_dir / "logs"

    def log_path(self, name: str) -> Path:
        return self.log_dir / f"{name}.log"

    @property
    def alerts_file(self) -> Path:
        return self.state_dir / "alerts.jsonl"

    def addr(self, key: str) -> str:
        return f"{HOST}:{self.ports[key]}"

    def url(self, key: str) -> str:
        return f"http://{self.addr(key)}"

    @property
    def urls(self) -> dict[str, str]:
        urls = {
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
            "logs": f"{self.url('log_store')}/select/vmui/",
        }
        for i in range(1, self.replicas):
            api_key, metrics_key = fleet_profile.replica_keys(i)
            if api_key in self.ports:
                urls[f"ernie_serve_{i}"] = f"{self.url(api_key)}/v1"
                urls[f"ernie_serve_{i}_metrics"] = f"{self.url(metrics_key)}/metrics"
        if self.fleet and "thanos_query_http" in self.ports:
            urls["thanos_query"] = self.url("thanos_query_http")
            for k in range(thanos.SHARDS):
                urls[f"prometheus_shard_{k}"] = self.url(f"prometheus_shard_{k}")
        return urls

    @property
    def component_names(self) -> tuple[str, ...]:
        profiles = ("core", "load") if self.load else ("core",)
        return tuple(name for name, comp in self.table.items() if comp.profile in profiles)

    def title(self, name: str) -> str:
        comp = self.table.get(name)
        return comp.title if comp is not None else name

    @property
    def served_model_name(self) -> str:
        # ernie-serve's own rule (no --served-model-name): "ernie-4.5-tiny" or the directory's name.
        return "ernie-4.5-tiny" if self.model == "tiny" else self.model.rstrip("/").split("/")[-1]

    # ------------------------------------------------------------------ state file
    def read_records(self) -> dict[str, Record]:
        return self._records.read()

    def _header(self) -> dict[str, Any]:
        return {"repo": str(REPO_ROOT), "model": self.model, "replicas": self.replicas, "fleet": self.fleet,
                "trace_store": self.trace_store, "ports": self.ports, "urls": self.urls}

    def _write_records(self, records: Mapping[str, Record]) -> None:
        self._records.write(records, self._header())

    def _set_record(self, name: str, record: Record | None) -> None:
        self._records.set(name, record, self._header())

    @classmethod
    def from_state(cls, state_dir: Path | str | None = None, **kwargs: Any) -> Stack:
        """The Stack a previous ``up`` recorded in state_dir (same ports and model)."""
        stack = cls(state_dir, **kwargs)
        try:
            data = stack._records.read_data()
        except StackError:
            return stack
        if "components" not in kwargs and (data.get("replicas", 1), data.get("fleet", False)) != (1, False):
            # A fleet was recorded: the same table, so that titles and the stop order match it.
            stack = cls(state_dir, replicas=data.get("replicas", 1), fleet=data.get("fleet", False),
                        trace_store=data.get("trace_store", "badger"), **kwargs)
        stack.ports = {**stack.ports, **data.get("ports", {})}
        stack.model = data.get("model", stack.model)
        recorded = data.get("components", {})
        stack.load = any(name in recorded for name, comp in stack.table.items() if comp.profile == "load")
        return stack

    # ------------------------------------------------------------------ components
    def binaries(self) -> Path:
        """The directory of otelcol-ernie and jaeger; built (or found in the cache) on first use."""
        if self.bin_dir is None:
            self.bin_dir = table.build_binaries(self.say)
        return self.bin_dir

    def component(self, name: str) -> Component:
        try:
            return self.table[name]
        except KeyError:
            raise KeyError(f"unknown component {name!r}; known: {', '.join(self.table)}") from None

    def taken_ports(self, names: Sequence[str] | None = None) -> list[str]:
        """One line per port of these components that something already listens on."""
        taken = []
        for name in names or self.component_names:
            comp = self.component(name)
            for key in comp.ports:
                if not port_free(self.ports[key]):
                    taken.append(f"{self.addr(key)} is already in use; the stack needs it for {comp.purpose(key)}")
        return taken

    def _check_ports(self, names: Sequence[str]) -> None:
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
        comp = self.component(name)
        current = self.read_records().get(name)
        if current is not None and process_matches(current):
            raise StackError(f"{comp.title} is already running (pid {current.pid})")
        self._check_ports((name,))
        argv = comp.command(self)
        health_url = comp.health(self) if comp.health is not None else None
        self.say(f"starting {comp.title} ...")
        proc = spawn(name, argv, self.log_path(name), {**comp.env(self), **self.extra_env}, detach=True,
                     append=True)
        self._procs[name] = proc.proc
        record = record_of(proc.proc, argv, proc.log_path, health_url)
        # Recorded before the health wait, so a `down` from another shell finds it even now.
        self._set_record(name, record)
        t0 = time.monotonic()
        try:
            wait_http(health_url, timeout=comp.health_timeout, proc=proc.proc, what=comp.title,
                      log_path=proc.log_path, say=self.say)
        except NotHealthyError as exc:
            self.stop(name)
            raise StackError(str(exc)) from None
        except BaseException:
            self.stop(name)
            raise
        where = f" ({health_url})" if health_url else ""
        self.say(f"{comp.title} healthy after {time.monotonic() - t0:.1f}s, pid {proc.pid}{where}")
        return record

    def stop(self, name: str, timeout: float = STOP_TIMEOUT_S) -> bool:
        """Stop one recorded component: SIGTERM to its process group, SIGKILL after `timeout`.
        Returns whether a process was stopped. A pid that is no longer ours is left alone."""
        record = self.read_records().get(name)
        proc = self._procs.pop(name, None)
        if record is None:
            return False
        stopped = stop_recorded(record, proc, timeout, self.title(name), self.say)
        self._set_record(name, None)
        return stopped

    def up(self) -> list[str]:
        """Start, in order, every component that is not running; returns the names started.

        On a partly running stack (components killed, crashed, or a machine that lost some) this
        heals it: what still runs is left alone -- ernie-serve keeps its requests in flight -- and
        only the missing components start. All healthy, or a StackError with what this call
        started stopped again (what ran before is never touched).
        """
        if not PROMETHEUS_CONFIG.exists() or not OTELCOL_CONFIG.exists():
            raise StackError(f"configs not found under {REPO_ROOT}: `ernie-otel stack` runs from a checkout")
        alive = self.running()
        self._set_stale_records_aside()
        names = [name for name in self.component_names if name not in alive]
        if alive:
            if not names:
                self.say("every component is already running; nothing to start")
                return []
            self.say("already running, left alone: " + ", ".join(self.title(n) for n in alive)
                     + "; starting: " + ", ".join(self.title(n) for n in names))
        self._check_ports(names)  # before the build: fail in a second, not after it
        if any(self.component(name).needs_binaries for name in names):
            self.binaries()
            self._check_ports(names)  # the build can take long; check again right before starting
        started: list[str] = []
        try:
            for name in names:
                self.start(name)
                started.append(name)
        except BaseException:
            if started:
                self.say("stopping what was started: " + ", ".join(self.title(n) for n in reversed(started)))
            for name in reversed(started):
                self.stop(name)
            raise
        return started

    def restart(self, name: str) -> Record:
        """Stop one component (if it runs) and start it again on the same ports."""
        if name not in self.table:  # before anything stops
            raise StackError(f"unknown component {name!r}; known: {', '.join(self.component_names)}")
        if self.stop(name):
            self.say(f"stopped {self.title(name)}")
        return self.start(name)

    def supervise(self, stop: Callable[[], bool], *, poll_s: float = 2.0, first_backoff_s: float = 1.0,
                  max_backoff_s: float = 60.0, wait: Callable[[float], bool] | None = None) -> None:
        """Until ``stop()``: restart a component whose process exited, logging it, with a back-off
        per component that doubles after every failed or short-lived start (up to
        ``max_backoff_s``) and resets once it has stayed up for a minute.

        ``wait(seconds)`` sleeps and returns True when the supervisor should stop (default: a
        plain sleep, then ``stop()``).
        """
        def pause(seconds: float) -> bool:
            time.sleep(seconds)
            return stop()

        sleep = wait or pause
        backoff: dict[str, float] = {}
        not_before: dict[str, float] = {}
        while not stop():
            records = self.read_records()
            for name in self.component_names:
                rec = records.get(name)
                if rec is not None and process_matches(rec):
                    if time.time() - rec.started_at > STABLE_AFTER_S:
                        backoff.pop(name, None)
                    continue
                now = time.monotonic()
                if now < not_before.get(name, 0.0):
                    continue
                delay = backoff.get(name, 0.0)
                tail = f"; last lines of {rec.log}:\n{log_tail(Path(rec.log), 10)}" if rec is not None else ""
                self.say(f"{self.title(name)} is not running: restarting it{tail}")
                self._set_record(name, None)
                try:
                    self.start(name)
                except StackError as exc:
                    self.say(f"{self.title(name)} failed to restart: {exc}")
                backoff[name] = min(max_backoff_s, max(first_backoff_s, delay * 2))
                not_before[name] = time.monotonic() + backoff[name]
                self.say(f"{self.title(name)}: next restart no sooner than {backoff[name]:.0f}s from now")
            if sleep(poll_s):
                return

    def _set_stale_records_aside(self) -> None:
        """Records whose processes are gone (a reboot, a kill -9) must not confuse the next down.
        One that is dying right now may still hold its ports: wait until it is gone."""
        for name, rec in self.read_records().items():
            if not process_matches(rec):
                wait_gone(rec, STOP_TIMEOUT_S)
                self._set_record(name, None)

    def down(self) -> list[str]:
        """Stop everything recorded, in reverse start order; returns the names stopped."""
        records = self.read_records()
        order = [n for n in reversed(self.table) if n in records]
        order += [n for n in records if n not in order]
        stopped = []
        for name in order:
            self.say(f"stopping {self.title(name)} (pid {records[name].pid})")
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
        from ..names import SERVICE_NAME  # names imports OpenTelemetry: not at the supervisor's start

        u = self.urls
        jaeger = u["jaeger"]
        ui = (f"{jaeger}/search?service={SERVICE_NAME}" if jaeger_ui.installed_assets()
              else f"{jaeger}/api/services (no UI: {jaeger_ui.HOW_TO_GET})")
        # The console page links to Jaeger on its default port unless told otherwise.
        links_to = None if self.ports["jaeger_query"] == DEFAULT_PORTS["jaeger_query"] else jaeger
        lines = [
            "open in a browser:",
            f"  ERNIE dashboard           {consoles.dashboard_url(u['prometheus'], links_to)}",
            f"  Jaeger UI (traces)        {ui}",
            f"  Jaeger Monitor (RED)      {jaeger}/monitor",
            f"  Prometheus                {u['prometheus']}/alerts",
            f"  Alertmanager              {u['alertmanager']}",
            f"  VictoriaLogs (logs)       {u['logs']}   (LogsQL: trace_id:<X-Trace-Id>)",
            f"ernie-serve (OpenAI API)    {u['ernie_serve']}   model {self.served_model_name}",
            f"ernie-serve metrics         {u['ernie_serve_metrics']}",
            f"Collector OTLP gRPC / HTTP  {self.addr('otlp_grpc')} / {self.addr('otlp_http')}",
            f"Collector Prometheus        {u['collector_metrics']}",
            f"alert notifications         {self.alerts_file}",
            f"logs                        {self.log_dir}/<component>.log",
            f"stop                        ernie-otel stack down --state-dir {self.state_dir}",
        ]
        if self.fleet:
            shards = ", ".join(u[f"prometheus_shard_{k}"] for k in range(thanos.SHARDS))
            lines[5:5] = [f"  Thanos Query (fleet view) {u['thanos_query']}   (PromQL API and UI)"]
            lines[-5:-5] = [*(f"{f'ernie-serve {i} (OpenAI API)':<28}{u[f'ernie_serve_{i}']}"
                              for i in range(1, self.replicas)),
                            f"Prometheus shards           {shards}"]
        self.say("all healthy:")
        for line in lines:
            self.say("  " + line)
