"""Import rules between the package's layers, checked in a fresh interpreter each.

The engine and the OpenAI protocol layer share their vocabularies (``ernie_otel.kinds``) with
telemetry but must not pull OpenTelemetry in; gateway mode must not pull torch or transformers in
(seconds of start-up and hundreds of MB for a process that only forwards HTTP).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from helpers import free_port
from serve_helpers import run_server

ROOT = Path(__file__).resolve().parent.parent


def _modules_after(code: str) -> set[str]:
    """Top-level package names in ``sys.modules`` after running ``code`` in a new interpreter."""
    script = code + "\nimport json, sys\nprint(json.dumps(sorted({m.split('.')[0] for m in sys.modules})))\n"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120,
                         check=False)
    assert out.returncode == 0, out.stderr
    return set(json.loads(out.stdout.strip().splitlines()[-1]))


def test_engine_and_protocol_load_no_opentelemetry() -> None:
    loaded = _modules_after("import ernie_otel.engine\nimport ernie_otel.protocol\nimport ernie_otel.kinds")
    assert "ernie_otel" in loaded and "torch" in loaded  # the imports did run
    assert "opentelemetry" not in loaded


def test_gateway_mode_loads_no_torch() -> None:
    """The server module and the upstream backend, built into an app the way ``ernie-serve
    --upstream`` builds it, import neither torch nor transformers."""
    loaded = _modules_after(
        "from opentelemetry.sdk.metrics import MeterProvider\n"
        "from opentelemetry.sdk.trace import TracerProvider\n"
        "from ernie_otel.serve import ServeConfig\n"
        "from ernie_otel.server import ErnieServer\n"
        "from ernie_otel.backends.upstream import UpstreamBackend\n"
        "from ernie_otel.telemetry.recorder import Recorder\n"
        "mp, tp = MeterProvider(), TracerProvider()\n"
        "config = ServeConfig(upstream='http://127.0.0.1:9/v1', served_model_name='m')\n"
        "server = ErnieServer(config, lambda model, stats: Recorder(mp, tp, model, stats))\n"
        "assert isinstance(server.backend, UpstreamBackend)\n"
        "server.create_app()\n")
    assert "ernie_otel" in loaded and "fastapi" in loaded  # the imports did run
    assert "torch" not in loaded
    assert "transformers" not in loaded


def test_ernie_serve_upstream_runs_without_torch(tmp_path: Path) -> None:
    """The real ``ernie-serve --upstream ...`` process, serving: no torch library is mapped into it."""
    upstream = f"http://127.0.0.1:{free_port()}/v1"  # nothing listens: a gateway starts all the same
    with run_server(tmp_path, "--upstream", upstream, "--served-model-name", "ernie-upstream") as served:
        maps = Path(f"/proc/{served.proc.pid}/maps").read_text()
        assert "libpython" in maps or "python" in maps  # the right process
        assert "libtorch" not in maps, "gateway mode loaded torch"
