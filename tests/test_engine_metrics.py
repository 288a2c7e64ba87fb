"""The Collector's optional engine scrape (collector/engine-metrics.yaml): an engine's native
Prometheus families reach Prometheus through the real Collector with their names intact."""

from __future__ import annotations

import json
import threading
import time
import urllib.parse
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml
from helpers import REPO_ROOT, collector_env, free_port, http_get, run_process, wait_http

from ernie_otel import names

EXPOSITION = (Path(__file__).parent / "data" / "engine_metrics.prom").read_bytes()


@pytest.fixture
def engine_endpoint() -> Iterator[str]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; version=0.0.4")
            self.end_headers()
            self.wfile.write(EXPOSITION)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def _query(prom: str, expr: str) -> list[dict[str, Any]]:
    code, body = http_get(f"{prom}/api/v1/query?query={urllib.parse.quote(expr)}")
    assert code == 200, body
    return json.loads(body)["data"]["result"]


def test_engine_families_reach_prometheus_with_names_intact(pipeline_bin: Path, engine_endpoint: str,
                                                            tmp_path: Path) -> None:
    env = {**collector_env(), "ENGINE_METRICS_TARGET": engine_endpoint}
    exporter, health = env["OTELCOL_PROMETHEUS_ENDPOINT"], env["OTELCOL_HEALTH_ENDPOINT"]
    prometheus_port = free_port()
    # Prometheus scrapes the Collector as deploy/prometheus.yml does: honor_labels, the keep filter.
    shipped = yaml.safe_load((REPO_ROOT / "deploy" / "prometheus.yml").read_text())
    collector_job = next(j for j in shipped["scrape_configs"] if j.get("honor_labels"))
    collector_job = {**collector_job, "static_configs": [{"targets": [exporter]}]}
    config = tmp_path / "prometheus.yml"
    config.write_text(yaml.safe_dump({"global": {"scrape_interval": "1s"}, "scrape_configs": [collector_job]}))
    prom = f"http://127.0.0.1:{prometheus_port}"
    collector_cmd = [pipeline_bin / "otelcol-ernie", "--config", REPO_ROOT / "collector" / "otelcol.yaml",
                     "--config", REPO_ROOT / "collector" / "engine-metrics.yaml"]
    with run_process(collector_cmd, tmp_path / "otelcol.log", env=env) as collector, run_process(
            ["prometheus", f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
             f"--web.listen-address=127.0.0.1:{prometheus_port}"], tmp_path / "prometheus.log"):
        wait_http(f"http://{health}/", proc=collector.proc, timeout=60)
        wait_http(f"{prom}/-/ready", timeout=60)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if _query(prom, "fastdeploy:num_requests_running"):
                break
            time.sleep(1)
        else:
            pytest.fail("engine families never reached Prometheus:\n" + collector.log_tail())
        running = _query(prom, "fastdeploy:num_requests_running")
        assert float(running[0]["value"][1]) == 3.0
        assert running[0]["metric"]["job"] == names.ENGINE_JOB
        assert running[0]["metric"]["instance"] == engine_endpoint
        assert float(_query(prom, "fastdeploy:request_success_total")[0]["value"][1]) == 17.0
        assert float(_query(prom, "fastdeploy:gpu_cache_usage_perc")[0]["value"][1]) == pytest.approx(0.42)
        assert {r["metric"]["le"] for r in _query(prom, "fastdeploy:time_to_first_token_seconds_bucket")} >= {
            "0.05", "0.1", "0.5", "+Inf"}
        vllm = _query(prom, "vllm:kv_cache_usage_perc")
        assert vllm and vllm[0]["metric"]["model_name"] == "baidu/ERNIE-4.5-0.3B-PT"
        for family in (names.ENGINE_RUNNING[1], names.ENGINE_WAITING[0], names.ENGINE_TTFT[0] + "_count"):
            assert _query(prom, family), family
        # the engine's runtime series are filtered out by the add-on
        assert _query(prom, "python_gc_objects_collected_total") == []
