"""Finding 5 of issue 15 and the Lows about client input: the HTTP speech API validates
like /ws/input (``invalid_text``, 400 in OpenAI's shape, never 500), and no malformed
request leaves a task counted as active, on both buses."""

from __future__ import annotations

import json

import httpx
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from aivtuber_common.config import BusSettings, LimitsSettings
from tests.frontend import ask, frontend
from tests.test_end_to_end import stack

pytestmark = pytest.mark.timeout(90)

SURROGATE = "\\ud800"  # a JSON escape: json.loads makes it a lone surrogate
# (field, raw JSON value) -> the code the answer must carry.
HTTP_CORPUS = [
    ('"input"', f'"{SURROGATE} hi"', "invalid_text"),
    ('"input"', '"a\\u0000b"', "invalid_text"),
    ('"input"', '"ring \\u0007"', "invalid_text"),
    ('"voice"', f'"{SURROGATE}"', "invalid_value"),
    ('"voice"', '"si\\u0000ne"', "invalid_value"),
    ('"voice"', f'{{"id": "{SURROGATE}"}}', "invalid_value"),
    ('"model"', f'"{SURROGATE}"', "invalid_value"),
    ('"input"', "1" * 5000, "invalid_json"),
]
WS_CORPUS = [f'{{"type": "speak", "text": "{SURROGATE}"}}', '{"type": "speak", "text": "a\\u0000"}']


def body(field: str, value: str) -> bytes:
    fields = {'"model"': '"tts-1"', '"input"': '"Hello."', '"voice"': '"sine"', field: value}
    return ("{" + ", ".join(f"{k}: {v}" for k, v in fields.items()) + "}").encode()


async def active_tasks(http: httpx.AsyncClient) -> float:
    metrics = (await http.get("/metrics")).text
    line = next(li for li in metrics.splitlines() if li.startswith("aivtuber_input_active_tasks"))
    return float(line.split()[-1])


async def test_finding_5_malformed_speech_requests_are_400s_and_leave_no_active_task(
    bus: BusSettings,
) -> None:
    limits = LimitsSettings(max_active_tasks=2)
    async with stack(bus, limits=limits) as s:
        async with httpx.AsyncClient(base_url=s.input.http_url) as http:
            answers = []
            for _ in range(2):  # more malformed requests than max_active_tasks
                for field, value, _code in HTTP_CORPUS:
                    answer = await http.post("/v1/audio/speech", content=body(field, value))
                    answers.append((answer.status_code, answer.json()["error"]["code"]))
            async with frontend(s.url) as (ws, _):
                replies = [await ask(ws, message) for message in WS_CORPUS]
                idle = await active_tasks(http)
                still = await ask(ws, {"type": "speak", "text": "Still here."})
    # Before: a lone surrogate or a NUL was a 500 and its task stayed active for good.
    assert answers == [(400, code) for _, _, code in HTTP_CORPUS] * 2
    assert [r.get("code") for r in replies] == ["invalid_text", "invalid_text"]
    assert still.get("action") == "upload_processed", still
    assert idle == 0  # none of the malformed requests is counted as active


async def test_a_from_chunk_of_5000_digits_is_a_4400_not_a_1011() -> None:
    async with stack() as s:
        task_id = "0" * 8 + "-0000-4000-8000-" + "0" * 12
        query = "?from_chunk=" + "9" * 5000
        async with connect(f"{s.output.ws_url}/ws/output/{task_id}{query}") as ws:
            answer = json.loads(await ws.recv())
            with pytest.raises(ConnectionClosed):
                await ws.recv()
    assert answer["code"] == "invalid_from_chunk"
    assert ws.close_code == 4400
