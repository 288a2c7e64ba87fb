"""Gateway mode: ``ernie-serve --upstream URL`` in front of FastDeploy, vLLM or any OpenAI-compatible
server, with the same metrics and spans as a local model.

Streams are passed through chunk by chunk, unchanged but for the usage chunk the gateway asks for
on the client's behalf (dropped again unless the client asked too). Timings come from the chunks
(first content chunk = first token), token counts from the upstream's ``usage``. The W3C trace
context goes upstream, so one trace holds the gateway's and the engine's spans.

No torch here: a gateway only forwards HTTP.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
from fastapi.responses import Response, StreamingResponse
from opentelemetry import propagate, trace

from ..kinds import SHUTDOWN_MESSAGE, ErrorType, Operation, Status
from ..protocol import SSE_DONE, APIError, sse_lines
from ..stats import EngineStats, RequestStats
from .base import Call, Outcome

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
        fields = upstream if isinstance(upstream, dict) else {}
        err = APIError(status, message, ErrorType.UPSTREAM_HTTP,
                       openai_type=fields.get("type") or "invalid_request_error",
                       code=fields.get("code") or ErrorType.UPSTREAM_HTTP.value,
                       param=fields.get("param"))
        err.passthrough = body
        return err
    return APIError(502, f"upstream failed with {status}: {message}", ErrorType.UPSTREAM_HTTP,
                    openai_type="server_error", code=ErrorType.UPSTREAM_HTTP.value)


def _stream_error(exc: BaseException) -> APIError:
    return APIError(502, f"upstream stream broke off: {exc!r}", ErrorType.UPSTREAM_STREAM,
                    openai_type="server_error", code=ErrorType.UPSTREAM_STREAM.value)


def _take_usage(st: RequestStats, usage: Any) -> None:
    if isinstance(usage, dict):
        st.prompt_tokens = int(usage.get("prompt_tokens") or 0)
        st.output_tokens = int(usage.get("completion_tokens") or 0)


class UpstreamBackend:
    def __init__(self, upstream: str, *, model_name: str, timeout: float, max_in_flight: int,
                 api_key: str | None = None, root: str, max_model_len: int) -> None:
        self.base = upstream.rstrip("/")
        if self.base.endswith("/v1"):
            self.base = self.base[:-3]
        self.model_name = model_name
        self.timeout = timeout
        self.api_key = api_key
        self.upstream_model: str | None = None
        self._stats = EngineStats(max_num_seqs=max_in_flight, max_queue_len=0)
        self._root = root
        self._max_model_len = max_model_len
        self._connect: asyncio.Task[None] | None = None
        self._stopping = False  # set by stop(): a connection closed after it is a shutdown cancel
        self.client = httpx.AsyncClient(timeout=httpx.Timeout(timeout, connect=min(timeout, 10.0)),
                                        limits=httpx.Limits(max_connections=max_in_flight + 8))

    # -------------------------------------------------------------------- Backend
    @property
    def ready(self) -> bool:
        return True  # an upstream that is down answers each request with 502

    @property
    def load_error(self) -> str | None:
        return None

    @property
    def stats(self) -> EngineStats:
        return self._stats

    @property
    def root(self) -> str:
        return self._root

    @property
    def max_model_len(self) -> int:
        return self._max_model_len

    async def start(self) -> None:
        self._connect = asyncio.create_task(self.connect())

    async def stop(self) -> None:
        self._stopping = True
        if self._connect is not None:
            self._connect.cancel()
        await self.client.aclose()

    @staticmethod
    def _shutdown_cancel(call: Call) -> APIError:
        """The server's shutdown closed this request's upstream connection: a cancel (recorded so),
        not an upstream failure; the client reads the same message as from the local engine."""
        err = APIError(503, SHUTDOWN_MESSAGE, ErrorType.NOT_READY, openai_type="service_unavailable_error",
                       status=Status.CANCELLED)
        call.record(Outcome.SHUTDOWN, err)
        return err

    async def connect(self) -> None:
        """Learn the upstream's model id, to name it in forwarded requests; until then requests go
        out under the served name (an upstream that is down answers them with 502)."""
        delay = 0.5
        while True:
            try:
                upstream_model = await self.discover_model()
                log.info("gateway: upstream %s serves %r; exposed as %r", self.base, upstream_model, self.model_name)
                return
            except (httpx.HTTPError, KeyError, IndexError, ValueError) as exc:
                log.warning("gateway: upstream %s not answering /v1/models yet (%r)", self.base, exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)

    async def discover_model(self) -> str:
        r = await self.client.get(self.base + "/v1/models", headers=self._headers({}))
        r.raise_for_status()
        model = str(r.json()["data"][0]["id"])
        self.upstream_model = model
        return model

    def _headers(self, extra: dict[str, str]) -> dict[str, str]:
        headers = {"Content-Type": "application/json", **extra}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        return headers

    # -------------------------------------------------------------------- forwarding
    async def generate(self, call: Call) -> Response:
        """Send the request upstream; errors before the first byte become proper HTTP errors."""
        req = call.request
        call.accept(max_tokens=req.max_tokens)
        if self._stats.running >= self._stats.max_num_seqs:
            raise APIError(429, "The gateway is at its in-flight limit; retry shortly.", ErrorType.QUEUE_FULL,
                           openai_type="rate_limit_error", code="queue_full", status=Status.REJECTED,
                           headers={"Retry-After": "1"})
        body = dict(call.body)
        if self.upstream_model:
            body["model"] = self.upstream_model
        if req.stream:
            body["stream_options"] = {**(call.body.get("stream_options") or {}), "include_usage": True}
        carrier: dict[str, str] = {}
        propagate.inject(carrier, context=trace.set_span_in_context(call.rt.span))
        st = call.rt.stats
        st.scheduled = time.perf_counter()  # no local queue: the request goes out at once
        self._stats.running += 1
        released = False

        def release() -> None:
            nonlocal released
            if not released:
                released = True
                self._stats.running -= 1

        try:
            request = self.client.build_request("POST", self.base + PATHS[call.operation], json=body,
                                                headers=self._headers(carrier))
            resp = await self.client.send(request, stream=True)
        except httpx.TimeoutException as exc:
            release()
            raise APIError(504, f"upstream timed out: {exc!r}", ErrorType.UPSTREAM_TIMEOUT,
                           openai_type="server_error", code=ErrorType.UPSTREAM_TIMEOUT.value) from None
        except httpx.HTTPError as exc:
            release()
            if self._stopping:
                raise self._shutdown_cancel(call) from None
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
                   and not k.lower().startswith(("x-trace-id", "traceresponse", "server-timing"))}
        headers.update(call.trace_headers())
        # The upstream's Server-Timing entries pass through, ours follow (prefixed gateway-).
        upstream_timing = ", ".join(resp.headers.get_list("server-timing"))
        if req.stream:
            headers.update(call.timing_headers(upstream_timing))
            return StreamingResponse(self._relay(call, resp, release), status_code=200, headers=headers,
                                     media_type="text/event-stream")
        try:
            content = await resp.aread()
        except httpx.HTTPError as exc:
            if self._stopping:
                raise self._shutdown_cancel(call) from None
            err = _stream_error(exc)
            call.record(Outcome.FAILED, err)
            raise err from None
        finally:
            await resp.aclose()
            release()
        try:
            payload = json.loads(content)
            choice = payload["choices"][0]
        except (ValueError, KeyError, IndexError, TypeError):
            raise APIError(502, "upstream sent a malformed response", ErrorType.UPSTREAM_STREAM,
                           openai_type="server_error", code=ErrorType.UPSTREAM_STREAM.value) from None
        st.first_token = st.finished = time.perf_counter()
        _take_usage(st, payload.get("usage"))
        st.finish_reason = choice.get("finish_reason")
        text = (choice.get("message") or {}).get("content") if "message" in choice else choice.get("text")
        call.record(Outcome.OK, response_id=payload.get("id"), output_text=text)
        headers.update(call.timing_headers(upstream_timing))
        return Response(content, status_code=200, headers=headers, media_type="application/json")

    async def _relay(self, call: Call, resp: httpx.Response, release: Callable[[], None]) -> AsyncIterator[bytes]:
        st = call.rt.stats
        client_wants_usage = call.request.include_usage
        chunks = 0
        response_id = None
        saw_done = False

        def complete() -> bytes:
            # Recorded before the client sees [DONE], so whoever reads the metrics after the
            # response finds this request counted.
            st.finished = time.perf_counter()
            if not st.output_tokens:
                st.output_tokens = chunks
            call.record(Outcome.OK, response_id=response_id)
            return SSE_DONE

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
                    _take_usage(st, chunk["usage"])
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
                        self._stats.tokens.add(1, now)
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
            if self._stopping:
                err = self._shutdown_cancel(call)
            else:
                err = _stream_error(exc)
                call.record(Outcome.FAILED, err)
            yield b"data: " + json.dumps(err.body()).encode() + b"\n\n"
            return
        finally:
            await resp.aclose()
            release()
            if not call.rt.done:  # the client went away before the end
                call.record(Outcome.DISCONNECTED)
