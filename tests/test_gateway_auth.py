"""The gateway's edge over real sockets: each credential form, what reaches the backend,
Origin, the connection quota, admin access to monitoring, and what is never shown."""

from __future__ import annotations

import base64
import uuid

import httpx
import pytest
from prometheus_client import generate_latest
from structlog.testing import capture_logs
from websockets.asyncio.client import connect

from tests.backends import EchoBackend
from tests.edge_support import (
    ADMIN_KEY,
    ALICE_KEY,
    BOB_KEY,
    backend_info,
    edge_settings,
    header_values,
)
from tests.gateway_support import closed_with, run_gateway, wait_until

CREDENTIAL_FORMS = {
    "bearer": ({"Authorization": f"Bearer {ALICE_KEY}"}, ""),
    "x-api-key": ({"X-Api-Key": ALICE_KEY}, ""),
    # A key in a URL's user info (http://name:KEY@host/...), as HTTP libraries send it.
    "basic": (
        {"Authorization": "Basic " + base64.b64encode(f"vv:{ALICE_KEY}".encode()).decode()},
        "",
    ),
    "query": ({}, f"&api_key={ALICE_KEY}"),
}


@pytest.mark.parametrize("form", list(CREDENTIAL_FORMS))
async def test_each_credential_form_opens_the_route_and_never_reaches_the_backend(
    form: str,
) -> None:
    headers, query = CREDENTIAL_FORMS[form]
    forged = {"X-Aivtuber-Tenant": "bob", "X-Aivtuber-Gateway-Token": "x"}
    async with EchoBackend().running() as backend:
        async with run_gateway(edge_settings(backend.url, internal_token="tok" * 6)) as gateway:
            url = f"{gateway.ws_url}/ws/echo?a=1{query}&b=%20"
            async with connect(url, additional_headers={**headers, **forged}) as ws:
                info = await backend_info(ws)
                await ws.send(b"\x00binary")
                assert await ws.recv() == b"\x00binary"
    assert header_values(info, "x-aivtuber-tenant") == ["alice"]  # the client's was dropped
    assert header_values(info, "x-aivtuber-client") == ["127.0.0.1"]
    assert header_values(info, "x-aivtuber-gateway-token") == ["tok" * 6]
    assert info["path"] == "/ws/echo?a=1&b=%20"  # other parameters kept byte for byte
    assert ALICE_KEY not in str(info)
    assert not header_values(info, "x-api-key") and not header_values(info, "authorization")


async def test_a_bearer_that_is_not_a_tenant_key_is_forwarded_when_a_ticket_or_key_admits() -> None:
    async with EchoBackend().running() as backend:
        async with run_gateway(edge_settings(backend.url)) as gateway:
            headers = {"Authorization": "Bearer for-the-backend", "X-Api-Key": BOB_KEY}
            async with connect(f"{gateway.ws_url}/ws/echo", additional_headers=headers) as ws:
                info = await backend_info(ws)
    assert header_values(info, "x-aivtuber-tenant") == ["bob"]
    assert header_values(info, "authorization") == ["Bearer for-the-backend"]


@pytest.mark.parametrize(
    ("headers", "query", "reason"),
    [
        ({}, "", "credential required"),
        ({"Authorization": "Bearer wrong-key-0123456789"}, "", "invalid credential"),
        ({"X-Api-Key": ALICE_KEY + "x"}, "", "invalid credential"),
        ({}, "?api_key=" + ALICE_KEY[:-1], "invalid credential"),
        ({"Authorization": f"Basic {ALICE_KEY}"}, "", "credential required"),
    ],
    ids=["missing", "bearer", "x-api-key", "query", "not-bearer"],
)
async def test_a_missing_or_wrong_credential_is_accepted_then_closed_with_4401(
    headers: dict[str, str], query: str, reason: str
) -> None:
    async with EchoBackend().running() as backend:
        async with run_gateway(edge_settings(backend.url)) as gateway:
            with capture_logs() as logs:
                async with connect(
                    f"{gateway.ws_url}/ws/echo{query}", additional_headers=headers
                ) as ws:
                    code, got = await closed_with(ws)
    assert code == 4401 and got is not None and got.startswith(reason)
    assert backend.accepted == 0  # refused before any backend was dialed
    refused = [entry for entry in logs if entry["event"] == "connection_refused"]
    assert refused and refused[0]["code"] == 4401
    assert ALICE_KEY[:-1] not in str(logs)


