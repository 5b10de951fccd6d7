"""Gateways with credentials for the edge tests: two tenants in front of an echo backend."""

from __future__ import annotations

import json
from typing import Any

from websockets.asyncio.client import ClientConnection

from aivtuber_common.config import (
    AuthSettings,
    GatewaySettings,
    LimitsSettings,
    RouteSettings,
    Settings,
    TenantSettings,
)

ALICE_KEY = "alice-key-0123456789abcdef"
BOB_KEY = "bob-key-0123456789abcdef"
ADMIN_KEY = "admin-key-0123456789abcdef"


def edge_settings(
    backend_url: str,
    *,
    tenants: bool = True,
    limits: dict[str, Any] | None = None,
    alice_limits: dict[str, Any] | None = None,
    internal_token: str | None = None,
    tls: dict[str, str] | None = None,
    alice_key: str = ALICE_KEY,
    **auth: Any,
) -> Settings:
    """A gateway with the routes /ws/echo and /ws/output/{task_id} on ``backend_url`` and,
    unless ``tenants`` is False, the tenants alice and bob."""
    routes = {
        "echo": RouteSettings(path="/ws/echo", backends=[backend_url]),
        "output": RouteSettings(path="/ws/output/{task_id}", backends=[backend_url]),
    }
    table = {}
    if tenants:
        table = {
            "alice": TenantSettings.model_validate(
                {"key": alice_key, "limits": alice_limits or {}}
            ),
            "bob": TenantSettings(key=BOB_KEY),
        }
    return Settings(
        internal_token=internal_token,
        auth=AuthSettings(tenants=table, **auth),
        limits=LimitsSettings(**(limits or {})),
        gateway=GatewaySettings.model_validate({"routes": routes, "tls": tls}),
    )


async def backend_info(ws: ClientConnection) -> dict[str, Any]:
    """What the echo backend received: its path (with the query) and headers."""
    await ws.send("!info")
    info: dict[str, Any] = json.loads(await ws.recv())
    return info


def header_values(info: dict[str, Any], name: str) -> list[str]:
    return [value for key, value in info["headers"] if key == name]
