"""The ``opentelemetry-instrument`` distro and configurator of ernie-otel.

With no ``OTEL_*`` variable set, ``opentelemetry-instrument ernie-serve`` exports metrics and
spans over OTLP/gRPC to the exporters' default endpoint (the local Collector's OTLP/gRPC port), with
``service.name=ernie-serve``, and the configurator adds the ``ernie_prometheus`` reader so
``--metrics-port`` keeps serving Prometheus. The configurator builds that SDK with the same
:func:`~.setup.build_sdk` as standalone ``ernie-serve``, from the same settings object; it hands
values to the SDK explicitly instead of writing defaults into the environment.
Where the opentelemetry-distro package is installed too, pick ours with
``OTEL_PYTHON_DISTRO=ernie_otel OTEL_PYTHON_CONFIGURATOR=ernie_otel``.
"""

from __future__ import annotations

import logging
from typing import Any

# The module is marked `# type: ignore` upstream: mypy sees none of its names.
from opentelemetry.instrumentation.distro import BaseDistro  # type: ignore[attr-defined]

from ..config import ConfigError
from .settings import TelemetrySettings, publish_semconv_opt_in

log = logging.getLogger(__name__)

PROMETHEUS_EXPORTER = "ernie_prometheus"
# ernie-serve instruments its FastAPI app itself, without the per-chunk send/receive spans the
# auto-instrumentation would add to every streamed token.
SELF_INSTRUMENTED = frozenset({"fastapi"})
# Resource attribute of the auto-instrumentation version (what the SDK's own configurator adds).
AUTO_VERSION_ATTRIBUTE = "telemetry.auto.version"


def _settings(report: bool) -> TelemetrySettings | None:
    try:
        return TelemetrySettings.from_env()
    except ConfigError as exc:
        # ernie-serve's main reads the same settings and exits 2 with this message; the
        # configurator says it too, for programs other than ernie-serve.
        if report:
            log.error("ernie_otel: telemetry not configured: %s", exc)
        return None


class ErnieDistro(BaseDistro):  # type: ignore[misc]
    def _configure(self, **kwargs: Any) -> None:
        settings = _settings(report=False)
        if settings is not None:
            publish_semconv_opt_in(settings)  # before any instrumentation library reads it

    def load_instrumentor(self, entry_point: Any, **kwargs: Any) -> None:
        if entry_point.name in SELF_INSTRUMENTED:
            return
        super().load_instrumentor(entry_point, **kwargs)


class ErnieConfigurator:
    """Builds the SDK for ``opentelemetry-instrument`` (entry point group opentelemetry_configurator)."""

    def configure(self, **kwargs: Any) -> None:
        settings = _settings(report=True)
        if settings is None or settings.sdk_disabled:
            return
        from .setup import build_sdk

        version = kwargs.get("auto_instrumentation_version")
        build_sdk(settings, prometheus=True, otlp=True,
                  resource_attributes={AUTO_VERSION_ATTRIBUTE: str(version)} if version else None)
