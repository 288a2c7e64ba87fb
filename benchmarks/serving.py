"""Serving throughput and TTFT: ernie-serve vs ``transformers serve`` on the same model directory.

    .venv/bin/python benchmarks/serving.py [--models tiny,0.3b] [--concurrency 1,8] [--peers ...] [--json PATH]

Both servers get the same client (``ernie_otel.bench``), the same prompts and the same output
length. ernie-serve runs as shipped from this checkout (standalone telemetry: Prometheus reader
on); the peer runs ``transformers serve --device cpu MODEL_DIR`` (model pinned, so requests name
the directory, which GET /v1/models lists) with and without ``--continuous-batching``.

Peers (``--peers``, comma-separated): ``ernie-serve`` (its defaults: ``--dtype auto``, chunked
prefill), ``ernie-serve-fp32`` / ``ernie-serve-bf16`` (``--dtype``), ``ernie-serve-nochunk``
(``--max-num-batched-tokens 0``), ``ernie-serve-seqs32`` (``--max-num-seqs 32``), ``ernie-serve-tok512``
(``--max-num-batched-tokens 512``), ``ernie-serve-torchkernel`` (``--cpu-kernel torch``); suffixes
combine: ``ernie-serve-fp32-nochunk``,
``transformers``, ``transformers-cb`` and ``transformers-cb-bf16`` (``--dtype bfloat16``).
With ``--base REV``, ``base-ernie-serve[-suffixes]`` is the same server from REV's code (checked
out into a temporary worktree), to compare an engine change side by side in one run.

Equal output lengths: ernie-serve takes ``ignore_eos``; ``transformers serve`` rejects unknown
fields (HTTP 422), so it gets ``generation_config`` -- a JSON string that replaces the model's
generation config -- without an EOS token and with ``min_new_tokens``. Both sample at temperature 1.

Models: ``tiny`` (the built-in test model) and ``0.3b``: the real ERNIE-4.5-0.3B configuration with
random weights, built once into ~/.cache/ernie-otel/models/bench-0.3b by ``ernie-otel tiny-model
--size 0.3b``, whose tokenizer is padded with placeholder tokens up to the 103424-entry
vocabulary so that every sampled id decodes to text (TTFT = first content chunk stays meaningful).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from overhead import BIN, CACHE, REPO, bench, machine, spawn_in, start_ernie_serve, status_kib

from ernie_otel.bench import BenchConfig, BenchResult
from ernie_otel.stack.procs import Running, free_port, stopping

# Requests per run by model and concurrency: enough for a p50, small enough for 10 minutes on 2 CPUs.
REQUESTS = {"tiny": {1: 16, 8: 64}, "0.3b": {1: 3, 8: 16, 32: 32}}
ROUNDS = {"tiny": 3, "0.3b": 1}


def model_dir(size: str) -> Path:
    if size == "tiny":
        from ernie_otel.tiny_model import ensure_tiny_model

        return ensure_tiny_model()
    target = CACHE / "models" / f"bench-{size}"
    if not (target / "config.json").exists():
        import subprocess

        print(f"building the {size} random-weight model into {target} (once)", file=sys.stderr)
        subprocess.run([BIN / "ernie-otel", "tiny-model", "--size", size, str(target)], check=True)
    return target


def start_transformers(name: str, path: Path, log_dir: Path, cb: bool, device: str = "cpu",
                       extra: list[str] | None = None) -> Running:
    port = free_port()
    args: list[str] = ["serve", "--host", "127.0.0.1", "--port", str(port), "--device", device,
                       "--log-level", "warning"]
    if cb:
        # Sized explicitly: the default sizing takes GBs of RAM on CPU. 128 blocks x 32 tokens covers
        # 8 requests of ~100 tokens many times over.
        args += ["--continuous-batching", "--cb-block-size", "32", "--cb-num-blocks", "128",
                 "--cb-max-batch-tokens", "512"]
    args += extra or []
    p = spawn_in(log_dir, name, [BIN / "transformers", *args, str(path)])
    p.url = f"http://127.0.0.1:{port}"
    return p


# Peer names that run ernie-serve: this tree's, and (with --base) the base tree's.
ERNIE_PEERS = ("ernie-serve", "base-ernie-serve")


def peer_extra(kind: str, max_tokens: int) -> tuple[bool, dict[str, Any]]:
    """(ignore_eos, extra body) that make every request produce exactly max_tokens tokens."""
    if kind.startswith(ERNIE_PEERS):
        return True, {}
    gen = {"do_sample": True, "temperature": 1.0, "top_k": 0, "top_p": 1.0, "min_new_tokens": max_tokens,
           "max_new_tokens": max_tokens}
    return False, {"generation_config": json.dumps(gen)}


def run_model(size: str, args: argparse.Namespace, log_dir: Path) -> list[dict[str, Any]]:
    path = model_dir(size)
    peers = [p for p in args.peers.split(",") if p]
    procs: list[Running] = []
    rows: list[dict[str, Any]] = []
    with stopping(procs):
        servers: dict[str, Running] = {}
        for peer in peers:
            if peer.startswith(ERNIE_PEERS):
                base = peer.startswith("base-")
                if base and args.base_tree is None:
                    raise SystemExit(f"{peer}: needs --base REV")
                servers[peer] = start_ernie_serve(f"{peer}-{size}", str(path), log_dir,
                                                  tree=args.base_tree if base else REPO,
                                                  extra_args=["--torch-threads", str(args.torch_threads), "--device",
                                                              args.device, *ernie_flags(peer.removeprefix("base-"))])
            elif peer == "transformers":
                servers[peer] = start_transformers(f"transformers-{size}", path, log_dir, cb=False,
                                                     device=args.device)
            elif peer in ("transformers-cb", "transformers-cb-bf16"):
                extra = ["--dtype", "bfloat16"] if peer.endswith("-bf16") else []
                servers[peer] = start_transformers(f"{peer}-{size}", path, log_dir, cb=True, device=args.device,
                                                   extra=extra)
            else:
                raise SystemExit(f"unknown peer {peer!r}")
            procs.append(servers[peer])
        for s in servers.values():
            s.wait_http(s.url + "/health", timeout=600)
        rounds = args.rounds or ROUNDS.get(size, 1)
        results: dict[tuple[str, int], list[BenchResult]] = {}
        for peer, s in servers.items():
            ignore_eos, extra = peer_extra(peer, args.max_tokens)
            # First requests pay one-off costs; the CB peer also builds its batching manager here.
            bench(BenchConfig(url=s.url, requests=2, concurrency=2, max_tokens=4, prompt_tokens=args.prompt_tokens,
                              ignore_eos=ignore_eos, extra_body=extra))
        # Alternate servers inside each round, so background load on a shared box hits them alike.
        for rnd in range(rounds):
            for c in args.concurrency:
                for peer, s in servers.items():
                    ignore_eos, extra = peer_extra(peer, args.max_tokens)
                    n = args.requests or REQUESTS.get(size, {}).get(c, 4 * c)
                    r = bench(BenchConfig(url=s.url, requests=n, concurrency=c, max_tokens=args.max_tokens,
                                          prompt_tokens=args.prompt_tokens, ignore_eos=ignore_eos, extra_body=extra,
                                          timeout=1800))
                    if r.output_tokens != n * args.max_tokens:
                        raise RuntimeError(f"{peer}: {r.output_tokens} tokens, expected {n * args.max_tokens}")
                    results.setdefault((peer, c), []).append(r)
                    print(f"{size} round {rnd + 1}/{rounds} c={c} {peer:<24} {r.output_tokens_per_s:8.1f} tok/s  "
                          f"TTFT p50 {r.ttft_ms.p50:8.1f} ms  TPOT p50 {r.tpot_ms.p50:7.2f} ms", file=sys.stderr)
        for (peer, c), rs in results.items():
            pid = servers[peer].proc.pid
            rows.append({
                "model": size, "server": peer, "concurrency": c, "requests": rs[0].requests_sent, "runs": len(rs),
                "tok_s": statistics.median(r.output_tokens_per_s for r in rs),
                "ttft_p50_ms": statistics.median(r.ttft_ms.p50 or 0.0 for r in rs),
                "ttft_p95_ms": statistics.median(r.ttft_ms.p95 or 0.0 for r in rs),
                "tpot_p50_ms": statistics.median(r.tpot_ms.p50 or 0.0 for r in rs),
                "tpot_p95_ms": statistics.median(r.tpot_ms.p95 or 0.0 for r in rs),
                "tok_s_rounds": [r.output_tokens_per_s for r in rs],
                "latency_p50_ms": statistics.median(r.latency_ms.p50 or 0.0 for r in rs),
                "rss_mib": status_kib(pid, "VmRSS") / 1024, "peak_rss_mib": status_kib(pid, "VmHWM") / 1024,
            })
    return rows


LABELS = {"ernie-serve": "ernie-serve", "transformers": "transformers serve",
          "transformers-cb": "transformers serve --continuous-batching",
          "transformers-cb-bf16": "transformers serve --continuous-batching --dtype bfloat16"}


def ernie_flags(peer: str) -> list[str]:
    """ernie-serve flags from a peer name's suffixes (see the module docstring)."""
    flags: list[str] = []
    for part in peer.removeprefix("ernie-serve").split("-")[1:]:
        if part in ("fp32", "bf16"):
            flags += ["--dtype", "float32" if part == "fp32" else "bfloat16"]
        elif part == "nochunk":
            flags += ["--max-num-batched-tokens", "0"]
        elif part == "torchkernel":
            flags += ["--cpu-kernel", "torch"]
        elif part.startswith("seqs") and part[4:].isdigit():
            flags += ["--max-num-seqs", part[4:]]
        elif part.startswith("tok") and part[3:].isdigit():
            flags += ["--max-num-batched-tokens", part[3:]]
        else:
            raise SystemExit(f"unknown ernie-serve variant {part!r} in {peer!r}")
    return flags


