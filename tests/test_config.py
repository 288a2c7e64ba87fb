"""One typed, validated, immutable config per program; parsers built from the config's fields."""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import ernie_otel
from ernie_otel import serve
from ernie_otel.bench import BenchConfig
from ernie_otel.bench import cli as bench_cli
from ernie_otel.config import Config, ConfigError, load_or_exit, option_of
from ernie_otel.ports import DEFAULT_PORTS, HOST
from ernie_otel.serve import ServeConfig
from ernie_otel.telemetry.settings import TelemetrySettings

REPO = Path(__file__).resolve().parent.parent
# Subprocesses import this tree's package, whatever the virtual environment's install points at.
SUBPROCESS_ENV = {**os.environ, "PYTHONPATH": str(REPO)}

# The command lines as they were before the parsers were derived from the configs: every flag
# keeps its name and its default.
SERVE_DEFAULTS: dict[str, Any] = {
    "--model": "baidu/ERNIE-4.5-0.3B-PT", "--served-model-name": None, "--host": HOST,
    "--port": DEFAULT_PORTS["serve"], "--metrics-port": DEFAULT_PORTS["serve_metrics"], "--max-model-len": 2048,
    "--max-num-seqs": 0, "--max-queue-len": 64, "--max-num-batched-tokens": 512,
    "--device": "auto", "--dtype": "auto", "--torch-threads": 0,
    "--api-key": None, "--default-max-tokens": 256, "--max-request-bytes": 1 << 20, "--otlp-endpoint": None,
    "--upstream": None, "--upstream-timeout": 120.0, "--upstream-api-key": None, "--access-log": False,
    "--log-level": "info", "--slo-ttft": None, "--slo-tpot": None, "--slo-e2e": None, "--slo-targets": None,
    "--slo-objective": 0.99, "--tenant-header": "x-tenant-id", "--tenants": None, "--max-tenants": 50,
    "--pricing-file": None, "--response-metrics": False, "--request-log": "stderr",
    "--api-key-file": None, "--shutdown-grace": 30.0, "--cpu-kernel": "auto",
}
BENCH_DEFAULTS: dict[str, Any] = {
    "--url": f"http://{HOST}:{DEFAULT_PORTS['serve']}", "--model": None, "--endpoint": "chat", "--requests": 64,
    "--duration": None, "--concurrency": 8, "--rate": None, "--prompt-tokens": 32, "--max-tokens": 32,
    "--stream": True, "--include-usage": True, "--ignore-eos": False, "--temperature": None, "--extra-body": {},
    "--api-key": None, "--timeout": 600.0, "--seed": 0, "--slo-ttft": None, "--slo-tpot": None, "--slo-e2e": None,
    "--slo-headers": False,
}
PROGRAMS: dict[str, tuple[type[Config], Callable[[], argparse.ArgumentParser], dict[str, Any]]] = {
    "ernie-serve": (ServeConfig, serve.build_parser, SERVE_DEFAULTS),
    "ernie-otel bench": (BenchConfig, bench_cli.build_parser, BENCH_DEFAULTS),
}


def _flags(cls: type[Config]) -> dict[str, dataclasses.Field[Any]]:
    out = {}
    for f in dataclasses.fields(cls):
        opt = option_of(f)
        if opt is not None and opt.flag is not None:
            out[opt.flag] = f
    return out


@pytest.mark.parametrize("program", sorted(PROGRAMS))
def test_parser_defaults_are_the_dataclass_defaults(program: str) -> None:
    cls, build, old = PROGRAMS[program]
    parser = build()
    assert load_or_exit(parser, cls, [], {})[0] == cls()
    flags = _flags(cls)
    assert set(flags) == set(old), "a flag was renamed, added or lost"
    for action in parser._actions:
        if action.dest in cls.__dataclass_fields__:
            # The parser holds no default of its own: the dataclass's is the only one written.
            assert action.default is argparse.SUPPRESS, action.dest
    for flag, f in flags.items():
        assert getattr(cls(), f.name) == old[flag], flag


@pytest.mark.parametrize("program", sorted(PROGRAMS))
def test_help_shows_the_dataclass_defaults(program: str) -> None:
    cls, build, _ = PROGRAMS[program]
    text = " ".join(build().format_help().split())
    for f in dataclasses.fields(cls):
        opt = option_of(f)
        if opt is not None and opt.flag is not None and opt.kind == "value" and f.default not in (None,
                                                                                                   dataclasses.MISSING):
            assert f"(default: {f.default})" in text, opt.flag


