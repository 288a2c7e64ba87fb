"""Read the Grafana dashboards as data: their panels, their PromQL, and the PromQL with the
dashboard variables substituted the way Grafana would, so that a test can send every query to a
real Prometheus (or to promtool) without Grafana.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

DASHBOARDS_DIR = Path(__file__).resolve().parent.parent / "dashboards"
DASHBOARD_PATH = DASHBOARDS_DIR / "ernie-inference.json"

# Panels fed only by NVML gauges: on a machine without an NVIDIA GPU their queries must return
# no series (the gauges are absent, not zero) -- and never an error.
GPU_PANELS: tuple[str, ...] = ("GPU memory used", "GPU utilization", "GPU temperature", "GPU power")

# Panels fed only by the Collector (spanmetrics connector): empty when Prometheus scrapes
# ernie-serve directly.
COLLECTOR_ONLY_PANELS: tuple[str, ...] = ("Span rate", "Span errors", "Span duration p95")

# What Grafana would put in for its built-in variables and for "All" of the dashboard variables
# (allValue ".*"); callers override any of them.
DEFAULT_VARIABLES: dict[str, str] = {
    "datasource": "prometheus",
    "job": ".*",
    "instance": ".*",
    "model": ".*",
    "__rate_interval": "1m",
    "__interval": "15s",
    "__range": "6h",
}

# $name, ${name}, ${name:format} and the deprecated [[name]].
_VAR_RE = re.compile(r"\$\{(\w+)(?::[^}]*)?\}|\$(\w+)|\[\[(\w+)\]\]")


def load_dashboard(path: Path = DASHBOARD_PATH) -> dict:
    with path.open(encoding="utf-8") as f:
        return json.load(f)


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
    ``$model``, ``${datasource}``, ``$__rate_interval``, ``$__range`` and ``$__interval``
    replaced by ``variables`` (over :data:`DEFAULT_VARIABLES`).

    Values are put in verbatim: ``job``/``instance``/``model`` stand in ``=~`` matchers, so they
    are regular expressions (``.*`` is Grafana's "All").
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
