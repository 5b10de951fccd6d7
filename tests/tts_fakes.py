"""Test doubles for the TTS worker tests: an ingest endpoint standing in for the output
handler (real WebSocket server, records what the worker sends), engines that block or fail
on cue, and a running worker with helpers to submit and wait."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import httpx
from starlette.applications import Starlette
from starlette.routing import WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

from aivtuber_common.config import Settings, SineVoice, TtsWorkerSettings, VoiceSettings
from aivtuber_common.health import VoiceDescription, VoiceState, WorkerHealth
from aivtuber_common.internal import (
    INGEST_PATH,
    IngestMessageAdapter,
    TaskEnd,
    TaskOpen,
    decode_frame,
)
from aivtuber_common.visemes import Track
from aivtuber_common.words import WordTrack
from aivtuber_tts import create_app
from aivtuber_tts.engines import Engine, LocalEngine, build_engine
from tests.support import RunningServer, run_server

WAIT_S = 15.0


@dataclass
class Frame:
    chunk_id: int
    level: float
    pcm: bytes
    visemes: Track | None = None
    words: WordTrack | None = None


@dataclass
class RecordedTask:
    open: TaskOpen
    frames: list[Frame] = field(default_factory=list)
    end: TaskEnd | None = None
    frames_after_end: int = 0


class IngestRecorder:
    """``/internal/ingest`` that records every message, per task and in arrival order."""

    def __init__(self, token: str | None = None, wait_s: float = WAIT_S) -> None:
        self.token = token
        self.wait_s = wait_s  # how long wait_for waits: longer for a real neural voice
        self.url = ""  # ws://127.0.0.1:<port> once running
        self.tasks: dict[str, RecordedTask] = {}
        self.log: list[tuple[str, str]] = []  # (kind, task_id) in arrival order
        self.connections = 0
        # Only goes up: a test waits on it, not on ``connections`` touching 0, a state that
        # lasts only until the worker's reconnect (~100 ms) and is missed on a loaded machine.
        self.disconnects = 0
        self.authorization: list[str | None] = []
        self.drop_after_frames: int | None = None  # close the socket after this many frames
        self._changed = asyncio.Condition()
        self.app = Starlette(routes=[WebSocketRoute(INGEST_PATH, self._endpoint)])

    async def wait_for(self, predicate: Callable[[], bool]) -> None:
        async with asyncio.timeout(self.wait_s), self._changed:
            await self._changed.wait_for(predicate)

    async def ended(self, task_id: str) -> RecordedTask:
        await self.wait_for(lambda: self._end_of(task_id) is not None)
        return self.tasks[task_id]

    def _end_of(self, task_id: str) -> TaskEnd | None:
        task = self.tasks.get(task_id)
        return task.end if task else None

    async def _endpoint(self, websocket: WebSocket) -> None:
        self.authorization.append(websocket.headers.get("authorization"))
        if self.token and websocket.headers.get("authorization") != f"Bearer {self.token}":
            await websocket.close(4401)
            return
        await websocket.accept()
        await self._note(lambda: setattr(self, "connections", self.connections + 1))
        frames = 0
        try:
            while True:
                message = await websocket.receive()
                if message["type"] == "websocket.disconnect":
                    break
                if (data := message.get("bytes")) is not None:
                    task_id, chunk_id, level, pcm, visemes, words = decode_frame(data)
                    frame = Frame(chunk_id, level, bytes(pcm), visemes, words)
                    await self._note(lambda t=task_id, f=frame: self._frame(t, f))
                    frames += 1
                    if self.drop_after_frames is not None and frames >= self.drop_after_frames:
                        self.drop_after_frames = None
                        await websocket.close(1011)
                        break
                else:
                    event = IngestMessageAdapter.validate_json(message["text"])
                    await self._note(lambda event=event: self._control(event))
        except WebSocketDisconnect:
            pass
        finally:
            await self._note(self._disconnected)

    async def _note(self, change: Callable[[], None]) -> None:
        async with self._changed:
            change()
            self._changed.notify_all()

    def _disconnected(self) -> None:
        self.connections -= 1
        self.disconnects += 1

    def _frame(self, task_id: str, frame: Frame) -> None:
        task = self.tasks[task_id]
        if task.end is not None:
            task.frames_after_end += 1
        task.frames.append(frame)
        self.log.append(("frame", task_id))

    def _control(self, event: TaskOpen | TaskEnd) -> None:
        if isinstance(event, TaskOpen):
            self.tasks[event.task_id] = RecordedTask(open=event)
            self.log.append(("open", event.task_id))
        else:
            self.tasks[event.task_id].end = event
            self.log.append(("end", event.task_id))


class GatedEngine(LocalEngine):
    """A tone engine whose pieces after the first wait until ``release`` is set, and which
    raises on cue: lets a test hold a task mid-stream deterministically."""

    name = "gated"

    def __init__(self, sample_rate: int = 16000, fail_on_piece: int | None = None) -> None:
        self.sample_rate = sample_rate
        self.warmup = False
        self.release = threading.Event()
        self.fail_on_piece = fail_on_piece
        self.pieces_started = 0
        self.piece_started = threading.Event()  # set when a gated piece is in flight

    def synthesize_piece(self, piece: str) -> bytes:
        index = self.pieces_started
        self.pieces_started += 1
        if self.fail_on_piece == index:
            raise RuntimeError("the model ran out of tea")
        if index > 0:
            self.piece_started.set()
            if not self.release.wait(WAIT_S):
                raise RuntimeError("the test never released the gated engine")
        # 100 ms of a loud square-ish tone per piece.
        samples = self.sample_rate // 10
        return (b"\x00\x40\x00\xc0" * (samples // 2))[: samples * 2]


def sine_settings(recorder_url: str, token: str | None = None, **worker: Any) -> Settings:
    voices = worker.pop("voices", {"sine": SineVoice(ms_per_char=20.0, sample_rate=22050)})
    return Settings(
        internal_token=token,
        tts_worker=TtsWorkerSettings(
            output_handler_url=recorder_url,
            voices=voices,
            default_voice=worker.pop("default_voice", next(iter(voices))),
            **worker,
        ),
    )


def factory_with(engines: dict[str, Engine]) -> Callable[..., Engine]:
    """An engine factory that hands out the given engines and builds the others."""

    def build(voice_id: str, voice: VoiceSettings, **kwargs: Any) -> Engine:
        return engines[voice_id] if voice_id in engines else build_engine(voice_id, voice, **kwargs)

    return build


class WorkerClient:
    def __init__(self, server: RunningServer, client: httpx.AsyncClient) -> None:
        self.server = server
        self.http = client

    async def submit(
        self, text: str, voice: str | None = None, task_id: str | None = None, **kw: Any
    ) -> httpx.Response:
        body = {"task_id": task_id or str(uuid.uuid4()), "text": text}
        if voice is not None:
            body["voice"] = voice
        return await self.http.post("/v1/tasks", json=body, **kw)

    async def health(self) -> httpx.Response:
        return await self.http.get("/health")

    async def wait_health(self, predicate: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
        """Poll /health until ``predicate`` holds (the worker pushes no events to wait on)."""
        async with asyncio.timeout(WAIT_S):
            while True:
                body = (await self.health()).json()
                if predicate(body):
                    return body
                await asyncio.sleep(0.02)


@contextlib.asynccontextmanager
async def running_worker(
    settings: Settings, wait_ready: bool = True, **app_kwargs: Any
) -> AsyncIterator[WorkerClient]:
    async with (
        run_server(create_app(settings, **app_kwargs)) as server,
        httpx.AsyncClient(base_url=server.http_url, timeout=WAIT_S) as client,
    ):
        worker = WorkerClient(server, client)
        if wait_ready:
            await worker.wait_health(lambda body: body["status"] == "ok")
        yield worker


@contextlib.asynccontextmanager
async def running_recorder(
    token: str | None = None, wait_s: float = WAIT_S, **overrides: Any
) -> AsyncIterator[IngestRecorder]:
    recorder = IngestRecorder(token, wait_s)
    async with run_server(recorder.app, **overrides) as server:
        recorder.url = server.ws_url
        yield recorder


def worker_health(
    status: Literal["ok", "starting", "degraded"] = "ok",
    voices: dict[str, str] | None = None,
    *,
    default_voice: str | None = "sine",
    running: int = 0,
    queued: int = 0,
    max_concurrent: int = 1,
    name: str | None = None,
) -> WorkerHealth:
    """A worker's /health (or heartbeat) as a real worker would send it; ``voices`` maps a
    voice id to its state (default: ``sine`` ready)."""
    states = {"sine": "ready"} if voices is None else voices
    return WorkerHealth(
        status=status,
        voices=[
            VoiceDescription(id=voice, engine="sine", sample_rate=16000, state=VoiceState(state))
            for voice, state in states.items()
        ],
        default_voice=default_voice,
        running=running,
        queued=queued,
        capacity=max_concurrent * 2,
        max_concurrent=max_concurrent,
        ingest_connected=True,
        name=name,
    )
