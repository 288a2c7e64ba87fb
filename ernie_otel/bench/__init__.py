"""``ernie-otel bench``: an OpenAI-compatible load generator (httpx + asyncio, no other dependency).

Works against any OpenAI-compatible server (ernie-serve, ``transformers serve``, vLLM, FastDeploy):
requests carry only standard fields, plus ``ignore_eos`` when asked and whatever ``extra_body``
adds. Client-side figures:

- TTFT: request sent -> first chunk carrying content (non-stream: the whole latency);
- TPOT: ``(latency - ttft) / (tokens - 1)`` per streamed request with at least two tokens;
- latency: request sent -> last byte;
- output tokens from ``usage`` (streams ask for ``stream_options.include_usage``), else the number
  of content chunks.

``run_bench`` / ``Bench`` are the Python API; with ``requests=None`` and ``duration=None`` a run
lasts until it is stopped or cancelled (steady background load), and memory stays bounded because
latencies go into fixed-size reservoirs rather than growing lists.
"""

from __future__ import annotations

from .cli import ProgressLine, build_parser, format_result, main
from .config import RESERVOIR_SIZE, BenchConfig
from .load import Bench, build_prompt, fetch_model, run_bench
from .results import BenchResult, Percentiles, Reservoir, percentile

__all__ = [
    "RESERVOIR_SIZE",
    "Bench",
    "BenchConfig",
    "BenchResult",
    "Percentiles",
    "ProgressLine",
    "Reservoir",
    "build_parser",
    "build_prompt",
    "fetch_model",
    "format_result",
    "main",
    "percentile",
    "run_bench",
]
