"""Protected mode (as Redis does it): nothing starts wide open by accident.

- The gateway serves anonymous clients (no ``auth.tenants``, no ``GATEWAY_API_KEY``) only
  when it listens on a loopback address, or when ``auth.anonymous`` says so explicitly.
- The internal services (input handler, output handler, TTS worker) trust the gateway's
  identity headers and each other's task traffic by the internal token, always in force:
  ``internal_token``, else the machine's generated token file. On a non-loopback address
  they need ``internal_token`` set in the config (the file is one machine's).

Each refusal is one line naming the fix; :func:`aivtuber_common.cli.run_service` prints it
and exits with code 2.
"""

from __future__ import annotations

from .config import ConfigError, Settings
from .identity import is_loopback

__all__ = ["check_exposure"]

INTERNAL_SECTIONS = ("input_handler", "output_handler", "tts_worker")


def check_exposure(settings: Settings, section: str) -> None:
    """Raise ConfigError when the service of ``section`` would listen unprotected."""
    if section == "gateway":
        _check_gateway(settings)
    elif section in INTERNAL_SECTIONS:
        _check_internal(settings, section)


def _check_gateway(settings: Settings) -> None:
    host = settings.gateway.host
    if settings.auth.tenants or settings.auth.anonymous or is_loopback(host):
        return
    raise ConfigError(
        f"gateway.host {host!r} is not a loopback address and no tenant is configured: "
        "set GATEWAY_API_KEY (or auth.tenants), or listen on 127.0.0.1, "
        'or set "auth": {"anonymous": true} to serve anyone'
    )


def _check_internal(settings: Settings, section: str) -> None:
    host = getattr(settings, section).host
    if settings.internal_token or is_loopback(host):
        return
    raise ConfigError(
        f"{section}.host {host!r} is not a loopback address and no internal_token is set: "
        "set internal_token (the same on every service) or listen on 127.0.0.1"
    )
