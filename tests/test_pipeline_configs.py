"""The deployment configs, checked by the real tools that will load them.

collector/otelcol.yaml, the fleet tiers and overlays in collector/fleet/ and collector/jaeger.yaml
are validated by the binaries collector/build.sh produces, deploy/prometheus.yml by promtool, and
both servers are started on free ports (through the documented env overrides) to show the configs
do what they claim: health, scrape endpoints, metric naming, span metrics with exemplars, spans
forwarded to Jaeger, traces kept by Jaeger across a restart. The fleet's end-to-end behaviour
(routing, sampling, persistent queues) is tests/test_fleet_traces.py.
"""

from __future__ import annotations

import glob
import json
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from helpers import (
    REPO_ROOT,
    RunningProcess,
    collector_env,
    free_ports,
    http_get,
    http_post_json,
    run_process,
    wait_http,
)

from ernie_otel.stack import components

# Every test here runs a real binary (otelcol-ernie, jaeger, promtool).
pytestmark = pytest.mark.integration

OTELCOL_CONFIG = REPO_ROOT / "collector" / "otelcol.yaml"
JAEGER_CONFIG = REPO_ROOT / "collector" / "jaeger.yaml"
FLEET_DIR = REPO_ROOT / "collector" / "fleet"
ENGINE_METRICS_CONFIG = REPO_ROOT / "collector" / "engine-metrics.yaml"

# Every Collector command line the repo documents: (what, the --config files in order).
COLLECTOR_CONFIG_SETS: dict[str, tuple[Path, ...]] = {
    "single-server": (OTELCOL_CONFIG,),
    "single-server+engine-metrics": (OTELCOL_CONFIG, ENGINE_METRICS_CONFIG),
    "fleet-agent": (OTELCOL_CONFIG, FLEET_DIR / "agent.yaml"),
    "fleet-agent-secure": (OTELCOL_CONFIG, FLEET_DIR / "agent.yaml", FLEET_DIR / "secure-agent.yaml"),
    "fleet-lb": (FLEET_DIR / "lb.yaml",),
    "fleet-lb-secure": (FLEET_DIR / "lb.yaml", FLEET_DIR / "secure-lb.yaml"),
    "fleet-sampler": (FLEET_DIR / "sampler.yaml",),
    "fleet-sampler-secure": (FLEET_DIR / "sampler.yaml", FLEET_DIR / "secure-sampler.yaml"),
}
PROMETHEUS_CONFIG = REPO_ROOT / "deploy" / "prometheus.yml"
ALERTS_DIR = REPO_ROOT / "alerts"

OPENMETRICS_ACCEPT = {"Accept": "application/openmetrics-text; version=1.0.0; charset=utf-8"}

# Names used only by these probes, so they can never be confused with the real catalogue.
PROBE_SERVICE = "ernie-pipeline-probe"
PROBE_INSTANCE = "probe-instance-1"
PROBE_COUNTER = "ernie_pipeline_probe_requests"
PROBE_HISTOGRAM = "ernie_pipeline_probe_duration"


def _run(args: list[str | Path], timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(a) for a in args],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        stdin=subprocess.DEVNULL,
    )




def _jaeger_env(data_dir: Path) -> dict[str, str]:
    """Free ports, and a badger store of the test's own (never the stack's ./.stack/jaeger)."""
    return components.jaeger_env(free_ports(), data_dir / "jaeger-data")


