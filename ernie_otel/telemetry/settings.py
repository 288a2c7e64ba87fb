"""The telemetry settings of a process: read from the environment once, checked, then immutable.

``TelemetrySettings.from_env()`` reads the standard ``OTEL_*`` variables ernie-serve acts on and
ERNIE-OTel's own, with ernie-serve's defaults where it differs from the SDK's (5 s metric export,
``service.name=ernie-serve``, stable HTTP semantic conventions). The SDK set-up
(:mod:`.setup`), the ``opentelemetry-instrument`` configurator (:mod:`.distro`) and the recorder
take their values from this object instead of from ``os.environ``. A new setting (SLO targets,
say) is one more field here: its variable, default, converter and check in one place.
"""

from __future__ import annotations

import os
import urllib.parse
from collections.abc import Callable, Mapping, MutableMapping
from dataclasses import dataclass
from types import MappingProxyType

from .. import names
from ..config import Config, at_least, between, from_sources, option, to_bool, to_float, to_int, to_lower
from ..kinds import EXEMPLARS_FOLLOW_SAMPLING_ENV
from .keep import KeepRule

SAMPLERS = ("always_on", "always_off", "traceidratio", "parentbased_always_on", "parentbased_always_off",
            "parentbased_traceidratio")
OTLP_EXPORTERS = ("otlp", "otlp_proto_grpc", "otlp_proto_http")
# "ernie_prometheus": the Prometheus reader, which --metrics-port (not this variable) switches.
TRACES_EXPORTERS = (*OTLP_EXPORTERS, "console", "none")
METRICS_EXPORTERS = (*OTLP_EXPORTERS, "console", "none", "ernie_prometheus")
LOGS_EXPORTERS = (*OTLP_EXPORTERS, "console", "none")
SEMCONV_ENV = "OTEL_SEMCONV_STABILITY_OPT_IN"

# GenAI instrumentations of newer semantic conventions take these values for the same variable.
_CAPTURE_ON = ("span_only", "event_only", "span_and_event")
_CAPTURE_OFF = ("no_content",)


def _exporters(allowed: tuple[str, ...]) -> Callable[[str], tuple[str, ...]]:
    def convert(text: str) -> tuple[str, ...]:
        chosen = tuple(name.strip().lower() for name in text.split(",") if name.strip())
        for name in chosen:
            if name not in allowed:
                raise ValueError(f"unsupported exporter {name!r} (supported: {', '.join(allowed)})")
        return tuple(name for name in chosen if name != "none")

    return convert


def _capture(text: str) -> bool:
    value = text.strip().lower()
    if value in _CAPTURE_ON:
        return True
    if value in _CAPTURE_OFF:
        return False
    return to_bool(text)


_HTTP_OPT_INS = ("http", "http/dup")


def _opt_in(text: str) -> str:
    """The comma-separated opt-in list, with ``http`` added unless an HTTP value is there already:
    a user who opts in to the GenAI conventions must not lose the stable HTTP metrics (seconds)."""
    values = [v.strip() for v in text.split(",") if v.strip()]
    if not any(v in _HTTP_OPT_INS for v in values):
        values.insert(0, "http")
    return ",".join(values)


def genai_semconv(opt_in: str) -> names.GenAiSemconv:
    """Which GenAI metric names to emit; ``/dup`` wins over the plain value, as for ``http/dup``."""
    values = {v.strip() for v in opt_in.split(",")}
    if names.SEMCONV_GENAI_DUP in values:
        return names.GenAiSemconv.BOTH
    if names.SEMCONV_GENAI_LATEST in values:
        return names.GenAiSemconv.LATEST
    return names.GenAiSemconv.OLD


def _buckets(text: str) -> Mapping[str, tuple[float, ...]]:
    # names.load_bucket_overrides checks names against the catalogue and the bounds' order.
    loaded = names.load_bucket_overrides(text)
    return MappingProxyType({key: tuple(float(b) for b in bounds) for key, bounds in loaded.items()})


def _no_buckets() -> Mapping[str, tuple[float, ...]]:
    return MappingProxyType({})


def resource_service_name(raw: str) -> str | None:
    """``service.name`` from an ``OTEL_RESOURCE_ATTRIBUTES`` value (``k=v,k=v``, %-encoded)."""
    for pair in raw.split(","):
        key, sep, value = pair.partition("=")
        if sep and key.strip() == "service.name" and value.strip():
            return urllib.parse.unquote(value.strip())
    return None


