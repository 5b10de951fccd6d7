"""How many connections may wait at the edge without a verdict, and what a refused one costs.

A connection is *pending* from its TCP accept until the gateway has resolved who it is
(:meth:`PendingGate.settle`, called once a WebSocket's identity is known, or when an HTTP
request head is complete: a plain request is then bounded by its own route), and again
from a refusal (4401, 4403, 4429) until its socket is closed. Pending connections are
capped for the whole server (``gateway.max_pending_connections``) and per client address
(``gateway.max_pending_per_address``); one over a cap is closed at once, before anything of
it is read. So a flood of keyless clients holds a bounded number of sockets, each bounded
in what it can make the gateway buffer (the request head's cap, then the refusal budget
of :class:`.bounds.BoundedWebSocketProtocol`).

The gate is one object per server (built in :func:`.server.uvicorn_overrides` and handed to
both protocol classes), not module state.
"""

from __future__ import annotations

__all__ = ["REFUSED_CLOSE_S", "REFUSED_READ_BUDGET", "GateTicket", "PendingGate"]

# After a refusal's close frame, what the client may still send before the socket is
# closed at once (its own close frame fits many times over), and how long the gateway waits
# for it to close its end before closing the socket itself.
REFUSED_READ_BUDGET = 16 * 1024
REFUSED_CLOSE_S = 1.0


class PendingGate:
    """Counts pending connections, in total and per client address."""

    __slots__ = ("max_total", "max_per_address", "total", "_by_address", "shed")

    def __init__(self, max_total: int, max_per_address: int) -> None:
        self.max_total = max_total
        self.max_per_address = max_per_address
        self.total = 0
        self._by_address: dict[str, int] = {}
        self.shed = 0  # connections closed at accept for being over a cap (for /metrics)

    def enter(self, address: str, force: bool = False) -> bool:
        """Count one more pending connection from ``address``; False (not counted) when a
        cap is reached (unless ``force``): the caller closes it."""
        count = self._by_address.get(address, 0)
        if not force and (self.total >= self.max_total or count >= self.max_per_address):
            self.shed += 1
            return False
        self._by_address[address] = count + 1
        self.total += 1
        return True

    def leave(self, address: str) -> None:
        """Match one successful :meth:`enter`."""
        count = self._by_address.get(address, 0) - 1
        if count > 0:
            self._by_address[address] = count
        else:
            self._by_address.pop(address, None)  # bounded by the pending connections
        self.total = max(0, self.total - 1)

    def pending(self, address: str) -> int:
        return self._by_address.get(address, 0)


class GateTicket:
    """One connection's place in the gate: left at most once, whatever happens."""

    __slots__ = ("gate", "address", "admitted", "held")

    def __init__(self, gate: PendingGate | None, address: str) -> None:
        self.gate = gate
        self.address = address
        self.admitted = gate is None or gate.enter(address)  # False: close it at once
        self.held = self.admitted and gate is not None

    def release(self) -> None:
        if self.held and self.gate is not None:
            self.gate.leave(self.address)
        self.held = False

    def retake(self) -> None:
        """Count the connection again: it was refused and lingers until closed (within
        :data:`REFUSED_CLOSE_S`), so it is counted even over a cap."""
        if not self.held and self.gate is not None:
            self.gate.enter(self.address, force=True)
            self.held = True