def _otlp_metrics_payload() -> bytes:
    now = time.time_ns()
    start = now - 10_000_000_000
    resource = {
        "attributes": [
            {"key": "service.name", "value": {"stringValue": PROBE_SERVICE}},
            {"key": "service.instance.id", "value": {"stringValue": PROBE_INSTANCE}},
        ]
    }
    attrs = [{"key": "gen_ai.operation.name", "value": {"stringValue": "chat"}}]
    metrics = [
        {
            "name": PROBE_COUNTER,
            "unit": "{request}",
            "sum": {
                "aggregationTemporality": 2,
                "isMonotonic": True,
                "dataPoints": [
                    {
                        "asInt": "3",
                        "startTimeUnixNano": str(start),
                        "timeUnixNano": str(now),
                        "attributes": attrs,
                    }
                ],
            },
        },
        {
            "name": PROBE_HISTOGRAM,
            "unit": "s",
            "histogram": {
                "aggregationTemporality": 2,
                "dataPoints": [
                    {
                        "count": "2",
                        "sum": 0.7,
                        "bucketCounts": ["1", "1", "0"],
                        "explicitBounds": [0.25, 1.0],
                        "startTimeUnixNano": str(start),
                        "timeUnixNano": str(now),
                        "attributes": attrs,
                    }
                ],
            },
        },
    ]
    payload = {
        "resourceMetrics": [
            {
                "resource": resource,
                "scopeMetrics": [{"scope": {"name": "ernie_otel.tests"}, "metrics": metrics}],
            }
        ]
    }
    return json.dumps(payload).encode()


def _otlp_trace_payload(trace_id: str) -> bytes:
    now = time.time_ns()
    span = {
        "traceId": trace_id,
        "spanId": "00f067aa0ba902b7",
        "name": "POST /v1/chat/completions",
        "kind": 2,  # SERVER
        "startTimeUnixNano": str(now - 120_000_000),
        "endTimeUnixNano": str(now),
        "attributes": [
            {"key": "http.request.method", "value": {"stringValue": "POST"}},
            {"key": "http.route", "value": {"stringValue": "/v1/chat/completions"}},
            {"key": "http.response.status_code", "value": {"intValue": "200"}},
            {"key": "gen_ai.operation.name", "value": {"stringValue": "chat"}},
        ],
        "status": {},
    }
    payload = {
        "resourceSpans": [
            {
                "resource": {
                    "attributes": [
                        {"key": "service.name", "value": {"stringValue": PROBE_SERVICE}},
                        {"key": "service.instance.id", "value": {"stringValue": PROBE_INSTANCE}},
                    ]
                },
                "scopeSpans": [{"scope": {"name": "ernie_otel.tests"}, "spans": [span]}],
            }
        ]
    }
    return json.dumps(payload).encode()


def _wait_for_line(url: str, pattern: str, timeout: float, headers: dict[str, str] | None = None) -> str:
    """Poll a metrics endpoint until a line matches `pattern`; returns the whole exposition."""
    regex = re.compile(pattern, re.MULTILINE)
    deadline = time.monotonic() + timeout
    body = ""
    while time.monotonic() < deadline:
        try:
            code, body = http_get(url, headers=headers)
            if code == 200 and regex.search(body):
                return body
        except OSError:
            pass
        time.sleep(0.5)
    raise AssertionError(f"no line matching {pattern!r} at {url} within {timeout}s:\n{body[-3000:]}")


def _assert_running(proc: RunningProcess) -> None:
    assert proc.proc.poll() is None, f"exited with {proc.proc.returncode}:\n{proc.log_tail()}"


@pytest.fixture
def collector(pipeline_bin: Path, tmp_path: Path) -> Iterator[tuple[RunningProcess, dict[str, str]]]:
    env = collector_env()
    with run_process(
        [pipeline_bin / "otelcol-ernie", "--config", OTELCOL_CONFIG],
        tmp_path / "otelcol.log",
        env=env,
    ) as proc:
        try:
            wait_http(f"http://{env['OTELCOL_HEALTH_ENDPOINT']}/", timeout=30, proc=proc)
        except AssertionError as err:
            raise AssertionError(f"{err}\n{proc.log_tail()}") from None
        yield proc, env


# --- static validation -----------------------------------------------------------------------


def _config_args(files: tuple[Path, ...]) -> list[str | Path]:
    args: list[str | Path] = []
    for path in files:
        args += ["--config", path]
    return args


