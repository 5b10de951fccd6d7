"""The internal token at the door of every back end (input handler, output handler, worker).

:class:`RequireInternalToken` wraps a back end's ASGI app: a request that does not carry
the internal token is refused before the app sees it, on every path except the few that
load balancers and scrapers poll (``/health``, ``/metrics``). Two forms carry it:

    Authorization: Bearer <internal_token>     service to service (submit, ingest, voices)
    x-aivtuber-gateway-token: <internal_token> the gateway's hop, next to its identity headers

An HTTP request without it gets ``401 {"type": "error", "code": "unauthorized", ...}``; a
WebSocket is accepted and closed with 4401, so the peer can read why. With no token
(``internal_token`` None: only an app built in-process without
:func:`aivtuber_common.token_file.with_internal_token`) the wrapper lets everything through.
"""

from __future__ import annotations

import json
from collections.abc import Iterable

import structlog
from starlette.middleware import Middleware
from starlette.types import ASGIApp, Receive, Scope, Send

from .closecodes import AppCloseCode
from .codes import ErrorCode
from .identity import GATEWAY_TOKEN_HEADER, token_matches
from .redact import short_path

__all__ = ["OPEN_PATHS", "RequireInternalToken", "carries_token", "internal_middleware"]

# Read-only and polled by load balancers and Prometheus: never behind the token.
OPEN_PATHS = frozenset({"/health", "/healthz", "/metrics"})
REASON = "a valid internal token is required"

log = structlog.get_logger("aivtuber_common.internal_auth")


def carries_token(headers: Iterable[tuple[bytes, bytes]], token: str) -> bool:
    """Whether raw ASGI ``headers`` present ``token`` in either accepted form."""
    for name, value in headers:
        lower = name.lower()
        if lower == b"authorization":
            scheme, _, given = value.decode("latin-1").partition(" ")
            if scheme.lower() == "bearer" and token_matches(given.strip(), token):
                return True
        elif lower == GATEWAY_TOKEN_HEADER.encode() and token_matches(
            value.decode("latin-1"), token
        ):
            return True
    return False


class RequireInternalToken:
    """ASGI middleware: the internal token, or a refusal before the app is reached."""

    def __init__(
        self, app: ASGIApp, token: str | None, open_paths: frozenset[str] = OPEN_PATHS
    ) -> None:
        self.app = app
        self.token = token
        self.open_paths = open_paths

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            self.token is None
            or scope["type"] not in ("http", "websocket")
            or scope["path"] in self.open_paths
            or carries_token(scope.get("headers") or (), self.token)
        ):
            await self.app(scope, receive, send)
            return
        # The path cut short: no query string, no whole task id.
        log.warning("unauthorized", path=short_path(scope["path"]), kind=scope["type"])
        if scope["type"] == "websocket":
            if (await receive())["type"] == "websocket.connect":
                await send({"type": "websocket.accept"})
                await send(
                    {"type": "websocket.close", "code": AppCloseCode.UNAUTHORIZED, "reason": REASON}
                )
            return
        body = json.dumps(
            {"type": "error", "code": ErrorCode.UNAUTHORIZED, "message": REASON}
        ).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 401,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", b"%d" % len(body)),
                    (b"www-authenticate", b'Bearer realm="aivtuber-internal"'),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})


def internal_middleware(token: str | None) -> list[Middleware]:
    """What each back end's ``Starlette(middleware=...)`` gets: the token at its door."""
    return [Middleware(RequireInternalToken, token=token)]
