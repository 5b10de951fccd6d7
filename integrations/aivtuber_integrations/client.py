"""The gateway's frontend protocol as the framework plugins speak it; no framework needed.

    Endpoint        where the gateway is and how to present the credential (key or ticket)
    ControlSession  what a ``/ws/input`` message answers, without I/O: replies are matched to
                    requests by ``request_id`` (Pipecat's websocket service owns its socket and
                    feeds its messages here)
    Gateway         one ``/ws/input`` connection shared by every task of a plugin, with the
                    task that reads it: speak (plain or streaming), append, end, cancel, voices
    listen()        one task's audio from ``/ws/output/{task_id}``: AudioStart, Frame..., then
                    AudioComplete
    WordPieces      cuts the text sent into the pieces the timing track's words stand for

Exceptions::

    AIVTuberError   ``code`` (an ErrorCode value), ``message``, ``close_code`` when a closing
                    connection said it: the gateway refused or failed, or could not be reached
                    (``connection_lost``)

The wire format is docs/protocol.md; the messages are aivtuber_common.protocol's models.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass
from typing import Any, TypeAlias
from urllib.parse import quote

from pydantic import BaseModel, ValidationError
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus, InvalidURI

from aivtuber_common.closecodes import AppCloseCode
from aivtuber_common.codes import ErrorCode
from aivtuber_common.protocol import (
    Append,
    AudioChunk,
    AudioComplete,
    AudioStart,
    Cancel,
    End,
    ErrorMessage,
    ListVoices,
    OutputError,
    Speak,
    UploadProcessed,
    VoiceInfo,
    VoiceList,
)

__all__ = [
    "AIVTuberError",
    "ControlSession",
    "Endpoint",
    "Frame",
    "Gateway",
    "OutputEvent",
    "TaskError",
    "WordPieces",
    "listen",
]

OPEN_TIMEOUT_S = 10.0
ANSWER_TIMEOUT_S = 30.0  # the input handler answers within worker_timeout_s per worker
MAX_MESSAGE_BYTES = 1 << 22


class AIVTuberError(Exception):
    """The gateway refused or failed a request, or could not be reached."""

    def __init__(
        self,
        code: str,
        message: str,
        *,
        close_code: int | None = None,
        retry_after_ms: int | None = None,
    ) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.close_code = close_code
        self.retry_after_ms = retry_after_ms

    @property
    def retryable(self) -> bool:
        """Whether the same request may succeed later (a busy or unreachable stack)."""
        return self.code in _RETRYABLE


_RETRYABLE = {
    ErrorCode.CONNECTION_LOST,
    ErrorCode.RATE_LIMITED,
    ErrorCode.TOO_MANY_CONNECTIONS,
    ErrorCode.TTS_UNAVAILABLE,
    ErrorCode.BUSY,
    ErrorCode.NOT_READY,
    ErrorCode.WORKER_LOST,
    ErrorCode.TIMEOUT,
}

# What the gateway's close codes mean (docs/protocol.md, close codes).
_CLOSE_CODES: dict[int, ErrorCode] = {
    AppCloseCode.UNAUTHORIZED: ErrorCode.UNAUTHORIZED,
    AppCloseCode.FORBIDDEN: ErrorCode.ORIGIN_NOT_ALLOWED,
    AppCloseCode.TOO_MANY: ErrorCode.TOO_MANY_CONNECTIONS,
    AppCloseCode.NOT_FOUND: ErrorCode.TASK_NOT_FOUND,
}
_HTTP_STATUSES: dict[int, ErrorCode] = {
    401: ErrorCode.UNAUTHORIZED,
    403: ErrorCode.ORIGIN_NOT_ALLOWED,
    404: ErrorCode.TASK_NOT_FOUND,
    429: ErrorCode.TOO_MANY_CONNECTIONS,
}


def closed_error(exc: ConnectionClosed) -> AIVTuberError:
    """The error a closed connection stands for: its close code, when it sent one."""
    frame = exc.rcvd
    if frame is None:
        return AIVTuberError(ErrorCode.CONNECTION_LOST, "the connection to the gateway was lost")
    code = _CLOSE_CODES.get(frame.code, ErrorCode.CONNECTION_LOST)
    reason = f" {frame.reason}" if frame.reason else ""
    return AIVTuberError(
        code, f"the gateway closed the connection ({frame.code}{reason})", close_code=frame.code
    )


@dataclass(frozen=True)
class Endpoint:
    """The gateway at ``url`` (``ws://host:8000``; ``http`` works too), as the tenant of
    ``api_key`` (sent as a Bearer header) or of ``ticket`` (``?ticket=``, docs/security.md)."""

    url: str
    api_key: str | None = None
    ticket: str | None = None

    @property
    def base(self) -> str:
        url = self.url.rstrip("/")
        for plain, secure in (("http://", "ws://"), ("https://", "wss://")):
            if url.startswith(plain):
                return secure + url[len(plain) :]
        return url

    def input_url(self) -> str:
        return self._credited(f"{self.base}/ws/input")

    def output_url(self, task_id: str) -> str:
        return self._credited(f"{self.base}/ws/output/{task_id}")

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}

    def _credited(self, url: str) -> str:
        return f"{url}?ticket={quote(self.ticket, safe='')}" if self.ticket else url


async def open_socket(endpoint: Endpoint, url: str, timeout_s: float) -> ClientConnection:
    """Connect to one of the gateway's WebSocket routes; errors as AIVTuberError."""
    try:
        return await connect(
            url,
            additional_headers=endpoint.headers(),
            open_timeout=timeout_s,
            compression=None,
            max_size=MAX_MESSAGE_BYTES,
        )
    except CONNECT_ERRORS as exc:
        raise connect_error(endpoint, exc) from exc


# What opening a WebSocket to the gateway may raise.
CONNECT_ERRORS = (OSError, TimeoutError, InvalidHandshake, InvalidURI)


def connect_error(endpoint: Endpoint, exc: BaseException) -> AIVTuberError:
    """The error a failed handshake stands for (the URL in it is the base one: a ticket never
    goes into a message)."""
    if isinstance(exc, InvalidStatus):
        status = exc.response.status_code
        code = _HTTP_STATUSES.get(status, ErrorCode.CONNECTION_LOST)
        return AIVTuberError(code, f"the gateway at {endpoint.base} answered HTTP {status}")
    return AIVTuberError(
        ErrorCode.CONNECTION_LOST,
        f"cannot reach the gateway at {endpoint.base}: {type(exc).__name__}",
    )


def encode(message: BaseModel) -> str:
    """A client message as JSON, without the optional keys left unset."""
    return message.model_dump_json(exclude_none=True)


def new_request_id() -> str:
    return uuid.uuid4().hex


@dataclass(frozen=True)
class TaskError:
    """An error a ``/ws/input`` message reported for a task (``task_id``) or for the
    connection as a whole (``task_id`` None), not the answer to a pending request."""

    task_id: str | None
    error: AIVTuberError


class ControlSession:
    """Matches ``/ws/input`` answers to the requests waiting for them, by ``request_id``.

    The input handler answers the messages of a connection in order, echoing the
    ``request_id`` of ``speak`` and ``list_voices`` in its answer or error; errors about a task
    already running (an ``append`` after its end, a refused ``cancel``) carry its ``task_id``.
    """

    def __init__(self) -> None:
        self._waiting: dict[str, asyncio.Future[Any]] = {}

    def expect(self, request_id: str) -> asyncio.Future[Any]:
        """A future settled by the answer to the request sent with ``request_id``: the task
        id for ``speak``, the list of VoiceInfo for ``list_voices``, or an AIVTuberError."""
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._waiting[request_id] = future
        return future

    def forget(self, request_id: str) -> None:
        """Stop waiting for an answer (it came, or the waiter gave up)."""
        future = self._waiting.pop(request_id, None)
        if future is None:
            return
        if future.done():
            future.exception()  # seen: a failure nobody awaits is not an error to report
        else:
            future.cancel()

    def receive(self, message: str | bytes) -> TaskError | None:
        """Settle the request ``message`` answers; an error that answers none is returned."""
        data = _object(message)
        try:
            match data.get("type"), data.get("action"):
                case "error", _:
                    return self._error(ErrorMessage.model_validate(data))
                case "system", "upload_processed":
                    processed = UploadProcessed.model_validate(data)
                    self._settle(processed.request_id, processed.task_id)
                case "system", "voices":
                    voices = VoiceList.model_validate(data)
                    self._settle(voices.request_id, voices.voices)
                case _:
                    pass  # task_id_assigned, cancelled: nothing waits for them
        except ValidationError as exc:
            raise AIVTuberError(
                ErrorCode.INTERNAL_ERROR, f"the gateway sent a malformed message: {exc}"
            ) from exc
        return None

    def fail_all(self, error: AIVTuberError) -> None:
        """The connection ended: every waiting request fails with ``error``."""
        for future in self._waiting.values():
            if not future.done():
                future.set_exception(error)

    def _error(self, message: ErrorMessage) -> TaskError | None:
        error = AIVTuberError(message.code, message.message, retry_after_ms=message.retry_after_ms)
        future = self._waiting.get(message.request_id) if message.request_id else None
        if future is not None and not future.done():
            future.set_exception(error)
            return None
        return TaskError(message.task_id, error)

    def _settle(self, request_id: str | None, value: Any) -> None:
        future = self._waiting.get(request_id) if request_id else None
        if future is not None and not future.done():
            future.set_result(value)


def _object(message: str | bytes) -> dict[str, Any]:
    if isinstance(message, bytes):
        raise AIVTuberError(ErrorCode.INTERNAL_ERROR, "the gateway sent binary data on /ws/input")
    try:
        data = json.loads(message)
    except json.JSONDecodeError as exc:
        raise AIVTuberError(ErrorCode.INTERNAL_ERROR, "the gateway sent invalid JSON") from exc
    if not isinstance(data, dict):
        raise AIVTuberError(ErrorCode.INTERNAL_ERROR, "the gateway sent JSON that is no object")
    return data


class Gateway:
    """One ``/ws/input`` connection shared by many tasks, opened on first use and again after
    it dropped. Its reader task settles the answers; when the connection ends, waiting
    requests fail and every watched task is told (the input handler cancels a hung-up
    connection's tasks)."""

    def __init__(
        self,
        endpoint: Endpoint,
        *,
        open_timeout_s: float = OPEN_TIMEOUT_S,
        answer_timeout_s: float = ANSWER_TIMEOUT_S,
    ) -> None:
        self.endpoint = endpoint
        self._open_timeout_s = open_timeout_s
        self._answer_timeout_s = answer_timeout_s
        self._session = ControlSession()
        self._conn: ClientConnection | None = None
        self._reader: asyncio.Task[None] | None = None
        self._opening = asyncio.Lock()
        self._watchers: dict[str, Callable[[AIVTuberError], None]] = {}

    async def connect(self) -> ClientConnection:
        """The open connection, opening it if needed."""
        async with self._opening:
            if self._conn is None:
                conn = await open_socket(
                    self.endpoint, self.endpoint.input_url(), self._open_timeout_s
                )
                await self._stop_reader()
                self._conn = conn
                self._reader = asyncio.create_task(self._read(conn), name="aivtuber-input")
            return self._conn

    async def speak(
        self, text: str, *, voice: str | None, stream: bool = False, request_id: str | None = None
    ) -> str:
        """Start a task (``stream``: a streaming task whose first text is ``text``, possibly
        empty); its task id once a worker accepted it."""
        request_id = request_id or new_request_id()
        speak = Speak(type="speak", text=text, voice=voice, request_id=request_id, stream=stream)
        task_id = await self._ask(request_id, speak)
        return str(task_id)

    async def append(self, task_id: str, text: str, *, flush: bool = False) -> None:
        await self.send(Append(type="append", task_id=task_id, text=text, flush=flush))

    async def end(self, task_id: str) -> None:
        await self.send(End(type="end", task_id=task_id))

    async def cancel(self, task_id: str) -> None:
        """Ask the stack to stop the task; its stream then ends with ``cancelled``."""
        await self.send(Cancel(type="cancel", task_id=task_id))

    async def voices(self) -> list[VoiceInfo]:
        request_id = new_request_id()
        voices = await self._ask(request_id, ListVoices(type="list_voices", request_id=request_id))
        return list(voices)

    def watch(self, task_id: str, on_error: Callable[[AIVTuberError], None]) -> None:
        """Call ``on_error`` with the errors reported for the task on ``/ws/input`` (an
        ``append`` refused) and with the error that ends the connection."""
        self._watchers[task_id] = on_error

    def unwatch(self, task_id: str) -> None:
        self._watchers.pop(task_id, None)

    async def send(self, message: BaseModel) -> None:
        conn = await self.connect()
        try:
            await conn.send(encode(message))
        except ConnectionClosed as exc:
            raise closed_error(exc) from exc

    async def aclose(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            await conn.close()
        await self._stop_reader()

    async def _ask(self, request_id: str, message: BaseModel) -> Any:
        future = self._session.expect(request_id)
        try:
            await self.send(message)
            async with asyncio.timeout(self._answer_timeout_s):
                return await future
        except TimeoutError as exc:
            raise AIVTuberError(
                ErrorCode.TIMEOUT, f"no answer from the gateway in {self._answer_timeout_s:g} s"
            ) from exc
        finally:
            self._session.forget(request_id)

    async def _read(self, conn: ClientConnection) -> None:
        ended = AIVTuberError(ErrorCode.CONNECTION_LOST, "the gateway closed the connection")
        try:
            async for message in conn:
                failure = self._session.receive(message)
                if failure is not None:
                    self._report(failure)
        except ConnectionClosed as exc:
            ended = closed_error(exc)
        except AIVTuberError as exc:  # the gateway broke the protocol: give up the connection
            ended = exc
            await conn.close()
        finally:
            if self._conn is conn:
                self._conn = None
            self._session.fail_all(ended)
            for on_error in list(self._watchers.values()):
                on_error(ended)

    def _report(self, failure: TaskError) -> None:
        targets = (
            [self._watchers[failure.task_id]]
            if failure.task_id in self._watchers
            else list(self._watchers.values())
            if failure.task_id is None
            else []
        )
        for on_error in targets:
            on_error(failure.error)

    async def _stop_reader(self) -> None:
        reader, self._reader = self._reader, None
        if reader is not None and reader is not asyncio.current_task():
            reader.cancel()
            # wait, not await: the reader's CancelledError stays in it, while a cancel of
            # this caller still propagates (a suppressed await would swallow it too).
            await asyncio.wait({reader})


@dataclass(frozen=True)
class Frame:
    """One frame of a task's audio: its ``audio_chunk`` (words, visemes), its PCM (s16le mono),
    and where it starts in the task's audio."""

    chunk: AudioChunk
    pcm: bytes
    start_s: float


OutputEvent: TypeAlias = AudioStart | Frame | AudioComplete


async def listen(
    endpoint: Endpoint, task_id: str, *, open_timeout_s: float = OPEN_TIMEOUT_S
) -> AsyncGenerator[OutputEvent, None]:
    """The task's ``audio_start``, each frame, then its ``audio_complete`` (also when it was
    cancelled: ``cancelled`` says so); raises AIVTuberError for an ``error`` or a closed
    connection. Close the iterator (``contextlib.aclosing``) to hang up early."""
    conn = await open_socket(endpoint, endpoint.output_url(task_id), open_timeout_s)
    async with conn:
        try:
            start = _output(await conn.recv())
            if not isinstance(start, AudioStart):
                raise AIVTuberError(ErrorCode.INTERNAL_ERROR, "no audio_start at the beginning")
            yield start
            samples = 0
            while True:
                event = _output(await conn.recv())
                if isinstance(event, AudioComplete):
                    yield event
                    return
                if not isinstance(event, AudioChunk):
                    raise AIVTuberError(ErrorCode.INTERNAL_ERROR, "a second audio_start")
                pcm = await conn.recv()
                if not isinstance(pcm, bytes):
                    raise AIVTuberError(
                        ErrorCode.INTERNAL_ERROR, "audio_chunk was not followed by its PCM"
                    )
                yield Frame(event, pcm, samples / start.sample_rate)
                samples += len(pcm) // 2
        except ConnectionClosed as exc:
            raise closed_error(exc) from exc


def _output(message: str | bytes) -> AudioStart | AudioChunk | AudioComplete:
    data = _object(message)
    try:
        match data.get("type"):
            case "audio_start":
                return AudioStart.model_validate(data)
            case "audio_chunk":
                return AudioChunk.model_validate(data)
            case "audio_complete":
                return AudioComplete.model_validate(data)
            case "error":
                failure = OutputError.model_validate(data)
                raise AIVTuberError(failure.code, failure.error)
    except ValidationError as exc:
        raise AIVTuberError(
            ErrorCode.INTERNAL_ERROR, f"the gateway sent a malformed message: {exc}"
        ) from exc
    raise AIVTuberError(ErrorCode.INTERNAL_ERROR, f"unexpected message type {data.get('type')!r}")


class WordPieces:
    """Cuts the text sent into the pieces the timing track's words stand for.

    Each piece runs from the end of the previous one to the end of its word, so the pieces
    put together are the text sent, spaces and punctuation kept (what LiveKit's transcript
    shows). A word not found in the text (the engine spelled it otherwise) ends the
    alignment: from then on each piece is the word and ``separator``.
    """

    def __init__(self, separator: str = " ") -> None:
        self._text = ""  # sent, not yet covered by a word: bounded by the task's text
        self._aligned = True
        self._separator = separator

    def add(self, text: str) -> None:
        if self._aligned:
            self._text += text

    def piece(self, word: str) -> str:
        if self._aligned:
            at = self._text.find(word)
            if at >= 0:
                end = at + len(word)
                piece, self._text = self._text[:end], self._text[end:]
                return piece
            self._aligned = False
            self._text = ""
        return word + self._separator

    def rest(self) -> str:
        """What follows the last word (closing punctuation), once the task is spoken."""
        rest, self._text = self._text, ""
        return rest
