"""``./benchmark --scenario stream``: an LLM's reply spoken as it is written, three ways.

A simulated LLM writes each reply of ``bench/texts/replies-en.txt`` token by token (a token:
a word piece of up to four letters with its leading space, or one punctuation mark, about
what a BPE tokenizer makes of English) at 15 and 50 tokens/s. For ``heart`` and ``joe``
(one stack each, config.json's settings), each reply is spoken:

- **stream**: ``speak`` with ``"stream": true`` before the first token, each token an
  ``append`` as it is written, ``end`` after the last;
- **whole**: the whole reply as one ``speak`` once the last token is written;
- **sentences**: each sentence as its own ``speak`` as soon as it is written (a new task,
  a new output socket and a new jitter buffer each).

Measured from the moment the first token is written: the time to the first *audible*
sample (above -40 dBFS) as a listener hears it who starts playing when the first frame
arrives and plays in real time (as in the voices scenario); for **stream**, that time
minus the moment the first clause boundary was written (the token after which the worker's
splitter could first cut, ``aivtuber_tts.splitting.ready_end``). Late frames: frames that
arrive after the listener needed them, once playing, for a listener that starts 100 ms
after the first frame (a 100 ms jitter buffer); silence: how long the listener waited
for them (for **sentences** also the waits between one sentence's end and the next one's
start, each sentence starting 100 ms after its first frame). Late frames in a stream are
clause joins where the next clause was not ready in time.

Flush: the first words of each reply with no boundary, then an ``append`` with
``"flush": true``; the time from the flush to the first audible sample.

``tts_worker.stream_max_wait_ms``: the default was chosen from :func:`max_wait_table`, a
simulation (no stack) of the worker's :class:`~aivtuber_tts.streaming.TextFeed` on the same
token schedules: for candidate waits, how soon the first text reaches the engine, and how
often the first cut is made without a boundary (mid-clause, worse prosody).
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import uvloop
from websockets.asyncio.client import ClientConnection, connect

from . import stack as stack_mod
from .procs import REPO_ROOT, BenchError
from .report import markdown_table
from .speech_client import _first_audible
from .speech_path import read_lines
from .stats import percentile

__all__ = ["StreamParams", "max_wait_table", "run_stream", "stream_tables", "tokens"]

REPLIES = REPO_ROOT / "bench" / "texts" / "replies-en.txt"
JITTER_S = 0.1  # the listener's starting jitter buffer
TIMEOUT_S = 120.0
MODES = ("stream", "whole", "sentences")
FLUSH_WORDS = 7
_TOKEN = re.compile(r"\s*[A-Za-z0-9']{1,4}|\s*[^\sA-Za-z0-9']|\s+")
_SENTENCE = re.compile(r"""[.!?…]+["')\]]*(?=\s)""")


@dataclass(frozen=True)
class StreamParams:
    replies: int = 0  # 0: all
    rates: tuple[int, ...] = (15, 50)  # tokens per second
    voices: tuple[str, ...] = ("heart", "joe")
    max_waits_ms: tuple[int, ...] = (100, 250, 500, 750, 1000, 1500)

    @classmethod
    def quick(cls) -> StreamParams:
        return cls(replies=4)

    @classmethod
    def smoke(cls) -> StreamParams:
        return cls(replies=1, rates=(50,), voices=("sine",), max_waits_ms=(250,))


def tokens(text: str) -> list[str]:
    """``text`` as an LLM writes it: joined, the tokens give it back exactly."""
    found = _TOKEN.findall(text)
    assert "".join(found) == text, "the tokenizer lost text"
    return found


def first_boundary(pieces: list[str]) -> int:
    """The index of the token after which the worker's splitter can first cut."""
    from aivtuber_tts.splitting import ready_end

    text = ""
    for index, piece in enumerate(pieces):
        text += piece
        if ready_end(text):
            return index
    return len(pieces) - 1