async def test_anonymous_gateway_passes_no_tenant_and_keeps_the_authorization_header() -> None:
    async with EchoBackend().running() as backend:
        async with run_gateway(edge_settings(backend.url, tenants=False)) as gateway:
            headers = {"Authorization": "Bearer x", "X-Aivtuber-Tenant": "alice"}
            url = f"{gateway.ws_url}/ws/echo?api_key=whatever&ticket=t"
            async with connect(url, additional_headers=headers) as ws:
                info = await backend_info(ws)
    assert header_values(info, "x-aivtuber-tenant") == []
    assert header_values(info, "x-aivtuber-client") == ["127.0.0.1"]
    assert header_values(info, "authorization") == ["Bearer x"]
    assert info["path"] == "/ws/echo"


async def test_an_origin_not_listed_is_closed_with_4403_and_no_origin_is_judged_by_key() -> None:
    origins = ["https://avatar.example", "http://localhost:5173/"]
    async with EchoBackend().running() as backend:
        settings = edge_settings(backend.url, allowed_origins=origins)
        async with run_gateway(settings) as gateway:
            url = f"{gateway.ws_url}/ws/echo?api_key={ALICE_KEY}"
            async with connect(url, origin="https://evil.example") as ws:  # type: ignore[arg-type]
                refused = await closed_with(ws)
            async with connect(url, origin="https://Avatar.example") as ws:  # type: ignore[arg-type]
                assert header_values(await backend_info(ws), "x-aivtuber-tenant") == ["alice"]
            async with connect(url, origin="http://localhost:5173") as ws:  # type: ignore[arg-type]
                await backend_info(ws)
            async with connect(url) as ws:  # not a browser: no Origin
                await backend_info(ws)
            async with connect(f"{gateway.ws_url}/ws/echo") as ws:
                no_key = await closed_with(ws)
            async with httpx.AsyncClient(base_url=gateway.http_url) as http:
                ticket = await http.post(
                    "/v1/tickets",
                    headers={"X-Api-Key": ALICE_KEY, "Origin": "https://evil.example"},
                )
    assert refused == (4403, "origin not allowed")
    assert no_key[0] == 4401
    assert ticket.status_code == 403 and ticket.json()["code"] == "origin_not_allowed"


async def test_connections_over_max_connections_are_closed_with_4429_per_tenant() -> None:
    async with EchoBackend().running() as backend:
        settings = edge_settings(backend.url, alice_limits={"max_connections": 2})
        async with run_gateway(settings) as gateway:
            alice = f"{gateway.ws_url}/ws/echo?api_key={ALICE_KEY}"
            output = f"{gateway.ws_url}/ws/output/{uuid.uuid4()}?api_key={ALICE_KEY}"
            async with connect(alice) as first, connect(output) as second:
                await backend_info(first)
                await backend_info(second)
                quota = generate_latest(gateway.app.metrics.prometheus).decode()
                async with connect(alice) as third:
                    assert await closed_with(third) == (4429, "too many connections (limit 2)")
                # Another tenant is not affected.
                async with connect(f"{gateway.ws_url}/ws/echo?api_key={BOB_KEY}") as bob:
                    await backend_info(bob)
            # Closed connections give their places back.
            await wait_until(lambda: len(gateway.registry) == 0)
            async with connect(alice) as again:
                await backend_info(again)
            metrics = generate_latest(gateway.app.metrics.prometheus).decode()
    assert 'aivtuber_gateway_rejected_total{code="4429",route="echo"} 1.0' in metrics
    assert 'aivtuber_gateway_tenant_connections_open{tenant="alice"} 2.0' in quota
    assert 'aivtuber_gateway_tenant_connections_open{tenant="bob"} 0.0' in quota


