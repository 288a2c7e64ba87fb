"""The ``opentelemetry-instrument`` distro and configurator of ernie-otel.

With no ``OTEL_*`` variable set, ``opentelemetry-instrument ernie-serve`` exports metrics and
spans over OTLP/gRPC to localhost:4317 with ``service.name=ernie-serve``, and the configurator
adds the ``ernie_prometheus`` reader so ``--metrics-port`` keeps serving Prometheus.
Where the opentelemetry-distro package is installed too, pick ours with
``OTEL_PYTHON_DISTRO=ernie_otel OTEL_PYTHON_CONFIGURATOR=ernie_otel``.
"""

from __future__ import annotations

import os
from typing import Any

from opentelemetry.instrumentation.distro import BaseDistro
from opentelemetry.sdk._configuration import _OTelSDKConfigurator

from .setup import ENV_DEFAULTS

PROMETHEUS_EXPORTER = "ernie_prometheus"

DISTRO_DEFAULTS = {
    **ENV_DEFAULTS,
    "OTEL_TRACES_EXPORTER": "otlp",
    "OTEL_METRICS_EXPORTER": "otlp",
    # The Collector config has no logs pipeline; logs stay on stderr unless asked for.
    "OTEL_LOGS_EXPORTER": "none",
    "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
    # ernie-serve instruments its FastAPI app itself, without the per-chunk send/receive spans
    # the auto-instrumentation would add to every streamed token.
    "OTEL_PYTHON_DISABLED_INSTRUMENTATIONS": "fastapi",
}


class ErnieDistro(BaseDistro):  # type: ignore[misc]
    def _configure(self, **kwargs: Any) -> None:
        for key, value in DISTRO_DEFAULTS.items():
            os.environ.setdefault(key, value)


class ErnieConfigurator(_OTelSDKConfigurator):  # type: ignore[misc]
    def _configure(self, **kwargs: Any) -> None:
        exporters = list(kwargs.get("metric_exporter_names") or [])
        kwargs["metric_exporter_names"] = [*exporters, PROMETHEUS_EXPORTER]
        super()._configure(**kwargs)
