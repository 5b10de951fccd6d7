"""A frontend, as the tests play it: speak on /ws/input, listen on /ws/output/{task_id}."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed


@contextlib.asynccontextmanager
async def frontend(url: str) -> AsyncIterator[tuple[ClientConnection, str]]:
    async with connect(f"{url}/ws/input") as ws:
        hello = json.loads(await ws.recv())
        assert hello["action"] == "task_id_assigned"
        yield ws, hello["task_id"]


async def ask(ws: ClientConnection, message: dict[str, Any] | str | bytes) -> dict[str, Any]:
    await ws.send(message if isinstance(message, str | bytes) else json.dumps(message))
    return json.loads(await ws.recv())


async def speak(ws: ClientConnection, text: str, **extra: Any) -> str:
    reply = await ask(ws, {"type": "speak", "text": text, **extra})
    assert reply["action"] == "upload_processed", reply
    return str(reply["task_id"])


@dataclass
class Heard:
    start: dict[str, Any] | None = None
    chunks: list[dict[str, Any]] = field(default_factory=list)
    pcm: list[bytes] = field(default_factory=list)
    end: dict[str, Any] | None = None
    close_code: int | None = None
    first_frame: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def audio(self) -> bytes:
        return b"".join(self.pcm)


async def listen(url: str, task_id: str, heard: Heard | None = None, query: str = "") -> Heard:
    heard = heard or Heard()
    async with connect(f"{url}/ws/output/{task_id}{query}") as ws:
        try:
            async for message in ws:
                if isinstance(message, bytes):
                    assert len(heard.pcm) == len(heard.chunks) - 1, "PCM without its header"
                    heard.pcm.append(message)
                    heard.first_frame.set()
                    continue
                data = json.loads(message)
                match data["type"]:
                    case "audio_start":
                        heard.start = data
                    case "audio_chunk":
                        assert len(heard.pcm) == len(heard.chunks), "header without its PCM"
                        heard.chunks.append(data)
                    case _:
                        heard.end = data
        except ConnectionClosed:
            pass
        heard.close_code = ws.close_code
    return heard