def run_stream(
    params: StreamParams, work_dir: Path, say: Callable[[str], None] = print
) -> dict[str, Any]:
    replies = read_lines(REPLIES)
    if params.replies:
        replies = replies[: params.replies]
    result: dict[str, Any] = {
        "params": asdict(params),
        # The simulation is cheap: always on every reply.
        "max_wait": max_wait_table(read_lines(REPLIES), params.rates, params.max_waits_ms),
        "voices": {},
    }
    for voice in params.voices:
        say(f"stream: {voice}: starting the stack")
        voice_dir = work_dir / f"stream-{voice}"
        voice_dir.mkdir(exist_ok=True)
        with stack_mod.Stack(voice_dir, voice) as stack:
            rows: list[dict[str, Any]] = []
            for rate in params.rates:
                say(f"stream: {voice}: {len(replies)} replies at {rate} tokens/s, three ways")
                for index, reply in enumerate(replies):
                    # The three ways interleaved per reply, in a rotating order.
                    order = MODES[index % 3 :] + MODES[: index % 3]
                    for mode in order:
                        row = _run(_reply(stack.gateway_ws, mode, reply, rate))
                        rows.append({"rate": rate, "reply": index, "mode": mode, **row})
            say(f"stream: {voice}: flush without a boundary")
            flushes = [_run(_flush(stack.gateway_ws, reply)) for reply in replies]
            wait_ms = stack.settings.tts_worker.stream_max_wait_ms
        result["voices"][voice] = {
            "rows": rows,
            "flush_ms": flushes,
            "summary": _summarise(rows, params.rates),
            "flush_p50_ms": percentile([f for f in flushes if f is not None], 50),
            "stream_max_wait_ms": wait_ms,
        }
    return result


# --- one reply ----------------------------------------------------------------------------


@dataclass
class _Heard:
    """One task's frames as they arrived."""

    sample_rate: int = 0
    arrivals: list[float] = field(default_factory=list)
    samples: list[int] = field(default_factory=list)
    first_audible: int | None = None  # sample index

    def playback(self, start: float) -> tuple[float | None, float, int, float]:
        """Played from ``start`` in real time (late frames played on arrival): (when the
        first audible sample is heard, when playing ends, late frames, silence seconds)."""
        due = start
        heard: float | None = None
        before = late = 0
        silence = 0.0
        for arrived, samples in zip(self.arrivals, self.samples, strict=True):
            if arrived > due:
                late += 1
                silence += arrived - due
                due = arrived
            audible = self.first_audible
            if heard is None and audible is not None and audible < before + samples:
                heard = due + (audible - before) / self.sample_rate
            due += samples / self.sample_rate
            before += samples
        return heard, due, late, silence

    def playback_both(self) -> tuple[float | None, float, int, float]:
        """When the first audible sample is heard playing from the first frame on; when
        playing ends, late frames and silence with the 100 ms jitter buffer."""
        heard = self.playback(self.arrivals[0])[0]
        return heard, *self.playback(self.arrivals[0] + JITTER_S)[1:]


async def _reply(gateway: str, mode: str, reply: str, rate: int) -> dict[str, Any]:
    pieces = tokens(reply)
    async with asyncio.timeout(TIMEOUT_S), _connect(f"{gateway}/ws/input") as ws:
        assigned = json.loads(await ws.recv())["task_id"]
        if mode == "stream":
            return await _streamed(gateway, ws, assigned, pieces, rate)
        if mode == "whole":
            return await _whole(gateway, ws, assigned, pieces, rate)
        return await _sentences(gateway, ws, pieces, rate)