@dataclass(frozen=True)
class TelemetrySettings(Config):
    sdk_disabled: bool = option(False, env="OTEL_SDK_DISABLED", convert=to_bool,
                                help="no telemetry at all (no-op providers)")
    service_name: str = option(names.SERVICE_NAME, env="OTEL_SERVICE_NAME",
                               help="service.name (else the one in OTEL_RESOURCE_ATTRIBUTES)")
    otlp_endpoint: str | None = option(None, env="OTEL_EXPORTER_OTLP_ENDPOINT",
                                       help="standalone: setting it turns OTLP export on")
    otlp_protocol: str = option("grpc", env="OTEL_EXPORTER_OTLP_PROTOCOL", convert=to_lower,
                                choices=("grpc", "http/protobuf"), help="OTLP transport")
    traces_exporter: tuple[str, ...] | None = option(None, env="OTEL_TRACES_EXPORTER",
                                                     convert=_exporters(TRACES_EXPORTERS),
                                                     help="span exporters (unset: OTLP under opentelemetry-"
                                                     "instrument, else only with an OTLP endpoint)")
    metrics_exporter: tuple[str, ...] | None = option(None, env="OTEL_METRICS_EXPORTER",
                                                      convert=_exporters(METRICS_EXPORTERS),
                                                      help="metric exporters besides the Prometheus reader")
    logs_exporter: tuple[str, ...] | None = option(None, env="OTEL_LOGS_EXPORTER", convert=_exporters(LOGS_EXPORTERS),
                                                   help="log record exporters (unset: like the span exporters)")
    # The SDK's default is 60 s; dashboards would lag a minute behind. 5 s is the scrape interval.
    metric_export_interval_ms: int = option(5000, env="OTEL_METRIC_EXPORT_INTERVAL", convert=to_int,
                                            check=at_least(1), help="OTLP metric export interval, ms")
    sampler: str = option("parentbased_always_on", env="OTEL_TRACES_SAMPLER", convert=to_lower, choices=SAMPLERS,
                          help="trace sampler")
    sampler_arg: float | None = option(None, env="OTEL_TRACES_SAMPLER_ARG", convert=to_float, check=between(0, 1),
                                       help="sampling ratio of the traceidratio samplers (default 1)")
    capture_content: bool = option(False, env=names.CAPTURE_CONTENT_ENV, convert=_capture,
                                   help="record prompt and completion text on spans (opt-in)")
    bucket_overrides: Mapping[str, tuple[float, ...]] = option(
        env=names.BUCKETS_ENV, convert=_buckets, factory=_no_buckets,
        help="JSON object: histogram (OTel or Prometheus name) -> bucket bounds")
    fastapi_excluded_urls: str = option("health,metrics", env="OTEL_PYTHON_FASTAPI_EXCLUDED_URLS",
                                        help="URLs without HTTP server spans and metrics")
    # Seconds (http.server.request.duration), not the old milliseconds histogram promtool rejects.
    # A comma-separated list: gen_ai_latest_experimental (latest GenAI names only) or
    # gen_ai_latest_experimental/dup (old and latest) switch the GenAI metrics (docs/metrics.md).
    semconv_opt_in: str = option("http", env=SEMCONV_ENV, convert=_opt_in,
                                 help="semantic-convention stability opt-in (comma-separated; http is always kept)")
    # The fleet's tail-sampling policies (collector/fleet/sampler.yaml): the same variables and
    # defaults, so the recorder attaches exemplars only to traces the samplers keep.
    exemplars_follow_sampling: bool = option(False, env=EXEMPLARS_FOLLOW_SAMPLING_ENV, convert=to_bool,
                                             help="exemplars only for traces the fleet's tail sampler keeps")
    sampling_baseline_percent: float = option(10.0, env="OTELCOL_SAMPLING_BASELINE_PERCENT", convert=to_float,
                                              check=between(0, 100), help="tail sampler's baseline percent")
    sampling_hash_salt: str = option("ernie-otel", env="OTELCOL_SAMPLING_HASH_SALT",
                                     help="tail sampler's baseline hash salt")
    sampling_latency_ms: int = option(10000, env="OTELCOL_SAMPLING_LATENCY_MS", convert=to_int, check=at_least(0),
                                      help="tail sampler's slow-request threshold, ms")
    sampling_ttft_ms: int = option(2000, env="OTELCOL_SAMPLING_TTFT_MS", convert=to_int, check=at_least(0),
                                   help="tail sampler's slow time-to-first-token threshold, ms")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> TelemetrySettings:
        """Read and check the environment once; a bad value raises ConfigError naming its variable."""
        env = os.environ if environ is None else environ
        given: dict[str, object] = {}
        if not env.get("OTEL_SERVICE_NAME", "").strip():
            from_resource = resource_service_name(env.get("OTEL_RESOURCE_ATTRIBUTES", ""))
            if from_resource is not None:
                given["service_name"] = from_resource
        return from_sources(cls, given, env)

    @property
    def genai_semconv(self) -> names.GenAiSemconv:
        return genai_semconv(self.semconv_opt_in)

    @property
    def ratio(self) -> float:
        return 1.0 if self.sampler_arg is None else self.sampler_arg

    @property
    def keep_rule(self) -> KeepRule | None:
        """The tail sampler's rule when exemplars follow it; None: every sampled trace is kept."""
        if not self.exemplars_follow_sampling:
            return None
        return KeepRule(self.sampling_baseline_percent, self.sampling_hash_salt, self.sampling_latency_ms,
                        self.sampling_ttft_ms)


def publish_semconv_opt_in(settings: TelemetrySettings, environ: MutableMapping[str, str] | None = None) -> None:
    """Hand the semantic-convention opt-in to the instrumentation libraries.

    The one value that goes through the environment: the OTel instrumentation libraries (FastAPI's
    among them) read ``OTEL_SEMCONV_STABILITY_OPT_IN`` from ``os.environ`` and offer no other way
    in. Only entry points call this (ernie-serve's ``main`` and the ``opentelemetry-instrument``
    distro), before any instrumentation is set up.
    """
    (os.environ if environ is None else environ)[SEMCONV_ENV] = settings.semconv_opt_in
