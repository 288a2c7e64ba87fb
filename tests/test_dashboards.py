"""Static checks of the Grafana dashboard and its provisioning files.

The Grafana dashboard linter (a Go module) is not available here, so its rules, and ours, are
checked in Python: layout, data source, variables, units and descriptions, every PromQL selector's
matchers and rate windows, every metric name against ``ernie_otel.names`` (the engine row's
selectors against the engine-neutral set of ``ernie_otel.engines``), the PromQL syntax itself through
``promtool check rules``, and that the JSON is exactly what ``dashboards/generate.py`` builds.
"""

from __future__ import annotations

import difflib
import itertools
import json
import re
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from dashboard_queries import (
    COLLECTOR_ONLY_PANELS,
    DASHBOARD_PATH,
    DASHBOARDS_DIR,
    DEFAULT_VARIABLES,
    ENGINE_PANELS,
    GPU_PANELS,
    is_instant,
    iter_panels,
    iter_queries,
    load_dashboard,
    load_generator,
    substitute,
)

from ernie_otel import engines, names
from ernie_otel.ports import DEFAULT_PORTS

DS = {"type": "prometheus", "uid": "${datasource}"}
DATASOURCES_YML = DASHBOARDS_DIR / "provisioning" / "datasources" / "ernie.yml"
PROVIDERS_YML = DASHBOARDS_DIR / "provisioning" / "dashboards" / "ernie.yml"

# Current panel types only; `graph`, `singlestat`, `table-old` & co. are the legacy ones.
ALLOWED_PANEL_TYPES = {"row", "timeseries", "stat", "gauge", "bargauge", "heatmap", "barchart", "piechart", "table"}

# Panels whose windows are deliberately fixed (or the whole time range) rather than
# $__rate_interval, with the only windows each may use.
WINDOW_ALLOWLIST: dict[str, set[str]] = {
    "Requests (last 24h)": {"24h"},
    "Average latency (5m)": {"5m"},
    "Errors by type": {"$__range"},
    "Error budget left (30d)": {"30d"},
    "SLO burn rate": {"1h", "5m"},
}

# Metric families without a model label: filtered by job/instance only (GPU gauges from NVML,
# process metrics, and the Collector's spanmetrics, which carry service_name/span_name instead).
NO_MODEL_LABEL_PREFIXES = ("gpu_", "process_", "traces_span_metrics_")

# Labels of the spanmetrics connector's series in Prometheus (plus job/instance from the resource).
SPANMETRICS_LABELS = {"service_name", "span_name", "span_kind", "status_code"}
SPAN_STATUS_CODES = {"STATUS_CODE_UNSET", "STATUS_CODE_OK", "STATUS_CODE_ERROR"}

# The inference engine's figures (gateway mode, collector/engine-metrics.yaml): every engine
# spells them differently, release by release (ernie_otel/engines.py's alias table); the engine
# row reads only the engine-neutral set the rules of alerts/ernie-engines.yml record from it.
ENGINE_ROW = "Engine (native metrics)"
ENGINE_RECORDS = {nt.record for nt in engines.NEUTRAL.values()}
# The only matchers an engine selector may have: their job/instance are the engine's, never
# ernie-serve's (the model label, where the engine has one, is the engine's served name).
ENGINE_MATCHERS = {("job", "=~", "$engine_job"), ("instance", "=~", "$engine_instance")}
ENGINE_VARIABLES = ("engine_job", "engine_instance")

# Sections of the dashboard and, per panel, the metric families it must show.
INTERNALS_ROW = "Engine internals (ernie-serve)"
REQUIRED_ROWS = ["Service overview", "Performance", "Capacity", "Resources", "Traces (spanmetrics)", "SLO",
                 INTERNALS_ROW, ENGINE_ROW]
_SM_CALLS, _SM_DUR = names.SPANMETRICS_CALLS_PROM, names.SPANMETRICS_DURATION_PROM
REQUIRED_PANELS: dict[str, set[str]] = {
    "Request rate": {names.REQUESTS.prom_name},
    "Requests (last 24h)": {names.REQUESTS.prom_name},
    "Average latency (5m)": {names.LATENCY.prom_name + "_sum", names.LATENCY.prom_name + "_count"},
    "Error rate": {names.ERRORS.prom_name, names.REQUESTS.prom_name},
    "Errors by type": {names.ERRORS.prom_name},
    "End-to-end latency": {names.LATENCY.prom_name + "_bucket"},
    "Time to first token": {names.GENAI_TTFT.prom_name + "_bucket"},
    "Time per output token": {names.GENAI_TPOT.prom_name + "_bucket"},
    "Queue time": {names.QUEUE_TIME.prom_name + "_bucket"},
    "Latency distribution": {names.LATENCY.prom_name + "_bucket"},
    "Token throughput": {names.GENERATION_TOKENS.prom_name, names.TOKEN_THROUGHPUT.prom_name},
    "Tokens per request": {names.GENAI_TOKEN_USAGE.prom_name + "_sum", names.GENAI_TOKEN_USAGE.prom_name + "_count"},
    "Running requests": {names.RUNNING.prom_name, names.RUNNING_CAPACITY.prom_name},
    "Waiting queue": {names.QUEUE_LENGTH.prom_name, names.QUEUE_CAPACITY.prom_name},
    "Rejected requests": {names.REQUESTS.prom_name},
    "GPU memory used": {names.GPU_MEMORY_USAGE.prom_name},
    "GPU utilization": {names.GPU_UTILIZATION.prom_name},
    "GPU temperature": {names.GPU_TEMPERATURE.prom_name},
    "GPU power": {names.GPU_POWER.prom_name},
    "Process CPU": {names.PROCESS_CPU.prom_name},
    "Process memory": {names.PROCESS_MEMORY.prom_name},
    "Span rate": {_SM_CALLS},
    "Span errors": {_SM_CALLS},
    "Span duration p95": {_SM_DUR + "_bucket"},
    "Engine running vs waiting": {names.ENGINE_RUNNING, names.ENGINE_WAITING},
    "Engine KV-cache usage": {names.ENGINE_KV_CACHE_USAGE},
    "Engine time to first token": {names.ENGINE_TTFT_BUCKET_RATE},
    "Engine inter-token latency": {names.ENGINE_ITL_BUCKET_RATE},
    "Engine prefix-cache hit ratio": {names.ENGINE_PREFIX_CACHE_HIT},
    "Engine preemptions": {names.ENGINE_PREEMPTIONS_RATE},
    # ernie-serve's own engine (EngineStats)
    "KV cache used vs budget": {names.KV_CACHE_USED.prom_name, names.KV_CACHE_BUDGET.prom_name},
    "KV cache usage and padding": {names.KV_CACHE_USAGE.prom_name, names.KV_CACHE_PADDING.prom_name},
    "Batch size per iteration": {names.BATCH_SIZE.prom_name + "_bucket"},
    "Tokens per iteration": {names.ITERATION_TOKENS.prom_name + "_bucket"},
    "Prefill and decode time": {names.PREFILL_TIME.prom_name + "_bucket", names.DECODE_TIME.prom_name + "_bucket"},
    "Inter-token latency": {names.INTER_TOKEN_LATENCY.prom_name + "_bucket", names.GENAI_TPOT.prom_name + "_bucket"},
    "Admissions and evictions per step": {names.ENGINE_ADMISSIONS.prom_name, names.ENGINE_EVICTIONS.prom_name,
                                          names.ENGINE_STEPS.prom_name},
    "Model load time": {names.MODEL_LOAD_TIME.prom_name},
}
EXEMPLAR_PANELS = {"End-to-end latency", "Time to first token"}
QUANTILE_PANELS = {"End-to-end latency", "Time to first token", "Time per output token", "Queue time"}


