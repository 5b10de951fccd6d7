"""A Low of issue 15: at the default level (info) no service logs a whole task id or a
query string (httpx's "HTTP Request: DELETE .../v1/tasks/<id>" was one; the gateway's
HTTP route forwarded the query string into it)."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest
from websockets.asyncio.client import connect

from tests.frontend import ask
from tests.security.stack import ALPHA_KEY, process_stack
from tests.security.test_identity_model import bearer, first_message

pytestmark = pytest.mark.timeout(120)
MARKER = "query-marker-4f1d"


async def test_no_service_logs_a_whole_task_id_or_a_query_string(tmp_path: Path) -> None:
    async with process_stack(tmp_path) as stack:
        url = stack.url("gateway")
        task_ids = []
        async with connect(
            f"{url}/ws/input?{MARKER}=1", additional_headers=bearer(ALPHA_KEY)
        ) as ws:
            await ws.recv()
            for _ in range(2):
                reply = await ask(ws, {"type": "speak", "text": "A line to cancel at once."})
                task_ids.append(reply["task_id"])
                await ask(ws, {"type": "cancel", "task_id": reply["task_id"]})
        spoken = await ask_once(url, "Then one to hear.")
        task_ids.append(spoken)
        await first_message(url + f"?{MARKER}=2", spoken, ALPHA_KEY)
        async with httpx.AsyncClient(base_url=stack.url("gateway", "http")) as http:
            speech = await http.post(
                f"/v1/audio/speech?{MARKER}=3",
                headers=bearer(ALPHA_KEY),
                json={
                    "model": "tts-1",
                    "input": "Hello.",
                    "voice": "sine",
                    "response_format": "pcm",
                },
            )
        logs = "".join(line for lines in stack.logs.values() for line in lines)
    assert speech.status_code == 200
    assert any(
        json.loads(line).get("event") == "task_queued"
        for line in logs.splitlines()
        if line.startswith("{")
    )
    leaked = [task_id for task_id in task_ids if task_id in logs]
    # Before: httpx's request lines carried whole task ids and the forwarded query string.
    assert not leaked, [line for line in logs.splitlines() if any(t in line for t in leaked)][:3]
    assert MARKER not in logs


async def ask_once(url: str, text: str) -> str:
    async with connect(f"{url}/ws/input", additional_headers=bearer(ALPHA_KEY)) as ws:
        await ws.recv()
        reply = await ask(ws, {"type": "speak", "text": text})
    return str(reply["task_id"])