@pytest.mark.parametrize(("program", "argv", "named"), [
    ("ernie-serve", ["--max-num-seqs", "-1"], "--max-num-seqs"),
    ("ernie-serve", ["--max-model-len", "-1"], "--max-model-len"),
    ("ernie-serve", ["--max-queue-len", "-1"], "--max-queue-len"),
    ("ernie-serve", ["--port", "70000"], "--port"),
    ("ernie-serve", ["--metrics-port", "x"], "--metrics-port"),
    ("ernie-serve", ["--device", "tpu"], "--device"),
    ("ernie-serve", ["--dtype", "int4"], "--dtype"),
    ("ernie-serve", ["--log-level", "loud"], "--log-level"),
    ("ernie-serve", ["--torch-threads", "-2"], "--torch-threads"),
    ("ernie-serve", ["--default-max-tokens", "0"], "--default-max-tokens"),
    ("ernie-serve", ["--max-request-bytes", "0"], "--max-request-bytes"),
    ("ernie-serve", ["--upstream", "localhost:8000"], "--upstream"),
    ("ernie-serve", ["--upstream-timeout", "0"], "--upstream-timeout"),
    ("ernie-serve", ["--no-such-flag"], "--no-such-flag"),
    ("ernie-otel bench", ["--requests", "0"], "--requests"),
    ("ernie-otel bench", ["--concurrency", "abc"], "--concurrency"),
    ("ernie-otel bench", ["--rate", "-1"], "--rate"),
    ("ernie-otel bench", ["--duration", "-5"], "--duration"),
    ("ernie-otel bench", ["--max-tokens", "0"], "--max-tokens"),
    ("ernie-otel bench", ["--prompt-tokens", "0"], "--prompt-tokens"),
    ("ernie-otel bench", ["--endpoint", "embeddings"], "--endpoint"),
    ("ernie-otel bench", ["--extra-body", "[1, 2]"], "--extra-body"),
    ("ernie-otel bench", ["--extra-body", "{nope"], "--extra-body"),
    ("ernie-otel bench", ["--url", "localhost"], "--url"),
    ("ernie-otel bench", ["--timeout", "0"], "--timeout"),
    ("ernie-otel bench", ["--temperature", "-1"], "--temperature"),
])
def test_a_bad_flag_exits_2_with_one_line_naming_it(program: str, argv: list[str], named: str,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    main = serve.main if program == "ernie-serve" else bench_cli.main
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"{program}: error:"), err
    assert named in err


