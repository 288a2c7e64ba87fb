"""Service-level objectives of a served model: targets, per-request header targets, evaluation.

No OpenTelemetry here: the request path evaluates a finished request with plain arithmetic, the
recorder turns verdicts into counters, and ``ernie-otel bench`` uses the very same
:func:`evaluate`, so server-side and client-side attainment share one definition.

Definitions (docs/runbooks.md repeats them for operators):

- TTFT: arrival to first output token; TPOT: (last - first token) / (output tokens - 1);
  e2e: arrival to the last byte. A target is met when the figure is at or below it.
- A request that finished ``ok`` is judged on each configured target it has a figure for (TPOT
  needs two output tokens); ``all`` is met when every one of those is.
- A request the server failed or refused (engine error, upstream failure, queue full, not ready)
  misses every configured target: the caller got no answer in time. A cancelled request and a
  caller's own mistake (bad JSON, unknown model, wrong key, prompt too long) are not judged.
- Goodput tokens: the output tokens of requests that met ``all``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum

from .kinds import ErrorType, Status

# Per-request targets, as the Kubernetes Gateway API inference extension sends them.
HEADER_TTFT = "x-slo-ttft-ms"
HEADER_TPOT = "x-slo-tpot-ms"
# A header target outside these bounds is clamped (and counted): a caller cannot make every request
# miss (0 ms) nor switch its SLO off (a year).
HEADER_MIN_MS = 1.0
HEADER_MAX_MS = 600_000.0
# Longer header values are not even parsed.
HEADER_MAX_CHARS = 16

SLO_ENV = "ERNIE_SLO_TARGETS"


class Slo(str, Enum):
    TTFT = "ttft"
    TPOT = "tpot"
    E2E = "e2e"
    ALL = "all"


class SloResult(str, Enum):
    MET = "met"
    MISSED = "missed"


class HeaderProblem(str, Enum):
    INVALID = "invalid"  # not a finite number: ignored
    CLAMPED = "clamped"  # out of bounds: clamped


# Failures that are the server's: they count against every target. Everything else that is not
# ``ok`` (a caller's mistake, a cancel) is not judged.
SERVER_FAILURES = frozenset({
    ErrorType.QUEUE_FULL.value, ErrorType.NOT_READY.value, ErrorType.ENGINE_ERROR.value,
    ErrorType.UPSTREAM_CONNECT.value, ErrorType.UPSTREAM_TIMEOUT.value, ErrorType.UPSTREAM_HTTP.value,
    ErrorType.UPSTREAM_STREAM.value,
})


@dataclass(frozen=True, slots=True)
class SloTargets:
    """Targets in seconds; None: no target of that kind."""

    ttft: float | None = None
    tpot: float | None = None
    e2e: float | None = None

    def __post_init__(self) -> None:
        for name in ("ttft", "tpot", "e2e"):
            value = getattr(self, name)
            if value is not None and not (math.isfinite(value) and value > 0):
                raise ValueError(f"SLO target {name} must be a positive number of milliseconds, not {value!r}")

    @property
    def any(self) -> bool:
        return self.ttft is not None or self.tpot is not None or self.e2e is not None

    def configured(self) -> tuple[Slo, ...]:
        """The objectives counters exist for (``all`` whenever any target is set)."""
        out = tuple(s for s in (Slo.TTFT, Slo.TPOT, Slo.E2E) if getattr(self, s.value) is not None)
        return (*out, Slo.ALL) if out else ()

    def as_ms(self) -> dict[str, float]:
        return {s: round(v * 1000, 3) for s in ("ttft", "tpot", "e2e") if (v := getattr(self, s)) is not None}


NO_TARGETS = SloTargets()


def ms_target(text: str) -> float:
    """A command-line / environment target in milliseconds -> seconds (ConfigError on misuse)."""
    value = float(text)
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"must be a positive number of milliseconds, not {text!r}")
    return value / 1000.0


def targets_from_json(text: str) -> SloTargets:
    """``{"ttft_ms": 500, "tpot_ms": 50, "e2e_ms": 20000}`` (any subset) -> targets."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ValueError('must be a JSON object such as {"ttft_ms": 500, "tpot_ms": 50}')
    allowed = {"ttft_ms", "tpot_ms", "e2e_ms"}
    unknown = set(data) - allowed
    if unknown:
        raise ValueError(f"unknown keys {sorted(unknown)} (allowed: {sorted(allowed)})")
    values: dict[str, float] = {}
    for key, value in data.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"{key} must be a number of milliseconds")
        values[key.removesuffix("_ms")] = ms_target(str(value))
    return SloTargets(**values)


def merge(base: SloTargets, ttft: float | None, tpot: float | None, e2e: float | None) -> SloTargets:
    """Flags win over the JSON form, target by target."""
    return SloTargets(ttft if ttft is not None else base.ttft, tpot if tpot is not None else base.tpot,
                      e2e if e2e is not None else base.e2e)


def parse_header_ms(raw: str) -> tuple[float | None, HeaderProblem | None]:
    """One ``x-slo-*-ms`` header value -> (seconds or None, problem). Never raises."""
    text = raw.strip()
    if not text or len(text) > HEADER_MAX_CHARS:
        return None, HeaderProblem.INVALID
    try:
        ms = float(text)
    except ValueError:
        return None, HeaderProblem.INVALID
    if not math.isfinite(ms):
        return None, HeaderProblem.INVALID
    if ms < HEADER_MIN_MS:
        return HEADER_MIN_MS / 1000.0, HeaderProblem.CLAMPED
    if ms > HEADER_MAX_MS:
        return HEADER_MAX_MS / 1000.0, HeaderProblem.CLAMPED
    return ms / 1000.0, None


