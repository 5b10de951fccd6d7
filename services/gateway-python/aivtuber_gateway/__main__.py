"""``python -m aivtuber_gateway`` / ``aivtuber-gateway`` / services/gateway-python/main.py."""

from __future__ import annotations

from collections.abc import Sequence

from aivtuber_common.cli import ServiceSpec, run_service

from .app import create_app
from .server import GatewayServer


def main(argv: Sequence[str] | None = None) -> int:
    return run_service(
        ServiceSpec("gateway", "gateway", create_app, server_class=GatewayServer), argv
    )


if __name__ == "__main__":
    raise SystemExit(main())