async def _streamed(
    gateway: str, ws: ClientConnection, assigned: str, pieces: list[str], rate: int
) -> dict[str, Any]:
    task_id = await _speak(ws, {"type": "speak", "text": "", "stream": True})
    assert task_id == assigned
    boundary = first_boundary(pieces)
    async with _connect(f"{gateway}/ws/output/{task_id}") as out:
        listener = asyncio.create_task(_hear(out))
        started = time.perf_counter()
        boundary_at = started
        for index, piece in enumerate(pieces):
            await _at(started + index / rate)
            await ws.send(json.dumps({"type": "append", "task_id": task_id, "text": piece}))
            if index == boundary:
                boundary_at = time.perf_counter()
        await ws.send(json.dumps({"type": "end", "task_id": task_id}))
        heard = await listener
    first, _, late, silence = heard.playback_both()
    return {
        "first_audible_ms": _ms(first, started),
        "after_boundary_ms": _ms(first, boundary_at),
        "late_frames": late,
        "silence_ms": silence * 1000,
        "audio_ms": sum(heard.samples) / heard.sample_rate * 1000,
    }


async def _whole(
    gateway: str, ws: ClientConnection, assigned: str, pieces: list[str], rate: int
) -> dict[str, Any]:
    async with _connect(f"{gateway}/ws/output/{assigned}") as out:
        listener = asyncio.create_task(_hear(out))
        started = time.perf_counter()
        await _at(started + (len(pieces) - 1) / rate)  # the last token is written
        await _speak(ws, {"type": "speak", "text": "".join(pieces)})
        heard = await listener
    first, _, late, silence = heard.playback_both()
    return {
        "first_audible_ms": _ms(first, started),
        "late_frames": late,
        "silence_ms": silence * 1000,
        "audio_ms": sum(heard.samples) / heard.sample_rate * 1000,
    }


async def _sentences(
    gateway: str, ws: ClientConnection, pieces: list[str], rate: int
) -> dict[str, Any]:
    listeners: list[asyncio.Task[_Heard]] = []
    started = time.perf_counter()
    written = ""
    spoken = 0  # characters of ``written`` already sent
    for index, piece in enumerate(pieces):
        await _at(started + index / rate)
        written += piece
        ends = [m.end() for m in _SENTENCE.finditer(written, spoken)]
        last = index == len(pieces) - 1
        cut = len(written) if last else (ends[-1] if ends else 0)
        if cut > spoken and written[spoken:cut].strip():
            sentence = written[spoken:cut].strip()
            spoken = cut
            task_id = await _speak(ws, {"type": "speak", "text": sentence})
            listeners.append(asyncio.create_task(_subscribe_and_hear(gateway, task_id)))
    heards = await asyncio.gather(*listeners)
    first: float | None = None
    late = 0
    silence = 0.0
    playing_until: float | None = None
    for heard in heards:
        start = heard.arrivals[0] + JITTER_S
        if playing_until is not None:
            # The next line starts after the one before it and its own jitter buffer.
            silence += max(0.0, start - playing_until)
            start = max(start, playing_until)
        _, playing_until, frames_late, gap = heard.playback(start)
        first = first if first is not None else heard.playback(heard.arrivals[0])[0]
        late += frames_late
        silence += gap
    return {
        "first_audible_ms": _ms(first, started),
        "late_frames": late,
        "silence_ms": silence * 1000,
        "audio_ms": sum(sum(h.samples) / h.sample_rate for h in heards) * 1000,
        "tasks": len(heards),
    }


async def _flush(gateway: str, reply: str) -> float | None:
    """The first words of ``reply`` with no boundary at 50 tokens/s, then a flush: ms from
    the flush to the first audible sample."""
    words = re.sub(r"[^\w' ]", "", reply).split()[:FLUSH_WORDS]
    pieces = tokens(" ".join(words))
    async with asyncio.timeout(TIMEOUT_S), _connect(f"{gateway}/ws/input") as ws:
        await ws.recv()
        task_id = await _speak(ws, {"type": "speak", "text": "", "stream": True})
        async with _connect(f"{gateway}/ws/output/{task_id}") as out:
            # Within stream_max_wait_ms of the first word: only the flush makes it speak.
            started = time.perf_counter()
            for index, piece in enumerate(pieces):
                await _at(started + index / 50)
                await ws.send(json.dumps({"type": "append", "task_id": task_id, "text": piece}))
            flushed = time.perf_counter()
            message = {"type": "append", "task_id": task_id, "text": "", "flush": True}
            await ws.send(json.dumps(message))
            heard = _Heard()
            await _first_heard(out, heard)
            await ws.send(json.dumps({"type": "end", "task_id": task_id}))
    first, *_ = heard.playback(heard.arrivals[0])  # played at once: the flush's own latency
    return _ms(first, flushed)


