"""Gateway mode: ``ernie-serve --upstream URL`` in front of FastDeploy, vLLM or any OpenAI-compatible
server, with the same metrics and spans as a local model.

Streams are passed through chunk by chunk, unchanged but for the usage chunk the gateway asks for
on the client's behalf (dropped again unless the client asked too). Timings come from the chunks
(first content chunk = first token), token counts from the upstream's ``usage``. The W3C trace
context goes upstream, so one trace holds the gateway's and the engine's spans.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
from fastapi.responses import JSONResponse, Response, StreamingResponse
from opentelemetry import propagate, trace

from .names import ErrorType, FinishReason, Operation, Status
from .protocol import APIError, GenerationRequest, sse_lines
from .stats import EngineStats
from .telemetry.recorder import Recorder, RequestTelemetry

log = logging.getLogger(__name__)

PATHS = {Operation.CHAT: "/v1/chat/completions", Operation.TEXT_COMPLETION: "/v1/completions"}
# Hop-by-hop and length headers are the gateway's own business.
_DROP_HEADERS = {"content-length", "transfer-encoding", "connection", "content-encoding", "keep-alive"}


def _upstream_error(status: int, body: bytes) -> APIError:
    """An upstream 4xx passes through with its own body; a 5xx becomes a 502."""
    try:
        upstream = json.loads(body).get("error") or {}
        message = upstream.get("message") if isinstance(upstream, dict) else str(upstream)
    except (ValueError, AttributeError):
        upstream, message = {}, None
    message = message or body.decode(errors="replace")[:500] or f"upstream answered {status}"
    if 400 <= status < 500:
        err = APIError(status, message, ErrorType.UPSTREAM_HTTP,
                       openai_type=(upstream or {}).get("type") or "invalid_request_error",
                       code=(upstream or {}).get("code") or ErrorType.UPSTREAM_HTTP.value,
                       param=(upstream or {}).get("param"))
        err.passthrough = body  # type: ignore[attr-defined]
        return err
    return APIError(502, f"upstream failed with {status}: {message}", ErrorType.UPSTREAM_HTTP,
                    openai_type="server_error", code=ErrorType.UPSTREAM_HTTP.value)


class Gateway:
    def __init__(self, upstream: str, *, timeout: float, max_in_flight: int, api_key: str | None = None) -> None:
        self.base = upstream.rstrip("/")
        if self.base.endswith("/v1"):
            self.base = self.base[:-3]
        self.timeout = timeout
        self.api_key = api_key
        self.upstream_model: str | None = None
        self.stats = EngineStats(max_num_seqs=max_in_flight, max_queue_len=0)
        self.client = httpx.AsyncClient(timeout=httpx.Timeout(timeout, connect=min(timeout, 10.0)),
                                        limits=httpx.Limits(max_connections=max_in_flight + 8))

    async def discover_model(self) -> str:
        r = await self.client.get(self.base + "/v1/models", headers=self._headers({}))
        r.raise_for_status()
        self.upstream_model = r.json()["data"][0]["id"]
        return self.upstream_model

    def _headers(self, extra: dict[str, str]) -> dict[str, str]:
        headers = {"Content-Type": "application/json", **extra}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        return headers

    async def forward(self, operation: Operation, req: GenerationRequest, data: dict[str, Any], rt: RequestTelemetry,
                      recorder: Recorder) -> Response:
        """Send the request upstream; errors before the first byte become proper HTTP errors."""
        if self.stats.running >= self.stats.max_num_seqs:
            raise APIError(429, "The gateway is at its in-flight limit; retry shortly.", ErrorType.QUEUE_FULL,
                           openai_type="rate_limit_error", code="queue_full", status=Status.REJECTED,
                           headers={"Retry-After": "1"})
        body = dict(data)
        if self.upstream_model:
            body["model"] = self.upstream_model
        client_wants_usage = req.include_usage
        if req.stream:
            body["stream_options"] = {**(data.get("stream_options") or {}), "include_usage": True}
        carrier: dict[str, str] = {}
        propagate.inject(carrier, context=trace.set_span_in_context(rt.span))
        st = rt.stats
        st.scheduled = time.perf_counter()  # no local queue: the request goes out at once
        self.stats.running += 1
        released = False

        def release() -> None:
            nonlocal released
            if not released:
                released = True
                self.stats.running -= 1

        try:
            request = self.client.build_request("POST", self.base + PATHS[operation], json=body,
                                                headers=self._headers(carrier))
            resp = await self.client.send(request, stream=True)
        except httpx.TimeoutException as exc:
            release()
            raise APIError(504, f"upstream timed out: {exc!r}", ErrorType.UPSTREAM_TIMEOUT,
                           openai_type="server_error", code=ErrorType.UPSTREAM_TIMEOUT.value) from None
        except httpx.HTTPError as exc:
            release()
            raise APIError(502, f"upstream unreachable: {exc!r}", ErrorType.UPSTREAM_CONNECT,
                           openai_type="server_error", code=ErrorType.UPSTREAM_CONNECT.value) from None
        if resp.status_code != 200:
            try:
                content = await resp.aread()
            finally:
                await resp.aclose()
                release()
            raise _upstream_error(resp.status_code, content)
        headers = {k: v for k, v in resp.headers.items() if k.lower() not in _DROP_HEADERS
                   and not k.lower().startswith(("x-trace-id", "traceresponse"))}
        headers.update(recorder.trace_headers(rt))
        if req.stream:
            return StreamingResponse(self._relay(resp, rt, recorder, client_wants_usage, release),
                                     status_code=200, headers=headers, media_type="text/event-stream")
        try:
            content = await resp.aread()
        except httpx.HTTPError as exc:
            raise self._stream_error(rt, recorder, exc) from None
        finally:
            await resp.aclose()
            release()
        try:
            payload = json.loads(content)
            choice = payload["choices"][0]
        except (ValueError, KeyError, IndexError, TypeError):
            err = APIError(502, "upstream sent a malformed response", ErrorType.UPSTREAM_STREAM,
                           openai_type="server_error", code=ErrorType.UPSTREAM_STREAM.value)
            raise err from None
        st.first_token = st.finished = time.perf_counter()
        self._take_usage(st, payload.get("usage"))
        st.finish_reason = choice.get("finish_reason")
        text = (choice.get("message") or {}).get("content") if "message" in choice else choice.get("text")
        recorder.finish(rt, Status.OK.value, response_id=payload.get("id"), output_text=text)
        return Response(content, status_code=200, headers=headers, media_type="application/json")

    @staticmethod
    def _take_usage(st: Any, usage: Any) -> None:
        if isinstance(usage, dict):
            st.prompt_tokens = int(usage.get("prompt_tokens") or 0)
            st.output_tokens = int(usage.get("completion_tokens") or 0)

    def _stream_error(self, rt: RequestTelemetry, recorder: Recorder, exc: BaseException) -> APIError:
        err = APIError(502, f"upstream stream broke off: {exc!r}", ErrorType.UPSTREAM_STREAM,
                       openai_type="server_error", code=ErrorType.UPSTREAM_STREAM.value)
        rt.stats.finish_reason = FinishReason.ERROR.value
        recorder.finish(rt, Status.ERROR.value, error_type=ErrorType.UPSTREAM_STREAM.value, exception=err)
        return err

    async def _relay(self, resp: httpx.Response, rt: RequestTelemetry, recorder: Recorder, client_wants_usage: bool,
                     release: Any) -> AsyncIterator[bytes]:
        st = rt.stats
        chunks = 0
        response_id = None
        saw_done = False

        def complete() -> bytes:
            # Recorded before the client sees [DONE], so whoever reads the metrics after the
            # response finds this request counted.
            st.finished = time.perf_counter()
            if not st.output_tokens:
                st.output_tokens = chunks
            recorder.finish(rt, Status.OK.value, response_id=response_id)
            return b"data: [DONE]\n\n"

        try:
            async for line in sse_lines(resp.aiter_text()):
                if not line.startswith("data:"):
                    continue
                data = line[5:].strip()
                if data == "[DONE]":
                    saw_done = True
                    yield complete()
                    break
                try:
                    chunk = json.loads(data)
                except ValueError:
                    raise httpx.RemoteProtocolError(f"malformed SSE data: {data[:80]!r}") from None
                if "error" in chunk:
                    raise httpx.RemoteProtocolError(f"upstream error event: {chunk['error']}")
                response_id = response_id or chunk.get("id")
                choices = chunk.get("choices") or []
                if chunk.get("usage"):
                    self._take_usage(st, chunk["usage"])
                if not choices and not client_wants_usage:
                    continue  # the usage chunk the gateway asked for on its own account
                if choices:
                    choice = choices[0]
                    text = (choice.get("delta") or {}).get("content") if "delta" in choice else choice.get("text")
                    if text:
                        chunks += 1
                        now = time.perf_counter()
                        if st.first_token is None:
                            st.first_token = now
                        self.stats.tokens.add(1, now)
                    if choice.get("finish_reason"):
                        st.finish_reason = choice["finish_reason"]
                    if not client_wants_usage and "usage" in chunk:
                        chunk.pop("usage")
                        yield b"data: " + json.dumps(chunk, separators=(",", ":")).encode() + b"\n\n"
                        continue
                yield line.encode() + b"\n\n"
            if not saw_done:
                # Some servers (transformers serve) end the stream after the finish chunk without
                # [DONE]; only a stream that stops before any finish_reason was cut.
                if st.finish_reason is None:
                    raise httpx.RemoteProtocolError("upstream stream ended before a finish_reason")
                saw_done = True
                yield complete()
        except httpx.HTTPError as exc:
            err = self._stream_error(rt, recorder, exc)
            yield b"data: " + json.dumps(err.body()).encode() + b"\n\n"
            return
        finally:
            await resp.aclose()
            release()
            if not rt.done:  # the client went away before the end
                st.finish_reason = FinishReason.CANCELLED.value
                recorder.finish(rt, Status.CANCELLED.value)

    async def close(self) -> None:
        await self.client.aclose()


def error_response(err: APIError, headers: dict[str, str]) -> Response:
    body = getattr(err, "passthrough", None)
    if body is not None:
        return Response(body, status_code=err.status_code, headers={**err.headers, **headers},
                        media_type="application/json")
    return JSONResponse(err.body(), status_code=err.status_code, headers={**err.headers, **headers})
