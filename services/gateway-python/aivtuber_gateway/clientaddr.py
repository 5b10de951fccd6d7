"""The client's address: the TCP peer's, or what a trusted reverse proxy says it is.

``gateway.trusted_proxies`` lists the addresses (or CIDR ranges) of the proxies in front of
the gateway (nginx on the same machine: ``["127.0.0.1"]``). From any other peer the
forwarding headers are ignored, so a client cannot pick its own address (and with it a
fresh anonymous limit per request). From a trusted peer the client is the rightmost hop
of ``X-Forwarded-For`` (else of ``Forwarded``'s ``for=``) that is not itself a trusted
proxy: what the last trusted proxy saw, whatever the client put at the left of the chain.

:meth:`ClientAddresses.apply` rewrites ``scope["client"]`` once, at the gateway's entry,
so limits, logs, the backends' ``x-aivtuber-client`` and admin checks all see the same
address. A request relayed by a proxy is never "local" for the admin check
(:func:`aivtuber_gateway.auth.is_local`), whatever address it resolves to.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from typing import Any

__all__ = ["ClientAddresses", "forwarded_hops"]

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
_MAX_HOPS = 32  # a longer chain is cut at the right end: only the last hops matter


class ClientAddresses:
    """Resolves client addresses behind ``gateway.trusted_proxies``."""

    def __init__(self, trusted_proxies: Iterable[str]) -> None:
        self.networks: tuple[Network, ...] = tuple(
            ipaddress.ip_network(value, strict=False) for value in trusted_proxies
        )

    def is_trusted(self, host: str) -> bool:
        address = _address(host)
        return address is not None and any(address in network for network in self.networks)

    def client_of(self, peer: str, headers: Iterable[tuple[bytes, bytes]]) -> str:
        """The client's address for a request from ``peer`` with these headers."""
        if not self.networks or not self.is_trusted(peer):
            return peer
        client = peer
        for hop in reversed(forwarded_hops(headers)):
            if _address(hop) is None:
                break  # garbage left of the last good hop: stop at the last trusted one
            client = hop
            if not self.is_trusted(hop):
                break
        return client

    def apply(self, scope: dict[str, Any]) -> None:
        """Rewrite ``scope["client"]`` of an http/websocket scope from a trusted proxy."""
        client = scope.get("client")
        if not self.networks or not client:
            return
        resolved = self.client_of(client[0], scope.get("headers") or ())
        if resolved != client[0]:
            scope["client"] = (resolved, 0)


def forwarded_hops(headers: Iterable[tuple[bytes, bytes]]) -> list[str]:
    """The hops of ``X-Forwarded-For`` (all its lines, in order), else of ``Forwarded``."""
    xff: list[str] = []
    forwarded: list[str] = []
    for name, value in headers:
        lower = name.lower()
        if lower == b"x-forwarded-for":
            xff.extend(part.strip() for part in value.decode("latin-1").split(","))
        elif lower == b"forwarded":
            forwarded.extend(_forwarded_for(value.decode("latin-1")))
    hops = xff if xff else forwarded
    return [_strip_port(hop) for hop in hops[-_MAX_HOPS:] if hop]


def _forwarded_for(value: str) -> list[str]:
    """RFC 7239: ``for=192.0.2.60;proto=http, for="[2001:db8::1]:4711"``."""
    found = []
    for element in value.split(","):
        for pair in element.split(";"):
            key, _, item = pair.strip().partition("=")
            if key.strip().lower() == "for":
                found.append(item.strip().strip('"'))
    return found


def _strip_port(hop: str) -> str:
    if hop.startswith("["):  # [v6] or [v6]:port
        return hop[1 : hop.find("]")] if "]" in hop else hop
    if hop.count(":") == 1:  # v4:port
        return hop.partition(":")[0]
    return hop


def _address(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None
