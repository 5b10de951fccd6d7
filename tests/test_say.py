"""``aivtuber-say`` against a scripted stand-in for the gateway (real sockets).

The whole stack behind the real gateway is exercised in tests/test_end_to_end.py; here a
small app speaks the frontend protocol from a script so every answer, good or bad, is
under the test's control.
"""

from __future__ import annotations

import asyncio
import io
import json
import uuid
import wave
from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.routing import WebSocketRoute
from starlette.websockets import WebSocket

from aivtuber_common.say import SayError, main, say
from tests.support import free_port, run_server

RATE = 16000
FRAMES = [bytes([n, 0]) * 640 for n in range(1, 6)]


class ScriptedGateway:
    """Answers /ws/input and /ws/output/{task_id} as told."""

    def __init__(self, speak_reply: str = "queued", stream: str = "ok") -> None:
        self.speak_reply = speak_reply
        self.stream = stream
        self.task_id = str(uuid.uuid4())
        self.spoken: list[dict[str, Any]] = []
        self.app = Starlette(
            routes=[
                WebSocketRoute("/ws/input", self.input),
                WebSocketRoute("/ws/output/{task_id}", self.output),
            ]
        )

    async def input(self, ws: WebSocket) -> None:
        await ws.accept()
        await ws.send_json(
            {"type": "system", "action": "task_id_assigned", "task_id": self.task_id}
        )
        self.spoken.append(json.loads(await ws.receive_text()))
        if self.speak_reply == "queued":
            await ws.send_json(
                {
                    "type": "system",
                    "action": "upload_processed",
                    "status": "queued",
                    "task_id": self.task_id,
                }
            )
        else:
            await ws.send_json(
                {"type": "error", "code": self.speak_reply, "message": "No worker is available."}
            )
        while (await ws.receive())["type"] != "websocket.disconnect":
            pass

    async def output(self, ws: WebSocket) -> None:
        await ws.accept()
        task_id = ws.path_params["task_id"]
        await ws.send_json(
            {
                "type": "audio_start",
                "status": "success",
                "task_id": task_id,
                "content": "Hi",
                "audio_present": True,
                "format": "pcm_s16le",
                "sample_rate": RATE,
                "channels": 1,
                "voice": "sine",
                "engine": "sine",
            }
        )
        for chunk_id, pcm in enumerate(FRAMES):
            if self.stream == "skip" and chunk_id == 2:
                continue
            await ws.send_json(
                {
                    "type": "audio_chunk",
                    "task_id": task_id,
                    "chunk_id": chunk_id,
                    "total_chunks": None,
                    "samples": len(pcm) // 2,
                    "level": 0.25,
                }
            )
            await ws.send_bytes(pcm)
            if self.stream == "fail" and chunk_id == 1:
                await ws.send_json(
                    {
                        "type": "error",
                        "status": "error",
                        "task_id": task_id,
                        "code": "worker_lost",
                        "error": "The TTS worker's connection was lost.",
                    }
                )
                await ws.close(1011)
                return
        await ws.send_json(
            {
                "type": "audio_complete",
                "task_id": task_id,
                "chunks": len(FRAMES),
                "duration_ms": 200.0,
                "cancelled": False,
            }
        )
        await ws.close(1000)


async def run_main(argv: list[str]) -> int:
    # main() runs its own event loop, so it goes to a thread while the server uses this one.
    return await asyncio.to_thread(main, argv)


async def test_say_writes_the_whole_stream_as_a_wav_and_prints_the_latency(
    tmp_path: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    gateway = ScriptedGateway()
    target = tmp_path / "hello.wav"
    async with run_server(gateway.app) as server:
        code = await run_main(["Hello", "-o", str(target), "--url", server.ws_url, "--voice", "v"])
    assert code == 0
    assert gateway.spoken == [{"type": "speak", "text": "Hello", "voice": "v"}]
    with wave.open(io.BytesIO(target.read_bytes())) as wav:
        assert wav.getframerate() == RATE
        assert wav.readframes(wav.getnframes()) == b"".join(FRAMES)
    out = capsys.readouterr().out
    assert "time to first audio:" in out and "real-time factor:" in out
    assert "5 chunks" in out


async def test_say_reports_the_result_fields() -> None:
    gateway = ScriptedGateway()
    async with run_server(gateway.app) as server:
        result = await say("Hello", server.ws_url)
    assert result.task_id == gateway.task_id
    assert result.chunks == 5 and result.pcm == b"".join(FRAMES)
    assert result.duration_s == pytest.approx(len(result.pcm) / 2 / RATE)
    assert 0 < result.first_audio_s <= result.total_s
    assert result.levels == [0.25] * 5


async def test_say_exits_1_with_the_servers_error_when_no_worker_is_available(
    tmp_path: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    gateway = ScriptedGateway(speak_reply="tts_unavailable")
    async with run_server(gateway.app) as server:
        code = await run_main(["Hi", "-o", str(tmp_path / "x.wav"), "--url", server.ws_url])
    assert code == 1
    assert "tts_unavailable: No worker is available." in capsys.readouterr().err
    assert not (tmp_path / "x.wav").exists()


async def test_say_raises_the_stream_error_when_the_task_fails() -> None:
    gateway = ScriptedGateway(stream="fail")
    async with run_server(gateway.app) as server:
        with pytest.raises(SayError) as caught:
            await say("Hello", server.ws_url)
    assert caught.value.code == "worker_lost"


async def test_say_refuses_a_stream_with_a_missing_chunk() -> None:
    gateway = ScriptedGateway(stream="skip")
    async with run_server(gateway.app) as server:
        with pytest.raises(SayError, match="chunk 3 arrived when 2 was due"):
            await say("Hello", server.ws_url)


async def test_say_explains_an_unreachable_gateway(
    tmp_path: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"ws://127.0.0.1:{free_port()}"
    code = await run_main(["Hi", "-o", str(tmp_path / "x.wav"), "--url", url])
    assert code == 1
    assert f"cannot reach the gateway at {url}" in capsys.readouterr().err
