"""A Low of issue 15: a TLS connection that never handshakes is closed after
``gateway.head_timeout_s``, not held for asyncio's 60 s."""

from __future__ import annotations

import asyncio
import json
import os
import ssl
import sys
from pathlib import Path

import httpx
import trustme

from tests.support import listening_port

ROOT = Path(__file__).resolve().parents[2]
HANG_GUARD_S = 30.0  # far under the 60 s of before, far over the 1 s configured


async def test_a_tls_connection_that_never_handshakes_is_closed_after_the_head_timeout(
    tmp_path: Path,
) -> None:
    ca = trustme.CA()
    leaf = ca.issue_cert("127.0.0.1")
    leaf.private_key_pem.write_to_path(str(tmp_path / "key.pem"))
    leaf.cert_chain_pems[0].write_to_path(str(tmp_path / "cert.pem"))
    tls = {"certfile": str(tmp_path / "cert.pem"), "keyfile": str(tmp_path / "key.pem")}
    config = tmp_path / "config.json"
    config.write_text(
        json.dumps(
            {
                "logging": {"format": "json"},
                "gateway": {"host": "127.0.0.1", "port": 0, "tls": tls, "head_timeout_s": 1.0},
            }
        )
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GATEWAY_", "AIVTUBER_"))}
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "services/gateway-python/main.py",
        "--config",
        str(config),
        cwd=ROOT,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        assert process.stdout is not None
        port = await listening_port(process.stdout)
        reader, writer = await asyncio.open_connection("127.0.0.1", port)  # then: silence
        async with asyncio.timeout(HANG_GUARD_S):
            closed = await reader.read()  # EOF when the gateway gives up on the handshake
        writer.close()
        context = ssl.create_default_context()
        ca.configure_trust(context)
        async with httpx.AsyncClient(verify=context) as http:
            health = await http.get(f"https://127.0.0.1:{port}/healthz")
    finally:
        process.kill()
        await process.communicate()
    assert closed == b""
    assert health.status_code == 200  # and TLS still works for those who handshake
