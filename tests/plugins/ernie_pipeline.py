"""The pytest plugin of ernie-otel's tests (registered by tests/conftest.py): the fixtures that
run the real pipeline binaries, and the session hooks.

`pipeline_bin` builds (or reuses from the cache outside the repo) otelcol-ernie and jaeger via
collector/build.sh. A build failure fails the tests that need it; it never skips them, because
"the Collector does not build" is exactly the regression these tests exist to catch.

`e2e_stack` is the whole local pipeline (ernie_otel.stack.Stack) on free ports, one per module.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from e2e_client import E2EStack, warm_up

from ernie_otel.stack import Stack, StackError, free_ports, process_matches
from ernie_otel.stack.components import build_binaries

# A cold build compiles the Collector and Jaeger from source: tens of minutes on a 2-core runner.
BUILD_TIMEOUT_S = 3600


@pytest.fixture(scope="session")
def pipeline_bin() -> Path:
    """Directory holding the built `otelcol-ernie` and `jaeger` binaries."""
    try:
        return build_binaries(lambda _: None, capture=True, timeout=BUILD_TIMEOUT_S)
    except StackError as exc:
        pytest.fail(str(exc))


@pytest.fixture(scope="module")
def e2e_stack(pipeline_bin: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[E2EStack]:
    """The stack (no --load) on free ports in a temporary state dir; torn down after the module."""
    state = tmp_path_factory.mktemp("stack")
    stack = Stack(state, ports=free_ports(), bin_dir=pipeline_bin, say=lambda line: print(f"[stack] {line}"))
    try:
        stack.up()
    except StackError as exc:
        stack.down()
        pytest.fail(f"stack did not come up: {exc}")
    try:
        e2e = E2EStack(stack)
        warm_up(e2e)
        yield e2e
    finally:
        records = stack.read_records()
        stack.down()
    leftovers = {name: rec.pid for name, rec in records.items() if process_matches(rec)}
    assert not leftovers, f"stack down left processes running: {leftovers}"


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
