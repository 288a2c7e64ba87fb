"""The fixed vocabularies that the engine, the OpenAI protocol layer and telemetry share.

Plain enums and nothing else: this module imports no OpenTelemetry (nor anything heavy), so the
engine and the protocol layer can name a finish reason or an error type without loading the
telemetry stack. ``ernie_otel.names`` re-exports these for everything that builds telemetry.
The values are metric label values and span attribute values: changing one changes the contract
with dashboards and alerts.
"""

from __future__ import annotations

from enum import Enum


class Operation(str, Enum):
    CHAT = "chat"
    TEXT_COMPLETION = "text_completion"


class Status(str, Enum):
    OK = "ok"
    ERROR = "error"
    CANCELLED = "cancelled"
    REJECTED = "rejected"


class FinishReason(str, Enum):
    STOP = "stop"
    LENGTH = "length"
    CANCELLED = "cancelled"
    ERROR = "error"


# What a client reads when the server's shutdown cancels its request (the local engine and the
# gateway alike): the one message, so clients and tests can tell it from a failure.
SHUTDOWN_MESSAGE = "The server shut down before this request finished; retry it."


class ErrorType(str, Enum):
    """The fixed set of ``error_type`` values; docs/metrics.md documents each."""

    INVALID_JSON = "invalid_json"
    INVALID_REQUEST = "invalid_request"
    CONTEXT_LENGTH_EXCEEDED = "context_length_exceeded"
    MODEL_NOT_FOUND = "model_not_found"
    AUTHENTICATION = "authentication_error"
    PAYLOAD_TOO_LARGE = "payload_too_large"
    QUEUE_FULL = "queue_full"
    NOT_READY = "not_ready"
    ENGINE_ERROR = "engine_error"
    UPSTREAM_CONNECT = "upstream_connect_error"
    UPSTREAM_TIMEOUT = "upstream_timeout"
    UPSTREAM_HTTP = "upstream_http_error"
    UPSTREAM_STREAM = "upstream_stream_error"


ERROR_TYPE_MEANING: dict[ErrorType, str] = {
    ErrorType.INVALID_JSON: "body is not valid JSON (400)",
    ErrorType.INVALID_REQUEST: "a field is missing, of the wrong type or out of range (400)",
    ErrorType.CONTEXT_LENGTH_EXCEEDED: "prompt (+ max_tokens) longer than --max-model-len (400)",
    ErrorType.MODEL_NOT_FOUND: "the request names a model this server does not serve (404)",
    ErrorType.AUTHENTICATION: "missing or wrong API key (401)",
    ErrorType.PAYLOAD_TOO_LARGE: "request body over the size limit (413)",
    ErrorType.QUEUE_FULL: "waiting queue at --max-queue-len; rejected at once (429, Retry-After)",
    ErrorType.NOT_READY: "model still loading or server shutting down (503)",
    ErrorType.ENGINE_ERROR: "the engine failed while generating (500)",
    ErrorType.UPSTREAM_CONNECT: "gateway: upstream refused or unreachable (502)",
    ErrorType.UPSTREAM_TIMEOUT: "gateway: upstream did not answer in time (504)",
    ErrorType.UPSTREAM_HTTP: "gateway: upstream answered 4xx/5xx (passed through / 502)",
    ErrorType.UPSTREAM_STREAM: "gateway: upstream stream cut or malformed mid-way (502)",
}


class TokenType(str, Enum):
    INPUT = "input"
    OUTPUT = "output"


# The switch the stack's fleet profile sets on every ernie-serve replica and TelemetrySettings
# reads: exemplars only for traces the fleet's tail sampler keeps. Here, not in names, because
# the stack may not import the telemetry stack's modules (names pulls in OpenTelemetry).
EXEMPLARS_FOLLOW_SAMPLING_ENV = "ERNIE_OTEL_EXEMPLARS_FOLLOW_SAMPLING"
