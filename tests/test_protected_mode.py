"""Protected mode: nothing starts wide open by accident (one line naming the fix, exit 2)."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path

import pytest

from aivtuber_common.config import (
    AuthSettings,
    ConfigError,
    GatewaySettings,
    Settings,
    TenantSettings,
    load_settings,
)
from aivtuber_common.protected import check_exposure
from tests.edge_support import ALICE_KEY
from tests.support import free_port

ROOT = Path(__file__).resolve().parents[1]
EXIT_TIMEOUT_S = 30.0  # a hang guard: the refusal comes before anything is imported
SERVICES = {
    "gateway": "services/gateway-python/main.py",
    "input_handler": "services/input-handler-python/main.py",
    "output_handler": "services/output-handler-python/main.py",
    "tts_worker": "services/tts-worker/main.py",
}


async def start(tmp_path: Path, service: str, config: dict, *args: str) -> tuple[int, str]:
    """Run a service on a non-loopback host; its exit code and output (it must exit)."""
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config))
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("GATEWAY_API_KEY", "GATEWAY_ADMIN_KEY", "AIVTUBER_CONFIG")
    }
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        SERVICES[service],
        "--config",
        str(path),
        "--host",
        "0.0.0.0",
        "--port",
        str(free_port()),
        *args,
        cwd=ROOT,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        async with asyncio.timeout(EXIT_TIMEOUT_S):
            stdout, stderr = await process.communicate()
    finally:
        if process.returncode is None:
            process.kill()
            await process.communicate()
    assert process.returncode is not None
    return process.returncode, (stdout + stderr).decode()


async def test_gateway_without_tenants_on_a_public_address_refuses_to_start(
    tmp_path: Path,
) -> None:
    code, output = await start(tmp_path, "gateway", {})
    assert code == 2
    lines = output.strip().splitlines()
    assert len(lines) == 1, output
    assert lines[0].startswith("gateway: config error: gateway.host '0.0.0.0' is not a loopback")
    assert "GATEWAY_API_KEY" in lines[0] and '"anonymous": true' in lines[0]


@pytest.mark.parametrize("service", ["input_handler", "output_handler", "tts_worker"])
async def test_internal_services_on_a_public_address_need_the_internal_token(
    tmp_path: Path, service: str
) -> None:
    code, output = await start(tmp_path, service, {})
    assert code == 2
    assert f"{service}.host '0.0.0.0' is not a loopback address" in output
    assert "internal_token" in output and len(output.strip().splitlines()) == 1


def test_what_protected_mode_lets_start() -> None:
    public = GatewaySettings(host="0.0.0.0")
    tenants = {"alice": TenantSettings(key=ALICE_KEY)}
    allowed = [
        Settings(gateway=GatewaySettings(host="127.0.0.1")),
        Settings(gateway=GatewaySettings(host="::1")),
        Settings(gateway=GatewaySettings(host="localhost")),
        Settings(gateway=public, auth=AuthSettings(tenants=tenants)),
        Settings(gateway=public, auth=AuthSettings(anonymous=True)),
    ]
    for settings in allowed:
        check_exposure(settings, "gateway")
    with pytest.raises(ConfigError):
        check_exposure(Settings(gateway=public), "gateway")
    # The internal services: loopback, or a token.
    check_exposure(Settings(), "input_handler")
    exposed = Settings.model_validate({"output_handler": {"host": "0.0.0.0"}})
    with pytest.raises(ConfigError):
        check_exposure(exposed, "output_handler")
    check_exposure(exposed.model_copy(update={"internal_token": "t" * 20}), "output_handler")


def test_the_shipped_config_listens_on_loopback_and_starts_without_any_setting() -> None:
    settings = load_settings(ROOT / "config.json", environ={})
    assert settings.gateway.host == "127.0.0.1" and not settings.auth.tenants
    for section in ("gateway", "input_handler", "output_handler", "tts_worker"):
        check_exposure(settings, section)
