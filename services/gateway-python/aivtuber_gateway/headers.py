"""Which of the client's handshake headers reach the backend.

End-to-end headers pass (``Origin``, ``User-Agent``, ``Authorization``, ``Cookie``, custom
ones); hop-by-hop headers and the handshake's own (``Sec-WebSocket-*``, ``Host``) are dropped,
as are any named in ``Connection``. The gateway adds ``X-Forwarded-For`` (appended to an
existing chain), ``X-Forwarded-Proto``, ``X-Forwarded-Host`` and ``X-Request-ID`` (the
client's, or a new one). Headers are never logged: they carry credentials.
"""

from __future__ import annotations

import uuid
from typing import Any

__all__ = ["ForwardedRequest", "forwarded_request"]

# RFC 9110 section 7.6.1 hop-by-hop headers, plus what the websockets client sets itself.
_DROP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "host",
        "content-length",
        "sec-websocket-key",
        "sec-websocket-version",
        "sec-websocket-extensions",
        "sec-websocket-protocol",
        "sec-websocket-accept",
        "x-forwarded-for",
        "x-forwarded-proto",
        "x-forwarded-host",
        "x-request-id",
    }
)
_MAX_REQUEST_ID = 200


class ForwardedRequest:
    """The headers and subprotocols to open the backend connection with."""

    __slots__ = ("headers", "subprotocols", "request_id")

    def __init__(
        self, headers: list[tuple[str, str]], subprotocols: list[str], request_id: str
    ) -> None:
        self.headers = headers
        self.subprotocols = subprotocols
        self.request_id = request_id


def forwarded_request(scope: dict[str, Any]) -> ForwardedRequest:
    """Build the backend handshake's headers from an ASGI websocket scope."""
    raw: list[tuple[str, str]] = [
        (name.decode("latin-1").lower(), value.decode("latin-1"))
        for name, value in scope.get("headers", ())
    ]
    drop = set(_DROP)
    for name, value in raw:
        if name == "connection":
            drop.update(token.strip().lower() for token in value.split(","))
    headers = [(name, value) for name, value in raw if name not in drop]

    prior_for = ", ".join(value for name, value in raw if name == "x-forwarded-for")
    client = scope.get("client")
    client_host = client[0] if client else "unknown"
    headers.append(("x-forwarded-for", f"{prior_for}, {client_host}" if prior_for else client_host))
    headers.append(("x-forwarded-proto", "https" if scope.get("scheme") == "wss" else "http"))
    host = next((value for name, value in raw if name == "host"), None)
    if host:
        headers.append(("x-forwarded-host", host))
    request_id = next((value for name, value in raw if name == "x-request-id"), "")
    if not request_id or len(request_id) > _MAX_REQUEST_ID or not request_id.isprintable():
        request_id = uuid.uuid4().hex
    headers.append(("x-request-id", request_id))
    return ForwardedRequest(headers, list(scope.get("subprotocols") or ()), request_id)
