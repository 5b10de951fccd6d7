"""A task's captions (WebVTT) and audio (WAV) for the frontend, through the gateway.

Routes (reached on port 8000 through the gateway's ``tasks`` route)::

    GET /v1/tasks/{task_id}/captions.vtt   WebVTT: one cue per clause, a timestamp per word
    GET /v1/tasks/{task_id}/audio.wav      the task's whole audio, 16-bit mono WAV

Both read the task exactly as a subscriber does (:meth:`FrameSource.read` with the tenant
the gateway's identity headers name), so they need the same credentials, answer another
tenant's task like an unknown one (404 ``task_not_found``, after the same
``output_handler.task_wait_s``), work on both buses and on any output handler replica. A
task still being spoken is answered when it ends (a cancelled one with what was spoken
before the cancel); a failed one is 409 ``task_failed``.

Memory: a request waiting for a task keeps only its word track (bounded by the task's
text), never its audio; the WAV is then streamed frame by frame from a second read of the
task, so N clients asking for a long task cost N frames, not N copies of its audio.

Cues: a cue ends after a word that ends a clause (``, ; : . ! ? …`` and their full-width
forms, ``、。``) or after :data:`MAX_CUE_WORDS` words; each word after the first carries
its start as an inline timestamp (``<00:00:01.200>``). A voice without word timing gets one
cue: the whole text over the whole audio (for a stream, its opening ``speak``'s text only:
the appended pieces go to the worker, not here).
"""

from __future__ import annotations

import contextlib
import unicodedata
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass

from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from aivtuber_common.audio import wav_header
from aivtuber_common.codes import ErrorCode
from aivtuber_common.identity import read_identity
from aivtuber_common.internal import TaskEnd, TaskOpen
from aivtuber_common.protocol import OutputError, dump, is_canonical_uuid
from aivtuber_common.transport import FrameSource, TaskNotFound

__all__ = ["MAX_CUE_WORDS", "Spoken", "task_file_routes", "webvtt"]

SAMPLE_WIDTH = 2
MAX_CUE_WORDS = 16  # about two lines of captions
_CLAUSE_ENDS = frozenset(",;:.!?…、。，．；：！？")
_CLOSERS = frozenset("\"')]}”’」』）»")

Word = tuple[int, int, str]  # start ms from the task's first sample, duration ms, word


@dataclass(frozen=True)
class Spoken:
    """What a task said: its announcement, how many bytes of audio and its words on the
    task's clock (None: the voice has no word timing)."""

    opened: TaskOpen
    pcm_bytes: int
    words: list[Word] | None

    @property
    def duration_ms(self) -> int:
        return self.pcm_bytes // SAMPLE_WIDTH * 1000 // self.opened.sample_rate


def task_file_routes(source: FrameSource, internal_token: str | None) -> list[Route]:
    """The two routes, reading from ``source`` (either bus's)."""

    async def captions(request: Request) -> Response:
        spoken = await _spoken(request, source, internal_token)
        if isinstance(spoken, Response):
            return spoken
        if spoken.words is None:  # no word timing: the whole text as one cue
            words = [(0, spoken.duration_ms, spoken.opened.text.strip())]
            body = webvtt(words, timestamps=False)
        else:
            body = webvtt(spoken.words)
        return Response(body, media_type="text/vtt; charset=utf-8")

    async def audio(request: Request) -> Response:
        spoken = await _spoken(request, source, internal_token)
        if isinstance(spoken, Response):
            return spoken
        data_bytes = spoken.pcm_bytes
        header = wav_header(spoken.opened.sample_rate, data_bytes)
        tenant = _tenant(request, internal_token)
        return StreamingResponse(
            _wav_body(source, spoken.opened.task_id, tenant, header, data_bytes),
            media_type="audio/wav",
            headers={
                "Content-Disposition": 'inline; filename="speech.wav"',
                "Content-Length": str(len(header) + data_bytes),
            },
        )

    return [
        Route("/v1/tasks/{task_id}/captions.vtt", captions),
        Route("/v1/tasks/{task_id}/audio.wav", audio),
    ]


