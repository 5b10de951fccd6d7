"""Every error code a client, an operator or another service can see: one registry.

Codes are snake_case strings on the wire (``{"type":"error","code":...}`` on the sockets, the
``code`` of HTTP error bodies, ``WorkerRefusal.code``, ``TaskEnd.code``). Spell them through
:class:`ErrorCode` only, never as bare strings: a ``StrEnum`` member *is* its string, so models
typed ``str`` accept it and JSON carries the plain value. :data:`MEANINGS` says what each one
means; docs/protocol.md's table is generated from it (``scripts/code_docs.py``) so the two
cannot drift.
"""

from __future__ import annotations

from enum import StrEnum

__all__ = ["MEANINGS", "ErrorCode"]


class ErrorCode(StrEnum):
    # --- /ws/input: the message itself -------------------------------------------------
    INVALID_JSON = "invalid_json"
    INVALID_MESSAGE = "invalid_message"
    MISSING_TYPE = "missing_type"
    UNKNOWN_TYPE = "unknown_type"
    MISSING_TEXT = "missing_text"
    INVALID_TEXT = "invalid_text"
    EMPTY_TEXT = "empty_text"
    TEXT_TOO_LONG = "text_too_long"
    INVALID_UTF8 = "invalid_utf8"
    CHUNK_ID_MISMATCH = "chunk_id_mismatch"
    MISSING_CHUNK_DATA = "missing_chunk_data"
    UNEXPECTED_BINARY = "unexpected_binary"
    AUDIO_NOT_SUPPORTED = "audio_not_supported"
    INVALID_TASK_ID = "invalid_task_id"
    # --- tasks -------------------------------------------------------------------------
    TASK_NOT_FOUND = "task_not_found"
    TASK_NOT_RUNNING = "task_not_running"
    TASK_ENDED = "task_ended"
    TASK_NOT_FINISHED = "task_not_finished"
    TASK_FAILED = "task_failed"
    # --- the edge ----------------------------------------------------------------------
    UNAUTHORIZED = "unauthorized"
    ORIGIN_NOT_ALLOWED = "origin_not_allowed"
    TOO_MANY_CONNECTIONS = "too_many_connections"
    RATE_LIMITED = "rate_limited"
    FORBIDDEN = "forbidden"
    TICKETS_DISABLED = "tickets_disabled"
    MESSAGE_TOO_BIG = "message_too_big"
    GOING_AWAY = "going_away"
    # --- the HTTP API (OpenAI-compatible) and the gateway's HTTP routes -----------------
    INVALID_REQUEST = "invalid_request"
    INVALID_VALUE = "invalid_value"
    MISSING_REQUIRED_PARAMETER = "missing_required_parameter"
    UNSUPPORTED_RESPONSE_FORMAT = "unsupported_response_format"
    UNSUPPORTED_SPEED = "unsupported_speed"
    MODEL_NOT_FOUND = "model_not_found"
    BODY_TOO_LARGE = "body_too_large"
    INVALID_PATH = "invalid_path"
    MISSING_API_KEY = "missing_api_key"
    INVALID_API_KEY = "invalid_api_key"
    BACKEND_UNAVAILABLE = "backend_unavailable"
    BACKEND_TIMEOUT = "backend_timeout"
    # --- workers and engines -----------------------------------------------------------
    TTS_UNAVAILABLE = "tts_unavailable"
    BUSY = "busy"
    NOT_READY = "not_ready"
    UNKNOWN_VOICE = "unknown_voice"
    BAD_REQUEST = "bad_request"
    TTS_ERROR = "tts_error"
    ENGINE_ERROR = "engine_error"
    ENGINE_UNAVAILABLE = "engine_unavailable"
    ENGINE_TIMEOUT = "engine_timeout"
    WORKER_STOPPED = "worker_stopped"
    # --- /ws/output and the frame path -------------------------------------------------
    INVALID_FROM_CHUNK = "invalid_from_chunk"
    WORKER_LOST = "worker_lost"
    TIMEOUT = "timeout"
    FRAME_LOST = "frame_lost"
    TASK_EXPIRED = "task_expired"
    INGEST_ERROR = "ingest_error"
    INTERNAL_ERROR = "internal_error"
    # The VOICEVOX-compatible API (docs/voicevox.md)
    NO_TIMING = "no_timing"
    UNSUPPORTED_PARAMETER = "unsupported_parameter"
    # --- clients (never sent by a server) ----------------------------------------------
    CONNECTION_LOST = "connection_lost"


