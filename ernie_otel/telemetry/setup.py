"""SDK set-up for the ``ernie-serve`` entry point -- the only place that builds SDK providers.

Two ways to run:
1. ``opentelemetry-instrument ernie-serve``: the ernie_otel configurator built the SDK with
   :func:`build_sdk` before our code ran (OTLP export on by default); we use those providers as
   they are (exactly one SDK) and find the Prometheus reader in them.
2. ``ernie-serve`` alone: :func:`configure` builds the SDK here -- a Prometheus reader for
   ``--metrics-port``, and OTLP export of metrics and spans only when asked for
   (``--otlp-endpoint``, ``OTEL_EXPORTER_OTLP_ENDPOINT`` or ``OTEL_*_EXPORTER``).
Logs follow the spans' rule: an SDK ``LoggerProvider`` with a ``BatchLogRecordProcessor`` per
configured log exporter (``OTEL_LOGS_EXPORTER``; unset: OTLP wherever spans go over OTLP), which
:func:`.logs.install` bridges Python logging into.
``OTEL_SDK_DISABLED=true`` switches all of it off. Every value comes from a
:class:`~.settings.TelemetrySettings`; nothing here reads or writes ``os.environ``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from opentelemetry import _logs, metrics, trace
from opentelemetry.metrics import MeterProvider, NoOpMeterProvider
from opentelemetry.trace import NoOpTracerProvider, TracerProvider

from ..config import ConfigError
from .prometheus import ErniePrometheusReader, find_reader
from .settings import OTLP_EXPORTERS, TelemetrySettings

if TYPE_CHECKING:
    from opentelemetry.sdk._logs import LoggerProvider as SdkLoggerProvider
    from opentelemetry.sdk._logs.export import LogRecordExporter
    from opentelemetry.sdk.metrics import MeterProvider as SdkMeterProvider
    from opentelemetry.sdk.metrics.export import MetricExporter
    from opentelemetry.sdk.trace import TracerProvider as SdkTracerProvider
    from opentelemetry.sdk.trace.export import SpanExporter
    from opentelemetry.sdk.trace.sampling import Sampler

log = logging.getLogger(__name__)


@dataclass
class Telemetry:
    meter_provider: MeterProvider
    tracer_provider: TracerProvider
    prometheus: ErniePrometheusReader | None
    mode: str  # "disabled" | "instrumented" | "standalone"
    settings: TelemetrySettings | None = None
    # An SDK LoggerProvider when logs are exported (OTLP or console), else None.
    logger_provider: _logs.LoggerProvider | None = None

    def shutdown(self) -> None:
        for provider in (self.meter_provider, self.tracer_provider, self.logger_provider):
            shutdown = getattr(provider, "shutdown", None)
            if shutdown is not None:
                try:
                    shutdown()
                except Exception as exc:  # an exporter that cannot flush must not block exit
                    log.warning("telemetry shutdown: %r", exc)


def _is_sdk(provider: Any, kind: str) -> bool:
    module = type(provider).__module__
    return module.startswith(f"opentelemetry.sdk.{kind}")


def build_sampler(settings: TelemetrySettings) -> Sampler:
    from opentelemetry.sdk.trace import sampling

    ratio = sampling.TraceIdRatioBased(settings.ratio)
    return {
        "always_on": sampling.ALWAYS_ON,
        "always_off": sampling.ALWAYS_OFF,
        "traceidratio": ratio,
        "parentbased_always_on": sampling.ParentBased(sampling.ALWAYS_ON),
        "parentbased_always_off": sampling.ParentBased(sampling.ALWAYS_OFF),
        "parentbased_traceidratio": sampling.ParentBased(ratio),
    }[settings.sampler]


def _span_exporter(name: str, settings: TelemetrySettings, endpoint: str | None) -> SpanExporter:
    if name == "console":
        from opentelemetry.sdk.trace.export import ConsoleSpanExporter

        return ConsoleSpanExporter()
    if _use_http(name, settings):
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpSpanExporter

        http_span: SpanExporter = HttpSpanExporter(endpoint=endpoint)
        return http_span
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

    return OTLPSpanExporter(endpoint=endpoint)


def _metric_exporter(name: str, settings: TelemetrySettings, endpoint: str | None) -> MetricExporter:
    if name == "console":
        from opentelemetry.sdk.metrics.export import ConsoleMetricExporter

        return ConsoleMetricExporter()
    if _use_http(name, settings):
        from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter as HttpMetricExporter

        http_metric: MetricExporter = HttpMetricExporter(endpoint=endpoint)
        return http_metric
    from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter

    return OTLPMetricExporter(endpoint=endpoint)


def _log_exporter(name: str, settings: TelemetrySettings, endpoint: str | None) -> LogRecordExporter:
    if name == "console":
        from opentelemetry.sdk._logs.export import ConsoleLogRecordExporter

        return ConsoleLogRecordExporter()
    if _use_http(name, settings):
        from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter as HttpLogExporter

        http_log: LogRecordExporter = HttpLogExporter(endpoint=endpoint)
        return http_log
    from opentelemetry.exporter.otlp.proto.grpc._log_exporter import OTLPLogExporter

    return OTLPLogExporter(endpoint=endpoint)


def _use_http(name: str, settings: TelemetrySettings) -> bool:
    http = name == "otlp_proto_http" or (name == "otlp" and settings.otlp_protocol == "http/protobuf")
    if http:
        try:
            import opentelemetry.exporter.otlp.proto.http  # noqa: F401
        except ImportError:
            raise ConfigError("OTEL_EXPORTER_OTLP_PROTOCOL: OTLP/HTTP needs the opentelemetry-exporter-otlp-proto-http "
                              "package; install it or use grpc") from None
    return http


def _exporter_names(chosen: tuple[str, ...] | None, otlp: bool, endpoint: str | None) -> tuple[str, ...]:
    """The configured exporters (unset: OTLP when ``otlp``); an --otlp-endpoint adds OTLP to any list.
    The OTLP names stand for one exporter."""
    names = list(chosen if chosen is not None else (("otlp",) if otlp else ()))
    if endpoint:
        names.append("otlp")
    out: list[str] = []
    for name in names:
        if name == "ernie_prometheus" or name in out:
            continue
        if name in OTLP_EXPORTERS and any(n in OTLP_EXPORTERS for n in out):
            continue
        out.append(name)
    return tuple(out)


def exemplar_filter_kwargs(settings: TelemetrySettings) -> dict[str, Any]:
    """The MeterProvider's exemplar filter: the SDK's (trace-based unless OTEL_METRICS_EXEMPLAR_FILTER
    says otherwise), or, when exemplars follow the fleet's tail sampling, exemplars only for the
    traces the recorder says are kept -- no other instrumentation's exemplar may name a dropped trace."""
    if settings.keep_rule is None:
        return {}
    from .exemplar_filter import KeptTracesExemplarFilter

    return {"exemplar_filter": KeptTracesExemplarFilter()}


