"""Will the fleet's tail sampler keep this trace? The recorder asks before it attaches exemplars.

In the fleet profile the sampling Collectors (collector/fleet/sampler.yaml) drop most OK traces.
An exemplar is a link from a histogram bucket to a trace id; one that points at a dropped trace
opens "trace not found" in Jaeger. The recorder knows, when a request finishes, everything the
sampler's policies look at for its own spans, so it applies the same rules with the same
parameters (the same ``OTELCOL_SAMPLING_*`` variables, read into TelemetrySettings) and links a
bucket to the trace only when the sampler will keep it.

The rule errs one way only: a trace kept for a reason the recorder cannot see (another service's
error, a gateway slower than the engine) gets no exemplar here, but a trace the recorder says is
kept is kept by the sampler, because each clause below is implied by one of the sampler's
policies over the spans this process writes:

- errors / error-type: the GenAI span has status ERROR or an ``error.type`` attribute;
- cancelled: its ``gen_ai.response.finish_reasons`` holds "cancelled";
- slow-request: the trace lasts at least as long as the GenAI span (first start to last end);
- slow-first-token: the GenAI span's ``gen_ai.server.time_to_first_token``, the very float the
  recorder writes there, against the same threshold computed the same way (ms / 1000.0 in float64);
- baseline: the probabilistic policy's hash, computed exactly as the Collector computes it.

Pure Python, no OpenTelemetry: the rule is testable on its own and cheap (one FNV pass over
~26 bytes per finished request, on the telemetry thread).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from fractions import Fraction

from ..kinds import FinishReason

_FNV_OFFSET = 0xCBF29CE484222325
_FNV_PRIME = 0x100000001B3
_MASK64 = 2**64 - 1
_NS_PER_MS = 1_000_000


def fnv1a64(data: bytes) -> int:
    """FNV-1a, 64 bit (Go's hash/fnv New64a, which the sampler uses; hashlib has no FNV)."""
    h = _FNV_OFFSET
    for byte in data:
        h = ((h ^ byte) * _FNV_PRIME) & _MASK64
    return h


def baseline_threshold(percent: float) -> int:
    """The probabilistic policy's threshold for ``percent``, as the Collector computes it.

    The Collector multiplies MaxUint64 by the float64 ratio percent/100 in a ``big.Float`` of 64
    bits' precision (rounded to nearest, ties to even), then truncates to uint64 (saturating).
    Doing the same steps here, instead of the exact product, keeps the recorder and the sampler in
    agreement even on the one trace id in ~2^61 where the two would differ.
    """
    ratio = Fraction(percent / 100)  # the same float64 division the Collector does
    if ratio <= 0:
        return 0
    product = _MASK64 * ratio
    # Round to 64 significant bits: find e with 2^e <= product < 2^(e+1), keep bits down to 2^(e-63).
    e = product.numerator.bit_length() - product.denominator.bit_length()
    if Fraction(2) ** e > product:
        e -= 1
    scale = Fraction(2) ** (63 - e)
    rounded = Fraction(round(product * scale)) / scale  # round() on a Fraction: ties to even
    return min(int(rounded), _MASK64)


def baseline_keeps(trace_id: int, salt: str, threshold: int) -> bool:
    """The baseline policy: FNV-1a 64 of the salt then the 16 trace-id bytes, kept if <= threshold."""
    return fnv1a64(salt.encode() + trace_id.to_bytes(16, "big")) <= threshold


@dataclass(frozen=True, slots=True)
class KeepRule:
    """The sampler's policies with the parameters it runs with (sampler.yaml's variables)."""

    baseline_percent: float
    hash_salt: str
    latency_ms: int
    ttft_ms: int
    threshold: int = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "threshold", baseline_threshold(self.baseline_percent))

    def keeps(self, trace_id: int, *, failed: bool, error_type: str | None, finish_reason: str | None,
              duration_ns: int, ttft_s: float | None) -> bool:
        """Whether the sampler will keep the trace. ``duration_ns``: the GenAI span's end minus start;
        ``ttft_s``: its time-to-first-token attribute (None: no first token, no attribute)."""
        if failed or error_type is not None or finish_reason == FinishReason.CANCELLED.value:
            return True
        # The latency policy compares whole milliseconds (Go's Duration.Milliseconds truncates);
        # for non-negative durations that is the same as comparing nanoseconds to threshold * 1e6.
        if duration_ns >= self.latency_ms * _NS_PER_MS:
            return True
        # sampler.yaml compares the attribute with ${OTELCOL_SAMPLING_TTFT_MS} / 1000.0: OTTL
        # divides an int64 by a float64 in float64, as Python does here, so both agree to the bit.
        if ttft_s is not None and ttft_s >= self.ttft_ms / 1000.0:
            return True
        return baseline_keeps(trace_id, self.hash_salt, self.threshold)