# ----------------------------------------------------------------------- a small PromQL reader
@dataclass
class Selector:
    """``metric{...}``, or ``{__name__=~"a|b", ...}`` (metric ``""``, the names in ``alternatives``)."""

    metric: str
    matchers: list[tuple[str, str, str]] = field(default_factory=list)  # (label, op, value)
    alternatives: tuple[str, ...] = ()

    def get(self, label: str) -> list[tuple[str, str]]:
        return [(op, value) for name, op, value in self.matchers if name == label]

    @property
    def names(self) -> tuple[str, ...]:
        """Every metric name the selector can match."""
        return (self.metric,) if self.metric else self.alternatives

    @property
    def label_matchers(self) -> set[tuple[str, str, str]]:
        return {m for m in self.matchers if m[0] != "__name__"}


_TOKEN_RE = re.compile(
    r"""
    (?P<ws>\s+)
  | (?P<string>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*')
  | (?P<range>\[[^\]]*\])
  | (?P<number>(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)
  | (?P<ident>[A-Za-z_:][A-Za-z0-9_:]*)
  | (?P<op>=~|!~|!=|==|>=|<=|[-+*/%^=<>{}(),])
    """,
    re.VERBOSE,
)
_LABEL_LIST_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right"}
_OPERATOR_KEYWORDS = {"and", "or", "unless", "bool", "offset", "atan2"}
# Aggregations may be followed by `by (...)` rather than `(`: `sum by (le) (...)`.
_AGGREGATIONS = {
    "sum",
    "avg",
    "min",
    "max",
    "count",
    "group",
    "stddev",
    "stdvar",
    "topk",
    "bottomk",
    "quantile",
    "count_values",
    "limitk",
    "limit_ratio",
}


def tokenize(expr: str) -> list[tuple[str, str]]:
    tokens, pos = [], 0
    while pos < len(expr):
        m = _TOKEN_RE.match(expr, pos)
        assert m, f"cannot tokenize {expr[pos:]!r} in {expr!r}"
        pos = m.end()
        if m.lastgroup != "ws":
            tokens.append((m.lastgroup, m.group()))
    return tokens


def _unquote(s: str) -> str:
    return re.sub(r"\\(.)", r"\1", s[1:-1])


_PLAIN_METRIC_NAME_RE = re.compile(r"[A-Za-z_:][A-Za-z0-9_:]*")


def _parse_matchers(tokens: list[tuple[str, str]], i: int, expr: str) -> tuple[list[tuple[str, str, str]], int]:
    """The matchers of the ``{...}`` that starts at ``tokens[i]``, and the index after its ``}``."""
    matchers = []
    i += 1
    while tokens[i][1] != "}":
        if tokens[i][1] == ",":
            i += 1
            continue
        (lk, label), (ok, op), (sk, value) = tokens[i : i + 3]
        assert lk == "ident" and ok == "op" and sk == "string", f"bad matcher in {expr!r}"
        matchers.append((label, op, _unquote(value)))
        i += 3
    return matchers, i + 1


def _name_alternatives(matchers: list[tuple[str, str, str]], expr: str) -> tuple[str, ...]:
    """The metric names of a ``{__name__=~"a|b", ...}`` selector: only a plain alternation of
    literal names is accepted, so that every name it can match is known here."""
    name_matchers = [(op, value) for label, op, value in matchers if label == "__name__"]
    assert len(name_matchers) == 1, f"selector without a metric name in {expr!r}"
    op, value = name_matchers[0]
    assert op in ("=", "=~"), f"__name__{op} could match any family in {expr!r}"
    alternatives = tuple(value.split("|")) if op == "=~" else (value,)
    for name in alternatives:
        assert _PLAIN_METRIC_NAME_RE.fullmatch(name), (
            f"__name__ must be a|b|... of literal metric names, not {name!r}, in {expr!r}"
        )
    assert len(set(alternatives)) == len(alternatives), f"a name repeated in {value!r}"
    return alternatives


