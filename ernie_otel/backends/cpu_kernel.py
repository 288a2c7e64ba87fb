"""ernie-serve's own CPU kernel for bf16 products of few rows (``csrc/bf16_linear.c``): decode
steps, and prefill chunks of short prompts.

A decode step multiplies one row per running sequence (up to 8 by default) by every weight of the
model. torch's bf16 kernel for that shape (oneDNN, on CPUs without AMX) copies the plain weight
into its blocked layout on each call; ours reads each weight row once, in place, widens bf16 pairs
to fp32 in registers and multiplies with fp32 FMAs. It is compiled from source on the machine that
runs it, once (cached under ``$ERNIE_OTEL_CACHE/kernels``), with the C compiler that is there, and
loaded with ctypes: no build step at install time, and nothing when there is no compiler, no
AVX-512, or ``--cpu-kernel torch``: then torch's kernel runs, as before.
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

SOURCE = Path(__file__).parent / "csrc" / "bf16_linear.c"
SYMBOL = "ernie_bf16_linear"
# The kernel uses AVX-512 Foundation only (loads, shifts, masks, FMA, reductions).
REQUIRED_CPU_FLAGS = frozenset({"avx512f"})
CFLAGS = ("-O3", "-mavx512f", "-mfma", "-fopenmp", "-shared", "-fPIC", "-std=c11")
# Its inner loop takes 32 input columns at a time.
K_MULTIPLE = 32
# Rows it is used for: always up to MAX_ROWS (a decode step of up to 8 sequences), and beyond
# while rows x K stays within MAX_INPUT_ELEMENTS: 64 rows of 1024 columns, 32 of 2048, 21 of 3072
# (short prompts' prefill chunks). Past that, torch's fp32 GEMM on weights widened to fp32
# (loading.py) is as fast or faster: a 0.3B-shape prefill of 16/30/60/120 tokens took 99/161/288/
# 494 ms with the kernel up to twice this bound, 144/198/322/475 ms widened (docs/benchmarks.md).
MAX_ROWS = 8
MAX_INPUT_ELEMENTS = 64 * 1024
BUILD_TIMEOUT_S = 120

Kernel = Callable[..., int]

_lock = threading.Lock()
_loaded: dict[Path, Kernel | None] = {}


def kernels_dir() -> Path:
    from ernie_otel.tiny_model import cache_root

    return cache_root() / "kernels"


def compiler() -> str | None:
    """The C compiler: ``$CC``, else ``cc`` or ``gcc`` on the PATH; None where there is none."""
    return os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")


def library_path(cc: str, directory: Path) -> Path:
    """Where the kernel built from this source with this compiler and these flags is cached."""
    key = hashlib.sha256(SOURCE.read_bytes() + "\0".join((cc, *CFLAGS)).encode()).hexdigest()[:16]
    return directory / f"bf16_linear-{key}.so"


def build(directory: Path | None = None) -> Path | None:
    """The shared library, compiled here on first use; None (with a warning) when it cannot be."""
    cc = compiler()
    if cc is None:
        log.warning("no C compiler (cc, gcc or $CC): bf16 decode products use torch's kernel")
        return None
    directory = directory or kernels_dir()
    path = library_path(cc, directory)
    if path.exists():
        return path
    directory.mkdir(parents=True, exist_ok=True)
    # Compile next to the target and rename: concurrent servers never load a half-written file.
    fd, tmp = tempfile.mkstemp(prefix=path.stem + ".", suffix=".tmp", dir=directory)
    os.close(fd)
    try:
        done = subprocess.run([cc, *CFLAGS, "-o", tmp, str(SOURCE)], capture_output=True, text=True,
                              timeout=BUILD_TIMEOUT_S, check=False)
        if done.returncode != 0:
            log.warning("could not compile %s with %s (bf16 decode products use torch's kernel): %s",
                        SOURCE.name, cc, done.stderr.strip()[-2000:])
            return None
        os.replace(tmp, path)
        log.info("compiled %s with %s into %s", SOURCE.name, cc, path)
        return path
    except (OSError, subprocess.TimeoutExpired) as exc:
        log.warning("could not compile %s with %s (bf16 decode products use torch's kernel): %s",
                    SOURCE.name, cc, exc)
        return None
    finally:
        Path(tmp).unlink(missing_ok=True)


def load(flags: frozenset[str], directory: Path | None = None) -> Kernel | None:
    """The kernel's entry point, or None where this CPU (``flags``) lacks AVX-512 or it cannot be
    built. Built and loaded once per process and directory."""
    if not REQUIRED_CPU_FLAGS <= flags:
        return None
    import torch  # noqa: F401  (first: the kernel's libgomp.so.1 then resolves to torch's)

    key = directory or kernels_dir()
    with _lock:
        if key not in _loaded:
            path = build(directory)
            kernel: Kernel | None = None
            if path is not None:
                try:
                    fn = getattr(ctypes.CDLL(str(path)), SYMBOL)
                except (OSError, AttributeError) as exc:
                    log.warning("could not load %s (bf16 decode products use torch's kernel): %s", path, exc)
                else:
                    fn.argtypes = [ctypes.c_void_p] * 4 + [ctypes.c_int64] * 3 + [ctypes.c_int]
                    fn.restype = ctypes.c_int
                    kernel = fn
            _loaded[key] = kernel
        return _loaded[key]


def takes(rows: int, k: int) -> bool:
    """Whether the kernel is the faster one for ``rows`` input rows of ``k`` columns."""
    return rows <= MAX_ROWS or rows * k <= MAX_INPUT_ELEMENTS


def fits(weight: Any) -> bool:
    """Whether the kernel takes this weight: bf16, on the CPU, contiguous, K a multiple of 32."""
    import torch

    return bool(weight.dtype == torch.bfloat16 and weight.device.type == "cpu" and weight.dim() == 2
            and weight.is_contiguous() and weight.shape[1] % K_MULTIPLE == 0)


def linear(kernel: Kernel, flat: Any, weight: Any, bias: Any) -> Any:
    """``flat @ weight.T + bias`` for bf16 ``flat`` of [rows, K] through ``kernel`` (``fits(weight)``)."""
    import torch

    flat = flat.contiguous()
    rows, n = flat.shape[0], weight.shape[0]
    out = torch.empty(rows, n, dtype=torch.bfloat16)
    if bias is not None:
        bias = bias.contiguous()
    status = kernel(flat.data_ptr(), weight.data_ptr(), None if bias is None else bias.data_ptr(), out.data_ptr(),
                    rows, n, flat.shape[1], torch.get_num_threads())
    if status != 0:  # fits() already keeps out the shapes it refuses
        raise RuntimeError(f"{SYMBOL} refused a [{rows}, {flat.shape[1]}] x [{n}, {weight.shape[1]}] product")
    return out
