"""A task belongs to the tenant that spoke it: through the whole stack, another tenant's
subscribe and cancel behave exactly like those of a task that does not exist."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from aivtuber_common.config import (
    AuthSettings,
    BusSettings,
    GatewaySettings,
    InputHandlerSettings,
    OutputHandlerSettings,
    RedisBusSettings,
    RouteSettings,
    Settings,
    TenantSettings,
    TtsWorkerSettings,
)
from aivtuber_common.say import SayError, say
from aivtuber_gateway import create_app as gateway_app
from aivtuber_input import create_app as input_app
from aivtuber_output import create_app as output_app
from aivtuber_tts import create_app as worker_app
from tests.edge_support import ALICE_KEY, BOB_KEY
from tests.frontend import ask
from tests.support import run_server
from tests.test_end_to_end import (
    FRAME_MS,
    HOLD,
    Gate,
    held_factory,
    voices,
    wait_ready,
    wait_workers_seen,
)

TOKEN = "internal-token-0123456789"
TASK_WAIT_S = 1.0


@contextlib.asynccontextmanager
async def tenant_stack(
    bus: BusSettings, heart: bool = False, replicas: int = 1
) -> AsyncIterator[tuple[str, str, Gate]]:
    """Gateway (tenants alice and bob), handlers and a held sine worker (and the hibari
    ``heart`` voice), all with ``internal_token``, on the ``bus`` fixture's bus; yields the
    gateway's and the (first) output handler's ws:// URLs. ``replicas`` output handlers
    behind the gateway's output and tasks routes: Redis bus only."""
    gate = Gate()
    tenants = {"alice": TenantSettings(key=ALICE_KEY), "bob": TenantSettings(key=BOB_KEY)}
    base = Settings(bus=bus, internal_token=TOKEN, auth=AuthSettings(tenants=tenants))
    output_settings = base.model_copy(
        update={"output_handler": OutputHandlerSettings(task_wait_s=TASK_WAIT_S)}
    )
    async with contextlib.AsyncExitStack() as stack:
        outputs = [
            await stack.enter_async_context(run_server(output_app(output_settings)))
            for _ in range(replicas)
        ]
        output = outputs[0]
        worker_settings = TtsWorkerSettings(
            output_handler_url=output.ws_url,
            voices=voices(False, heart),
            default_voice="sine",
            frame_ms=FRAME_MS,
            max_concurrent=2,
        )
        worker = await stack.enter_async_context(
            run_server(
                worker_app(
                    base.model_copy(update={"tts_worker": worker_settings}),
                    engine_factory=held_factory(gate),
                )
            )
        )
        stack.callback(gate.release)  # never leave an engine thread waiting
        await wait_ready(worker)
        handler = await stack.enter_async_context(
            run_server(
                input_app(
                    base.model_copy(
                        update={"input_handler": InputHandlerSettings(workers=[worker.http_url])}
                    )
                )
            )
        )
        if isinstance(bus, RedisBusSettings):
            await wait_workers_seen(handler, 1)
        routes = {
            "input": RouteSettings(path="/ws/input", backends=[handler.ws_url]),
            "output": RouteSettings(
                path="/ws/output/{task_id}", backends=[o.ws_url for o in outputs]
            ),
            "tasks": RouteSettings(
                path="/v1/tasks/{task_id}/{file}",
                backends=[o.http_url for o in outputs],
                protocol="http",
                balance="round_robin",
            ),
        }
        gateway = await stack.enter_async_context(
            run_server(
                gateway_app(base.model_copy(update={"gateway": GatewaySettings(routes=routes)}))
            )
        )
        yield gateway.ws_url, output.ws_url, gate


@contextlib.asynccontextmanager
async def speaker(url: str, key: str) -> AsyncIterator[ClientConnection]:
    async with connect(f"{url}/ws/input?api_key={key}") as ws:
        assert json.loads(await ws.recv())["action"] == "task_id_assigned"
        yield ws