# --- the client side ----------------------------------------------------------------------


def _connect(url: str) -> Any:
    return connect(url, compression=None, max_size=None, ping_interval=None)


async def _speak(ws: ClientConnection, message: dict[str, Any]) -> str:
    await ws.send(json.dumps(message))
    answer = json.loads(await ws.recv())
    if answer.get("action") != "upload_processed":
        raise BenchError(f"stream: /ws/input answered {answer}")
    return str(answer["task_id"])


async def _subscribe_and_hear(gateway: str, task_id: str) -> _Heard:
    async with _connect(f"{gateway}/ws/output/{task_id}") as out:
        return await _hear(out)


async def _hear(out: ClientConnection, heard: _Heard | None = None) -> _Heard:
    heard = heard or _Heard()
    async for message in out:
        if isinstance(message, bytes):
            _note(heard, message)
            continue
        event = json.loads(message)
        if event["type"] == "audio_start":
            heard.sample_rate = int(event["sample_rate"])
        elif event["type"] == "audio_complete":
            break
        elif event["type"] != "audio_chunk":
            raise BenchError(f"stream: the output stream sent {event}")
    if not heard.arrivals:
        raise BenchError("stream: a task ended without audio")
    return heard


async def _first_heard(out: ClientConnection, heard: _Heard) -> None:
    """Read until the first audible sample has arrived (the flush measurement)."""
    async for message in out:
        if isinstance(message, bytes):
            _note(heard, message)
            if heard.first_audible is not None:
                return
        else:
            event = json.loads(message)
            if event["type"] == "audio_start":
                heard.sample_rate = int(event["sample_rate"])
    raise BenchError("stream: the flushed text was never heard")


