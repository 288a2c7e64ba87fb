"""The roofline of a serving workload on this machine: the tokens/s no engine can beat here.

    .venv/bin/python benchmarks/roofline.py [--model-dir DIR] [--prompt-tokens 118] [--max-tokens 32]
                                            [--concurrency 1,8,32] [--threads 2] [--given ...] [--json PATH]

It measures two numbers per dtype with torch on this machine (the ceilings a transformer forward
pass lives under), then bounds one engine step of the workload by them:

- compute: a prefill-shaped matmul (256 tokens x hidden times hidden x 3*hidden), GFLOP/s;
- weight streaming: decode-shaped matmuls (8 tokens times weights that do not fit in the caches,
  the way decode walks the model once per step), GB/s of weights read.

At concurrency c with prompts of P tokens and answers of O tokens, a steady engine step carries c
decode tokens plus, on average, c*P/O prompt tokens (each request's prompt, spread over its O
steps, as chunked prefill mixes them in). The step can be no faster than reading every weight once
(bytes / GB/s) nor than its arithmetic (2 x params x tokens / GFLOP/s, plus attention), so

    output tok/s <= c / max(weight_bytes / bandwidth, flops(c * (1 + P/O)) / compute).

Attention reads of the KV cache and everything outside matmuls (norms, rotary, sampling, Python)
are left out: the bound is optimistic, which is what a roofline is for.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

DTYPES = ("float32", "bfloat16")


@dataclass(frozen=True)
class Shape:
    """What the bound needs from a model's config.json."""

    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int

    @classmethod
    def from_config(cls, cfg: dict[str, Any]) -> Shape:
        heads = int(cfg["num_attention_heads"])
        hidden = int(cfg["hidden_size"])
        return cls(hidden=hidden, intermediate=int(cfg["intermediate_size"]), layers=int(cfg["num_hidden_layers"]),
                   heads=heads, kv_heads=int(cfg.get("num_key_value_heads") or heads),
                   head_dim=int(cfg.get("head_dim") or hidden // heads), vocab=int(cfg["vocab_size"]))

    @property
    def layer_params(self) -> int:
        q_out = self.heads * self.head_dim
        kv_out = self.kv_heads * self.head_dim
        attention = self.hidden * q_out + 2 * self.hidden * kv_out + q_out * self.hidden
        return attention + 3 * self.hidden * self.intermediate  # gate, up, down

    @property
    def streamed_params(self) -> int:
        """Weights read once per step: every layer and the LM head (the embedding is a lookup)."""
        return self.layers * self.layer_params + self.hidden * self.vocab

    def flops(self, tokens: float, logits: float, context: float) -> float:
        """Matmul FLOPs of a step: ``tokens`` through the layers, ``logits`` through the LM head,
        each token attending over ``context`` keys on average."""
        attention = 4 * self.layers * self.heads * self.head_dim * context * tokens
        return 2 * self.layers * self.layer_params * tokens + 2 * self.hidden * self.vocab * logits + attention


@dataclass(frozen=True)
class Hardware:
    dtype: str
    gflops: float
    gbytes_s: float


def _best_seconds(fn: Any, repeat: int) -> float:
    fn()  # warm-up: first calls pick kernels and fault pages in
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def measure(dtype: str, hidden: int, threads: int, stream_mib: int = 512, repeat: int = 5) -> Hardware:
    import torch

    torch.set_num_threads(threads)
    dt = getattr(torch, dtype)
    a = torch.randn(256, hidden, dtype=dt)
    w = torch.randn(hidden, 3 * hidden, dtype=dt)
    flops = 2 * a.shape[0] * hidden * 3 * hidden
    seconds = _best_seconds(lambda: torch.mm(a, w), repeat)
    gflops = flops / seconds / 1e9
    # Many distinct weights, together larger than any cache, each read once per pass.
    per = hidden * 3 * hidden
    count = max(1, stream_mib * 2**20 // (per * w.element_size()))
    weights = [torch.randn(3 * hidden, hidden, dtype=dt) for _ in range(count)]
    x = torch.randn(8, 3 * hidden, dtype=dt)

    def walk() -> None:
        for m in weights:
            torch.mm(x, m)

    seconds = _best_seconds(walk, repeat)
    gbytes = count * per * w.element_size() / seconds / 1e9
    return Hardware(dtype=dtype, gflops=gflops, gbytes_s=gbytes)


def bound(shape: Shape, hw: Hardware, concurrency: int, prompt: int, output: int) -> dict[str, float]:
    """The roofline of one steady step and the output tokens/s it allows."""
    size = 4 if hw.dtype == "float32" else 2
    read_s = shape.streamed_params * size / (hw.gbytes_s * 1e9)
    prompt_per_step = concurrency * prompt / output
    tokens = concurrency + prompt_per_step
    context = prompt + output / 2  # a request's average context over its life
    compute_s = shape.flops(tokens, concurrency, context) / (hw.gflops * 1e9)
    step_s = max(read_s, compute_s)
    return {"step_ms": 1000 * step_s, "read_ms": 1000 * read_s, "compute_ms": 1000 * compute_s,
            "tok_s": concurrency / step_s, "tpot_ms": 1000 * step_s,
            "bound": "weights" if read_s >= compute_s else "compute"}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model-dir", type=Path, default=Path.home() / ".cache/ernie-otel/models/bench-0.3b",
                    help="a model directory (its config.json); default: the 0.3B shape benchmarks/serving.py builds")
    ap.add_argument("--prompt-tokens", type=int, default=118,
                    help="prompt length in tokens (serving.py's ~32-word chat prompts: 118)")
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--concurrency", default="1,8,32", type=lambda s: [int(x) for x in s.split(",")])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--given", default=None, metavar="DTYPE:GFLOPS:GBS,...",
                    help="use these ceilings instead of measuring (e.g. numbers taken on a quiet machine: "
                    "float32:199:22,bfloat16:866:42)")
    ap.add_argument("--json", dest="json_path", type=Path, default=None)
    args = ap.parse_args(argv)
    shape = Shape.from_config(json.loads((args.model_dir / "config.json").read_text()))
    print(f"model {args.model_dir.name}: {shape.streamed_params / 1e6:.0f}M streamed params; prompt "
          f"{args.prompt_tokens} tokens, answer {args.max_tokens}; torch threads {args.threads}", file=sys.stderr)
    rows: list[dict[str, Any]] = []
    given = {d: Hardware(dtype=d, gflops=float(f), gbytes_s=float(b))
             for d, f, b in (item.split(":") for item in args.given.split(","))} if args.given else {}
    for dtype in DTYPES:
        hw = given.get(dtype) or measure(dtype, shape.hidden, args.threads)
        print(f"{dtype}: matmul {hw.gflops:.0f} GFLOP/s, weight streaming {hw.gbytes_s:.1f} GB/s", file=sys.stderr)
        for c in args.concurrency:
            rows.append({"dtype": dtype, "concurrency": c, **asdict(hw),
                         **bound(shape, hw, c, args.prompt_tokens, args.max_tokens)})
    print("| dtype | concurrency | GFLOP/s | GB/s | step ms (weights / compute) | bound | roofline tok/s |")
    print("|---|---:|---:|---:|---:|---|---:|")
    for r in rows:
        print(f"| {r['dtype']} | {r['concurrency']} | {r['gflops']:.0f} | {r['gbytes_s']:.1f} | "
              f"{r['step_ms']:.1f} ({r['read_ms']:.1f} / {r['compute_ms']:.1f}) | {r['bound']} | {r['tok_s']:.0f} |")
    if args.json_path:
        args.json_path.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "rows": rows},
                                             indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
