"""WebSocket close codes: the standard ones we use and the project's own 4000-4999 codes.

Policy: bad payload 1007/1008, oversize 1009, upstream unreachable 1013, a bug or a lost
peer 1011, shutdown 1001. 1005 and 1006 are never sent (they are not allowed on the wire);
:func:`sendable` maps them.
"""

from __future__ import annotations

from enum import IntEnum

from websockets.frames import CloseCode

__all__ = ["AppCloseCode", "CloseCode", "sendable"]


class AppCloseCode(IntEnum):
    BAD_REQUEST = 4400  # e.g. a task id that is not a uuid
    UNAUTHORIZED = 4401  # no credential, or a wrong or expired one
    FORBIDDEN = 4403  # Origin not in auth.allowed_origins
    NOT_FOUND = 4404  # unknown path, unknown task
    TOO_MANY = 4429  # over limits.max_connections (or too many unauthenticated connections)


_NOT_SENDABLE = {
    CloseCode.NO_STATUS_RCVD: CloseCode.NORMAL_CLOSURE,  # 1005: peer closed without a code
    CloseCode.ABNORMAL_CLOSURE: CloseCode.INTERNAL_ERROR,  # 1006: connection lost
    CloseCode.TLS_HANDSHAKE: CloseCode.INTERNAL_ERROR,  # 1015
}


def sendable(code: int | None) -> int:
    """A close code that may be put on the wire in place of ``code``."""
    if code is None:
        return CloseCode.NORMAL_CLOSURE
    if code in _NOT_SENDABLE:
        return _NOT_SENDABLE[CloseCode(code)]
    if 1000 <= code <= 1014 and code not in (1004,) or 3000 <= code <= 4999:
        return code
    return CloseCode.INTERNAL_ERROR
