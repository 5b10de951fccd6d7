"""Opening the backend connection: which backend, with which options, and what failure
means for the client.

Exceptions::

    BackendUnavailable   no backend of the route completed the handshake in time
    BackendRejected      a backend answered the upgrade with HTTP 4xx (its verdict)
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from websockets.exceptions import InvalidHandshake, InvalidStatus
from websockets.extensions.permessage_deflate import enable_client_permessage_deflate
from websockets.typing import Subprotocol
from websockets.uri import parse_uri

from .bounds import BoundedClientProtocol
from .headers import ForwardedRequest
from .link import CLOSE_TIMEOUT_S, BackendLink
from .routing import Backend, Route

if TYPE_CHECKING:
    from .proxy import ProxyOptions

__all__ = [
    "CLOSE_TIMEOUT_S",
    "BackendRejected",
    "BackendUnavailable",
    "open_backend",
    "open_link",
]


class BackendUnavailable(Exception):
    """No backend of the route completed the handshake (down, refused or too slow)."""

    def __init__(self, route: Route, failures: list[tuple[str, str]]) -> None:
        super().__init__(f"{route.name}: no backend available")
        self.failures = failures  # (backend url, error)


class BackendRejected(Exception):
    """A backend answered the upgrade with an HTTP 4xx: a verdict on this request."""

    def __init__(self, backend: Backend, status: int) -> None:
        super().__init__(f"backend answered HTTP {status}")
        self.backend = backend
        self.status = status


async def open_backend(
    route: Route, scope: dict[str, Any], request: ForwardedRequest, options: ProxyOptions
) -> tuple[BackendLink, Backend]:
    """Connect to the first backend of the route that accepts, within connect_timeout_s."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + options.connect_timeout_s
    raw_path = scope.get("raw_path")
    path = raw_path.decode("latin-1") if raw_path else scope["path"]
    query = scope.get("query_string", b"").decode("latin-1")
    failures: list[tuple[str, str]] = []
    for backend in route.candidates():
        remaining = deadline - loop.time()
        if remaining <= 0:
            failures.append((backend.url, "not tried: connect_timeout_s used up"))
            continue
        try:
            # Never through $HTTP_PROXY (backends are local), no User-Agent of our own (the
            # client's is forwarded), no pings of its own (one task pings every backend:
            # see keepalive.py).
            async with asyncio.timeout(remaining):
                link = await open_link(
                    backend.target(path, query),
                    request.headers,
                    request.subprotocols,
                    compression=route.compression,
                    max_size=route.max_message_bytes,
                )
        except InvalidStatus as exc:
            status = exc.response.status_code
            if 400 <= status < 500:
                raise BackendRejected(backend, status) from exc
            failures.append((backend.url, f"HTTP {status}"))
        except TimeoutError:
            failures.append((backend.url, f"no handshake within {options.connect_timeout_s:g}s"))
        except (OSError, InvalidHandshake) as exc:
            failures.append((backend.url, str(exc) or type(exc).__name__))
        else:
            backend.mark_up()
            return link, backend
        backend.mark_down()
        options.registry.connect_failures[route.name, backend.url] += 1
    raise BackendUnavailable(route, failures)


async def open_link(
    url: str,
    headers: Sequence[tuple[str, str]],
    subprotocols: Sequence[str],
    *,
    compression: bool,
    max_size: int,
) -> BackendLink:
    """Connect to ``url`` and complete the WebSocket handshake (no timeout: the caller's).

    Raises ``OSError`` (refused, unreachable) or the handshake's ``InvalidHandshake``
    (``InvalidStatus`` carries the HTTP response)."""
    uri = parse_uri(url)
    protocol = BoundedClientProtocol(
        uri,
        extensions=enable_client_permessage_deflate(None) if compression else None,
        subprotocols=[Subprotocol(name) for name in subprotocols] or None,
        max_size=max_size,
    )
    loop = asyncio.get_running_loop()
    _, link = await loop.create_connection(
        lambda: BackendLink(protocol, loop), uri.host, uri.port, ssl=True if uri.secure else None
    )
    try:
        link.start(headers)
        await link.wait_open()
    except BaseException:
        link.abort()
        raise
    return link
