"""The OpenAI speech API's wire shapes, without I/O: the request, its checks, the error body
and the server-sent events.

A request is checked in the order OpenAI's own API reports problems (JSON, then each field);
every refusal is an :class:`ApiError` that renders as OpenAI's error body::

    {"error": {"message": "...", "type": "invalid_request_error", "param": "voice", "code": "..."}}

so the official client raises ``BadRequestError`` / ``AuthenticationError`` /
``RateLimitError`` / ``InternalServerError`` with our message.
"""

from __future__ import annotations

import base64
import json
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, ValidationError
from starlette.responses import JSONResponse

from aivtuber_common.codes import ErrorCode
from aivtuber_common.config import OpenAISettings
from aivtuber_common.refusal import OpenAIErrorType, Refusal

from .audio_formats import SUPPORTED
from .textcheck import BAD_TEXT, BAD_TEXT_MESSAGE, unencodable_field

__all__ = [
    "ApiError",
    "SpeechRequest",
    "error_for_code",
    "parse_speech_request",
    "resolve_voice",
    "sse_delta",
    "sse_done",
    "sse_error",
]


# Our error codes (from the worker, the output handler, the limits) -> HTTP status and type.
_CODE_STATUS: dict[str, tuple[int, OpenAIErrorType]] = {
    ErrorCode.UNKNOWN_VOICE: (400, "invalid_request_error"),
    ErrorCode.BAD_REQUEST: (400, "invalid_request_error"),
    ErrorCode.EMPTY_TEXT: (400, "invalid_request_error"),
    ErrorCode.TEXT_TOO_LONG: (400, "invalid_request_error"),
    ErrorCode.UNAUTHORIZED: (401, "authentication_error"),
    ErrorCode.RATE_LIMITED: (429, "rate_limit_error"),
    ErrorCode.TTS_UNAVAILABLE: (503, "server_error"),
    ErrorCode.ENGINE_UNAVAILABLE: (503, "server_error"),
    ErrorCode.WORKER_LOST: (503, "server_error"),
    ErrorCode.WORKER_STOPPED: (503, "server_error"),
    ErrorCode.ENGINE_TIMEOUT: (504, "server_error"),
    ErrorCode.TIMEOUT: (504, "server_error"),
}


class ApiError(Refusal):
    """A refusal in OpenAI's shape, naming the request's field at fault (``param``);
    ``code`` is ours (snake_case), as on /ws/input."""

    def __init__(
        self,
        status: int,
        message: str,
        code: str,
        param: str | None = None,
        type_: OpenAIErrorType = "invalid_request_error",
    ) -> None:
        super().__init__(status, code, message, openai_type=type_)
        self.param = param

    def body(self) -> dict[str, Any]:
        return self.openai_body(self.param)

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status, headers=self.headers())


def error_for_code(code: str, message: str, *, refused_by_worker: bool = False) -> ApiError:
    """The HTTP refusal for one of our error codes; unknown ones: 400 when a worker refused the
    task itself (it would refuse it anywhere), else 500."""
    status, type_ = _CODE_STATUS.get(
        code, (400, "invalid_request_error") if refused_by_worker else (500, "server_error")
    )
    param = (
        "voice" if code == ErrorCode.UNKNOWN_VOICE else "input" if code.endswith("_text") else None
    )
    return ApiError(status, message, code, param, type_)


class SpeechRequest(BaseModel):
    """``POST /v1/audio/speech``'s body, as the official client sends it."""

    # Extra keys (a newer client's fields) are ignored, as OpenAI-compatible servers do.
    model_config = ConfigDict(extra="ignore", frozen=True)

    model: str
    input: str
    voice: str | dict[str, Any]
    response_format: str = "mp3"  # OpenAI's default
    speed: float = 1.0
    stream_format: Literal["audio", "sse"] = "audio"
    # A style prompt for gpt-4o-mini-tts; OpenAI's tts-1 ignores it too (see docs/openai.md).
    instructions: str | None = None

    @property
    def voice_name(self) -> str:
        return self.voice if isinstance(self.voice, str) else str(self.voice.get("id", ""))


