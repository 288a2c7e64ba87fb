"""``ernie-otel bench`` on a terminal: the result table, the progress line and ``main``."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import sys
import time
from typing import Any, TextIO

import httpx

from ..config import load_or_exit, parser_for
from .config import BenchConfig
from .load import Bench
from .results import BenchResult


def _fmt(v: float | None, digits: int = 1) -> str:
    return "-" if v is None else f"{v:.{digits}f}"


def format_result(r: BenchResult) -> str:
    mode = f"concurrency {r.concurrency}" if r.rate is None else f"rate {r.rate}/s (cap {r.concurrency or '-'})"
    lines = [
        f"ernie-otel bench: {r.url}  model={r.model}  {r.endpoint} {'stream' if r.stream else 'no-stream'}  "
        f"{mode}  prompt~{r.prompt_tokens_requested} words  max_tokens={r.max_tokens}",
        f"requests: {r.requests_ok} ok, {r.requests_failed} failed, {r.requests_sent} sent in {r.wall_s:.2f} s",
        "",
        f"| {'metric':<16} | {'p50':>9} | {'p90':>9} | {'p95':>9} | {'p99':>9} | {'mean':>9} |",
        f"|{'-' * 18}|{'-' * 11}|{'-' * 11}|{'-' * 11}|{'-' * 11}|{'-' * 11}|",
    ]
    for name, p in (("TTFT (ms)", r.ttft_ms), ("TPOT (ms)", r.tpot_ms), ("latency (ms)", r.latency_ms)):
        lines.append(f"| {name:<16} | {_fmt(p.p50):>9} | {_fmt(p.p90):>9} | {_fmt(p.p95):>9} | {_fmt(p.p99):>9} "
                     f"| {_fmt(p.mean):>9} |")
    lines += [
        "",
        f"output tokens/s: {r.output_tokens_per_s:.1f}   ({r.output_tokens} output tokens; "
        f"{r.tokens_from_usage} counted from usage, {r.tokens_from_chunks} from chunks)",
        f"requests/s:      {r.requests_per_s:.2f}",
    ]
    if r.slo_targets_ms:
        targets = ", ".join(f"{k} {v:g} ms" for k, v in r.slo_targets_ms.items())
        attained = ", ".join(f"{k} {_fmt(None if v is None else v * 100)}% of {r.slo_judged[k]}"
                             for k, v in r.slo_attainment.items())
        lines += [f"SLO targets:     {targets}", f"SLO attainment:  {attained}",
                  f"goodput:         {_fmt(r.goodput_requests_per_s, 2)} requests/s, "
                  f"{_fmt(r.goodput_tokens_per_s)} output tokens/s (requests that met all their targets)"]
    if r.errors:
        lines.append("errors:")
        lines += [f"  {count:>6}  {key}" for key, count in r.errors.items()]
    else:
        lines.append("errors:          none")
    return "\n".join(lines)


class ProgressLine:
    """One self-overwriting status line on a terminal; a plain line every few seconds otherwise."""

    def __init__(self, stream: TextIO = sys.stderr) -> None:
        self.stream = stream
        self.tty = stream.isatty()
        self._last_plain = 0.0

    def __call__(self, bench: Bench) -> None:
        cfg = bench.cfg
        done = bench.ok + bench.failed
        elapsed = bench.elapsed
        rps = done / elapsed if elapsed > 0 else 0.0
        if cfg.requests is not None:
            frac, total = min(1.0, done / cfg.requests), str(cfg.requests)
        elif cfg.duration:
            frac, total = min(1.0, elapsed / cfg.duration), "?"
        else:
            frac, total = 0.0, "∞"
        width = 24
        filled = int(frac * width)
        bar = "#" * filled + "-" * (width - filled)
        text = (f"[{bar}] {done}/{total} done  {rps:6.2f} req/s  {bench.output_tokens / max(elapsed, 1e-9):8.1f} "
                f"tok/s  errors {bench.failed}  {elapsed:6.1f}s")
        if self.tty:
            end = "\n" if bench.ended is not None else ""
            self.stream.write("\r" + text + end)
            self.stream.flush()
        elif bench.ended is not None or time.monotonic() - self._last_plain >= 5.0:
            self._last_plain = time.monotonic()
            self.stream.write(text + "\n")
            self.stream.flush()


# ---------------------------------------------------------------------------------------- CLI
def build_parser() -> argparse.ArgumentParser:
    p = parser_for(BenchConfig, prog="ernie-otel bench", description="OpenAI-compatible load generator.")
    p.add_argument("--json", dest="json_path", default=None, help="write the results as JSON to this path")
    p.add_argument("--quiet", action="store_true", default=False, help="no progress line")
    return p


def _command_line_defaults(given: dict[str, Any]) -> None:
    """What leaving out a flag means next to another: --duration alone sets no request limit,
    --rate alone no concurrency cap; --duration 0 is no time limit."""
    if "duration" in given and "requests" not in given:
        given["requests"] = None
    if given.get("duration") == 0:
        given["duration"] = None
    if "rate" in given and "concurrency" not in given:
        given["concurrency"] = None


async def _cli(cfg: BenchConfig, quiet: bool) -> BenchResult:
    bench = Bench(cfg, progress=None if quiet else ProgressLine())
    loop = asyncio.get_running_loop()
    # Ctrl-C ends the run and still prints what was measured (the way to end `--duration 0`).
    with contextlib.suppress(NotImplementedError, RuntimeError):
        loop.add_signal_handler(signal.SIGINT, bench.stop)
    return await bench.run()


def main(argv: list[str]) -> int:
    cfg, args = load_or_exit(build_parser(), BenchConfig, argv, {}, adjust=_command_line_defaults)
    try:
        result = asyncio.run(_cli(cfg, args.quiet))
    except (httpx.HTTPError, OSError, RuntimeError, ValueError) as exc:
        # Only the model lookup can get here; request failures are counted, never raised.
        print(f"ernie-otel bench: cannot start against {cfg.url}: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2
    print(format_result(result))
    if args.json_path:
        with open(args.json_path, "w") as f:
            json.dump(result.to_dict(), f, indent=2)
            f.write("\n")
    return 0 if result.requests_failed == 0 else 1