def parse(expr: str) -> tuple[list[Selector], list[str]]:
    """The metric selectors of ``expr`` and its range windows (the text inside ``[...]``)."""
    tokens = tokenize(expr)
    selectors: list[Selector] = []
    ranges = [text[1:-1].strip() for kind, text in tokens if kind == "range"]
    i = 0
    while i < len(tokens):
        kind, text = tokens[i]
        nxt = tokens[i + 1] if i + 1 < len(tokens) else (None, None)
        if kind == "op" and text == "{":  # a selector by __name__ only: {__name__=~"a|b", ...}
            matchers, i = _parse_matchers(tokens, i, expr)
            selectors.append(Selector("", matchers, _name_alternatives(matchers, expr)))
            continue
        if kind != "ident":
            i += 1
            continue
        if text in _LABEL_LIST_KEYWORDS:
            assert nxt[1] == "(", f"{text} without a label list in {expr!r}"
            i = next(j for j in range(i, len(tokens)) if tokens[j][1] == ")") + 1
            continue
        if text in _OPERATOR_KEYWORDS or text in _AGGREGATIONS or nxt[1] == "(":  # operator, function or aggregation
            i += 1
            continue
        sel = Selector(text)
        i += 1
        if nxt[1] == "{":
            sel.matchers, i = _parse_matchers(tokens, i, expr)
            assert not sel.get("__name__"), f"{text} has a metric name and a __name__ matcher in {expr!r}"
        selectors.append(sel)
    return selectors, ranges


def test_promql_reader_itself() -> None:
    sels, ranges = parse(
        'histogram_quantile(0.95, sum by (le, span_name) (rate(a_bucket{job=~"$job", x="y"}[$__rate_interval])))'
        " / ignoring(x) group_left (b) (sum(b) or vector(1e-9)) > bool 0"
    )
    assert [s.metric for s in sels] == ["a_bucket", "b"]
    assert sels[0].matchers == [("job", "=~", "$job"), ("x", "=", "y")]
    assert ranges == ["$__rate_interval"]

    sels, ranges = parse(
        'histogram_quantile(0.5, sum by (le) (rate({__name__=~"e:a_bucket|f:a_bucket", job=~"$engine_job"}[5m])))'
        ' / max by (instance) ({instance=~"$engine_instance", __name__="e:b"}) + c{x!="y"}'
    )
    assert [(s.metric, s.names) for s in sels] == [
        ("", ("e:a_bucket", "f:a_bucket")),
        ("", ("e:b",)),
        ("c", ("c",)),
    ]
    assert sels[0].label_matchers == {("job", "=~", "$engine_job")}
    assert sels[1].get("instance") == [("=~", "$engine_instance")]
    assert ranges == ["5m"]
    # A name matcher must list literal names, positively, once each, and only where no name is written.
    for bad in ('{job="x"}', '{__name__=~"e:.*"}', '{__name__!~"a|b"}', '{__name__=~"a|a"}', 'a{__name__="b"}',
                '{__name__="a", __name__="b"}'):
        with pytest.raises(AssertionError):
            parse(bad)


# -------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def dashboard() -> dict:
    return load_dashboard()


@pytest.fixture(scope="module")
def panels(dashboard: dict) -> list[dict]:
    return list(iter_panels(dashboard))


@pytest.fixture(scope="module")
def query_panels(panels: list[dict]) -> list[dict]:
    return [p for p in panels if p.get("type") != "row"]


def _targets(query_panels: list[dict]):
    for panel in query_panels:
        for target in panel.get("targets", []):
            yield panel, target


def _catalogue_series() -> dict[str, tuple[str, ...]]:
    """Every Prometheus series name the catalogue (and the spanmetrics connector) produces,
    with the labels it carries besides job/instance."""
    series: dict[str, tuple[str, ...]] = {}
    for spec in names.CATALOGUE:
        if spec.kind is names.Kind.HISTOGRAM:
            series[spec.prom_name + "_bucket"] = (*spec.prom_labels, "le")
            series[spec.prom_name + "_sum"] = spec.prom_labels
            series[spec.prom_name + "_count"] = spec.prom_labels
        else:
            series[spec.prom_name] = spec.prom_labels
    series[_SM_CALLS] = tuple(SPANMETRICS_LABELS)
    series[_SM_DUR + "_bucket"] = (*SPANMETRICS_LABELS, "le")
    series[_SM_DUR + "_sum"] = tuple(SPANMETRICS_LABELS)
    series[_SM_DUR + "_count"] = tuple(SPANMETRICS_LABELS)
    return series


# ------------------------------------------------------------------------------ the generator
def test_json_is_what_the_generator_builds(dashboard: dict) -> None:
    """The JSON never drifts from dashboards/generate.py (hence from ernie_otel/names.py)."""
    generator = load_generator()
    built = generator.build_dashboard()
    text = DASHBOARD_PATH.read_text(encoding="utf-8")
    expected = generator.render(built)
    if text != expected:
        diff = difflib.unified_diff(text.splitlines(), expected.splitlines(), "ernie-inference.json",
                                    "build_dashboard()", lineterm="", n=2)
        pytest.fail("dashboards/ernie-inference.json is stale: run `python dashboards/generate.py`\n"
                    + "\n".join(itertools.islice(diff, 60)))
    assert dashboard == built
    # Deterministic, and built afresh each call (panel ids restart at 1).
    assert generator.build_dashboard() == built
    assert generator.render() == expected
    assert [p["id"] for p in built["panels"]] == list(range(1, len(built["panels"]) + 1))


def test_generator_check_mode(tmp_path: Path) -> None:
    generator = load_generator()
    target, console = tmp_path / "dashboard.json", tmp_path / "consoles" / "ernie.html"
    both = ["--output", str(target), "--console-output", str(console)]
    assert generator.main([*both, "--check"]) == 1  # missing
    assert generator.main(both) == 0
    assert target.read_text(encoding="utf-8") == DASHBOARD_PATH.read_text(encoding="utf-8")
    assert console.read_text(encoding="utf-8") == CONSOLE_PATH.read_text(encoding="utf-8")
    assert generator.main([*both, "--check"]) == 0
    target.write_text(target.read_text(encoding="utf-8").replace('"10s"', '"5s"'), encoding="utf-8")
    assert generator.main([*both, "--check"]) == 1
    assert generator.main(both) == 0
    console.write_text(console.read_text(encoding="utf-8").replace("rate(", "irate(", 1), encoding="utf-8")
    assert generator.main([*both, "--check"]) == 1


