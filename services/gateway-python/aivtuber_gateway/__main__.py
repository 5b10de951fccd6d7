"""``python -m aivtuber_gateway`` / ``aivtuber-gateway`` / services/gateway-python/main.py."""

from __future__ import annotations

import ssl
from collections.abc import Sequence

from aivtuber_common.cli import ServiceSpec, run_service
from aivtuber_common.config import ConfigError, Settings

from .app import create_app
from .server import GatewayServer

__all__ = ["check", "main"]


def check(settings: Settings) -> None:
    """What the schema cannot tell: TLS files that are missing, unreadable or do not match
    (uvicorn would otherwise fail with a traceback at start)."""
    tls = settings.gateway.tls
    if tls is None:
        return
    try:
        ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(
            tls.certfile, tls.keyfile
        )
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(
            f"gateway.tls: cannot load certfile {tls.certfile!r} with keyfile "
            f"{tls.keyfile!r}: {exc.strerror or exc}"
        ) from exc


def main(argv: Sequence[str] | None = None) -> int:
    return run_service(
        ServiceSpec("gateway", "gateway", create_app, server_class=GatewayServer, check=check),
        argv,
    )


if __name__ == "__main__":
    raise SystemExit(main())
