"""Findings 1, 2, 6 and 7 of issue 15: one identity model, the internal token always in
force. Each test runs the four services as processes, as shipped, from a config with two
tenants and no ``internal_token`` (the README's recommended network-facing setup)."""

from __future__ import annotations

import json
import socket
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from aivtuber_common.identity import GATEWAY_TOKEN_HEADER
from aivtuber_common.internal import INGEST_PATH, TASK_EVENTS_PATH, TASKS_PATH
from tests.frontend import ask
from tests.security.stack import ALPHA_KEY, BETA_KEY, process_stack

pytestmark = pytest.mark.timeout(120)


def remote_address() -> str:
    """An address of this machine that is not loopback, to play a remote client from."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("192.0.2.1", 9))  # no packet is sent: only the route is looked up
        except OSError:
            pytest.skip("no non-loopback address on this machine")
        address = str(probe.getsockname()[0])
    if address.startswith("127."):
        pytest.skip("no non-loopback address on this machine")
    return address


def bearer(key: str, **extra: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}", **extra}


async def spoken_task(url: str, key: str, text: str = "Hello there, chat.") -> str:
    """Speak as the tenant of ``key`` and hear the line to its end; its task id."""
    async with connect(f"{url}/ws/input", additional_headers=bearer(key)) as ws:
        await ws.recv()  # task_id_assigned
        reply = await ask(ws, {"type": "speak", "text": text})
        assert reply.get("action") == "upload_processed", reply
        task_id = str(reply["task_id"])
    first = await first_message(url, task_id, key)
    assert first["type"] == "audio_start", first
    return task_id


async def first_message(url: str, task_id: str, key: str) -> dict[str, Any]:
    """The first message a subscription to ``task_id`` gets, or its close as a dict."""
    async with connect(f"{url}/ws/output/{task_id}", additional_headers=bearer(key)) as ws:
        try:
            answer: dict[str, Any] = json.loads(await ws.recv())
        except ConnectionClosed:
            return {"close": ws.close_code}
        if answer["type"] != "audio_start":
            await ws.wait_closed()
            answer["close"] = ws.close_code
        return answer


async def test_finding_1_a_remote_tenant_cannot_hear_another_tenants_task(
    tmp_path: Path,
) -> None:
    remote = remote_address()
    async with process_stack(tmp_path, gateway={"host": "0.0.0.0"}) as stack:
        url = f"ws://{remote}:{stack.ports['gateway']}"
        task_id = await spoken_task(url, ALPHA_KEY)
        stolen = await first_message(url, task_id, BETA_KEY)
    # Before: the back ends took the gateway's X-Forwarded-For for the peer, disbelieved
    # its tenant headers and beta heard alpha's whole task.
    assert stolen["type"] == "error" and stolen["code"] == "task_not_found", stolen
    assert stolen["close"] == 4404


async def test_finding_2_a_new_x_forwarded_for_per_connection_escapes_no_limit(
    tmp_path: Path,
) -> None:
    limits = {"speaks_per_minute": 3}
    async with process_stack(tmp_path, limits=limits) as stack:
        answers = []
        for n in range(6):
            forged = bearer(ALPHA_KEY, **{"X-Forwarded-For": f"198.51.100.{n + 1}"})
            async with connect(f"{stack.url('gateway')}/ws/input", additional_headers=forged) as ws:
                await ws.recv()
                answers.append(await ask(ws, {"type": "speak", "text": "Hi."}))
    accepted = [a for a in answers if a.get("action") == "upload_processed"]
    refused = [a for a in answers if a.get("code") == "rate_limited"]
    # Before: each forged address was a new anonymous client with limits of its own: 6/6.
    assert len(accepted) == 3 and len(refused) == 3, answers


async def test_finding_6_the_output_handlers_task_pages_and_the_input_handler_need_the_token(
    tmp_path: Path,
) -> None:
    async with process_stack(tmp_path) as stack:
        task_id = await spoken_task(stack.url("gateway"), ALPHA_KEY)
        output = stack.url("output", "http")
        async with httpx.AsyncClient() as http:
            status = await http.get(f"{output}/status/{task_id}")
            audio = await http.get(f"{output}/tasks/{task_id}/audio.wav")
            forged = await http.get(
                f"{output}/tasks/{task_id}/audio.wav", headers={GATEWAY_TOKEN_HEADER: "guess"}
            )
        async with connect(f"{stack.url('input')}/ws/input") as direct:
            with pytest.raises(ConnectionClosed):
                await direct.recv()
    # Before: 200 with another tenant's audio to anyone; an anonymous direct client.
    assert status.status_code == audio.status_code == forged.status_code == 401
    assert status.json()["code"] == "unauthorized"
    assert direct.close_code == 4401


async def test_finding_7_a_local_process_without_the_token_controls_no_ones_speech(
    tmp_path: Path,
) -> None:
    async with process_stack(tmp_path) as stack:
        task_id = await spoken_task(stack.url("gateway"), ALPHA_KEY, "A line to hold on to.")
        tts, output = stack.url("tts"), stack.url("output")
        async with httpx.AsyncClient(base_url=stack.url("tts", "http")) as http:
            cancel = await http.delete(
                f"{TASKS_PATH}/{task_id}", headers={"x-aivtuber-tenant": "alpha"}
            )
            submit = await http.post(
                TASKS_PATH,
                json={"task_id": str(uuid.uuid4()), "text": "N\u0000UL", "voice": "sine"},
            )
            voices = await http.get("/v1/voices")
        async with connect(tts + TASK_EVENTS_PATH) as events:
            with pytest.raises(ConnectionClosed):
                await events.recv()  # before: a snapshot with every task's whole id
        async with connect(output + INGEST_PATH) as ingest:
            with pytest.raises(ConnectionClosed):
                await ingest.recv()
        forged = {"x-aivtuber-tenant": "alpha", GATEWAY_TOKEN_HEADER: "guess"}
        async with connect(f"{output}/ws/output/{task_id}", additional_headers=forged) as hear:
            with pytest.raises(ConnectionClosed):
                await hear.recv()
    assert cancel.status_code == submit.status_code == voices.status_code == 401
    assert events.close_code == ingest.close_code == hear.close_code == 4401