def test_collector_config_validates(pipeline_bin: Path) -> None:
    result = _run([pipeline_bin / "otelcol-ernie", "validate", "--config", OTELCOL_CONFIG])
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_fleet_file_is_in_a_validated_set() -> None:
    """A new tier or overlay in collector/fleet/ cannot escape the validation below."""
    listed = {path for files in COLLECTOR_CONFIG_SETS.values() for path in files}
    on_disk = set(FLEET_DIR.glob("*.yaml"))
    assert on_disk, f"no configs in {FLEET_DIR}"
    assert on_disk <= listed, f"not validated: {sorted(str(p) for p in on_disk - listed)}"


@pytest.mark.parametrize("name", sorted(COLLECTOR_CONFIG_SETS))
def test_collector_config_sets_validate(pipeline_bin: Path, name: str) -> None:
    result = _run([pipeline_bin / "otelcol-ernie", "validate", *_config_args(COLLECTOR_CONFIG_SETS[name])])
    assert result.returncode == 0, result.stdout + result.stderr


def test_fleet_overlay_changes_only_where_traces_go(pipeline_bin: Path) -> None:
    """The agent is the single-server Collector with traces sent to the lb tier: span metrics are
    still computed from every span there (before any sampling), metrics and logs are untouched."""
    result = _run([
        pipeline_bin / "otelcol-ernie", "print-config", "--mode", "unredacted",
        *_config_args(COLLECTOR_CONFIG_SETS["fleet-agent"]),
    ])
    if result.returncode != 0 and "unknown command" in result.stderr:
        pytest.fail(f"this otelcol-ernie has no print-config; update the test:\n{result.stderr}")
    assert result.returncode == 0, result.stdout + result.stderr
    merged = yaml.safe_load(result.stdout)
    single = yaml.safe_load(OTELCOL_CONFIG.read_text())
    pipelines = merged["service"]["pipelines"]
    # otelcol.yaml's traces exporters with the lb tier for Jaeger: every span-metrics connector stays.
    single_exporters = single["service"]["pipelines"]["traces"]["exporters"]
    assert pipelines["traces"]["exporters"] == [
        "otlp_grpc/lb" if e == "otlp_grpc/jaeger" else e for e in single_exporters]
    assert "span_metrics" in single_exporters
    assert pipelines["traces"]["processors"] == single["service"]["pipelines"]["traces"]["processors"]
    assert pipelines["metrics"] == single["service"]["pipelines"]["metrics"]
    assert pipelines["logs"] == single["service"]["pipelines"]["logs"]
    # print-config fills in defaults, so compare what otelcol.yaml sets, not the whole section.
    dims = merged["connectors"]["span_metrics"]["dimensions"]
    assert [d["name"] for d in dims] == [d["name"] for d in single["connectors"]["span_metrics"]["dimensions"]]
    assert merged["exporters"]["otlp_grpc/lb"]["sending_queue"]["storage"] == "file_storage/queue"


def test_collector_has_manifest_components(pipeline_bin: Path) -> None:
    result = _run([pipeline_bin / "otelcol-ernie", "components"])
    assert result.returncode == 0, result.stderr
    names = set(re.findall(r"^\s*-?\s*name:\s*(\S+)\s*$", result.stdout, re.MULTILINE))
    expected = {
        "otlp",
        "prometheus",
        "memory_limiter",
        "batch",
        "resource",
        "otlp_grpc",
        "otlp_http",
        "debug",
        "span_metrics",
        "health_check",
        # Fleet profile (collector/fleet/): every one of these must also ship in otelcol-contrib.
        "load_balancing",
        "tail_sampling",
        "k8s_attributes",
        "attributes",
        "filter",
        "transform",
        "file_storage",
        "bearertokenauth",
        "prometheus_remote_write",
    }
    assert expected <= names, f"missing {sorted(expected - names)} in:\n{result.stdout}"


def test_jaeger_config_validates(pipeline_bin: Path) -> None:
    jaeger = pipeline_bin / "jaeger"
    if "validate" not in _run([jaeger, "--help"]).stdout:
        pytest.fail("this jaeger build has no `validate` subcommand; update the test")
    result = _run([jaeger, "validate", "--config", JAEGER_CONFIG])
    assert result.returncode == 0, result.stdout + result.stderr


