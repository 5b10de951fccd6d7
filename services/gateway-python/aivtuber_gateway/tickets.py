"""Short-lived browser tickets: ``POST /v1/tickets`` issues them, ``?ticket=`` spends them.

A ticket names its tenant and its expiry and is signed with HMAC-SHA256, so any replica of
the gateway with the same ``auth.tenants`` checks it without shared state::

    t1.<tenant, base64url>.<expiry, unix seconds>.<nonce, base64url>.<mac, base64url>

The signing key of a tenant is derived from that tenant's own key,
``HMAC-SHA256(key=tenant key, msg="aivtuber-gateway ticket v1")``: no new secret to
configure or distribute (replicas agree as soon as they share the config), the tenant key
itself is never used as a MAC key for anything else (domain separation), and rotating a
tenant's key revokes every ticket issued for it while leaving the other tenants' tickets
valid. A ticket is accepted for any number of new connections of its tenant until it
expires (a page opens /ws/input and then one /ws/output per line); it cannot mint another
ticket, so a leaked one is worth at most ``auth.ticket_ttl_s``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import time
from collections.abc import Callable, Mapping
from enum import Enum

__all__ = ["MAX_TICKET_CHARS", "TicketBook", "TicketProblem"]

VERSION = "t1"
_KEY_LABEL = b"aivtuber-gateway ticket v1"
_NONCE_BYTES = 9
# Longer than any ticket this module makes (tenant names are at most 64 characters).
MAX_TICKET_CHARS = 256


class TicketProblem(Enum):
    """Why a presented ticket was refused (the 4401 reason says which)."""

    INVALID = "invalid ticket"
    EXPIRED = "ticket expired"


class TicketBook:
    """Issues and checks the tickets of a set of tenants (name -> key)."""

    def __init__(
        self,
        tenant_keys: Mapping[str, str],
        ttl_s: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.ttl_s = ttl_s
        self._clock = clock
        self._keys = {
            name: hmac.new(key.encode(), _KEY_LABEL, hashlib.sha256).digest()
            for name, key in tenant_keys.items()
        }

    def issue(self, tenant: str) -> str:
        """A new ticket for ``tenant``, valid for ``ttl_s`` from now."""
        expiry = int(self._clock() + self.ttl_s)
        nonce = _b64(os.urandom(_NONCE_BYTES))
        body = f"{VERSION}.{_b64(tenant.encode())}.{expiry}.{nonce}"
        return f"{body}.{self._mac(tenant, body)}"

    def check(self, ticket: str) -> str | TicketProblem:
        """The ticket's tenant, or why it is refused. Forged, malformed, issued for a tenant
        this config does not have, or signed with another key: INVALID."""
        if len(ticket) > MAX_TICKET_CHARS:
            return TicketProblem.INVALID
        parts = ticket.split(".")
        if len(parts) != 5 or parts[0] != VERSION:
            return TicketProblem.INVALID
        _, raw_tenant, raw_expiry, _, mac = parts
        try:
            tenant = base64.urlsafe_b64decode(raw_tenant + "=" * (-len(raw_tenant) % 4)).decode()
        except (binascii.Error, ValueError):
            return TicketProblem.INVALID
        if tenant not in self._keys or not (raw_expiry.isascii() and raw_expiry.isdigit()):
            return TicketProblem.INVALID
        body = ticket[: -len(mac) - 1]
        if not hmac.compare_digest(self._mac(tenant, body).encode(), mac.encode()):
            return TicketProblem.INVALID
        # The expiry is signed: only after the signature holds does it mean anything.
        if int(raw_expiry) <= self._clock():
            return TicketProblem.EXPIRED
        return tenant

    def _mac(self, tenant: str, body: str) -> str:
        return _b64(hmac.new(self._keys[tenant], body.encode(), hashlib.sha256).digest())


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")
