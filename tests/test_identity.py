"""The identity the gateway passes to the back ends, and the per-tenant limits."""

from __future__ import annotations

from pathlib import Path

import pytest

from aivtuber_common.config import ConfigError, load_settings
from aivtuber_common.identity import (
    CLIENT_HEADER,
    GATEWAY_TOKEN_HEADER,
    TENANT_HEADER,
    Identity,
    identity_headers,
    read_identity,
)

TOKEN = "internal-token-0123456789"
CLAIM = [("x-aivtuber-tenant", "alice"), ("x-aivtuber-client", "203.0.113.9")]


def test_loopback_peer_is_believed_without_token() -> None:
    assert read_identity(CLAIM, "127.0.0.1", None) == Identity("alice", "203.0.113.9")


def test_remote_peer_without_token_is_anonymous_at_its_address() -> None:
    assert read_identity(CLAIM, "198.51.100.7", None) == Identity(None, "198.51.100.7")


def test_token_must_match_when_set() -> None:
    with_token = [*CLAIM, ("x-aivtuber-gateway-token", TOKEN)]
    assert read_identity(with_token, "198.51.100.7", TOKEN).tenant == "alice"
    wrong = [*CLAIM, ("x-aivtuber-gateway-token", TOKEN + "x")]
    assert read_identity(wrong, "127.0.0.1", TOKEN) == Identity(None, "127.0.0.1")
    assert read_identity(CLAIM, "127.0.0.1", TOKEN).tenant is None


def test_limits_key_separates_tenants_and_anonymous_ips() -> None:
    assert Identity("alice", "1.2.3.4").limits_key == "tenant:alice"
    assert Identity(None, "1.2.3.4").limits_key == "ip:1.2.3.4"


def test_tenant_limits_override_defaults(tmp_path: Path) -> None:
    path = tmp_path / "c.json"
    path.write_text(
        '{"limits": {"speaks_per_minute": 10},'
        ' "auth": {"tenants": {"alice": {"key": "k' + "x" * 20 + '",'
        ' "limits": {"max_active_tasks": 1}}}}}'
    )
    settings = load_settings(path, environ={})
    assert settings.limits_for("alice").max_active_tasks == 1
    assert settings.limits_for("alice").speaks_per_minute == 10
    assert settings.limits_for(None).max_active_tasks == 4


def test_gateway_api_key_adds_default_tenant(tmp_path: Path) -> None:
    key = "seed-key-0123456789abcdef"
    path = tmp_path / "c.json"
    path.write_text("{}")
    settings = load_settings(path, environ={"GATEWAY_API_KEY": key})
    assert settings.auth.tenants["default"].key == key
    assert key not in repr(settings)


def test_short_tenant_key_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "c.json"
    path.write_text('{"auth": {"tenants": {"alice": {"key": "short"}}}}')
    with pytest.raises(ConfigError, match="auth.tenants.alice.key"):
        load_settings(path, environ={})


def test_the_identity_headers_written_are_the_ones_read() -> None:
    identity = Identity("alice", "203.0.113.9")
    headers = identity_headers(identity, TOKEN)
    assert [name for name, _ in headers] == [CLIENT_HEADER, TENANT_HEADER, GATEWAY_TOKEN_HEADER]
    assert read_identity(headers, "198.51.100.7", TOKEN) == identity
    anonymous = identity_headers(Identity(None, "203.0.113.9"), None)
    assert anonymous == [(CLIENT_HEADER, "203.0.113.9")]
