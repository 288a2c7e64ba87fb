"""fp32 ``nn.Linear`` against its weight-major form ``(W @ x.T).T`` on this CPU, per token rows;
with ``--bf16``, bf16 ``nn.Linear`` against ernie-serve's bounded bf16 linear and fp32.

    .venv/bin/python benchmarks/cpu_matmul.py [--threads 2] [--rows 1,2,4,8,16,32,48,64,96,128] [--reps 12] [--bf16]

The shapes are the ERNIE-4.5-0.3B linears (hidden 1024, MLP 3072, 16 query and 2 key/value
heads of 128, the 103424-entry output head); random weights, the same inputs for both forms,
alternated within each repetition so that the machine's load falls on both alike. Prints the
median milliseconds of each form and their ratio (linear / weight-major: above 1 the
weight-major form is faster). ernie-serve uses the weight-major form for rows in
``WEIGHT_MAJOR_MIN_ROWS..WEIGHT_MAJOR_MAX_ROWS`` and weights of at least
``WEIGHT_MAJOR_MIN_WEIGHT`` elements (``ernie_otel/backends/loading.py``), on float32 CPU models
only.

``--bf16``: the same shapes in bf16, three ways: plain ``nn.Linear`` (oneDNN), ernie-serve's
``bf16_cpu_linear`` (for few rows its own kernel, ``ernie_otel/backends/csrc/bf16_linear.c``, where
the CPU has AVX-512 and a C compiler is there; else rows padded to a bucket, or from
``BF16_FP32_MIN_ROWS`` rows on the weight widened into an fp32 scratch buffer; the last column says
which), and fp32 ``nn.Linear`` for reference. Each weight is one of several copies used in turn, so
that it comes from memory as in a forward pass rather than from the cache.
"""

from __future__ import annotations

import argparse
import functools
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import torch

from ernie_otel.backends import cpu_kernel
from ernie_otel.backends.loading import (
    BF16_FP32_MAX_WEIGHT,
    BF16_FP32_MIN_ROWS,
    WEIGHT_MAJOR_MAX_ROWS,
    WEIGHT_MAJOR_MIN_ROWS,
    bf16_rows_bucket,
    cpu_flags,
    use_bf16_cpu_linears,
)

# (out_features, in_features) of the 0.3B model's linears
SHAPES = {"gate/up (1024->3072)": (3072, 1024), "down (3072->1024)": (1024, 3072), "q (1024->2048)": (2048, 1024),
          "o (2048->1024)": (1024, 2048), "k/v (1024->256)": (256, 1024), "output head (1024->103424)": (103424, 1024)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rows", default="1,2,4,8,16,32,48,64,96,128")
    ap.add_argument("--reps", type=int, default=12)
    ap.add_argument("--bf16", action="store_true", help="bf16: nn.Linear vs ernie-serve's bounded bf16 linear vs fp32")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    rows = [int(r) for r in args.rows.split(",")]
    if args.bf16:
        return bf16(rows, args.reps)
    print(f"torch {torch.__version__}, {args.threads} threads; weight-major window in ernie-serve: "
          f"{WEIGHT_MAJOR_MIN_ROWS}..{WEIGHT_MAJOR_MAX_ROWS} rows\n")
    print("| linear | rows | nn.Linear ms | (W @ x.T).T ms | ratio |\n|---|---:|---:|---:|---:|")
    for name, (n, k) in SHAPES.items():
        w = torch.randn(n, k)
        reps = max(3, args.reps // 3) if n > 10_000 else args.reps
        for m in rows:
            x = torch.randn(m, k)
            a: list[float] = []
            b: list[float] = []
            for _ in range(reps + 2):
                t = time.perf_counter()
                torch.nn.functional.linear(x, w)
                a.append(time.perf_counter() - t)
                t = time.perf_counter()
                _ = (w @ x.T).T
                b.append(time.perf_counter() - t)
            ma, mb = statistics.median(a[2:]) * 1e3, statistics.median(b[2:]) * 1e3
            print(f"| {name} | {m} | {ma:.2f} | {mb:.2f} | {ma / mb:.2f} |", flush=True)
    return 0


def _median_ms(fn: Callable[[Any], object], items: list[Any], reps: int) -> float:
    """Median milliseconds of one ``fn(item)``, timed over all the items in turn."""
    times = []
    for _ in range(reps + 2):
        t = time.perf_counter()
        for item in items:
            fn(item)
        times.append((time.perf_counter() - t) / len(items))
    return statistics.median(times[2:]) * 1e3


def bf16(rows: list[int], reps: int) -> int:
    kernel = cpu_kernel.load(cpu_flags())
    print(f"ernie-serve's kernel: {'here' if kernel else 'not here'} (up to {cpu_kernel.MAX_ROWS} rows, "
          f"and beyond while rows x K <= {cpu_kernel.MAX_INPUT_ELEMENTS})")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; bf16 rows exact to 8 then bucketed; "
          f"widened to fp32 from {BF16_FP32_MIN_ROWS} rows for weights of <= {BF16_FP32_MAX_WEIGHT} elements\n")
    print("| linear | rows | fp32 nn.Linear ms | bf16 nn.Linear ms | ernie-serve bf16 ms | its path |\n"
          "|---|---:|---:|---:|---:|---|")
    for name, (n, k) in SHAPES.items():
        copies = 1 if n > 10_000 else 6  # 6 x 1024 x 3072 x 2 bytes: more than the caches hold
        layers = [torch.nn.Linear(k, n, bias=False).to(torch.bfloat16) for _ in range(copies)]
        wide32 = [layer.weight.float() for layer in layers]
        plain = [layer.weight for layer in layers]
        use_bf16_cpu_linears(torch.nn.Sequential(*layers), kernel)
        n_reps = max(3, reps // 3) if n > 10_000 else reps
        with torch.inference_mode():
            for m in rows:
                x = torch.randn(m, k).to(torch.bfloat16)
                x32 = x.float()
                f32 = _median_ms(functools.partial(torch.nn.functional.linear, x32), wide32, n_reps)
                b16 = _median_ms(functools.partial(torch.nn.functional.linear, x), plain, n_reps)
                ours = _median_ms(lambda layer, x=x: layer(x), layers, n_reps)
                widened = m >= BF16_FP32_MIN_ROWS and n * k <= BF16_FP32_MAX_WEIGHT
                path = "widened to fp32" if widened else f"bf16, {bf16_rows_bucket(m)} rows"
                if kernel is not None and cpu_kernel.takes(m, k):
                    path = "ernie-serve's kernel"
                print(f"| {name} | {m} | {f32:.2f} | {b16:.2f} | {ours:.2f} | {path} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
