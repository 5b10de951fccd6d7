"""One ``/ws/input`` connection's protocol, without I/O.

:class:`InputSession` takes what the client sent (:meth:`~InputSession.receive_text`,
:meth:`~InputSession.receive_bytes`) and returns events for the socket layer to carry out:
:class:`Reply` (send this message), :class:`Submit` (queue this task on a worker, then call
:meth:`~InputSession.queued` or :meth:`~InputSession.refused`), :class:`CancelTask` (then
:meth:`~InputSession.cancel_result`), :class:`Close` (close with this code). It validates,
reassembles the legacy chunked upload and hands out task ids; it never waits.

Task ids: the id announced on open (``task_id_assigned``) goes to the first utterance that
is actually queued; a frontend may already be listening on it, so a refused submission
leaves it for the next try. Every later utterance gets a fresh uuid4.

Legacy chunked upload::

    {"type":"text","chunk_id":0,"action":"data_chunk"}   then one binary message (UTF-8 bytes)
    {"type":"text","chunk_id":1,"action":"data_chunk"}   then one binary message
    {"action":"upload_complete"}                         (no "type": legacy clients omit it)

A chunk out of order is refused and the partial upload discarded (the client starts again
from chunk 0); the binary message that belonged to a refused chunk is discarded with it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ValidationError

from aivtuber_common.closecodes import CloseCode
from aivtuber_common.codes import ErrorCode
from aivtuber_common.protocol import (
    AudioUpload,
    Cancel,
    Cancelled,
    ClientMessageAdapter,
    ErrorMessage,
    ListVoices,
    Speak,
    TaskIdAssigned,
    TextChunk,
    UploadComplete,
    UploadProcessed,
    is_canonical_uuid,
    new_task_id,
)

__all__ = ["CancelTask", "Close", "Event", "InputSession", "ListVoicesRequest", "Reply", "Submit"]

KNOWN_TYPES = ("speak", "text", "cancel", "upload_complete", "audio", "list_voices")
# UTF-8 needs at most 4 bytes a character: an upload longer than this cannot fit the limit.
MAX_UTF8_BYTES_PER_CHAR = 4
# Refused in text to speak: C0 controls but tab and newline (a NUL reaches the engine as a
# failure), and lone surrogates (from a "\ud800" escape: no UTF-8 can carry them).
_BAD_TEXT = re.compile(r"[\x00-\x08\x0b-\x1f\ud800-\udfff]")
_SURROGATE = re.compile(r"[\ud800-\udfff]")


@dataclass(frozen=True)
class Reply:
    message: BaseModel


@dataclass(frozen=True)
class Submit:
    task_id: str
    text: str
    voice: str | None
    request_id: str | None


@dataclass(frozen=True)
class CancelTask:
    task_id: str


@dataclass(frozen=True)
class Close:
    code: int
    reason: str


@dataclass(frozen=True)
class ListVoicesRequest:
    """Answer with the workers' voices (VoiceList)."""

    request_id: str | None = None


Event = Reply | Submit | CancelTask | Close | ListVoicesRequest


@dataclass
class _Upload:
    """The legacy chunked upload in progress."""

    parts: list[bytes]
    size: int = 0
    voice: str | None = None
    request_id: str | None = None

    @property
    def next_chunk(self) -> int:
        return len(self.parts)


