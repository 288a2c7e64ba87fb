"""The engine's fast paths keep their outputs: chunked prefill, the weight-major fp32 matmul of CPU
decode steps, and bf16 (CUDA's default; on a CPU with native bf16 the default for real-sized
models, with its kernel shapes bounded), and the sampler's inverse-CDF draw.

Real engine, real tiny ERNIE-4.5 model; the reference is transformers' own ``generate``.
"""

from __future__ import annotations

import logging
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
import torch

from ernie_otel.backends import loading
from ernie_otel.backends.loading import (
    AUTO_BF16_MIN_PARAMETERS,
    BF16_CPU_FLAGS,
    BF16_CPU_NOTE,
    BF16_CPU_SMALL_NOTE,
    BF16_EXACT_ROWS,
    BF16_FP32_MIN_ROWS,
    WEIGHT_MAJOR_MAX_ROWS,
    WEIGHT_MAJOR_MIN_ROWS,
    bf16_cpu_linear,
    bf16_rows_bucket,
    count_parameters,
    cpu_flags,
    load_model,
    resolve_dtype,
    resolve_model_path,
    use_bf16_cpu_linears,
    use_weight_major_linears,
    weight_major_linear,
)
from ernie_otel.engine import Engine, Event, SamplingParams, Sequence, draw_batched, draw_rows
from ernie_otel.kinds import Operation
from ernie_otel.stats import RequestStats

# Prompts of different lengths, so that rows are left-padded and chunks cut through real tokens.
PROMPTS = [
    "count to ten",
    "the quick brown fox jumps over the lazy dog " * 3,
    "a",
    "ERNIE is a family of large language models; tell me about the smallest one, please",
    "one two three four five six",
]
MAX_TOKENS = 12


# --------------------------------------------------------------------------- precision choice
def test_auto_dtype_is_bf16_on_cuda_and_on_bf16_cpus_for_real_models() -> None:
    big, small = AUTO_BF16_MIN_PARAMETERS, AUTO_BF16_MIN_PARAMETERS - 1
    assert resolve_dtype("auto", "cuda") == "bfloat16"
    assert resolve_dtype("auto", "cuda:1", small) == "bfloat16"
    for flag in sorted(BF16_CPU_FLAGS):
        assert resolve_dtype("auto", "cpu", big, frozenset({"avx2", flag})) == "bfloat16"
        assert resolve_dtype("auto", "cpu", small, frozenset({flag})) == "float32"  # fits the caches
    assert resolve_dtype("auto", "cpu", big, frozenset({"avx2", "avx512f"})) == "float32"  # bf16 emulated
    assert resolve_dtype("auto", "cpu", big) == "float32"
    assert resolve_dtype("float32", "cuda") == "float32"
    assert resolve_dtype("bfloat16", "cpu") == "bfloat16"


def test_cpu_flags_parse_proc_cpuinfo() -> None:
    text = "processor\t: 0\nmodel name\t: X\nflags\t\t: fpu avx512f avx512_bf16\n\nprocessor\t: 1\nflags\t: fpu\n"
    assert cpu_flags(text) == frozenset({"fpu", "avx512f", "avx512_bf16"})
    assert cpu_flags("processor : 0\n") == frozenset()


def test_count_parameters_reads_only_the_config() -> None:
    path = resolve_model_path("tiny")
    model, _ = load_model(path, "cpu", "float32", threads=1)
    assert count_parameters(path) == model.num_parameters()


def test_auto_on_a_bf16_cpu_keeps_fp32_for_the_tiny_model(caplog: pytest.LogCaptureFixture) -> None:
    """Where the CPU has native bf16, the load log names the flag and why auto kept float32 (the
    tiny model is under AUTO_BF16_MIN_PARAMETERS); elsewhere it says nothing."""
    with caplog.at_level(logging.INFO, logger="ernie_otel.backends.loading"):
        model, _ = load_model(resolve_model_path("tiny"), "cpu", "auto", threads=1)
    assert next(model.parameters()).dtype == torch.float32
    notes = [r.getMessage() for r in caplog.records if "bf16 natively" in r.getMessage()]
    has = sorted(cpu_flags() & BF16_CPU_FLAGS)
    want = BF16_CPU_SMALL_NOTE % (", ".join(has), model.num_parameters(), AUTO_BF16_MIN_PARAMETERS)
    assert notes == ([want] if has else [])