async def subscribe(url: str, task_id: str, key: str | None, **headers: str) -> dict[str, Any]:
    """The first message and the close of a subscription, and how long it took."""
    query = f"?api_key={key}" if key else ""
    started = time.monotonic()
    async with connect(f"{url}/ws/output/{task_id}{query}", additional_headers=headers) as ws:
        first = json.loads(await ws.recv())
        if first["type"] == "audio_start":
            return {"first": first}
        await ws.wait_closed()
    return {
        "first": first,
        "close": (ws.close_code, ws.close_reason),
        "waited_s": time.monotonic() - started,
    }


def without_id(answer: dict[str, Any], task_id: str) -> str:
    return json.dumps(answer).replace(task_id, "<id>")


async def test_another_tenant_subscribing_is_told_task_not_found_like_an_unknown_task(
    bus: BusSettings,
) -> None:
    async with tenant_stack(bus) as (url, _, gate):
        async with speaker(url, ALICE_KEY) as alice:
            reply = await ask(alice, {"type": "speak", "text": f"{HOLD} this line, please."})
            task_id = reply["task_id"]
            unknown = str(uuid.uuid4())
            theirs, nobody = await asyncio.gather(
                subscribe(url, task_id, BOB_KEY), subscribe(url, unknown, BOB_KEY)
            )
            own = await subscribe(url, task_id, ALICE_KEY)
            gate.release()
    assert theirs["close"] == (4404, "task_not_found")
    assert theirs["first"]["code"] == "task_not_found"
    assert without_id(theirs["first"], task_id) == without_id(nobody["first"], unknown)
    assert theirs["close"] == nobody["close"]
    # The same wait as for a task that does not exist: nothing to time the difference by.
    assert theirs["waited_s"] >= TASK_WAIT_S and nobody["waited_s"] >= TASK_WAIT_S
    assert own["first"]["type"] == "audio_start" and own["first"]["task_id"] == task_id


async def test_another_tenant_cancelling_gets_task_not_found_and_the_task_goes_on(
    bus: BusSettings,
) -> None:
    async with tenant_stack(bus) as (url, _, gate):
        async with speaker(url, ALICE_KEY) as alice, speaker(url, BOB_KEY) as bob:
            task_id = (await ask(alice, {"type": "speak", "text": f"{HOLD} on, chat."}))["task_id"]
            unknown = str(uuid.uuid4())
            theirs = await ask(bob, {"type": "cancel", "task_id": task_id})
            nobody = await ask(bob, {"type": "cancel", "task_id": unknown})
            own = await ask(alice, {"type": "cancel", "task_id": task_id})
            gate.release()
    assert theirs["type"] == "error" and theirs["code"] == "task_not_found"
    assert without_id(theirs, task_id) == without_id(nobody, unknown)
    assert own == {"type": "system", "action": "cancelled", "task_id": task_id}


async def test_a_client_reaching_the_output_handler_directly_cannot_claim_a_tenant(
    bus: BusSettings,
) -> None:
    async with tenant_stack(bus) as (url, output_url, gate):
        async with speaker(url, ALICE_KEY) as alice:
            reply = await ask(alice, {"type": "speak", "text": f"{HOLD} it there."})
            task_id = reply["task_id"]
            forged = {"X-Aivtuber-Tenant": "alice", "X-Aivtuber-Gateway-Token": "guess"}
            async with connect(
                f"{output_url}/ws/output/{task_id}", additional_headers=forged
            ) as ws:
                with pytest.raises(ConnectionClosed):
                    await ws.recv()
            gate.release()
    # Without the internal token the output handler does not even listen (before: 4404).
    assert (ws.close_code, ws.close_reason) == (4401, "a valid internal token is required")


async def test_aivtuber_say_speaks_as_the_tenant_of_its_api_key(bus: BusSettings) -> None:
    async with tenant_stack(bus) as (url, _, _gate):
        result = await say("Hi chat!", url, voice="sine", timeout_s=20, api_key=ALICE_KEY)
        refused: SayError | None = None
        try:
            await say("Hi chat!", url, voice="sine", timeout_s=20)
        except SayError as exc:
            refused = exc
    assert result.chunks > 0 and result.pcm
    assert refused is not None and refused.code == "connection_closed" and "4401" in str(refused)
