"""``benchmarks/roofline.py`` and the peer names of ``benchmarks/serving.py``: the arithmetic only
(the measurements themselves are what the scripts print)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

from ernie_otel.tiny_model import SIZES

BENCH = Path(__file__).resolve().parent.parent / "benchmarks"


def _load(name: str) -> ModuleType:
    sys.path.insert(0, str(BENCH))  # serving.py imports its sibling overhead.py
    try:
        spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH / f"{name}.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module
        spec.loader.exec_module(module)
        return module
    finally:
        sys.path.remove(str(BENCH))


roofline = _load("roofline")


def shape_03b() -> object:
    dims = SIZES["0.3b"]
    return roofline.Shape.from_config({
        "hidden_size": dims["hidden_size"], "intermediate_size": dims["intermediate_size"],
        "num_hidden_layers": dims["num_hidden_layers"], "num_attention_heads": dims["num_attention_heads"],
        "num_key_value_heads": dims["num_key_value_heads"], "head_dim": dims["head_dim"],
        "vocab_size": dims["vocab_size"]})


def test_the_03b_shape_streams_its_published_size() -> None:
    # ERNIE-4.5-0.3B: ~0.36B parameters, the LM head tied to the embedding (read once per step).
    assert 350e6 < shape_03b().streamed_params < 370e6


def test_decode_is_weight_bound_and_batching_pays() -> None:
    shape = shape_03b()
    hw = roofline.Hardware(dtype="bfloat16", gflops=800.0, gbytes_s=40.0)
    one = roofline.bound(shape, hw, 1, prompt=45, output=32)
    eight = roofline.bound(shape, hw, 8, prompt=45, output=32)
    assert one["bound"] == "weights"
    assert one["read_ms"] == pytest.approx(shape.streamed_params * 2 / 40e9 * 1000)
    assert eight["tok_s"] > 4 * one["tok_s"]  # 8 streams share one read of the weights
    fp32 = roofline.bound(shape, roofline.Hardware(dtype="float32", gflops=200.0, gbytes_s=20.0), 8, 45, 32)
    assert fp32["tok_s"] < eight["tok_s"]


def test_serving_peer_names_map_to_flags() -> None:
    serving = _load("serving")
    assert serving.ernie_flags("ernie-serve") == []
    assert serving.ernie_flags("ernie-serve-fp32-nochunk") == ["--dtype", "float32", "--max-num-batched-tokens", "0"]
    assert serving.ernie_flags("ernie-serve-bf16-seqs32") == ["--dtype", "bfloat16", "--max-num-seqs", "32"]
    assert serving.ernie_flags("ernie-serve-tok512") == ["--max-num-batched-tokens", "512"]
    with pytest.raises(SystemExit):
        serving.ernie_flags("ernie-serve-fast")
