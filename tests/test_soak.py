"""A bounded soak through the full stack: benchmarks/soak.py, 2,000 streamed requests at
concurrency 32 (tiny model, 4 tokens each) against a stack on free ports.

Zero failed requests, Prometheus (through the Collector) counts exactly what the client sent, and
ernie-serve's RSS grows by less than 10% between the first and the last quarter of the run. The
long version (30 minutes) is the same script; docs/benchmarks.md has its command and last result.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from e2e_client import E2EStack
from helpers import REPO_ROOT

pytestmark = pytest.mark.integration

REQUESTS = 2000
CONCURRENCY = 32


def test_soak_no_failures_exact_counts_flat_memory(e2e_stack: E2EStack) -> None:
    stack = e2e_stack.stack
    pid = stack.read_records()["ernie_serve"].pid
    done = subprocess.run(
        [sys.executable, str(REPO_ROOT / "benchmarks" / "soak.py"), "--requests", str(REQUESTS), "--concurrency",
         str(CONCURRENCY), "--max-tokens", "4", "--segments", "8", "--url", stack.url("serve"),
         "--prometheus", stack.url("prometheus"), "--pid", str(pid)],
        capture_output=True, text=True, timeout=900, cwd=REPO_ROOT)
    assert done.stdout.strip(), done.stderr[-3000:]
    result = json.loads(done.stdout)
    print(json.dumps(result), file=sys.stderr)
    assert result["requests_sent"] == REQUESTS and result["requests_failed"] == 0, result
    assert result["prometheus_counted"] == REQUESTS, result
    assert result["rss_growth_pct"] < 10, result
    assert done.returncode == 0, done.stderr[-3000:]
