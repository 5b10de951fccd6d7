"""The edge: who a request is, decided before any backend is dialed.

:meth:`Edge.resolve` is the one entry point every route goes through: it takes an ASGI
``websocket`` or ``http`` scope and returns the caller's
:class:`~aivtuber_common.identity.Identity` or a :class:`Refusal` (a close code and reason
for a WebSocket, :meth:`Refusal.response` for HTTP), and strips the credential from the
scope so nothing downstream (a backend, its logs) ever sees it.

Credentials, tried in this order, the first valid one wins:

    Authorization: Bearer <tenant key>
    Authorization: Basic <base64 of "any-name:<tenant key>">   (a key in the URL's
                                   user info, http://voicevox:KEY@host:8000/voicevox, which
                                   HTTP libraries send as Basic: clients that take only a URL)
    X-Api-Key: <tenant key>
    ?api_key=<tenant key>          (browsers cannot set headers on a WebSocket)
    ?ticket=<ticket>               (see :mod:`.tickets`; POST /v1/tickets issues them)

With no tenant configured every client is anonymous (protected mode keeps that to loopback
unless ``auth.anonymous``: :mod:`aivtuber_common.protected`). Keys are looked up by their
SHA-256 digest, so the time taken says nothing about how much of a presented key was
right (only about its digest) and stays the same for any number of tenants, then compared
with ``hmac.compare_digest``, like the admin key.

Refusals (the client's handshake is accepted, then closed, so a browser can read why):

    4403  Origin not in auth.allowed_origins          HTTP 403 origin_not_allowed
    4401  no credential, a wrong one, a bad ticket    HTTP 401 unauthorized
    4429  over limits.max_connections                 HTTP 429 too_many_connections

Monitoring (:meth:`Edge.check_admin`): ``auth.admin_key`` as Bearer or ``?admin_key=``;
with no admin key set, loopback clients only (a request relayed by a local reverse proxy,
which says so in X-Forwarded-For, is not a loopback client).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import unquote_plus

from starlette.types import Scope

from aivtuber_common.codes import ErrorCode
from aivtuber_common.config import Settings
from aivtuber_common.identity import (
    IDENTITY_PREFIX,
    Identity,
    identity_headers,
    is_loopback,
    token_matches,
)
from aivtuber_common.refusal import Refusal

from .tickets import TicketBook, TicketProblem

__all__ = ["CREDENTIAL_PARAMS", "Edge"]

# Query parameters that carry a credential: never forwarded, never shown.
CREDENTIAL_PARAMS = frozenset({"api_key", "ticket", "admin_key"})
_FORWARDED = (b"x-forwarded-for", b"forwarded", b"x-real-ip")
_MAX_CREDENTIAL_CHARS = 4096


def _unauthorized(reason: str) -> Refusal:
    return Refusal(401, ErrorCode.UNAUTHORIZED, reason)


MISSING = _unauthorized(
    "credential required: Authorization: Bearer, X-Api-Key, ?api_key= or ?ticket="
)
INVALID = _unauthorized("invalid credential")
TICKET_REFUSALS = {
    TicketProblem.INVALID: _unauthorized("invalid ticket"),
    TicketProblem.EXPIRED: _unauthorized("ticket expired"),
}
BAD_ORIGIN = Refusal(403, ErrorCode.ORIGIN_NOT_ALLOWED, "origin not allowed")
ADMIN_KEY_NEEDED = _unauthorized(
    "admin key required: Authorization: Bearer <key> or ?admin_key=<key>"
)
ADMIN_LOOPBACK_ONLY = Refusal(
    403,
    ErrorCode.FORBIDDEN,
    "monitoring answers loopback clients only; set auth.admin_key to reach it from elsewhere",
)
TICKETS_DISABLED = Refusal(
    404,
    ErrorCode.TICKETS_DISABLED,
    "no tenant is configured (auth.tenants or GATEWAY_API_KEY): connect without a credential",
)


class Edge:
    """Credentials, tickets, Origin, admin access and the connection quota of one gateway."""

    def __init__(self, settings: Settings, clock: Callable[[], float] = time.time) -> None:
        auth = settings.auth
        self.anonymous = not auth.tenants
        self._keys = {name: tenant.key for name, tenant in auth.tenants.items()}
        self._by_digest = {_digest(key): name for name, key in self._keys.items()}
        self.tickets = TicketBook(self._keys, auth.ticket_ttl_s, clock)
        self._origins = frozenset(_origin(origin) for origin in auth.allowed_origins)
        self._admin_key = auth.admin_key
        self._internal_token = settings.internal_token
        self._max_connections = {
            name: settings.limits_for(name).max_connections for name in auth.tenants
        }
        self._anonymous_max = settings.limits_for(None).max_connections
        self._open: dict[str, int] = {}  # limits key -> open connections

    # -- the entry point -------------------------------------------------------------------

    def resolve(self, scope: Scope) -> Identity | Refusal:
        """Who sent this ``websocket``/``http`` request, or why it is refused.

        Strips the credential (``api_key``/``ticket``/``admin_key`` query parameters,
        ``X-Api-Key``, a Bearer that is a tenant key) and any client-sent ``x-aivtuber-*``
        header from ``scope`` in place, whatever the verdict."""
        headers = scope.get("headers") or ()
        params = _credential_params(scope)
        found = _first_headers(headers)
        client = scope.get("client")
        client_ip = client[0] if client else "unknown"
        verdict: Identity | Refusal
        if self._origins and (origin := found.get(b"origin")) is not None:
            if _origin(origin.decode("latin-1")) not in self._origins:
                verdict = BAD_ORIGIN
                _strip(scope, headers, params, strip_bearer=True)
                return verdict
        bearer = _bearer(found.get(b"authorization")) or _basic(found.get(b"authorization"))
        if self.anonymous:
            verdict = Identity(tenant=None, client_ip=client_ip)
            bearer_is_key = False
        else:
            verdict, bearer_is_key = self._authenticate(bearer, found, params, client_ip)
        # The admin key is a credential too: never passed on to a back end.
        admin = self._admin_key
        if bearer is not None and admin is not None and token_matches(bearer, admin):
            bearer_is_key = True
        _strip(scope, headers, params, strip_bearer=bearer_is_key)
        return verdict

    # -- the connection quota (WebSockets, all routes together) ----------------------------

    def open_connection(self, identity: Identity) -> Refusal | None:
        """Count a new connection of ``identity``; a 4429 refusal when over its limit.
        Every ``None`` must be matched by one :meth:`close_connection`."""
        key = identity.limits_key
        limit = (
            self._anonymous_max
            if identity.tenant is None
            else self._max_connections.get(identity.tenant, self._anonymous_max)
        )
        count = self._open.get(key, 0)
        if count >= limit:
            return Refusal(
                429, ErrorCode.TOO_MANY_CONNECTIONS, f"too many connections (limit {limit})"
            )
        self._open[key] = count + 1
        return None

    def close_connection(self, identity: Identity) -> None:
        key = identity.limits_key
        count = self._open.get(key, 0) - 1
        if count > 0:
            self._open[key] = count
        else:
            self._open.pop(key, None)  # bounded by the connections open now

    def open_connections(self, identity: Identity) -> int:
        return self._open.get(identity.limits_key, 0)

    def open_by_tenant(self) -> dict[str, int]:
        """Open connections per tenant; anonymous clients together under "" (per-IP counts
        would make one metrics series per address)."""
        counts = dict.fromkeys(self._max_connections, 0)
        for key, count in self._open.items():
            kind, _, name = key.partition(":")
            tenant = name if kind == "tenant" else ""
            counts[tenant] = counts.get(tenant, 0) + count
        return counts

    # -- what the backend is told ----------------------------------------------------------

    def backend_headers(self, identity: Identity) -> list[tuple[str, str]]:
        """The identity headers of :mod:`aivtuber_common.identity` for the backend hop."""
        return identity_headers(identity, self._internal_token)

    # -- monitoring and tickets ------------------------------------------------------------

    def check_admin(self, scope: Scope) -> Refusal | None:
        """None when the request may see /connections, /metrics and the status page."""
        headers = scope.get("headers") or ()
        if self._admin_key is None:
            return None if is_local(scope) else ADMIN_LOOPBACK_ONLY
        given = _bearer(_first_headers(headers).get(b"authorization"))
        if given is None:
            given = _credential_params(scope).get("admin_key")
        return None if token_matches(given, self._admin_key) else ADMIN_KEY_NEEDED

    def ticket_for(self, scope: Scope) -> str | Refusal:
        """A new ticket for the tenant whose key this request carries in a header (a
        query-string key or a ticket cannot mint tickets: a leaked ticket stays short-lived)."""
        if self.anonymous:
            return TICKETS_DISABLED
        found = _first_headers(scope.get("headers") or ())
        if self._origins and (origin := found.get(b"origin")) is not None:
            if _origin(origin.decode("latin-1")) not in self._origins:
                return BAD_ORIGIN
        given = [_bearer(found.get(b"authorization")), _decode(found.get(b"x-api-key"))]
        presented = [key for key in given if key is not None]
        for key in presented:
            if (tenant := self._tenant_of(key)) is not None:
                return self.tickets.issue(tenant)
        return INVALID if presented else MISSING

    # -- internals -------------------------------------------------------------------------

    def _authenticate(
        self,
        bearer: str | None,
        found: dict[bytes, bytes],
        params: dict[str, str],
        client_ip: str,
    ) -> tuple[Identity | Refusal, bool]:
        """(verdict, whether the Bearer was a tenant key)."""
        first_problem: Refusal | None = None
        bearer_is_key = False
        for key in (bearer, _decode(found.get(b"x-api-key")), params.get("api_key")):
            if key is None:
                continue
            tenant = self._tenant_of(key)
            if tenant is not None:
                bearer_is_key = key is bearer
                return Identity(tenant=tenant, client_ip=client_ip), bearer_is_key
            first_problem = first_problem or INVALID
        ticket = params.get("ticket")
        if ticket is not None:
            checked = self.tickets.check(ticket)
            if isinstance(checked, str):
                return Identity(tenant=checked, client_ip=client_ip), bearer_is_key
            first_problem = first_problem or TICKET_REFUSALS[checked]
        return first_problem or MISSING, bearer_is_key

    def _tenant_of(self, key: str) -> str | None:
        if len(key) > _MAX_CREDENTIAL_CHARS:
            return None
        # Found by SHA-256 digest: the lookup's timing can only tell something about the
        # digest of the guess (useless without a preimage), never about the key, and costs
        # the same for one tenant or ten thousand; then confirmed in constant time.
        tenant = self._by_digest.get(_digest(key))
        if tenant is None or not token_matches(key, self._keys[tenant]):
            return None
        return tenant


def is_local(scope: Scope) -> bool:
    """A client on this machine that is not relayed by a proxy (no X-Forwarded-For etc.)."""
    client = scope.get("client")
    if not client or not is_loopback(client[0]):
        return False
    return not any(name.lower() in _FORWARDED for name, _ in scope.get("headers") or ())


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).digest()


def _origin(origin: str) -> str:
    return origin.strip().rstrip("/").lower()


def _decode(value: bytes | None) -> str | None:
    return None if value is None else value.decode("latin-1").strip()


def _bearer(value: bytes | None) -> str | None:
    if value is None:
        return None
    scheme, _, token = value.decode("latin-1").strip().partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


def _basic(value: bytes | None) -> str | None:
    """The password of ``Authorization: Basic`` (the user name is not looked at)."""
    if value is None:
        return None
    scheme, _, token = value.decode("latin-1").strip().partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(token.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None
    _, colon, password = decoded.partition(":")
    return password if colon and password else None


def _first_headers(headers: Any) -> dict[bytes, bytes]:
    found: dict[bytes, bytes] = {}
    for name, value in headers:
        found.setdefault(name.lower(), value)
    return found


def _credential_params(scope: Scope) -> dict[str, str]:
    """The credential parameters of the query string (first of each), percent-decoded."""
    query: bytes = scope.get("query_string") or b""
    found: dict[str, str] = {}
    if not query:
        return found
    for part in query.decode("latin-1").split("&"):
        name, _, value = part.partition("=")
        name = unquote_plus(name)
        if name in CREDENTIAL_PARAMS and name not in found:
            found[name] = unquote_plus(value)
    return found


def _strip(scope: Scope, headers: Any, params: dict[str, str], strip_bearer: bool) -> None:
    """Remove the credential and any client-sent identity header from the scope."""
    kept = [
        (name, value)
        for name, value in headers
        if not name.lower().startswith(IDENTITY_PREFIX.encode())
        and name.lower() != b"x-api-key"
        and not (strip_bearer and name.lower() == b"authorization")
    ]
    if len(kept) != len(headers):
        scope["headers"] = kept
    if params:
        query = scope["query_string"].decode("latin-1")
        parts = [p for p in query.split("&") if unquote_plus(p.partition("=")[0]) not in params]
        scope["query_string"] = "&".join(parts).encode("latin-1")