def parse_speech_request(body: bytes, max_chars: int) -> SpeechRequest:
    """Validate a request body; raises ApiError (400) naming the field at fault."""
    try:
        data = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ApiError(
            400, f"The request body is not valid JSON: {exc}.", ErrorCode.INVALID_JSON
        ) from exc
    except (RecursionError, ValueError) as exc:  # nested too deeply; an int of 4300+ digits
        raise ApiError(
            400, "The request body cannot be read as JSON.", ErrorCode.INVALID_JSON
        ) from exc
    if not isinstance(data, dict):
        raise ApiError(400, "The request body must be a JSON object.", ErrorCode.INVALID_REQUEST)
    if (field := unencodable_field(data)) is not None:
        # As on /ws/input: a lone surrogate can be neither sent on to a worker nor echoed.
        if field == "input":
            raise ApiError(400, BAD_TEXT_MESSAGE, ErrorCode.INVALID_TEXT, "input")
        raise ApiError(400, f"'{field}' holds a lone surrogate.", ErrorCode.INVALID_VALUE, field)
    try:
        request = SpeechRequest.model_validate(data)
    except ValidationError as exc:
        error = exc.errors(include_url=False)[0]
        field = str(error["loc"][0]) if error["loc"] else None
        if error["type"] == "missing":
            raise ApiError(
                400,
                f"'{field}' is a required property.",
                ErrorCode.MISSING_REQUIRED_PARAMETER,
                field,
            ) from exc
        raise ApiError(
            400, f"Invalid '{field}': {error['msg']}.", ErrorCode.INVALID_VALUE, field
        ) from exc
    _check(request, max_chars)
    return request


def _check(request: SpeechRequest, max_chars: int) -> None:
    if BAD_TEXT.search(request.input):
        raise ApiError(400, BAD_TEXT_MESSAGE, ErrorCode.INVALID_TEXT, "input")
    if not request.input.strip():
        raise ApiError(
            400, "'input' is empty: there is nothing to speak.", ErrorCode.EMPTY_TEXT, "input"
        )
    if len(request.input) > max_chars:
        raise ApiError(
            400,
            f"'input' is {len(request.input)} characters long; the limit is {max_chars}.",
            ErrorCode.TEXT_TOO_LONG,
            "input",
        )
    if not request.voice_name or BAD_TEXT.search(request.voice_name):
        raise ApiError(400, "'voice' must name a voice.", ErrorCode.INVALID_VALUE, "voice")
    if request.response_format not in SUPPORTED:
        raise ApiError(
            400,
            f"Invalid 'response_format': {request.response_format!r}; "
            f"use one of {', '.join(SUPPORTED)}.",
            ErrorCode.INVALID_VALUE,
            "response_format",
        )
    if not 0.25 <= request.speed <= 4.0:
        raise ApiError(
            400, "'speed' must be between 0.25 and 4.0.", ErrorCode.INVALID_VALUE, "speed"
        )
    if request.speed != 1.0:
        # Honest refusal: the voices speak at their own pace; no time-stretching here.
        raise ApiError(
            400,
            f"'speed' {request.speed:g} is not supported: the voices speak at their own pace. "
            "Send 1.0 or leave it out.",
            ErrorCode.UNSUPPORTED_SPEED,
            "speed",
        )


def resolve_voice(name: str, settings: OpenAISettings) -> str | None:
    """Our voice id for a requested name (None: the worker's default voice)."""
    if name in settings.voice_aliases:
        return settings.voice_aliases[name]
    return name


# --- server-sent events (stream_format "sse") -------------------------------------------------


def _event(data: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(data, separators=(",", ":")).encode() + b"\n\n"


def sse_delta(audio: bytes) -> bytes:
    return _event({"type": "speech.audio.delta", "audio": base64.b64encode(audio).decode()})


def sse_done(input_chars: int) -> bytes:
    # Usage counts characters (there are no tokens here): see docs/openai.md.
    usage = {"input_tokens": input_chars, "output_tokens": 0, "total_tokens": input_chars}
    return _event({"type": "speech.audio.done", "usage": usage})


def sse_error(error: ApiError) -> bytes:
    return _event({"type": "error", **error.body()})
