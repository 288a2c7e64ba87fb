"""Start a real ``ernie-serve`` process on free ports for tests."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.request
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from conftest import RunningProcess, free_port, run_process, wait_http

BIN_DIR = Path(sys.executable).parent


@dataclass
class Served:
    running: RunningProcess
    port: int
    metrics_port: int

    @property
    def proc(self) -> subprocess.Popen[bytes]:
        return self.running.proc

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.metrics_port}/metrics"

    def stats(self) -> dict:
        with urllib.request.urlopen(self.base + "/stats", timeout=5) as r:
            return json.load(r)

    def metrics_text(self) -> str:
        with urllib.request.urlopen(self.metrics_url, timeout=5) as r:
            return r.read().decode()

    def log(self) -> str:
        return self.running.log_tail(100_000)


@contextmanager
def run_server(tmp: Path, *args: str, env: Mapping[str, str | None] | None = None, instrument: bool = False,
               name: str = "serve") -> Iterator[Served]:
    port, metrics_port = free_port(), free_port()
    cmd = [str(BIN_DIR / "ernie-serve"), "--model", "tiny", "--port", str(port), "--metrics-port",
           str(metrics_port), *args]
    if instrument:
        cmd = [str(BIN_DIR / "opentelemetry-instrument"), *cmd]
    with run_process(cmd, tmp / f"{name}-{port}.log", env=env) as running:
        try:
            wait_http(f"http://127.0.0.1:{port}/health", timeout=120, proc=running.proc)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{running.log_tail()}") from None
        yield Served(running, port, metrics_port)
