"""One view over every engine: the versioned alias table (ernie_otel/engines.py), the recording
rules and alerts it generates (alerts/ernie-engines.yml), and the engine row of the dashboard.

The contract test serves the recorded /metrics exposition of every engine version in the table
(tests/data/engines/<engine>-<version>.prom, written from the engines' documented metric lists)
from a small HTTP server per version -- test data playing the engine's endpoint -- and scrapes them
all through the real Collector (collector/otelcol.yaml + collector/engine-metrics.yaml, as the
stack runs it) into the real Prometheus with the generated rules loaded. For each version, every
neutral series, every engine-row panel query and every engine alert returns data exactly when the
table says the version exposes what it reads, with the values the recording says.
"""

from __future__ import annotations

import json
import re
import subprocess
import threading
import time
import urllib.parse
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml
from dashboard_queries import ENGINE_PANELS, iter_queries, load_dashboard
from helpers import REPO_ROOT, collector_env, free_port, http_get, run_process, wait_http
from prometheus_client.parser import text_string_to_metric_families
from test_alerts import PRIORITY_OF_SEVERITY, RUNBOOK_URL_PREFIX

from ernie_otel import engines as e
from ernie_otel import names

DATA = Path(__file__).parent / "data" / "engines"
RULES = REPO_ROOT / "alerts" / "ernie-engines.yml"
GENERATOR = REPO_ROOT / "scripts" / "engine_aliases.py"
ENGINE_CONFIG = REPO_ROOT / "collector" / "engine-metrics.yaml"
MODEL = "baidu/ERNIE-4.5-0.3B-PT"
# What every recording says (tests/data/engines/*.prom): an overloaded engine.
EXPECTED = {e.Figure.RUNNING: 4.0, e.Figure.WAITING: 12.0, e.Figure.KV_CACHE_USAGE: 0.95,
            e.Figure.PREFIX_CACHE_HIT: 0.25}
# The preferred ITL histogram's bucket bounds; a deprecated one in the same recording has others.
ITL_LES = {"0.01", "0.025", "0.05", "0.1", "+Inf"}
_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
# The rules' rates span 5 minutes (Prometheus divides by the whole window), the Collector scrapes the
# engine every 5 s: each scrape adds 60 scrapes' worth (5 m / 5 s) of the recording's per-scrape
# growth, so within seconds the rates reach what a full window of that engine would show.
GROWTH = 60


def exposition(version: e.EngineVersion) -> str:
    return (DATA / f"{version.key}.prom").read_text(encoding="utf-8")


def scaled(text: str, n: int) -> str:
    """The recording as the engine's n-th scrape sees it: counters and histogram counts/sums are
    per scrape in the file, so they grow by that much (times GROWTH) each time."""
    kinds: dict[str, str] = {}
    out = []
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, family, kind = line.split()
            kinds[family] = kind
        if not line.strip() or line.startswith("#"):
            out.append(line)
            continue
        name = _NAME.match(line).group(0)  # type: ignore[union-attr]
        kind = kinds.get(name) or kinds.get(re.sub(r"_(bucket|sum|count)$", "", name))
        if kind in ("counter", "histogram"):
            series, value = line.rsplit(" ", 1)
            line = f"{series} {float(value) * n * GROWTH}"
        out.append(line)
    return "\n".join(out) + "\n"


