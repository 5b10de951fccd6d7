"""How a proxied connection ends, without I/O: who ended it and what each side is told.

A connection ends once, for the first of these reasons; the other side is then closed with
a code derived from it (:func:`to_client` / :func:`to_backend`):

- the client closed or vanished  -> the backend gets the client's code (1005/1006 mapped);
- the backend closed or vanished -> the client gets the backend's code (1005/1006 mapped);
- the gateway decided (shutdown 1001, idle timeout 1000, keepalive 1011, oversize 1009).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from websockets.exceptions import ConnectionClosed

from aivtuber_common.closecodes import CloseCode, sendable

__all__ = [
    "MAX_REASON_BYTES",
    "End",
    "Side",
    "backend_end",
    "client_end",
    "short_reason",
    "to_backend",
    "to_client",
]

# A close frame carries at most 125 bytes: 2 for the code, 123 for the reason.
MAX_REASON_BYTES = 123


class Side(Enum):
    CLIENT = "client"
    BACKEND = "backend"
    GATEWAY = "gateway"


@dataclass(frozen=True, slots=True)
class End:
    """The first reason a connection ended: who, with which code, and why."""

    by: Side
    code: int
    reason: str = ""


def short_reason(reason: str) -> str:
    """``reason`` cut to what fits in a close frame, on a UTF-8 character boundary."""
    encoded = reason.encode()
    if len(encoded) <= MAX_REASON_BYTES:
        return reason
    return encoded[:MAX_REASON_BYTES].decode(errors="ignore")


def client_end(code: int | None, reason: str | None) -> End:
    """The client's socket reported ``websocket.disconnect`` with this code."""
    code = CloseCode.NO_STATUS_RCVD if code is None else code
    if reason is None and code == CloseCode.NO_STATUS_RCVD:
        # uvicorn's sans-I/O implementation reports a connection lost after the handshake
        # as 1005 with no "reason" key; a close frame without a code comes with reason "".
        code = CloseCode.ABNORMAL_CLOSURE
    if not reason and code == CloseCode.ABNORMAL_CLOSURE:
        reason = "client connection lost"
    return End(Side.CLIENT, code, reason or "")


def backend_end(exc: ConnectionClosed) -> End:
    """The backend connection is closed; ``exc`` says by whom and how."""
    sent, rcvd = exc.sent, exc.rcvd
    if sent is not None and (rcvd is None or not exc.rcvd_then_sent):
        # Our websockets client closed it first: keepalive timeout (1011), a message over
        # the limit (1009), a protocol error (1002). Say it was the backend's message.
        reason = f"backend: {sent.reason}" if sent.reason else "backend error"
        return End(Side.BACKEND, sent.code, reason)
    if rcvd is not None:
        return End(Side.BACKEND, rcvd.code, rcvd.reason)
    return End(Side.BACKEND, CloseCode.ABNORMAL_CLOSURE, "backend connection lost")


def to_client(end: End) -> tuple[int, str]:
    """Code and reason to close the client with."""
    return sendable(end.code), short_reason(end.reason)


def to_backend(end: End) -> tuple[int, str]:
    """Code and reason to close the backend with."""
    return sendable(end.code), short_reason(end.reason)