def build_sdk(settings: TelemetrySettings, *, prometheus: bool, otlp: bool, otlp_endpoint: str | None = None,
              resource_attributes: dict[str, str] | None = None,
              ) -> tuple[SdkMeterProvider, SdkTracerProvider, ErniePrometheusReader | None]:
    """Build SDK meter and tracer providers from ``settings`` and make them the global ones.

    ``otlp``: export over OTLP when the settings name no exporters (the zero-code default).
    ``otlp_endpoint`` (the --otlp-endpoint flag) wins over the exporters' own variables.
    """
    from opentelemetry.sdk.metrics import MeterProvider as SdkMeterProvider
    from opentelemetry.sdk.metrics.export import MetricReader, PeriodicExportingMetricReader
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider as SdkTracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    metric_exporters = _exporter_names(settings.metrics_exporter, otlp, otlp_endpoint)
    span_exporters = _exporter_names(settings.traces_exporter, otlp, otlp_endpoint)
    log_exporters = _exporter_names(settings.logs_exporter, otlp, otlp_endpoint)
    for name in (*metric_exporters, *span_exporters, *log_exporters):
        _use_http(name, settings)  # a missing optional exporter fails before anything is built
    # Resource.create merges OTEL_RESOURCE_ATTRIBUTES; service.name was resolved by the settings.
    resource = Resource.create({**(resource_attributes or {}), "service.name": settings.service_name})
    # Only when --metrics-port serves it: every histogram record is aggregated once per reader.
    reader = ErniePrometheusReader() if prometheus else None
    readers: list[MetricReader] = [reader] if reader is not None else []
    for name in metric_exporters:
        readers.append(PeriodicExportingMetricReader(_metric_exporter(name, settings, otlp_endpoint),
                                                     export_interval_millis=settings.metric_export_interval_ms))
    tracer = SdkTracerProvider(resource=resource, sampler=build_sampler(settings))
    for name in span_exporters:
        tracer.add_span_processor(BatchSpanProcessor(_span_exporter(name, settings, otlp_endpoint)))
    meter = SdkMeterProvider(resource=resource, metric_readers=readers, **exemplar_filter_kwargs(settings))
    metrics.set_meter_provider(meter)
    trace.set_tracer_provider(tracer)
    if log_exporters:
        _logs.set_logger_provider(build_logger_provider(settings, log_exporters, otlp_endpoint, resource))
    return meter, tracer, reader