@pytest.mark.parametrize(("variable", "value"), [
    ("OTEL_METRIC_EXPORT_INTERVAL", "soon"),
    ("OTEL_METRIC_EXPORT_INTERVAL", "0"),
    ("OTEL_TRACES_SAMPLER", "sometimes"),
    ("OTEL_TRACES_SAMPLER_ARG", "2"),
    ("OTEL_TRACES_EXPORTER", "otlp,zipkin"),
    ("OTEL_METRICS_EXPORTER", "statsd"),
    ("OTEL_EXPORTER_OTLP_PROTOCOL", "carrier-pigeon"),
    ("OTEL_SDK_DISABLED", "maybe"),
    ("OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT", "perhaps"),
    ("ERNIE_OTEL_HISTOGRAM_BUCKETS", "{not json"),
    ("ERNIE_OTEL_HISTOGRAM_BUCKETS", '{"no_such_histogram": [1, 2]}'),
    ("ERNIE_OTEL_HISTOGRAM_BUCKETS", '{"ernie_inference_latency_seconds": [2, 1]}'),
])
def test_a_bad_telemetry_variable_exits_2_with_one_line_naming_it(
        variable: str, value: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(SystemExit) as exc:
        serve.main(["--model", "tiny"])  # fails on the settings, before any model or port
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("ernie-serve: error: "), err
    assert variable in err


def test_bad_values_from_python_fail_the_same_way() -> None:
    with pytest.raises(ConfigError, match="--max-num-seqs"):
        ServeConfig(max_num_seqs=-1)
    with pytest.raises(ConfigError, match=r"--concurrency.*--rate"):
        BenchConfig(concurrency=None)
    with pytest.raises(ConfigError, match="OTEL_TRACES_SAMPLER_ARG"):
        TelemetrySettings(sampler_arg=1.5)
    assert issubclass(ConfigError, ValueError)  # callers that caught ValueError still do


def test_a_bad_value_in_a_real_process_is_one_line_and_exit_2() -> None:
    p = subprocess.run([sys.executable, "-m", "ernie_otel.serve", "--max-num-seqs", "-2"], capture_output=True,
                       text=True, env=SUBPROCESS_ENV, timeout=60)
    assert p.returncode == 2
    assert p.stderr.splitlines() == [
        "ernie-serve: error: argument --max-num-seqs: must be at least 0, not -2 (see ernie-serve --help)"]


@pytest.mark.parametrize("config", [ServeConfig(), BenchConfig(), TelemetrySettings()], ids=type)
def test_configs_are_frozen(config: Config) -> None:
    first = dataclasses.fields(config)[0]  # type: ignore[arg-type]
    with pytest.raises(dataclasses.FrozenInstanceError):
        setattr(config, first.name, None)


def test_bucket_overrides_cannot_be_changed_after_parsing() -> None:
    raw = '{"ernie_inference_latency_seconds": [1, 5]}'
    settings = TelemetrySettings.from_env({"ERNIE_OTEL_HISTOGRAM_BUCKETS": raw})
    assert dict(settings.bucket_overrides) == {"ernie_inference_latency_seconds": (1.0, 5.0)}
    with pytest.raises(TypeError):
        settings.bucket_overrides["ernie_inference_latency_seconds"] = (2.0,)  # type: ignore[index]


def test_flag_beats_environment_beats_default(monkeypatch: pytest.MonkeyPatch) -> None:
    parser = serve.build_parser()
    env = {"ERNIE_SERVE_HOST": "127.0.0.2", "ERNIE_SERVE_API_KEY": "from-env"}
    from_env, _ = load_or_exit(parser, ServeConfig, [], env)
    assert (from_env.host, from_env.api_key) == ("127.0.0.2", "from-env")
    from_flag, _ = load_or_exit(parser, ServeConfig, ["--host", "127.0.0.3"], env)
    assert from_flag.host == "127.0.0.3"
    assert load_or_exit(parser, ServeConfig, [], {"ERNIE_SERVE_HOST": ""})[0].host == HOST  # empty: unset


def test_bench_command_line_keeps_its_contextual_defaults() -> None:
    def parse(*argv: str) -> BenchConfig:
        return load_or_exit(bench_cli.build_parser(), BenchConfig, argv, {}, adjust=bench_cli._command_line_defaults)[0]

    assert (parse().requests, parse().concurrency) == (64, 8)
    assert parse("--duration", "30").requests is None  # --duration alone: no request limit
    assert parse("--duration", "30", "--requests", "5").requests == 5
    assert parse("--rate", "4").concurrency is None  # --rate alone: no in-flight cap
    assert parse("--rate", "4", "--concurrency", "2").concurrency == 2
    assert parse("--duration", "0").unbounded  # 0: until Ctrl-C
    assert parse("--no-stream", "--ignore-eos").stream is False
    assert parse("--extra-body", '{"top_k": 1}').extra_body == {"top_k": 1}


def test_telemetry_settings_from_the_environment() -> None:
    default = TelemetrySettings.from_env({})
    assert default == TelemetrySettings()
    assert (default.service_name, default.metric_export_interval_ms, default.sampler) == (
        "ernie-serve", 5000, "parentbased_always_on")
    assert not default.capture_content and default.traces_exporter is None
    s = TelemetrySettings.from_env({
        "OTEL_RESOURCE_ATTRIBUTES": "deployment.environment.name=prod,service.name=my%20svc",
        "OTEL_TRACES_SAMPLER": "ParentBased_TraceIdRatio", "OTEL_TRACES_SAMPLER_ARG": "0.25",
        "OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT": "True", "OTEL_TRACES_EXPORTER": "none",
        "OTEL_METRICS_EXPORTER": "otlp, console"})
    assert s.service_name == "my svc"
    assert (s.sampler, s.ratio, s.capture_content) == ("parentbased_traceidratio", 0.25, True)
    assert s.traces_exporter == () and s.metrics_exporter == ("otlp", "console")
    both = {"OTEL_SERVICE_NAME": "named", "OTEL_RESOURCE_ATTRIBUTES": "service.name=other"}
    assert TelemetrySettings.from_env(both).service_name == "named"  # the SDK's precedence


def _run_python(code: str, env: dict[str, str] | None = None) -> str:
    p = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                       env={**SUBPROCESS_ENV, **(env or {})}, timeout=120)
    assert p.returncode == 0, p.stdout + p.stderr
    return p.stdout


def test_serve_help_and_parser_import_no_torch() -> None:
    out = _run_python("""
        import sys
        import ernie_otel.serve
        ernie_otel.serve.build_parser().format_help()
        heavy = ("torch", "transformers", "ernie_otel.engine", "ernie_otel.server")
        print(sorted(m for m in heavy if m in sys.modules))
    """)
    assert out.strip() == "[]"
    p = subprocess.run([sys.executable, "-m", "ernie_otel.serve", "--help"], capture_output=True, text=True,
                       env=SUBPROCESS_ENV, timeout=60)
    assert p.returncode == 0 and "--max-num-seqs" in p.stdout


