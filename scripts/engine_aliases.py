"""Write ``alerts/ernie-engines.yml`` from the versioned alias table (``ernie_otel/engines.py``):
recording rules that publish one engine-neutral set (``engine:*``) from whichever spelling each
engine release exposes, and the engine alerts that read only that set.

    python scripts/engine_aliases.py           # rewrite the file
    python scripts/engine_aliases.py --check   # exit 1 if the file is not what the table gives

``tests/test_engine_aliases.py`` fails when the file and the table drift apart, and serves a
recorded exposition of every engine version in the table through the real Collector and
Prometheus with these rules loaded.

Why recording rules and not Collector transform statements: the figures need arithmetic across
series (hits / queries), a choice between spellings only when the preferred one is absent (PromQL
``unless on (...)``), and must work whether Prometheus scrapes the engine through the Collector or
directly; the Collector stays a pass-through for the engine families.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
RULES_PATH = REPO_ROOT / "alerts" / "ernie-engines.yml"

if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from ernie_otel import engines as e  # noqa: E402

RUNBOOK_URL_PREFIX = "https://github.com/ernie-otel/ernie-otel/blob/main/docs/runbooks.md#"
# The routing levels of alerts/alertmanager.yml (as alerts/ernie-alerts.yml labels them).
PRIORITY_OF_SEVERITY = {"critical": "P1", "warning": "P2", "info": "P3"}
_BY = "job, instance, " + e.MODEL_LABEL
_ON = f"on ({_BY})"


def _with_model(inner: str, version: e.EngineVersion) -> str:
    """The engine's model label renamed to ours (a label the engine lacks stays absent)."""
    if version.model_label is None:
        return inner
    return f'label_replace({inner}, "{e.MODEL_LABEL}", "$1", "{version.model_label}", "(.+)")'


def source_expr(src: e.Source, version: e.EngineVersion, aggregation: str) -> str:
    """One spelling of one figure, normalised: per (job, instance, model[, le])."""
    w = e.RATE_WINDOW
    if src.shape is e.Shape.GAUGE:
        return f"{aggregation} by ({_BY}) ({_with_model(src.names[0], version)})"
    if src.shape is e.Shape.COUNTER:
        return f"sum by ({_BY}) ({_with_model(f'rate({src.names[0]}[{w}])', version)})"
    if src.shape is e.Shape.HISTOGRAM:
        return f"sum by ({_BY}, le) ({_with_model(f'rate({src.series[0]}[{w}])', version)})"
    hits, queries = src.names
    return (f"sum by ({_BY}) ({_with_model(f'rate({hits}[{w}])', version)})"
            f" / (sum by ({_BY}) ({_with_model(f'rate({queries}[{w}])', version)}) > 0)")


def family_expr(family: str, figure: e.Figure) -> str | None:
    """Every spelling one engine family has used for a figure, newest release first, each taken
    only where no earlier (preferred) spelling has a series for the same job/instance/model. A
    histogram's alternatives are never mixed bucket by bucket."""
    nt = e.NEUTRAL[figure]
    alternatives: list[str] = []
    for version in reversed([v for v in e.ALIAS_TABLE if v.engine == family]):
        for src in version.figures.get(figure, ()):
            expr = source_expr(src, version, nt.aggregation)
            if expr not in alternatives:
                alternatives.append(expr)
    if not alternatives:
        return None
    parts = [alternatives[0]]
    for i, alt in enumerate(alternatives[1:], start=1):
        preferred = " or ".join(alternatives[:i])
        parts.append(f"({alt} unless {_ON} ({preferred}))")
    return parts[0] if len(parts) == 1 else "(" + parts[0] + ")\nor " + "\nor ".join(parts[1:])


def recording_rules() -> list[dict[str, str]]:
    """One rule per (figure, family): the family goes in as the rule's static `engine` label, so
    the rules of one record name never produce the same series (promtool's duplicate-rule lint)."""
    rules: list[dict[str, str]] = []
    for figure, nt in e.NEUTRAL.items():
        for family in e.families():
            expr = family_expr(family, figure)
            if expr is not None:
                rules.append({"record": nt.record, "expr": expr, e.ENGINE_LABEL: family})
    for figure, record in e.QUANTILES.items():
        rules.append({"record": record,
                      "expr": f"histogram_quantile(0.95, {e.NEUTRAL[figure].record})"})
    return rules


def alert_rules() -> list[dict[str, object]]:
    return [{
        "alert": a.name,
        "expr": a.expr,
        "for": a.duration,
        "labels": {"severity": a.severity, "priority": PRIORITY_OF_SEVERITY[a.severity]},
        "annotations": {"summary": a.summary, "description": a.description,
                        "runbook_url": RUNBOOK_URL_PREFIX + a.name.lower()},
    } for a in e.ENGINE_ALERTS]


def _quote(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def render() -> str:
    """The file's exact text (hand-rolled YAML: block scalars keep the PromQL readable)."""
    out = [
        "# Generated by scripts/engine_aliases.py from the alias table in ernie_otel/engines.py: do not",
        "# edit. One engine-neutral set (engine:*) from every engine spelling the table lists, and the",
        "# engine alerts on that set. Labels: job, instance, model, engine (the family).",
        "groups:",
        f"  - name: {e.RULE_GROUP}",
        "    rules:",
    ]
    for rule in recording_rules():
        out.append(f"      - record: {rule['record']}")
        out.append("        expr: |-")
        out += ["          " + line for line in rule["expr"].splitlines()]
        if e.ENGINE_LABEL in rule:
            out += ["        labels:", f"          {e.ENGINE_LABEL}: {rule[e.ENGINE_LABEL]}"]
    out += [f"  - name: {e.ALERT_GROUP}", "    rules:"]
    for alert in alert_rules():
        out.append(f"      - alert: {alert['alert']}")
        out.append(f"        expr: {alert['expr']}")
        out.append(f"        for: {alert['for']}")
        out.append("        labels:")
        for k, v in alert["labels"].items():  # type: ignore[attr-defined]
            out.append(f"          {k}: {v}")
        out.append("        annotations:")
        for k, v in alert["annotations"].items():  # type: ignore[attr-defined]
            out.append(f"          {k}: {_quote(v)}")
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--check", action="store_true", help="write nothing; exit 1 if the file is stale")
    parser.add_argument("--output", type=Path, default=RULES_PATH)
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        if not args.output.exists() or args.output.read_text(encoding="utf-8") != text:
            print(f"{args.output} is out of date: run python scripts/engine_aliases.py", file=sys.stderr)
            return 1
        return 0
    args.output.write_text(text, encoding="utf-8", newline="\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
