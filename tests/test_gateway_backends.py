"""Choosing and reaching backends: down, refusing, slow, several per route; what the
backend's handshake carries (subprotocols, forwarded headers)."""

from __future__ import annotations

import json

from structlog.testing import capture_logs
from websockets.asyncio.client import ClientConnection, connect

from tests.backends import EchoBackend, silent_server
from tests.gateway_support import (
    closed_with,
    gateway_settings,
    run_gateway,
    wait_until,
)
from tests.support import free_port

TIMEOUT = 20.0


async def info(ws: ClientConnection) -> dict:  # type: ignore[type-arg]
    await ws.send("!info")
    return json.loads(await ws.recv())  # type: ignore[no-any-return]


async def test_a_backend_that_is_down_gets_the_client_accepted_then_closed_1013() -> None:
    down = f"ws://127.0.0.1:{free_port()}"
    with capture_logs() as logs:
        async with run_gateway(gateway_settings({"input": [down]})) as gateway:
            async with connect(gateway.ws_url + "/ws/input") as ws:  # the upgrade succeeds
                assert await closed_with(ws) == (1013, "input backend unavailable")
            failures = gateway.registry.connect_failures
    assert failures[("input", down)] == 1
    unavailable = [entry for entry in logs if entry["event"] == "backend_unavailable"]
    assert len(unavailable) == 1  # logged once, naming the backend
    assert unavailable[0]["backends"] == [down]
    assert unavailable[0]["route"] == "input"
    assert unavailable[0]["log_level"] == "warning"


async def test_a_backend_that_never_completes_its_handshake_is_given_up_after_the_timeout() -> None:
    async with silent_server() as url:
        settings = gateway_settings({"input": [url]}, connect_timeout_s=0.5)
        with capture_logs() as logs:
            async with run_gateway(settings) as gateway:
                async with connect(gateway.ws_url + "/ws/input") as ws:
                    # Closed once connect_timeout_s has passed; never hangs (guarded).
                    assert await closed_with(ws) == (1013, "input backend unavailable")
    errors = next(e for e in logs if e["event"] == "backend_unavailable")["errors"]
    assert errors == [f"{url}: no handshake within 0.5s"]


async def test_a_backend_answering_http_4xx_closes_the_client_with_4000_plus_status() -> None:
    async with EchoBackend().running() as backend:
        routes = {"reject": {"path": "/reject/{status}", "backends": [backend.url]}}
        async with run_gateway(gateway_settings(routes)) as gateway:
            async with connect(gateway.ws_url + "/reject/404") as ws:
                assert await closed_with(ws) == (4404, "reject backend refused: HTTP 404")
            async with connect(gateway.ws_url + "/reject/403") as ws:
                code, _ = await closed_with(ws)
    assert code == 4403


async def test_an_unknown_path_closes_the_websocket_with_4404() -> None:
    async with EchoBackend().running() as backend:
        async with run_gateway(gateway_settings({"input": [backend.url]})) as gateway:
            async with connect(gateway.ws_url + "/ws/nothing-here") as ws:
                assert await closed_with(ws) == (4404, "no route for this path")
    assert backend.accepted == 0


async def test_a_refusing_backend_is_skipped_for_the_next_one() -> None:
    refusing = f"ws://127.0.0.1:{free_port()}"
    async with EchoBackend("good").running() as good:
        settings = gateway_settings(
            {"input": {"path": "/ws/input", "backends": [refusing, good.url]}}
        )
        async with run_gateway(settings) as gateway:
            for _ in range(3):
                async with connect(gateway.ws_url + "/ws/input") as ws:
                    assert (await info(ws))["backend"] == "good"
            failures = gateway.registry.connect_failures[("input", refusing)]
    # Tried once, then kept behind the healthy backend while marked down.
    assert failures == 1


async def test_round_robin_spreads_connections_evenly() -> None:
    async with EchoBackend("a").running() as a, EchoBackend("b").running() as b:
        route = {"path": "/ws/input", "backends": [a.url, b.url], "balance": "round_robin"}
        async with run_gateway(gateway_settings({"input": route})) as gateway:
            chosen = []
            for _ in range(6):
                async with connect(gateway.ws_url + "/ws/input") as ws:
                    chosen.append((await info(ws))["backend"])
    assert sorted(chosen) == ["a"] * 3 + ["b"] * 3
    assert chosen[0] != chosen[1]


