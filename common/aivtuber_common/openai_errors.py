"""OpenAI's error body, which the official client turns into its exceptions.

Both the gateway (its own refusals on the ``/v1/...`` routes: no API key, no back end) and
the input handler (the speech API's refusals) answer in this shape::

    {"error": {"message": "...", "type": "invalid_request_error", "param": null, "code": "..."}}
"""

from __future__ import annotations

from typing import Any

__all__ = ["openai_error"]


def openai_error(message: str, type_: str, code: str, param: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}
