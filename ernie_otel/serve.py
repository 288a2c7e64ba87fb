"""``ernie-serve``: the entry point -- its configuration, its command line and ``main``.

Kept apart from the server so that ``ernie-serve --help`` and a bad flag answer at once: this
module imports neither torch, transformers, the engine nor the server; ``main`` imports the server
only after the command line and the telemetry settings are parsed and valid.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import signal
import sys
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .config import (
    Config,
    ConfigError,
    OneLineParser,
    above,
    at_least,
    exit_bad_config,
    http_url,
    load_or_exit,
    option,
    parser_for,
    port_number,
    to_float,
    to_int,
    to_lower,
)
from .ports import DEFAULT_PORTS, HOST
from .slo import NO_TARGETS, SLO_ENV, SloTargets, merge, ms_target, targets_from_json
from .tenancy import DEFAULT_MAX_TENANTS, DEFAULT_TENANT_HEADER, TenantResolver, load_pricing, tenant_list

if TYPE_CHECKING:
    from .telemetry.recorder import Recorder

log = logging.getLogger("ernie_otel.serve")

PROG = "ernie-serve"
DEFAULT_MODEL = "baidu/ERNIE-4.5-0.3B-PT"
LOG_LEVELS = ("critical", "error", "warning", "info", "debug")


def _objective(value: float) -> None:
    if not 0 < value < 1:
        raise ValueError(f"must be between 0 and 1 (exclusive), e.g. 0.99, not {value}")


def _pricing_file(path: str) -> None:
    load_pricing(path)  # a file that does not parse stops start-up with its one-line reason


@dataclass(frozen=True)
class ServeConfig(Config):
    model: str = option(DEFAULT_MODEL, flag="--model", help="local model directory, Hugging Face id (loaded offline "
                        "from the HF cache), or 'tiny' for the built-in small random-weight ERNIE-4.5")
    served_model_name: str | None = option(None, flag="--served-model-name",
                                           help="model name in the API and in metric labels")
    host: str = option(HOST, flag="--host", env="ERNIE_SERVE_HOST", help="address to bind")
    port: int = option(DEFAULT_PORTS["serve"], flag="--port", convert=to_int, check=port_number,
                       help="OpenAI API port")
    metrics_port: int = option(DEFAULT_PORTS["serve_metrics"], flag="--metrics-port", convert=to_int,
                               check=port_number, help="Prometheus /metrics port (0: off)")
    max_model_len: int = option(2048, flag="--max-model-len", convert=to_int, check=at_least(1),
                                help="prompt + output token limit")
    max_num_seqs: int = option(0, flag="--max-num-seqs", convert=to_int, check=at_least(0),
                               help="requests running at once (0: 8 on a CPU, 64 on CUDA)")
    max_queue_len: int = option(64, flag="--max-queue-len", convert=to_int, check=at_least(0),
                                help="requests waiting; beyond: 429")
    max_num_batched_tokens: int = option(512, flag="--max-num-batched-tokens", convert=to_int, check=at_least(0),
                                         help="tokens per engine step, running decodes first, then chunks of new "
                                         "prompts (chunked prefill: admitting requests does not stall streams); "
                                         "0: whole prompts at once")
    device: str = option("auto", flag="--device", choices=("auto", "cpu", "cuda"), help="where the model runs")
    dtype: str = option("auto", flag="--dtype", choices=("auto", "float32", "bfloat16", "float16"),
                        help="weights' dtype (auto: bfloat16 on CUDA, and on CPUs with native bf16 (AVX512-BF16/AMX) "
                        "for models of 50M parameters or more; else float32)")
    cpu_kernel: str = option("auto", flag="--cpu-kernel", choices=("auto", "torch"),
                             help="bf16 products of few rows on a CPU (decode steps, short prefill chunks): auto: "
                             "ernie-serve's own AVX-512 kernel, compiled on first use with the C compiler here "
                             "(else torch's); torch: torch's")
    torch_threads: int = option(0, flag="--torch-threads", convert=to_int, check=at_least(0),
                                help="CPU threads for inference (0: 1 for small models, else all cores, "
                                "leaving one to the server beyond two)")
    api_key: str | None = option(None, flag="--api-key", env="ERNIE_SERVE_API_KEY",
                                 help="require this bearer token")
    api_key_file: str | None = option(None, flag="--api-key-file", env="ERNIE_SERVE_API_KEY_FILE",
                                      help="accept the keys in this file, one 'key' or 'name:key' a line; "
                                      "read again on SIGHUP")
    shutdown_grace: float = option(30.0, flag="--shutdown-grace", convert=to_float, check=at_least(0),
                                   help="seconds requests in flight may take to finish after SIGTERM; "
                                   "then (or at a second SIGTERM) they are cancelled")
    default_max_tokens: int = option(256, flag="--default-max-tokens", convert=to_int, check=at_least(1),
                                     help="output limit when a request names none")
    max_request_bytes: int = option(1 << 20, flag="--max-request-bytes", convert=to_int, check=at_least(1),
                                    help="request body limit (413)")
    otlp_endpoint: str | None = option(None, flag="--otlp-endpoint", help="export metrics and spans over OTLP/gRPC "
                                       "to this endpoint (standalone mode; the OTEL_* variables work too)")
    upstream: str | None = option(None, flag="--upstream", check=http_url, help="gateway mode: forward the OpenAI "
                                  "API to this OpenAI-compatible server (FastDeploy, vLLM, ...) instead of loading "
                                  "a model")
    upstream_timeout: float = option(120.0, flag="--upstream-timeout", convert=to_float, check=above(0),
                                     help="seconds to wait for the upstream (504 beyond)")
    upstream_api_key: str | None = option(None, flag="--upstream-api-key", env="ERNIE_UPSTREAM_API_KEY",
                                          help="bearer token for the upstream")
    slo_ttft: float | None = option(None, flag="--slo-ttft", convert=ms_target, metavar="MS",
                                    help="SLO target: time to first token, milliseconds")
    slo_tpot: float | None = option(None, flag="--slo-tpot", convert=ms_target, metavar="MS",
                                    help="SLO target: time per output token after the first, milliseconds")
    slo_e2e: float | None = option(None, flag="--slo-e2e", convert=ms_target, metavar="MS",
                                   help="SLO target: end-to-end latency, milliseconds")
    # RUF009 takes option() for a shared default; the default here is None (SloTargets is frozen anyway).
    slo_targets: SloTargets | None = option(  # noqa: RUF009
        None, flag="--slo-targets", env=SLO_ENV, convert=targets_from_json, metavar="JSON",
        help='SLO targets as JSON, e.g. {"ttft_ms": 500, "tpot_ms": 50, "e2e_ms": 20000}; '
        "--slo-ttft/--slo-tpot/--slo-e2e win")
    slo_objective: float = option(0.99, flag="--slo-objective", convert=to_float, check=_objective,
                                  help="share of judged requests that must meet their targets (error budget: 1 - it)")
    tenant_header: str = option(DEFAULT_TENANT_HEADER, flag="--tenant-header", convert=to_lower,
                                help="request header naming the tenant (values off --tenants count as 'other')")
    tenants: frozenset[str] | None = option(None, flag="--tenants", env="ERNIE_TENANTS", convert=tenant_list,
                                     metavar="A,B,...", help="allow-listed tenant names (label values)")
    max_tenants: int = option(DEFAULT_MAX_TENANTS, flag="--max-tenants", convert=to_int, check=at_least(1),
                              help="hard cap on distinct tenant label values; beyond it: 'other'")
    pricing_file: str | None = option(None, flag="--pricing-file", env="ERNIE_PRICING_FILE", check=_pricing_file,
                                      help="JSON prices per 1M input/output tokens or per GPU-hour, by model: "
                                      "turns the cost counter on")
    response_metrics: bool = option(False, flag="--response-metrics", kind="switch",
                                    help="allow requests to ask for their own timings (\"return_metrics\": true)")
    access_log: bool = option(False, flag="--access-log", kind="switch",
                              help="uvicorn's plain HTTP line per request (the JSON request log: --request-log)")
    request_log: str = option("stderr", flag="--request-log", env="ERNIE_REQUEST_LOG", metavar="stderr|off|PATH",
                              help="where the JSON line per request goes (logger ernie_otel.access; also exported "
                              "over OTLP when logs are)")
    log_level: str = option("info", flag="--log-level", convert=to_lower, choices=LOG_LEVELS, help="log level")


    def slo(self) -> SloTargets:
        """The model's SLO targets: the JSON form, with the single flags winning."""
        return merge(self.slo_targets or NO_TARGETS, self.slo_ttft, self.slo_tpot, self.slo_e2e)


