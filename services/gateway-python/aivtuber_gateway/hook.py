"""The contract between the client hop's fast path (:mod:`.clientside`) and the proxy: the
ASGI scope extension under which the protocol offers itself, and what it offers.

Its own module so that the proxy, the protocol and the version check (:mod:`.fastpath`)
depend on it rather than on each other.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

__all__ = ["EXTENSION", "ClientHook"]

# The ASGI scope extension under which the fast path's protocol offers itself to the app
# (a :class:`ClientHook`): it survives middleware, unlike ``send.__self__``.
EXTENSION = "aivtuber.fast_path"


class ClientHook(Protocol):
    """What the fast path offers the app in ``scope["extensions"][EXTENSION]``."""

    # Takes a data message (opcode, payload) straight from the socket callback; True if
    # it did, False to let it go to the app's receive() as usual.
    direct: Callable[[int, bytes], bool] | None

    def write_frame(self, opcode: int, payload: bytes, defer: bool = False) -> bool: ...

    def flush_pending(self) -> None: ...