def webvtt(words: Sequence[Word], timestamps: bool = True) -> str:
    """The WebVTT document of ``words`` (in order, times on the task's clock)."""
    lines = ["WEBVTT", ""]
    for number, cue in enumerate(_cues(words), start=1):
        start = cue[0][0]
        end = max(max(at + duration for at, duration, _ in cue), start + 1)
        text = _escape(cue[0][2])
        for (_, _, before), (at, _, word) in zip(cue, cue[1:], strict=False):
            stamp = f"<{_clock(at)}>" if timestamps else ""
            text += _separator(before, word) + stamp + _escape(word)
        lines += [str(number), f"{_clock(start)} --> {_clock(end)}", text, ""]
    return "\n".join(lines)


# --- internals ---------------------------------------------------------------------------


async def _spoken(
    request: Request, source: FrameSource, internal_token: str | None
) -> Spoken | Response:
    """The whole task once it has ended, or the error answer."""
    task_id: str = request.path_params["task_id"]
    if not is_canonical_uuid(task_id):
        return _error(400, task_id, ErrorCode.INVALID_TASK_ID, "The task id must be a UUID.")
    tenant = _tenant(request, internal_token)
    opened: TaskOpen | None = None
    words: list[Word] | None = None
    samples = pcm_bytes = 0
    try:
        async with contextlib.aclosing(source.read(task_id, 0, tenant)) as events:
            async for event in events:
                match event:
                    case TaskOpen():
                        opened = event
                    case (_, _, bytes() as frame, _, track):
                        if track is not None and opened is not None:
                            at = samples * 1000 // opened.sample_rate
                            words = [] if words is None else words
                            words.extend((at + o, n, word) for o, n, word in track)
                        pcm_bytes += len(frame)
                        samples += len(frame) // SAMPLE_WIDTH
                    case TaskEnd() if opened is not None:
                        if event.status == "failed":
                            message = f"The task failed ({event.code}): {event.message}"
                            return _error(409, task_id, ErrorCode.TASK_FAILED, message)
                        return Spoken(opened, pcm_bytes, words)
    except TaskNotFound as exc:
        return _error(404, task_id, ErrorCode.TASK_NOT_FOUND, str(exc))
    return _error(404, task_id, ErrorCode.TASK_NOT_FOUND, f"No task {task_id} is known here.")


def _tenant(request: Request, internal_token: str | None) -> str | None:
    peer = request.client.host if request.client else None
    return read_identity(request.headers.items(), peer, internal_token).tenant


async def _wav_body(
    source: FrameSource, task_id: str, tenant: str | None, header: bytes, data_bytes: int
) -> AsyncIterator[bytes]:
    """The WAV header, then the task's frames as a second read finds them: exactly
    ``data_bytes`` (what the first read counted), one frame at a time."""
    yield header
    left = data_bytes
    async with contextlib.aclosing(source.read(task_id, 0, tenant)) as events:
        async for event in events:
            if isinstance(event, tuple) and left > 0:
                frame = event[2][:left]
                left -= len(frame)
                yield frame
            elif isinstance(event, TaskEnd) or left <= 0:
                break
    if left:
        # Gone between the two reads (evicted): the length said cannot be kept; cut the
        # connection rather than hand out a WAV whose header lies.
        raise TaskNotFound(f"Task {task_id} was forgotten while its audio was being sent.")


def _cues(words: Sequence[Word]) -> list[list[Word]]:
    cues: list[list[Word]] = []
    cue: list[Word] = []
    for word in words:
        if not word[2]:
            continue
        cue.append(word)
        if len(cue) >= MAX_CUE_WORDS or word[2].rstrip("".join(_CLOSERS))[-1:] in _CLAUSE_ENDS:
            cues.append(cue)
            cue = []
    if cue:
        cues.append(cue)
    return cues


def _separator(before: str, after: str) -> str:
    """No space between two words of a language written without them (Japanese)."""
    return "" if _unspaced(before[-1]) and _unspaced(after[0]) else " "


def _unspaced(char: str) -> bool:
    name = unicodedata.name(char, "")
    return name.startswith(("CJK", "HIRAGANA", "KATAKANA", "IDEOGRAPHIC", "FULLWIDTH")) or (
        char in "「」『』（）、。！？"
    )


def _clock(ms: int) -> str:
    hours, rest = divmod(max(0, ms), 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    seconds, millis = divmod(rest, 1000)
    return f"{hours:02d}:{minutes:02d}:{seconds:02d}.{millis:03d}"


def _escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _error(status: int, task_id: str, code: ErrorCode, message: str) -> Response:
    body = dump(OutputError(task_id=task_id, code=code, error=message))
    return Response(body, status_code=status, media_type="application/json")