def build_parser() -> OneLineParser:
    return parser_for(ServeConfig, prog=PROG,
                      description="OpenAI-compatible ERNIE-4.5 server with OpenTelemetry metrics and traces.")


def discover_upstream_model(upstream: str, api_key: str | None, timeout: float = 30.0) -> str:
    import httpx

    base = upstream.rstrip("/").removesuffix("/v1")
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    deadline = time.monotonic() + timeout
    while True:
        try:
            r = httpx.get(base + "/v1/models", headers=headers, timeout=5)
            r.raise_for_status()
            return str(r.json()["data"][0]["id"])
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def _fail(message: str) -> int:
    print(f"{PROG}: {message}", file=sys.stderr)
    return 2


def main(argv: list[str] | None = None) -> int:
    config, _ = load_or_exit(build_parser(), ServeConfig, argv, os.environ)
    from .telemetry.settings import TelemetrySettings, publish_semconv_opt_in

    try:
        settings = TelemetrySettings.from_env(os.environ)
    except ConfigError as exc:
        exit_bad_config(PROG, exc)
    logging.basicConfig(level=config.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per upstream request is noise
    if config.request_log not in ("stderr", "off"):
        try:
            open(config.request_log, "a").close()  # a path that cannot be written fails now, not per request
        except OSError as exc:
            return _fail(f"--request-log {config.request_log}: {exc.strerror or exc}")
    if config.upstream is None and config.model != "tiny":
        from .backends.loading import ModelUnavailableError, resolve_model_path

        try:
            resolve_model_path(config.model)  # fail before binding ports, with one clear message
        except ModelUnavailableError as exc:
            return _fail(str(exc))

    if not config.max_num_seqs:  # 0: by device (the recorder's cost per slot and the backend agree)
        from .backends import default_max_num_seqs

        config = dataclasses.replace(config, max_num_seqs=default_max_num_seqs(config.device, config.upstream))

    from .auth import KeyFileError, KeyRing

    try:
        keys = KeyRing(config.api_key, config.api_key_file)
    except KeyFileError as exc:
        return _fail(str(exc))

    if config.upstream is not None and config.served_model_name is None:
        try:
            name = discover_upstream_model(config.upstream, config.upstream_api_key)
        except Exception as exc:
            return _fail(f"cannot ask the upstream {config.upstream} for its model ({exc!r}); start it first "
                         "or pass --served-model-name")
        config = dataclasses.replace(config, served_model_name=name)

    from .telemetry.setup import configure

    publish_semconv_opt_in(settings)
    try:
        telemetry = configure(settings, otlp_endpoint=config.otlp_endpoint, prometheus=bool(config.metrics_port))
    except ValueError as exc:
        return _fail(f"bad telemetry configuration: {exc}")

    from . import names
    from .server import ErnieServer
    from .telemetry.logs import install as install_logging
    from .telemetry.recorder import Recorder

    # Trace ids on every line, the JSON request log, and every record over OTLP when logs are exported.
    access_logger = install_logging(config.log_level, config.request_log, telemetry.logger_provider)

    bucket_overrides = {key: list(bounds) for key, bounds in settings.bucket_overrides.items()}

    pricing = load_pricing(config.pricing_file) if config.pricing_file else None

    def recorder_factory(model_name: str, engine_stats: Any) -> Recorder:
        price = pricing.for_model(model_name) if pricing is not None else None
        if pricing is not None and price is None:
            log.warning("%s prices neither %r nor a default: no cost is counted", config.pricing_file, model_name)
        return Recorder(telemetry.meter_provider, telemetry.tracer_provider, model_name, engine_stats,
                        server_address=config.host, server_port=config.port, bucket_overrides=bucket_overrides,
                        capture_content=settings.capture_content, slo_targets=config.slo(),
                        slo_objective=config.slo_objective, tenants=TenantResolver(config.tenants or frozenset(),
                                                                            config.max_tenants),
                        tenant_header=config.tenant_header, price=price, batch_slots=config.max_num_seqs,
                        keep=settings.keep_rule, access_logger=access_logger,
                        genai_semconv=settings.genai_semconv, logger_provider=telemetry.logger_provider)

    server = ErnieServer(config, recorder_factory, keys=keys)
    if telemetry.prometheus is not None and config.metrics_port:
        from .telemetry.prometheus import serve_metrics

        try:
            serve_metrics(telemetry.prometheus, config.host, config.metrics_port)
        except OSError as exc:
            return _fail(f"cannot serve metrics on {config.host}:{config.metrics_port}: {exc}")
    if telemetry.mode != "disabled":
        from .telemetry.gpu import register_gpu_metrics

        register_gpu_metrics(telemetry.meter_provider.get_meter(names.METER_NAME))
    app = server.create_app(telemetry)

    import uvicorn

    from .lifecycle import DrainingServer

    uv_config = uvicorn.Config(app, host=config.host, port=config.port, log_level=config.log_level,
                               access_log=config.access_log, timeout_graceful_shutdown=5)
    if config.api_key_file is not None:
        signal.signal(signal.SIGHUP, lambda *_: keys.reload())
    try:
        DrainingServer(uv_config, server, config.shutdown_grace).run()
    finally:
        server.recorder.close()  # what the telemetry thread has not recorded yet, before the exporters go
        telemetry.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