class InputSession:
    def __init__(
        self,
        *,
        max_text_chars: int,
        max_message_bytes: int,
        new_id: Callable[[], str] = new_task_id,
    ) -> None:
        self.max_text_chars = max_text_chars
        self.max_message_bytes = max_message_bytes
        self._new_id = new_id
        self.assigned_id: str | None = new_id()  # until the first utterance is queued
        self._assigned_in_use = False
        self._upload = _Upload(parts=[])
        self._awaiting_bytes: TextChunk | None = None  # metadata whose binary comes next
        self._discard_bytes = False  # the next binary belongs to a refused message

    # --- input ----------------------------------------------------------------------------

    def opening(self) -> list[Event]:
        assert self.assigned_id is not None
        return [Reply(TaskIdAssigned(task_id=self.assigned_id))]

    def receive_text(self, text: str) -> list[Event]:
        # A str of n characters is n to 4n UTF-8 bytes: encode only when it could be too big.
        if len(text) * 4 > self.max_message_bytes and len(text.encode()) > self.max_message_bytes:
            return [self._too_big()]
        events: list[Event] = []
        if self._awaiting_bytes is not None:
            chunk_id = self._awaiting_bytes.chunk_id
            self._awaiting_bytes = None
            events.append(
                _error(
                    ErrorCode.MISSING_CHUNK_DATA,
                    f"Chunk {chunk_id} was announced but its binary message did not follow; "
                    "send the chunk again.",
                )
            )
        self._discard_bytes = False
        events.extend(self._handle_json(text))
        return events

    def receive_bytes(self, data: bytes) -> list[Event]:
        if len(data) > self.max_message_bytes:
            return [self._too_big()]
        if self._discard_bytes:
            self._discard_bytes = False
            return []  # its metadata was refused with an error already
        chunk = self._awaiting_bytes
        if chunk is None:
            return [
                _error(
                    ErrorCode.UNEXPECTED_BINARY,
                    "A binary message arrived without chunk metadata before it; send "
                    '{"type":"text","chunk_id":N,"action":"data_chunk"} first.',
                )
            ]
        self._awaiting_bytes = None
        upload = self._upload
        upload.parts.append(data)
        upload.size += len(data)
        upload.voice = chunk.voice or upload.voice
        upload.request_id = chunk.request_id or upload.request_id
        if upload.size > self.max_text_chars * MAX_UTF8_BYTES_PER_CHAR:
            self._upload = _Upload(parts=[])
            return [
                _error(
                    ErrorCode.TEXT_TOO_LONG,
                    f"The upload is longer than the limit of {self.max_text_chars} characters; "
                    "it was discarded.",
                    request_id=upload.request_id,
                )
            ]
        return []

    # --- results of the socket layer's work -----------------------------------------------

    def queued(self, submit: Submit) -> list[Event]:
        if submit.task_id == self.assigned_id:
            self.assigned_id = None
        return [Reply(UploadProcessed(task_id=submit.task_id, request_id=submit.request_id))]

    def refused(self, submit: Submit, code: str, message: str) -> list[Event]:
        if submit.task_id == self.assigned_id:
            self._assigned_in_use = False  # still unused: the next utterance takes it
        return [_error(code, message, task_id=submit.task_id, request_id=submit.request_id)]

    def rate_limited(self, submit: Submit, message: str, retry_after_ms: int) -> list[Event]:
        """Over a per-tenant limit: the task was not submitted; its id stays for the next try."""
        if submit.task_id == self.assigned_id:
            self._assigned_in_use = False
        error = ErrorMessage(
            code=ErrorCode.RATE_LIMITED,
            message=message,
            retry_after_ms=retry_after_ms,
            request_id=submit.request_id,
        )
        return [Reply(error)]

    def cancel_result(self, task_id: str, stopped: bool) -> list[Event]:
        if stopped:
            return [Reply(Cancelled(task_id=task_id))]
        return [
            _error(
                ErrorCode.TASK_NOT_RUNNING,
                f"Task {task_id} is not running: it already finished or was never started.",
                task_id=task_id,
            )
        ]

    def cancel_failed(self, task_id: str, code: str, message: str) -> list[Event]:
        return [_error(code, message, task_id=task_id)]

    # --- internals ------------------------------------------------------------------------

    def _handle_json(self, text: str) -> list[Event]:
        try:
            data: Any = json.loads(text)
        except json.JSONDecodeError as exc:
            return [_error(ErrorCode.INVALID_JSON, f"The message is not valid JSON: {exc.msg}.")]
        except RecursionError:
            return [_error(ErrorCode.INVALID_JSON, "The message is nested too deeply.")]
        except ValueError as exc:  # an integer of more than 4300 digits
            return [_error(ErrorCode.INVALID_JSON, f"The message cannot be read: {exc}.")]
        if not isinstance(data, dict):
            return [_error(ErrorCode.INVALID_MESSAGE, "A message must be a JSON object.")]
        if problem := _unencodable_field(data):
            # A lone surrogate cannot be encoded again (for the worker, or in a reply).
            if problem == "text":
                return [_error(ErrorCode.INVALID_TEXT, _BAD_TEXT_MESSAGE)]
            return [_error(ErrorCode.INVALID_MESSAGE, f'"{problem}" holds a lone surrogate.')]
        if "type" not in data and data.get("action") == "upload_complete":
            data = {**data, "type": "upload_complete"}  # the legacy shape has no type
        kind = data.get("type")
        if kind is None:
            return [_error(ErrorCode.MISSING_TYPE, 'The message has no "type" field.')]
        if kind not in KNOWN_TYPES:
            shown = repr(kind) if isinstance(kind, str) and len(kind) <= 40 else "given"
            return [
                _error(
                    ErrorCode.UNKNOWN_TYPE,
                    f"Unknown message type {shown}: expected speak, text, upload_complete, "
                    "cancel or list_voices.",
                    request_id=_str_or_none(data.get("request_id")),
                )
            ]
        try:
            message = ClientMessageAdapter.validate_python(data)
        except ValidationError as exc:
            return [self._invalid(kind, data, exc)]
        match message:
            case Speak():
                return self._speak(message.text, message.voice, message.request_id)
            case TextChunk():
                return self._chunk(message)
            case UploadComplete():
                return self._complete(message)
            case Cancel():
                if not is_canonical_uuid(message.task_id):
                    return [
                        _error(
                            ErrorCode.INVALID_TASK_ID,
                            "cancel needs the canonical UUID task id that upload_processed gave.",
                            task_id=message.task_id,
                        )
                    ]
                return [CancelTask(message.task_id)]
            case ListVoices():
                return [ListVoicesRequest(message.request_id)]
            case AudioUpload():
                self._discard_bytes = True  # an audio chunk's binary may follow
                return [
                    _error(
                        ErrorCode.AUDIO_NOT_SUPPORTED,
                        "Audio input is not supported: no speech recogniser is configured. "
                        'Send text with {"type":"speak","text":"..."}.',
                    )
                ]
        raise AssertionError(f"unhandled message {message!r}")  # pragma: no cover

    def _speak(self, text: str, voice: str | None, request_id: str | None) -> list[Event]:
        if not text.strip():
            return [
                _error(ErrorCode.EMPTY_TEXT, "The text to speak is empty.", request_id=request_id)
            ]
        if _BAD_TEXT.search(text):
            return [_error(ErrorCode.INVALID_TEXT, _BAD_TEXT_MESSAGE, request_id=request_id)]
        if len(text) > self.max_text_chars:
            return [
                _error(
                    ErrorCode.TEXT_TOO_LONG,
                    f"The text is {len(text)} characters long; the limit is {self.max_text_chars}.",
                    request_id=request_id,
                )
            ]
        if self.assigned_id is not None and not self._assigned_in_use:
            self._assigned_in_use = True
            task_id = self.assigned_id
        else:
            task_id = self._new_id()
        return [Submit(task_id=task_id, text=text, voice=voice, request_id=request_id)]

    def _chunk(self, chunk: TextChunk) -> list[Event]:
        expected = self._upload.next_chunk
        if chunk.chunk_id != expected:
            self._upload = _Upload(parts=[])
            self._discard_bytes = True
            return [
                _error(
                    ErrorCode.CHUNK_ID_MISMATCH,
                    f"Chunk ID mismatch: expected {expected}, got {chunk.chunk_id}. "
                    "The upload was discarded; start again from chunk 0.",
                    request_id=chunk.request_id,
                )
            ]
        self._awaiting_bytes = chunk
        return []

    def _complete(self, message: UploadComplete) -> list[Event]:
        upload, self._upload = self._upload, _Upload(parts=[])
        request_id = message.request_id or upload.request_id
        if not upload.parts:
            return [
                _error(
                    ErrorCode.EMPTY_TEXT,
                    "upload_complete arrived but no chunk was uploaded.",
                    request_id=request_id,
                )
            ]
        try:
            text = b"".join(upload.parts).decode("utf-8")
        except UnicodeDecodeError as exc:
            return [
                _error(
                    "invalid_utf8",
                    f"The uploaded text is not valid UTF-8 (byte {exc.start}); it was discarded.",
                    request_id=request_id,
                )
            ]
        return self._speak(text, message.voice or upload.voice, request_id)

    def _invalid(self, kind: str, data: dict[str, Any], exc: ValidationError) -> Event:
        request_id = _str_or_none(data.get("request_id"))
        error = exc.errors(include_url=False)[0]
        field = ".".join(str(part) for part in error["loc"][1:]) or kind
        if kind == "speak" and field == "text":
            if "text" not in data:
                return _error(
                    ErrorCode.MISSING_TEXT, 'speak needs a "text" field.', request_id=request_id
                )
            return _error(ErrorCode.INVALID_TEXT, '"text" must be a string.', request_id=request_id)
        if kind == "cancel" and field == "task_id":
            return _error(
                ErrorCode.INVALID_TASK_ID, 'cancel needs a "task_id" string.', request_id=request_id
            )
        return _error(
            ErrorCode.INVALID_MESSAGE,
            f"Invalid {kind} message: {field}: {error['msg']}.",
            request_id=request_id,
        )

    def _too_big(self) -> Close:
        return Close(CloseCode.MESSAGE_TOO_BIG, f"message over {self.max_message_bytes} bytes")


def _error(
    code: str, message: str, *, task_id: str | None = None, request_id: str | None = None
) -> Reply:
    return Reply(ErrorMessage(code=code, message=message, task_id=task_id, request_id=request_id))


_BAD_TEXT_MESSAGE = (
    "The text holds a character that cannot be spoken: a NUL or other control character "
    "(tab and newline are fine) or a lone surrogate."
)


def _unencodable_field(data: dict[str, Any]) -> str | None:
    """The first top-level key (or string value's key) holding a lone surrogate."""
    for key, value in data.items():
        if _SURROGATE.search(key):
            return "(a key)"
        if isinstance(value, str) and _SURROGATE.search(value):
            return key
    return None


def _str_or_none(value: object) -> str | None:
    return value if isinstance(value, str) else None
