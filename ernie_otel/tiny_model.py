"""A small random-weight ERNIE-4.5 (``Ernie4_5ForCausalLM``) with a trained byte-level BPE tokenizer.

Real weights cannot be downloaded on every machine, so demos, tests and benchmarks build this
model: the same architecture as baidu/ERNIE-4.5-0.3B-PT with small sizes, saved with
``save_pretrained`` and loaded back through the same ``from_pretrained`` path real weights use.
Everything is seeded, so two builds give the same files.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

# Bump when the recipe changes, so cached copies are rebuilt.
RECIPE_VERSION = "1"

# The ERNIE-4.5 chat format (role prefixes, sentence markers) in a compact template.
CHAT_TEMPLATE = (
    "{{- bos_token -}}"
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'system' -%}{{- message['content'] + '\n' -}}"
    "{%- elif message['role'] == 'user' -%}{{- 'User: ' + message['content'] + '\n' -}}"
    "{%- elif message['role'] == 'assistant' -%}{{- 'Assistant: ' + message['content'] + eos_token -}}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- 'Assistant: ' -}}{%- endif -%}"
)

SPECIAL_TOKENS = ["<unk>", "<s>", "</s>", "<|begin_of_sentence|>", "<|end_of_sentence|>"]

# Sizes: (hidden, intermediate, layers, heads, kv_heads, head_dim, vocab or None = tokenizer's)
SIZES: dict[str, dict[str, int | None]] = {
    "tiny": dict(hidden_size=64, intermediate_size=192, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, head_dim=16, vocab_size=None),
    # The real baidu/ERNIE-4.5-0.3B-PT configuration, random weights (for benchmarks).
    "0.3b": dict(hidden_size=1024, intermediate_size=3072, num_hidden_layers=18, num_attention_heads=16,
                 num_key_value_heads=2, head_dim=128, vocab_size=103424),
}


def _corpus() -> list[str]:
    # A fixed, generated corpus: enough English, digits and Chinese for a useful BPE.
    words = (
        "the model serves tokens to users with low latency and high throughput while the queue "
        "waits for a slot in the running batch prometheus grafana jaeger collector metrics traces "
        "spans alert error request response stream chat completion prompt hello world ernie baidu "
        "inference server gpu memory temperature power utilization 你好 世界 推理 服务 监控 指标 延迟 吞吐"
    ).split()
    lines = []
    for i in range(400):
        lines.append(" ".join(words[(i * 7 + j * 3) % len(words)] for j in range(12)) + f" {i} {i * 37 % 1000}.")
    return lines


def build_tiny_model(out_dir: str | os.PathLike[str], size: str = "tiny", seed: int = 0) -> Path:
    """Build the model and tokenizer into ``out_dir`` (created; must not hold another model)."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import Ernie4_5Config, Ernie4_5ForCausalLM, GenerationConfig, PreTrainedTokenizerFast

    if size not in SIZES:
        raise ValueError(f"unknown size {size!r}; choose one of {sorted(SIZES)}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=1024, special_tokens=SPECIAL_TOKENS, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_corpus(), trainer=trainer)
    hf_tok = PreTrainedTokenizerFast(  # type: ignore[no-untyped-call]  # transformers leaves it untyped
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="<unk>",
        additional_special_tokens=["<|begin_of_sentence|>", "<|end_of_sentence|>"],
    )
    hf_tok.chat_template = CHAT_TEMPLATE
    hf_tok.model_max_length = 4096
    dims: dict[str, Any] = dict(SIZES[size])
    vocab = dims.pop("vocab_size") or len(hf_tok)
    if vocab > len(hf_tok):
        # The real configuration's embedding is far larger than this tokenizer: give every id a
        # token that decodes to text, or ~99% of sampled ids would stream as empty deltas.
        hf_tok.add_tokens([f"<|x{i}|>" for i in range(len(hf_tok), vocab)])
    hf_tok.save_pretrained(out)

    config = Ernie4_5Config(
        vocab_size=vocab, max_position_embeddings=4096 if size == "tiny" else 131072,
        pad_token_id=hf_tok.pad_token_id, bos_token_id=hf_tok.bos_token_id, eos_token_id=hf_tok.eos_token_id,
        tie_word_embeddings=True, **dims,
    )
    torch.manual_seed(seed)
    model = Ernie4_5ForCausalLM(config)
    model.generation_config = GenerationConfig(  # type: ignore[no-untyped-call]
        bos_token_id=hf_tok.bos_token_id, eos_token_id=hf_tok.eos_token_id, pad_token_id=hf_tok.pad_token_id,
    )
    model.save_pretrained(out)
    return out


def cache_root() -> Path:
    return Path(os.environ.get("ERNIE_OTEL_CACHE", Path.home() / ".cache" / "ernie-otel"))


def ensure_tiny_model(size: str = "tiny") -> Path:
    """The cached built-in model, built once; concurrent callers never see a half-written copy."""
    target = cache_root() / "models" / f"ernie-4.5-{size}-random-v{RECIPE_VERSION}"
    if (target / "config.json").exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        build_tiny_model(tmp, size=size)
        try:
            tmp.rename(target)
        except OSError:
            if not (target / "config.json").exists():  # lost a race only if the winner finished
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target
