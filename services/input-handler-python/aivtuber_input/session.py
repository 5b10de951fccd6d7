"""One ``/ws/input`` connection's protocol, without I/O.

:class:`InputSession` takes what the client sent (:meth:`~InputSession.receive_text`,
:meth:`~InputSession.receive_bytes`) and returns events for the socket layer to carry out:
:class:`Reply` (send this message), :class:`Submit` (queue this task on a worker, then call
:meth:`~InputSession.queued` or :meth:`~InputSession.refused`), :class:`CancelTask` (then
:meth:`~InputSession.cancel_result`), :class:`Close` (close with this code). It validates,
reassembles the legacy chunked upload and hands out task ids; it never waits.

Task ids: the id announced on open (``task_id_assigned``) goes to the first utterance that
is actually queued; a frontend may already be listening on it, so a refused submission
leaves it for the next try. Once it is taken, a fresh uuid4 is reserved for the next
utterance and told in the answer (``upload_processed``'s ``next_task_id``), so every line,
not only the first, can be listened to while its speak is on the way.

Legacy chunked upload::

    {"type":"text","chunk_id":0,"action":"data_chunk"}   then one binary message (UTF-8 bytes)
    {"type":"text","chunk_id":1,"action":"data_chunk"}   then one binary message
    {"action":"upload_complete"}                         (no "type": legacy clients omit it)

A chunk out of order is refused and the partial upload discarded (the client starts again
from chunk 0); the binary message that belonged to a refused chunk is discarded with it.

Streaming tasks (``speak`` with ``"stream": true``, then ``append`` and ``end``): the
session remembers the streams this connection opened, so an ``append``/``end`` for any
other task is ``task_not_found`` (another tenant's included) and one for a stream that
ended is ``task_ended``. Each piece is checked like a ``speak`` (``invalid_text``) and
counted against ``max_stream_chars``; the socket layer sends it on (:class:`SendText`)
after the tenant's rate limits. A stream that hears nothing for ``stream_idle_timeout_s``
ends by itself (:meth:`~InputSession.expire_idle`, ``reason: "idle"``), and the streams
still open when the connection closes are ended (:meth:`~InputSession.close`): what was
sent is spoken.
"""

from __future__ import annotations

import json
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ValidationError

