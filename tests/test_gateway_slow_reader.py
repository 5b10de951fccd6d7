"""A client that stops answering the gateway's keepalive pings (a slow or frozen reader):
/connections shows it is the client whose ping is unanswered, and the log says the client
stopped answering, not that its connection was lost."""

from __future__ import annotations

import asyncio

import httpx
from structlog.testing import capture_logs

from tests.backends import EchoBackend
from tests.gateway_support import gateway_settings, run_gateway, wait_until
from tests.support import eventually
from tests.test_gateway_keepalive import DeafClient

HANG_GUARD_S = 20.0
# Long enough for /connections to be read while the ping is overdue, even when loaded.
PINGS = {"ping_interval_s": 0.2, "ping_timeout_s": 3.0}


async def test_a_client_that_stops_answering_pings_is_named_in_the_log_and_connections() -> None:
    async with EchoBackend().running() as backend:
        settings = gateway_settings({"input": [backend.url]}, **PINGS)
        with capture_logs() as logs:
            async with run_gateway(settings) as gateway, httpx.AsyncClient() as http:
                client = DeafClient(gateway.ws_url + "/ws/input")
                running = asyncio.create_task(client.run())
                unanswered: dict[str, float | None] = {}

                async def overdue() -> bool:
                    body = (await http.get(gateway.http_url + "/connections")).json()
                    for conn in body["connections"]:
                        unanswered.update(conn["unanswered_ping_s"])
                    return (unanswered.get("client") or 0) > PINGS["ping_interval_s"]

                async with asyncio.timeout(HANG_GUARD_S):
                    await eventually(overdue, every=0.05)
                await asyncio.wait_for(running, HANG_GUARD_S)  # the gateway hangs up
                close = await backend.next_close()
                await wait_until(lambda: not len(gateway.registry))
    assert unanswered["backend"] is None  # the backend answers its pings
    closed = [entry for entry in logs if entry["event"] == "connection_closed"]
    assert len(closed) == 1
    assert closed[0]["closed_by"] == "client"
    assert closed[0]["code"] == 1011
    assert closed[0]["reason"] == "client: keepalive ping timeout"
    assert (close.code, close.reason) == (1011, "client: keepalive ping timeout")