def _note(heard: _Heard, pcm: bytes) -> None:
    heard.arrivals.append(time.perf_counter())
    if heard.first_audible is None and (at := _first_audible(pcm)) is not None:
        heard.first_audible = sum(heard.samples) + at
    heard.samples.append(len(pcm) // 2)


async def _at(moment: float) -> None:
    delay = moment - time.perf_counter()
    if delay > 0:
        await asyncio.sleep(delay)


def _ms(moment: float | None, since: float) -> float | None:
    return None if moment is None else (moment - since) * 1000


def _run(coro: Any) -> Any:
    try:
        return uvloop.run(coro)
    except TimeoutError as exc:
        raise BenchError("stream: no answer within the timeout") from exc


# --- summaries and tables -----------------------------------------------------------------


def _summarise(rows: list[dict[str, Any]], rates: tuple[int, ...]) -> dict[str, Any]:
    summary: dict[str, Any] = {}
    for rate in rates:
        by_mode: dict[str, Any] = {}
        for mode in MODES:
            chosen = [row for row in rows if row["rate"] == rate and row["mode"] == mode]

            def col(key: str, rows: list[dict[str, Any]] = chosen) -> list[float]:
                return [row[key] for row in rows if row.get(key) is not None]

            by_mode[mode] = {
                "first_audible_p50_ms": percentile(col("first_audible_ms"), 50),
                "first_audible_p95_ms": percentile(col("first_audible_ms"), 95),
                "after_boundary_p50_ms": percentile(col("after_boundary_ms"), 50),
                "late_frames": sum(col("late_frames")),
                "replies_with_late_frames": sum(1 for v in col("late_frames") if v),
                "silence_p50_ms": percentile(col("silence_ms"), 50),
                "silence_max_ms": max(col("silence_ms"), default=None),
            }
        stream = by_mode["stream"]["first_audible_p50_ms"]
        whole = by_mode["whole"]["first_audible_p50_ms"]
        by_mode["stream_over_whole"] = stream / whole if stream and whole else None
        summary[str(rate)] = by_mode
    return summary


def max_wait_table(
    replies: list[str], rates: tuple[int, ...], waits_ms: tuple[int, ...]
) -> list[dict[str, Any]]:
    """The worker's TextFeed on each reply's token schedule, for each candidate wait (and a
    slow 5 tokens/s LLM): when the first text reaches the engine, p50 ms after the first
    token, and the share of replies whose first cut had no boundary. Nothing is playing yet
    before the first cut, so the listener plays no part in it."""

    rows = []
    for rate in sorted({5, *rates}):
        for wait_ms in waits_ms:
            firsts: list[float] = []
            fragments = 0
            for reply in replies:
                first, fragment = _first_cut(tokens(reply), rate, wait_ms / 1000)
                firsts.append(first)
                fragments += fragment
            rows.append(
                {
                    "rate": rate,
                    "wait_ms": wait_ms,
                    "first_cut_p50_ms": percentile([f * 1000 for f in firsts], 50),
                    "first_cut_without_boundary": fragments / len(replies) if replies else 0,
                }
            )
    return rows


def _first_cut(pieces: list[str], rate: int, wait_s: float) -> tuple[float, bool]:
    """(seconds after the first token when TextFeed first gives the engine text, whether
    that cut came by the clock rather than at a boundary)."""
    from aivtuber_tts.splitting import ready_end
    from aivtuber_tts.streaming import TextFeed

    feed = TextFeed("", wait_s, "en", 0.0)
    for index, piece in enumerate(pieces):
        now = index / rate
        due = feed.due(None)
        # A cut by the clock between the last token and this one, else after this one.
        if due is not None and due <= now and (part := feed.take(due, None)):
            return due, ready_end(part) != len(part)
        feed.add(piece, flush=False, end=False, now=now)
        if part := feed.take(now, None):
            return now, ready_end(part) != len(part)
    return (len(pieces) - 1) / rate, False  # the end of the reply


def stream_tables(stream: dict[str, Any]) -> list[str]:
    parts = ["### Streaming an LLM's reply (`--scenario stream`)"]
    for voice, data in stream["voices"].items():
        rows = []
        for rate, by_mode in data["summary"].items():
            for mode in MODES:
                m = by_mode[mode]
                ratio = by_mode["stream_over_whole"] if mode == "stream" else None
                rows.append(
                    [
                        f"{rate} tok/s, {mode}",
                        _f(m["first_audible_p50_ms"]),
                        _f(m["first_audible_p95_ms"]),
                        _f(m["after_boundary_p50_ms"]),
                        "" if ratio is None else f"{ratio:.2f}",
                        f"{m['late_frames']} ({m['replies_with_late_frames']})",
                        f"{_f(m['silence_p50_ms'])} / {_f(m['silence_max_ms'])}",
                    ]
                )
        parts.append(
            f"`{voice}` (flush without a boundary -> first audible: p50 "
            f"{_f(data['flush_p50_ms'])} ms; stream_max_wait_ms {data['stream_max_wait_ms']})"
        )
        parts.append(
            markdown_table(
                [
                    "rate, way",
                    "first audible p50 ms",
                    "p95 ms",
                    "after 1st boundary p50 ms",
                    "stream ÷ whole",
                    "late frames (replies)",
                    "silence p50 / max ms",
                ],
                rows,
            )
        )
    waits = [
        [
            f"{row['rate']} tok/s",
            str(row["wait_ms"]),
            _f(row["first_cut_p50_ms"]),
            f"{row['first_cut_without_boundary'] * 100:.0f} %",
        ]
        for row in stream["max_wait"]
    ]
    parts.append("`stream_max_wait_ms`: the first cut of each reply, simulated")
    parts.append(
        markdown_table(["rate", "wait ms", "first cut p50 ms", "first cut mid-clause"], waits)
    )
    return parts


def _f(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.0f}"