# ------------------------------------------------------------------------ the console page
# dashboards/consoles/ernie.html: the same panels as a Prometheus console template. Read here from
# the file (as Prometheus serves it), never from the generator, so a stale or hand-edited page fails.
CONSOLE_PATH = DASHBOARDS_DIR / "consoles" / "ernie.html"


def console_data(text: str, element_id: str) -> Any:
    m = re.search(rf'<script type="application/json" id="{element_id}">(.*?)</script>', text, re.S)
    assert m, f"no {element_id} block in the console page"
    return json.loads(m.group(1))


def grafana_queries(dashboard: dict) -> set[tuple[str, str, str]]:
    return {(p["title"], t["refId"], t["expr"]) for p in iter_panels(dashboard) for t in p.get("targets", [])}


def console_queries(text: str) -> set[tuple[str, str, str]]:
    return {(p["title"], t["ref"], t["expr"]) for p in console_data(text, "ernie-panels") for t in p["targets"]}


def query_drift(dashboard: dict, text: str) -> list[str]:
    """Every panel query of one that the other lacks, as readable lines (empty: no drift)."""
    grafana, console = grafana_queries(dashboard), console_queries(text)
    return ([f"only in the Grafana JSON: {q}" for q in sorted(grafana - console)]
            + [f"only on the console page: {q}" for q in sorted(console - grafana)])


def test_console_page_is_what_the_generator_builds() -> None:
    generator = load_generator()
    text = CONSOLE_PATH.read_text(encoding="utf-8")
    expected = generator.render_console()
    if text != expected:
        diff = difflib.unified_diff(text.splitlines(), expected.splitlines(), "consoles/ernie.html",
                                    "render_console()", lineterm="", n=2)
        pytest.fail("dashboards/consoles/ernie.html is stale: run `python dashboards/generate.py`\n"
                    + "\n".join(itertools.islice(diff, 60)))


def test_console_page_has_every_grafana_query_and_no_other(dashboard: dict) -> None:
    text = CONSOLE_PATH.read_text(encoding="utf-8")
    assert query_drift(dashboard, text) == []
    # Same panels, same order, same rows, units and kinds.
    panels = console_data(text, "ernie-panels")
    grafana_panels = [p for p in dashboard["panels"] if p["type"] != "row"]
    assert [p["title"] for p in panels] == [p["title"] for p in grafana_panels]
    for ours, theirs in zip(panels, grafana_panels, strict=True):
        assert (ours["type"], ours["unit"]) == (theirs["type"], theirs["fieldConfig"]["defaults"]["unit"])
        assert ours["description"] == theirs["description"]
    assert [p["row"] for p in panels if p["row"]] and set(p["row"] for p in panels) == set(REQUIRED_ROWS)


def test_query_drift_is_caught(dashboard: dict) -> None:
    """The comparison above can fail both ways: a query dropped from either side is named."""
    text = CONSOLE_PATH.read_text(encoding="utf-8")
    panels = console_data(text, "ernie-panels")
    dropped = panels[0]["targets"].pop()
    start = text.index('id="ernie-panels">') + len('id="ernie-panels">')
    edited = text[:start] + json.dumps(panels) + text[text.index("</script>", start):]
    lost = (panels[0]["title"], dropped["ref"], dropped["expr"])
    assert query_drift(dashboard, edited) == [f"only in the Grafana JSON: {lost}"]
    extra = json.loads(json.dumps(dashboard))
    extra["panels"][1]["targets"].append({"refId": "Z", "expr": "up"})
    assert query_drift(extra, text) == [f"only in the Grafana JSON: {(extra['panels'][1]['title'], 'Z', 'up')}"]


def test_console_variables_are_grafanas(dashboard: dict) -> None:
    """The page's selectors ask Prometheus the label_values() look-ups of the Grafana variables."""
    text = CONSOLE_PATH.read_text(encoding="utf-8")
    variables = {v["name"]: v for v in console_data(text, "ernie-variables")}
    grafana = {v["name"]: v for v in dashboard["templating"]["list"] if v["type"] == "query"}
    assert set(variables) == set(grafana) >= {"job", "instance", "model"}
    for name, v in variables.items():
        assert grafana[name]["definition"] == f"label_values({v['match']}, {v['labelName']})"
        assert v["multi"] == grafana[name]["multi"]
    # Every variable a query uses is one the page fills (the rest are Grafana's built-ins).
    used = set(re.findall(r"\$\{?(\w+)", " ".join(e for _, _, e in console_queries(text))))
    assert used - set(variables) <= {"__rate_interval", "__range"}


def test_console_latency_panels_link_to_jaeger() -> None:
    text = CONSOLE_PATH.read_text(encoding="utf-8")
    panels = {p["title"]: p for p in console_data(text, "ernie-panels")}
    linked = {title for title, p in panels.items() if p["jaeger"]}
    assert linked >= QUANTILE_PANELS | {"Span duration p95"}
    for title in linked:
        link = panels[title]["jaeger"]
        refs = {t["ref"]: t["expr"] for t in panels[title]["targets"]}
        # The link's threshold is the panel's own p95 target.
        assert refs[link["quantileRef"]].startswith("histogram_quantile(0.95,"), title
    assert panels["End-to-end latency"]["jaeger"]["operation"] == "POST /v1/chat/completions"
    defaults = console_data(text, "ernie-defaults")
    assert defaults["service"] == names.SERVICE_NAME
    assert defaults["jaeger"] == f"http://127.0.0.1:{DEFAULT_PORTS['jaeger_query']}"


