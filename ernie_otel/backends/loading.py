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

from . import cpu_kernel as kernels

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


# Models this large (parameters) run in bf16 under ``--dtype auto`` on a CPU with native bf16:
# decoding streams every weight once per step, and bf16 halves the bytes (0.3B shape, 2 threads:
# one-row decode step ~60 ms in bf16, ~87 ms in fp32). Smaller models' weights stay in the CPU's
# caches, so fp32 is as fast there, and exact. The same bar as default_torch_threads'.
AUTO_BF16_MIN_PARAMETERS = 50_000_000

BF16_CPU_NOTE = "this CPU computes bf16 natively (%s): --dtype auto runs this model in bfloat16"
BF16_CPU_SMALL_NOTE = ("this CPU computes bf16 natively (%s), but the model is small (%d parameters, under %d): "
                       "--dtype auto keeps float32")


def resolve_dtype(dtype: str, device: str, num_parameters: int = 0, flags: frozenset[str] = frozenset()) -> str:
    """The torch dtype name for ``--dtype``: "auto" is bfloat16 on CUDA, and on a CPU whose ``flags``
    include native bf16 (BF16_CPU_FLAGS) for models of AUTO_BF16_MIN_PARAMETERS or more; float32
    elsewhere. Any other value is taken as given."""
    if dtype != "auto":
        return dtype
    if device.startswith("cuda"):
        return "bfloat16"
    if flags & BF16_CPU_FLAGS and num_parameters >= AUTO_BF16_MIN_PARAMETERS:
        return "bfloat16"
    return "float32"


def count_parameters(path: Path) -> int:
    """The parameters of the model in ``path``, from its config alone (built on the meta device:
    no weights are read or allocated)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(path, local_files_only=True)
    with torch.device("meta"):
        return int(AutoModelForCausalLM.from_config(config).num_parameters())  # type: ignore[no-untyped-call]


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


def _plain_linears(model: Any) -> list[Any]:
    """The modules of ``model`` that are exactly ``nn.Linear`` (not subclasses, which may compute otherwise)."""
    import torch

    return [m for m in model.modules() if type(m) is torch.nn.Linear]


def _route(linears: list[Any], forward: Any) -> int:
    """Make ``forward(module, x)`` the forward of each of ``linears``; returns how many."""
    for module in linears:
        module.forward = types.MethodType(forward, module)
    return len(linears)


def use_weight_major_linears(model: Any) -> int:
    """Route every ``nn.Linear`` of ``model`` with a weight of WEIGHT_MAJOR_MIN_WEIGHT elements or
    more through :func:`weight_major_linear`; returns how many."""
    large = [m for m in _plain_linears(model) if m.weight.numel() >= WEIGHT_MAJOR_MIN_WEIGHT]
    return _route(large, weight_major_linear)


# bf16 on a CPU (AVX512-BF16 or AMX): torch's bf16 matmuls are oneDNN kernels JIT-compiled per
# problem shape and kept for the process's life, outside ONEDNN_PRIMITIVE_CACHE_CAPACITY's reach
# (capacity 0 still left +285 MiB). A server meets a new row count with nearly every prefill, so
# plain bf16 grew the soak's RSS by 31-38%; 200 random shapes grew the tiny model by 557 MiB.
# Two things bound it:
# - a linear's input rows are padded up to a bucket (exact to 8, then four buckets an octave, so
#   at most 25% padding): a bounded set of shapes per weight;
# - from BF16_FP32_MIN_ROWS rows on (prefill chunks) the weight is widened into a per-model fp32
#   scratch buffer and the product runs in fp32 (MKL, no per-shape kernels). Without AMX, bf16 is
#   the slower one there: 512 rows x 1024 -> 3072 took 22.5 ms in bf16, 16.3 ms widened (2 threads).
# With both, the same 200 shapes grew it by 53 MiB, and 400 more by 22 (docs/benchmarks.md).
# Weights larger than the scratch buffer (the output head: 1024 x 103424, 150 ms to widen) stay bf16,
# bucketed; the engine asks it for one row per sequence (logits_to_keep=1).
BF16_EXACT_ROWS = 8
BF16_FP32_MIN_ROWS = 64
# The scratch buffer holds the largest weight of this many elements or fewer (0.3B: 3072 x 1024).
BF16_FP32_MAX_WEIGHT = 1 << 23


def bf16_rows_bucket(rows: int) -> int:
    """The row count a bf16 CPU linear computes for ``rows`` rows: ``rows`` up to BF16_EXACT_ROWS,
    then the next of four evenly spaced steps in each octave (10, 12, 14, 16, 20, 24, ...)."""
    if rows <= BF16_EXACT_ROWS:
        return rows
    step = 1 << ((rows - 1).bit_length() - 3)
    return -(-rows // step) * step


class _Scratch:
    """One fp32 buffer per model for widening bf16 weights (the engine runs one forward at a time)."""

    def __init__(self, elements: int) -> None:
        self.elements = elements
        self.buffer: Any = None


def bf16_cpu_linear(module: Any, x: Any) -> Any:
    """``module(x)`` for a bf16 ``nn.Linear`` on a CPU, over a bounded set of kernel shapes: the rows
    that :func:`kernels.takes` through ernie-serve's own kernel where the module has it; else rows
    padded to :func:`bf16_rows_bucket`, or, from BF16_FP32_MIN_ROWS rows on and for weights that
    fit the model's scratch buffer, the fp32 product of the widened weight (rounded back to bf16)."""
    import torch

    weight, bias = module.weight, module.bias
    k = x.shape[-1]
    rows = x.numel() // k if k else 0
    flat = x.reshape(rows, k)
    kernel = getattr(module, "_ernie_kernel", None)
    if kernel is not None and kernels.takes(rows, k) and x.dtype == torch.bfloat16:
        out = kernels.linear(kernel, flat, weight, bias)
        return out.reshape(*x.shape[:-1], weight.shape[0])
    scratch: _Scratch | None = getattr(module, "_ernie_scratch", None)
    if rows >= BF16_FP32_MIN_ROWS and scratch is not None and weight.numel() <= scratch.elements:
        if scratch.buffer is None:
            scratch.buffer = torch.empty(scratch.elements, dtype=torch.float32, device=weight.device)
        wide = scratch.buffer[: weight.numel()].view(weight.shape)
        wide.copy_(weight)
        out = torch.nn.functional.linear(flat.float(), wide, None if bias is None else bias.float()).to(x.dtype)
    else:
        bucket = bf16_rows_bucket(rows)
        if bucket != rows:
            flat = torch.nn.functional.pad(flat, (0, 0, 0, bucket - rows))
        out = torch.nn.functional.linear(flat, weight, bias)[:rows]
    return out.reshape(*x.shape[:-1], weight.shape[0])


