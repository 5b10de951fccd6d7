"""What a log line or a page may show of a request: long path segments cut, no query.

A whole task id is all it takes to hear someone's speech, and browsers put credentials in
query strings, so neither appears in a log line at info, in the gateway's ``/connections``
or on its status page: a path segment longer than :data:`KEEP` + 4 characters is shown as
its first :data:`KEEP` and an ellipsis (enough to correlate), and the query string is
never shown.
"""

from __future__ import annotations

__all__ = ["KEEP", "short_path"]

KEEP = 8
_MAX_SHOWN = 200


def short_path(path: str) -> str:
    """``/ws/output/3f1c2a9e-8d4b-...`` -> ``/ws/output/3f1c2a9e…``."""
    segments = path[:_MAX_SHOWN].split("/")
    return "/".join(s if len(s) <= KEEP + 4 else s[:KEEP] + "…" for s in segments)
