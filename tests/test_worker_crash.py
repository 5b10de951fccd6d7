"""A TTS worker process killed (SIGKILL) mid-task: no goodbye on any socket.

The worker runs as a real process; its voice is an ``http`` engine pointed at a remote TTS
server played by this test, which streams the first half second of audio and then holds
the response open. So the task is reliably mid-stream when the worker dies, with no sleeps.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import numpy as np
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import StreamingResponse
from starlette.routing import Route

from aivtuber_common.config import (
    GatewaySettings,
    InputHandlerSettings,
    OutputHandlerSettings,
    RouteSettings,
    Settings,
)
from aivtuber_common.token_file import with_internal_token
from aivtuber_gateway import create_app as gateway_app
from aivtuber_input import create_app as input_app
from aivtuber_output import create_app as output_app
from tests.frontend import Heard, ask, frontend, listen, speak
from tests.support import RunningServer, listening_port, run_server

ROOT = Path(__file__).resolve().parent.parent
RATE = 16000
TIMEOUT_S = 30.0


class HoldingTts:
    """A remote TTS server: half a second of tone, then the body stays open until released."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        tone = 8000 * np.sin(2 * np.pi * 220 * np.arange(RATE // 2) / RATE)
        self.pcm = tone.astype("<i2").tobytes()
        self.app = Starlette(routes=[Route("/tts", self.tts, methods=["POST"])])

    async def tts(self, request: Request) -> StreamingResponse:
        body = await request.json()

        async def stream() -> AsyncIterator[bytes]:
            yield self.pcm
            if "HOLD" in body["text"]:
                await self.release.wait()

        return StreamingResponse(stream(), media_type="application/octet-stream")


@contextlib.asynccontextmanager
async def worker_process(
    tmp: Path, port: int, output: RunningServer, tts: RunningServer
) -> AsyncIterator[tuple[asyncio.subprocess.Process, int]]:
    """The worker as a process on ``port`` (0: the kernel picks one); with the port bound."""
    config = {
        "logging": {"format": "json"},
        "tts_worker": {
            "port": port,
            "output_handler_url": output.ws_url,
            "default_voice": "remote",
            "voices": {
                "remote": {
                    "engine": "http",
                    "url": f"{tts.http_url}/tts",
                    "response_format": "pcm",
                    "sample_rate": RATE,
                }
            },
        },
    }
    path = tmp / f"worker-{port}.json"
    path.write_text(json.dumps(config))
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        str(ROOT / "services/tts-worker/main.py"),
        "--config",
        str(path),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
        env={**os.environ, "AIVTUBER_CONFIG": ""},
    )
    drain: asyncio.Task[bytes] | None = None
    try:
        assert process.stdout is not None
        bound = await listening_port(process.stdout)
        # Keep reading its log so that a full pipe never blocks it.
        drain = asyncio.create_task(process.stdout.read())
        yield process, bound
    finally:
        if process.returncode is None:
            process.kill()
        async with asyncio.timeout(TIMEOUT_S):
            await process.wait()
            if drain is not None:
                await drain


async def wait_healthy(url: str) -> None:
    async with httpx.AsyncClient() as http, asyncio.timeout(TIMEOUT_S):
        while True:
            with contextlib.suppress(httpx.TransportError):
                if (await http.get(f"{url}/health")).status_code == 200:
                    return
            await asyncio.sleep(0.05)


async def test_a_killed_worker_fails_its_stream_at_once_and_a_restarted_one_is_used_again(
    tmp_path: Path,
) -> None:
    tts = HoldingTts()
    async with contextlib.AsyncExitStack() as stack:
        remote = await stack.enter_async_context(run_server(tts.app))
        stack.callback(tts.release.set)
        output = await stack.enter_async_context(
            run_server(output_app(Settings(output_handler=OutputHandlerSettings())))
        )
        # The worker first, on a port the kernel picks, so that the handler can be told it.
        process, port = await stack.enter_async_context(worker_process(tmp_path, 0, output, remote))
        worker_url = f"http://127.0.0.1:{port}"
        handler = await stack.enter_async_context(
            run_server(
                # The worker process reads the machine's token file: so do these.
                input_app(
                    with_internal_token(
                        Settings(input_handler=InputHandlerSettings(workers=[worker_url]))
                    )
                )
            )
        )
        routes = {
            "input": RouteSettings(path="/ws/input", backends=[handler.ws_url]),
            "output": RouteSettings(path="/ws/output/{task_id}", backends=[output.ws_url]),
        }
        gateway = await stack.enter_async_context(
            run_server(
                gateway_app(with_internal_token(Settings(gateway=GatewaySettings(routes=routes))))
            )
        )
        url = gateway.ws_url

        await wait_healthy(worker_url)
        async with frontend(url) as (ws, _):
            finished_id = await speak(ws, "A short line that finishes.")
            finished = await listen(url, finished_id)
            doomed_id = await speak(ws, "This line will HOLD until the worker dies.")
            doomed = Heard()
            listening = asyncio.create_task(listen(url, doomed_id, doomed))
            await asyncio.wait_for(doomed.first_frame.wait(), TIMEOUT_S)
            process.send_signal(signal.SIGKILL)
            await asyncio.wait_for(listening, TIMEOUT_S)

        assert doomed.end is not None and doomed.end["type"] == "error", doomed.end
        assert doomed.end["code"] == "worker_lost"
        assert doomed.end["status"] == "error" and doomed.end["error"]
        assert doomed.close_code == 1011
        assert len(doomed.pcm) > 0
        # A task that finished before the crash is still served whole, identical bytes.
        assert finished.end is not None and finished.end["type"] == "audio_complete"
        again = await listen(url, finished_id)
        assert again.audio == finished.audio and len(again.audio) == len(tts.pcm)

        async with frontend(url) as (ws, _):
            # No worker now: an answer at once, never a hang.
            reply = await asyncio.wait_for(ask(ws, {"type": "speak", "text": "Anyone?"}), TIMEOUT_S)
            assert reply["code"] == "tts_unavailable", reply
            # The worker comes back on its port: the input handler uses it again.
            # The same port again (the killed worker's; the handler knows only that one).
            async with worker_process(tmp_path, port, output, remote):
                await wait_healthy(worker_url)
                async with asyncio.timeout(TIMEOUT_S):
                    while True:
                        reply = await ask(ws, {"type": "speak", "text": "Back again."})
                        if reply.get("action") == "upload_processed":
                            break
                        assert reply["code"] == "tts_unavailable", reply
                        await asyncio.sleep(0.05)
                back = await listen(url, reply["task_id"])
        assert back.end is not None and back.end["type"] == "audio_complete"
        assert back.audio == tts.pcm
