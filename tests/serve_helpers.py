"""Start a real ``ernie-serve`` process on free ports for tests."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from conftest import free_port

BIN_DIR = Path(sys.executable).parent


@dataclass
class Served:
    proc: subprocess.Popen[bytes]
    port: int
    metrics_port: int
    log_path: Path

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
        return self.log_path.read_text(errors="replace")


def wait_healthy(base: str, proc: subprocess.Popen[bytes], log_path: Path, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"ernie-serve exited with {proc.returncode}:\n{log_path.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(base + "/health", timeout=2) as r:
                if r.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.3)
    raise TimeoutError(f"ernie-serve not healthy after {timeout}s:\n{log_path.read_text()[-3000:]}")


@contextmanager
def run_server(tmp: Path, *args: str, env: Mapping[str, str | None] | None = None, instrument: bool = False,
               name: str = "serve") -> Iterator[Served]:
    port, metrics_port = free_port(), free_port()
    cmd = [str(BIN_DIR / "ernie-serve"), "--model", "tiny", "--port", str(port), "--metrics-port",
           str(metrics_port), *args]
    if instrument:
        cmd = [str(BIN_DIR / "opentelemetry-instrument"), *cmd]
    log_path = tmp / f"{name}-{port}.log"
    # A None value removes the variable, so a test sees defaults whatever the caller's environment.
    full_env = {k: v for k, v in {**os.environ, **(env or {})}.items() if v is not None}
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=full_env)
    try:
        wait_healthy(f"http://127.0.0.1:{port}", proc, log_path)
        yield Served(proc, port, metrics_port, log_path)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
