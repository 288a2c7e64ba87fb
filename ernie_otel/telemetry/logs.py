"""Logs joined to traces: the per-request access log, trace ids on every log line, OTLP export.

Three parts, each usable alone:

- :class:`AccessLog` turns a finished request (the item the telemetry thread drains, see
  :mod:`.batch`) into one record on the ``ernie_otel.access`` logger: model, status / error type,
  tokens in and out, queue / TTFT / TPOT / end-to-end times, tenant, and the GenAI span's trace and
  span ids. It runs on the ``ernie-telemetry`` thread, never on the event loop, and the record's
  time is the instant the request finished, not the instant the thread got to it. Prompt and
  completion text are fields only when content capture is opted in, as on spans.
- :class:`JsonFormatter` / :class:`TextFormatter`: every line they write carries ``trace_id`` and
  ``span_id`` -- the request's for an access record, else the active span's (empty outside one).
- :class:`OtelLogHandler` hands records to an SDK ``LoggerProvider`` (built by :mod:`.setup`, the
  only place that builds providers) with the same trace context, so the OTLP log record's own
  trace_id / span_id fields link it to its trace in the log store.

:func:`install` wires them onto the logging tree; only an entry point (``ernie-serve``'s main) calls
it, since handlers on the root logger are process-wide state.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from opentelemetry import trace
from opentelemetry._logs import LoggerProvider, SeverityNumber
from opentelemetry.trace import NonRecordingSpan, SpanContext

from .. import names
from .genai_events import input_messages

if TYPE_CHECKING:
    from opentelemetry._logs import Logger

    from .request_path import Finished

# What a record carries from AccessLog to the formatters and the OTel handler (record attributes).
ACCESS_FIELDS = "ernie_access"
SPAN_CONTEXT = "ernie_span_context"

REQUEST_LOG_STDERR = "stderr"
REQUEST_LOG_OFF = "off"

_SEVERITY = ((logging.CRITICAL, SeverityNumber.FATAL), (logging.ERROR, SeverityNumber.ERROR),
             (logging.WARNING, SeverityNumber.WARN), (logging.INFO, SeverityNumber.INFO),
             (logging.DEBUG, SeverityNumber.DEBUG))
# The OTel SDK's own loggers report export failures: sending those through the failing pipeline
# would feed it one more record per failure.
_PIPELINE_LOGGERS = ("opentelemetry",)


def severity(levelno: int) -> SeverityNumber:
    for level, number in _SEVERITY:
        if levelno >= level:
            return number
    return SeverityNumber.TRACE


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000.0, 3)


def span_ids(record: logging.LogRecord) -> tuple[str, str]:
    """(trace_id, span_id) as hex of the record's request, else of the active span; ("", "") outside one."""
    ctx: SpanContext | None = getattr(record, SPAN_CONTEXT, None)
    if ctx is None:
        ctx = trace.get_current_span().get_span_context()
    if not ctx.is_valid:
        return "", ""
    return format(ctx.trace_id, "032x"), format(ctx.span_id, "016x")


class AccessLog:
    """One ``ernie_otel.access`` record per finished request (the telemetry thread calls it)."""

    def __init__(self, logger: logging.Logger, model: str, *, capture_content: bool = False) -> None:
        self.logger = logger
        self.model = model
        self.capture_content = capture_content

    def fields(self, item: Finished) -> dict[str, Any]:
        """The record's structured fields (no ids: those come from the span context)."""
        st = item.rt.stats
        out: dict[str, Any] = {
            names.LOG_REQUEST_ID: st.request_id,
            names.LOG_OPERATION: st.operation,
            names.LOG_MODEL: self.model,
            names.LOG_STATUS: item.status,
            names.LOG_STREAM: st.stream,
            names.LOG_INPUT_TOKENS: st.prompt_tokens,
            names.LOG_OUTPUT_TOKENS: st.output_tokens,
            names.LOG_E2E_MS: _ms(st.e2e_latency),
            names.LOG_TENANT: st.tenant,
        }
        # Absent rather than null: a LogsQL filter on a field then means "the request got that far".
        for key, value in ((names.LOG_ERROR_TYPE, item.error_type), (names.LOG_FINISH_REASON, st.finish_reason),
                           (names.LOG_QUEUE_MS, _ms(st.queue_time)), (names.LOG_TTFT_MS, _ms(st.ttft)),
                           (names.LOG_TPOT_MS, _ms(st.time_per_output_token))):
            if value is not None:
                out[key] = value
        if self.capture_content:
            if item.rt.input_messages is not None:
                # The key is the convention's, so the value follows its message schema (as on spans).
                out[names.LOG_INPUT_MESSAGES] = json.dumps(input_messages(item.rt.input_messages),
                                                             ensure_ascii=False, default=str)
            if item.output_text is not None:
                out[names.LOG_OUTPUT_TEXT] = item.output_text
        return out

    def __call__(self, item: Finished) -> None:
        logger = self.logger
        if not logger.isEnabledFor(logging.INFO):
            return
        fields = self.fields(item)
        st = item.rt.stats
        message = (f"{st.operation} {self.model} {item.status}"
                   f"{' ' + item.error_type if item.error_type else ''} "
                   f"in={st.prompt_tokens} out={st.output_tokens} e2e_ms={fields[names.LOG_E2E_MS]}")
        record = logger.makeRecord(logger.name, logging.INFO, __name__, 0, message, (), None,
                                   extra={ACCESS_FIELDS: fields, SPAN_CONTEXT: item.rt.span.get_span_context()})
        if st.finished is not None:  # when the request ended, not when this thread got to it
            record.created = st.to_unix_ns(st.finished) / 1e9
            record.msecs = (record.created - int(record.created)) * 1000.0
        logger.handle(record)


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, trace_id, span_id, and an access
    record's fields."""

    def format(self, record: logging.LogRecord) -> str:
        trace_id, span_id = span_ids(record)
        out: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            names.LOG_TRACE_ID: trace_id,
            names.LOG_SPAN_ID: span_id,
        }
        fields: Mapping[str, Any] | None = getattr(record, ACCESS_FIELDS, None)
        if fields:
            out.update(fields)
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, ensure_ascii=False, separators=(",", ":"), default=str)