def test_console_page_says_why_hardware_panels_are_empty() -> None:
    text = CONSOLE_PATH.read_text(encoding="utf-8")
    panels = {p["title"]: p for p in console_data(text, "ernie-panels")}
    noted = {title for title, p in panels.items() if p["absent"]}
    assert noted == set(GPU_PANELS) | set(ENGINE_PANELS) | set(COLLECTOR_ONLY_PANELS)
    # The only Go template actions are the console library's frame: panel data and legends (in the
    # library's [[label]] form) are never template text.
    actions = re.findall(r"\{\{.*?\}\}", text, re.S)
    assert actions[0].startswith("{{/*")
    assert actions[1:] == ['{{ template "head" . }}', '{{ template "prom_content_head" . }}',
                           '{{ template "prom_content_tail" . }}', '{{ template "tail" }}']


# ------------------------------------------------------------------------------ the model
def test_dashboard_identity(dashboard: dict) -> None:
    assert dashboard["uid"] == "ernie-monitor"
    assert dashboard["title"] == "ERNIE-4.5 Inference"
    assert dashboard["refresh"] == "10s"
    assert dashboard["time"]["from"] == "now-6h"
    assert dashboard["time"]["to"] == "now"
    assert dashboard["tags"] == ["ERNIE", "LLM", "Inference"]
    assert dashboard["schemaVersion"] == 39
    # A provisioned dashboard must not pin a database id.
    assert dashboard.get("id") is None


def test_current_panel_types_only(panels: list[dict]) -> None:
    types = {p["type"] for p in panels}
    assert "graph" not in types
    assert types <= ALLOWED_PANEL_TYPES, types - ALLOWED_PANEL_TYPES


def test_rows_are_flat_and_in_order(dashboard: dict) -> None:
    rows = [p for p in dashboard["panels"] if p["type"] == "row"]
    assert [r["title"] for r in rows] == REQUIRED_ROWS
    for r in rows:
        # Open rows hold no panels of their own; collapsed rows would hide panels from a first look.
        assert r.get("collapsed") is False and r.get("panels") == [], r["title"]


def test_panel_ids_unique(panels: list[dict]) -> None:
    ids = [p["id"] for p in panels]
    assert all(isinstance(i, int) for i in ids)
    assert len(ids) == len(set(ids))


def test_grid_positions(panels: list[dict]) -> None:
    boxes = []
    for p in panels:
        g = p["gridPos"]
        x, y, w, h = (g[k] for k in ("x", "y", "w", "h"))
        assert all(isinstance(v, int) for v in (x, y, w, h)), p["title"]
        assert x >= 0 and y >= 0 and w >= 1 and h >= 1, p["title"]
        assert x + w <= 24, f"{p['title']} reaches column {x + w}"
        if p["type"] == "row":
            assert (x, w, h) == (0, 24, 1), p["title"]
        boxes.append((p["title"], x, y, w, h))
    for (t1, x1, y1, w1, h1), (t2, x2, y2, w2, h2) in itertools.combinations(boxes, 2):
        overlap = x1 < x2 + w2 and x2 < x1 + w1 and y1 < y2 + h2 and y2 < y1 + h1
        assert not overlap, f"{t1!r} overlaps {t2!r}"


def test_each_panel_sits_under_its_row(dashboard: dict) -> None:
    # Grafana groups panels by y: a panel belongs to the last row above it.
    rows = sorted((p["gridPos"]["y"], p["title"]) for p in dashboard["panels"] if p["type"] == "row")
    section = {
        "Request rate": "Service overview",
        "Errors by type": "Service overview",
        "End-to-end latency": "Performance",
        "Latency distribution": "Performance",
        "Running requests": "Capacity",
        "Rejected requests": "Capacity",
        "GPU power": "Resources",
        "Process memory": "Resources",
        "Span duration p95": "Traces (spanmetrics)",
        "KV cache used vs budget": INTERNALS_ROW,
        "Model load time": INTERNALS_ROW,
        "Engine running vs waiting": ENGINE_ROW,
        "Engine time to first token": ENGINE_ROW,
    }
    by_title = {p["title"]: p for p in dashboard["panels"]}
    for title, row_title in section.items():
        y = by_title[title]["gridPos"]["y"]
        assert [t for ry, t in rows if ry < y][-1] == row_title, title


def test_panel_title_description_unit(query_panels: list[dict]) -> None:
    titles = [p.get("title", "") for p in query_panels]
    assert len(titles) == len(set(titles)), "panel titles must be unique (tests and the live check key on them)"
    for p in query_panels:
        assert p.get("title", "").strip(), p
        assert p.get("description", "").strip(), p["title"]
        assert p.get("fieldConfig", {}).get("defaults", {}).get("unit", "").strip(), p["title"]
        assert p.get("targets"), p["title"]


def test_required_panels_show_their_metrics(query_panels: list[dict]) -> None:
    by_title = {p["title"]: p for p in query_panels}
    for title, metrics in REQUIRED_PANELS.items():
        assert title in by_title, f"missing panel {title!r}"
        used = {name for t in by_title[title]["targets"] for s in parse(t["expr"])[0] for name in s.names}
        assert metrics <= used, f"{title}: {metrics - used} not queried"


# ------------------------------------------------------------------- data source, variables
def test_one_datasource_variable_used_everywhere(dashboard: dict, query_panels: list[dict]) -> None:
    variables = dashboard["templating"]["list"]
    ds_vars = [v for v in variables if v["type"] == "datasource"]
    assert len(ds_vars) == 1
    assert ds_vars[0]["name"] == "datasource" and ds_vars[0]["query"] == "prometheus"
    for p in query_panels:
        assert p.get("datasource") == DS, p["title"]
    for p, t in _targets(query_panels):
        assert t.get("datasource") == DS, (p["title"], t["refId"])
    for v in variables:
        if v["type"] == "query":
            assert v.get("datasource") == DS, v["name"]
    for r in (p for p in iter_panels(dashboard) if p["type"] == "row"):
        assert r.get("datasource", DS) == DS, r["title"]


