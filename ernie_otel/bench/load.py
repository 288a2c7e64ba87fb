"""The load generator: closed or open (Poisson) loop, one httpx client, figures per request."""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx

from .. import slo
from ..kinds import Status
from ..protocol import sse_lines
from .config import BenchConfig
from .results import BenchResult, Reservoir

# Enough distinct words that prompts differ between requests (no accidental prefix-cache wins on
# servers that have one), few enough that most are single tokens in any vocabulary.
_WORDS = (
    "the model serves tokens to users with low latency and high throughput while a queue waits for "
    "a free slot in the running batch every request reports its time to first token and the time "
    "per output token so operators can tell prefill from decode when a dashboard turns red"
).split()

MAX_ERROR_KINDS = 64  # error keys come partly from the server: cap them like any label set


def build_prompt(words: int, index: int) -> str:
    # The index first: each prompt differs from its first token on.
    n = max(1, words)
    body = [_WORDS[(index * 7 + i) % len(_WORDS)] for i in range(n - 1)]
    return " ".join([f"{index}", *body])


@dataclass
class _Outcome:
    ok: bool
    latency: float = 0.0
    ttft: float | None = None
    tokens: int = 0
    prompt_tokens: int = 0
    from_usage: bool = False
    error: str | None = None


class _StreamError(Exception):
    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key


def _error_key_from_body(status: int, body: bytes) -> str:
    code: Any = None
    try:
        err = json.loads(body).get("error")
        if isinstance(err, dict):
            code = err.get("code") or err.get("type")
        elif isinstance(err, str):
            code = None
    except (ValueError, AttributeError):
        pass
    return f"HTTP {status} {code}" if code else f"HTTP {status}"