def test_auto_on_a_bf16_cpu_picks_bf16_for_a_real_sized_model(monkeypatch: pytest.MonkeyPatch,
                                                               caplog: pytest.LogCaptureFixture) -> None:
    """The same load with the bar lowered under the tiny model and a bf16 CPU's flags: bf16, the
    bounded bf16 linears, and the log line that says so."""
    monkeypatch.setattr(loading, "AUTO_BF16_MIN_PARAMETERS", 1)
    monkeypatch.setattr(loading, "cpu_flags", lambda: frozenset({"avx512f", "avx512_bf16"}))
    with caplog.at_level(logging.INFO, logger="ernie_otel.backends.loading"):
        model, _ = load_model(resolve_model_path("tiny"), "cpu", "auto", threads=1)
    assert next(model.parameters()).dtype == torch.bfloat16
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    assert linears and all(m.forward.__func__ is bf16_cpu_linear for m in linears)
    assert BF16_CPU_NOTE % "avx512_bf16" in [r.getMessage() for r in caplog.records]


# --------------------------------------------------------------------------- bf16 CPU matmuls
def test_bf16_row_buckets_are_few_and_pad_at_most_a_quarter() -> None:
    assert [bf16_rows_bucket(n) for n in range(1, BF16_EXACT_ROWS + 1)] == list(range(1, BF16_EXACT_ROWS + 1))
    assert [bf16_rows_bucket(n) for n in (9, 10, 11, 16, 17, 33, 63, 64, 65, 600)] == [10, 10, 12, 16, 20, 40, 64,
                                                                                         64, 80, 640]
    buckets = {bf16_rows_bucket(n) for n in range(1, 4097)}
    assert len(buckets) == BF16_EXACT_ROWS + 4 * 9  # four an octave from 8 to 4096
    for n in range(1, 4097):
        assert n <= bf16_rows_bucket(n) <= 1.25 * n