def build_logger_provider(settings: TelemetrySettings, exporters: tuple[str, ...], endpoint: str | None,
                          resource: Any) -> SdkLoggerProvider:
    """An SDK LoggerProvider exporting through ``exporters`` in batches (off the logging thread:
    a log call only appends to the processor's queue)."""
    from opentelemetry.sdk._logs import LoggerProvider as SdkLoggerProvider
    from opentelemetry.sdk._logs.export import BatchLogRecordProcessor

    provider = SdkLoggerProvider(resource=resource)
    for name in exporters:
        provider.add_log_record_processor(BatchLogRecordProcessor(_log_exporter(name, settings, endpoint)))
    return provider


def sdk_logger_provider() -> _logs.LoggerProvider | None:
    """The global LoggerProvider if it is the SDK's (built by build_sdk), else None."""
    provider = _logs.get_logger_provider()
    return provider if _is_sdk(provider, "_logs") else None


def configure(settings: TelemetrySettings, *, otlp_endpoint: str | None = None, prometheus: bool = True) -> Telemetry:
    """Return the providers ernie-serve uses, building an SDK only if none exists yet."""
    if settings.sdk_disabled:
        return Telemetry(NoOpMeterProvider(), NoOpTracerProvider(), None, "disabled", settings)

    meter_provider = metrics.get_meter_provider()
    tracer_provider = trace.get_tracer_provider()
    if _is_sdk(meter_provider, "metrics") and _is_sdk(tracer_provider, "trace"):
        reader = find_reader(meter_provider)
        if reader is None:
            log.warning("the SDK was configured without the ernie_prometheus reader; --metrics-port is off "
                        "(set OTEL_PYTHON_CONFIGURATOR=ernie_otel)")
        return Telemetry(meter_provider, tracer_provider, reader, "instrumented", settings, sdk_logger_provider())

    otlp = settings.otlp_endpoint is not None
    meter, tracer, reader = build_sdk(settings, prometheus=prometheus, otlp=otlp, otlp_endpoint=otlp_endpoint)
    exports_logs = bool(_exporter_names(settings.logs_exporter, otlp, otlp_endpoint))
    return Telemetry(meter, tracer, reader, "standalone", settings, sdk_logger_provider() if exports_logs else None)


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
    multi = getattr(telemetry.logger_provider, "_multi_log_record_processor", None)
    info["log_exporters"] = []
    for processor in getattr(multi, "_log_record_processors", ()) or ():
        exporter = getattr(processor, "_exporter", None) or getattr(
            getattr(processor, "_batch_processor", None), "_exporter", None)
        info["log_exporters"].append({"processor": type(processor).__name__,
                                      "exporter": type(exporter).__name__ if exporter is not None else None,
                                      "endpoint": _exporter_endpoint(exporter)})
    resource = getattr(telemetry.meter_provider, "_sdk_config", None)
    if resource is not None:
        info["service_name"] = resource.resource.attributes.get("service.name")
    return info