def test_prometheus_config_passes_promtool(tmp_path: Path) -> None:
    promtool = shutil.which("promtool")
    assert promtool, "promtool not found (Debian package `prometheus`)"
    rule_files = sorted(glob.glob(str(ALERTS_DIR / "ernie-*.yml")))
    if rule_files:
        result = _run([promtool, "check", "config", PROMETHEUS_CONFIG])
        output = result.stdout + result.stderr
        assert result.returncode == 0, output
        # Proves rule_files resolves relative to deploy/, i.e. the real rules are checked too.
        assert f"SUCCESS: {len(rule_files)} rule files found" in output, output
    else:
        # alerts/ has no rules yet: check a copy laid out the same way with one empty rules
        # file, so the relative rule_files glob is still exercised.
        (tmp_path / "deploy").mkdir()
        (tmp_path / "alerts").mkdir()
        shutil.copy(PROMETHEUS_CONFIG, tmp_path / "deploy" / "prometheus.yml")
        (tmp_path / "alerts" / "ernie-empty.yml").write_text("groups: []\n")
        result = _run([promtool, "check", "config", tmp_path / "deploy" / "prometheus.yml"])
        output = result.stdout + result.stderr
        assert result.returncode == 0, output
        assert "SUCCESS: 1 rule files found" in output, output


# --- running binaries ------------------------------------------------------------------------


def test_collector_serves_health_and_metrics(
    collector: tuple[RunningProcess, dict[str, str]],
) -> None:
    proc, env = collector
    code, _ = http_get(f"http://{env['OTELCOL_PROMETHEUS_ENDPOINT']}/metrics")
    assert code == 200, proc.log_tail()
    own = _wait_for_line(f"http://127.0.0.1:{env['OTELCOL_TELEMETRY_PORT']}/metrics", r"^otelcol_process_uptime", 15)
    assert "otelcol_" in own
    _assert_running(proc)


def test_collector_exports_otlp_metrics_with_prometheus_names(
    collector: tuple[RunningProcess, dict[str, str]],
) -> None:
    proc, env = collector
    base = f"http://{env['OTELCOL_OTLP_HTTP_ENDPOINT']}"
    code, body = http_post_json(f"{base}/v1/metrics", _otlp_metrics_payload())
    assert code == 200, f"{code} {body}\n{proc.log_tail()}"

    url = f"http://{env['OTELCOL_PROMETHEUS_ENDPOINT']}/metrics"
    # Counter gets _total, unit "s" gets _seconds, annotation units ({request}) add nothing;
    # job/instance come from service.name/service.instance.id.
    labels = rf'job="{PROBE_SERVICE}"'
    exposition = _wait_for_line(url, rf"^{PROBE_COUNTER}_total\{{.*{labels}", 15)
    assert re.search(rf'^{PROBE_COUNTER}_total\{{[^}}]*instance="{PROBE_INSTANCE}"', exposition, re.M)
    assert re.search(rf"^{PROBE_HISTOGRAM}_seconds_bucket\{{[^}}]*le=\"0.25\"", exposition, re.M), exposition
    # No resource_to_telemetry_conversion: resource attributes stay on target_info only.
    counter_line = next(line for line in exposition.splitlines() if line.startswith(f"{PROBE_COUNTER}_total{{"))
    assert "service_name" not in counter_line, counter_line

    # The logs pipeline exists, so opentelemetry-instrument's default log export is accepted.
    code, body = http_post_json(f"{base}/v1/logs", b'{"resourceLogs": []}')
    assert code == 200, f"{code} {body}"
    _assert_running(proc)


