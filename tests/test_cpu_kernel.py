"""ernie-serve's own bf16 kernel for few rows (ernie_otel/backends/csrc/bf16_linear.c): built here
with the machine's C compiler, the same products as torch's within bf16 rounding, each row
independent of the rows batched with it, used for the row counts where it is the faster one, and
torch's kernel wherever it cannot be.

On a CPU without AVX-512 the kernel is never loaded: these tests then check that, and that the
bf16 linears give the same products through torch.
"""

from __future__ import annotations

import logging
import subprocess
from pathlib import Path
from typing import Any

import pytest
import torch

from ernie_otel.backends import cpu_kernel
from ernie_otel.backends.loading import (
    BF16_EXACT_ROWS,
    bf16_cpu_linear,
    cpu_flags,
    load_model,
    resolve_model_path,
    use_bf16_cpu_linears,
)

HAS_AVX512 = cpu_kernel.REQUIRED_CPU_FLAGS <= cpu_flags()


@pytest.fixture(scope="module")
def kernel(tmp_path_factory: pytest.TempPathFactory) -> Any:
    built = cpu_kernel.load(cpu_flags(), tmp_path_factory.mktemp("kernels"))
    assert (built is not None) == HAS_AVX512, "a CPU with AVX-512 and a C compiler must get the kernel"
    return built


def reference(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
    return torch.nn.functional.linear(x.float(), w.float(), None if b is None else b.float())


def product(kernel: Any, x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
    if kernel is None:  # no AVX-512 here: what serving does instead
        return torch.nn.functional.linear(x, w, b)
    return cpu_kernel.linear(kernel, x, w, b)


def test_it_is_built_once_and_then_taken_from_the_cache(kernel: Any, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    if not HAS_AVX512:
        assert cpu_kernel.load(frozenset({"sse2"}), tmp_path) is None
        assert not list(tmp_path.iterdir())  # nothing was even compiled
        return
    path = cpu_kernel.build(tmp_path)
    assert path is not None and path.is_file() and path.parent == tmp_path
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temporary file left behind

    def no_compiler(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("compiled again although the library is cached")

    monkeypatch.setattr(subprocess, "run", no_compiler)
    assert cpu_kernel.build(tmp_path) == path


def test_without_a_working_compiler_serving_keeps_torchs_kernel(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setenv("CC", "false")  # a "compiler" that always fails
    with caplog.at_level(logging.WARNING, logger=cpu_kernel.__name__):
        assert cpu_kernel.load(frozenset({"avx512f"}), tmp_path) is None
    assert "could not compile bf16_linear.c with false" in caplog.text
    assert not list(tmp_path.iterdir())
    layer = torch.nn.Linear(64, 32).to(torch.bfloat16)
    use_bf16_cpu_linears(torch.nn.Sequential(layer), None)
    x = torch.randn(3, 64).to(torch.bfloat16)
    torch.testing.assert_close(layer(x).float(), reference(x, layer.weight, layer.bias), rtol=2e-2, atol=2e-2)


@pytest.mark.parametrize("n", [1, 3, 4, 5, 96, 2050])
@pytest.mark.parametrize("k", [32, 64, 1024])
@pytest.mark.parametrize("bias", [False, True], ids=["no-bias", "bias"])
def test_the_same_product_as_fp32_within_bf16_rounding(kernel: Any, n: int, k: int, bias: bool) -> None:
    """Every row count up to 8 and two beyond (each tile shape and its remainders), output counts
    that are not a multiple of the 4-row weight block; one bf16 rounding step of the fp32 product
    at most."""
    torch.manual_seed(n * k)
    w = torch.randn(n, k).to(torch.bfloat16)
    b = torch.randn(n).to(torch.bfloat16) if bias else None
    for rows in [*range(1, BF16_EXACT_ROWS + 1), 13, 64]:
        x = torch.randn(rows, k).to(torch.bfloat16)
        got, want = product(kernel, x, w, b), reference(x, w, b)
        assert got.shape == (rows, n) and got.dtype == torch.bfloat16
        torch.testing.assert_close(got.float(), want, rtol=2**-7, atol=1e-3 * k**0.5)


def test_a_rows_result_does_not_depend_on_the_rows_batched_with_it(kernel: Any) -> None:
    """Decode rows of different sequences share a step: each gets bit for bit what it gets alone."""
    torch.manual_seed(1)
    w, b = torch.randn(1030, 1024).to(torch.bfloat16), torch.randn(1030).to(torch.bfloat16)
    x = torch.randn(BF16_EXACT_ROWS, 1024).to(torch.bfloat16)
    batched = product(kernel, x, w, b)
    if kernel is None:
        return  # torch's kernel promises no such thing; the engine's tests use fp32 for equality
    for i in range(BF16_EXACT_ROWS):
        assert torch.equal(product(kernel, x[i:i + 1], w, b), batched[i:i + 1]), i
    assert torch.equal(product(kernel, x[2:7], w, b), batched[2:7])


def test_it_takes_decode_steps_and_short_chunks() -> None:
    assert all(cpu_kernel.takes(rows, 1 << 20) for rows in range(1, cpu_kernel.MAX_ROWS + 1))
    assert cpu_kernel.takes(64, 1024) and not cpu_kernel.takes(65, 1024)
    assert cpu_kernel.takes(32, 2048) and not cpu_kernel.takes(33, 2048)
    assert cpu_kernel.takes(21, 3072) and not cpu_kernel.takes(22, 3072)


def test_bf16_linears_use_it_for_the_rows_it_takes_and_torch_beyond(kernel: Any) -> None:
    calls: list[int] = []

    def spy(*args: Any) -> int:
        calls.append(args[4])  # rows
        return int(kernel(*args))

    fits, odd = torch.nn.Linear(1024, 96).to(torch.bfloat16), torch.nn.Linear(48, 96).to(torch.bfloat16)
    use_bf16_cpu_linears(torch.nn.Sequential(fits, odd), spy if kernel is not None else None)
    assert odd._ernie_kernel is None  # type: ignore[attr-defined]  (48 columns: not a multiple of 32)
    for rows in (1, BF16_EXACT_ROWS, BF16_EXACT_ROWS + 1, 64, 65):
        x = torch.randn(rows, 1024).to(torch.bfloat16)
        torch.testing.assert_close(fits(x).float(), reference(x, fits.weight, fits.bias), rtol=2e-2, atol=0.5)
        odd(torch.randn(rows, 48).to(torch.bfloat16))
    assert calls == ([1, BF16_EXACT_ROWS, BF16_EXACT_ROWS + 1, 64] if kernel is not None else [])


@pytest.mark.parametrize("choice", ["auto", "torch"])
def test_cpu_kernel_option_reaches_every_linear_of_a_bf16_model(kernel: Any, choice: str) -> None:
    model, _ = load_model(resolve_model_path("tiny"), "cpu", "bfloat16", threads=1, cpu_kernel=choice)
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    assert linears and all(m.forward.__func__ is bf16_cpu_linear for m in linears)
    with_kernel = [m._ernie_kernel is not None for m in linears]
    assert all(with_kernel) if choice == "auto" and kernel is not None else not any(with_kernel)
