"""OpenAI request validation and error bodies.

Validation is explicit rather than a pydantic model so that every rejection names the offending
``param`` the way the OpenAI API does, and no bad input ever reaches the engine.
"""

from __future__ import annotations

import json
import math
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from .kinds import ErrorType, Status

ROLES = ("system", "developer", "user", "assistant", "tool")
# ERNIE's template knows system/user/assistant; developer speaks as system, tool as user.
_TEMPLATE_ROLE = {"developer": "system", "tool": "user"}
SEED_MIN, SEED_MAX = -(2**63), 2**64 - 1


class APIError(Exception):
    """An OpenAI-format error: ``{"error": {"message", "type", "param", "code"}}``."""

    def __init__(
        self,
        status_code: int,
        message: str,
        error_type: ErrorType,
        *,
        param: str | None = None,
        openai_type: str = "invalid_request_error",
        code: str | None = None,
        status: Status = Status.ERROR,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.message = message
        self.error_type = error_type
        self.param = param
        self.openai_type = openai_type
        self.code = code if code is not None else error_type.value
        self.status = status
        self.headers = headers or {}
        # An upstream's own error body, sent to the client unchanged (gateway mode).
        self.passthrough: bytes | None = None

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.openai_type, "param": self.param, "code": self.code}}


def invalid(message: str, param: str | None = None) -> APIError:
    return APIError(400, message, ErrorType.INVALID_REQUEST, param=param)


# Per-request figures in the response body and the final stream chunk (opt-in: --response-metrics
# plus this request field), under the field names of vLLM's per-request metrics.
RETURN_METRICS_FIELD = "return_metrics"
RESPONSE_METRICS_FIELD = "metrics"


@dataclass
class GenerationRequest:
    """A validated chat or completion request."""

    model: str | None
    stream: bool = False
    include_usage: bool = False
    max_tokens: int | None = None
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    ignore_eos: bool = False
    return_metrics: bool = False  # per-request figures in the response (with --response-metrics)
    messages: list[dict[str, str]] | None = None
    prompt: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def _not_json(constant: str) -> Any:
    # Python's json accepts NaN and Infinity; JSON does not, and an upstream given them would fail.
    raise ValueError(f"{constant} is not a JSON value")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):  # 1e999 parses to inf
        raise ValueError(f"the number {text[:40]} is out of range")
    return value


def _bad_json(reason: str) -> APIError:
    return APIError(400, f"We could not parse the JSON body of your request: {reason}", ErrorType.INVALID_JSON,
                    code="invalid_json")


# The request bodies as JSON Schema, for the app's OpenAPI document (clients, and the schema-driven
# fuzz tests). They describe what is accepted; the parsers below are what enforces it.
_COMMON_PROPERTIES: dict[str, Any] = {
    "model": {"type": "string"},
    "stream": {"type": ["boolean", "null"]},
    "stream_options": {"type": ["object", "null"], "properties": {"include_usage": {"type": "boolean"}}},
    "max_tokens": {"type": ["integer", "null"], "minimum": 1},
    "temperature": {"type": ["number", "null"], "minimum": 0, "maximum": 2},
    "top_p": {"type": ["number", "null"], "exclusiveMinimum": 0, "maximum": 1},
    "seed": {"type": ["integer", "null"], "minimum": SEED_MIN, "maximum": SEED_MAX},
    "n": {"type": ["integer", "null"], "enum": [1, None]},
    "stop": {"anyOf": [{"type": "string", "minLength": 1},
                       {"type": "array", "maxItems": 4, "items": {"type": "string", "minLength": 1}},
                       {"type": "null"}]},
    "ignore_eos": {"type": "boolean"},
}
_TEXT_PART = {"type": "object", "required": ["type", "text"],
              "properties": {"type": {"enum": ["text"]}, "text": {"type": "string"}}}
