"""alerts/ tested like code: the real promtool and amtool, plus the contracts between
the rules, the metric catalogue (ernie_otel.names), the runbooks and Alertmanager's routing.

A missing promtool or amtool fails these tests; it never skips them (Debian packages
`prometheus` and `prometheus-alertmanager`).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from ernie_otel import names

REPO_ROOT = Path(__file__).resolve().parent.parent
ALERTS_DIR = REPO_ROOT / "alerts"
ALERT_RULES = ALERTS_DIR / "ernie-alerts.yml"
RECORDING_RULES = ALERTS_DIR / "ernie-recording.yml"
RULE_FILES = (RECORDING_RULES, ALERT_RULES)
RULE_TESTS = ALERTS_DIR / "tests" / "ernie-alerts.test.yml"
ALERTMANAGER_CONFIG = ALERTS_DIR / "alertmanager.yml"
RUNBOOKS = REPO_ROOT / "docs" / "runbooks.md"

RUNBOOK_URL_PREFIX = "https://github.com/ernie-otel/ernie-otel/blob/main/docs/runbooks.md#"
PRIORITY_OF_SEVERITY = {"critical": "P1", "warning": "P2", "info": "P3"}
RECEIVER_OF_SEVERITY = {"critical": "pager", "warning": "email-slack", "info": "slack"}
REPEAT_OF_SEVERITY = {"critical": "1h", "warning": "4h", "info": "12h"}
EXPECTED_ALERTS = {
    "HighInferenceLatency", "HighErrorRate", "HighGPUMemoryUsage", "ErnieServeDown",
    "ErnieMetricsAbsent", "HighTimeToFirstToken", "QueueSaturated", "RequestsRejected",
    "TelemetryExportFailures", "TelemetryReceiverRefused", "NoTraffic", "SLOErrorBudgetFastBurn",
    "SLOErrorBudgetSlowBurn", "KVCacheNearBudget",
}
# Labels the rules may use besides the catalogue's: target labels, histogram buckets, the
# Collector's own component labels, the opt-in marker and the recording rules' static labels.
EXTRA_LABELS = {"__name__", "job", "instance", "le", "exporter", "receiver", "expect_traffic", "signal", "reason"}


# ---------------------------------------------------------------------------------- helpers
def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is not installed: these tests need it (Debian: prometheus / prometheus-alertmanager)")
    return path


def _run(args: list[str | Path], timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(a) for a in args], cwd=REPO_ROOT, capture_output=True, text=True,
        timeout=timeout, check=False, stdin=subprocess.DEVNULL,
    )


def _load(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def _rules(path: Path) -> Iterator[dict[str, Any]]:
    for group in _load(path)["groups"]:
        yield from group["rules"]


def _alerts() -> list[dict[str, Any]]:
    return [r for r in _rules(ALERT_RULES) if "alert" in r]


def _all_exprs() -> list[str]:
    return [r["expr"] for path in RULE_FILES for r in _rules(path)]


def github_anchor(heading: str) -> str:
    """The anchor GitHub gives a Markdown heading: lower case, punctuation dropped, spaces to '-'."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_CLAUSE = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)")
_MATCHERS = re.compile(r"\{([^}]*)\}")
_IDENT = re.compile(r"(?<![\w.:])([A-Za-z_:][A-Za-z0-9_:]*)")
_KEYWORDS = {
    "and", "or", "unless", "bool", "offset", "by", "without", "on", "ignoring", "group_left",
    "group_right", "inf", "nan", "atan2",
    "sum", "avg", "min", "max", "count", "group", "stddev", "stdvar", "topk", "bottomk", "quantile",
    "count_values",
}


def metric_names(expr: str) -> set[str]:
    """Metric names a PromQL expression selects: strings, label matchers, range/subquery brackets
    and grouping clauses removed; what is left is functions (followed by '('), keywords and names."""
    text = _STRING.sub('""', expr)
    text = _MATCHERS.sub("", text)
    text = re.sub(r"\[[^\]]*\]", "", text)
    text = _CLAUSE.sub("", text)
    found = set()
    for match in _IDENT.finditer(text):
        word = match.group(1)
        if word.lower() in _KEYWORDS or re.match(r"\s*\(", text[match.end():]):
            continue
        found.add(word)
    return found


