"""Monitoring on the gateway's port: /health, /healthz, /connections, /metrics, the status
page, and 404 for unknown HTTP paths."""

from __future__ import annotations

import asyncio

import httpx
from websockets.asyncio.client import connect

from tests.backends import EchoBackend
from tests.gateway_support import (
    gateway_settings,
    run_gateway,
)
from tests.support import free_port


def two_routes(input_url: str, output_url: str) -> dict[str, dict[str, object]]:
    return {
        "input": {"path": "/ws/input", "backends": [input_url]},
        "output": {
            "path": "/ws/output/{task_id}",
            "backends": [output_url],
            "audio_metrics": True,
        },
    }


async def test_health_is_ok_with_200_when_every_backend_answers() -> None:
    async with EchoBackend().running() as a, EchoBackend().running() as b:
        async with run_gateway(gateway_settings(two_routes(a.url, b.url))) as gateway:
            async with httpx.AsyncClient(base_url=gateway.http_url) as http:
                response = await http.get("/health")
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "ok"
    assert body["gateway"] == "running"
    assert body["uptime_s"] >= 0
    assert body["connections"] == 0
    assert body["backends"]["input"]["url"] == a.url
    assert body["backends"]["input"]["status"] == "ok"
    assert body["backends"]["input"]["latency_ms"] >= 0
    assert body["backends"]["output"]["status"] == "ok"


async def test_health_is_degraded_with_503_when_a_backend_is_down_or_unhealthy() -> None:
    down = f"ws://127.0.0.1:{free_port()}"
    async with EchoBackend(health_status=500).running() as sick:
        async with run_gateway(gateway_settings(two_routes(down, sick.url))) as gateway:
            async with httpx.AsyncClient(base_url=gateway.http_url) as http:
                response = await http.get("/health")
                healthz = await http.get("/healthz")
    assert response.status_code == 503
    body = response.json()
    assert body["status"] == "degraded"
    assert body["backends"]["input"]["status"] == "down"
    assert body["backends"]["input"]["latency_ms"] is None
    assert body["backends"]["output"]["status"] == "down"
    assert body["backends"]["output"]["error"] == "HTTP 500"
    assert healthz.status_code == 200  # liveness does not depend on the backends
    assert healthz.json() == {"status": "ok"}


async def test_health_probes_are_cached_so_health_cannot_flood_the_backends() -> None:
    probes = 0

    def count(request: httpx.Request) -> httpx.Response:
        nonlocal probes
        probes += 1
        return httpx.Response(200, json={"status": "ok"})

    async with EchoBackend().running() as backend:
        settings = gateway_settings({"input": [backend.url]}, health_cache_s=60)
        async with run_gateway(settings) as gateway:
            # Inject a transport that counts requests instead of patching.
            counting = httpx.AsyncClient(transport=httpx.MockTransport(count))
            gateway.runtime.health._client = counting
            async with httpx.AsyncClient(base_url=gateway.http_url) as http:
                responses = await asyncio.gather(*(http.get("/health") for _ in range(20)))
            await counting.aclose()
    assert {r.status_code for r in responses} == {200}
    assert probes == 1


async def test_health_lists_every_backend_of_a_route_with_several() -> None:
    down = f"ws://127.0.0.1:{free_port()}"
    async with EchoBackend().running() as up:
        routes = {"input": {"path": "/ws/input", "backends": [up.url, down]}}
        async with run_gateway(gateway_settings(routes)) as gateway:
            async with httpx.AsyncClient(base_url=gateway.http_url) as http:
                response = await http.get("/health")
    assert response.status_code == 503
    route = response.json()["backends"]["input"]
    assert route["status"] == "degraded"
    assert [b["status"] for b in route["backends"]] == ["ok", "down"]


async def test_connections_shows_a_live_connection_with_counts_that_move() -> None:
    async with EchoBackend().running() as a, EchoBackend().running() as b:
        async with run_gateway(gateway_settings(two_routes(a.url, b.url))) as gateway:
            async with httpx.AsyncClient(base_url=gateway.http_url) as http:
                async with connect(gateway.ws_url + "/ws/output/task-1?token=secret") as ws:
                    await ws.send("hello")
                    await ws.recv()
                    first = (await http.get("/connections")).json()
                    await ws.send(b"\x00" * 100)
                    await ws.recv()
                    second = (await http.get("/connections")).json()
                await gateway.settled()
                after = (await http.get("/connections")).json()
    assert first["total_connections"] == 1
    conn = first["connections"][0]
    assert set(conn) == {
        "id",
        "route",
        "path",
        "client",
        "backend",
        "connected_at",
        "duration_s",
        "messages_in",
        "messages_out",
        "bytes_in",
        "bytes_out",
        "last_activity_at",
        "unanswered_ping_s",
    }
    assert conn["route"] == "output"
    assert conn["path"] == "/ws/output/task-1"
    assert conn["backend"] == b.url + "/ws/output/task-1"  # no query string: tokens live there
    assert conn["client"].startswith("127.0.0.1:")
    assert (conn["messages_in"], conn["messages_out"]) == (1, 1)
    assert (conn["bytes_in"], conn["bytes_out"]) == (5, 5)
    moved = second["connections"][0]
    assert (moved["messages_in"], moved["bytes_in"], moved["bytes_out"]) == (2, 105, 105)
    assert moved["last_activity_at"] >= conn["last_activity_at"]
    assert after == {"total_connections": 0, "connections": []}