CHAT_REQUEST_SCHEMA: dict[str, Any] = {
    "type": "object", "required": ["messages"],
    "properties": {**_COMMON_PROPERTIES, "max_completion_tokens": {"type": ["integer", "null"], "minimum": 1},
                   "messages": {"type": "array", "minItems": 1, "items": {
                       "type": "object", "required": ["role"], "properties": {
                           "role": {"enum": list(ROLES)},
                           "content": {"anyOf": [{"type": "string"}, {"type": "array", "items": _TEXT_PART},
                                                 {"type": "null"}]}}}}},
}
COMPLETION_REQUEST_SCHEMA: dict[str, Any] = {
    "type": "object", "required": ["prompt"],
    "properties": {**_COMMON_PROPERTIES, "prompt": {"anyOf": [
        {"type": "string"}, {"type": "array", "minItems": 1, "maxItems": 1, "items": {"type": "string"}}]}},
}


def parse_json(body: bytes) -> dict[str, Any]:
    """The request body as a JSON object, or a 400: never an exception the server did not expect.

    Besides syntax errors this refuses what Python's parser lets through or fails on differently:
    nesting too deep for its recursion (RecursionError), integers past its digit limit, NaN and
    Infinity or numbers that overflow to them, and lone surrogate escapes (``"\\ud800"``), which
    decode into a str that no tokenizer, upstream request or response body can encode as UTF-8.
    """
    try:
        data = json.loads(body, parse_constant=_not_json, parse_float=_finite_float)
        json.dumps(data, ensure_ascii=False).encode()  # raises on a lone surrogate anywhere in the body
    except RecursionError:
        raise _bad_json("the JSON is nested too deeply.") from None
    except UnicodeEncodeError:
        raise _bad_json("a string holds a lone UTF-16 surrogate, which is not valid Unicode text.") from None
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError, int digit limit, NaN/Infinity
        raise _bad_json(str(exc)) from None
    if not isinstance(data, dict):
        raise invalid("The request body must be a JSON object.")
    return data


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _common(data: dict[str, Any], req: GenerationRequest, max_tokens_keys: tuple[str, ...]) -> None:
    model = data.get("model")
    if model is not None and not isinstance(model, str):
        raise invalid("'model' must be a string.", "model")
    req.model = model

    stream = data.get("stream", False)
    if stream is None:
        stream = False
    if not isinstance(stream, bool):
        raise invalid("'stream' must be a boolean.", "stream")
    req.stream = stream
    options = data.get("stream_options")
    if options is not None:
        if not isinstance(options, dict):
            raise invalid("'stream_options' must be an object.", "stream_options")
        if not stream:
            raise invalid("'stream_options' is only allowed when 'stream' is true.", "stream_options")
        include = options.get("include_usage", False)
        if not isinstance(include, bool):
            raise invalid("'stream_options.include_usage' must be a boolean.", "stream_options.include_usage")
        req.include_usage = include

    for key in max_tokens_keys:
        value = data.get(key)
        if value is None:
            continue
        if not _is_int(value):
            raise invalid(f"'{key}' must be an integer.", key)
        if value < 1:
            raise invalid(f"'{key}' must be at least 1, got {value}.", key)
        req.max_tokens = value

    temperature = data.get("temperature")
    if temperature is not None:
        if not _is_number(temperature):
            raise invalid("'temperature' must be a number.", "temperature")
        if not 0 <= temperature <= 2:
            raise invalid(f"'temperature' must be between 0 and 2, got {temperature}.", "temperature")
        req.temperature = float(temperature)
    top_p = data.get("top_p")
    if top_p is not None:
        if not _is_number(top_p):
            raise invalid("'top_p' must be a number.", "top_p")
        if not 0 < top_p <= 1:
            raise invalid(f"'top_p' must be greater than 0 and at most 1, got {top_p}.", "top_p")
        req.top_p = float(top_p)
    seed = data.get("seed")
    if seed is not None:
        if not _is_int(seed):
            raise invalid("'seed' must be an integer.", "seed")
        if not SEED_MIN <= seed <= SEED_MAX:  # what a 64-bit generator seed holds
            raise invalid(f"'seed' must be between {SEED_MIN} and {SEED_MAX}.", "seed")
        req.seed = seed
    n = data.get("n")
    if n is not None and (not _is_int(n) or n != 1):
        raise invalid("Only 'n': 1 is supported.", "n")
    stop = data.get("stop")
    if stop is not None:
        if isinstance(stop, str):
            stop = [stop]
        if (not isinstance(stop, list) or len(stop) > 4
                or any(not isinstance(s, str) or not s for s in stop)):
            raise invalid("'stop' must be a non-empty string or a list of up to 4 non-empty strings.", "stop")
        req.stop = tuple(stop)
    ignore_eos = data.get("ignore_eos", False)
    if not isinstance(ignore_eos, bool):
        raise invalid("'ignore_eos' must be a boolean.", "ignore_eos")
    req.ignore_eos = ignore_eos
    return_metrics = data.get(RETURN_METRICS_FIELD, False)
    if not isinstance(return_metrics, bool):
        raise invalid(f"'{RETURN_METRICS_FIELD}' must be a boolean.", RETURN_METRICS_FIELD)
    req.return_metrics = return_metrics


