"""The local engine: a waiting queue, a running batch and iteration-level (continuous) batching
over a transformers ``Ernie4_5ForCausalLM``.

One background thread owns the model. Each iteration it drops cancelled sequences, admits
waiting ones up to ``max_num_seqs`` (prefilled together, left-padded), runs at most
``max_num_batched_tokens`` of their prefill (chunked prefill: a long or crowded admission is spread
over several iterations, each of which still decodes the running batch, so admitting requests does
not stall the running streams), merges their KV cache into the running batch once their prompts
are in, and runs one decode step for every running sequence. Finished sequences leave
the batch at once, so a freed slot is reused on the next iteration. Results go back to asyncio
through ``loop.call_soon_threadsafe``: one call per event loop per step, carrying every sequence's
event (each call wakes the loop through its self-pipe: a system call and a thread switch, which
per sequence per step cost more than the rest of the hand-over on a busy machine).

No OpenTelemetry here (stats are separate from export): timings land in ``RequestStats`` / ``EngineStats``.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from .kinds import SHUTDOWN_MESSAGE, FinishReason
from .stats import EngineStats, RequestStats

log = logging.getLogger(__name__)


class QueueFullError(Exception):
    """The waiting queue is at its limit; the request was not accepted."""


def draw(probs: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """One token id per row of ``probs`` (rows x vocabulary, non-negative, any positive sum), drawn
    by inverting each row's cumulative sum at ``points`` (one uniform number in [0, 1) a row, float64):
    exact, and ~25x cheaper than ``torch.multinomial`` over a 103424-entry vocabulary on a CPU (0.13
    vs 3.4 ms a row, which was a fifth of an 8-row decode step on the 0.3B shape). Tokens of
    probability 0 are never drawn: the first index whose cumulative sum exceeds the draw always adds
    mass. On a CPU row by row (a fresh rows x vocabulary float64 buffer costs more in page faults than
    the sums: 24 vs 6 ms for 32 rows), elsewhere in one batched pass on the device."""
    if probs.device.type == "cpu":
        return draw_rows(probs, points)
    return draw_batched(probs, points)


def draw_rows(probs: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """``draw``, a row at a time."""
    vocab = probs.shape[-1]
    out: list[int] = []
    for row, point in zip(probs, points.tolist(), strict=True):
        cdf = row.double().cumsum(0)
        index = int(torch.searchsorted(cdf, point * cdf[-1], right=True))
        if index >= vocab:  # the product rounded up to the total: the last token with mass
            index = int(torch.nonzero(row).max())
        out.append(index)
    return torch.tensor(out, dtype=torch.long)


def draw_batched(probs: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """``draw``, all rows in one pass on ``probs``' device."""
    cdf = probs.double().cumsum(-1)
    index = torch.searchsorted(cdf, (points.to(cdf.device) * cdf[:, -1]).unsqueeze(1), right=True).squeeze(1)
    vocab = probs.shape[-1]
    if bool((index >= vocab).any()):  # a product rounded up to its total: that row's last token with mass
        positions = torch.arange(vocab, device=probs.device).expand_as(probs)
        last = torch.where(probs > 0, positions, 0).amax(dim=-1)
        index = torch.where(index >= vocab, last, index)
    return index


class EngineStoppedError(Exception):
    """The engine is shutting down or failed to start."""


@dataclass(slots=True)
class SamplingParams:
    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    ignore_eos: bool = False


@dataclass(slots=True)
class Event:
    """What the engine tells a request: new text (``delta``) and, at the end, a finish reason."""

    delta: str
    finish_reason: str | None = None
    error: str | None = None


@dataclass(eq=False, slots=True)
class Sequence:
    prompt_ids: list[int]
    params: SamplingParams
    stats: RequestStats
    deliver: Callable[[Event], None]
    output_ids: list[int] = field(default_factory=list)
    emitted_chars: int = 0
    cancelled: bool = False
    finished: bool = False
    generator: torch.Generator | None = None
    # Row bookkeeping in the running batch's KV cache.
    pad: int = 0  # left-padding columns in this row
    computed: int = 0  # real tokens whose K/V are cached
    next_token: int = 0
    last_token_at: float = 0.0  # perf_counter of this sequence's latest token (inter-token latency)