class TextFormatter(logging.Formatter):
    """The plain line format of ernie-serve's other logs, with the active trace and span ids."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s [trace_id=%(trace_id)s span_id=%(span_id)s]: "
                         "%(message)s")

    def format(self, record: logging.LogRecord) -> str:
        record.trace_id, record.span_id = span_ids(record)
        return super().format(record)


class OtelLogHandler(logging.Handler):
    """Python logging -> an OTel ``LoggerProvider`` (our own bridge: the SDK's ``LoggingHandler``
    is deprecated, and it would take the trace context of the thread that logs, which for an access
    record is the telemetry thread's, not the request's)."""

    def __init__(self, logger_provider: LoggerProvider, level: int = logging.NOTSET) -> None:
        super().__init__(level)
        self.logger_provider = logger_provider
        self._loggers: dict[str, Logger] = {}

    def emit(self, record: logging.LogRecord) -> None:
        if record.name.startswith(_PIPELINE_LOGGERS):
            return
        try:
            logger = self._loggers.get(record.name)
            if logger is None:
                logger = self._loggers[record.name] = self.logger_provider.get_logger(record.name)
            span_context: SpanContext | None = getattr(record, SPAN_CONTEXT, None)
            # None: the SDK takes the current context (the active span of the logging thread).
            context = trace.set_span_in_context(NonRecordingSpan(span_context)) if span_context is not None else None
            fields: Mapping[str, Any] | None = getattr(record, ACCESS_FIELDS, None)
            attributes: dict[str, Any] = dict(fields) if fields else {"code.function.name": record.funcName}
            if record.exc_info and record.exc_info[1] is not None:
                attributes["exception.type"] = type(record.exc_info[1]).__name__
            logger.emit(timestamp=int(record.created * 1e9), context=context,
                        severity_number=severity(record.levelno), severity_text=record.levelname,
                        body=record.getMessage(), attributes=attributes)
        except Exception:  # a log record must never raise into the code that logged it
            self.handleError(record)


def request_log_handler(destination: str) -> logging.Handler | None:
    """The access log's local handler: ``stderr`` (default), ``off``, or a file path (appended)."""
    if destination == REQUEST_LOG_OFF:
        return None
    handler: logging.Handler = (logging.StreamHandler(sys.stderr) if destination == REQUEST_LOG_STDERR
                                else logging.FileHandler(destination, encoding="utf-8"))
    handler.setFormatter(JsonFormatter())
    return handler


def install(level: str, request_log: str, logger_provider: LoggerProvider | None) -> logging.Logger | None:
    """Set up ernie-serve's logging: plain lines with trace ids on stderr, the JSON access log where
    ``request_log`` says, and every record to ``logger_provider`` (OTLP) when there is one.

    Returns the access logger, or None when its records would go nowhere (local log off and no
    OTLP): then the telemetry thread builds no record at all.
    """
    root = logging.getLogger()
    logging.basicConfig(level=level.upper())
    for handler in root.handlers:
        handler.setFormatter(TextFormatter())
    otel = OtelLogHandler(logger_provider) if logger_provider is not None else None
    if otel is not None:
        root.addHandler(otel)
    access = logging.getLogger(names.ACCESS_LOGGER)
    # Its own handlers only: the JSON line must not come out a second time through the root's text handler.
    access.propagate = False
    access.setLevel(logging.INFO)
    for old in list(access.handlers):
        access.removeHandler(old)
    for new in (request_log_handler(request_log), otel):
        if new is not None:
            access.addHandler(new)
    return access if access.handlers else None