def _content_text(content: Any, param: str) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for i, part in enumerate(content):
            if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                raise invalid("Only text content parts ({'type': 'text', 'text': ...}) are supported.",
                              f"{param}[{i}]")
            parts.append(part["text"])
        return "".join(parts)
    raise invalid("'content' must be a string or a list of text parts.", param)


def parse_chat(data: dict[str, Any]) -> GenerationRequest:
    req = GenerationRequest(model=None)
    _common(data, req, ("max_tokens", "max_completion_tokens"))
    if "messages" not in data:
        raise invalid("Missing required parameter: 'messages'.", "messages")
    messages = data["messages"]
    if not isinstance(messages, list):
        raise invalid("'messages' must be an array of message objects.", "messages")
    if not messages:
        raise invalid("'messages' must contain at least one message.", "messages")
    parsed: list[dict[str, str]] = []
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            raise invalid("Each message must be an object.", f"messages[{i}]")
        role = message.get("role")
        if not isinstance(role, str) or role not in ROLES:
            raise invalid(f"Invalid value for 'role': {role!r}. Supported: {', '.join(ROLES)}.", f"messages[{i}].role")
        content = message.get("content")
        if content is None and role != "assistant":
            raise invalid("Missing required parameter: 'content'.", f"messages[{i}].content")
        text = "" if content is None else _content_text(content, f"messages[{i}].content")
        parsed.append({"role": _TEMPLATE_ROLE.get(role, role), "content": text})
    req.messages = parsed
    return req


def parse_completion(data: dict[str, Any]) -> GenerationRequest:
    req = GenerationRequest(model=None)
    _common(data, req, ("max_tokens",))
    if "prompt" not in data:
        raise invalid("Missing required parameter: 'prompt'.", "prompt")
    prompt = data["prompt"]
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        prompt = prompt[0]
    if not isinstance(prompt, str):
        raise invalid("'prompt' must be a string (batched prompts are not supported).", "prompt")
    req.prompt = prompt
    return req


# Valid raw in JSON, but line breaks to str.splitlines-based stream readers (httpx's aiter_lines,
# for one) and to JavaScript before ES2019: escaped, the data line stays one line for every client.
_SSE_ESCAPES = str.maketrans({"\u2028": "\\u2028", "\u2029": "\\u2029", "\x85": "\\u0085"})


def sse_event(obj: dict[str, Any]) -> bytes:
    """One server-sent event carrying ``obj`` as compact JSON on a single ``data:`` line."""
    text = json.dumps(obj, ensure_ascii=False, separators=(",", ":"))
    if not text.isascii():
        text = text.translate(_SSE_ESCAPES)
    return b"data: " + text.encode() + b"\n\n"


SSE_DONE = b"data: [DONE]\n\n"


async def sse_lines(chunks: AsyncIterator[str]) -> AsyncIterator[str]:
    """The lines of a server-sent event stream: ends at CRLF, LF or CR, as the SSE spec says.

    Not ``httpx.Response.aiter_lines``: that splits like ``str.splitlines``, also at U+2028,
    U+2029, U+0085 and other separators that JSON leaves unescaped inside strings, so a token
    holding one of them broke a ``data:`` line in two and its JSON no longer parsed.
    """
    buf = ""
    async for text in chunks:
        buf += text
        if "\r" in buf:
            if buf.endswith("\r"):  # maybe the first half of a CRLF: wait for the next chunk
                continue
            buf = buf.replace("\r\n", "\n").replace("\r", "\n")
        *lines, buf = buf.split("\n")
        for line in lines:
            yield line
    if buf:
        yield buf.rstrip("\r")