class AsyncDeliverer:
    """A thread-safe callable that hands engine events to an asyncio queue.

    Called alone it wakes the loop once per event; the engine's step hands its events to
    :func:`deliver_all` instead, which wakes each loop once for all of them.
    """

    __slots__ = ("loop", "queue")

    def __init__(self, loop: asyncio.AbstractEventLoop, queue: asyncio.Queue[Event]) -> None:
        self.loop = loop
        self.queue = queue

    def __call__(self, event: Event) -> None:
        try:
            self.loop.call_soon_threadsafe(self.queue.put_nowait, event)
        except RuntimeError:  # loop closed: the client is gone, nothing to tell
            pass


def _put_all(items: list[tuple[asyncio.Queue[Event], Event]]) -> None:
    for queue, event in items:
        queue.put_nowait(event)


def deliver_all(out: list[tuple[Callable[[Event], None], Event]]) -> None:
    """Deliver a step's events: one wake-up per event loop; any other callable is called as is."""
    by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Queue[Event], Event]]] = {}
    for deliver, event in out:
        if isinstance(deliver, AsyncDeliverer):
            by_loop.setdefault(deliver.loop, []).append((deliver.queue, event))
        else:
            deliver(event)
    for loop, items in by_loop.items():
        try:
            loop.call_soon_threadsafe(_put_all, items)
        except RuntimeError:  # loop closed: nobody left to tell
            pass


@dataclass(eq=False, slots=True)
class _Prefill:
    """An admitted group, left-padded to one width, whose prompt columns go through the model a
    chunk at a time; its rows join the running batch once the last column is in."""

    batch: list[Sequence]
    ids: torch.Tensor
    mask: torch.Tensor
    positions: torch.Tensor
    cache: Any
    done: int = 0  # prompt columns already through the model (cached)


