"""What one ``ernie-otel bench`` run does: ``BenchConfig``, its flags and its checks."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..config import Config, ConfigError, above, at_least, http_url, option, to_float, to_int, to_json_object
from ..ports import DEFAULT_PORTS, HOST
from ..slo import SloTargets, ms_target

RESERVOIR_SIZE = 10_000


@dataclass(frozen=True)
class BenchConfig(Config):
    url: str = option(f"http://{HOST}:{DEFAULT_PORTS['serve']}", flag="--url", check=http_url,
                      help="server base URL")
    model: str | None = option(None, flag="--model",
                               help="model name in requests (default: first id of GET /v1/models)")
    endpoint: str = option("chat", flag="--endpoint", choices=("chat", "completions"), help="API to load")
    # None together with duration=None: run until stopped/cancelled. On the command line, --duration
    # alone means no request limit.
    requests: int | None = option(64, flag="--requests", convert=to_int, check=at_least(1),
                                  help="number of requests; with --duration alone: no limit")
    duration: float | None = option(None, flag="--duration", convert=to_float, check=at_least(0),
                                    help="seconds to send for; 0: until Ctrl-C")
    # In-flight cap; None with rate: unbounded (the command line's default with --rate).
    concurrency: int | None = option(8, flag="--concurrency", convert=to_int, check=at_least(1),
                                     help="requests in flight; with --rate: a cap, none unless given")
    rate: float | None = option(None, flag="--rate", convert=to_float, check=above(0),
                                help="requests/s with Poisson arrivals (open loop)")
    prompt_tokens: int = option(32, flag="--prompt-tokens", convert=to_int, check=at_least(1),
                                help="approximate prompt length, in words (tokens per word depend on the tokenizer)")
    max_tokens: int = option(32, flag="--max-tokens", convert=to_int, check=at_least(1), help="output limit")
    stream: bool = option(True, flag="--stream", kind="toggle", help="streamed responses")
    include_usage: bool = option(True, flag="--include-usage", kind="toggle",
                                 help="ask for usage in streams (stream_options.include_usage)")
    ignore_eos: bool = option(False, flag="--ignore-eos", kind="switch",
                              help="send ignore_eos: true (vLLM-style extension)")
    temperature: float | None = option(None, flag="--temperature", convert=to_float, check=at_least(0),
                                       help="sampling temperature (default: the server's)")
    extra_body: Mapping[str, Any] = option(flag="--extra-body", convert=to_json_object, factory=dict,
                                           help="JSON object merged into every request body")
    api_key: str | None = option(None, flag="--api-key", help="bearer token")
    timeout: float = option(600.0, flag="--timeout", convert=to_float, check=above(0),
                            help="per-request timeout in seconds")
    seed: int = option(0, flag="--seed", convert=to_int, help="seed for Poisson arrivals and sampling reservoirs")
    # The server's definitions (ernie_otel.slo), measured from the client: TTFT needs --stream.
    slo_ttft: float | None = option(None, flag="--slo-ttft", convert=ms_target, metavar="MS",
                                    help="SLO target for goodput: time to first token, ms")
    slo_tpot: float | None = option(None, flag="--slo-tpot", convert=ms_target, metavar="MS",
                                    help="SLO target for goodput: time per output token after the first, ms")
    slo_e2e: float | None = option(None, flag="--slo-e2e", convert=ms_target, metavar="MS",
                                   help="SLO target for goodput: end-to-end latency, ms")
    slo_headers: bool = option(False, flag="--slo-headers", kind="switch",
                               help="send the TTFT/TPOT targets as x-slo-ttft-ms / x-slo-tpot-ms, so the server "
                               "judges each request against the same targets")
    # Prompts are numbered from this offset; None: a random one per run, so that a run never
    # repeats an earlier run's prompts (a server with a prefix cache would serve those from it).
    prompt_offset: int | None = None
    reservoir_size: int = RESERVOIR_SIZE

    def check(self) -> None:
        if self.rate is None and not self.concurrency:
            raise ConfigError(f"give {self.label('concurrency')} (closed loop) or {self.label('rate')} (open loop)")

    def slo(self) -> SloTargets:
        return SloTargets(self.slo_ttft, self.slo_tpot, self.slo_e2e)

    @property
    def unbounded(self) -> bool:
        return self.requests is None and not self.duration