def test_template_variables(dashboard: dict) -> None:
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert list(variables) == ["datasource", "job", "instance", "model", *ENGINE_VARIABLES]
    req = names.REQUESTS.prom_name
    # The engine's jobs/instances: those with the neutral running-requests series.
    running = names.ENGINE_RUNNING
    expected = {
        "job": f"label_values({req}, job)",
        "instance": f'label_values({req}{{job=~"$job"}}, instance)',
        "model": f'label_values({req}{{job=~"$job", instance=~"$instance"}}, {names.ATTR_MODEL})',
        "engine_job": f"label_values({running}, job)",
        "engine_instance": f'label_values({running}{{job=~"$engine_job"}}, instance)',
    }
    for name, query in expected.items():
        v = variables[name]
        assert v["type"] == "query"
        q = v["query"]["query"] if isinstance(v["query"], dict) else v["query"]
        assert q == query, name
        assert v.get("definition", query) == query, name
        assert v["refresh"] in (1, 2), name
        if name == "job":
            # Single-value, no All: deploy/prometheus.yml scrapes one process as two jobs (direct and
            # through the Collector), and a view over both would count every request twice. No
            # `current`: Grafana selects the first value.
            assert v["multi"] is False and v["includeAll"] is False and "allValue" not in v, name
            assert not v.get("current"), name
            continue
        assert v["multi"] is True and v["includeAll"] is True and v["allValue"] == ".*", name
        # Default "All": the engine row shows whatever engine is scraped, and nothing (no error) when none is.
        assert v["current"]["value"] == ["$__all"], name
    # The data source variable defaults to the provisioned Prometheus.
    assert variables["datasource"]["current"]["value"] == _prometheus_ds()["uid"]


# ------------------------------------------------------------------------------- PromQL rules
def test_windows_use_rate_interval(query_panels: list[dict]) -> None:
    used_allowlist = set()
    for p, t in _targets(query_panels):
        expr = t["expr"]
        _, ranges = parse(expr)
        if re.search(r"\b(rate|irate|increase)\s*\(", expr):
            assert ranges, (p["title"], expr)
        allowed = WINDOW_ALLOWLIST.get(p["title"], set())
        for window in ranges:
            assert ":" not in window, f"{p['title']}: no subqueries"
            if window != "$__rate_interval":
                assert window in allowed, f"{p['title']} ({t['refId']}) uses [{window}], not [$__rate_interval]"
                used_allowlist.add(p["title"])
    assert used_allowlist == set(WINDOW_ALLOWLIST), "stale entries in WINDOW_ALLOWLIST"


def _is_engine(s: Selector) -> bool:
    return any(name.startswith((names.ENGINE_NEUTRAL_PREFIX, *names.ENGINE_FAMILY_PREFIXES)) for name in s.names)


def test_selectors_have_job_instance_and_model_matchers(query_panels: list[dict]) -> None:
    for p, t in _targets(query_panels):
        where = f"{p['title']} ({t['refId']})"
        selectors, _ = parse(t["expr"])
        assert selectors, where
        engine_panel = p["title"] in ENGINE_PANELS
        for s in selectors:
            if _is_engine(s):
                assert engine_panel, f"{where}: engine family {s.names} outside ENGINE_PANELS"
                assert s.metric in ENGINE_RECORDS, f"{where}: {s.names} is not the engine-neutral set"
                assert s.label_matchers == ENGINE_MATCHERS, (
                    f"{where}: engine selectors take exactly {sorted(ENGINE_MATCHERS)}, not {s.matchers}"
                )
                continue
            assert not engine_panel, f"{where}: {s.names} is not an engine family"
            assert s.metric, f"{where}: no panel selects by __name__"
            assert not any(value.startswith("$engine_") for _, _, value in s.matchers), where
            assert s.get("job") == [("=~", "$job")], f'{where}: {s.metric} needs job=~"$job"'
            assert s.get("instance") == [("=~", "$instance")], f'{where}: {s.metric} needs instance=~"$instance"'
            assert not any(label.startswith("otel_scope_") for label, _, _ in s.matchers), where
            if s.metric.startswith(NO_MODEL_LABEL_PREFIXES):
                assert not s.get("model") and not s.get("gen_ai_request_model"), f"{where}: {s.metric} has no model"
            elif s.metric.startswith("gen_ai_"):
                assert s.get("gen_ai_request_model") == [("=~", "$model")], f"{where}: {s.metric}"
                assert not s.get("model"), where
            else:
                assert s.metric.startswith("ernie_"), f"{where}: unexpected family {s.metric}"
                assert s.get("model") == [("=~", "$model")], f"{where}: {s.metric}"


def test_metric_names_come_from_the_catalogue(query_panels: list[dict]) -> None:
    series = _catalogue_series()
    for p, t in _targets(query_panels):
        for s in parse(t["expr"])[0]:
            if _is_engine(s):
                assert s.metric in ENGINE_RECORDS, f"{p['title']}: {s.names} is not in ernie_otel.engines.NEUTRAL"
                continue
            for name in s.names:
                assert name in series, f"{p['title']}: {name} is not in ernie_otel.names"


def test_matchers_use_existing_labels_and_values(query_panels: list[dict]) -> None:
    series = _catalogue_series()
    fixed_values = {
        names.ATTR_STATUS: {s.value for s in names.Status},
        names.ATTR_ERROR_TYPE.replace(".", "_"): {e.value for e in names.ErrorType},
        names.GEN_AI_TOKEN_TYPE.replace(".", "_"): {tt.value for tt in names.TokenType},
        names.ATTR_OPERATION: {o.value for o in names.Operation},
        "status_code": SPAN_STATUS_CODES,
    }
    for p, t in _targets(query_panels):
        for s in parse(t["expr"])[0]:
            if _is_engine(s):
                continue  # exactly ENGINE_MATCHERS (test_selectors_have_job_instance_and_model_matchers)
            allowed = {"job", "instance", *series[s.metric]}
            for label, op, value in s.matchers:
                assert label in allowed, f"{p['title']}: {s.metric} has no label {label}"
                if label in fixed_values and op == "=":
                    assert value in fixed_values[label], f"{p['title']}: {label}={value!r} is not a known value"


