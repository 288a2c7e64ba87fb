"""The figures of a run: percentiles over bounded reservoirs, and the result record."""

from __future__ import annotations

import math
import random
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class Percentiles:
    """Milliseconds for times; ``None`` when there were no samples."""

    count: int = 0
    mean: float | None = None
    p50: float | None = None
    p90: float | None = None
    p95: float | None = None
    p99: float | None = None
    max: float | None = None


@dataclass
class BenchResult:
    url: str
    model: str
    endpoint: str
    stream: bool
    concurrency: int | None
    rate: float | None
    max_tokens: int
    prompt_tokens_requested: int
    requests_sent: int
    requests_ok: int
    requests_failed: int
    wall_s: float
    output_tokens: int
    prompt_tokens: int
    output_tokens_per_s: float
    requests_per_s: float
    ttft_ms: Percentiles
    tpot_ms: Percentiles
    latency_ms: Percentiles
    errors: dict[str, int]
    tokens_from_usage: int  # successful requests whose token count came from `usage`
    tokens_from_chunks: int  # ... from counting content chunks (server sent no usage)
    # Goodput (only with --slo-*): targets in ms; per objective the share of judged requests that
    # met it (failed requests miss every target, as on the server); output tokens and requests per
    # second of the requests that met all their targets.
    slo_targets_ms: dict[str, float] = field(default_factory=dict)
    slo_attainment: dict[str, float | None] = field(default_factory=dict)
    slo_judged: dict[str, int] = field(default_factory=dict)
    goodput_requests_per_s: float | None = None
    goodput_tokens_per_s: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class Reservoir:
    """Uniform sample of at most ``size`` values (Algorithm R): exact up to ``size`` samples,
    bounded memory for unbounded runs."""

    def __init__(self, size: int, rng: random.Random) -> None:
        self.size = size
        self.values: list[float] = []
        self.count = 0
        self.total = 0.0
        self.max = -math.inf
        self._rng = rng

    def add(self, value: float) -> None:
        self.count += 1
        self.total += value
        self.max = max(self.max, value)
        if len(self.values) < self.size:
            self.values.append(value)
        else:
            j = self._rng.randrange(self.count)
            if j < self.size:
                self.values[j] = value

    def summary(self, scale: float = 1000.0) -> Percentiles:
        if not self.values:
            return Percentiles()
        ordered = sorted(self.values)
        return Percentiles(count=self.count, mean=self.total / self.count * scale,
                           p50=percentile(ordered, 50) * scale, p90=percentile(ordered, 90) * scale,
                           p95=percentile(ordered, 95) * scale, p99=percentile(ordered, 99) * scale,
                           max=self.max * scale)


def percentile(ordered: list[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default) over a sorted list."""
    if not ordered:
        raise ValueError("no samples")
    pos = (len(ordered) - 1) * q / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)