async def test_metrics_count_connections_messages_bytes_failures_and_close_codes() -> None:
    down = f"ws://127.0.0.1:{free_port()}"
    async with EchoBackend().running() as backend:
        routes = two_routes(backend.url, backend.url)
        routes["dead"] = {"path": "/ws/dead", "backends": [down]}
        async with run_gateway(gateway_settings(routes)) as gateway:
            async with connect(gateway.ws_url + "/ws/input") as ws:
                await ws.send("hello")
                await ws.recv()
                async with httpx.AsyncClient(base_url=gateway.http_url) as http:
                    live = (await http.get("/metrics")).text
            async with connect(gateway.ws_url + "/ws/output/t1") as ws:
                await ws.send("!burst 3 1000")
                for _ in range(3):
                    await ws.recv()
                await ws.send("!close 4000 bye")
                await asyncio.wait_for(ws.wait_closed(), 20)
            async with connect(gateway.ws_url + "/ws/dead") as ws:
                await asyncio.wait_for(ws.wait_closed(), 20)
            await gateway.settled()
            async with httpx.AsyncClient(base_url=gateway.http_url) as http:
                response = await http.get("/metrics")
    assert response.headers["content-type"].startswith("text/plain")
    text = response.text
    assert 'aivtuber_gateway_connections_open{route="input"} 1.0' in live
    assert 'aivtuber_gateway_messages_total{direction="in",route="input"} 1.0' in live
    assert 'aivtuber_gateway_connections_open{route="input"} 0.0' in text
    assert 'aivtuber_gateway_connections_total{route="input"} 1.0' in text
    assert 'aivtuber_gateway_connections_total{route="output"} 1.0' in text
    assert 'aivtuber_gateway_messages_total{direction="in",route="input"} 1.0' in text
    assert 'aivtuber_gateway_messages_total{direction="out",route="output"} 3.0' in text
    assert 'aivtuber_gateway_bytes_total{direction="out",route="output"} 3000.0' in text
    assert 'aivtuber_gateway_bytes_total{direction="in",route="input"} 5.0' in text
    assert (
        f'aivtuber_gateway_backend_connect_failures_total{{backend="{down}",route="dead"}} 1.0'
        in text
    )
    assert 'aivtuber_gateway_closes_total{closed_by="client",code="1000",route="input"} 1.0' in (
        text
    )
    assert 'aivtuber_gateway_closes_total{closed_by="backend",code="4000",route="output"} 1.0' in (
        text
    )
    assert 'aivtuber_gateway_rejected_total{code="1013",route="dead"} 1.0' in text
    # Audio metrics on the output route: first binary frame, then two gaps.
    assert 'aivtuber_gateway_time_to_first_audio_seconds_count{route="output"} 1.0' in text
    assert 'aivtuber_gateway_audio_frame_gap_seconds_count{route="output"} 2.0' in text
    assert 'aivtuber_gateway_time_to_first_audio_seconds_count{route="input"}' not in text


async def test_the_status_page_is_self_contained_html_that_polls_health_and_connections() -> None:
    async with EchoBackend().running() as backend:
        async with run_gateway(gateway_settings({"input": [backend.url]})) as gateway:
            async with httpx.AsyncClient(base_url=gateway.http_url) as http:
                response = await http.get("/")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    page = response.text
    assert "/health" in page and "/connections" in page and "setTimeout(refresh" in page
    for external in ("http://", "https://", "//cdn", "fonts.googleapis"):
        assert external not in page


async def test_an_unknown_http_path_is_a_404_and_the_gateway_keeps_serving() -> None:
    async with EchoBackend().running() as backend:
        async with run_gateway(gateway_settings({"input": [backend.url]})) as gateway:
            async with httpx.AsyncClient(base_url=gateway.http_url) as http:
                missing = await http.get("/nope")
                plain_get = await http.get("/ws/input")  # a WebSocket path without upgrade
                ok = await http.get("/healthz")
    assert missing.status_code == 404
    assert plain_get.status_code == 404
    assert ok.status_code == 200