async def test_least_connections_picks_the_backend_with_fewest_open_connections() -> None:
    async with EchoBackend("a").running() as a, EchoBackend("b").running() as b:
        route = {"path": "/ws/input", "backends": [a.url, b.url], "balance": "least_connections"}
        async with run_gateway(gateway_settings({"input": route})) as gateway:
            url = gateway.ws_url + "/ws/input"
            first = await connect(url)
            async with connect(url) as second:
                on_first = (await info(first))["backend"]
                on_second = (await info(second))["backend"]
                assert {on_first, on_second} == {"a", "b"}  # one each
                await first.close()
                await wait_until(lambda: len(gateway.registry) == 1)
                for _ in range(3):
                    # on_first's backend has 0 open, the other 1: always the emptier one.
                    async with connect(url) as third:
                        assert (await info(third))["backend"] == on_first
                    await wait_until(lambda: len(gateway.registry) == 1)


async def test_subprotocols_are_offered_to_the_backend_and_its_choice_returned() -> None:
    async with EchoBackend(subprotocols=["vtuber.v2", "vtuber.v1"]).running() as backend:
        async with run_gateway(gateway_settings({"input": [backend.url]})) as gateway:
            async with connect(
                gateway.ws_url + "/ws/input", subprotocols=["vtuber.v1", "other"]
            ) as ws:
                assert ws.subprotocol == "vtuber.v1"
                assert (await info(ws))["subprotocol"] == "vtuber.v1"
            async with connect(gateway.ws_url + "/ws/input") as ws:
                assert ws.subprotocol is None


async def test_the_backend_gets_path_query_and_forwarded_headers_but_no_hop_by_hop() -> None:
    async with EchoBackend().running() as backend:
        routes = {"output": {"path": "/ws/output/{task_id}", "backends": [backend.url]}}
        async with run_gateway(gateway_settings(routes)) as gateway:
            async with connect(
                gateway.ws_url + "/ws/output/t%201?voice=joe&x=%C3%A9",
                origin="http://frontend.example",  # type: ignore[arg-type]
                user_agent_header="VTuberFrontend/1.0",
                additional_headers={
                    "Authorization": "Bearer secret-token",
                    "Cookie": "session=abc",
                    "X-Forwarded-For": "203.0.113.7",
                    "X-Custom": "kept",
                    "Keep-Alive": "timeout=5",
                    "Proxy-Authorization": "Basic x",
                    "TE": "trailers",
                },
            ) as ws:
                seen = await info(ws)
            async with connect(
                gateway.ws_url + "/ws/output/t", additional_headers={"X-Request-ID": "req-42"}
            ) as ws:
                with_id = await info(ws)
    headers = dict(seen["headers"])
    assert seen["path"] == "/ws/output/t%201?voice=joe&x=%C3%A9"
    assert headers["origin"] == "http://frontend.example"
    assert headers["user-agent"] == "VTuberFrontend/1.0"
    assert headers["authorization"] == "Bearer secret-token"
    assert headers["cookie"] == "session=abc"
    assert headers["x-custom"] == "kept"
    assert headers["x-forwarded-for"] == "203.0.113.7, 127.0.0.1"
    assert headers["x-forwarded-proto"] == "http"
    assert headers["x-forwarded-host"] == f"127.0.0.1:{gateway.port}"
    assert len(headers["x-request-id"]) == 32  # generated
    for hop_by_hop in ("keep-alive", "proxy-authorization", "te"):
        assert hop_by_hop not in headers
    assert [name for name, _ in seen["headers"]].count("connection") == 1
    assert [name for name, _ in seen["headers"]].count("host") == 1
    assert dict(with_id["headers"])["x-request-id"] == "req-42"  # kept


async def test_a_backend_marked_down_is_still_tried_when_it_is_the_only_one() -> None:
    async with EchoBackend().running() as backend:
        async with run_gateway(gateway_settings({"input": [backend.url]})) as gateway:
            gateway.app.routes.routes[0].backends[0].mark_down()
            async with connect(gateway.ws_url + "/ws/input") as ws:
                await ws.send("hi")
                assert await ws.recv() == "hi"
