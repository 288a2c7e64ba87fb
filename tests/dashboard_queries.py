"""Read the Grafana dashboards as data: their panels, their PromQL, and the PromQL with the
dashboard variables substituted the way Grafana would, so that a test can send every query to a
real Prometheus (or to promtool) without Grafana.
"""

from __future__ import annotations

import importlib.util
import json
import re
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

DASHBOARDS_DIR = Path(__file__).resolve().parent.parent / "dashboards"
DASHBOARD_PATH = DASHBOARDS_DIR / "ernie-inference.json"
# The generator the JSON is written by (`python dashboards/generate.py`).
GENERATOR_PATH = DASHBOARDS_DIR / "generate.py"

# Panels fed only by NVML gauges: on a machine without an NVIDIA GPU their queries must return
# no series (the gauges are absent, not zero) -- and never an error.
GPU_PANELS: tuple[str, ...] = ("GPU memory used", "GPU utilization", "GPU temperature", "GPU power")

# Panels fed only by the Collector (spanmetrics connector): empty when Prometheus scrapes
# ernie-serve directly.
COLLECTOR_ONLY_PANELS: tuple[str, ...] = ("Span rate", "Span errors", "Span duration p95")

# Panels fed only by the inference engine's own figures (the engine-neutral set engine:*, recorded by
# alerts/ernie-engines.yml from the engine families of ernie_otel/engines.py), which exist only in
# gateway mode with the Collector's collector/engine-metrics.yaml add-on: without it (local mode,
# direct scrape, plain Collector) their queries must return no series -- and never an error.
# They are filtered by $engine_job/$engine_instance, not by $job/$instance/$model.
ENGINE_PANELS: tuple[str, ...] = ("Engine running vs waiting", "Engine KV-cache usage", "Engine time to first token",
                                  "Engine inter-token latency", "Engine prefix-cache hit ratio", "Engine preemptions")

# What Grafana would put in for its built-in variables and for "All" of the dashboard variables
# (allValue ".*"); callers override any of them. `job` is single-value without "All" (one process
# is two jobs when Prometheus scrapes both paths): its ".*" only keeps a query parseable; a live
# check passes the concrete job it means.
DEFAULT_VARIABLES: dict[str, str] = {
    "datasource": "prometheus",
    "job": ".*",
    "instance": ".*",
    "model": ".*",
    "engine_job": ".*",
    "engine_instance": ".*",
    "__rate_interval": "1m",
    "__interval": "15s",
    "__range": "6h",
}

# $name, ${name}, ${name:format} and the deprecated [[name]].
_VAR_RE = re.compile(r"\$\{(\w+)(?::[^}]*)?\}|\$(\w+)|\[\[(\w+)\]\]")


def load_dashboard(path: Path = DASHBOARD_PATH) -> dict:
    with path.open(encoding="utf-8") as f:
        return json.load(f)


def load_generator() -> ModuleType:
    """``dashboards/generate.py`` as a module (``dashboards`` is not a package): its
    ``build_dashboard()`` is what the JSON must be, ``render()`` the file's exact text."""
    spec = importlib.util.spec_from_file_location("ernie_dashboard_generate", GENERATOR_PATH)
    assert spec and spec.loader, GENERATOR_PATH
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def iter_panels(dashboard: dict) -> Iterator[dict]:
    """Every panel, rows included, and the panels nested in collapsed rows."""
    for panel in dashboard.get("panels", []):
        yield panel
        yield from panel.get("panels", [])


def substitute(text: str, variables: dict[str, str]) -> str:
    """Replace every dashboard variable in ``text``; an unknown one is an error, so nothing
    Grafana would have expanded can reach Prometheus as a literal ``$``."""

    def repl(match: re.Match[str]) -> str:
        name = next(g for g in match.groups() if g is not None)
        if name not in variables:
            raise KeyError(f"no value for dashboard variable ${name} in {text!r}")
        return variables[name]

    return _VAR_RE.sub(repl, text)


def iter_queries(dashboard: dict, variables: dict[str, str] | None = None) -> list[tuple[str, str, str]]:
    """``(panel title, refId, expr)`` for every target of every panel, with ``$job``, ``$instance``,
    ``$model``, ``$engine_job``, ``$engine_instance``, ``${datasource}``, ``$__rate_interval``,
    ``$__range`` and ``$__interval`` replaced by ``variables`` (over :data:`DEFAULT_VARIABLES`).

    Values are put in verbatim: ``job``/``instance``/``model`` and ``engine_job``/``engine_instance``
    stand in ``=~`` matchers, so they are regular expressions (``.*`` is Grafana's "All").
    The :data:`ENGINE_PANELS` read only the ``engine_*`` pair.
    """
    values = {**DEFAULT_VARIABLES, **(variables or {})}
    queries = []
    for panel in iter_panels(dashboard):
        for target in panel.get("targets", []):
            expr = target.get("expr")
            if expr is None:
                continue
            queries.append((panel.get("title", ""), target.get("refId", ""), substitute(expr, values)))
    return queries


def is_instant(dashboard: dict, title: str, ref_id: str) -> bool:
    """Whether the target is an instant query (stat totals, pie chart) rather than a range query."""
    for panel in iter_panels(dashboard):
        if panel.get("title") == title:
            for target in panel.get("targets", []):
                if target.get("refId") == ref_id:
                    return bool(target.get("instant")) and not target.get("range", False)
    raise KeyError((title, ref_id))
