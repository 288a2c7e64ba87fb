"""Shared pytest helpers for tests that run the real pipeline binaries.

`pipeline_bin` builds (or reuses from the cache outside the repo) otelcol-ernie and jaeger via
collector/build.sh. A build failure fails the tests that need it; it never skips them, because
"the Collector does not build" is exactly the regression these tests exist to catch.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
BUILD_SCRIPT = REPO_ROOT / "collector" / "build.sh"
# A cold build compiles the Collector and Jaeger from source: tens of minutes on a 2-core runner.
BUILD_TIMEOUT_S = 3600


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def collector_env() -> dict[str, str]:
    """Free ports for every Collector listener (collector/otelcol.yaml's env overrides), so a
    test's Collector never collides with a running stack."""
    return {
        "OTELCOL_OTLP_GRPC_ENDPOINT": f"127.0.0.1:{free_port()}",
        "OTELCOL_OTLP_HTTP_ENDPOINT": f"127.0.0.1:{free_port()}",
        "OTELCOL_PROMETHEUS_ENDPOINT": f"127.0.0.1:{free_port()}",
        # Nothing listens here unless a test starts Jaeger on it.
        "OTELCOL_JAEGER_ENDPOINT": f"127.0.0.1:{free_port()}",
        "OTELCOL_HEALTH_ENDPOINT": f"127.0.0.1:{free_port()}",
        "OTELCOL_TELEMETRY_HOST": "127.0.0.1",
        "OTELCOL_TELEMETRY_PORT": str(free_port()),
    }


def http_get(url: str, timeout: float = 5.0, headers: Mapping[str, str] | None = None) -> tuple[int, str]:
    """GET url; returns (status, body) for any HTTP status, raises OSError if nothing answers."""
    request = urllib.request.Request(url, headers=dict(headers or {}))
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.read().decode("utf-8", "replace")
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode("utf-8", "replace")


def http_post_json(url: str, body: bytes, timeout: float = 5.0) -> tuple[int, str]:
    """POST a JSON body (e.g. OTLP/HTTP JSON); returns (status, body) for any HTTP status."""
    request = urllib.request.Request(url, data=body, method="POST", headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.read().decode("utf-8", "replace")
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode("utf-8", "replace")


def wait_http(
    url: str,
    timeout: float = 30.0,
    status: int = 200,
    headers: Mapping[str, str] | None = None,
    proc: subprocess.Popen[bytes] | None = None,
) -> str:
    """Poll url until it answers `status`; returns the body. Fails early if `proc` exits."""
    deadline = time.monotonic() + timeout
    last: str = "no answer"
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"process exited with {proc.returncode} while waiting for {url}")
        try:
            code, body = http_get(url, timeout=2.0, headers=headers)
            if code == status:
                return body
            last = f"HTTP {code}: {body[:200]}"
        except OSError as err:
            last = repr(err)
        time.sleep(0.25)
    raise AssertionError(f"{url} did not answer {status} within {timeout}s (last: {last})")


@dataclass
class RunningProcess:
    proc: subprocess.Popen[bytes]
    log_path: Path

    def log_tail(self, chars: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return "<no log>"


@contextlib.contextmanager
def run_process(
    args: Sequence[str | os.PathLike[str]],
    log_path: Path,
    env: Mapping[str, str | None] | None = None,
    cwd: Path = REPO_ROOT,
) -> Iterator[RunningProcess]:
    """Run a server process for the duration of the block; always stops it (TERM, then KILL).

    An env value of None removes the variable, so a test sees defaults whatever the caller's
    environment holds."""
    full_env = {k: v for k, v in {**os.environ, **(env or {})}.items() if v is not None}
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [str(a) for a in args],
            cwd=cwd,
            env=full_env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    running = RunningProcess(proc, log_path)
    try:
        yield running
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)


@pytest.fixture(scope="session")
def pipeline_bin() -> Path:
    """Directory holding the built `otelcol-ernie` and `jaeger` binaries."""
    try:
        result = subprocess.run(
            ["bash", str(BUILD_SCRIPT)],
            cwd=REPO_ROOT,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=BUILD_TIMEOUT_S,
            check=False,
        )
    except subprocess.TimeoutExpired as err:
        pytest.fail(f"collector/build.sh did not finish within {BUILD_TIMEOUT_S}s: {err}")
    if result.returncode != 0:
        pytest.fail(f"collector/build.sh failed with exit code {result.returncode}:\n{result.stderr[-6000:]}")
    lines = result.stdout.strip().splitlines()
    if not lines:
        pytest.fail(f"collector/build.sh printed no directory:\n{result.stderr[-3000:]}")
    bin_dir = Path(lines[-1])
    for name in ("otelcol-ernie", "jaeger"):
        if not os.access(bin_dir / name, os.X_OK):
            pytest.fail(f"collector/build.sh reported {bin_dir}, but {name} is not there")
    return bin_dir


_exit_status: list[int] = []


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    _exit_status.append(int(exitstatus))


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config: pytest.Config) -> None:
    """End the process right after pytest's own clean-up.

    torch imports triton, whose nanobind bindings print a "leaked instances" report during
    interpreter shutdown; it would land after pytest's summary line, which CI reads as the
    closing line. Everything of pytest's has run by now (this hook is last), so skipping the
    interpreter's finalisation loses nothing but that report.
    """
    if _exit_status:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(_exit_status[0])
