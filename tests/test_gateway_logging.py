"""Structured events: what each connection logs at info, what --log-level debug adds."""

from __future__ import annotations

from structlog.testing import capture_logs
from websockets.asyncio.client import connect

from tests.backends import EchoBackend
from tests.gateway_support import (
    gateway_settings,
    run_gateway,
)


async def test_a_connection_logs_its_opening_and_closing_with_context() -> None:
    with capture_logs() as logs:
        async with EchoBackend().running() as backend:
            async with run_gateway(gateway_settings({"input": [backend.url]})) as gateway:
                async with connect(gateway.ws_url + "/ws/input?token=secret-in-query") as ws:
                    await ws.send("hello")
                    await ws.recv()
                    await ws.close(4001, "done")
    opened = next(e for e in logs if e["event"] == "connection_opened")
    closed = next(e for e in logs if e["event"] == "connection_closed")
    assert opened["log_level"] == "info"
    assert opened["route"] == "input"
    assert opened["backend"] == backend.url + "/ws/input"
    assert opened["client"].startswith("127.0.0.1:")
    assert closed["conn_id"] == opened["conn_id"]
    assert closed["closed_by"] == "client"
    assert (closed["code"], closed["reason"]) == (4001, "done")
    assert closed["duration_s"] >= 0
    assert (closed["messages_in"], closed["bytes_out"]) == (1, 5)
    assert not [e for e in logs if e["event"] == "forward"]  # nothing per message at info
    assert "secret-in-query" not in repr(logs)


async def test_debug_logs_each_forwarded_message_direction_type_and_size_never_content() -> None:
    with capture_logs() as logs:
        async with EchoBackend().running() as backend:
            settings = gateway_settings({"input": [backend.url]}, level="debug")
            async with run_gateway(settings) as gateway:
                async with connect(gateway.ws_url + "/ws/input") as ws:
                    await ws.send("confidential text")
                    await ws.recv()
                    await ws.send(b"\x01\x02\x03")
                    await ws.recv()
    forwards = [(e["direction"], e["type"], e["size"]) for e in logs if e["event"] == "forward"]
    assert forwards == [
        ("in", "text", 17),
        ("out", "text", 17),
        ("in", "binary", 3),
        ("out", "binary", 3),
    ]
    assert "confidential" not in repr(logs)
