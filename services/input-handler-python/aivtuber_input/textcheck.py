"""What text can be spoken, checked the same way on /ws/input and /v1/audio/speech.

Refused: C0 control characters other than tab and newline (a NUL reaches an engine as a
failure) and lone surrogates (from a ``"\\ud800"`` JSON escape: no UTF-8 can carry them, so
they could not be sent on to a worker, logged or echoed in an answer).
"""

from __future__ import annotations

import re
from typing import Any

__all__ = ["BAD_TEXT", "BAD_TEXT_MESSAGE", "SURROGATE", "unencodable_field"]

BAD_TEXT = re.compile(r"[\x00-\x08\x0b-\x1f\ud800-\udfff]")
SURROGATE = re.compile(r"[\ud800-\udfff]")
BAD_TEXT_MESSAGE = (
    "The text holds a character that cannot be spoken: a NUL or other control character "
    "(tab and newline are fine) or a lone surrogate."
)


def unencodable_field(data: dict[str, Any]) -> str | None:
    """The first top-level key (or string value's key) holding a lone surrogate."""
    for key, value in data.items():
        if SURROGATE.search(key):
            return "(a key)"
        if isinstance(value, str) and SURROGATE.search(value):
            return key
    return None