def _per_round(r: dict[str, Any], b: dict[str, Any]) -> list[float]:
    """r's tok/s over b's, round by round (rounds interleave the servers, so a round's ratio sees
    the same background load on both sides)."""
    return [x / y for x, y in zip(r["tok_s_rounds"], b["tok_s_rounds"], strict=False) if y]


def ratios(rows: list[dict[str, Any]], base: str = "transformers-cb") -> list[str]:
    """Each ernie-serve variant's tok/s over the baseline's, per concurrency (the ratio of medians
    and the median of per-round ratios), and over the same variant from ``--base`` (per-round
    ratios, the TPOT p50 medians side by side)."""
    by = {(r["model"], r["server"], r["concurrency"]): r for r in rows}
    lines: list[str] = []
    for r in rows:
        b = by.get((r["model"], base, r["concurrency"]))
        if b is not None and r["server"].startswith("ernie-serve") and b["tok_s"]:
            per_round = _per_round(r, b)
            lines.append(f"{r['model']} c={r['concurrency']} {r['server']} / {base}: {r['tok_s'] / b['tok_s']:.2f}x "
                         f"(median of per-round ratios {statistics.median(per_round):.2f}x over {len(per_round)})")
    for r in rows:
        b = by.get((r["model"], "base-" + r["server"], r["concurrency"]))
        if b is not None:
            per_round = _per_round(r, b)
            lines.append(f"{r['model']} c={r['concurrency']} {r['server']} / base: tok/s "
                         f"{statistics.median(per_round):.2f}x (median of {len(per_round)} per-round ratios); "
                         f"TPOT p50 {r['tpot_p50_ms']:.1f} vs {b['tpot_p50_ms']:.1f} ms")
    return lines


