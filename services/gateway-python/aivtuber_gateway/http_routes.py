"""Plain HTTP routes (``protocol: "http"`` in ``gateway.routes``): requests forwarded to a
back end with both bodies streamed, never buffered whole.

Used by the OpenAI-compatible speech API (``/v1/...`` -> the input handler). Per request:

1. the credential check (:meth:`HttpForwarder.authenticate`, ONE call at the top of
   :meth:`HttpForwarder.handle`): an :class:`~aivtuber_common.identity.Identity`, or a
   refusal answered in OpenAI's error shape (401 without a valid API key when keys are on);
2. the headers: hop-by-hop ones dropped, ``x-aivtuber-*`` sent by the client dropped (only the
   gateway says who a request is), ``Authorization`` consumed here, the identity headers and
   ``X-Forwarded-*`` / ``X-Request-ID`` added;
3. the backend: the route's backends in the balancer's order; one that cannot be connected
   to within ``connect_timeout_s`` is marked down and the next is tried (503 when none);
4. the answer: status and headers, then the body as the back end sends it, each piece
   written as soon as it arrives (the client's socket buffer gives backpressure). A client
   that hangs up closes the back-end request at once, which cancels the work behind it.

Limits: the request body is capped at ``max_message_bytes`` (413 beyond); the time to
connect is ``connect_timeout_s``; a back end silent for ``idle_timeout_s`` (when set) is cut
off. Logs: one ``http_request`` line per request, without query string or headers.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncGenerator, Callable, MutableMapping
from typing import Any

import httpx
import structlog

from aivtuber_common.codes import ErrorCode
from aivtuber_common.config import Settings
from aivtuber_common.identity import (
    IDENTITY_PREFIX,
    Identity,
    identity_headers,
)
from aivtuber_common.redact import short_path
from aivtuber_common.refusal import Refusal

from .auth import MISSING, Edge
from .headers import forwarded_request
from .metrics import GatewayMetrics
from .proxy import Receive, Send
from .routing import Route

__all__ = ["HttpForwarder", "send_refusal"]

# Dropped from the back end's answer: hop-by-hop (RFC 9110 7.6.1), and what uvicorn adds.
_RESPONSE_DROP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-authenticate",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
        b"server",
        b"date",
    }
)
POOL = httpx.Limits(max_connections=256, max_keepalive_connections=32)


async def send_refusal(refusal: Refusal, send: Send) -> None:
    """The gateway's own answer to a request (auth, body size, no back end), in OpenAI's
    error shape."""
    body = json.dumps(refusal.openai_body()).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]
    headers += [(k.encode(), v.encode()) for k, v in refusal.headers().items()]
    await send({"type": "http.response.start", "status": refusal.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class _BodyTooLarge(Exception):
    pass


class _ClientStalled(Exception):
    pass


class _ClientLeft(Exception):
    """The client hung up while its request body was being forwarded."""


class HttpForwarder:
    """Forwards requests on the http routes; :meth:`open`/:meth:`aclose` from the lifespan."""

    def __init__(
        self,
        settings: Settings,
        log: structlog.typing.FilteringBoundLogger,
        metrics: GatewayMetrics | None = None,
        edge: Edge | None = None,
    ) -> None:
        self.settings = settings
        self.edge = edge if edge is not None else Edge(settings)
        self.metrics = metrics
        self.gateway = settings.gateway
        self.log = log
        idle = self.gateway.idle_timeout_s or None
        connect = self.gateway.connect_timeout_s
        self.timeout = httpx.Timeout(connect=connect, read=idle, write=idle, pool=connect)
        self._client: httpx.AsyncClient | None = None

    async def open(self, transport: httpx.AsyncBaseTransport | None = None) -> None:
        # Back ends are local: never through $HTTP_PROXY; no automatic decompression (aiter_raw).
        self._client = httpx.AsyncClient(
            transport=transport, limits=POOL, trust_env=False, follow_redirects=False
        )

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    async def authenticate(self, scope: dict[str, Any]) -> Identity:
        """Who is calling (the edge's check, as for the WebSocket routes: credentials,
        tickets, Origin; strips the credential from the scope), or raise Refusal in
        OpenAI's error shape."""
        result = self.edge.resolve(scope)
        if not isinstance(result, Refusal):
            return result
        code: str
        if result is MISSING:
            code, message = (
                ErrorCode.MISSING_API_KEY,
                ("You didn't provide an API key. Send it as 'Authorization: Bearer <key>'."),
            )
        elif result.status == 401:
            code, message = ErrorCode.INVALID_API_KEY, "Incorrect API key provided."
        else:
            code, message = result.code, result.reason
        raise Refusal(result.status, code, message, openai_type="invalid_request_error")

    async def handle(
        self, route: Route, scope: dict[str, Any], receive: Receive, send: Send
    ) -> None:
        started = time.perf_counter()
        request = forwarded_request(scope)
        status, backend_url, sizes = 0, None, [0, 0]
        first_byte: list[float] = []
        try:
            try:
                identity = await self.authenticate(scope)  # the edge's credential check
            finally:
                scope["headers"] = ()  # read; holds credentials: not kept for longer
            if any(part in (".", "..") for part in scope["path"].split("/")):
                # A back end (or httpx) would resolve them: /v1/../metrics is not /v1/.
                raise Refusal(
                    400, ErrorCode.INVALID_PATH, "The path must not hold '.' or '..' segments."
                )
            # limits.max_connections counts a streaming request like a WebSocket.
            if (over := self.edge.open_connection(identity)) is not None:
                raise over
            try:
                status, backend_url = await self._forward(
                    route,
                    scope,
                    receive,
                    send,
                    self._headers(request.headers, identity),
                    sizes,
                    lambda: first_byte.append(time.perf_counter() - started),
                )
            finally:
                self.edge.close_connection(identity)
        except Refusal as refusal:
            status = refusal.status
            await send_refusal(refusal, send)
        finally:
            if self.metrics is not None:
                self.metrics.http_requests.labels(route.name, str(status)).inc()
                if first_byte:
                    self.metrics.http_first_byte.labels(route.name).observe(first_byte[0])
            self.log.info(
                "http_request",
                route=route.name,
                method=scope["method"],
                path=short_path(scope["path"]),  # a whole task id would let a reader listen
                client=_client(scope),
                backend=backend_url,
                status=status,  # 0: the client left before an answer
                duration_s=round(time.perf_counter() - started, 4),
                bytes_in=sizes[0],
                bytes_out=sizes[1],
                request_id=request.request_id,
            )

    # --- internals ------------------------------------------------------------------------

    def _headers(
        self, forwarded: list[tuple[str, str]], identity: Identity
    ) -> list[tuple[str, str]]:
        headers = [
            (name, value)
            for name, value in forwarded
            # The client's credential stays here: a back end needs only the identity headers.
            if not name.startswith(IDENTITY_PREFIX) and name not in ("authorization", "x-api-key")
        ]
        return headers + identity_headers(identity, self.settings.internal_token)

    async def _forward(
        self,
        route: Route,
        scope: dict[str, Any],
        receive: Receive,
        send: Send,
        headers: list[tuple[str, str]],
        sizes: list[int],
        on_first_byte: Callable[[], None],
    ) -> tuple[int, str | None]:
        client = self._client
        if client is None:
            raise Refusal(503, ErrorCode.GOING_AWAY, "The gateway is shutting down.")
        body_done = asyncio.Event()
        first = await receive()
        if first["type"] == "http.disconnect":
            return 0, None  # left before sending a body: nobody to answer
        # A body that came in one piece (a JSON request) is known whole: it can be sent
        # again on a fresh connection when a pooled one turns out dead. Longer bodies
        # stream through (never buffered whole) and are sent once.
        whole: bytes | None = None
        if not first.get("more_body", False):
            whole = first.get("body", b"")
            sizes[0] = len(whole)
            body_done.set()
            if sizes[0] > self.gateway.max_message_bytes:
                raise self._too_large()
        # Closed on every path: a back end may answer before it has read the whole body.
        stream = self._body(scope, receive, body_done, sizes, first)
        async with contextlib.aclosing(stream) as body:
            raw_path = scope.get("raw_path")
            path = raw_path.decode("latin-1") if raw_path else scope["path"]
            query = scope.get("query_string", b"").decode("latin-1")
            failures: list[str] = []
            for backend in route.candidates():
                target = backend.target(path, query)
                try:
                    response = await self._send(client, scope, target, headers, whole, body)
                except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
                    backend.mark_down()
                    failures.append(f"{backend.url}: {str(exc) or type(exc).__name__}")
                    if sizes[0] and whole is None:
                        break  # the body is on its way out: it cannot be sent twice
                    continue
                except _ClientLeft:
                    return 0, backend.url  # nobody to answer
                except _BodyTooLarge:
                    raise self._too_large() from None
                except httpx.TimeoutException:
                    raise Refusal(
                        504,
                        ErrorCode.BACKEND_TIMEOUT,
                        f"The {route.name} back end did not answer in time.",
                    ) from None
                except httpx.HTTPError as exc:
                    failures.append(f"{backend.url}: {str(exc) or type(exc).__name__}")
                    break
                backend.mark_up()
                await self._relay(response, receive, send, body_done, sizes, on_first_byte)
                return response.status_code, backend.url
        self.log.warning(
            "backend_unavailable",
            route=route.name,
            path=short_path(scope["path"]),
            client=_client(scope),
            backends=[backend.url for backend in route.backends],
            errors=failures,
        )
        raise Refusal(
            503,
            ErrorCode.BACKEND_UNAVAILABLE,
            f"The {route.name} back end is unavailable; try again in a moment.",
        )

    async def _send(
        self,
        client: httpx.AsyncClient,
        scope: dict[str, Any],
        target: str,
        headers: list[tuple[str, str]],
        whole: bytes | None,
        body: AsyncGenerator[bytes, None],
    ) -> httpx.Response:
        """Send the request; a body known whole is sent once more on a fresh connection
        when the pooled one dies before any answer (a back end that closed it after a 500
        without saying "Connection: close": that was a 503 for the next client)."""
        for attempt in (1, 2):
            request = client.build_request(
                scope["method"],
                target,
                headers=headers,
                content=whole if whole is not None else body,
                timeout=self.timeout,
            )
            try:
                return await client.send(request, stream=True)
            except (httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError):
                if whole is None or attempt == 2:
                    raise
                self.log.info("backend_connection_reset", target=target.partition("?")[0])
        raise AssertionError("not reached")

    def _too_large(self) -> Refusal:
        return Refusal(
            413,
            ErrorCode.BODY_TOO_LARGE,
            f"The request body is larger than {self.gateway.max_message_bytes} bytes.",
        )

    async def _relay(
        self,
        response: httpx.Response,
        receive: Receive,
        send: Send,
        body_done: asyncio.Event,
        sizes: list[int],
        on_first_byte: Callable[[], None],
    ) -> None:
        """Stream the answer to the client; stop at once when the client hangs up, or when it
        has taken nothing for ``ping_timeout_s`` (a reader that stalls holds a task and a
        back-end connection: it gets what a WebSocket peer that stops answering pings gets)."""
        stall_s = self.gateway.ping_timeout_s

        async def to_client(message: dict[str, Any]) -> None:
            try:
                async with asyncio.timeout(stall_s):
                    await send(message)
            except TimeoutError:
                raise _ClientStalled from None

        async def pump() -> None:
            headers = [
                (name, value)
                for name, value in response.headers.raw
                if name.lower() not in _RESPONSE_DROP
            ]
            await to_client(
                {"type": "http.response.start", "status": response.status_code, "headers": headers}
            )
            async for data in response.aiter_raw():
                if not sizes[1]:
                    on_first_byte()
                sizes[1] += len(data)
                await to_client({"type": "http.response.body", "body": data, "more_body": True})
            await to_client({"type": "http.response.body", "body": b""})

        async def hangup() -> None:
            await body_done.wait()  # until then the request body owns receive()
            while (await receive())["type"] != "http.disconnect":
                pass

        tasks = (asyncio.create_task(pump()), asyncio.create_task(hangup()))
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await response.aclose()  # closes the back-end connection if unfinished
        if not tasks[0].cancelled() and (exc := tasks[0].exception()) is not None:
            if isinstance(exc, _ClientStalled):
                self.log.warning("client_stalled", timeout_s=stall_s, bytes_out=sizes[1])
            elif isinstance(exc, httpx.HTTPError):
                self.log.warning("backend_stream_failed", error=str(exc) or type(exc).__name__)
            else:
                raise exc  # a bug: uvicorn logs it

    async def _body(
        self,
        scope: dict[str, Any],
        receive: Receive,
        done: asyncio.Event,
        sizes: list[int],
        first: MutableMapping[str, Any],
    ) -> AsyncGenerator[bytes, None]:
        limit = self.gateway.max_message_bytes
        message = first
        try:
            while True:
                if message["type"] == "http.disconnect":
                    raise _ClientLeft  # aborts the back-end request: never a truncated body
                data = message.get("body", b"")
                sizes[0] += len(data)
                if sizes[0] > limit:
                    raise _BodyTooLarge
                if data:
                    yield data
                if not message.get("more_body", False):
                    return
                message = await receive()
        finally:
            done.set()


def _bearer(scope: dict[str, Any]) -> str | None:
    for name, value in scope.get("headers", ()):
        if name.lower() == b"authorization":
            text: str = value.decode("latin-1")
            scheme, _, token = text.partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                return token.strip()
    return None


def _client(scope: dict[str, Any]) -> str:
    client = scope.get("client")
    return f"{client[0]}:{client[1]}" if client else "unknown"
