"""Plain per-request and scheduler statistics: no OpenTelemetry here (stats are separate from export).

The engine and scheduler fill these; ``ernie_otel.telemetry.recorder`` turns them into metrics and
spans once, when a request ends. Times are ``time.perf_counter()`` seconds except
``arrival_unix_ns``, which anchors the monotonic times to wall-clock for span timestamps.
"""

from __future__ import annotations

import collections
import threading
import time
from dataclasses import dataclass, field

from .slo import NO_TARGETS, SloTargets, Verdicts


@dataclass(slots=True)
class RequestStats:
    request_id: str
    operation: str  # names.Operation value
    arrival: float = field(default_factory=time.perf_counter)
    arrival_unix_ns: int = field(default_factory=time.time_ns)
    scheduled: float | None = None  # entered the running batch (prefill starts)
    first_token: float | None = None
    finished: float | None = None
    prompt_tokens: int = 0
    output_tokens: int = 0
    finish_reason: str | None = None  # names.FinishReason value
    status: str | None = None  # names.Status value
    error_type: str | None = None  # names.ErrorType value
    queue_length_at_arrival: int = 0
    max_batch_size: int = 0  # largest running batch this request decoded in
    decode_steps: int = 0
    # Request parameters, for span attributes.
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    seed: int | None = None
    stream: bool = False
    # Accountability: whose request, judged against which targets, with what verdicts and cost.
    tenant: str = "default"  # tenancy.DEFAULT_TENANT
    slo: SloTargets = NO_TARGETS
    slo_verdicts: Verdicts = ()
    cost: float | None = None

    def to_unix_ns(self, t: float) -> int:
        return self.arrival_unix_ns + int((t - self.arrival) * 1e9)

    @property
    def e2e_latency(self) -> float:
        end = self.finished if self.finished is not None else time.perf_counter()
        return end - self.arrival

    @property
    def queue_time(self) -> float | None:
        return None if self.scheduled is None else self.scheduled - self.arrival

    @property
    def ttft(self) -> float | None:
        return None if self.first_token is None else self.first_token - self.arrival

    @property
    def time_per_output_token(self) -> float | None:
        if self.first_token is None or self.finished is None or self.output_tokens < 2:
            return None
        return (self.finished - self.first_token) / (self.output_tokens - 1)

    def phases_ms(self) -> dict[str, float]:
        """Server-Timing's phases in milliseconds (queue, prefill, decode, total), the same instants
        the phase spans are built from; a phase the request never reached is left out."""
        end = self.finished if self.finished is not None else time.perf_counter()
        out: dict[str, float] = {}
        if self.scheduled is not None:
            out["queue"] = (self.scheduled - self.arrival) * 1000.0
            if self.first_token is not None:
                out["prefill"] = (self.first_token - self.scheduled) * 1000.0
                out["decode"] = (end - self.first_token) * 1000.0
        out["total"] = (end - self.arrival) * 1000.0
        return out

    def response_metrics(self) -> dict[str, float | None]:
        """The per-request figures under vLLM's field names: generation is scheduled to last token
        (prefill + decode); mean ITL is the time per output token after the first."""
        end = self.finished if self.finished is not None else time.perf_counter()
        ttft, tpot = self.ttft, self.time_per_output_token
        generation = None if self.scheduled is None else end - self.scheduled
        return {
            "time_to_first_token_ms": None if ttft is None else round(ttft * 1000.0, 3),
            "generation_time_ms": None if generation is None else round(generation * 1000.0, 3),
            "queue_time_ms": None if self.scheduled is None else round((self.scheduled - self.arrival) * 1000.0, 3),
            "mean_itl_ms": None if tpot is None else round(tpot * 1000.0, 3),
            "tokens_per_second": None if not generation else round(self.output_tokens / generation, 3),
        }


def server_timing(phases_ms: dict[str, float], prefix: str = "") -> str:
    """A W3C Server-Timing header value from :meth:`RequestStats.phases_ms`."""
    return ", ".join(f"{prefix}{name};dur={ms:.3f}" for name, ms in phases_ms.items())


