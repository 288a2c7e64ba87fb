"""How many samples per second one Thanos receiver ingests here: a real Prometheus 2.42 scrapes a
target of SERIES series every second and remote-writes (snappy protobuf) straight to one ingesting
receiver; the receiver's own appended-samples counter gives the rate it sustained, and the writer's
lag shows whether it kept up. Writer and receiver share this machine's cores, so the number is a
floor for a receiver with a host of its own.
"""

from __future__ import annotations

import os
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml
from helpers import free_port, http_get, run_process, wait_http
from thanos_fleet import HOST, ReceivePorts, build_thanos, metric_value, receive_args, wait_receive_start

from ernie_otel import names

# ERNIE_OTEL_INGEST_SERIES raises the offered load to look for the ceiling (docs/pipeline.md).
SERIES = int(os.environ.get("ERNIE_OTEL_INGEST_SERIES", "20000"))
MEASURE_S = 20
MIN_SAMPLES_PER_S = 5_000


class _Exposition(BaseHTTPRequestHandler):
    body = b""

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/plain; version=0.0.4")
        self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, *args: Any) -> None:
        pass


def test_one_receiver_ingest_rate(tmp_path: Path, record_property: Any) -> None:
    thanos = build_thanos()
    name = names.QUEUE_LENGTH.prom_name
    _Exposition.body = "".join(
        f'{name}{{{names.ATTR_MODEL}="m{i % 50}",shard_key="{i}"}} {i % 7}\n' for i in range(SERIES)
    ).encode()
    server = ThreadingHTTPServer((HOST, 0), _Exposition)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    ports = ReceivePorts()
    prom_port = free_port()
    config = tmp_path / "prometheus.yml"
    target = f"{HOST}:{server.server_address[1]}"
    config.write_text(yaml.safe_dump({
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s"},
        "scrape_configs": [{"job_name": "load", "static_configs": [{"targets": [target]}]}],
        "remote_write": [{"url": f"http://{HOST}:{ports.remote_write}/api/v1/receive",
                          "queue_config": {"max_samples_per_send": 5000, "capacity": 20000}}],
    }))
    try:
        receiver = receive_args(thanos, ports, tmp_path / "receive", replica="r0")
        writer = ["prometheus", f"--config.file={config}", f"--web.listen-address={HOST}:{prom_port}",
                  f"--storage.tsdb.path={tmp_path / 'prom'}", "--log.level=warn"]
        wait_receive_start()
        with run_process(receiver, tmp_path / "receive.log") as rcv, \
             run_process(writer, tmp_path / "prom.log") as prom:
            wait_http(f"http://{HOST}:{ports.http}/-/ready", timeout=60, proc=rcv)
            wait_http(f"http://{HOST}:{prom_port}/-/ready", timeout=60, proc=prom)

            def appended() -> float:
                return metric_value(http_get(f"http://{HOST}:{ports.http}/metrics")[1],
                                    "prometheus_tsdb_head_samples_appended_total", required=False)
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and appended() < SERIES * 3:
                time.sleep(1)
            a0, t0 = appended(), time.monotonic()
            time.sleep(MEASURE_S)
            a1, t1 = appended(), time.monotonic()
            rate = (a1 - a0) / (t1 - t0)
            prom_metrics = http_get(f"http://{HOST}:{prom_port}/metrics")[1]
            failed = metric_value(prom_metrics, "prometheus_remote_storage_samples_failed_total")
            lag = (metric_value(prom_metrics, "prometheus_remote_storage_highest_timestamp_in_seconds")
                   - metric_value(prom_metrics, "prometheus_remote_storage_queue_highest_sent_timestamp_seconds"))
            offered = metric_value(prom_metrics, "prometheus_tsdb_head_samples_appended_total")
    finally:
        server.shutdown()
        server.server_close()
    record_property("receiver_samples_per_s", round(rate))
    print(f"\none receiver ingested {rate:.0f} samples/s ({SERIES} series every 1 s offered; "
          f"writer lag {lag:.1f} s, failed {failed:.0f}, writer appended {offered:.0f})")
    assert failed == 0
    assert rate >= MIN_SAMPLES_PER_S, rate
    if lag > 10:
        pytest.fail(f"the receiver fell {lag:.0f} s behind at {rate:.0f} samples/s")