class Engine:
    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        *,
        max_num_seqs: int = 8,
        max_queue_len: int = 64,
        max_model_len: int = 2048,
        max_num_batched_tokens: int = 0,
        step_hook: Callable[[], None] | None = None,
    ) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.device = next(model.parameters()).device
        self.max_model_len = max_model_len
        # Tokens per iteration, running decodes included (vLLM's meaning); 0: a whole prefill at once.
        self.max_num_batched_tokens = max_num_batched_tokens
        self.eos_ids = self._eos_ids(model, tokenizer)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        self.stats = EngineStats(max_num_seqs=max_num_seqs, max_queue_len=max_queue_len)
        self.stats.kv_bytes_per_token = self._kv_bytes_per_token(model)
        self.stats.kv_budget_tokens = max_num_seqs * max_model_len
        self._waiting: collections.deque[Sequence] = collections.deque()
        self._running: list[Sequence] = []
        self._cache: Any = None
        self._admitting: _Prefill | None = None  # the admitted group whose prompts are going in
        self._cond = threading.Condition()
        self._stop = False
        self._thread = threading.Thread(target=self._loop, name="ernie-engine", daemon=True)
        self._default_generator = torch.Generator(device="cpu")
        self._default_generator.manual_seed(int(time.time_ns() % (2**31)))
        # For tests: called on the engine thread before every iteration (and before it sleeps for
        # want of work), outside the lock, so it may submit, cancel or block to pause the engine at
        # a known step. Reassignable while running; None (the default) costs one check per step.
        self.step_hook = step_hook

    @staticmethod
    def _kv_bytes_per_token(model: Any) -> int:
        """Bytes one cached token takes: its key and value in every layer, in the model's dtype."""
        cfg = model.config
        layers = int(getattr(cfg, "num_hidden_layers", 0) or 0)
        heads = int(getattr(cfg, "num_attention_heads", 0) or 0)
        kv_heads = int(getattr(cfg, "num_key_value_heads", None) or heads)
        head_dim = int(getattr(cfg, "head_dim", None) or (cfg.hidden_size // heads if heads else 0))
        return 2 * layers * kv_heads * head_dim * int(next(model.parameters()).element_size())

    @staticmethod
    def _eos_ids(model: Any, tokenizer: Any) -> frozenset[int]:
        ids: set[int] = set()
        for source in (getattr(model, "generation_config", None), model.config):
            eos = getattr(source, "eos_token_id", None)
            if isinstance(eos, int):
                ids.add(eos)
            elif isinstance(eos, (list, tuple)):
                ids.update(int(e) for e in eos)
        if tokenizer.eos_token_id is not None:
            ids.add(int(tokenizer.eos_token_id))
        return frozenset(ids)

    # ------------------------------------------------------------------ public, any thread
    def start(self) -> None:
        self._thread.start()

    def shutdown(self) -> None:
        with self._cond:
            self._stop = True
            self._cond.notify_all()
        if self._thread.is_alive():
            self._thread.join(timeout=10)

    def submit(self, seq: Sequence) -> None:
        """Queue a sequence, or raise ``QueueFullError`` at once (back-pressure)."""
        with self._cond:
            if self._stop:
                raise EngineStoppedError("engine is shutting down")
            prefilling = len(self._admitting.batch) if self._admitting is not None else 0
            free_slots = self.stats.max_num_seqs - len(self._running) - prefilling - len(self._waiting)
            if len(self._waiting) >= self.stats.max_queue_len and free_slots <= 0:
                raise QueueFullError
            seq.stats.queue_length_at_arrival = len(self._waiting)
            if seq.params.seed is not None:
                seq.generator = torch.Generator(device="cpu")
                seq.generator.manual_seed(seq.params.seed)
            self._waiting.append(seq)
            self.stats.waiting = len(self._waiting)
            self._cond.notify_all()

    def cancel(self, seq: Sequence) -> None:
        """Ask the engine to drop ``seq``; its slot is free by the next iteration."""
        with self._cond:
            seq.cancelled = True
            self._cond.notify_all()

    # ------------------------------------------------------------------ engine thread only
    def _loop(self) -> None:
        torch.set_grad_enabled(False)
        while True:
            if self.step_hook is not None:
                self.step_hook()
            with self._cond:
                while not self._stop and not self._waiting and not self._running and self._admitting is None:
                    self._cond.wait()
                if self._stop:
                    break
                # One admitted group at a time: later arrivals wait for the next one.
                admitted = self._admit_locked() if self._admitting is None else []
            try:
                self._drop_cancelled()
                tokens = 0
                if admitted:
                    self._admitting = self._start_prefill(admitted)
                    admitted = []
                if self._admitting is not None:
                    tokens = self._prefill_chunk(self._admitting)  # merges the group after its last chunk
                # An iteration's rows: the running batch (the group's rows merged in by now, if its
                # prompts are all in) plus a group still being prefilled; its tokens: the real prompt
                # tokens of this chunk plus one per decoded row.
                rows = len(self._admitting.batch) if self._admitting is not None else 0
                if self._running:
                    rows += len(self._running)
                    tokens += len(self._running)
                    self._decode_step()
                if rows:
                    self.stats.steps += 1
                    self.stats.iteration_samples.append((rows, tokens))
            except Exception as exc:  # the engine survives a failed step; its requests do not
                log.exception("engine step failed")
                message = f"engine error: {type(exc).__name__}: {exc}"
                for seq in admitted:
                    self._finish(seq, FinishReason.ERROR.value, error=message)
                self._fail_admitting(message)
                self._fail_running(message)
            self._note_kv()
        # A shutdown cancels what runs (the server's grace period is over): not a failure of the request.
        self._fail_admitting(SHUTDOWN_MESSAGE, FinishReason.CANCELLED.value)
        self._fail_running(SHUTDOWN_MESSAGE, FinishReason.CANCELLED.value)
        with self._cond:
            for seq in list(self._waiting):
                self._finish(seq, FinishReason.CANCELLED.value, error=SHUTDOWN_MESSAGE)
            self._waiting.clear()

    def _admit_locked(self) -> list[Sequence]:
        admitted: list[Sequence] = []
        while self._waiting and len(self._running) + len(admitted) < self.stats.max_num_seqs:
            seq = self._waiting.popleft()
            if seq.cancelled:
                self._finish(seq, FinishReason.CANCELLED.value)
                continue
            seq.stats.scheduled = time.perf_counter()
            admitted.append(seq)
        self.stats.waiting = len(self._waiting)
        self.stats.admitted += len(admitted)
        return admitted

    def _drop_cancelled(self) -> None:
        group = self._admitting
        if group is not None and any(s.cancelled for s in group.batch):
            for s in group.batch:
                if s.cancelled:
                    self._finish(s, FinishReason.CANCELLED.value)  # its row leaves at the merge
            if all(s.finished for s in group.batch):
                self._admitting = None  # nobody left to prefill for: its cache goes
        keep = [i for i, s in enumerate(self._running) if not s.cancelled]
        if len(keep) == len(self._running):
            return
        for s in self._running:
            if s.cancelled:
                self._finish(s, FinishReason.CANCELLED.value)
        self._select_rows(keep)

    def _fail_admitting(self, message: str, reason: str = FinishReason.ERROR.value) -> None:
        if self._admitting is not None:
            for s in self._admitting.batch:
                self._finish(s, reason, error=message)
            self._admitting = None

    def _fail_running(self, message: str, reason: str = FinishReason.ERROR.value) -> None:
        for s in self._running:
            self._finish(s, reason, error=message)
        self._running = []
        self._cache = None
        self.stats.running = 0

    def _start_prefill(self, batch: list[Sequence]) -> _Prefill:
        from transformers import DynamicCache

        width = max(len(s.prompt_ids) for s in batch)
        ids = torch.full((len(batch), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for row, s in enumerate(batch):
            n = len(s.prompt_ids)
            ids[row, width - n:] = torch.tensor(s.prompt_ids, dtype=torch.long)
            mask[row, width - n:] = 1
            s.pad = width - n
            s.computed = n
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        return _Prefill(batch, ids, mask, positions, DynamicCache(config=self.model.config))

    def _prefill_chunk(self, group: _Prefill) -> int:
        """Run the next columns of the group's prompts that fit the token budget; once the last
        column is in, sample each row's first token and merge the rows into the running batch.
        Returns the real (unpadded) prompt tokens this chunk ran."""
        width = group.ids.shape[1]
        end = width
        if self.max_num_batched_tokens > 0:
            # Padded columns cost like real ones; the running decodes take their share first, and
            # a group always advances by at least one column (no budget can starve it).
            budget = max(self.max_num_batched_tokens - len(self._running), 0)
            end = min(width, group.done + max(1, budget // len(group.batch)))
        cols = slice(group.done, end)
        out = self.model(
            input_ids=group.ids[:, cols].to(self.device), attention_mask=group.mask[:, :end].to(self.device),
            position_ids=group.positions[:, cols].to(self.device), cache=group.cache, use_cache=True,
            logits_to_keep=1,
        )
        real = int(group.mask[:, cols].sum())
        group.done = end
        if end < width:
            return real
        batch = group.batch
        tokens = self._sample(out.logits[:, -1, :], batch)
        now = time.perf_counter()
        for s in batch:
            s.stats.first_token = now
            s.last_token_at = now
        self._emit(batch, tokens, now)  # marks sequences that finished on their first token
        self._merge(batch, group.cache)  # the model filled the cache in place
        # Only now: a failure above still finds the group's sequences (and fails them) as admitting.
        self._admitting = None
        return real

    def _decode_step(self) -> None:
        batch = self._running
        width = self._cache_width()
        ids = torch.tensor([[s.next_token] for s in batch], dtype=torch.long)
        mask = torch.ones((len(batch), width + 1), dtype=torch.long)
        for row, s in enumerate(batch):
            if s.pad:
                mask[row, : s.pad] = 0
        positions = torch.tensor([[s.computed] for s in batch], dtype=torch.long)
        out = self.model(
            input_ids=ids.to(self.device), attention_mask=mask.to(self.device),
            position_ids=positions.to(self.device), cache=self._cache, use_cache=True, logits_to_keep=1,
        )
        size = len(batch)
        self.stats.max_batch_seen = max(self.stats.max_batch_seen, size)
        for s in batch:
            s.computed += 1
            s.stats.decode_steps += 1
            if size > s.stats.max_batch_size:
                s.stats.max_batch_size = size
        tokens = self._sample(out.logits[:, -1, :], batch)
        now = time.perf_counter()
        # Inter-token latency: rows whose previous token came from the same step share one gap.
        gaps: dict[float, int] = {}
        for s in batch:
            if not s.cancelled:
                gap = now - s.last_token_at
                gaps[gap] = gaps.get(gap, 0) + 1
                s.last_token_at = now
        for gap, n in gaps.items():
            self.stats.itl_samples.append((gap, n))
        self._emit(batch, tokens, now)

    def _sample(self, logits: torch.Tensor, batch: list[Sequence]) -> list[int]:
        """Every row's next token in one batched pass on the logits' device (a GPU samples there:
        one copy of the chosen ids back, not of the rows x vocabulary logits), each row with its
        own temperature, top_p and generator (seeded requests repeat themselves on one device)."""
        logits = logits.float()
        greedy = logits.argmax(dim=-1)
        sampled = [row for row, s in enumerate(batch) if s.params.temperature > 0.0]
        if not sampled:
            return [int(t) for t in greedy.tolist()]
        device = logits.device
        rows = torch.tensor(sampled, device=device)
        params = [batch[row].params for row in sampled]
        temperature = torch.tensor([p.temperature for p in params], dtype=torch.float32, device=device)
        scaled = logits.index_select(0, rows) / temperature.unsqueeze(1)
        # A temperature so small that the logits overflow: its limit, the greedy token. (A row is
        # all finite iff its max and min are: NaN propagates; 1 vs 9 ms per-element for 32 rows.)
        finite = torch.isfinite(scaled.amax(dim=-1)) & torch.isfinite(scaled.amin(dim=-1))
        probs = torch.softmax(scaled, dim=-1)
        if any(p.top_p < 1.0 for p in params):
            top_p = torch.tensor([p.top_p if p.top_p < 1.0 else math.inf for p in params], device=device)
            sorted_probs, order = probs.sort(dim=-1, descending=True)
            # keep the smallest prefix whose mass reaches top_p (always at least one token)
            cut = sorted_probs.cumsum(-1) - sorted_probs > top_p.unsqueeze(1)
            probs = torch.zeros_like(probs).scatter_(1, order, sorted_probs.masked_fill(cut, 0.0))
        points = torch.tensor([float(torch.rand((), dtype=torch.float64,
                                                generator=batch[row].generator or self._default_generator))
                               for row in sampled], dtype=torch.float64)
        chosen = torch.where(finite, draw(probs, points).to(device), greedy.index_select(0, rows))
        tokens = greedy.index_copy(0, rows, chosen)
        return [int(t) for t in tokens.tolist()]

    def _emit(self, batch: list[Sequence], tokens: list[int], now: float) -> None:
        finished_rows: set[int] = set()
        produced = 0
        out: list[tuple[Callable[[Event], None], Event]] = []
        for row, (s, tok) in enumerate(zip(batch, tokens, strict=True)):
            if s.cancelled:
                continue  # dropped at the start of the next iteration
            reason = None
            if tok in self.eos_ids and not s.params.ignore_eos:
                reason = FinishReason.STOP.value
            else:
                s.output_ids.append(tok)
                s.stats.output_tokens = len(s.output_ids)
                produced += 1
                s.next_token = tok
                if len(s.output_ids) >= s.params.max_tokens or s.computed + 1 >= self.max_model_len:
                    reason = FinishReason.LENGTH.value
            delta, stopped = self._detokenize(s, final=reason is not None)
            if stopped:
                reason = FinishReason.STOP.value
            if reason is None:
                if delta:
                    out.append((s.deliver, Event(delta)))
            else:
                s.stats.finished = now
                s.finished = True
                s.stats.finish_reason = reason
                first, scheduled = s.stats.first_token, s.stats.scheduled
                if first is not None and scheduled is not None:
                    self.stats.phase_samples.append((first - scheduled, now - first))
                out.append((s.deliver, Event(delta, reason)))
                finished_rows.add(row)
        deliver_all(out)
        self.stats.tokens.add(produced, now)
        # Admitted (prefill) rows are not in the running batch yet: _merge drops their finished ones.
        if batch is self._running and finished_rows:
            self._select_rows([i for i in range(len(batch)) if i not in finished_rows])

    def _detokenize(self, s: Sequence, final: bool) -> tuple[str, bool]:
        """New text for the client, holding back what could still become a stop string."""
        text = self.tokenizer.decode(s.output_ids, skip_special_tokens=True)
        stops = s.params.stop
        if stops:
            search_from = max(0, s.emitted_chars - max(len(x) for x in stops))
            hits = [i for i in (text.find(x, search_from) for x in stops) if i >= 0]
            if hits:
                cut = min(hits)
                delta = text[s.emitted_chars:cut]
                s.emitted_chars = max(s.emitted_chars, cut)
                return delta, True
        if final:
            end = len(text)
        else:
            end = len(text) - (max(len(x) for x in stops) - 1 if stops else 0)
            if text.endswith("\ufffd"):  # an incomplete UTF-8 sequence: wait for its next byte
                end = min(end, len(text) - 1)
        if end <= s.emitted_chars:
            return "", False
        delta = text[s.emitted_chars:end]
        s.emitted_chars = end
        return delta, False

    def _finish(self, seq: Sequence, reason: str, error: str | None = None) -> None:
        if seq.finished:
            return
        seq.finished = True
        seq.stats.finished = time.perf_counter()
        seq.stats.finish_reason = reason
        if seq.stats.scheduled is not None:  # it held a row (or was being prefilled): an eviction
            self.stats.evicted[reason] = self.stats.evicted.get(reason, 0) + 1
        seq.deliver(Event("", reason, error))

    # ------------------------------------------------------------------ KV cache rows
    def _note_kv(self) -> None:
        """The cache size and padding at the step boundary (plain numbers): the running batch's,
        plus the columns a group being prefilled in chunks has cached so far."""
        running = self._running
        positions = len(running) * self._cache_width() if running else 0
        padding = sum(s.pad for s in running)
        group = self._admitting
        if group is not None:
            positions += len(group.batch) * group.done
            padding += sum(min(s.pad, group.done) for s in group.batch)
        self.stats.kv_positions = positions
        self.stats.kv_padding = padding

    def _layers(self, cache: Any) -> list[Any]:
        return list(cache.layers)

    def _cache_width(self) -> int:
        return 0 if self._cache is None else int(self._cache.layers[0].keys.shape[-2])

    def _merge(self, batch: list[Sequence], new_cache: Any) -> None:
        """Append prefilled rows to the running batch, left-padding the narrower cache."""
        if self._cache is None or not self._running:
            self._cache = new_cache
            self._running = list(batch)
        else:
            old_w, new_w = self._cache_width(), int(new_cache.layers[0].keys.shape[-2])
            width = max(old_w, new_w)
            for old_layer, new_layer in zip(self._layers(self._cache), self._layers(new_cache), strict=True):
                for attr in ("keys", "values"):
                    a, b = getattr(old_layer, attr), getattr(new_layer, attr)
                    a = torch.nn.functional.pad(a, (0, 0, width - old_w, 0))
                    b = torch.nn.functional.pad(b, (0, 0, width - new_w, 0))
                    setattr(old_layer, attr, torch.cat([a, b], dim=0))
            for s in self._running:
                s.pad += width - old_w
            for s in batch:
                s.pad += width - new_w
            self._running.extend(batch)
        self.stats.running = len(self._running)
        # Sequences that finished on their first token leave again at once.
        if any(s.finished for s in self._running):
            self._select_rows([i for i, s in enumerate(self._running) if not s.finished])

    def _select_rows(self, keep: list[int]) -> None:
        if not keep:
            self._running = []
            self._cache = None
            self.stats.running = 0
            return
        self._running = [self._running[i] for i in keep]
        index = torch.tensor(keep, dtype=torch.long, device=self.device)
        trim = min(s.pad for s in self._running)
        for layer in self._layers(self._cache):
            for attr in ("keys", "values"):
                t = getattr(layer, attr).index_select(0, index)
                if trim:
                    t = t[:, :, trim:, :]
                setattr(layer, attr, t.contiguous() if trim else t)
        for s in self._running:
            s.pad -= trim
        self.stats.running = len(self._running)
