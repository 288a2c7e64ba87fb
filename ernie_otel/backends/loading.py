"""Finding and loading a model's weights for the local backend.

Importing this module is cheap: torch and transformers are imported inside ``load_model`` only, so
``ernie-serve`` can check ``--model`` before binding ports, and gateway mode never loads them.
"""

from __future__ import annotations

import logging
import os
import types
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


class ModelUnavailableError(Exception):
    """Weights are not on this machine; the message says how to get them."""


def resolve_model_path(model: str) -> Path:
    if model == "tiny":
        from ..tiny_model import ensure_tiny_model

        return ensure_tiny_model()
    path = Path(model).expanduser()
    if model.startswith(("/", ".", "~")) and not path.exists():
        raise ModelUnavailableError(f"{model} does not exist (a local model directory was given). "
                                    "`--model tiny` runs the built-in small random-weight ERNIE-4.5.")
    if path.is_dir():
        if not (path / "config.json").exists():
            raise ModelUnavailableError(f"{path} is a directory but holds no config.json: not a model directory.")
        return path
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(model, local_files_only=True))
    except Exception:
        raise ModelUnavailableError(
            f"Model weights for {model!r} are not on this machine (ernie-serve loads offline).\n"
            f"  Get them where there is internet:  hf download {model}   (or huggingface-cli download {model})\n"
            "  then copy the Hugging Face cache here, or pass --model /path/to/local/dir.\n"
            "  To try ernie-serve now, `--model tiny` runs the built-in small random-weight ERNIE-4.5."
        ) from None


def default_torch_threads(num_parameters: int) -> int:
    """Threads for torch when --torch-threads is not given.

    A small model's ops are too short to split: extra OpenMP threads only spin-wait, and on a busy
    2-core machine the tiny model's latency went bimodal (median 20 ms vs 115-156 ms) with two.
    A real model needs the cores (0.3B prefill of 118 tokens: 850 ms on one thread, 625 ms on
    two), but beyond two cores one is left to the event loop that parses and streams.
    """
    if num_parameters < 50_000_000:
        return 1
    cores = os.cpu_count() or 1
    return cores if cores <= 2 else cores - 1


# CPU flags (Linux /proc/cpuinfo names) that give native bf16 arithmetic: AVX512-BF16 dot
# products, or AMX tiles. Without one of them torch emulates bf16 matmuls through fp32 and is
# slower than plain fp32.
BF16_CPU_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})


def cpu_flags(cpuinfo: str | None = None) -> frozenset[str]:
    """The CPU's feature flags from /proc/cpuinfo (empty where there is none, e.g. macOS)."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text(errors="replace")
        except OSError:
            return frozenset()
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "flags":  # every core lists the same flags: the first line is enough
            return frozenset(value.split())
    return frozenset()


# Why "auto" is float32 on every CPU, native bf16 or not: torch's CPU bf16 matmuls (oneDNN
# brgemm, JIT-compiled per problem shape) keep a kernel per distinct shape for the life of the
# process, outside ONEDNN_PRIMITIVE_CACHE_CAPACITY's reach. Serving makes a new shape for nearly
# every prefill (rows x prompt columns), so RSS grows with traffic: the 2,000-request soak went
# +31-38% in bf16 against +0.4% in fp32 (tiny model; docs/benchmarks.md, "Issue 20"). bf16 on a
# CPU stays one flag away (--dtype bfloat16) for those who bound their shapes or restart.
BF16_CPU_NOTE = ("this CPU computes bf16 natively (%s): --dtype bfloat16 runs faster, but its kernels are "
                 "cached per batch shape and RSS grows with traffic, so --dtype auto keeps float32 here")


def resolve_dtype(dtype: str, device: str) -> str:
    """The torch dtype name for ``--dtype``: "auto" is bfloat16 on CUDA and float32 on CPUs (see
    BF16_CPU_NOTE); any other value is taken as given."""
    if dtype != "auto":
        return dtype
    return "bfloat16" if device.startswith("cuda") else "float32"


def resolve_device(device: str) -> str:
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


# ---------------------------------------------------------------- fp32 decode matmuls on CPUs
# ``nn.Linear`` computes ``x @ W.T``. With a handful of token rows (a decode step of 8 sequences)
# MKL's sgemm takes a path that runs far below the CPU's peak: on the project's 2-core machine
# (torch 2.15, MKL 2024.2) ``linear`` over the 0.3B shape's 1024 x 103424 output head took 57 ms
# for 8 rows against 17 ms for one. The same product asked the other way round, ``(W @ x.T).T``,
# was 1.2-1.7x faster for 8 to 48 rows on every large linear of the model, mixed at 4-6 and 64
# rows, and 1.6-2.7x slower at 2 (hence the window). ``benchmarks/cpu_matmul.py`` measures both on
# the machine at hand. load_model routes float32 models on CPUs through it (CUDA's GEMMs have no
# such gap).
#
# Token rows for which the weight-major product is used (inclusive).
WEIGHT_MAJOR_MIN_ROWS = 8
WEIGHT_MAJOR_MAX_ROWS = 48
# Only weights this large (elements): below it (the 0.3B model's 1024 -> 256 key/value
# projections) the weight-major form was slower at 8 rows, by microseconds.
WEIGHT_MAJOR_MIN_WEIGHT = 1 << 20


def weight_major_linear(module: Any, x: Any) -> Any:
    """``module(x)`` for an ``nn.Linear``: ``(W @ x.T).T`` when x has WEIGHT_MAJOR_MIN_ROWS..MAX_ROWS rows."""
    import torch

    k = x.shape[-1]
    rows = x.numel() // k if k else 0
    if not WEIGHT_MAJOR_MIN_ROWS <= rows <= WEIGHT_MAJOR_MAX_ROWS:
        return torch.nn.functional.linear(x, module.weight, module.bias)
    out = (module.weight @ x.reshape(rows, k).T).T
    if module.bias is not None:
        out = out + module.bias
    return out.reshape(*x.shape[:-1], module.weight.shape[0])


def use_weight_major_linears(model: Any) -> int:
    """Route every ``nn.Linear`` of ``model`` with a weight of WEIGHT_MAJOR_MIN_WEIGHT elements or
    more through :func:`weight_major_linear`; returns how many."""
    import torch

    count = 0
    for module in model.modules():
        if type(module) is torch.nn.Linear and module.weight.numel() >= WEIGHT_MAJOR_MIN_WEIGHT:
            module.forward = types.MethodType(weight_major_linear, module)  # type: ignore[method-assign]
            count += 1
    return count


def load_model(path: Path, device: str, dtype: str, threads: int = 0) -> tuple[Any, Any]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    device = resolve_device(device)
    torch_dtype = getattr(torch, resolve_dtype(dtype, device))
    if dtype == "auto" and device == "cpu":
        flags = cpu_flags() & BF16_CPU_FLAGS
        if flags:
            log.info(BF16_CPU_NOTE, ", ".join(sorted(flags)))
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    # SDPA: fused attention kernels on CUDA and CPU alike (transformers' default where it can,
    # named so that a change of default upstream does not silently change our numbers).
    model: Any = AutoModelForCausalLM.from_pretrained(path, dtype=torch_dtype, local_files_only=True,
                                                      attn_implementation="sdpa")
    model.to(device).eval()
    if device == "cpu" and torch_dtype == torch.float32:
        use_weight_major_linears(model)
    torch.set_num_threads(threads or default_torch_threads(model.num_parameters()))
    return model, tokenizer