def test_standalone_setup_takes_its_settings_and_leaves_the_environment_alone() -> None:
    out = _run_python("""
        import os
        from ernie_otel.telemetry.settings import TelemetrySettings
        from ernie_otel.telemetry.setup import configure, describe_telemetry
        before = dict(os.environ)
        settings = TelemetrySettings.from_env()
        telemetry = configure(settings, otlp_endpoint="localhost:9", prometheus=False)
        assert dict(os.environ) == before, set(os.environ.items()) ^ set(before.items())
        info = describe_telemetry(telemetry)
        sampler = telemetry.tracer_provider.sampler
        readers = telemetry.meter_provider._metric_readers
        print(info["mode"], info["service_name"], sampler.get_description(),
              [r["endpoint"] for r in info["span_exporters"]], [r._export_interval_millis for r in readers])
        telemetry.shutdown()
    """, env={"OTEL_TRACES_SAMPLER": "traceidratio", "OTEL_TRACES_SAMPLER_ARG": "0.5",
              "OTEL_METRIC_EXPORT_INTERVAL": "1234", "OTEL_SERVICE_NAME": "svc"})
    assert out.split() == ["standalone", "svc", "TraceIdRatioBased{0.5}", "['localhost:9']", "[1234]"]


def test_public_surface() -> None:
    for name in ernie_otel.__all__:
        assert getattr(ernie_otel, name) is not None, name
    assert ernie_otel.ServeConfig is ServeConfig and isinstance(ernie_otel.__version__, str)
    assert (REPO / "ernie_otel" / "py.typed").is_file()
    assert "py.typed" in (REPO / "pyproject.toml").read_text()
    out = _run_python("""
        import sys
        import ernie_otel
        print(sorted({m.split(".")[0] for m in sys.modules} & {"opentelemetry", "torch", "transformers"}))
    """)
    assert out.strip() == "[]", "importing the package alone loads nothing heavy"


def test_zero_code_configurator_builds_from_settings_without_environment_defaults() -> None:
    """opentelemetry-instrument: OTLP to the exporters' default (localhost:4317), service.name,
    5 s export and the Prometheus reader, all handed over explicitly; the environment gains only
    the semantic-convention opt-in that instrumentation libraries read from nowhere else."""
    code = textwrap.dedent("""
        import json, os
        from opentelemetry import metrics, trace
        readers = metrics.get_meter_provider()._metric_readers
        tracer = trace.get_tracer_provider()
        print(json.dumps({
            "env": sorted(k for k in os.environ if k.startswith("OTEL_")),
            "readers": sorted(type(r).__name__ for r in readers),
            "interval": [r._export_interval_millis for r in readers if hasattr(r, "_export_interval_millis")],
            "service": tracer.resource.attributes["service.name"],
            "sampler": tracer.sampler.get_description(),
        }))
    """)
    env = {k: v for k, v in SUBPROCESS_ENV.items() if not k.startswith("OTEL_")}
    env.update({"OTEL_PYTHON_DISTRO": "ernie_otel", "OTEL_PYTHON_CONFIGURATOR": "ernie_otel",
                "OTEL_TRACES_SAMPLER": "traceidratio", "OTEL_TRACES_SAMPLER_ARG": "0.1"})
    bin_dir = Path(sys.executable).parent
    p = subprocess.run([str(bin_dir / "opentelemetry-instrument"), sys.executable, "-c", code], capture_output=True,
                       text=True, env=env, timeout=120)
    assert p.returncode == 0, p.stderr
    got = json.loads(p.stdout.strip().splitlines()[-1])
    assert got["env"] == ["OTEL_PYTHON_CONFIGURATOR", "OTEL_PYTHON_DISTRO", "OTEL_SEMCONV_STABILITY_OPT_IN",
                          "OTEL_TRACES_SAMPLER", "OTEL_TRACES_SAMPLER_ARG"]
    assert got["readers"] == ["ErniePrometheusReader", "PeriodicExportingMetricReader"]
    assert got["interval"] == [5000]
    assert got["service"] == "ernie-serve" and got["sampler"] == "TraceIdRatioBased{0.1}"


def test_configuration_reference_is_current() -> None:
    spec = importlib.util.spec_from_file_location("config_reference", REPO / "scripts" / "config_reference.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert (REPO / "docs" / "configuration.md").read_text() == module.render(), (
        "regenerate: python scripts/config_reference.py > docs/configuration.md")


def test_an_exporter_that_is_not_installed_fails_before_anything_is_built(monkeypatch: pytest.MonkeyPatch) -> None:
    from opentelemetry import metrics

    from ernie_otel.telemetry.setup import build_sdk

    monkeypatch.setitem(sys.modules, "opentelemetry.exporter.otlp.proto.http", None)  # import fails
    settings = TelemetrySettings.from_env({"OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf"})
    provider = metrics.get_meter_provider()
    with pytest.raises(ConfigError, match=r"^OTEL_EXPORTER_OTLP_PROTOCOL: .*opentelemetry-exporter-otlp-proto-http"):
        build_sdk(settings, prometheus=False, otlp=True)
    assert metrics.get_meter_provider() is provider  # no global was set
