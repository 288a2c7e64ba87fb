"""fp32 ``nn.Linear`` against its weight-major form ``(W @ x.T).T`` on this CPU, per token rows.

    .venv/bin/python benchmarks/cpu_matmul.py [--threads 2] [--rows 1,2,4,8,16,32,48,64,96,128] [--reps 12]

The shapes are the ERNIE-4.5-0.3B linears (hidden 1024, MLP 3072, 16 query and 2 key/value
heads of 128, the 103424-entry output head); random weights, the same inputs for both forms,
alternated within each repetition so that the machine's load falls on both alike. Prints the
median milliseconds of each form and their ratio (linear / weight-major: above 1 the
weight-major form is faster). ernie-serve uses the weight-major form for rows in
``WEIGHT_MAJOR_MIN_ROWS..WEIGHT_MAJOR_MAX_ROWS`` and weights of at least
``WEIGHT_MAJOR_MIN_WEIGHT`` elements (``ernie_otel/backends/loading.py``), on float32 CPU models
only.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch

from ernie_otel.backends.loading import WEIGHT_MAJOR_MAX_ROWS, WEIGHT_MAJOR_MIN_ROWS

# (out_features, in_features) of the 0.3B model's linears
SHAPES = {"gate/up (1024->3072)": (3072, 1024), "down (3072->1024)": (1024, 3072), "q (1024->2048)": (2048, 1024),
          "o (2048->1024)": (1024, 2048), "k/v (1024->256)": (256, 1024), "output head (1024->103424)": (103424, 1024)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rows", default="1,2,4,8,16,32,48,64,96,128")
    ap.add_argument("--reps", type=int, default=12)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    rows = [int(r) for r in args.rows.split(",")]
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


if __name__ == "__main__":
    sys.exit(main())
