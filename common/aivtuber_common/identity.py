"""Who a proxied connection belongs to, as the gateway tells the back ends.

The gateway authenticates the client (``aivtuber_gateway``'s edge) and then, on the backend
handshake, strips every ``x-aivtuber-*`` header the client sent and adds its own:

    x-aivtuber-tenant         the tenant's name; absent for an anonymous client
    x-aivtuber-client         the client's IP address (limits of anonymous clients)
    x-aivtuber-gateway-token  the internal token

A back end believes these headers only from the gateway: the token must match (compared in
constant time). A running service always has one (``internal_token``, else the machine's
token file: :mod:`aivtuber_common.token_file`), and
:class:`aivtuber_common.internal_auth.RequireInternalToken` refuses a request without it
before it gets here. Only an app built in-process with no token (tests, embedding) falls
back to believing a loopback peer. Anything else is an anonymous client at the peer's
address (never an address from X-Forwarded-For: proxy-header trust is off everywhere), so a
client that reaches a back end directly cannot claim a tenant.
"""

from __future__ import annotations

import hmac
import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "CLIENT_HEADER",
    "GATEWAY_TOKEN_HEADER",
    "IDENTITY_PREFIX",
    "TENANT_HEADER",
    "Identity",
    "IdentityHeaders",
    "identity_headers",
    "is_loopback",
    "read_identity",
    "token_matches",
]

IDENTITY_PREFIX = "x-aivtuber-"
TENANT_HEADER = "x-aivtuber-tenant"
CLIENT_HEADER = "x-aivtuber-client"
GATEWAY_TOKEN_HEADER = "x-aivtuber-gateway-token"


@dataclass(frozen=True, slots=True)
class Identity:
    """A connection's tenant (None: anonymous) and client address."""

    tenant: str | None
    client_ip: str

    @property
    def limits_key(self) -> str:
        """What per-client limits count against: the tenant, or the IP of an anonymous one."""
        return f"tenant:{self.tenant}" if self.tenant is not None else f"ip:{self.client_ip}"


def is_loopback(host: str | None) -> bool:
    if not host:
        return False
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def token_matches(given: str | None, expected: str) -> bool:
    """Constant-time comparison of a presented secret with the configured one."""
    if given is None:
        return False
    return hmac.compare_digest(given.encode("utf-8", "surrogatepass"), expected.encode())


class IdentityHeaders(BaseModel):
    """The identity headers on the wire (the field aliases are the header names)."""

    model_config = ConfigDict(frozen=True, extra="ignore", populate_by_name=True)

    client: str | None = Field(
        default=None, validation_alias="x-aivtuber-client", serialization_alias="x-aivtuber-client"
    )
    tenant: str | None = Field(
        default=None, validation_alias="x-aivtuber-tenant", serialization_alias="x-aivtuber-tenant"
    )
    gateway_token: str | None = Field(
        default=None,
        validation_alias="x-aivtuber-gateway-token",
        serialization_alias="x-aivtuber-gateway-token",
        repr=False,
    )

    def items(self) -> list[tuple[str, str]]:
        """As (name, value) pairs, without the absent ones."""
        return [(name, value) for name, value in self.model_dump(by_alias=True).items() if value]


def identity_headers(identity: Identity, internal_token: str | None) -> list[tuple[str, str]]:
    """The headers that tell a back end who ``identity`` is (the one producer of what
    :func:`read_identity` parses): the gateway adds them on every backend hop, the input
    handler on its own subscriptions to the output handler."""
    return IdentityHeaders(
        client=identity.client_ip, tenant=identity.tenant, gateway_token=internal_token or None
    ).items()


def read_identity(
    headers: Iterable[tuple[str, str]], peer_host: str | None, internal_token: str | None
) -> Identity:
    """The identity of a request a back end received. ``headers``: lower-case names."""
    found: dict[str, str] = {}
    for name, value in headers:
        if name.startswith(IDENTITY_PREFIX):
            found.setdefault(name, value)  # the first of a repeated header counts
    claimed = IdentityHeaders.model_validate(found)
    peer = peer_host or "unknown"
    if internal_token:
        trusted = token_matches(claimed.gateway_token, internal_token)
    else:
        trusted = is_loopback(peer_host)
    if not trusted:
        return Identity(tenant=None, client_ip=peer)
    return Identity(tenant=claimed.tenant or None, client_ip=claimed.client or peer)
