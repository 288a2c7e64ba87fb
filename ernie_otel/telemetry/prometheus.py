"""A Prometheus metric reader with its own registry, served on ``--metrics-port``.

Its own registry (not prometheus_client's global one) keeps the ``python_*``/``process_*``
collectors of prometheus_client out, so the families Prometheus sees directly are the ones it
sees through the Collector. Registered as the ``ernie_prometheus`` metrics exporter entry point,
so ``opentelemetry-instrument`` builds it into its SDK and ernie-serve finds it there.
"""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, ClassVar

from opentelemetry.exporter.prometheus import PrometheusMetricReader
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder


class ErniePrometheusReader(PrometheusMetricReader):
    instances: ClassVar[list[ErniePrometheusReader]] = []

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        super().__init__(registry=self.registry)
        ErniePrometheusReader.instances.append(self)

    def render(self, accept: str = "") -> tuple[bytes, str]:
        encoder, content_type = choose_encoder(accept)
        return encoder(self.registry), content_type


def metric_readers(meter_provider: Any) -> list[Any]:
    """The readers of an SDK MeterProvider (a private attribute: pinned SDK range, checked by tests)."""
    return list(getattr(meter_provider, "_metric_readers", ()) or ())


def find_reader(meter_provider: Any) -> ErniePrometheusReader | None:
    """The ErniePrometheusReader inside an SDK MeterProvider, if it has one."""
    for reader in metric_readers(meter_provider):
        if isinstance(reader, ErniePrometheusReader):
            return reader
    return None


def serve_metrics(reader: ErniePrometheusReader, host: str, port: int) -> ThreadingHTTPServer:
    """Serve ``/metrics`` (text format, or OpenMetrics when asked) from a daemon thread."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path.split("?")[0] not in ("/metrics", "/"):
                self.send_error(404)
                return
            body, content_type = reader.render(self.headers.get("Accept", ""))
            self.send_response(200)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:  # scrapes every few seconds: no access log
            pass

    server = ThreadingHTTPServer((host, port), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="ernie-metrics", daemon=True).start()
    return server
