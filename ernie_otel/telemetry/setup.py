"""SDK set-up for the ``ernie-serve`` entry point -- the only place that touches global providers.

Two ways to run:
1. ``opentelemetry-instrument ernie-serve``: the ernie_otel distro/configurator built SDK
   providers before our code ran; we use them as they are (exactly one SDK) and find the
   Prometheus reader the configurator added.
2. ``ernie-serve`` alone: we build the SDK here -- a Prometheus reader for ``--metrics-port``,
   and OTLP export of metrics and spans only when configured (``--otlp-endpoint`` or the
   standard ``OTEL_*`` variables).
``OTEL_SDK_DISABLED=true`` switches all of it off.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any

from opentelemetry import metrics, trace
from opentelemetry.metrics import MeterProvider, NoOpMeterProvider
from opentelemetry.trace import NoOpTracerProvider, TracerProvider

from .. import names
from .prometheus import ErniePrometheusReader, find_reader

log = logging.getLogger(__name__)

# Defaults for both modes; an explicit OTEL_* variable always wins.
ENV_DEFAULTS = {
    "OTEL_SERVICE_NAME": names.SERVICE_NAME,
    # Seconds, not the old milliseconds histogram (promtool rejects the latter).
    "OTEL_SEMCONV_STABILITY_OPT_IN": "http",
    "OTEL_PYTHON_FASTAPI_EXCLUDED_URLS": "health,metrics",
    # The SDK default (60 s) makes dashboards lag a minute behind; 5 s matches the scrape interval.
    "OTEL_METRIC_EXPORT_INTERVAL": "5000",
}


def sdk_disabled() -> bool:
    return os.environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true"


@dataclass
class Telemetry:
    meter_provider: MeterProvider
    tracer_provider: TracerProvider
    prometheus: ErniePrometheusReader | None
    mode: str  # "disabled" | "instrumented" | "standalone"

    def shutdown(self) -> None:
        for provider in (self.meter_provider, self.tracer_provider):
            shutdown = getattr(provider, "shutdown", None)
            if shutdown is not None:
                try:
                    shutdown()
                except Exception as exc:  # an exporter that cannot flush must not block exit
                    log.warning("telemetry shutdown: %r", exc)


def _is_sdk(provider: Any, kind: str) -> bool:
    module = type(provider).__module__
    return module.startswith(f"opentelemetry.sdk.{kind}")


def configure(otlp_endpoint: str | None = None, prometheus: bool = True) -> Telemetry:
    """Return the providers ernie-serve uses, building an SDK only if none exists yet."""
    for key, value in ENV_DEFAULTS.items():
        os.environ.setdefault(key, value)
    if sdk_disabled():
        return Telemetry(NoOpMeterProvider(), NoOpTracerProvider(), None, "disabled")

    meter_provider = metrics.get_meter_provider()
    tracer_provider = trace.get_tracer_provider()
    if _is_sdk(meter_provider, "metrics") and _is_sdk(tracer_provider, "trace"):
        reader = find_reader(meter_provider)
        if reader is None:
            log.warning("the SDK was configured without the ernie_prometheus reader; --metrics-port is off "
                        "(set OTEL_PYTHON_CONFIGURATOR=ernie_otel)")
        return Telemetry(meter_provider, tracer_provider, reader, "instrumented")

    from opentelemetry.sdk.metrics import MeterProvider as SdkMeterProvider
    from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider as SdkTracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    resource = Resource.create({})
    # Only when --metrics-port serves it: every histogram record is aggregated once per reader.
    reader = ErniePrometheusReader() if prometheus else None
    readers: list[Any] = [reader] if reader is not None else []
    tracer = SdkTracerProvider(resource=resource)
    if otlp_endpoint:
        os.environ.setdefault("OTEL_EXPORTER_OTLP_ENDPOINT", otlp_endpoint)
    otlp_wanted = otlp_endpoint or os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
    if otlp_wanted or "otlp" in os.environ.get("OTEL_METRICS_EXPORTER", ""):
        from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter

        readers.append(PeriodicExportingMetricReader(OTLPMetricExporter()))
    if otlp_wanted or "otlp" in os.environ.get("OTEL_TRACES_EXPORTER", ""):
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        tracer.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    meter = SdkMeterProvider(resource=resource, metric_readers=readers)
    metrics.set_meter_provider(meter)
    trace.set_tracer_provider(tracer)
    return Telemetry(meter, tracer, reader, "standalone")


def _exporter_endpoint(exporter: Any) -> str | None:
    return getattr(exporter, "_endpoint", None)


def describe_telemetry(telemetry: Telemetry | None) -> dict[str, Any]:
    """What the running SDK exports where -- shown on /stats so a user can check a deployment."""
    from .prometheus import ErniePrometheusReader, metric_readers

    if telemetry is None:
        return {"mode": "none"}
    info: dict[str, Any] = {"mode": telemetry.mode, "prometheus_readers": len(ErniePrometheusReader.instances),
                            "metric_readers": [], "span_exporters": []}
    for reader in metric_readers(telemetry.meter_provider):
        exporter = getattr(reader, "_exporter", None)
        info["metric_readers"].append({"reader": type(reader).__name__,
                                       "exporter": type(exporter).__name__ if exporter is not None else None,
                                       "endpoint": _exporter_endpoint(exporter)})
    active = getattr(telemetry.tracer_provider, "_active_span_processor", None)
    for processor in getattr(active, "_span_processors", ()) or ():
        exporter = getattr(processor, "span_exporter", None) or getattr(
            getattr(processor, "_batch_processor", None), "_exporter", None)
        info["span_exporters"].append({"processor": type(processor).__name__,
                                       "exporter": type(exporter).__name__ if exporter is not None else None,
                                       "endpoint": _exporter_endpoint(exporter)})
    resource = getattr(telemetry.meter_provider, "_sdk_config", None)
    if resource is not None:
        info["service_name"] = resource.resource.attributes.get("service.name")
    return info
