"""The gateway: one port, WebSocket routes proxied to the handlers, live monitoring."""

from .app import GatewayApp, create_app

__all__ = ["GatewayApp", "create_app"]