def request_targets(base: SloTargets, headers: Mapping[str, str]
                    ) -> tuple[SloTargets, list[tuple[str, HeaderProblem]]]:
    """The targets of one request: the model's, with what the gateway headers override.

    Returns the targets and the header problems to count; a bad header is ignored, never an error.
    """
    return header_targets(base, headers.get(HEADER_TTFT), headers.get(HEADER_TPOT))


def header_targets(base: SloTargets, raw_ttft: str | None, raw_tpot: str | None
                   ) -> tuple[SloTargets, list[tuple[str, HeaderProblem]]]:
    """:func:`request_targets` from the two header values (None: header absent)."""
    if raw_ttft is None and raw_tpot is None:
        return base, []
    problems: list[tuple[str, HeaderProblem]] = []
    ttft, tpot = base.ttft, base.tpot
    if raw_ttft is not None:
        value, problem = parse_header_ms(raw_ttft)
        if problem is not None:
            problems.append((HEADER_TTFT, problem))
        if value is not None:
            ttft = value
    if raw_tpot is not None:
        value, problem = parse_header_ms(raw_tpot)
        if problem is not None:
            problems.append((HEADER_TPOT, problem))
        if value is not None:
            tpot = value
    return SloTargets(ttft, tpot, base.e2e), problems


# Header values remembered by HeaderTargets: room for blanks around a value of HEADER_MAX_CHARS.
_MEMO_MAX_CHARS = 2 * HEADER_MAX_CHARS


class HeaderTargets:
    """:func:`header_targets` for one model's targets, remembered per pair of header values.

    A gateway sends the same few targets over and over; parsing them and building (and checking) a
    new ``SloTargets`` was ~3 µs of every request's path. Only short values are remembered (longer
    ones are invalid anyway) and the memo is emptied when full, so a client that varies its
    headers costs a parse per request, never memory.
    """

    def __init__(self, base: SloTargets, max_entries: int = 256) -> None:
        self.base = base
        self._max_entries = max_entries
        self._memo: dict[tuple[str | None, str | None], tuple[SloTargets, tuple[tuple[str, HeaderProblem], ...]]] = {}

    def __call__(self, raw_ttft: str | None, raw_tpot: str | None
                 ) -> tuple[SloTargets, tuple[tuple[str, HeaderProblem], ...]]:
        if raw_ttft is None and raw_tpot is None:
            return self.base, ()
        key = (raw_ttft, raw_tpot)
        hit = self._memo.get(key)
        if hit is not None:
            return hit
        targets, problems = header_targets(self.base, raw_ttft, raw_tpot)
        result = (targets, tuple(problems))
        if len(raw_ttft or "") <= _MEMO_MAX_CHARS and len(raw_tpot or "") <= _MEMO_MAX_CHARS:
            if len(self._memo) >= self._max_entries:
                self._memo.clear()
            self._memo[key] = result
        return result


Verdicts = tuple[tuple[Slo, bool], ...]


def evaluate(targets: SloTargets, status: str, error_type: str | None, ttft: float | None,
             tpot: float | None, e2e: float | None) -> Verdicts:
    """Met (True) / missed (False) per judged objective, ``all`` last; empty when not judged."""
    # Written out rather than looped: this runs for every finished request on the event loop, and
    # each enum class-attribute or ``.value`` access costs more than the comparison it serves.
    t_ttft, t_tpot, t_e2e = targets.ttft, targets.tpot, targets.e2e
    if t_ttft is None and t_tpot is None and t_e2e is None:
        return ()
    if status != _OK:
        return missed_all(targets) if error_type in SERVER_FAILURES else ()
    out: list[tuple[Slo, bool]] = []
    every = True
    if t_ttft is not None and ttft is not None:
        met = ttft <= t_ttft
        out.append((_TTFT, met))
        every = every and met
    if t_tpot is not None and tpot is not None:
        met = tpot <= t_tpot
        out.append((_TPOT, met))
        every = every and met
    if t_e2e is not None and e2e is not None:
        met = e2e <= t_e2e
        out.append((_E2E, met))
        every = every and met
    if out:
        out.append((_ALL, every))
    return tuple(out)


_OK = Status.OK.value
_TTFT, _TPOT, _E2E, _ALL = Slo.TTFT, Slo.TPOT, Slo.E2E, Slo.ALL


def missed_all(targets: SloTargets) -> Verdicts:
    """A request the server failed: every configured objective missed."""
    return tuple((s, False) for s in targets.configured())


def header_values(targets: SloTargets) -> dict[str, str]:
    """The gateway headers that hand these targets to a server (what ``ernie-otel bench
    --slo-headers`` sends); e2e has no header."""
    out = {}
    if targets.ttft is not None:
        out[HEADER_TTFT] = f"{targets.ttft * 1000:g}"
    if targets.tpot is not None:
        out[HEADER_TPOT] = f"{targets.tpot * 1000:g}"
    return out


def met_all(verdicts: Verdicts) -> bool:
    return bool(verdicts) and verdicts[-1][1]