from aivtuber_common.closecodes import CloseCode
from aivtuber_common.codes import ErrorCode
from aivtuber_common.protocol import (
    Append,
    AudioUpload,
    Cancel,
    Cancelled,
    ClientMessageAdapter,
    End,
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

from .textcheck import BAD_TEXT as _BAD_TEXT
from .textcheck import BAD_TEXT_MESSAGE as _BAD_TEXT_MESSAGE
from .textcheck import unencodable_field as _unencodable_field

__all__ = [
    "CancelTask",
    "Close",
    "Event",
    "InputSession",
    "ListVoicesRequest",
    "Reply",
    "SendText",
    "Submit",
]

KNOWN_TYPES = (
    "speak",
    "append",
    "end",
    "text",
    "cancel",
    "upload_complete",
    "audio",
    "list_voices",
)
# Ended streams of one connection remembered for task_ended (older ones: task_not_found).
ENDED_STREAMS = 256
# UTF-8 needs at most 4 bytes a character: an upload longer than this cannot fit the limit.
MAX_UTF8_BYTES_PER_CHAR = 4


@dataclass(frozen=True)
class Reply:
    message: BaseModel


@dataclass(frozen=True)
class Submit:
    task_id: str
    text: str
    voice: str | None
    request_id: str | None
    stream: bool = False


@dataclass(frozen=True)
class SendText:
    """More text, a flush or the end for a streaming task: to its worker (then, if it
    cannot go, :meth:`InputSession.text_refused` or :meth:`InputSession.text_failed`)."""

    task_id: str
    text: str = ""
    flush: bool = False
    end: bool = False
    reason: Literal["idle"] | None = None


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


Event = Reply | Submit | SendText | CancelTask | Close | ListVoicesRequest


@dataclass
class _Stream:
    """A streaming task this connection opened and has not ended."""

    chars: int  # all its text so far (max_stream_chars)
    last_heard: float  # the last speak/append/end for it (stream_idle_timeout_s)
    # Nothing was appended since the last flush: another empty flush would change nothing,
    # and is not passed on (so the pieces sent on are bounded by the characters).
    flushed: bool = False


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
        max_stream_chars: int = 20000,
        stream_idle_timeout_s: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_text_chars = max_text_chars
        self.max_message_bytes = max_message_bytes
        self.max_stream_chars = max_stream_chars
        self.stream_idle_timeout_s = stream_idle_timeout_s
        self._clock = clock
        self._new_id = new_id
        self._streams: dict[str, _Stream] = {}
        self._ended: OrderedDict[str, None] = OrderedDict()
        self.assigned_id: str = new_id()  # the next utterance's (told on open, then in answers)
        self._assigned_in_use = False
        self._upload = _Upload(parts=[])
        self._awaiting_bytes: TextChunk | None = None  # metadata whose binary comes next
        self._discard_bytes = False  # the next binary belongs to a refused message

    # --- input ----------------------------------------------------------------------------

    def opening(self) -> list[Event]:
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
            # The next utterance's id, reserved now and told in this answer: the frontend can
            # listen on it as it sends that speak, as it did with the first.
            self.assigned_id = self._new_id()
            self._assigned_in_use = False
        if submit.stream:
            self._streams[submit.task_id] = _Stream(len(submit.text), self._clock())
        processed = UploadProcessed(
            task_id=submit.task_id, request_id=submit.request_id, next_task_id=self.assigned_id
        )
        return [Reply(processed)]

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
        self._end_stream(task_id)  # a cancelled stream takes no more text
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

    def text_refused(self, send: SendText, error: ErrorMessage) -> list[Event]:
        """A piece was not sent (a rate limit): it does not count, the stream goes on."""
        if (stream := self._streams.get(send.task_id)) is not None:
            stream.chars -= len(send.text)
            stream.flushed = False
        return [Reply(error)]

    def text_failed(self, send: SendText, code: str, message: str) -> list[Event]:
        """The worker has no such stream any more (it ended there: failed, cancelled
        elsewhere) or could not be reached."""
        if code in (ErrorCode.TASK_ENDED, ErrorCode.TASK_NOT_FOUND):
            self._end_stream(send.task_id)
            code = ErrorCode.TASK_ENDED
            message = f"Task {send.task_id} has ended; it takes no more text."
        if send.reason is not None:
            return []  # ended by this side (idle): nobody asked, nobody to tell
        return [_error(code, message, task_id=send.task_id)]

    # --- streams: idle and close ------------------------------------------------------------

    def idle_due(self) -> float | None:
        """When the stream heard from least recently goes idle (None: no open stream)."""
        if not self._streams:
            return None
        oldest = min(stream.last_heard for stream in self._streams.values())
        return oldest + self.stream_idle_timeout_s

    def expire_idle(self) -> list[Event]:
        """End the streams that have heard nothing for ``stream_idle_timeout_s``."""
        now = self._clock()
        idle = [
            task_id
            for task_id, stream in self._streams.items()
            if now - stream.last_heard >= self.stream_idle_timeout_s
        ]
        for task_id in idle:
            self._end_stream(task_id)
        return [SendText(task_id, end=True, reason="idle") for task_id in idle]

    def close(self) -> list[Event]:
        """The connection is gone: its open streams end (what was sent is spoken)."""
        open_streams = list(self._streams)
        for task_id in open_streams:
            self._end_stream(task_id)
        return [SendText(task_id, end=True) for task_id in open_streams]

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
                    f"Unknown message type {shown}: expected speak, append, end, text, "
                    "upload_complete, cancel or list_voices.",
                    request_id=_str_or_none(data.get("request_id")),
                )
            ]
        try:
            message = ClientMessageAdapter.validate_python(data)
        except ValidationError as exc:
            return [self._invalid(kind, data, exc)]
        match message:
            case Speak():
                return self._speak(message.text, message.voice, message.request_id, message.stream)
            case Append() | End():
                return self._more_text(message)
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

    def _speak(
        self, text: str, voice: str | None, request_id: str | None, stream: bool = False
    ) -> list[Event]:
        if stream:
            if problem := self._bad_piece(text, 0, request_id):
                return [problem]
        elif not text.strip():
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
        if not self._assigned_in_use:
            self._assigned_in_use = True
            task_id = self.assigned_id
        else:
            task_id = self._new_id()
        return [Submit(task_id, text, voice, request_id, stream=stream)]

    def _more_text(self, message: Append | End) -> list[Event]:
        task_id = message.task_id
        stream = self._streams.get(task_id)
        if stream is None:
            if task_id in self._ended:
                return [
                    _error(
                        ErrorCode.TASK_ENDED,
                        f"Task {task_id} has ended; it takes no more text.",
                        task_id=task_id,
                    )
                ]
            return [
                _error(
                    ErrorCode.TASK_NOT_FOUND,
                    f"No streaming task {task_id} is open on this connection.",
                    task_id=task_id,
                )
            ]
        stream.last_heard = self._clock()
        if isinstance(message, End):
            self._end_stream(task_id)
            return [SendText(task_id, end=True)]
        if problem := self._bad_piece(message.text, stream.chars, None, task_id):
            return [problem]
        if not message.text and (not message.flush or stream.flushed):
            return []  # nothing to say: it only kept the stream from going idle
        stream.chars += len(message.text)
        stream.flushed = message.flush
        return [SendText(task_id, message.text, flush=message.flush)]

    def _bad_piece(
        self, text: str, chars_before: int, request_id: str | None, task_id: str | None = None
    ) -> Reply | None:
        """A piece of a stream that may not be spoken: a bad character, or over
        ``max_stream_chars`` with what the stream had before."""
        if _BAD_TEXT.search(text):
            return _error(
                ErrorCode.INVALID_TEXT, _BAD_TEXT_MESSAGE, task_id=task_id, request_id=request_id
            )
        if chars_before + len(text) > self.max_stream_chars:
            return _error(
                ErrorCode.TEXT_TOO_LONG,
                f"A stream may take at most {self.max_stream_chars} characters; this piece "
                f"would make it {chars_before + len(text)}. It was not taken.",
                task_id=task_id,
                request_id=request_id,
            )
        return None

    def _end_stream(self, task_id: str) -> None:
        if self._streams.pop(task_id, None) is not None:
            self._ended[task_id] = None
            while len(self._ended) > ENDED_STREAMS:
                self._ended.popitem(last=False)

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
                    ErrorCode.INVALID_UTF8,
                    f"The uploaded text is not valid UTF-8 (byte {exc.start}); it was discarded.",
                    request_id=request_id,
                )
            ]
        return self._speak(text, message.voice or upload.voice, request_id)

    def _invalid(self, kind: str, data: dict[str, Any], exc: ValidationError) -> Event:
        request_id = _str_or_none(data.get("request_id"))
        error = exc.errors(include_url=False)[0]
        field = ".".join(str(part) for part in error["loc"][1:]) or kind
        if kind in ("speak", "append") and field == "text":
            if "text" not in data:
                message = f'{kind} needs a "text" field.'
                return _error(ErrorCode.MISSING_TEXT, message, request_id=request_id)
            return _error(ErrorCode.INVALID_TEXT, '"text" must be a string.', request_id=request_id)
        if kind in ("cancel", "append", "end") and field == "task_id":
            return _error(
                ErrorCode.INVALID_TASK_ID,
                f'{kind} needs a "task_id" string.',
                request_id=request_id,
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


def _str_or_none(value: object) -> str | None:
    return value if isinstance(value, str) else None
