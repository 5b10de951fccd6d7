"""gateway.trusted_proxies: forwarding headers believed only from the proxies listed, the
client taken as the rightmost hop that is not one of them; each client behind nginx gets
its own limits (issue 15, "Trusted proxies" and "Behind nginx every client shares the
proxy's identity")."""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Any

import httpx
import pytest
import trustme
from websockets.asyncio.client import connect

from aivtuber_common.config import Settings
from aivtuber_gateway.clientaddr import ClientAddresses
from tests.backends import EchoBackend
from tests.edge_support import backend_info, edge_settings, header_values
from tests.gateway_support import closed_with, run_gateway
from tests.security.test_identity_model import remote_address
from tests.support import free_port
from tests.test_deploy_nginx import NGINX, render, running_nginx, write_certificate

INSTALL_HINT = "nginx is not installed (apt install nginx-light)"


def behind(settings: Settings, *proxies: str) -> Settings:
    gateway = settings.gateway.model_copy(update={"trusted_proxies": list(proxies)})
    return settings.model_copy(update={"gateway": gateway})


def xff(chain: str) -> dict[str, Any]:
    return {"additional_headers": {"X-Forwarded-For": chain}}


def test_the_rightmost_untrusted_hop_is_the_client_and_only_from_a_trusted_peer() -> None:
    proxies = ClientAddresses(["127.0.0.1", "10.0.0.0/8"])
    chain = [(b"x-forwarded-for", b"6.6.6.6, 203.0.113.9"), (b"X-Forwarded-For", b"10.1.2.3")]
    assert proxies.client_of("127.0.0.1", chain) == "203.0.113.9"
    assert proxies.client_of("198.51.100.1", chain) == "198.51.100.1"  # not a proxy of ours
    assert proxies.client_of("127.0.0.1", [(b"forwarded", b'for="[2001:db8::1]:4711"')]) == (
        "2001:db8::1"
    )
    assert proxies.client_of("127.0.0.1", [(b"x-forwarded-for", b"junk")]) == "127.0.0.1"
    assert proxies.client_of("127.0.0.1", []) == "127.0.0.1"
    assert ClientAddresses([]).client_of("127.0.0.1", chain) == "127.0.0.1"


async def test_forwarded_for_is_believed_from_a_trusted_proxy_only() -> None:
    async with EchoBackend().running() as backend:
        anonymous = edge_settings(backend.url, tenants=False)
        async with run_gateway(anonymous) as gateway:
            async with connect(f"{gateway.ws_url}/ws/echo", **xff("203.0.113.9")) as ws:
                untrusted = await backend_info(ws)
        async with run_gateway(behind(anonymous, "127.0.0.1")) as gateway:
            async with connect(f"{gateway.ws_url}/ws/echo", **xff("6.6.6.6, 203.0.113.9")) as ws:
                trusted = await backend_info(ws)
    assert header_values(untrusted, "x-aivtuber-client") == ["127.0.0.1"]
    # Before: gateway.trusted_proxies was not read; every client behind nginx was 127.0.0.1.
    assert header_values(trusted, "x-aivtuber-client") == ["203.0.113.9"]


async def test_each_client_behind_a_trusted_proxy_has_its_own_connection_limit() -> None:
    async with EchoBackend().running() as backend:
        settings = edge_settings(backend.url, tenants=False, limits={"max_connections": 1})
        async with run_gateway(behind(settings, "127.0.0.1")) as gateway:
            url = f"{gateway.ws_url}/ws/echo"
            async with connect(url, **xff("203.0.113.1")) as first:
                async with connect(url, **xff("203.0.113.2")) as second:
                    await backend_info(first)
                    await backend_info(second)  # a client of its own: served
                    async with connect(url, **xff("203.0.113.1")) as third:
                        refused = await closed_with(third)
            async with httpx.AsyncClient(base_url=gateway.http_url) as http:
                relayed = await http.get("/connections", headers={"X-Forwarded-For": "127.0.0.1"})
    assert refused[0] == 4429
    assert relayed.status_code == 403  # a relayed request is never "local" for admin pages


@pytest.mark.skipif(NGINX is None, reason=INSTALL_HINT)
async def test_behind_the_shipped_nginx_each_client_gets_its_own_address_and_limits(
    tmp_path: Path,
) -> None:
    remote = remote_address()
    ca = trustme.CA()
    trusted = ssl.create_default_context()
    ca.configure_trust(trusted)
    trusted.check_hostname = False  # the remote client dials the machine's other address
    https_port = free_port()
    async with EchoBackend().running() as backend:
        settings = edge_settings(backend.url, tenants=False, limits={"max_connections": 1})
        async with run_gateway(behind(settings, "127.0.0.1")) as gateway:
            write_certificate(ca, tmp_path)
            main = render(tmp_path, https_port, free_port(), gateway.port)
            site = tmp_path / "aivtuber.conf"
            site.write_text(site.read_text().replace(f"127.0.0.1:{https_port}", str(https_port)))
            async with running_nginx(main, https_port):
                local = f"wss://127.0.0.1:{https_port}/ws/echo"
                far = f"wss://{remote}:{https_port}/ws/echo"
                async with connect(local, ssl=trusted) as one, connect(far, ssl=trusted) as two:
                    near_info, far_info = await backend_info(one), await backend_info(two)
    assert header_values(near_info, "x-aivtuber-client") == ["127.0.0.1"]
    # Before: both were 127.0.0.1 and the second was refused 4429 (one shared limit).
    assert header_values(far_info, "x-aivtuber-client") == [remote]
