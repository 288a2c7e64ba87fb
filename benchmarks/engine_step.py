"""Engine step time with and without the engine's own metrics (KV cache, padding, per-iteration
histograms, inter-token latency, admissions/evictions).

    .venv/bin/python benchmarks/engine_step.py [--rounds 8] [--steps 150] [--batch 8] [--json PATH]

Runs the real local engine (the tiny random-weight ERNIE-4.5, one torch thread, as ernie-serve
runs it on a CPU) under a steady load: ``--batch`` sequences of mixed prompt lengths, each replaced
as soon as it finishes, so every iteration decodes a full batch and admits a few new rows. One
engine iteration is the time between two calls of the engine's step hook (``time.perf_counter``).

Both variants run a ``Recorder`` over a real ``MeterProvider`` whose reader collects every
``--collect-ms`` on a thread of its own, as a Prometheus scrape or the periodic OTLP reader would
(default 500 ms, 10x ernie-serve's 5 s export interval, so the collections' share is visible).
They differ only in the engine metrics:

- with: the engine as shipped, filling ``EngineStats`` at every step boundary; each collection
  drains the engine's samples into the histograms and reads the engine gauges and counters;
- without: the engine's metric bookkeeping stubbed out (``_note_kv`` a no-op, the sample deques
  replaced by a sink that keeps nothing), the drain switched off and the engine series absent
  (the stats report no KV budget, as in gateway mode). The inter-token gap loop of the decode
  step stays (it is inline): one subtraction and one dict update per row, paid by both.

A third variant, control, is "without" again: its distance from "without" is the noise floor (an
A/A comparison) to read the with/without difference against. The variants rotate round by round
(with, without, control; then without, control, with; ...) so that the load of the machine, which
other processes share, falls on all alike; the result is the median step time of each, the
median of the per-round differences, and the process CPU time per step (``time.process_time``, all threads:
the collections' drain work counts, other processes' load hardly does).

Then the parts on their own, in a tight loop (deterministic, unlike the shared machine's wall
clock): the engine thread's bookkeeping per step (``_note_kv`` and the sample appends of a full
batch) and the telemetry side's drain per step (the samples of one step into the histograms).
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any

import torch
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from transformers import AutoModelForCausalLM, AutoTokenizer

from ernie_otel.engine import Engine, Event, SamplingParams, Sequence
from ernie_otel.stats import RequestStats
from ernie_otel.telemetry.recorder import Recorder
from ernie_otel.tiny_model import ensure_tiny_model

PROMPT_LENGTHS = (4, 16, 48, 96)  # a mix, so the batch carries left padding as in real traffic
MAX_TOKENS = (12, 24, 40)  # sequences finish at different steps: rows leave and are admitted


class Sink:
    """Stands in for a sample deque: takes appends and keeps nothing."""

    def append(self, _: Any) -> None:
        pass

    def __len__(self) -> int:
        return 0


def run_round(model: Any, tokenizer: Any, *, batch: int, steps: int, with_metrics: bool,
              collect_ms: float) -> tuple[list[float], float]:
    engine = Engine(model, tokenizer, max_num_seqs=batch, max_queue_len=batch * 4, max_model_len=256)
    stop = threading.Event()
    reader = InMemoryMetricReader()
    recorder = Recorder(MeterProvider(metric_readers=[reader]), TracerProvider(), "tiny", lambda: engine.stats)
    if not with_metrics:
        engine._note_kv = lambda: None  # type: ignore[method-assign]
        for name in ("iteration_samples", "phase_samples", "itl_samples"):
            setattr(engine.stats, name, Sink())
        engine.stats.kv_budget_tokens = 0  # the engine series report nothing, as without a local engine
        recorder.batch.engine_drain = None

    def collect() -> None:
        while not stop.wait(collect_ms / 1000.0):
            reader.get_metrics_data()

    collector = threading.Thread(target=collect, name="collector", daemon=True)

    counter = iter(range(10**9))
    live: list[Sequence] = []
    times: list[float] = []
    done = threading.Event()

    def new_sequence() -> Sequence:
        i = next(counter)
        n, m = PROMPT_LENGTHS[i % len(PROMPT_LENGTHS)], MAX_TOKENS[i % len(MAX_TOKENS)]

        def deliver(_: Event) -> None:
            pass

        ids = [10 + (i + k) % 200 for k in range(n)]
        return Sequence(ids, SamplingParams(m, temperature=0.0, ignore_eos=True), RequestStats(str(i), "chat"),
                        deliver)

    def hook() -> None:  # engine thread, between iterations
        times.append(time.perf_counter())
        live[:] = [s for s in live if not s.finished]
        while len(live) < batch and len(times) <= steps:
            seq = new_sequence()
            live.append(seq)
            engine.submit(seq)
        if len(times) > steps:
            engine.step_hook = None
            done.set()

    engine.step_hook = hook
    for _ in range(batch):
        seq = new_sequence()
        live.append(seq)
        engine.submit(seq)
    collector.start()
    cpu0 = time.process_time()
    engine.start()
    done.wait(600)
    cpu = time.process_time() - cpu0
    stop.set()
    engine.shutdown()
    collector.join()
    recorder.close()
    # Drop the first steps: the first prefill of a full batch is not a steady-state step.
    steady = [b - a for a, b in itertools.pairwise(times)][5:]
    return steady, cpu / max(1, len(times) - 1)


def parts_per_step(model: Any, tokenizer: Any, batch: int, n: int = 2000) -> dict[str, float]:
    """CPU microseconds per step of the engine's bookkeeping and of the drain, a full batch of mixed
    lengths (each row's inter-token gap shared with the others, as in a steady decode step)."""
    engine = Engine(model, tokenizer, max_num_seqs=batch, max_queue_len=4, max_model_len=256)
    stats = engine.stats
    rows = []
    for i in range(batch):
        seq = Sequence([1] * PROMPT_LENGTHS[i % len(PROMPT_LENGTHS)], SamplingParams(8), RequestStats(str(i), "chat"),
                       lambda _: None)
        seq.pad = 96 - len(seq.prompt_ids)
        rows.append(seq)
    engine._running = rows
    engine._cache_width = lambda: 100  # type: ignore[method-assign]
    t0 = time.process_time()  # CPU, not wall: the shared machine's load would otherwise dominate
    for step in range(n):
        now = time.perf_counter()
        gaps: dict[float, int] = {}
        for s in rows:  # the decode step's gap loop
            gap = now - s.last_token_at
            gaps[gap] = gaps.get(gap, 0) + 1
            s.last_token_at = now
        for gap, count in gaps.items():
            stats.itl_samples.append((gap, count))
        stats.iteration_samples.append((batch, batch))
        if step % 10 == 0:  # a request finishes every few steps
            stats.phase_samples.append((0.01, 0.2))
        engine._note_kv()
    engine_us = (time.process_time() - t0) / n * 1e6
    recorder = Recorder(MeterProvider(metric_readers=[InMemoryMetricReader()]), TracerProvider(), "tiny",
                        lambda: stats)
    t0 = time.process_time()
    recorder.engine.drain()
    drain_us = (time.process_time() - t0) / n * 1e6
    recorder.close()
    return {"engine_bookkeeping_cpu_us_per_step": round(engine_us, 2), "drain_cpu_us_per_step": round(drain_us, 2),
            "histogram_records_per_step": round(batch + 2 + 2 / 10, 1)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=8, help="rounds per variant (interleaved)")
    parser.add_argument("--steps", type=int, default=150, help="engine iterations per round")
    parser.add_argument("--batch", type=int, default=8, help="sequences kept in the running batch")
    parser.add_argument("--collect-ms", type=float, default=500.0, help="metric collection interval")
    parser.add_argument("--json", type=Path, help="write the results here too")
    args = parser.parse_args(argv)

    torch.set_num_threads(1)
    torch.set_grad_enabled(False)
    path = ensure_tiny_model()
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, local_files_only=True).eval()
    run_round(model, tokenizer, batch=args.batch, steps=20, with_metrics=True, collect_ms=args.collect_ms)  # warm

    order = ["with", "without", "control"]
    samples: dict[str, list[float]] = {v: [] for v in order}
    round_medians: dict[str, list[float]] = {v: [] for v in order}
    cpu_per_step: dict[str, list[float]] = {v: [] for v in order}
    for r in range(args.rounds):
        for variant in order[r % 3:] + order[:r % 3]:
            steps, cpu = run_round(model, tokenizer, batch=args.batch, steps=args.steps,
                                   with_metrics=variant == "with", collect_ms=args.collect_ms)
            samples[variant] += steps
            cpu_per_step[variant].append(cpu)
            round_medians[variant].append(statistics.median(steps))
            print(f"round {r + 1} {variant:>7}: median step {statistics.median(steps) * 1e3:.3f} ms "
                  f"({len(steps)} steps)", file=sys.stderr)

    result: dict[str, Any] = {"batch": args.batch, "rounds": args.rounds, "steps_per_round": args.steps,
                              "collect_ms": args.collect_ms, "torch_threads": 1}
    for variant, values in samples.items():
        ordered = sorted(values)
        result[variant] = {
            "median_ms": round(statistics.median(values) * 1e3, 4),
            "p90_ms": round(ordered[int(0.9 * (len(ordered) - 1))] * 1e3, 4),
            "median_of_round_medians_ms": round(statistics.median(round_medians[variant]) * 1e3, 4),
            "steps": len(values),
            "cpu_ms_per_step_median": round(statistics.median(cpu_per_step[variant]) * 1e3, 4),
        }
    # Each round runs both variants back to back: the median of their per-round differences is
    # the figure least moved by load that changes between rounds.
    for variant in ("with", "control"):
        paired = [a - b for a, b in zip(round_medians[variant], round_medians["without"], strict=True)]
        result[f"paired_delta_{variant}_vs_without_us"] = round(statistics.median(paired) * 1e6, 1)
    delta = result["with"]["median_ms"] - result["without"]["median_ms"]
    result["delta_median_us"] = round(delta * 1e3, 1)
    result["delta_median_percent"] = round(100.0 * delta / result["without"]["median_ms"], 2)
    result["parts"] = parts_per_step(model, tokenizer, args.batch)
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
