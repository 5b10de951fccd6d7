"""A frontend speaking through the gateway, timed, with a real-time playback model.

One utterance, exactly as a browser frontend does it: open ``/ws/input`` and read the
assigned task id, open ``/ws/output/{task_id}`` (the subscriber may come before the task), send
``speak``, then read ``audio_start``, ``audio_chunk`` + one binary PCM frame each, and
``audio_complete``. Both sockets are open before the clock starts, so time to first audio is
the speech path alone (speak sent -> first PCM byte), not the handshakes.

Playback model: the client starts playing when its first frame arrives and plays in real
time from then on; frame ``i`` is due when frames ``0..i-1`` have played. A frame that arrives
after it is due is an underrun (the listener hears a gap); the player then resumes with it.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from websockets.asyncio.client import ClientConnection, connect

__all__ = ["SpeechError", "Utterance", "prepare", "speak_and_listen"]

AUDIBLE = 328  # -40 dBFS of int16 full scale: the first sample above it is "first audio"
OPEN_TIMEOUT_S = 20.0
STREAM_TIMEOUT_S = 120.0  # an utterance that stalls this long fails the run


class SpeechError(Exception):
    """The stack answered with an error or broke the protocol; the message says which."""


@dataclass
class Utterance:
    text: str
    voice: str | None = None  # None: the stack's default voice
    task_id: str = ""
    sent_at: float = 0.0  # time.perf_counter() when speak was sent
    first_pcm_at: float | None = None
    completed_at: float | None = None
    sample_rate: int = 0
    frame_arrivals: list[float] = field(default_factory=list)
    frame_samples: list[int] = field(default_factory=list)
    # the stream's first sample above -40 dBFS (index from the start of the audio)
    first_audible_sample: int | None = None
    # each audio_chunk's level and viseme track (None: the voice sends none)
    frame_tracks: list[tuple[float, list[list[Any]] | None]] = field(default_factory=list)
    # each audio_chunk's word track (None: the voice sends none)
    frame_words: list[list[list[Any]] | None] = field(default_factory=list)
    input_ws: ClientConnection | None = None
    output_ws: ClientConnection | None = None

    @property
    def ttfa_ms(self) -> float | None:
        if self.first_pcm_at is None:
            return None
        return (self.first_pcm_at - self.sent_at) * 1000

    @property
    def ttfa_audible_ms(self) -> float | None:
        """Speak sent -> the listener hears the first audible sample (the playback model of
        :meth:`underruns`: playing starts with the first frame, late frames leave a gap)."""
        if self.first_audible_sample is None or not self.sample_rate:
            return None
        due = self.frame_arrivals[0]
        before = 0  # samples in the frames before this one
        for arrived, samples in zip(self.frame_arrivals, self.frame_samples, strict=True):
            due = max(due, arrived)
            if self.first_audible_sample < before + samples:
                heard = due + (self.first_audible_sample - before) / self.sample_rate
                return (heard - self.sent_at) * 1000
            due += samples / self.sample_rate
            before += samples
        return None

    @property
    def audio_ms(self) -> float:
        return sum(self.frame_samples) / self.sample_rate * 1000 if self.sample_rate else 0.0

    @property
    def rtf(self) -> float | None:
        """Speak sent -> last frame received, over the audio's duration."""
        if self.completed_at is None or not self.audio_ms:
            return None
        return (self.completed_at - self.sent_at) * 1000 / self.audio_ms

    def underruns(self) -> tuple[int, float, float]:
        """(late frames, the latest one's lateness in ms, total silence in ms).

        The player re-synchronises as a Web Audio frontend does (``start = max(next,
        now)``): after a gap it plays the late frame on arrival and carries on from there,
        so one hiccup counts once instead of making every later frame late.
        """
        if not self.frame_arrivals or not self.sample_rate:
            return 0, 0.0, 0.0
        due = self.frame_arrivals[0]
        late = 0
        worst = silence = 0.0
        for arrived, samples in zip(self.frame_arrivals, self.frame_samples, strict=True):
            if arrived > due:
                late += 1
                worst = max(worst, (arrived - due) * 1000)
                silence += (arrived - due) * 1000
                due = arrived
            due += samples / self.sample_rate
        return late, worst, silence

    def summary(self) -> dict[str, Any]:
        late, worst, silence = self.underruns()
        return {
            "chars": len(self.text),
            "ttfa_ms": self.ttfa_ms,
            "ttfa_audible_ms": self.ttfa_audible_ms,
            "rtf": self.rtf,
            "audio_ms": self.audio_ms,
            "frames": len(self.frame_samples),
            "late_frames": late,
            "worst_late_ms": worst,
            "silence_ms": silence,
        }


