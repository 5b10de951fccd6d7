"""gateway.tls: wss:// and https:// served directly, checked against a throwaway CA."""

from __future__ import annotations

import ssl
from pathlib import Path

import httpx
import pytest
import trustme
from websockets.asyncio.client import connect

from aivtuber_common.config import ConfigError
from aivtuber_gateway.__main__ import check
from tests.backends import EchoBackend
from tests.edge_support import ALICE_KEY, backend_info, edge_settings, header_values
from tests.gateway_support import run_gateway


@pytest.fixture
def certificate(tmp_path: Path) -> tuple[trustme.CA, dict[str, str]]:
    ca = trustme.CA()
    leaf = ca.issue_cert("127.0.0.1", "localhost")
    certfile, keyfile = tmp_path / "cert.pem", tmp_path / "key.pem"
    leaf.private_key_pem.write_to_path(str(keyfile))
    leaf.cert_chain_pems[0].write_to_path(str(certfile))
    return ca, {"certfile": str(certfile), "keyfile": str(keyfile)}


async def test_wss_and_https_are_served_with_the_configured_certificate(
    certificate: tuple[trustme.CA, dict[str, str]],
) -> None:
    ca, tls = certificate
    trusted = ssl.create_default_context()
    ca.configure_trust(trusted)
    async with EchoBackend().running() as backend:
        async with run_gateway(edge_settings(backend.url, tls=tls)) as gateway:
            wss = gateway.ws_url.replace("ws://", "wss://")
            https = gateway.http_url.replace("http://", "https://")
            async with connect(f"{wss}/ws/echo?api_key={ALICE_KEY}", ssl=trusted) as ws:
                info = await backend_info(ws)
                await ws.send(b"\x01" * 70000)  # bigger than one TLS record
                assert await ws.recv() == b"\x01" * 70000
            async with httpx.AsyncClient(verify=trusted) as http:
                health = await http.get(f"{https}/healthz")
                plain_refused = False
                try:
                    await http.get(f"{gateway.http_url}/healthz")
                except httpx.HTTPError:
                    plain_refused = True
            untrusted = ssl.create_default_context()  # does not know the throwaway CA
            with pytest.raises(ssl.SSLCertVerificationError):
                async with connect(f"{wss}/ws/echo", ssl=untrusted):
                    pass
    assert header_values(info, "x-aivtuber-tenant") == ["alice"]
    assert header_values(info, "x-forwarded-proto") == ["https"]
    assert health.status_code == 200
    assert plain_refused  # no plain http on a TLS port


def test_unreadable_or_mismatched_tls_files_are_a_one_line_config_error(
    certificate: tuple[trustme.CA, dict[str, str]], tmp_path: Path
) -> None:
    _, tls = certificate
    other = trustme.CA().issue_cert("127.0.0.1")
    other_key = tmp_path / "other-key.pem"
    other.private_key_pem.write_to_path(str(other_key))
    check(edge_settings("ws://127.0.0.1:1", tls=tls))  # loads: no error
    for bad in (
        {**tls, "certfile": str(tmp_path / "missing.pem")},
        {**tls, "keyfile": str(other_key)},
    ):
        with pytest.raises(ConfigError, match=r"^gateway\.tls: cannot load certfile") as error:
            check(edge_settings("ws://127.0.0.1:1", tls=bad))
        assert "\n" not in str(error.value)
