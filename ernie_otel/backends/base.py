"""What every serving backend offers ``ErnieServer``, and the one mapping from a request's outcome
to its telemetry.

The server does what is the same for every backend (auth, body limits, JSON validation, the model
name, error bodies); a backend turns a validated request into a response: the local engine
generates it, the upstream backend forwards it. Neither the server nor a backend calls
``Recorder.finish`` itself: each says how the request ended (``Outcome``) and
``record_outcome`` decides the status, error type, finish reason and span exception from that.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Any, Protocol

from fastapi import Request
from fastapi.responses import JSONResponse, Response

from .. import names
from ..kinds import ErrorType, FinishReason, Operation, Status
from ..protocol import APIError, GenerationRequest
from ..stats import EngineStats, server_timing
from ..telemetry.recorder import Recorder, RequestTelemetry


class Outcome(Enum):
    OK = "ok"  # answered in full
    ERROR = "error"  # answered with an API error instead of a generation (status: the error's own)
    FAILED = "failed"  # generation broke off: engine failure, upstream failure mid-way
    DISCONNECTED = "disconnected"  # the client went away
    SHUTDOWN = "shutdown"  # the server, stopping, cancelled it; the client got a 503


def record_outcome(recorder: Recorder, rt: RequestTelemetry, outcome: Outcome, error: APIError | None = None, *,
                   response_id: str | None = None, output_text: str | None = None) -> None:
    """The one place where how a request ended becomes its telemetry (idempotent, never raises).

    A cancel, by the client or by a shutdown, has status ``cancelled`` and no ``error_type`` (it is
    not a failure of the server); its finish reason stays the one the generation reached, or
    ``cancelled``. A shutdown also puts the 503 the client got on the span as an exception event,
    on every backend and whether or not the response streams, so a trace tells a server-side cancel
    from a client that hung up.
    """
    st = rt.stats
    if outcome is Outcome.OK:
        recorder.finish(rt, Status.OK.value, response_id=response_id, output_text=output_text)
        return
    if outcome is Outcome.DISCONNECTED or outcome is Outcome.SHUTDOWN:
        if st.finish_reason is None:
            st.finish_reason = FinishReason.CANCELLED.value
        recorder.finish(rt, Status.CANCELLED.value, exception=error if outcome is Outcome.SHUTDOWN else None)
        return
    if error is None:  # a caller's mistake; still count the request rather than lose it
        error = APIError(500, "request failed", ErrorType.ENGINE_ERROR, openai_type="server_error")
    if outcome is Outcome.FAILED:
        st.finish_reason = FinishReason.ERROR.value
    recorder.finish(rt, error.status.value, error_type=error.error_type.value, exception=error)


@dataclass(slots=True)
class Call:
    """One generation request as a backend receives it: validated, authorised, for this model."""

    operation: Operation
    request: GenerationRequest
    body: dict[str, Any]  # the client's JSON as sent (the upstream backend forwards it)
    response_id: str
    http: Request
    rt: RequestTelemetry
    recorder: Recorder
    response_metrics: bool = False  # the server allows it and the request asked for its figures

    def accept(self, *, max_tokens: int | None, prompt_tokens: int = 0) -> None:
        """The backend took the request's parameters: they go on the span from here on."""
        req, st = self.request, self.rt.stats
        st.prompt_tokens, st.max_tokens, st.stream = prompt_tokens, max_tokens, req.stream
        st.temperature, st.top_p, st.seed = req.temperature, req.top_p, req.seed
        self.recorder.set_request_params(self.rt, req.messages if req.messages is not None else req.prompt)

    def record(self, outcome: Outcome, error: APIError | None = None, *, response_id: str | None = None,
               output_text: str | None = None) -> None:
        record_outcome(self.recorder, self.rt, outcome, error, response_id=response_id, output_text=output_text)

    def trace_headers(self) -> dict[str, str]:
        return self.recorder.trace_headers(self.rt)

    def timing_headers(self, upstream: str | None = None) -> dict[str, str]:
        """``Server-Timing`` from the request's stats (the instants its spans are built from); in
        gateway mode after the upstream's own entries, ours prefixed."""
        return timing_headers(self.rt, upstream)

    def metrics(self) -> dict[str, float | None] | None:
        """The per-request figures for the response body, if asked for (after ``record``)."""
        return self.rt.stats.response_metrics() if self.response_metrics else None


def timing_headers(rt: RequestTelemetry, upstream: str | None = None) -> dict[str, str]:
    """``Server-Timing`` for a finished request (queue, prefill, decode, total; ms). Streams call it
    when their headers go out: then the phases so far, and ``headers`` for the time until then."""
    phases = rt.stats.phases_ms()
    if rt.stats.finished is None:
        phases["headers"] = phases.pop("total")
    if upstream is None:
        return {names.SERVER_TIMING_HEADER: server_timing(phases)}
    ours = server_timing(phases, names.GATEWAY_TIMING_PREFIX)  # gateway mode: "" is an upstream without any
    return {names.SERVER_TIMING_HEADER: f"{upstream}, {ours}" if upstream else ours}


class Backend(Protocol):
    """Where a server's generation happens."""

    @property
    def ready(self) -> bool:
        """Requests can be served (the model has loaded; an upstream backend always is)."""

    @property
    def load_error(self) -> str | None:
        """Why the backend can never become ready, if it cannot."""

    @property
    def stats(self) -> EngineStats | None:
        """Live figures for the gauges and /stats (None while there is no engine yet)."""

    @property
    def root(self) -> str:
        """What ``/v1/models`` reports as the model's root (a path, or the configured model)."""

    @property
    def max_model_len(self) -> int:
        """Prompt + output token limit in effect."""

    async def start(self) -> None:
        """At application start-up: begin loading or connecting, without waiting for it."""

    async def stop(self) -> None:
        """At shutdown: release the engine or the connections."""

    async def generate(self, call: Call) -> Response:
        """Answer a request; raise ``APIError`` for a refusal before anything was sent."""


def error_response(err: APIError, headers: dict[str, str]) -> Response:
    """An error answer: the upstream's own body when it gave one, else the OpenAI error body."""
    if err.passthrough is not None:
        return Response(err.passthrough, status_code=err.status_code, headers={**err.headers, **headers},
                        media_type="application/json")
    return JSONResponse(err.body(), status_code=err.status_code, headers={**err.headers, **headers})