@pytest.mark.parametrize("bias", [False, True], ids=["no-bias", "bias"])
def test_bf16_cpu_linear_is_the_same_product(bias: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    """Bucketed bf16 rows and the widened fp32 product: within bf16's rounding of nn.Linear in bf16,
    the same shape, bf16 out; the scratch buffer is shared and not grown by a larger weight."""
    torch.manual_seed(0)
    layer = torch.nn.Linear(64, 96, bias=bias).to(torch.bfloat16)
    wide = torch.nn.Linear(64, 4096, bias=bias).to(torch.bfloat16)
    monkeypatch.setattr(loading, "BF16_FP32_MAX_WEIGHT", 96 * 64)  # only `layer` is widened
    assert use_bf16_cpu_linears(torch.nn.Sequential(layer, wide)) == 2
    scratch = layer._ernie_scratch  # type: ignore[attr-defined]
    assert scratch is wide._ernie_scratch and scratch.elements == 96 * 64  # type: ignore[attr-defined]
    for lin in (layer, wide):
        for shape in [(1, 64), (BF16_EXACT_ROWS + 1, 64), (2, 7, 64), (BF16_FP32_MIN_ROWS - 1, 64),
                      (BF16_FP32_MIN_ROWS, 64), (3, 70, 64)]:
            x = torch.randn(*shape).to(torch.bfloat16)
            got = lin(x)
            want = torch.nn.functional.linear(x.float(), lin.weight.float(),
                                              None if lin.bias is None else lin.bias.float())
            assert got.shape == want.shape and got.dtype == torch.bfloat16, shape
            torch.testing.assert_close(got.float(), want, rtol=2e-2, atol=2e-2)
    assert scratch.buffer is not None and scratch.buffer.numel() == 96 * 64


RSS_PROBE = textwrap.dedent("""
    import os, random, sys, torch
    from ernie_otel.backends import loading
    if sys.argv[1] == "plain":
        loading.use_bf16_cpu_linears = lambda model, kernel=None: 0
    model, _ = loading.load_model(loading.resolve_model_path("tiny"), "cpu", "bfloat16", threads=1)
    def rss():
        return int(open("/proc/self/statm").read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    random.seed(1)
    with torch.inference_mode():
        model(input_ids=torch.ones(1, 4, dtype=torch.long))
        before = rss()
        for _ in range(150):
            ids = torch.randint(0, 1000, (random.randint(1, 8), random.randint(1, 200)))
            model(input_ids=ids, attention_mask=torch.ones_like(ids))
    print(rss() - before)
""")


def test_bf16_cpu_memory_stays_bounded_over_new_shapes() -> None:
    """150 forward passes of new (rows, columns) shapes, each in a fresh process: the bounded bf16
    linears grow RSS by tens of MiB; plain bf16 (oneDNN's per-shape kernels, on CPUs with native
    bf16) grew it by ~550 MiB here."""
    def growth(mode: str) -> float:
        out = subprocess.run([sys.executable, "-c", RSS_PROBE, mode], capture_output=True, text=True, timeout=300)
        assert out.returncode == 0, out.stderr[-2000:]
        return float(out.stdout.split()[-1])

    bounded, plain = growth("bounded"), growth("plain")
    print(f"RSS growth over 150 new shapes: bounded {bounded:.0f} MiB, plain bf16 {plain:.0f} MiB")
    assert bounded < 150
    if plain > 300:  # a CPU where oneDNN keeps per-shape kernels: the bound must be what saves it
        assert bounded < plain / 3


# --------------------------------------------------------------------------- fp32 decode matmuls
@pytest.mark.parametrize("bias", [False, True], ids=["no-bias", "bias"])
def test_weight_major_linear_is_the_same_product(bias: bool) -> None:
    """Inside its window and outside it, in 2-D and 3-D: the same numbers as nn.Linear (up to
    float rounding: the sums are ordered differently), the same shape."""
    torch.manual_seed(0)
    layer = torch.nn.Linear(64, 96, bias=bias)
    for shape in [(1, 64), (WEIGHT_MAJOR_MIN_ROWS - 1, 64), (WEIGHT_MAJOR_MIN_ROWS, 64), (2, 4, 64),
                  (WEIGHT_MAJOR_MAX_ROWS, 64), (WEIGHT_MAJOR_MAX_ROWS + 1, 64), (3, 30, 64)]:
        x = torch.randn(*shape)
        got, want = weight_major_linear(layer, x), torch.nn.functional.linear(x, layer.weight, layer.bias)
        assert got.shape == want.shape, shape
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_only_large_linears_go_weight_major() -> None:
    big, small = torch.nn.Linear(1024, 1024, bias=False), torch.nn.Linear(1024, 256, bias=False)
    assert use_weight_major_linears(torch.nn.Sequential(big, small)) == 1
    assert big.forward.__func__ is weight_major_linear  # type: ignore[attr-defined]
    assert getattr(small.forward, "__func__", None) is not weight_major_linear


def test_fp32_cpu_models_use_the_weight_major_linears_and_bf16_ones_the_bounded_ones(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(loading, "WEIGHT_MAJOR_MIN_WEIGHT", 0)  # the tiny model's linears are all small
    model32, _ = load_model(resolve_model_path("tiny"), "cpu", "float32", threads=1)
    model16, _ = load_model(resolve_model_path("tiny"), "cpu", "bfloat16", threads=1)
    linears32 = [m for m in model32.modules() if isinstance(m, torch.nn.Linear)]
    assert linears32 and all(m.forward.__func__ is weight_major_linear for m in linears32)
    linears16 = [m for m in model16.modules() if isinstance(m, torch.nn.Linear)]
    assert linears16 and all(m.forward.__func__ is bf16_cpu_linear for m in linears16)


# --------------------------------------------------------------------------- engine outputs
@pytest.fixture(scope="module")
def fp32() -> tuple[Any, Any]:
    return load_model(resolve_model_path("tiny"), "cpu", "float32", threads=1)


def solo_greedy(model: Any, tokenizer: Any, prompt: str, max_tokens: int = MAX_TOKENS) -> list[int]:
    ids = tokenizer(prompt, return_tensors="pt").input_ids
    out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_tokens,
                         min_new_tokens=max_tokens, do_sample=False, pad_token_id=tokenizer.pad_token_id or 0)
    return [int(t) for t in out[0, ids.shape[1]:]]


def engine_greedy(model: Any, tokenizer: Any, prompts: list[str], budget: int, stagger_s: float = 0.0,
                  max_num_seqs: int = 8, after_first_token: bool = False,
                  hook: Callable[[Engine], None] | None = None) -> tuple[list[Sequence], Engine]:
    """Greedy runs through the engine; ``after_first_token``: each request is sent once the previous
    one has its first token (so it is admitted while that one decodes); ``hook``: called on the
    engine thread at every step boundary."""
    engine = Engine(model, tokenizer, max_num_seqs=max_num_seqs, max_num_batched_tokens=budget)
    if hook is not None:
        engine.step_hook = lambda: hook(engine)
    engine.start()
    done = [threading.Event() for _ in prompts]
    started = [threading.Event() for _ in prompts]
    seqs: list[Sequence] = []
    try:
        for i, prompt in enumerate(prompts):
            def deliver(event: Event, i: int = i) -> None:
                started[i].set()
                if event.finish_reason is not None:
                    done[i].set()

            seq = Sequence(prompt_ids=tokenizer(prompt).input_ids,
                           params=SamplingParams(max_tokens=MAX_TOKENS, temperature=0.0, ignore_eos=True),
                           stats=RequestStats(request_id=str(i), operation=Operation.CHAT.value), deliver=deliver)
            seqs.append(seq)
            engine.submit(seq)
            time.sleep(stagger_s)  # later requests arrive while earlier ones decode
            if after_first_token:
                assert started[i].wait(60)
        for d in done:
            assert d.wait(120), "engine did not finish"
    finally:
        engine.shutdown()
    for s in seqs:
        assert s.stats.finish_reason == "length"
    return seqs, engine


@pytest.mark.parametrize("budget", [0, 5, 16], ids=["whole-prefill", "budget-5", "budget-16"])
@pytest.mark.parametrize("stagger_s", [0.0, 0.01], ids=["together", "staggered"])
def test_batched_greedy_matches_solo_generate(fp32: tuple[Any, Any], budget: int, stagger_s: float) -> None:
    model, tokenizer = fp32
    want = [solo_greedy(model, tokenizer, p) for p in PROMPTS]
    seqs, engine = engine_greedy(model, tokenizer, PROMPTS, budget, stagger_s)
    assert [s.output_ids for s in seqs] == want
    assert engine.stats.max_batch_seen > 1


@pytest.mark.parametrize("budget", [0, 8], ids=["whole-prefill", "budget-8"])
def test_chunked_prefill_keeps_running_streams_going(fp32: tuple[Any, Any], budget: int) -> None:
    """A long prompt admitted while another request decodes: with a budget its prefill is spread
    over iterations that each still decode the running request, which therefore finishes before the
    long one's first token; without one the whole prefill runs first (the stall chunking removes)."""
    model, tokenizer = fp32
    long_prompt = "word " * 200  # 200 tokens at <= 7 a step: ~29 steps, more than the short one's 12
    seqs, _ = engine_greedy(model, tokenizer, ["short prompt", long_prompt], budget=budget, max_num_seqs=2,
                                 after_first_token=True)
    short, long = seqs
    assert [s.output_ids for s in seqs] == [solo_greedy(model, tokenizer, "short prompt"),
                                            solo_greedy(model, tokenizer, long_prompt)]
    assert long.stats.scheduled is not None and short.stats.finished is not None
    assert long.stats.first_token is not None and short.stats.first_token is not None
    assert short.stats.first_token < long.stats.scheduled < short.stats.finished  # they overlapped
    if budget:
        assert short.stats.finished < long.stats.first_token
    else:
        assert long.stats.first_token < short.stats.finished


def _cached_bytes(cache: Any) -> int:
    if cache is None:
        return 0
    return sum(layer.keys.nbytes + layer.values.nbytes for layer in cache.layers
               if getattr(layer, "keys", None) is not None)


def test_chunked_prefill_keeps_the_engine_figures_right(fp32: tuple[Any, Any]) -> None:
    """Under a small budget, with requests admitted while others decode: every iteration is one
    sample (its rows and real tokens: prompt tokens of its chunk plus one per decoded row, so the
    samples add up to every prompt token plus every decoded token), no iteration runs more tokens
    than the budget, and the KV gauges count what is really cached, a group half prefilled included."""
    model, tokenizer = fp32
    budget = 8
    kv_checks: list[tuple[int, int, bool]] = []

    def hook(engine: Engine) -> None:
        group = engine._admitting
        real = _cached_bytes(engine._cache) + (_cached_bytes(group.cache) if group is not None else 0)
        kv_checks.append((engine.stats.kv_positions * engine.stats.kv_bytes_per_token, real, group is not None))

    prompts = PROMPTS[:4]
    seqs, engine = engine_greedy(model, tokenizer, prompts, budget=budget, max_num_seqs=len(prompts),
                                 after_first_token=True, hook=hook)
    assert [s.output_ids for s in seqs] == [solo_greedy(model, tokenizer, p) for p in prompts]
    assert all(got == real for got, real, _ in kv_checks), kv_checks
    assert any(mid_prefill and got > 0 for got, _, mid_prefill in kv_checks), "no step boundary inside a prefill"
    iterations = list(engine.stats.iteration_samples)
    assert engine.stats.steps == len(iterations)
    assert sum(t for _, t in iterations) == sum(len(s.prompt_ids) for s in seqs) + len(seqs) * (MAX_TOKENS - 1)
    assert max(t for _, t in iterations) <= budget
    phases = list(engine.stats.phase_samples)
    assert len(phases) == len(seqs) and all(prefill > 0 and decode > 0 for prefill, decode in phases)
    assert engine.stats.kv_positions == 0 and engine.stats.kv_padding == 0


BF16_PREFIX = 4  # tokens that bf16 greedy must reproduce exactly; beyond that rounding may fork


def test_bf16_greedy_agrees_with_fp32_over_a_prefix(fp32: tuple[Any, Any]) -> None:
    """bf16 keeps 8 mantissa bits: on random weights a near-tie between the two best logits can
    flip later on, but the first BF16_PREFIX greedy tokens of every prompt must match fp32, and most
    of the whole answers too."""
    model32, tokenizer = fp32
    model16, _ = load_model(resolve_model_path("tiny"), "cpu", "bfloat16", threads=1)
    assert next(model16.parameters()).dtype == torch.bfloat16
    seqs16, _ = engine_greedy(model16, tokenizer, PROMPTS, budget=16)
    got16 = [s.output_ids for s in seqs16]
    agree = total = 0
    for prompt, out16 in zip(PROMPTS, got16, strict=True):
        out32 = solo_greedy(model32, tokenizer, prompt)
        assert out16[:BF16_PREFIX] == out32[:BF16_PREFIX], prompt
        common = next((i for i, (a, b) in enumerate(zip(out16, out32, strict=True)) if a != b), len(out32))
        agree += common
        total += len(out32)
    print(f"bf16 vs fp32 greedy: {agree}/{total} tokens agree before the first fork")
    assert agree >= 0.75 * total


# --------------------------------------------------------------------------- sampling
@pytest.mark.parametrize("draw", [draw_rows, draw_batched], ids=["rows (CPU)", "batched (GPU)"])
def test_draw_follows_the_distribution_and_never_picks_a_zero(draw: Callable[..., torch.Tensor]) -> None:
    """The inverse-CDF draw that replaced torch.multinomial, in both forms (row by row on a CPU,
    batched on a GPU; both run here): 40,000 rows of a 6-token distribution with two zeros (one last)
    land within 4 standard deviations of each probability; zero-mass tokens never come, not even at
    a point of 1 - 2**-53; unnormalised rows work; rows of different distributions each follow their
    own; the two forms pick the same tokens."""
    probs = torch.tensor([0.5, 0.0, 0.2, 0.25, 0.05, 0.0]) * 3.0  # sums to 3, not 1
    gen = torch.Generator().manual_seed(7)
    n = 40_000
    picks = draw(probs.expand(n, 6), torch.rand(n, dtype=torch.float64, generator=gen))
    counts = torch.bincount(picks, minlength=6).double()
    want = probs.double() / probs.sum()
    assert counts[1] == 0 and counts[5] == 0
    sd = (want * (1 - want) / n).sqrt()
    assert ((counts / n - want).abs() <= 4 * sd + 1e-12).all(), (counts / n, want)
    edge = torch.tensor([1 - 2**-53, 0.0], dtype=torch.float64)
    assert draw(torch.stack([probs, probs]), edge).tolist() == [4, 0]
    mixed = torch.tensor([[0.0, 0.0, 1.0], [1.0, 0.0, 0.0], [0.0, 2.0, 0.0]])
    assert draw(mixed, torch.rand(3, dtype=torch.float64, generator=gen)).tolist() == [2, 0, 1]
    wide = torch.softmax(torch.randn(20, 103424), -1)
    points = torch.rand(20, dtype=torch.float64, generator=gen)
    assert draw(wide, points).tolist() == draw(wide, points.clone()).tolist() == draw_rows(wide, points).tolist()


def test_max_num_seqs_zero_means_eight_on_a_cpu_and_64_on_cuda() -> None:
    """``--max-num-seqs`` defaults to 0: slots by device, resolved once for the backend (and, in
    ``ernie-serve``'s main, for the recorder's cost per slot). A gateway counts as a CPU."""
    from ernie_otel.backends import default_max_num_seqs, make_backend
    from ernie_otel.serve import ServeConfig

    assert ServeConfig().max_num_seqs == 0
    assert (default_max_num_seqs("cpu"), default_max_num_seqs("cuda")) == (8, 64)
    assert default_max_num_seqs("cuda", upstream="http://127.0.0.1:9/v1") == 8
    assert default_max_num_seqs("auto") == (64 if torch.cuda.is_available() else 8)
    local: Any = make_backend(ServeConfig(model="tiny", device="cpu"), "m")
    assert local.max_num_seqs == 8
    given: Any = make_backend(ServeConfig(model="tiny", device="cpu", max_num_seqs=3), "m")
    assert given.max_num_seqs == 3
    gateway: Any = make_backend(ServeConfig(upstream="http://127.0.0.1:9/v1", served_model_name="m"), "m")
    assert gateway.stats.max_num_seqs == 8 + ServeConfig().max_queue_len
