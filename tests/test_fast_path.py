"""The guard in front of the client hop's fast path: the version range, the in-memory
self-test, one warning and the plain path otherwise, and the hook as a scope extension."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any

import pytest
import structlog
from structlog.testing import capture_logs
from websockets.asyncio.client import connect

from aivtuber_gateway import create_app, fastpath
from aivtuber_gateway.clientside import GatewayWebSocketProtocol
from aivtuber_gateway.fastpath import (
    EXTENSION,
    PLAIN_PROTOCOL,
    VERSIONS,
    client_protocol,
    installed_versions,
    self_test,
    version_problem,
)
from aivtuber_gateway.server import uvicorn_overrides
from tests.backends import EchoBackend
from tests.gateway_support import RunningGateway, gateway_settings
from tests.support import run_server

ROOT = Path(__file__).resolve().parent.parent
log = structlog.get_logger("test")


def test_the_installed_uvicorn_and_websockets_pass_the_range_and_the_self_test() -> None:
    assert version_problem(installed_versions()) is None
    assert self_test() is None
    assert client_protocol("auto", log) is GatewayWebSocketProtocol


def test_the_range_is_the_one_pyproject_allows() -> None:
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text("utf-8"))["project"]["dependencies"]
    for name, (low, high) in VERSIONS.items():
        (dep,) = [dep for dep in deps if re.match(rf"{name}\b", dep)]
        assert dep.endswith(f">={low},<{high}"), dep


@pytest.mark.parametrize(
    "installed",
    [
        {"uvicorn": "0.55.0", "websockets": "17.4"},  # the next, untested uvicorn
        {"uvicorn": "0.52.4", "websockets": "17.4"},  # before uvicorn's `disconnected`
        {"uvicorn": "0.54.0", "websockets": "15.0.1"},  # max_size, cur_size
        {"uvicorn": "1.0.0rc1", "websockets": "17.4"},
        {"uvicorn": "0.54.0", "websockets": "missing"},
    ],
)
def test_an_untested_version_gets_one_warning_naming_it_and_the_plain_path(
    installed: dict[str, str],
) -> None:
    with capture_logs() as logs:
        chosen = client_protocol("auto", log, installed=installed)
    assert chosen == PLAIN_PROTOCOL
    assert [entry["event"] for entry in logs] == ["fast_path_disabled"]
    (warning,) = logs
    assert warning["log_level"] == "warning"
    assert warning["uvicorn"] == installed["uvicorn"]
    assert warning["websockets"] == installed["websockets"]
    assert "outside the tested range" in warning["reason"]


def test_a_failing_self_test_gets_one_warning_and_the_plain_path(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(fastpath, "self_test", lambda: "self-test: the client read []")
    with capture_logs() as logs:
        assert client_protocol("auto", log) == PLAIN_PROTOCOL
    assert [(e["event"], e["reason"]) for e in logs] == [
        ("fast_path_disabled", "self-test: the client read []")
    ]


def test_off_chooses_the_plain_path_without_a_warning() -> None:
    with capture_logs() as logs:
        assert client_protocol("off", log) == PLAIN_PROTOCOL
    assert logs == []


async def _echo_through(gateway: RunningGateway) -> Any:
    """Echo one message through the gateway; the live connection's client hook."""
    async with connect(gateway.ws_url + "/ws/input", compression=None) as ws:
        await ws.send("ping")
        assert await ws.recv() == "ping"
        await ws.send(b"\x00\x01")
        assert await ws.recv() == b"\x00\x01"
        sink = gateway.only_connection()._sink
    return sink


async def test_on_an_untested_version_the_gateway_serves_through_the_plain_path(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(
        fastpath, "installed_versions", lambda: {"uvicorn": "0.99.0", "websockets": "17.4"}
    )
    async with EchoBackend().running() as backend:
        settings = gateway_settings({"input": [backend.url]}, fast_path="auto")
        app = create_app(settings)
        with capture_logs() as logs:
            overrides = uvicorn_overrides(settings.gateway)
        assert [entry["event"] for entry in logs] == ["fast_path_disabled"]
        async with run_server(app, **overrides) as server:
            gateway = RunningGateway(server, app)
            assert await _echo_through(gateway) is None
            await gateway.settled()


async def test_the_fast_path_hook_survives_a_middleware_in_front() -> None:
    seen: list[str] = []

    async with EchoBackend().running() as backend:
        settings = gateway_settings({"input": [backend.url]}, fast_path="auto")
        app = create_app(settings)

        async def middleware(scope: dict[str, Any], receive: Any, send: Any) -> None:
            # Wraps send (as logging or tracing middleware do): send.__self__ is no longer
            # uvicorn's protocol, but the scope extension still is.
            async def wrapped(message: dict[str, Any]) -> None:
                seen.append(message["type"])
                await send(message)

            await app(dict(scope), receive, wrapped)

        async with run_server(middleware, **uvicorn_overrides(settings.gateway)) as server:
            gateway = RunningGateway(server, app)
            sink = await _echo_through(gateway)
            assert isinstance(sink, GatewayWebSocketProtocol)
            await gateway.settled()
    assert "websocket.accept" in seen


async def test_the_scope_extension_is_the_clients_protocol() -> None:
    scopes: list[dict[str, Any]] = []

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        scopes.append(scope)
        await receive()
        await send({"type": "websocket.accept"})
        await send({"type": "websocket.close", "code": 1000})

    settings = gateway_settings({"input": ["ws://127.0.0.1:9"]}, fast_path="auto")
    overrides = uvicorn_overrides(settings.gateway)
    async with run_server(app, lifespan="off", **overrides) as server:
        async with connect(server.ws_url + "/") as ws:
            await ws.wait_closed()
    (scope,) = scopes
    assert isinstance(scope["extensions"][EXTENSION], GatewayWebSocketProtocol)