async def test_anonymous_clients_are_limited_per_ip() -> None:
    async with EchoBackend().running() as backend:
        settings = edge_settings(backend.url, tenants=False, limits={"max_connections": 1})
        async with run_gateway(settings) as gateway:
            async with connect(f"{gateway.ws_url}/ws/echo") as first:
                await backend_info(first)
                async with connect(f"{gateway.ws_url}/ws/echo") as second:
                    assert (await closed_with(second))[0] == 4429


async def test_monitoring_needs_the_admin_key_when_one_is_set() -> None:
    async with EchoBackend().running() as backend:
        settings = edge_settings(backend.url, admin_key=ADMIN_KEY)
        async with run_gateway(settings) as gateway:
            async with httpx.AsyncClient(base_url=gateway.http_url) as http:
                denied = {path: await http.get(path) for path in ("/connections", "/metrics", "/")}
                wrong = await http.get("/connections", headers={"Authorization": "Bearer nope"})
                tenant = await http.get(
                    "/connections", headers={"Authorization": f"Bearer {ALICE_KEY}"}
                )
                bearer = {
                    path: await http.get(path, headers={"Authorization": f"Bearer {ADMIN_KEY}"})
                    for path in ("/connections", "/metrics", "/")
                }
                query = await http.get("/metrics", params={"admin_key": ADMIN_KEY})
                health = await http.get("/health")
                admin_health = await http.get("/health", params={"admin_key": ADMIN_KEY})
                healthz = await http.get("/healthz")
    assert all(answer.status_code == 401 for answer in denied.values())
    assert denied["/connections"].json()["code"] == "unauthorized"
    assert wrong.status_code == 401 and tenant.status_code == 401
    assert all(answer.status_code == 200 for answer in bearer.values())
    assert bearer["/"].headers["referrer-policy"] == "no-referrer"
    assert query.status_code == 200 and "aivtuber_gateway_connections_open" in query.text
    # /health stays open for load balancers, and says nothing about what is behind it.
    assert health.status_code == 200
    assert health.json() == {
        "status": "ok",
        "gateway": "running",
        "backends": {"echo": {"status": "ok"}, "output": {"status": "ok"}},
    }
    assert backend.url in admin_health.text and "uptime_s" in admin_health.json()
    assert healthz.json() == {"status": "ok"}


async def test_without_an_admin_key_monitoring_answers_loopback_but_not_a_relayed_client() -> None:
    async with EchoBackend().running() as backend:
        async with run_gateway(edge_settings(backend.url)) as gateway:
            async with httpx.AsyncClient(base_url=gateway.http_url) as http:
                local = await http.get("/connections")
                relayed = await http.get(
                    "/connections", headers={"X-Forwarded-For": "198.51.100.4"}
                )
                health = await http.get("/health", headers={"X-Forwarded-For": "198.51.100.4"})
    assert local.status_code == 200
    assert relayed.status_code == 403 and "admin_key" in relayed.json()["message"]
    assert backend.url not in health.text


async def test_no_whole_task_id_or_query_string_in_connections_logs_or_metrics() -> None:
    task_id = str(uuid.uuid4())
    async with EchoBackend().running() as backend:
        async with run_gateway(edge_settings(backend.url, admin_key=ADMIN_KEY)) as gateway:
            auth = {"Authorization": f"Bearer {ADMIN_KEY}"}
            with capture_logs() as logs:
                url = f"{gateway.ws_url}/ws/output/{task_id}?api_key={ALICE_KEY}&from_chunk=0"
                async with connect(url) as ws:
                    await backend_info(ws)
                    async with httpx.AsyncClient(base_url=gateway.http_url) as http:
                        listed = (await http.get("/connections", headers=auth)).text
                        metrics = (await http.get("/metrics", headers=auth)).text
                async with connect(f"{gateway.ws_url}/nowhere/{task_id}") as ws:
                    await closed_with(ws)
    shown = listed + metrics + str(logs)
    assert task_id not in shown and ALICE_KEY not in shown and "from_chunk" not in shown
    assert f"/ws/output/{task_id[:8]}…" in listed
    opened = next(entry for entry in logs if entry["event"] == "connection_opened")
    assert opened["path"] == f"/ws/output/{task_id[:8]}…"
