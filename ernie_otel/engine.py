"""The local engine: a waiting queue, a running batch and iteration-level (continuous) batching
over a transformers ``Ernie4_5ForCausalLM``.

One background thread owns the model. Each iteration it drops cancelled sequences, admits
waiting ones up to ``max_num_seqs`` and runs one forward pass (``_step``) over a flat batch: the
next token of every decoding sequence plus chunks of the admitted prompts, at most
``max_num_batched_tokens`` tokens in all (chunked prefill: admitting a request never stalls the
running streams for a whole prompt, and the prompt rides on the decodes' pass over the weights).
Finished sequences leave the batch at once, so a freed slot is reused on the next iteration. Results go back to asyncio
through ``loop.call_soon_threadsafe``: one call per event loop per step, carrying every sequence's
event (each call wakes the loop through its self-pipe: a system call and a thread switch, which
per sequence per step cost more than the rest of the hand-over on a busy machine).

No OpenTelemetry here (stats are separate from export): timings land in ``RequestStats`` / ``EngineStats``.
"""

from __future__ import annotations

import asyncio
import collections
import logging
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
    # Bookkeeping in the engine's KV cache row.
    uid: int = -1  # owner id of this sequence's cache columns (unique for the engine's life)
    fed: int = 0  # prompt tokens already through the model
    computed: int = 0  # tokens whose K/V are cached, once the prompt is in
    next_token: int = 0


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
        first = next(model.parameters())
        self.device, self.dtype = first.device, first.dtype
        self.max_model_len = max_model_len
        # Tokens per step, decodes included (vLLM's meaning); 0: whole prompts in one step.
        self.max_num_batched_tokens = max_num_batched_tokens
        self.eos_ids = self._eos_ids(model, tokenizer)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        self.stats = EngineStats(max_num_seqs=max_num_seqs, max_queue_len=max_queue_len)
        self._waiting: collections.deque[Sequence] = collections.deque()
        self._running: list[Sequence] = []
        self._cache: Any = None  # one DynamicCache row holding every running sequence's K/V
        self._owner = torch.zeros(0, dtype=torch.long)  # per cache column: its sequence's uid
        self._kpos = torch.zeros(0, dtype=torch.long)  # per cache column: its token's position
        self._next_uid = 0
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
            free_slots = self.stats.max_num_seqs - len(self._running) - len(self._waiting)
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
                while not self._stop and not self._waiting and not self._running:
                    self._cond.wait()
                if self._stop:
                    break
                self._admit_locked()
            try:
                self._drop_cancelled()
                if self._running:
                    self._step()
            except Exception as exc:  # the engine survives a failed step; its requests do not
                log.exception("engine step failed")
                self._fail_running(f"engine error: {type(exc).__name__}: {exc}")
        # A shutdown cancels what runs (the server's grace period is over): not a failure of the request.
        self._fail_running(SHUTDOWN_MESSAGE, FinishReason.CANCELLED.value)
        with self._cond:
            for seq in list(self._waiting):
                self._finish(seq, FinishReason.CANCELLED.value, error=SHUTDOWN_MESSAGE)
            self._waiting.clear()

    def _admit_locked(self) -> None:
        """Move waiting sequences into the batch; their prompts go in over the next steps."""
        while self._waiting and len(self._running) < self.stats.max_num_seqs:
            seq = self._waiting.popleft()
            if seq.cancelled:
                self._finish(seq, FinishReason.CANCELLED.value)
                continue
            seq.stats.scheduled = time.perf_counter()
            seq.uid = self._next_uid
            self._next_uid += 1
            self._running.append(seq)
        self.stats.waiting = len(self._waiting)
        self.stats.running = len(self._running)

    def _drop_cancelled(self) -> None:
        if not any(s.cancelled for s in self._running):
            return
        for s in self._running:
            if s.cancelled:
                self._finish(s, FinishReason.CANCELLED.value)
        self._forget_finished()

    def _fail_running(self, message: str, reason: str = FinishReason.ERROR.value) -> None:
        for s in self._running:
            self._finish(s, reason, error=message)
        self._running = []
        self._forget_finished()

    def _step(self) -> None:
        """One forward pass over a flat batch: a token for every decoding sequence, then prompt
        chunks of the sequences still prefilling, up to ``max_num_batched_tokens`` in all.

        The tokens of every sequence lie side by side in one row (no padding: a 40-token prompt
        next to 7 decodes costs 47 token-rows, not 8 x 40), and one KV cache row holds all the
        sequences' keys; a mask lets each token see only its own sequence's earlier tokens. So a
        newly admitted prompt rides on the same pass over the weights as the running decodes,
        which on a CPU (decode is bound by reading the weights) costs them little.
        """
        decoding = [s for s in self._running if s.fed == len(s.prompt_ids)]
        prefilling = [s for s in self._running if s.fed < len(s.prompt_ids)]
        ids: list[int] = []
        positions: list[int] = []
        owners: list[int] = []
        sampled: list[Sequence] = []
        sample_at: list[int] = []
        for s in decoding:
            ids.append(s.next_token)
            positions.append(s.computed)
            owners.append(s.uid)
            sampled.append(s)
            sample_at.append(len(ids) - 1)
        budget = self.max_num_batched_tokens if self.max_num_batched_tokens > 0 else 1 << 62
        left = max(budget - len(decoding), 1)  # a prompt always makes progress
        for s in prefilling:
            if left <= 0:
                break
            k = min(left, len(s.prompt_ids) - s.fed)
            ids.extend(s.prompt_ids[s.fed:s.fed + k])
            positions.extend(range(s.fed, s.fed + k))
            owners.extend([s.uid] * k)
            s.fed += k
            left -= k
            if s.fed == len(s.prompt_ids):  # prompt complete: its last position gives the first token
                s.computed = s.fed
                sampled.append(s)
                sample_at.append(len(ids) - 1)
        q_owner = torch.tensor(owners, dtype=torch.long)
        q_pos = torch.tensor(positions, dtype=torch.long)
        k_owner = torch.cat([self._owner, q_owner])
        k_pos = torch.cat([self._kpos, q_pos])
        visible = (k_owner[None, :] == q_owner[:, None]) & (k_pos[None, :] <= q_pos[:, None])
        # Additive mask (what eager attention expects; SDPA takes it too). Every token sees itself,
        # so no row is fully masked.
        mask = torch.zeros(visible.shape, dtype=self.dtype).masked_fill_(~visible, torch.finfo(self.dtype).min)
        if self._cache is None:
            from transformers import DynamicCache

            self._cache = DynamicCache(config=self.model.config)
        out = self.model(
            input_ids=torch.tensor([ids], dtype=torch.long, device=self.device),
            position_ids=q_pos[None, :].to(self.device), attention_mask=mask[None, None].to(self.device),
            cache=self._cache, use_cache=True,
            logits_to_keep=torch.tensor(sample_at, dtype=torch.long, device=self.device),
        )
        self._owner, self._kpos = k_owner, k_pos
        size = len(decoding)
        if size:
            self.stats.steps += 1
            self.stats.max_batch_seen = max(self.stats.max_batch_seen, size)
            for s in decoding:
                s.computed += 1
                s.stats.decode_steps += 1
                if size > s.stats.max_batch_size:
                    s.stats.max_batch_size = size
        if not sampled:
            return
        tokens = self._sample(out.logits[0], sampled)
        now = time.perf_counter()
        for s in sampled[len(decoding):]:
            s.stats.first_token = now
        self._emit(sampled, tokens, now)
        if any(s.finished for s in sampled):
            self._forget_finished()

    def _sample(self, logits: torch.Tensor, batch: list[Sequence]) -> list[int]:
        logits = logits.float().cpu()
        greedy = logits.argmax(dim=-1).tolist()
        result: list[int] = []
        for row, s in enumerate(batch):
            p = s.params
            if p.temperature <= 0.0:
                result.append(int(greedy[row]))
                continue
            scaled = logits[row] / p.temperature
            if not bool(torch.isfinite(scaled).all()):  # a temperature so small the logits overflow: its limit
                result.append(int(greedy[row]))
                continue
            probs = torch.softmax(scaled, dim=-1)
            if p.top_p < 1.0:
                sorted_probs, order = probs.sort(descending=True)
                cumulative = sorted_probs.cumsum(-1)
                # keep the smallest prefix whose mass reaches top_p (always at least one token)
                cut = cumulative - sorted_probs > p.top_p
                sorted_probs[cut] = 0.0
                probs = torch.zeros_like(probs).scatter_(0, order, sorted_probs)
            gen = s.generator or self._default_generator
            result.append(int(torch.multinomial(probs, 1, generator=gen).item()))
        return result

    def _emit(self, batch: list[Sequence], tokens: list[int], now: float) -> None:
        produced = 0
        out: list[tuple[Callable[[Event], None], Event]] = []
        for s, tok in zip(batch, tokens, strict=True):
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
                out.append((s.deliver, Event(delta, reason)))
        deliver_all(out)
        self.stats.tokens.add(produced, now)

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
        seq.deliver(Event("", reason, error))

    # ------------------------------------------------------------------ the KV cache row
    def _forget_finished(self) -> None:
        """Take finished sequences out of the batch. Their cache columns stay (masked: their
        owner id is never reused) until they are the larger part of the row, then the row is
        compacted: one copy every few finishes instead of one per finish."""
        self._running = [s for s in self._running if not s.finished]
        self.stats.running = len(self._running)
        if not self._running:
            self._cache = None
            self._owner = self._kpos = torch.zeros(0, dtype=torch.long)
            return
        if self._cache is None:
            return
        live = torch.isin(self._owner, torch.tensor([s.uid for s in self._running], dtype=torch.long))
        kept = int(live.sum())
        if 2 * kept > live.numel():
            return
        index = live.nonzero().squeeze(1)
        self._owner, self._kpos = self._owner[index], self._kpos[index]
        index = index.to(self.device)
        for layer in self._cache.layers:
            layer.keys = layer.keys.index_select(2, index)
            layer.values = layer.values.index_select(2, index)
