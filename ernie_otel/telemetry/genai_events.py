"""The GenAI event of the latest conventions: ``gen_ai.client.inference.operation.details``.

The GenAI conventions deprecated their per-message events (``gen_ai.user.message``,
``gen_ai.choice``, ...) for one event per inference operation, an OTel log record with an event name
and no body whose attributes are the operation's details: operation, provider, models, request
parameters, response id, finish reasons, token usage, ``error.type`` -- and, only with the content
opt-in, the input and output messages in structured form (the convention requires structure on
events; a span attribute cannot nest, so the GenAI span holds the same messages as JSON strings).

:class:`InferenceDetails` writes it for a finished request. It runs on the ``ernie-telemetry``
thread (:mod:`.batch`), never on the event loop; the record carries the GenAI span's context (so its
trace and span ids link it to the trace) and the instant the request finished. The recorder builds
one only when the latest GenAI names are on (``OTEL_SEMCONV_STABILITY_OPT_IN``) and log records are
exported (a ``LoggerProvider`` exists): in the default mode nothing changes.

:func:`input_messages` / :func:`output_messages` turn what the request path kept (the OpenAI
``messages`` list, or a completion's prompt string) into the convention's message schema; the span
writer uses them too, so a span and an event never disagree on the shape of the content.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from opentelemetry import trace
from opentelemetry._logs import LoggerProvider, SeverityNumber

from .. import names

if TYPE_CHECKING:
    from .instruments import AttributeSets
    from .request_path import Finished

_TEXT = "text"
_USER = "user"
_ASSISTANT = "assistant"


def _text_part(text: str) -> dict[str, Any]:
    return {"type": _TEXT, "content": text}


def _parts(content: Any) -> list[dict[str, Any]]:
    """One message's content as parts: a string is one text part, OpenAI text parts
    (``{"type": "text", "text": ...}``, the only kind the protocol accepts) keep their order."""
    if content is None:
        return []
    if isinstance(content, str):
        return [_text_part(content)]
    if isinstance(content, list):
        out: list[dict[str, Any]] = []
        for part in content:
            if isinstance(part, Mapping) and part.get("type") == _TEXT:
                out.append(_text_part(str(part.get("text", ""))))
            elif isinstance(part, Mapping):
                # Not reachable through our protocol's validation; kept generic rather than dropped.
                out.append({key: value for key, value in part.items()})
            else:
                out.append(_text_part(str(part)))
        return out
    return [_text_part(str(content))]


def input_messages(kept: Any) -> list[dict[str, Any]]:
    """The request's input in the convention's schema: ``[{"role", "parts": [...]}]``, in the order
    sent (a completion's prompt is one user message)."""
    if isinstance(kept, list) and all(isinstance(m, Mapping) for m in kept):
        return [{"role": str(m.get("role", _USER)), "parts": _parts(m.get("content"))} for m in kept]
    return [{"role": _USER, "parts": _parts(kept)}]


def output_messages(text: str, finish_reason: str | None) -> list[dict[str, Any]]:
    """The one choice this server generates, with the reason it ended (``error`` if none)."""
    return [{"role": _ASSISTANT, "parts": [_text_part(text)],
             "finish_reason": finish_reason or names.GENAI_EVENT_NO_FINISH_REASON}]


def response_attributes(model: str, item: Finished) -> dict[str, Any]:
    """What the GenAI span and the event both carry about a finished request: the response model,
    token usage, the request parameters it set, the response id and the finish reason."""
    st = item.rt.stats
    out: dict[str, Any] = {
        names.GEN_AI_RESPONSE_MODEL: model,
        names.GEN_AI_USAGE_INPUT_TOKENS: st.prompt_tokens,
        names.GEN_AI_USAGE_OUTPUT_TOKENS: st.output_tokens,
    }
    if item.rt.params_set:
        out[names.GEN_AI_REQUEST_STREAM] = st.stream
        for key, value in ((names.GEN_AI_REQUEST_MAX_TOKENS, st.max_tokens),
                           (names.GEN_AI_REQUEST_TEMPERATURE, st.temperature),
                           (names.GEN_AI_REQUEST_TOP_P, st.top_p), (names.GEN_AI_REQUEST_SEED, st.seed)):
            if value is not None:
                out[key] = value
    if item.response_id:
        out[names.GEN_AI_RESPONSE_ID] = item.response_id
    if st.finish_reason:
        out[names.GEN_AI_RESPONSE_FINISH_REASONS] = [st.finish_reason]
    return out


class InferenceDetails:
    """One ``gen_ai.client.inference.operation.details`` record per finished request."""

    def __init__(self, logger_provider: LoggerProvider, attrs: AttributeSets) -> None:
        self.logger = logger_provider.get_logger(names.TRACER_NAME)
        self.attrs = attrs

    def attributes(self, item: Finished) -> dict[str, Any]:
        """The event's attributes; content only if the request path kept it (the opt-in)."""
        rt = item.rt
        st = rt.stats
        out: dict[str, Any] = {**self.attrs.span_base[st.operation], **response_attributes(self.attrs.model, item)}
        if item.error_type is not None:
            out[names.ATTR_ERROR_TYPE] = item.error_type
        # Content was kept only if capture was on when the request ran (set_request_params/finish).
        if rt.input_messages is not None:
            out[names.GEN_AI_INPUT_MESSAGES] = input_messages(rt.input_messages)
        if item.output_text is not None:
            out[names.GEN_AI_OUTPUT_MESSAGES] = output_messages(item.output_text, st.finish_reason)
        return out

    def __call__(self, item: Finished) -> None:
        st = item.rt.stats
        assert st.finished is not None  # finish() set it
        self.logger.emit(
            # When the request ended, not when this thread got to it (as the access record).
            timestamp=st.to_unix_ns(st.finished),
            # The GenAI span's context: the record's own trace_id / span_id fields, sampled or not.
            context=trace.set_span_in_context(item.rt.span),
            severity_number=SeverityNumber.INFO,
            event_name=names.GENAI_EVENT_OPERATION_DETAILS,
            attributes=self.attributes(item),
        )