class Bench:
    """One load run. ``await run()`` returns the result; ``stop()`` ends it early (in-flight
    requests are abandoned and not counted); cancelling ``run()`` raises ``CancelledError``;
    ``snapshot()`` reads the figures so far from any coroutine."""

    def __init__(self, cfg: BenchConfig, *, progress: Callable[[Bench], None] | None = None) -> None:
        self.cfg = cfg
        self.model = cfg.model or ""
        self._progress = progress
        rng = random.Random(cfg.seed)
        self._ttft = Reservoir(cfg.reservoir_size, rng)
        self._tpot = Reservoir(cfg.reservoir_size, rng)
        self._latency = Reservoir(cfg.reservoir_size, rng)
        self.sent = 0
        self.ok = 0
        self.failed = 0
        self.output_tokens = 0
        self.prompt_tokens = 0
        self.from_usage = 0
        self.from_chunks = 0
        self.errors: dict[str, int] = {}
        self.targets = cfg.slo()
        self.slo_met: dict[str, int] = {s.value: 0 for s in self.targets.configured()}
        self.slo_judged: dict[str, int] = dict(self.slo_met)
        self.goodput_requests = 0
        self.goodput_tokens = 0
        self.started: float | None = None
        self.ended: float | None = None
        self._stop = asyncio.Event()
        self._deadline: float | None = None
        self._prompt_offset = cfg.prompt_offset if cfg.prompt_offset is not None else \
            random.SystemRandom().randrange(10**6, 10**7)

    # ------------------------------------------------------------------ public
    def stop(self) -> None:
        self._stop.set()

    @property
    def elapsed(self) -> float:
        if self.started is None:
            return 0.0
        return (self.ended if self.ended is not None else time.perf_counter()) - self.started

    def snapshot(self) -> BenchResult:
        wall = self.elapsed
        cfg = self.cfg
        return BenchResult(
            url=cfg.url, model=self.model, endpoint=cfg.endpoint, stream=cfg.stream, concurrency=cfg.concurrency,
            rate=cfg.rate, max_tokens=cfg.max_tokens, prompt_tokens_requested=cfg.prompt_tokens,
            requests_sent=self.sent, requests_ok=self.ok, requests_failed=self.failed, wall_s=wall,
            output_tokens=self.output_tokens, prompt_tokens=self.prompt_tokens,
            output_tokens_per_s=self.output_tokens / wall if wall > 0 else 0.0,
            requests_per_s=self.ok / wall if wall > 0 else 0.0,
            ttft_ms=self._ttft.summary(), tpot_ms=self._tpot.summary(), latency_ms=self._latency.summary(),
            errors=dict(sorted(self.errors.items(), key=lambda kv: -kv[1])),
            tokens_from_usage=self.from_usage, tokens_from_chunks=self.from_chunks,
            **self._goodput(wall),
        )

    def _goodput(self, wall: float) -> dict[str, Any]:
        if not self.targets.any:
            return {}
        return {
            "slo_targets_ms": self.targets.as_ms(),
            "slo_attainment": {k: (self.slo_met[k] / n if n else None) for k, n in self.slo_judged.items()},
            "slo_judged": dict(self.slo_judged),
            "goodput_requests_per_s": self.goodput_requests / wall if wall > 0 else 0.0,
            "goodput_tokens_per_s": self.goodput_tokens / wall if wall > 0 else 0.0,
        }

    def _judge(self, o: _Outcome) -> None:
        """The server's SLO rules (ernie_otel.slo) on what the client saw."""
        if not self.targets.any:
            return
        if o.ok:
            tpot = (o.latency - o.ttft) / (o.tokens - 1) if (
                self.cfg.stream and o.ttft is not None and o.tokens > 1) else None
            verdicts = slo.evaluate(self.targets, Status.OK.value, None, o.ttft, tpot, o.latency)
        else:
            verdicts = slo.missed_all(self.targets)
        for objective, met in verdicts:
            self.slo_judged[objective.value] += 1
            self.slo_met[objective.value] += met
        if slo.met_all(verdicts):
            self.goodput_requests += 1
            self.goodput_tokens += o.tokens

    async def run(self) -> BenchResult:
        cfg = self.cfg
        headers = {"Authorization": f"Bearer {cfg.api_key}"} if cfg.api_key else {}
        if cfg.slo_headers:
            headers.update(slo.header_values(self.targets))
        cap = cfg.concurrency or 1000
        limits = httpx.Limits(max_connections=cap, max_keepalive_connections=cap)
        timeout = httpx.Timeout(cfg.timeout, connect=min(10.0, cfg.timeout))
        async with httpx.AsyncClient(base_url=cfg.url.rstrip("/"), headers=headers, limits=limits,
                                     timeout=timeout) as client:
            if not self.model:
                self.model = await fetch_model(client)
            self.started = time.perf_counter()
            self._deadline = self.started + cfg.duration if cfg.duration else None
            progress_task = asyncio.create_task(self._report()) if self._progress else None
            producer = asyncio.create_task(self._closed_loop(client) if cfg.rate is None
                                           else self._open_loop(client))
            stopper = asyncio.create_task(self._stop.wait())
            try:
                await asyncio.wait({producer, stopper}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for task in (producer, stopper):
                    task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await producer
                self.ended = time.perf_counter()
                if progress_task is not None:
                    progress_task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await progress_task
                    self._progress(self)  # type: ignore[misc]  # a final line with the end figures
        return self.snapshot()

    # ------------------------------------------------------------------ scheduling
    def _claim(self) -> int | None:
        """The next request's index, or None when the run is over."""
        cfg = self.cfg
        if self._stop.is_set():
            return None
        if cfg.requests is not None and self.sent >= cfg.requests:
            return None
        if self._deadline is not None and time.perf_counter() >= self._deadline:
            return None
        self.sent += 1
        return self.sent - 1

    async def _closed_loop(self, client: httpx.AsyncClient) -> None:
        async def worker() -> None:
            while (index := self._claim()) is not None:
                await self._one(client, index)

        workers = [asyncio.create_task(worker()) for _ in range(self.cfg.concurrency or 1)]
        try:
            await asyncio.gather(*workers)
        finally:
            for w in workers:
                w.cancel()
            await asyncio.gather(*workers, return_exceptions=True)

    async def _open_loop(self, client: httpx.AsyncClient) -> None:
        cfg = self.cfg
        rng = random.Random(cfg.seed + 1)
        sem = asyncio.Semaphore(cfg.concurrency) if cfg.concurrency else None
        inflight: set[asyncio.Task[None]] = set()

        async def one(index: int) -> None:
            try:
                await self._one(client, index)
            finally:
                if sem is not None:
                    sem.release()

        next_at = time.perf_counter()
        try:
            while True:
                next_at += rng.expovariate(cfg.rate)  # type: ignore[arg-type]
                delay = next_at - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                if sem is not None:
                    await sem.acquire()  # an arrival waits for a slot: the cap is an in-flight limit
                index = self._claim()
                if index is None:
                    if sem is not None:
                        sem.release()
                    break
                task = asyncio.create_task(one(index))
                inflight.add(task)
                task.add_done_callback(inflight.discard)  # bounded: only running tasks are held
            if inflight:
                await asyncio.gather(*inflight)
        finally:
            for t in list(inflight):
                t.cancel()
            await asyncio.gather(*inflight, return_exceptions=True)

    async def _report(self) -> None:
        while True:
            self._progress(self)  # type: ignore[misc]
            await asyncio.sleep(0.25)

    # ------------------------------------------------------------------ one request
    def _body(self, index: int) -> tuple[str, dict[str, Any]]:
        cfg = self.cfg
        prompt = build_prompt(cfg.prompt_tokens, self._prompt_offset + index)
        body: dict[str, Any] = {"model": self.model, "max_tokens": cfg.max_tokens, "stream": cfg.stream}
        if cfg.endpoint == "chat":
            path = "/v1/chat/completions"
            body["messages"] = [{"role": "user", "content": prompt}]
        else:
            path = "/v1/completions"
            body["prompt"] = prompt
        if cfg.stream and cfg.include_usage:
            body["stream_options"] = {"include_usage": True}
        if cfg.temperature is not None:
            body["temperature"] = cfg.temperature
        if cfg.ignore_eos:
            body["ignore_eos"] = True
        body.update(cfg.extra_body)
        return path, body

    async def _one(self, client: httpx.AsyncClient, index: int) -> None:
        path, body = self._body(index)
        t0 = time.perf_counter()
        try:
            async with client.stream("POST", path, json=body) as resp:
                if resp.status_code != 200:
                    outcome = _Outcome(False, error=_error_key_from_body(resp.status_code, await resp.aread()))
                elif self.cfg.stream:
                    outcome = await self._read_stream(resp, t0)
                else:
                    outcome = self._read_json(await resp.aread(), t0)
        except asyncio.CancelledError:
            raise
        except _StreamError as exc:
            outcome = _Outcome(False, error=exc.key)
        except Exception as exc:  # connection refused, timeouts, bad JSON: counted by class, never fatal
            outcome = _Outcome(False, error=type(exc).__name__)
        self._record(outcome)

    def _content(self, choice: dict[str, Any]) -> str:
        if self.cfg.endpoint == "chat":
            delta = choice.get("delta") or {}
            return (delta.get("content") or "") + (delta.get("reasoning_content") or "")
        return choice.get("text") or ""

    async def _read_stream(self, resp: httpx.Response, t0: float) -> _Outcome:
        first: float | None = None
        chunks = 0
        usage: dict[str, Any] | None = None
        finished = False
        async for line in sse_lines(resp.aiter_text()):
            if not line.startswith("data:"):
                continue
            payload = line[5:].strip()
            if payload == "[DONE]":
                finished = True
                break
            obj = json.loads(payload)
            if "error" in obj:
                err = obj["error"]
                code = (err.get("code") or err.get("type")) if isinstance(err, dict) else None
                raise _StreamError(f"stream {code}" if code else "stream error")
            if obj.get("usage"):
                usage = obj["usage"]
            for choice in obj.get("choices") or ():
                if self._content(choice):
                    if first is None:
                        first = time.perf_counter()
                    chunks += 1
                if choice.get("finish_reason"):
                    # Some servers (transformers serve) end the stream without [DONE].
                    finished = True
        end = time.perf_counter()
        if not finished:
            raise _StreamError("IncompleteStream")
        tokens, from_usage = (int(usage["completion_tokens"]), True) if usage and "completion_tokens" in usage \
            else (chunks, False)
        prompt = int(usage.get("prompt_tokens") or 0) if usage else 0
        return _Outcome(True, latency=end - t0, ttft=(first - t0) if first is not None else None, tokens=tokens,
                        prompt_tokens=prompt, from_usage=from_usage)

    def _read_json(self, raw: bytes, t0: float) -> _Outcome:
        end = time.perf_counter()
        obj = json.loads(raw)
        usage = obj.get("usage") or {}
        if "completion_tokens" in usage:
            tokens, from_usage = int(usage["completion_tokens"]), True
        else:  # no usage and no chunks to count: one "chunk" per non-empty choice
            tokens = sum(1 for c in obj.get("choices") or () if (c.get("message") or {}).get("content")
                         or c.get("text"))
            from_usage = False
        return _Outcome(True, latency=end - t0, ttft=end - t0, tokens=tokens,
                        prompt_tokens=int(usage.get("prompt_tokens") or 0), from_usage=from_usage)

    def _record(self, o: _Outcome) -> None:
        self._judge(o)
        if not o.ok:
            self.failed += 1
            key = o.error or "unknown"
            if key not in self.errors and len(self.errors) >= MAX_ERROR_KINDS:
                key = "other"
            self.errors[key] = self.errors.get(key, 0) + 1
            return
        self.ok += 1
        self.output_tokens += o.tokens
        self.prompt_tokens += o.prompt_tokens
        if o.from_usage:
            self.from_usage += 1
        else:
            self.from_chunks += 1
        self._latency.add(o.latency)
        if o.ttft is not None:
            self._ttft.add(o.ttft)
            # Non-stream TTFT is the whole latency, so a TPOT from it would be a meaningless 0.
            if self.cfg.stream and o.tokens > 1:
                self._tpot.add((o.latency - o.ttft) / (o.tokens - 1))


async def fetch_model(client: httpx.AsyncClient) -> str:
    resp = await client.get("/v1/models", timeout=30.0)
    resp.raise_for_status()
    data = resp.json().get("data") or []
    if not data:
        raise RuntimeError("GET /v1/models listed no model; pass --model")
    return str(data[0]["id"])


async def run_bench(cfg: BenchConfig, *, progress: Callable[[Bench], None] | None = None) -> BenchResult:
    """Run one benchmark. With ``requests=None`` and no duration it runs until cancelled."""
    return await Bench(cfg, progress=progress).run()