def format_rows(rows: list[dict[str, Any]], args: argparse.Namespace) -> str:
    lines = [
        f"Serving on {args.device}: max_tokens {args.max_tokens} (every request runs to it), "
        f"prompt ~{args.prompt_tokens} words, chat, stream; medians over rounds.",
        "",
        "| model | server | concurrency | requests x runs | output tok/s | TTFT p50 / p95 ms | TPOT p50 / p95 ms "
        "| latency p50 ms | RSS MiB (peak) |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(f"| {r['model']} | {LABELS.get(r['server'], r['server'])} | {r['concurrency']} | "
                     f"{r['requests']} x {r['runs']} | {r['tok_s']:.1f} | "
                     f"{r['ttft_p50_ms']:.0f} / {r['ttft_p95_ms']:.0f} | "
                     f"{r['tpot_p50_ms']:.1f} / {r['tpot_p95_ms']:.1f} | "
                     f"{r['latency_p50_ms']:.0f} | {r['rss_mib']:.0f} ({r['peak_rss_mib']:.0f}) |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="tiny,0.3b")
    ap.add_argument("--concurrency", default="1,8", type=lambda s: [int(x) for x in s.split(",")])
    ap.add_argument("--peers", default="ernie-serve,transformers,transformers-cb")
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--prompt-tokens", type=int, default=32)
    ap.add_argument("--requests", type=int, default=None, help="requests per run (default: by model and concurrency)")
    ap.add_argument("--rounds", type=int, default=None, help="rounds per model (default: tiny 3, 0.3b 1)")
    ap.add_argument("--torch-threads", type=int, default=os.cpu_count() or 1,
                    help="ernie-serve's --torch-threads (default: every core, what torch gives the peer)")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"],
                    help="--device for both servers (ernie-serve and transformers serve)")
    ap.add_argument("--base", default=None, metavar="REV",
                    help="the code of REV for the base-ernie-serve* peers (a temporary git worktree)")
    ap.add_argument("--json", dest="json_path", default=None)
    args = ap.parse_args(argv)
    t0 = time.monotonic()
    log_dir = Path(tempfile.mkdtemp(prefix="ernie-serving-"))
    print(f"machine: {machine()}\nlogs: {log_dir}", file=sys.stderr)
    rows: list[dict[str, Any]] = []
    args.base_tree = None
    if args.base:
        args.base_tree = log_dir / "base"
        subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", "-q", str(args.base_tree), args.base],
                       check=True)
    try:
        for size in [m for m in args.models.split(",") if m]:
            rows += run_model(size, args, log_dir)
    finally:
        if args.base_tree is not None:
            subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(args.base_tree)], check=False)
    print(format_rows(rows, args))
    print("\n".join(["", *ratios(rows)]))
    print(f"\n{time.monotonic() - t0:.0f} s")
    if args.json_path:
        Path(args.json_path).write_text(json.dumps({"machine": machine(), "args": {
            k: v for k, v in vars(args).items() if k != "base_tree"}, "rows": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