# --------------------------------------------------------------------- static: table and drift
def test_generated_rules_match_the_table() -> None:
    proc = subprocess.run([str(REPO_ROOT / ".venv" / "bin" / "python"), str(GENERATOR), "--check"],
                          capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    rules = yaml.safe_load(RULES.read_text())
    recorded = {r["record"] for g in rules["groups"] for r in g["rules"] if "record" in r}
    assert recorded == {nt.record for nt in e.NEUTRAL.values()} | set(e.QUANTILES.values())
    alerts = {r["alert"] for g in rules["groups"] for r in g["rules"] if "alert" in r}
    assert alerts == {a.name for a in e.ENGINE_ALERTS}
    # Every spelling of the table is read by some rule, and no rule reads a name outside it.
    exprs = "\n".join(r["expr"] for g in rules["groups"] for r in g["rules"])
    read = {m for m in _NAME.findall(exprs) if m.startswith(names.ENGINE_FAMILY_PREFIXES)}
    assert read == e.all_series()


def test_promtool_checks_the_rules() -> None:
    proc = subprocess.run(["promtool", "check", "rules", str(RULES)], capture_output=True, text=True,
                          timeout=60, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"SUCCESS: {sum(len(g['rules']) for g in yaml.safe_load(RULES.read_text())['groups'])} rules" in (
        proc.stdout)


def test_collector_and_prometheus_keep_every_family_of_the_table() -> None:
    config = yaml.safe_load(ENGINE_CONFIG.read_text())
    scrape = config["receivers"]["prometheus/engine"]["config"]["scrape_configs"][0]
    (keep,) = [rc for rc in scrape["metric_relabel_configs"] if rc["action"] == "keep"]
    assert keep["regex"] == "(" + "|".join(names.ENGINE_FAMILY_PREFIXES) + ").*"
    collector_keep = re.compile(keep["regex"])
    prometheus_keep = re.compile(names.PROMETHEUS_KEEP_REGEX)
    for series in e.all_series():
        assert collector_keep.fullmatch(series) and prometheus_keep.fullmatch(series), series
    assert scrape["job_name"] == names.ENGINE_JOB


def test_recordings_expose_what_the_table_says() -> None:
    """Each recorded exposition parses as Prometheus text, holds every series the table names for
    its version with the engine's label set, and nothing of another version's spellings."""
    assert {p.stem for p in DATA.glob("*.prom")} == {v.key for v in e.ALIAS_TABLE}
    every = e.all_series()
    for v in e.ALIAS_TABLE:
        samples = {s.name: s for fam in text_string_to_metric_families(exposition(v)) for s in fam.samples}
        assert v.series <= set(samples), (v.key, v.series - set(samples))
        assert not (every - v.series) & set(samples), (v.key, (every - v.series) & set(samples))
        for name in v.series:
            assert (samples[name].labels.get(v.model_label or "") == MODEL) == (v.model_label is not None), name


def test_table_is_consistent() -> None:
    assert len({v.key for v in e.ALIAS_TABLE}) == len(e.ALIAS_TABLE)
    for v in e.ALIAS_TABLE:
        assert v.source and v.engine in e.families()
        assert set(v.figures) <= set(e.Figure)
        for srcs in v.figures.values():
            # the preferred spelling first; no spelling twice
            assert srcs and len({s.names for s in srcs}) == len(srcs), v.key
    for a in e.ENGINE_ALERTS:
        for figure in a.needs:
            assert e.NEUTRAL[figure].record in a.expr or e.QUANTILES.get(figure, "") in a.expr, a.name


def test_docs_carry_the_alias_table() -> None:
    assert e.alias_markdown() in (REPO_ROOT / "docs" / "metrics.md").read_text()


def test_every_engine_alert_has_a_runbook_naming_existing_panels() -> None:
    runbooks = (REPO_ROOT / "docs" / "runbooks.md").read_text()
    panels = {p["title"] for p in load_dashboard()["panels"]}
    rules = {r["alert"]: r for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"] if "alert" in r}
    for name, rule in rules.items():
        # The conventions of alerts/ernie-alerts.yml, which Alertmanager's routing relies on.
        assert rule["labels"]["priority"] == PRIORITY_OF_SEVERITY[rule["labels"]["severity"]], name
        assert "{{ $value" in rule["annotations"]["description"], name
        assert re.fullmatch(r"\d+[smh]", rule["for"]), name
        assert rule["annotations"]["runbook_url"] == RUNBOOK_URL_PREFIX + name.lower(), name
        section = runbooks.split(f"\n## {name}\n", 1)[1].split("\n## ", 1)[0]
        named = {" ".join(t.split()) for t in re.findall(r"\*\*\"([^\"]+)\"\*\*", section)}
        assert named and named <= panels, (name, named - panels)


# ------------------------------------------------------ contract: real Collector and Prometheus
class _Engines:
    """One HTTP server per engine version, each serving its recording, counters growing per scrape."""

    def __init__(self) -> None:
        self.servers: dict[str, ThreadingHTTPServer] = {}
        for v in e.ALIAS_TABLE:
            text = exposition(v)

            class Handler(BaseHTTPRequestHandler):
                scrapes = 0
                body = text

                def do_GET(self) -> None:
                    cls = type(self)
                    cls.scrapes += 1
                    payload = scaled(cls.body, cls.scrapes).encode()
                    self.send_response(200)
                    self.send_header("Content-Type", "text/plain; version=0.0.4")
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)

                def log_message(self, *args: Any) -> None:
                    pass

            server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
            threading.Thread(target=server.serve_forever, daemon=True).start()
            self.servers[v.key] = server

    def target(self, key: str) -> str:
        return f"127.0.0.1:{self.servers[key].server_address[1]}"

    def close(self) -> None:
        for server in self.servers.values():
            server.shutdown()
            server.server_close()


@pytest.fixture
def engine_endpoints() -> Iterator[_Engines]:
    fleet = _Engines()
    yield fleet
    fleet.close()


def _query(prom: str, expr: str) -> list[dict[str, Any]]:
    code, body = http_get(f"{prom}/api/v1/query?query={urllib.parse.quote(expr)}")
    assert code == 200, (expr, body)
    return json.loads(body)["data"]["result"]


def _instances(prom: str, record: str) -> int:
    """Engine instances with a positive value of the record (every figure of the recordings is
    positive; a rate is only once the Collector has scraped a grown counter)."""
    result = _query(prom, f"count(count by (instance) ({record} > 0))")
    return int(float(result[0]["value"][1])) if result else 0


def _panel_records(expr: str) -> set[e.Figure]:
    return {f for f, nt in e.NEUTRAL.items() if nt.record in expr}


def test_every_engine_version_through_collector_and_prometheus(pipeline_bin: Path, engine_endpoints: _Engines,
                                                               tmp_path: Path) -> None:
    targets = {v.key: engine_endpoints.target(v.key) for v in e.ALIAS_TABLE}
    env = {**collector_env(), "ENGINE_METRICS_TARGETS": "[" + ", ".join(targets.values()) + "]"}
    exporter, health = env["OTELCOL_PROMETHEUS_ENDPOINT"], env["OTELCOL_HEALTH_ENDPOINT"]
    # Prometheus scrapes the Collector as deploy/prometheus.yml does (honor_labels, the keep filter)
    # and loads the generated rules; 1 s evaluation so the test need not wait minutes.
    shipped = yaml.safe_load((REPO_ROOT / "deploy" / "prometheus.yml").read_text())
    collector_job = next(j for j in shipped["scrape_configs"] if j.get("honor_labels"))
    collector_job = {**collector_job, "static_configs": [{"targets": [exporter]}]}
    config = tmp_path / "prometheus.yml"
    config.write_text(yaml.safe_dump({"global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
                                      "rule_files": [str(RULES)], "scrape_configs": [collector_job]}))
    prometheus_port = free_port()
    prom = f"http://127.0.0.1:{prometheus_port}"
    collector_cmd = [pipeline_bin / "otelcol-ernie", "--config", REPO_ROOT / "collector" / "otelcol.yaml",
                     "--config", ENGINE_CONFIG]
    with run_process(collector_cmd, tmp_path / "otelcol.log", env=env) as collector, run_process(
            ["prometheus", f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
             f"--web.listen-address=127.0.0.1:{prometheus_port}"], tmp_path / "prometheus.log"):
        wait_http(f"http://{health}/", proc=collector, timeout=60)
        wait_http(f"{prom}/-/ready", timeout=60)

        def having(figure: e.Figure) -> int:
            return sum(1 for v in e.ALIAS_TABLE if figure in v.figures)

        # Ready once every neutral series is there, rates included.
        wanted = {nt.record: having(f) for f, nt in e.NEUTRAL.items()}
        wanted |= {rec: having(f) for f, rec in e.QUANTILES.items()}
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            counts = {rec: _instances(prom, rec) for rec in wanted}
            if counts == wanted:
                break
            time.sleep(2)
        else:
            pytest.fail(f"neutral set incomplete: {counts} != {wanted}\n" + collector.log_tail())

        dashboard = load_dashboard()
        for v in e.ALIAS_TABLE:
            instance = targets[v.key]
            where = f'{{instance="{instance}"}}'
            # The engine's own families arrive with their names intact, its runtime series do not.
            raw = _query(prom, f'count by (__name__) ({{instance="{instance}", job="{names.ENGINE_JOB}"}})')
            assert {r["metric"]["__name__"] for r in raw} >= v.series, v.key
            assert not _query(prom, f'python_gc_objects_collected_total{where}'), v.key

            for figure, nt in e.NEUTRAL.items():
                result = _query(prom, nt.record + where)
                if figure not in v.figures:
                    assert result == [], (v.key, nt.record, "absent, not zero, where the engine lacks it")
                    continue
                assert result, (v.key, nt.record)
                for r in result:
                    labels = r["metric"]
                    assert labels["job"] == names.ENGINE_JOB and labels[e.ENGINE_LABEL] == v.engine, labels
                    assert labels.get(e.MODEL_LABEL) == (MODEL if v.model_label else None), labels
                    assert set(labels) <= {"__name__", *e.NEUTRAL_LABELS, "le"}, labels
                if figure in EXPECTED:
                    assert [float(r["value"][1]) for r in result] == pytest.approx([EXPECTED[figure]], rel=1e-6), (
                        v.key, nt.record, result)
                elif figure is e.Figure.PREEMPTIONS:
                    assert float(result[0]["value"][1]) > e.PREEMPTIONS_PER_S, (v.key, result)
                elif figure is e.Figure.ITL:
                    # The preferred histogram only: a deprecated one's buckets are never mixed in.
                    assert {r["metric"]["le"] for r in result} == ITL_LES, (v.key, result)
            if e.Figure.TTFT in v.figures:
                assert float(_query(prom, e.QUANTILES[e.Figure.TTFT] + where)[0]["value"][1]) > e.TTFT_P95_LIMIT_S

            # Every engine-row panel query: data exactly when the version has what it reads.
            for title, ref, expr in iter_queries(dashboard, {"engine_job": names.ENGINE_JOB,
                                                             "engine_instance": instance}):
                if title not in ENGINE_PANELS:
                    continue
                needs = _panel_records(expr)
                assert needs, (title, expr)
                has = needs <= set(v.figures)
                got = [r for r in _query(prom, expr) if r["value"][1] not in ("NaN", "+Inf", "-Inf")]
                assert bool(got) == has, (v.key, title, ref, expr, got)
                assert all(r["metric"].get("instance") == instance for r in got), (v.key, title, got)

            # Every engine alert: its expression holds (the recording is an overloaded engine)
            # exactly when the version has every figure it reads.
            for alert in e.ENGINE_ALERTS:
                fired = [r for r in _query(prom, alert.expr) if r["metric"].get("instance") == instance]
                assert bool(fired) == (set(alert.needs) <= set(v.figures)), (v.key, alert.name, fired)

        # Prometheus evaluates the alert rules themselves: each is pending (their `for` is minutes)
        # for exactly the versions that can raise it.
        code, body = http_get(f"{prom}/api/v1/alerts")
        assert code == 200
        pending = {(a["labels"]["alertname"], a["labels"]["instance"]) for a in json.loads(body)["data"]["alerts"]}
        expected = {(a.name, targets[v.key]) for v in e.ALIAS_TABLE for a in e.ENGINE_ALERTS
                    if set(a.needs) <= set(v.figures)}
        deadline = time.monotonic() + 30
        while pending != expected and time.monotonic() < deadline:
            time.sleep(1)
            pending = {(a["labels"]["alertname"], a["labels"]["instance"])
                       for a in json.loads(http_get(f"{prom}/api/v1/alerts")[1])["data"]["alerts"]}
        assert pending == expected


def test_promtool_unit_tests_of_the_engine_rules() -> None:
    """Thresholds, a healthy engine raising nothing, and the new spelling winning in a deprecation
    window, on synthetic series (alerts/tests/ernie-engines.test.yml)."""
    proc = subprocess.run(["promtool", "test", "rules", str(REPO_ROOT / "alerts" / "tests" / "ernie-engines.test.yml")],
                          capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_a_single_engine_target_still_works(pipeline_bin: Path, engine_endpoints: _Engines, tmp_path: Path) -> None:
    """ENGINE_METRICS_TARGET (one host:port, the add-on's first interface) is the default of the
    ENGINE_METRICS_TARGETS list: the Collector's exporter serves that engine's families, job and
    instance set, and nothing of the engines it was not pointed at."""
    version = next(v for v in e.ALIAS_TABLE if v.key == "vllm-0.12")
    target = engine_endpoints.target(version.key)
    env = {**collector_env(), "ENGINE_METRICS_TARGET": target}
    env.pop("ENGINE_METRICS_TARGETS", None)
    exporter, health = env["OTELCOL_PROMETHEUS_ENDPOINT"], env["OTELCOL_HEALTH_ENDPOINT"]
    collector_cmd = [pipeline_bin / "otelcol-ernie", "--config", REPO_ROOT / "collector" / "otelcol.yaml",
                     "--config", ENGINE_CONFIG]
    with run_process(collector_cmd, tmp_path / "otelcol.log", env=env) as collector:
        wait_http(f"http://{health}/", proc=collector, timeout=60)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            code, body = http_get(f"http://{exporter}/metrics")
            if code == 200 and "vllm:num_requests_running{" in body:
                break
            time.sleep(1)
        else:
            pytest.fail("the engine never reached the Collector's exporter:\n" + collector.log_tail())
    families = {s.name: s for fam in text_string_to_metric_families(body) for s in fam.samples}
    running = families["vllm:num_requests_running"]
    assert running.value == 4.0
    assert running.labels["job"] == names.ENGINE_JOB and running.labels["instance"] == target
    assert running.labels["model_name"] == MODEL
    assert version.series <= set(families)
    assert not any(name.startswith(("sglang", "fastdeploy", "tgi", "python_gc")) for name in families)