class ThroughputWindow:
    """Output tokens per second over a sliding window, across all requests.

    The engine adds one entry per decode step (not per token per request), so the cost is one
    deque append per step; readers sum the window.
    """

    def __init__(self, window_s: float = 10.0) -> None:
        self.window_s = window_s
        self._events: collections.deque[tuple[float, int]] = collections.deque()
        self._lock = threading.Lock()
        self._started = time.perf_counter()

    def add(self, tokens: int, now: float | None = None) -> None:
        now = time.perf_counter() if now is None else now
        with self._lock:
            self._events.append((now, tokens))
            self._trim(now)

    def _trim(self, now: float) -> None:
        cutoff = now - self.window_s
        while self._events and self._events[0][0] < cutoff:
            self._events.popleft()

    def rate(self, now: float | None = None) -> float:
        now = time.perf_counter() if now is None else now
        with self._lock:
            self._trim(now)
            total = sum(n for _, n in self._events)
        span = min(self.window_s, max(now - self._started, 1e-9))
        return total / span


# How many per-iteration samples the engine keeps for the telemetry side between two drains (a
# collection every few seconds drains them). Beyond it the oldest go: a stalled reader costs the
# engine a bounded deque, never memory that grows.
ENGINE_SAMPLES_MAX = 8192


def _samples() -> collections.deque[tuple[float, float]]:
    return collections.deque(maxlen=ENGINE_SAMPLES_MAX)


@dataclass(slots=True)
class ModelLoad:
    """How the model was loaded: the start-up span and the load-time gauge come from this."""

    seconds: float
    start_unix_ns: int
    end_unix_ns: int
    model: str  # what --model named (a path, an id or "tiny")
    device: str
    dtype: str


@dataclass(slots=True)
class EngineStats:
    """Live scheduler/engine figures, read by observable gauges.

    The engine writes them at step boundaries only, as plain numbers: gauges read the current
    values, counters the cumulative totals, and the ``*_samples`` deques carry per-iteration and
    per-request figures that the telemetry side drains into histograms (appends and pops of a
    deque are atomic, so engine and telemetry threads need no lock).
    """

    max_num_seqs: int
    max_queue_len: int
    waiting: int = 0
    running: int = 0
    steps: int = 0  # engine iterations run (cumulative): a decode step, a prefill chunk, or both
    max_batch_seen: int = 0  # largest number of sequences decoded in one step
    tokens: ThroughputWindow = field(default_factory=ThroughputWindow)
    # KV cache of the running batch, in token positions (one position = one token's K and V in
    # every layer). The budget is the largest cache the batch can reach: max_num_seqs rows of
    # max_model_len positions. 0 = no local engine (gateway mode): those gauges stay absent.
    kv_bytes_per_token: int = 0
    kv_budget_tokens: int = 0
    kv_positions: int = 0  # rows x width of the left-padded cache, padding included
    kv_padding: int = 0  # of which left padding
    admitted: int = 0  # sequences moved from the waiting queue into the running batch (cumulative)
    # Sequences that left the running batch before finishing, by FinishReason value (cancelled:
    # client gone or shutdown; error: a failed step).
    evicted: dict[str, int] = field(default_factory=dict)
    # (sequences in the iteration, tokens it ran through the model: prompt tokens prefilled + one per decoded row)
    iteration_samples: collections.deque[tuple[float, float]] = field(default_factory=_samples)
    # (prefill seconds, decode seconds) of each request that finished normally
    phase_samples: collections.deque[tuple[float, float]] = field(default_factory=_samples)
    # (seconds between a sequence's two consecutive tokens, how many tokens had that gap): every row
    # of one decode step whose previous token came from the same step shares one gap, so a step
    # adds one or two entries, not one per token.
    itl_samples: collections.deque[tuple[float, float]] = field(default_factory=_samples)
    model_load: ModelLoad | None = None

    @property
    def kv_used_bytes(self) -> int:
        return self.kv_positions * self.kv_bytes_per_token

    @property
    def kv_budget_bytes(self) -> int:
        return self.kv_budget_tokens * self.kv_bytes_per_token