async def prepare(gateway_ws: str, text: str) -> Utterance:
    """Open both sockets (input, then output for the assigned task id); nothing sent yet."""
    utterance = Utterance(text)
    utterance.input_ws = await _connect(f"{gateway_ws}/ws/input")
    assigned = await _json(utterance.input_ws, "the input handler's greeting")
    if assigned.get("action") != "task_id_assigned" or not assigned.get("task_id"):
        await close(utterance)
        raise SpeechError(f"expected task_id_assigned on /ws/input, got {assigned}")
    utterance.task_id = assigned["task_id"]
    utterance.output_ws = await _connect(f"{gateway_ws}/ws/output/{utterance.task_id}")
    return utterance


async def speak_and_listen(utterance: Utterance) -> Utterance:
    """Send speak on the prepared sockets, receive the whole stream, close both sockets."""
    assert utterance.input_ws is not None and utterance.output_ws is not None, "prepare first"
    try:
        async with asyncio.timeout(STREAM_TIMEOUT_S):
            utterance.sent_at = time.perf_counter()
            speak = {"type": "speak", "text": utterance.text}
            if utterance.voice is not None:
                speak["voice"] = utterance.voice
            await utterance.input_ws.send(json.dumps(speak))
            # Watch /ws/input meanwhile: an error there (tts_unavailable) must end the wait
            # now, not when the output handler gives up on a task that never comes.
            tasks = {
                asyncio.create_task(_expect_queued(utterance.input_ws)),
                asyncio.create_task(_listen(utterance, utterance.output_ws)),
            }
            try:
                done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
                for task in done:
                    task.result()  # re-raises the first failure
            finally:
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
    except TimeoutError as exc:
        raise SpeechError(
            f"task {utterance.task_id}: no audio_complete within {STREAM_TIMEOUT_S:.0f} s "
            f"({len(utterance.frame_samples)} frames so far)"
        ) from exc
    finally:
        await close(utterance)
    return utterance


async def close(utterance: Utterance) -> None:
    for ws in (utterance.output_ws, utterance.input_ws):
        if ws is not None:
            await ws.close()


async def _expect_queued(ws: ClientConnection) -> None:
    answer = await _json(ws, "the input handler's answer to speak")
    if answer.get("type") == "error":
        raise SpeechError(f"/ws/input answered speak with {answer}")


async def _listen(utterance: Utterance, ws: ClientConnection) -> None:
    clock = time.perf_counter
    arrivals = utterance.frame_arrivals
    expecting_pcm = False
    async for message in ws:
        if isinstance(message, bytes):
            now = clock()
            if not expecting_pcm:
                raise SpeechError(f"task {utterance.task_id}: PCM without audio_chunk before it")
            if utterance.first_pcm_at is None:
                utterance.first_pcm_at = now
            arrivals.append(now)
            if utterance.first_audible_sample is None:
                at = _first_audible(message)
                if at is not None:
                    utterance.first_audible_sample = sum(utterance.frame_samples) + at
            utterance.frame_samples.append(len(message) // 2)
            expecting_pcm = False
            continue
        event = json.loads(message)
        match event.get("type"):
            case "audio_start":
                utterance.sample_rate = int(event["sample_rate"])
            case "audio_chunk":
                expecting_pcm = True
                utterance.frame_tracks.append((float(event["level"]), event.get("visemes")))
                utterance.frame_words.append(event.get("words"))
            case "audio_complete":
                utterance.completed_at = clock()
                return
            case _:
                raise SpeechError(f"task {utterance.task_id}: the output stream sent {event}")
    raise SpeechError(f"task {utterance.task_id}: output closed before audio_complete")


def _first_audible(pcm: bytes) -> int | None:
    loud = np.flatnonzero(np.abs(np.frombuffer(pcm, dtype="<i2").astype(np.int32)) > AUDIBLE)
    return int(loud[0]) if loud.size else None


async def _connect(url: str) -> ClientConnection:
    try:
        return await connect(
            url, compression=None, max_size=None, ping_interval=None, open_timeout=OPEN_TIMEOUT_S
        )
    except (OSError, TimeoutError) as exc:
        raise SpeechError(f"cannot open {url}: {exc}") from exc


async def _json(ws: ClientConnection, what: str) -> dict[str, Any]:
    message = await ws.recv()
    if not isinstance(message, str):
        raise SpeechError(f"expected JSON from {what}, got {len(message)} binary bytes")
    event: dict[str, Any] = json.loads(message)
    return event