def test_quantile_panels(query_panels: list[dict]) -> None:
    by_title = {p["title"]: p for p in query_panels}
    for title in QUANTILE_PANELS:
        exprs = [t["expr"] for t in by_title[title]["targets"]]
        found = sorted(re.match(r"histogram_quantile\((0\.\d+),", e).group(1) for e in exprs)
        assert found == ["0.5", "0.95", "0.99"], title
        assert all("sum by (le) (rate(" in e for e in exprs), title


def test_exemplars_on_latency_and_ttft(query_panels: list[dict]) -> None:
    by_title = {p["title"]: p for p in query_panels}
    for title in EXEMPLAR_PANELS:
        assert any(t.get("exemplar") is True for t in by_title[title]["targets"]), title
    for p, t in _targets(query_panels):
        if t.get("exemplar"):
            # Exemplars hang off histogram buckets; elsewhere Prometheus has none to return.
            assert any(name.endswith("_bucket") for s in parse(t["expr"])[0] for name in s.names), p["title"]


def test_heatmap_panel(query_panels: list[dict]) -> None:
    heatmaps = [p for p in query_panels if p["type"] == "heatmap"]
    assert heatmaps
    for p in heatmaps:
        assert p["options"]["calculate"] is False, p["title"]
        for t in p["targets"]:
            assert t["format"] == "heatmap", p["title"]
            assert t["expr"].startswith("sum by (le) (increase("), p["title"]
            assert t["expr"].endswith("[$__rate_interval]))"), p["title"]


def test_gpu_and_collector_only_panels(query_panels: list[dict]) -> None:
    by_title = {p["title"]: p for p in query_panels}
    for title in GPU_PANELS:
        metrics = {m for t in by_title[title]["targets"] for s in parse(t["expr"])[0] for m in s.names}
        assert metrics and all(m.startswith("gpu_") for m in metrics), title
    gpu_names = {spec.prom_name for spec in names.GPU_METRICS}
    for p, t in _targets(query_panels):
        if p["title"] not in GPU_PANELS:
            assert not {m for s in parse(t["expr"])[0] for m in s.names} & gpu_names, p["title"]
    for title in COLLECTOR_ONLY_PANELS:
        metrics = {m for t in by_title[title]["targets"] for s in parse(t["expr"])[0] for m in s.names}
        assert metrics and all(m.startswith("traces_span_metrics_") for m in metrics), title


def test_engine_row(dashboard: dict, query_panels: list[dict]) -> None:
    """The last row holds exactly ENGINE_PANELS, which read only the engine-neutral set (so they
    are empty, never broken, when no engine is scraped) through $engine_job/$engine_instance."""
    rows = sorted((p["gridPos"]["y"], p["title"]) for p in dashboard["panels"] if p["type"] == "row")
    assert rows[-1][1] == ENGINE_ROW
    below = sorted((p["gridPos"]["y"], p["gridPos"]["x"], p["title"])
                   for p in query_panels if p["gridPos"]["y"] > rows[-1][0])
    assert tuple(title for _, _, title in below) == ENGINE_PANELS
    by_title = {p["title"]: p for p in query_panels}
    for title in ENGINE_PANELS:
        p = by_title[title]
        # What the panel is and what it needs.
        assert "collector/engine-metrics.yaml" in p["description"], title
        assert "alerts/ernie-engines.yml" in p["description"], title
        assert names.ENGINE_JOB in p["description"], title
        for t in p["targets"]:
            expr = t["expr"]
            selectors, ranges = parse(expr)
            assert selectors and all(_is_engine(s) for s in selectors), (title, expr)
            # No series may appear from nothing: vector()/absent() would draw a line with no engine.
            assert not re.search(r"\b(vector|absent|absent_over_time|time|scalar)\s*\(", expr), (title, expr)
            assert not re.search(r"\$\{?(job|instance|model)\b", expr), (title, expr)
            # The rates are the recording rules': a panel only aggregates them.
            assert not ranges and not re.search(r"\b(rate|irate|increase)\s*\(", expr), (title, expr)
            assert f"by (instance, {names.ENGINE_LABEL}" in expr, (title, expr)
            assert not t.get("exemplar"), f"{title}: engine histograms carry no trace exemplars"
            assert not t.get("instant"), title
    kv = by_title["Engine KV-cache usage"]["fieldConfig"]["defaults"]
    assert (kv["unit"], kv["min"], kv["max"]) == ("percentunit", 0, 1)
    for title in ("Engine time to first token", "Engine inter-token latency"):
        quantiles = by_title[title]
        assert quantiles["fieldConfig"]["defaults"]["unit"] == "s"
        exprs = [t["expr"] for t in quantiles["targets"]]
        assert sorted(re.match(r"histogram_quantile\((0\.\d+),", e).group(1) for e in exprs) == ["0.5", "0.95"]
        # Engines bucket differently: buckets are summed within one engine instance only.
        assert all(f"sum by (instance, {names.ENGINE_LABEL}, le) (engine:" in e for e in exprs), title
    running = by_title["Engine running vs waiting"]
    assert {t["refId"]: parse(t["expr"])[0][0].names for t in running["targets"]} == {
        "A": (names.ENGINE_RUNNING,), "B": (names.ENGINE_WAITING,)}


# ------------------------------------------------------------------------------ provisioning
def _datasources() -> list[dict]:
    with DATASOURCES_YML.open(encoding="utf-8") as f:
        return yaml.safe_load(f)["datasources"]