MEANINGS: dict[ErrorCode, str] = {
    ErrorCode.INVALID_JSON: "the text message is not JSON, or JSON this server will not parse "
    "(nested too deep, an integer over 4300 digits, trailing data)",
    ErrorCode.INVALID_MESSAGE: "JSON but not an object, a field of the wrong type (e.g. "
    "`chunk_id` not a number), or a lone surrogate outside `text`",
    ErrorCode.MISSING_TYPE: "no `type` (and not the legacy `upload_complete`)",
    ErrorCode.UNKNOWN_TYPE: "`type` is not one this server takes",
    ErrorCode.MISSING_TEXT: "`speak` (or `append`) without `text`",
    ErrorCode.INVALID_TEXT: "`text` not a string, or holding NUL, a lone surrogate or another "
    "control character (tab and newline aside)",
    ErrorCode.EMPTY_TEXT: "the text is empty or blank, or `upload_complete` came with no chunk",
    ErrorCode.TEXT_TOO_LONG: "more characters than the limit (`max_text_chars`; for a stream, "
    "`max_stream_chars` in all or one piece over `chars_per_minute`): the text or piece is "
    "dropped",
    ErrorCode.INVALID_UTF8: "the joined legacy upload is not UTF-8; it is discarded",
    ErrorCode.CHUNK_ID_MISMATCH: "a legacy upload chunk out of order; the upload is discarded",
    ErrorCode.MISSING_CHUNK_DATA: "chunk metadata followed by a text message instead of its "
    "binary message",
    ErrorCode.UNEXPECTED_BINARY: "a binary message without chunk metadata before it",
    ErrorCode.AUDIO_NOT_SUPPORTED: '`"type":"audio"`: no speech recogniser is configured',
    ErrorCode.INVALID_TASK_ID: "a task id that is not a lower-case canonical UUID",
    ErrorCode.TASK_NOT_FOUND: "no such task for this tenant: unknown, or another tenant's (the "
    "two are indistinguishable); for `append`/`end`, a task this connection did not open as a "
    "stream",
    ErrorCode.TASK_NOT_RUNNING: "`cancel` of a task no worker is running (finished, or never "
    "started)",
    ErrorCode.TASK_ENDED: "`append` or `end` to a streaming task that has already ended",
    ErrorCode.TASK_NOT_FINISHED: "the task's whole audio was asked for while it is still spoken",
    ErrorCode.TASK_FAILED: "the task's audio was asked for but the task failed",
    ErrorCode.UNAUTHORIZED: "no credential, or a wrong or expired one",
    ErrorCode.ORIGIN_NOT_ALLOWED: "the `Origin` is not in `auth.allowed_origins`",
    ErrorCode.TOO_MANY_CONNECTIONS: "over `limits.max_connections`",
    ErrorCode.RATE_LIMITED: "over a per-tenant limit; `retry_after_ms` says when to try again",
    ErrorCode.FORBIDDEN: "monitoring asked from a client that is not loopback while no "
    "`auth.admin_key` is set",
    ErrorCode.TICKETS_DISABLED: "a ticket asked for while no tenant is configured (connect "
    "without a credential)",
    ErrorCode.MESSAGE_TOO_BIG: "a WebSocket message over `max_message_bytes` (closed with 1009)",
    ErrorCode.GOING_AWAY: "the gateway is shutting down",
    ErrorCode.INVALID_REQUEST: "the HTTP body is not a JSON object",
    ErrorCode.INVALID_VALUE: "a field of the wrong type or out of range (`param` names it)",
    ErrorCode.MISSING_REQUIRED_PARAMETER: "`model`, `input` or `voice` missing (`param` names it)",
    ErrorCode.UNSUPPORTED_RESPONSE_FORMAT: "a `response_format` this server does not encode",
    ErrorCode.UNSUPPORTED_SPEED: "a `speed` other than 1.0 (no time-stretching is done)",
    ErrorCode.MODEL_NOT_FOUND: "`GET /v1/models/{model}` of a name not listed",
    ErrorCode.BODY_TOO_LARGE: "an HTTP body over the gateway's `max_message_bytes` or the "
    "handler's own bound",
    ErrorCode.INVALID_PATH: "a path with `.` or `..` segments",
    ErrorCode.MISSING_API_KEY: "API keys are on and the HTTP request has none",
    ErrorCode.INVALID_API_KEY: "a wrong or expired API key on an HTTP request",
    ErrorCode.BACKEND_UNAVAILABLE: "the gateway cannot reach any back end of the route",
    ErrorCode.BACKEND_TIMEOUT: "a back end did not answer an HTTP request in time",
    ErrorCode.TTS_UNAVAILABLE: "every worker refused (busy, not ready), timed out or was "
    "unreachable",
    ErrorCode.BUSY: "a worker's queue is full (or the tenant's share of it)",
    ErrorCode.NOT_READY: "a worker is still loading, or cannot reach the output side",
    ErrorCode.UNKNOWN_VOICE: "no worker has that voice",
    ErrorCode.BAD_REQUEST: "a worker refused the task itself (its message says why)",
    ErrorCode.TTS_ERROR: "synthesis failed",
    ErrorCode.ENGINE_ERROR: "the engine raised while synthesising",
    ErrorCode.ENGINE_UNAVAILABLE: "a remote engine could not be reached",
    ErrorCode.ENGINE_TIMEOUT: "a remote engine did not answer in time",
    ErrorCode.WORKER_STOPPED: "the worker shut down before the task ended",
    ErrorCode.INVALID_FROM_CHUNK: "`from_chunk` is not a whole number >= 0",
    ErrorCode.WORKER_LOST: "the worker's connection dropped before the task ended",
    ErrorCode.TIMEOUT: "the worker sent nothing for `task_timeout_s` while streaming, or "
    "stopped answering pings",
    ErrorCode.FRAME_LOST: "the worker's frames skipped or repeated a chunk id, or the chunk "
    "asked for is no longer kept (Redis bus: `max_frames_per_task`)",
    ErrorCode.TASK_EXPIRED: "the task's stream expired (`task_ttl_s`) while a subscriber "
    "waited on it (Redis bus)",
    ErrorCode.INGEST_ERROR: "a worker sent something that does not fit the frame path",
    ErrorCode.INTERNAL_ERROR: "a bug: the log has the details",
    ErrorCode.NO_TIMING: "the voice's engine does not say when each sound is spoken, so it "
    "has no mora timing for VOICEVOX's audio_query (the sine and remote voices)",
    ErrorCode.UNSUPPORTED_PARAMETER: "a VOICEVOX AudioQuery asks for what the voices cannot "
    "do (speedScale, pitchScale, intonationScale, pause lengths other than the defaults)",
    ErrorCode.CONNECTION_LOST: "(clients only: the framework plugins) the gateway could not be "
    "reached, or the connection dropped before the task ended",
}
