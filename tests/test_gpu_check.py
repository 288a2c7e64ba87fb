"""``benchmarks/gpu_check.py``, the NVML-vs-nvidia-smi check for GPU machines, on this one.

CI has no GPU: the script must say so and stop (exit 2) when asked for CUDA, and its scraping and
parsing must work against a real CPU ernie-serve, where every GPU family has to be absent.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "benchmarks" / "gpu_check.py"


def _run(*args: str, timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(SCRIPT), *args], cwd=REPO, capture_output=True, text=True,
                          timeout=timeout)


def test_cuda_mode_stops_at_once_without_a_gpu_and_checks_one_where_there_is(tmp_path: Path) -> None:
    if shutil.which("nvidia-smi") is None:  # CI and the development machine
        r = _run("--device", "cuda", "--model", "tiny", timeout=60)
        assert r.returncode == 2, r.stderr
        assert "no NVIDIA GPU" in r.stderr and "Traceback" not in r.stderr
        return
    out = tmp_path / "gpu_check.json"  # a GPU machine: the real check, small
    r = _run("--device", "cuda", "--model", "tiny", "--requests", "16", "--max-tokens", "64", "--json", str(out),
             timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    assert json.loads(out.read_text())["mode"] == "gpu"


@pytest.mark.integration
def test_cpu_mode_scrapes_a_real_server(tmp_path: Path) -> None:
    out = tmp_path / "gpu_check.json"
    r = _run("--device", "cpu", "--model", "tiny", "--requests", "8", "--concurrency", "4", "--max-tokens", "8",
             "--interval", "0.2", "--json", str(out), "--markdown", str(tmp_path / "gpu_check.md"), timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    report = json.loads(out.read_text())
    assert report["mode"] == "cpu" and report["verdict"].startswith("CPU-ONLY"), report["verdict"]
    checks = {c["name"]: c for c in report["checks"]}
    assert checks["requests counter = load"]["ok"] is True, checks
    assert checks["GPU series absent (no GPU here)"]["ok"] is True, checks
    assert len(report["samples"]) >= 2
    assert "CPU-ONLY" in (tmp_path / "gpu_check.md").read_text()
