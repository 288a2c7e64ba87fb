"""Copy the repository's sources of truth into the Helm chart, which cannot read outside itself.

Helm's `.Files` only sees files inside the chart directory, so the alert/recording rules, the
Grafana dashboard and the Collector/Jaeger configs the chart deploys are copied here, byte for
byte, and the templates wrap them (PrometheusRule objects, the dashboard ConfigMap, the Collector
ConfigMaps). Nothing under `files/` is edited by hand: edit the source and run

    python deploy/helm/generate.py          # rewrite the copies
    python deploy/helm/generate.py --check  # exit 1 and name the stale copies (tests/test_k8s.py)

CHART_COPIES is the one table of what the chart carries; pointing the chart at another Collector
config is a change to that table and nothing else.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "deploy" / "helm" / "ernie-otel"

# chart-relative destination -> repository-relative source. The templates read the destinations;
# the rule files are also globbed by templates/prometheusrule.yaml, one PrometheusRule each.
CHART_COPIES: dict[str, str] = {
    "files/alerts/ernie-recording.yml": "alerts/ernie-recording.yml",
    "files/alerts/ernie-alerts.yml": "alerts/ernie-alerts.yml",
    "files/alerts/ernie-engines.yml": "alerts/ernie-engines.yml",
    "files/dashboards/ernie-inference.json": "dashboards/ernie-inference.json",
    # Collector tiers. The agent runs the single-server config plus the chart's Kubernetes
    # overlay (templates/collector-configmaps.yaml: k8s_attributes, 0.0.0.0 listeners, and the
    # hop to the load-balancing tier when enabled).
    "files/collector/agent.yaml": "collector/otelcol.yaml",
    # The fleet tiers the local stack runs, as they are: the lb tier gets an overlay that swaps its
    # static resolver for the samplers' headless Service; the sampler's policies read their
    # thresholds from env variables, which the chart sets from collector.sampling.
    "files/collector/lb.yaml": "collector/fleet/lb.yaml",
    "files/collector/sampler.yaml": "collector/fleet/sampler.yaml",
    "files/jaeger/jaeger.yaml": "collector/jaeger.yaml",
    # The Jaeger UI's trace -> logs links; templates/jaeger.yaml points them at logStore.uiUrl.
    "files/jaeger/jaeger-ui.json": "collector/jaeger-ui.json",
}


def stale_copies(chart: Path = CHART, repo: Path = REPO) -> list[str]:
    """Destinations (chart-relative) that are missing or differ from their source."""
    stale = []
    for dest, src in CHART_COPIES.items():
        target = chart / dest
        if not target.is_file() or target.read_bytes() != (repo / src).read_bytes():
            stale.append(dest)
    return stale


def orphans(chart: Path = CHART) -> list[str]:
    """Files under the generated directories that no longer have a source (a renamed rule file)."""
    generated_dirs = {Path(dest).parent for dest in CHART_COPIES}
    found = {str(p.relative_to(chart)) for d in generated_dirs for p in (chart / d).glob("*") if p.is_file()}
    return sorted(found - set(CHART_COPIES))


def write(chart: Path = CHART, repo: Path = REPO) -> list[str]:
    """Rewrite every stale copy and delete orphans; returns what changed."""
    changed = stale_copies(chart, repo)
    for dest in changed:
        target = chart / dest
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes((repo / CHART_COPIES[dest]).read_bytes())
    for extra in orphans(chart):
        (chart / extra).unlink()
        changed.append(extra)
    return changed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only report stale copies (exit 1 if any)")
    args = parser.parse_args(argv)
    if args.check:
        bad = stale_copies() + orphans()
        for dest in bad:
            print(f"stale: deploy/helm/ernie-otel/{dest} (run python deploy/helm/generate.py)", file=sys.stderr)
        return 1 if bad else 0
    for dest in write():
        print(f"wrote deploy/helm/ernie-otel/{dest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
