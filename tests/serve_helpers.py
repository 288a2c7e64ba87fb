"""Start a real ``ernie-serve`` process on free ports for tests."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from helpers import RunningProcess, free_port, http_get, run_process

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
        return json.loads(self._ok(self.base + "/stats"))

    def metrics_text(self) -> str:
        return self._ok(self.metrics_url)

    def metric_sum(self, family: str, **labels: str) -> float:
        """The sum of a metric family's samples (on /metrics) whose labels include ``labels``."""
        total = 0.0
        for line in self.metrics_text().splitlines():
            if (line.startswith((family + "{", family + " "))
                    and all(f'{k}="{v}"' in line for k, v in labels.items())):
                total += float(line.rsplit(" ", 1)[1])
        return total

    @staticmethod
    def _ok(url: str) -> str:
        status, body = http_get(url)
        assert status == 200, f"{url}: HTTP {status}: {body[:300]}"
        return body

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
        # Fails at once, with the log's last lines, if the server exits or cannot load the model.
        running.wait_http(f"http://127.0.0.1:{port}/health", timeout=120)
        yield Served(running, port, metrics_port)