def test_collector_span_metrics_with_exemplars(
    collector: tuple[RunningProcess, dict[str, str]],
) -> None:
    proc, env = collector
    trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"
    code, body = http_post_json(f"http://{env['OTELCOL_OTLP_HTTP_ENDPOINT']}/v1/traces", _otlp_trace_payload(trace_id))
    assert code == 200, f"{code} {body}\n{proc.log_tail()}"
    url = f"http://{env['OTELCOL_PROMETHEUS_ENDPOINT']}/metrics"
    # metrics_flush_interval is 5s; allow a few flushes.
    exposition = _wait_for_line(
        url, r"^traces_span_metrics_duration_seconds_bucket\{.*trace_id=", 30, headers=OPENMETRICS_ACCEPT
    )
    assert trace_id in exposition, exposition[-3000:]
    assert re.search(
        r'^traces_span_metrics_calls_total\{[^}]*gen_ai_operation_name="chat"[^}]*\}',
        exposition,
        re.M,
    ), exposition[-3000:]
    _assert_running(proc)


def test_jaeger_starts_on_overridden_ports(pipeline_bin: Path, tmp_path: Path) -> None:
    env = _jaeger_env(tmp_path)
    with run_process([pipeline_bin / "jaeger", "--config", JAEGER_CONFIG], tmp_path / "jaeger.log", env=env) as proc:
        try:
            body = wait_http(f"http://{env['JAEGER_QUERY_HTTP_ENDPOINT']}/api/services", timeout=30, proc=proc)
            assert "data" in json.loads(body)
            wait_http(f"http://{env['JAEGER_HEALTH_ENDPOINT']}/status", timeout=10, proc=proc)
            wait_http(f"http://127.0.0.1:{env['JAEGER_METRICS_PORT']}/metrics", timeout=10, proc=proc)
        except AssertionError as err:
            raise AssertionError(f"{err}\n{proc.log_tail()}") from None
        _assert_running(proc)


def test_collector_forwards_spans_to_jaeger(pipeline_bin: Path, tmp_path: Path) -> None:
    jaeger_env = _jaeger_env(tmp_path)
    otel_env = collector_env()
    otel_env["OTELCOL_JAEGER_ENDPOINT"] = jaeger_env["JAEGER_OTLP_GRPC_ENDPOINT"]
    query = f"http://{jaeger_env['JAEGER_QUERY_HTTP_ENDPOINT']}"
    trace_id = "5bf92f3577b34da6a3ce929d0e0e4737"
    with (
        run_process(
            [pipeline_bin / "jaeger", "--config", JAEGER_CONFIG], tmp_path / "jaeger.log", env=jaeger_env
        ) as jaeger,
        run_process(
            [pipeline_bin / "otelcol-ernie", "--config", OTELCOL_CONFIG],
            tmp_path / "otelcol.log",
            env=otel_env,
        ) as otelcol,
    ):

        def logs() -> str:
            return f"--- jaeger ---\n{jaeger.log_tail()}\n--- otelcol ---\n{otelcol.log_tail()}"

        try:
            wait_http(f"{query}/api/services", timeout=30, proc=jaeger)
            wait_http(f"http://{otel_env['OTELCOL_HEALTH_ENDPOINT']}/", timeout=30, proc=otelcol)
        except AssertionError as err:
            raise AssertionError(f"{err}\n{logs()}") from None
        code, body = http_post_json(
            f"http://{otel_env['OTELCOL_OTLP_HTTP_ENDPOINT']}/v1/traces",
            _otlp_trace_payload(trace_id),
        )
        assert code == 200, f"{code} {body}\n{logs()}"
        deadline = time.monotonic() + 30
        found = False
        while time.monotonic() < deadline and not found:
            code, body = http_get(f"{query}/api/traces/{trace_id}")
            found = code == 200 and PROBE_SERVICE in body
            if not found:
                time.sleep(0.5)
        assert found, f"trace {trace_id} not in Jaeger after 30s (last {code}: {body[:300]})\n{logs()}"
        services = json.loads(http_get(f"{query}/api/services")[1])["data"]
        assert PROBE_SERVICE in services
        # enable_tracing: false — Jaeger must not trace its own query API.
        assert "jaeger" not in services, services


