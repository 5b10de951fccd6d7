"""A task's audio.wav and captions.vtt cost the output handler frames, not copies of the
task's audio per client.

Both routes used to gather the task's whole PCM per request (``b"".join`` then the WAV
around it: two copies each), so N clients asking for one long task (a 20000-character
stream is about 20 minutes of audio) cost 2N copies of it at once. Now a waiting request
keeps only the word track and the WAV is streamed frame by frame from a second read.
Driven through the real routes over a real :class:`TaskStore`; Python's allocations are
counted with tracemalloc (no clock).
"""

from __future__ import annotations

import asyncio
import io
import tracemalloc
import uuid
import wave
from typing import Any

from starlette.applications import Starlette

from aivtuber_common.internal import TaskEnd, TaskOpen
from aivtuber_output.captions import task_file_routes
from aivtuber_output.store import TaskStore

RATE = 24000
FRAME = b"\x01\x02" * (RATE // 10)  # 100 ms
FRAMES = 400  # 40 s: 1.9 MB of audio
CLIENTS = 8


def store_with_task(task_id: str) -> TaskStore:
    store = TaskStore(
        task_wait_s=5, task_ttl_s=60, task_timeout_s=60, max_buffered_bytes=64 * 2**20
    )
    opened = TaskOpen(task_id=task_id, text="hi", voice="v", engine="sine", sample_rate=RATE)
    store.open(opened)
    for chunk_id in range(FRAMES):
        store.append(task_id, chunk_id, 0.1, FRAME, None, [(0, 50, f"w{chunk_id}")])
    store.end(TaskEnd(task_id=task_id, status="completed"))
    return store


async def get(app: Starlette, path: str, keep: bool) -> tuple[int, bytes]:
    """One GET through the ASGI app; the body is kept only when asked (a client that
    reads and drops it costs nothing here)."""
    scope: dict[str, Any] = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": b"",
        "headers": [(b"host", b"127.0.0.1")],
        "client": ("127.0.0.1", 40000),
        "server": ("127.0.0.1", 8002),
    }
    status, parts = 0, []
    requested = False

    async def receive() -> dict[str, Any]:
        nonlocal requested
        if not requested:
            requested = True
            return {"type": "http.request", "body": b"", "more_body": False}
        await asyncio.Event().wait()  # the client never hangs up
        raise AssertionError("not reached")

    async def send(message: dict[str, Any]) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]
        elif message["type"] == "http.response.body" and keep:
            parts.append(message.get("body", b""))
        await asyncio.sleep(0)  # a socket's write: other requests run meanwhile

    await app(scope, receive, send)
    return status, b"".join(parts)


async def test_clients_of_one_long_task_do_not_each_copy_its_audio() -> None:
    task_id = str(uuid.uuid4())
    store = store_with_task(task_id)
    app = Starlette(routes=task_file_routes(store, None))
    audio_bytes = FRAMES * len(FRAME)
    try:
        # The answer is right: the whole audio in a WAV, and captions with every word.
        status, body = await get(app, f"/v1/tasks/{task_id}/audio.wav", keep=True)
        assert status == 200
        with wave.open(io.BytesIO(body)) as reader:
            assert reader.getframerate() == RATE
            assert reader.readframes(reader.getnframes()) == FRAME * FRAMES
        status, vtt = await get(app, f"/v1/tasks/{task_id}/captions.vtt", keep=True)
        assert status == 200 and f"w{FRAMES - 1}".encode() in vtt

        tracemalloc.start()
        try:
            paths = [f"/v1/tasks/{task_id}/{file}" for file in ("audio.wav", "captions.vtt")]
            answers = await asyncio.gather(
                *(get(app, paths[n % 2], keep=False) for n in range(CLIENTS))
            )
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert [status for status, _ in answers] == [200] * CLIENTS
        # Before: two copies of the audio per WAV client (16 here) at the peak.
        assert peak < audio_bytes, f"{peak} bytes for {CLIENTS} clients of {audio_bytes}"
    finally:
        store.close()