def _prometheus_ds() -> dict:
    return next(d for d in _datasources() if d["type"] == "prometheus")


def test_datasource_provisioning() -> None:
    sources = {d["uid"]: d for d in _datasources()}
    prom, jaeger = sources["prometheus"], sources["jaeger"]
    assert prom["type"] == "prometheus" and prom["url"] == "http://127.0.0.1:9090"
    assert jaeger["type"] == "jaeger" and jaeger["url"] == "http://127.0.0.1:16686"
    links = prom["jsonData"]["exemplarTraceIdDestinations"]
    # `trace_id` is the exemplar label the Collector's prometheus exporter writes.
    assert {"name": "trace_id", "datasourceUid": "jaeger"}.items() <= links[0].items()
    assert all(link["datasourceUid"] in sources for link in links)
    # Grafana expands $VAR in provisioning files: a stray `$` would silently become "".
    text = DATASOURCES_YML.read_text(encoding="utf-8")
    values = "\n".join(line.split("#", 1)[0] for line in text.splitlines())
    assert "$" not in values.replace("$$", "")


def _seconds(duration: str) -> float:
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}
    parts = re.findall(r"(\d+)(ms|s|m|h)", duration)
    assert parts and "".join(a + b for a, b in parts) == duration, duration
    return sum(int(a) * units[b] for a, b in parts)


def test_rate_interval_floor_matches_scrape_interval() -> None:
    # Grafana computes $__rate_interval from the data source's timeInterval (>= 4x it); below
    # the real scrape interval a rate window could hold fewer than two samples.
    with (DASHBOARDS_DIR.parent / "deploy" / "prometheus.yml").open(encoding="utf-8") as f:
        scrape = yaml.safe_load(f)["global"]["scrape_interval"]
    assert _seconds(_prometheus_ds()["jsonData"]["timeInterval"]) >= _seconds(scrape)


def test_dashboard_provider() -> None:
    with PROVIDERS_YML.open(encoding="utf-8") as f:
        cfg = yaml.safe_load(f)
    assert cfg["apiVersion"] == 1
    (provider,) = cfg["providers"]
    assert provider["type"] == "file"
    path = provider["options"]["path"]
    assert path.startswith("/") and "$" not in path
    # The mount instructions in the file's header name the same path.
    assert path in PROVIDERS_YML.read_text(encoding="utf-8").split("apiVersion", 1)[0]
    assert DASHBOARD_PATH.parent == DASHBOARDS_DIR and DASHBOARD_PATH.suffix == ".json"


# --------------------------------------------------------------------- the live-query helper
def test_iter_queries_substitutes_everything(dashboard: dict, query_panels: list[dict]) -> None:
    n_targets = sum(1 for _ in _targets(query_panels))
    values = {
        "job": "ernie-serve-direct",
        "instance": "127.0.0.1:8181",
        "model": "ernie-4.5-0.3b",
        "engine_job": names.ENGINE_JOB,
        "engine_instance": "127.0.0.1:8188",
        "__rate_interval": "2m",
        "__range": "1h",
        "__interval": "30s",
    }
    queries = iter_queries(dashboard, values)
    assert len(queries) == n_targets
    assert len({(title, ref) for title, ref, _ in queries}) == n_targets
    assert {title for title, _, _ in queries} >= set(ENGINE_PANELS)
    for title, ref, expr in queries:
        assert "$" not in expr and "[[" not in expr, (title, ref, expr)
        job, instance = ((names.ENGINE_JOB, "127.0.0.1:8188") if title in ENGINE_PANELS
                         else ("ernie-serve-direct", "127.0.0.1:8181"))
        assert f'job=~"{job}"' in expr, (title, expr)
        assert f'instance=~"{instance}"' in expr, (title, expr)
    exprs = "\n".join(e for _, _, e in queries)
    assert "[2m]" in exprs and "[1h]" in exprs and '=~"ernie-4.5-0.3b"' in exprs
    assert all("$" not in e for _, _, e in iter_queries(dashboard, {}))
    assert is_instant(dashboard, "Requests (last 24h)", "A")
    assert not is_instant(dashboard, "End-to-end latency", "A")


def test_substitute_forms_and_unknown_variables() -> None:
    v = {"a": "1", "bc": "2", "datasource": "prometheus"}
    assert substitute("$a ${bc} ${bc:regex} [[a]] ${datasource}", v) == "1 2 2 1 prometheus"
    with pytest.raises(KeyError):
        substitute("$nope", v)
    assert set(DEFAULT_VARIABLES) >= {"job", "instance", "model", "datasource", "__rate_interval", "__range",
                                      *ENGINE_VARIABLES}


# -------------------------------------------------------------------- PromQL syntax (promtool)
def test_every_query_parses_with_promtool(dashboard: dict, tmp_path: Path) -> None:
    promtool = shutil.which("promtool")
    assert promtool, "promtool not found: install the Debian package `prometheus` (promtool 2.42)"
    queries = iter_queries(dashboard, {"job": "ernie-serve"})
    # Variable queries too (label_values() is Grafana's, so only its selector is PromQL).
    for v in dashboard["templating"]["list"]:
        if v["type"] == "query":
            q = v["query"]["query"] if isinstance(v["query"], dict) else v["query"]
            m = re.fullmatch(r"label_values\((.+),\s*(\w+)\)", q)
            assert m, q
            queries.append((f"variable {v['name']}", "-", substitute(m.group(1), DEFAULT_VARIABLES)))
    rules = {
        "groups": [
            {
                "name": "dashboard",
                "rules": [{"record": f"dashboard:query_{i}", "expr": expr} for i, (_, _, expr) in enumerate(queries)],
            }
        ]
    }
    path = tmp_path / "dashboard-queries.rules.yml"
    path.write_text(yaml.safe_dump(rules, sort_keys=False), encoding="utf-8")
    proc = subprocess.run([promtool, "check", "rules", str(path)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"{len(queries)} rules found" in proc.stdout, proc.stdout