def _post_trace_to_jaeger(env: dict[str, str], trace_id: str) -> None:
    code, body = http_post_json(f"http://{env['JAEGER_OTLP_HTTP_ENDPOINT']}/v1/traces", _otlp_trace_payload(trace_id))
    assert code == 200, f"{code} {body}"


def _wait_trace(query: str, trace_id: str, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        code, body = http_get(f"{query}/api/traces/{trace_id}")
        if code == 200 and PROBE_SERVICE in body:
            return True
        time.sleep(0.5)
    return False


def test_jaeger_keeps_traces_across_restart(pipeline_bin: Path, tmp_path: Path) -> None:
    """Badger on disk by default: a trace written before a restart is still there after it (so an
    exemplar Prometheus kept through the restart still opens its trace)."""
    env = _jaeger_env(tmp_path)
    query = f"http://{env['JAEGER_QUERY_HTTP_ENDPOINT']}"
    trace_id = "6bf92f3577b34da6a3ce929d0e0e4738"
    for run in ("before", "after"):
        with run_process(
            [pipeline_bin / "jaeger", "--config", JAEGER_CONFIG], tmp_path / f"jaeger-{run}.log", env=env
        ) as proc:
            try:
                wait_http(f"{query}/api/services", timeout=30, proc=proc)
            except AssertionError as err:
                raise AssertionError(f"{err}\n{proc.log_tail()}") from None
            if run == "before":
                _post_trace_to_jaeger(env, trace_id)
                assert _wait_trace(query, trace_id, 30), proc.log_tail()
            else:
                # Read at once: nothing was re-sent, the trace must come from the store on disk.
                code, body = http_get(f"{query}/api/traces/{trace_id}")
                assert code == 200 and PROBE_SERVICE in body, f"{code} {body[:300]}\n{proc.log_tail()}"
            _assert_running(proc)
    assert (tmp_path / "jaeger-data" / "keys").is_dir(), "JAEGER_BADGER_DIR was not used"


def _env_default(config: Path, var: str) -> str:
    """The default of ${env:VAR:-default} in a config (every use must agree)."""
    defaults = set(re.findall(r"\$\{env:" + re.escape(var) + r":-([^}]*)\}", config.read_text()))
    assert len(defaults) == 1, f"{config.name}: {var} defaults {defaults}"
    return defaults.pop()


def test_fleet_config_defaults_are_the_port_table() -> None:
    """The configs cannot import ernie_otel/ports.py; this keeps their defaults equal to it."""
    from ernie_otel.ports import HOST, fleet_port

    lb, sampler, agent = FLEET_DIR / "lb.yaml", FLEET_DIR / "sampler.yaml", FLEET_DIR / "agent.yaml"
    assert _env_default(lb, "OTELCOL_OTLP_GRPC_ENDPOINT") == f"{HOST}:{fleet_port('lb_otlp_grpc')}"
    assert _env_default(lb, "OTELCOL_HEALTH_ENDPOINT") == f"{HOST}:{fleet_port('lb_health')}"
    assert _env_default(lb, "OTELCOL_TELEMETRY_PORT") == str(fleet_port("lb_telemetry"))
    assert _env_default(agent, "OTELCOL_LB_ENDPOINT") == f"{HOST}:{fleet_port('lb_otlp_grpc')}"
    assert _env_default(sampler, "OTELCOL_OTLP_GRPC_ENDPOINT") == f"{HOST}:{fleet_port('sampler_otlp_grpc')}"
    assert _env_default(sampler, "OTELCOL_HEALTH_ENDPOINT") == f"{HOST}:{fleet_port('sampler_health')}"
    assert _env_default(sampler, "OTELCOL_TELEMETRY_PORT") == str(fleet_port("sampler_telemetry"))
    samplers = yaml.safe_load(_env_default(lb, "OTELCOL_SAMPLER_ENDPOINTS"))
    assert samplers == [f"{HOST}:{fleet_port('sampler_otlp_grpc', k)}" for k in range(2)]