def label_names(expr: str) -> set[str]:
    """Label names an expression matches on, groups by, or label_replace()s from and to."""
    text = _STRING.sub(lambda m: m.group(0) if m.group(0).startswith('"') else '""', expr)
    labels: set[str] = set()
    for match in _MATCHERS.finditer(text):
        labels |= set(re.findall(r"([A-Za-z_]\w*)\s*(?:=~|!~|!=|=)", match.group(1)))
    for clause in _CLAUSE.finditer(_STRING.sub('""', expr)):
        labels |= {label.strip() for label in clause.group(1).split(",") if label.strip()}
    for args in re.findall(r"label_replace\(.*?,\s*\"(\w+)\"\s*,\s*\"[^\"]*\"\s*,\s*\"(\w+)\"", expr, re.S):
        labels |= set(args)
    return labels


def test_metric_names_extractor() -> None:
    expr = (
        'histogram_quantile(0.95, sum by (job, le) (rate(a_seconds_bucket{status!="x",le=~"1e3"}[5m])))'
        ' / on (job) group_left (model) max without (gpu) (b:rec:rate5m offset 1m) > 2'
        ' unless absent(c_total) or label_replace(d, "m", "$1", "src", "(.*)") and e[1h:5m] > 1e3'
    )
    assert metric_names(expr) == {"a_seconds_bucket", "b:rec:rate5m", "c_total", "d", "e"}
    assert label_names(expr) == {"status", "le", "job", "model", "gpu", "m", "src"}


def alertmanager_config_for_test(
    base_url: str, secrets_dir: Path, timing: dict[str, str] | None = None
) -> dict[str, Any]:
    """The shipped Alertmanager config with only what a test may change rewritten: each
    webhook's scheme/host/port (the path, which names the channel, stays), each
    credentials_file (to secrets_dir/<same file name>), and optionally group_wait /
    group_interval / repeat_interval (route keys, applied wherever the key appears)."""
    config = _load(ALERTMANAGER_CONFIG)
    for receiver in config["receivers"]:
        for webhook in receiver.get("webhook_configs", []):
            path = re.sub(r"^https?://[^/]+", "", webhook["url"])
            webhook["url"] = base_url.rstrip("/") + path
            auth = webhook.get("http_config", {}).get("authorization", {})
            if "credentials_file" in auth:
                auth["credentials_file"] = str(secrets_dir / Path(auth["credentials_file"]).name)

    def retime(route: dict[str, Any]) -> None:
        for key, value in (timing or {}).items():
            if key in route:
                route[key] = value
        for child in route.get("routes", []):
            retime(child)

    retime(config["route"])
    return config