def use_bf16_cpu_linears(model: Any, kernel: kernels.Kernel | None = None) -> int:
    """Route every ``nn.Linear`` of a bf16 CPU ``model`` through :func:`bf16_cpu_linear`, sharing one
    scratch buffer sized for the largest weight of BF16_FP32_MAX_WEIGHT elements or fewer, and
    giving ``kernel`` (from :func:`kernels.load`) to those whose weights it takes; returns how many."""
    linears = _plain_linears(model)
    fits = [m.weight.numel() for m in linears if m.weight.numel() <= BF16_FP32_MAX_WEIGHT]
    scratch = _Scratch(max(fits, default=0))
    for module in linears:
        object.__setattr__(module, "_ernie_scratch", scratch)  # a plain attribute, not a submodule
        object.__setattr__(module, "_ernie_kernel", kernel if kernel and kernels.fits(module.weight) else None)
    return _route(linears, bf16_cpu_linear)


def load_model(path: Path, device: str, dtype: str, threads: int = 0, cpu_kernel: str = "auto") -> tuple[Any, Any]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    device = resolve_device(device)
    all_flags = cpu_flags() if device == "cpu" else frozenset()  # /proc/cpuinfo, read once
    flags = all_flags & BF16_CPU_FLAGS
    num_parameters = count_parameters(path) if dtype == "auto" and flags else 0
    torch_dtype = getattr(torch, resolve_dtype(dtype, device, num_parameters, flags))
    if dtype == "auto" and flags:
        if torch_dtype == torch.bfloat16:
            log.info(BF16_CPU_NOTE, ", ".join(sorted(flags)))
        else:
            log.info(BF16_CPU_SMALL_NOTE, ", ".join(sorted(flags)), num_parameters, AUTO_BF16_MIN_PARAMETERS)
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    # SDPA: fused attention kernels on CUDA and CPU alike (transformers' default where it can,
    # named so that a change of default upstream does not silently change our numbers).
    model: Any = AutoModelForCausalLM.from_pretrained(path, dtype=torch_dtype, local_files_only=True,
                                                      attn_implementation="sdpa")
    model.to(device).eval()
    if device == "cpu" and torch_dtype == torch.float32:
        use_weight_major_linears(model)
    elif device == "cpu" and torch_dtype == torch.bfloat16:
        use_bf16_cpu_linears(model, kernels.load(all_flags) if cpu_kernel == "auto" else None)
    torch.set_num_threads(threads or default_torch_threads(model.num_parameters()))
    return model, tokenizer
