"""deploy/nginx/aivtuber.conf as shipped: a real nginx terminates TLS in front of the gateway
(skipped, with the reason, where nginx is not installed)."""

from __future__ import annotations

import asyncio
import contextlib
import getpass
import os
import ssl
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
import trustme
from websockets.asyncio.client import connect

from bench.nginx import INSTALL_HINT, find_nginx
from tests.backends import EchoBackend
from tests.edge_support import ALICE_KEY, backend_info, edge_settings, header_values
from tests.gateway_support import closed_with, run_gateway
from tests.support import free_port

ROOT = Path(__file__).resolve().parent.parent
SHIPPED = ROOT / "deploy" / "nginx" / "aivtuber.conf"
NGINX = find_nginx()
START_TIMEOUT_S = 15.0


def render(prefix: Path, https_port: int, http_port: int, gateway_port: int) -> Path:
    """The shipped file with this test's ports, certificate and log paths, in a main
    nginx.conf of its own (nothing under /etc or /var)."""
    site = SHIPPED.read_text()
    for old, new in {
        "listen 443 ssl;": f"listen 127.0.0.1:{https_port} ssl;",
        "listen [::]:443 ssl;": "",
        "listen 80;": f"listen 127.0.0.1:{http_port};",
        "listen [::]:80;": "",
        "server 127.0.0.1:8000;": f"server 127.0.0.1:{gateway_port};",
        "/etc/letsencrypt/live/avatar.example.com/fullchain.pem": str(prefix / "cert.pem"),
        "/etc/letsencrypt/live/avatar.example.com/privkey.pem": str(prefix / "key.pem"),
        "/var/log/nginx/aivtuber.access.log": str(prefix / "access.log"),
    }.items():
        assert old in site, old
        site = site.replace(old, new)
    (prefix / "aivtuber.conf").write_text(site)
    temp = "\n".join(
        f"    {name}_temp_path {prefix / name};"
        for name in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    user = f"user {getpass.getuser()};" if os.geteuid() == 0 else ""
    main = prefix / "nginx.conf"
    main.write_text(
        f"{user}\ndaemon off;\nworker_processes 1;\npid {prefix}/nginx.pid;\n"
        f"error_log {prefix}/error.log warn;\nevents {{}}\n"
        f"http {{\n{temp}\n    include {prefix}/aivtuber.conf;\n}}\n"
    )
    return main


@pytest.fixture
def ca() -> trustme.CA:
    return trustme.CA()


def write_certificate(ca: trustme.CA, prefix: Path) -> None:
    leaf = ca.issue_cert("127.0.0.1")
    leaf.private_key_pem.write_to_path(str(prefix / "key.pem"))
    leaf.cert_chain_pems[0].write_to_path(str(prefix / "cert.pem"))


@contextlib.asynccontextmanager
async def running_nginx(main: Path, port: int) -> AsyncIterator[None]:
    assert NGINX is not None
    process = await asyncio.create_subprocess_exec(
        NGINX, "-p", str(main.parent), "-c", str(main), "-e", str(main.parent / "error.log")
    )
    try:
        async with asyncio.timeout(START_TIMEOUT_S):
            while True:
                if process.returncode is not None:
                    raise AssertionError((main.parent / "error.log").read_text())
                try:
                    _, writer = await asyncio.open_connection("127.0.0.1", port)
                except OSError:
                    await asyncio.sleep(0.02)
                    continue
                writer.close()
                await writer.wait_closed()
                break
        yield
    finally:
        if process.returncode is None:
            process.terminate()
            await process.wait()


@pytest.mark.skipif(NGINX is None, reason=INSTALL_HINT)
def test_the_shipped_nginx_config_passes_nginx_t(tmp_path: Path, ca: trustme.CA) -> None:
    assert NGINX is not None
    write_certificate(ca, tmp_path)
    main = render(tmp_path, free_port(), free_port(), free_port())
    done = subprocess.run(
        [NGINX, "-t", "-p", str(tmp_path), "-c", str(main), "-e", str(tmp_path / "e.log")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr


@pytest.mark.skipif(NGINX is None, reason=INSTALL_HINT)
async def test_nginx_terminates_tls_and_the_gateway_still_authenticates(
    tmp_path: Path, ca: trustme.CA
) -> None:
    trusted = ssl.create_default_context()
    ca.configure_trust(trusted)
    https_port = free_port()
    async with EchoBackend().running() as backend:
        async with run_gateway(edge_settings(backend.url)) as gateway:
            write_certificate(ca, tmp_path)
            main = render(tmp_path, https_port, free_port(), gateway.port)
            async with running_nginx(main, https_port):
                wss = f"wss://127.0.0.1:{https_port}"
                async with connect(f"{wss}/ws/echo?api_key={ALICE_KEY}", ssl=trusted) as ws:
                    info = await backend_info(ws)
                    await ws.send(b"\x02" * 100_000)
                    assert await ws.recv() == b"\x02" * 100_000
                async with connect(f"{wss}/ws/echo", ssl=trusted) as ws:
                    refused = await closed_with(ws)
                async with httpx.AsyncClient(
                    base_url=f"https://127.0.0.1:{https_port}", verify=trusted
                ) as http:
                    relayed = await http.get("/connections")
                    health = await http.get("/health")
    assert header_values(info, "x-aivtuber-tenant") == ["alice"]
    assert header_values(info, "x-forwarded-for") == ["127.0.0.1, 127.0.0.1"]
    assert refused[0] == 4401  # the close code crosses nginx
    # The TCP peer is loopback, but nginx says it relays: monitoring is not open to it.
    assert relayed.status_code == 403
    assert health.status_code == 200
    assert ALICE_KEY not in (tmp_path / "access.log").read_text()