def _diff_paths(a: Any, b: Any, path: str = "") -> Iterator[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        for key in a.keys() | b.keys():
            yield from _diff_paths(a.get(key), b.get(key), f"{path}/{key}")
    elif isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            yield from _diff_paths(x, y, f"{path}/{i}")
    elif a != b:
        yield re.sub(r"/\d+", "/*", path)


# ----------------------------------------------------------------------------- promtool
def test_promtool_check_rules() -> None:
    result = _run([_tool("promtool"), "check", "rules", *RULE_FILES])
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_rule_unit_tests() -> None:
    result = _run([_tool("promtool"), "test", "rules", RULE_TESTS])
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_unit_tests_cover_every_alert_firing_and_silent() -> None:
    """Each alert has at least one check where it fires and one where it must stay silent."""
    tests = _load(RULE_TESTS)
    assert {Path(f).name for f in tests["rule_files"]} == {p.name for p in RULE_FILES}
    firing: set[str] = set()
    silent: set[str] = set()
    for group in tests["tests"]:
        for case in group.get("alert_rule_test", []):
            (firing if case.get("exp_alerts") else silent).add(case["alertname"])
    assert firing == EXPECTED_ALERTS
    assert silent == EXPECTED_ALERTS


# ------------------------------------------------------------------------- rule contract
def test_alert_set_is_complete() -> None:
    assert {a["alert"] for a in _alerts()} == EXPECTED_ALERTS


@pytest.mark.parametrize("alert", _alerts(), ids=lambda a: a["alert"])
def test_alert_labels_and_annotations(alert: dict[str, Any]) -> None:
    labels, annotations = alert.get("labels", {}), alert.get("annotations", {})
    assert labels.get("severity") in PRIORITY_OF_SEVERITY
    assert labels.get("priority") == PRIORITY_OF_SEVERITY[labels["severity"]]
    assert annotations.get("summary", "").strip()
    assert "{{ $value" in annotations.get("description", ""), "description must show the value"
    assert annotations.get("runbook_url") == RUNBOOK_URL_PREFIX + github_anchor(alert["alert"])
    # The end-to-end test shortens hold times by rewriting `for:` only: every alert has one.
    assert re.fullmatch(r"\d+[smh]", str(alert.get("for", ""))), "every alert needs a `for:` duration"


def test_design_levels() -> None:
    """The three levels of the monitoring design: threshold, hold time, severity."""
    alerts = {a["alert"]: a for a in _alerts()}
    expected = {
        "HighInferenceLatency": ("> 2", "2m", "critical"),
        "HighErrorRate": ("> 0.05", "5m", "warning"),
        "HighGPUMemoryUsage": ("> 85", "10m", "info"),
    }
    for name, (threshold, hold, severity) in expected.items():
        assert alerts[name]["expr"].strip().endswith(threshold), name
        assert alerts[name]["for"] == hold, name
        assert alerts[name]["labels"]["severity"] == severity, name


def test_runbook_anchors_exist() -> None:
    headings = re.findall(r"^#{1,6}\s+(.+?)\s*$", RUNBOOKS.read_text(), re.M)
    anchors = {github_anchor(h) for h in headings}
    for alert in _alerts():
        anchor = alert["annotations"]["runbook_url"].split("#", 1)[1]
        assert anchor in anchors, f"docs/runbooks.md has no heading for #{anchor}"


def test_runbook_panels_exist_on_the_dashboard() -> None:
    """The panel titles a runbook's "First panel" names are panels of dashboard ernie-monitor."""
    dashboards = [json.loads(p.read_text()) for p in sorted((REPO_ROOT / "dashboards").glob("*.json"))]
    monitor = [d for d in dashboards if d.get("uid") == "ernie-monitor"]
    assert len(monitor) == 1, "one dashboard with uid ernie-monitor"

    def titles(panels: list[dict[str, Any]]) -> Iterator[str]:
        for panel in panels:
            yield panel.get("title", "")
            yield from titles(panel.get("panels", []))

    panel_titles = set(titles(monitor[0]["panels"]))
    paragraphs = re.findall(r"^First panel:.*?(?=\n\n)", RUNBOOKS.read_text(), re.M | re.S)
    assert len(paragraphs) == len(EXPECTED_ALERTS)
    named = set()
    for paragraph in paragraphs:
        prose = re.sub(r"`[^`]*`", "", paragraph)
        named |= {" ".join(t.split()) for t in re.findall(r'"([^"]+)"', prose)}
    assert named, "runbooks name no panels"
    assert named <= panel_titles, f"not on ernie-monitor: {sorted(named - panel_titles)}"


def test_recording_rule_names() -> None:
    """level:metric:operations; the monitoring design's own QPS name is kept as it is."""
    design_name = "ernie:inference:qps:avg5m"
    records = {r["record"] for r in _rules(RECORDING_RULES)}
    assert design_name in records
    for record in records - {design_name}:
        assert re.fullmatch(r"[a-z_]+:[a-z0-9_]+:[a-z0-9_]+", record), record


def test_metric_names_come_from_the_catalogue() -> None:
    known = {"up"}
    for spec in names.CATALOGUE:
        known.add(spec.prom_name)
        if spec.kind is names.Kind.HISTOGRAM:
            known |= {spec.prom_name + suffix for suffix in ("_bucket", "_sum", "_count")}
    recorded = {r["record"] for r in _rules(RECORDING_RULES)}
    used: set[str] = set()
    for expr in _all_exprs():
        used |= metric_names(expr)
    unknown = {n for n in used if n not in known | recorded and not n.startswith("otelcol_")}
    assert not unknown, f"metric names in rules but not in ernie_otel.names: {sorted(unknown)}"
    assert {"ernie_inference_latency_seconds_bucket", "gpu_memory_usage_percent", "up"} <= used


def test_label_names_and_values_come_from_the_catalogue() -> None:
    allowed = EXTRA_LABELS | {"model"} | {label for spec in names.CATALOGUE for label in spec.prom_labels}
    values = {
        "status": {s.value for s in names.Status},
        "error_type": {e.value for e in names.ErrorType},
    }
    for expr in _all_exprs():
        assert label_names(expr) <= allowed, (expr, label_names(expr) - allowed)
        for label, value in re.findall(r"\b(status|error_type)\s*!?=\s*\"([^\"]*)\"", expr):
            assert value in values[label], (label, value)


def test_ernie_aggregations_keep_job_and_instance() -> None:
    """One server scraped directly and through the Collector must stay two series."""
    for expr in _all_exprs():
        for clause in re.finditer(r"\bby\s*\(([^)]*)\)", expr):
            grouping = {label.strip() for label in clause.group(1).split(",")}
            assert {"job", "instance"} <= grouping, expr


# --------------------------------------------------------------------------- Alertmanager
def test_amtool_check_config_shipped() -> None:
    result = _run([_tool("amtool"), "check-config", ALERTMANAGER_CONFIG])
    assert result.returncode == 0, result.stdout + result.stderr


def test_amtool_check_config_rewritten_for_tests(tmp_path: Path) -> None:
    """The way an end-to-end test points receivers at a local webhook stays valid and touches
    nothing but URLs, credential files and notification timing."""
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    for receiver in _load(ALERTMANAGER_CONFIG)["receivers"]:
        for webhook in receiver["webhook_configs"]:
            name = Path(webhook["http_config"]["authorization"]["credentials_file"]).name
            (secrets / name).write_text("test-token\n")
    config = alertmanager_config_for_test(
        "http://127.0.0.1:45678", secrets, {"group_wait": "1s", "group_interval": "2s", "repeat_interval": "1m"}
    )
    changed = set(_diff_paths(_load(ALERTMANAGER_CONFIG), config))
    assert changed <= {
        "/receivers/*/webhook_configs/*/url",
        "/receivers/*/webhook_configs/*/http_config/authorization/credentials_file",
        "/route/group_wait", "/route/group_interval", "/route/repeat_interval", "/route/routes/*/repeat_interval",
    }, changed
    assert all(Path(p).exists() for p in re.findall(r"credentials_file: (\S+)", yaml.safe_dump(config)))
    path = tmp_path / "alertmanager.yml"
    path.write_text(yaml.safe_dump(config))
    result = _run([_tool("amtool"), "check-config", path])
    assert result.returncode == 0, result.stdout + result.stderr
    urls = {w["url"] for r in config["receivers"] for w in r["webhook_configs"]}
    assert urls == {f"http://127.0.0.1:45678/{r}" for r in RECEIVER_OF_SEVERITY.values()}


@pytest.mark.parametrize("severity", sorted(RECEIVER_OF_SEVERITY))
def test_routes_by_severity(severity: str) -> None:
    receiver = RECEIVER_OF_SEVERITY[severity]
    result = _run([
        _tool("amtool"), "config", "routes", "test", f"--config.file={ALERTMANAGER_CONFIG}",
        f"--verify.receivers={receiver}", "alertname=Any", "instance=x:8181", f"severity={severity}",
    ])
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == receiver


def test_route_timing_and_inhibition() -> None:
    config = _load(ALERTMANAGER_CONFIG)
    route = config["route"]
    assert route["group_by"] == ["alertname", "instance"]
    assert (route["group_wait"], route["group_interval"]) == ("30s", "5m")
    repeat = {child["matchers"][0]: child.get("repeat_interval") for child in route["routes"]}
    assert repeat == {f'severity="{s}"': r for s, r in REPEAT_OF_SEVERITY.items()}
    inhibit = {
        (tuple(rule["source_matchers"]), tuple(rule["target_matchers"]), tuple(rule["equal"]))
        for rule in config["inhibit_rules"]
    }
    assert inhibit == {
        (('severity="critical"',), ('severity=~"warning|info"',), ("instance",)),
        (('severity="warning"',), ('severity="info"',), ("instance",)),
    }


def test_no_secrets_in_alertmanager_config() -> None:
    """Channel credentials live in files outside the repository, never inline."""
    config = _load(ALERTMANAGER_CONFIG)
    text = ALERTMANAGER_CONFIG.read_text()
    assert not re.search(r"^\s*(credentials|password|bearer_token|api_key|routing_key|service_key)\s*:", text, re.M)
    for receiver in config["receivers"]:
        assert receiver["webhook_configs"], receiver["name"]
        for webhook in receiver["webhook_configs"]:
            assert not re.search(r"//[^/@]+@|[?&](token|key|secret)=", webhook["url"]), webhook["url"]
            assert webhook["http_config"]["authorization"]["credentials_file"].startswith("/etc/alertmanager/secrets/")
