"""One refusal type: why a request is turned away, in every form it takes.

An HTTP status with its WebSocket twin (the project's close code ``4000 + status``: 4400,
4401, 4403, 4404, 4429, see :class:`~aivtuber_common.closecodes.AppCloseCode`), an
:class:`~aivtuber_common.codes.ErrorCode` and one sentence. The gateway's edge returns it
(credentials, Origin, quotas) and its HTTP routes raise it; a worker raises it for a task it
will not take and sends it as :class:`~aivtuber_common.internal.WorkerRefusal`, which the
input handler reads back with :meth:`Refusal.from_wire`. Each form is made here, so a
refusal reads the same wherever it is seen.
"""

from __future__ import annotations

from typing import Any, Literal

from starlette.responses import JSONResponse

from .closecodes import AppCloseCode
from .internal import WorkerRefusal
from .openai_errors import openai_error

__all__ = ["RETRY_AFTER_S", "OpenAIErrorType", "Refusal"]

OpenAIErrorType = Literal[
    "invalid_request_error", "authentication_error", "rate_limit_error", "server_error"
]


# Retry-After of a 429 that knows no better time (too many connections: a place frees when
# one of them closes, which cannot be known); a short wait keeps clients from hammering.
RETRY_AFTER_S = 5


class Refusal(Exception):
    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        *,
        openai_type: OpenAIErrorType | None = None,
        retry_after_s: int | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.openai_type: OpenAIErrorType = openai_type or _openai_type(status)
        # Every 429 says when to try again (Retry-After), its own time or the default.
        self.retry_after_s = retry_after_s if retry_after_s is not None else RETRY_AFTER_S

    @property
    def reason(self) -> str:
        """The sentence as a WebSocket close reason (keep it short: at most 123 bytes)."""
        return self.message

    @property
    def close_code(self) -> int:
        """The WebSocket close code of the same refusal (4000 + the HTTP status)."""
        code = 4000 + self.status
        return AppCloseCode(code) if code in AppCloseCode._value2member_map_ else code

    def response(self) -> JSONResponse:
        """The project's HTTP error body: ``{"type":"error","code","message"}``."""
        body = {"type": "error", "code": self.code, "message": self.message}
        return JSONResponse(body, status_code=self.status, headers=self.headers())

    def openai_body(self, param: str | None = None) -> dict[str, Any]:
        """OpenAI's error body, for the ``/v1/...`` HTTP routes."""
        return openai_error(self.message, self.openai_type, self.code, param)

    def headers(self) -> dict[str, str]:
        headers = {"cache-control": "no-store"}
        if self.status == 401:
            headers["www-authenticate"] = 'Bearer realm="aivtuber"'
        if self.status == 429:
            headers["retry-after"] = str(self.retry_after_s)
        return headers

    def wire(self) -> WorkerRefusal:
        """As a worker sends it to the input handler."""
        return WorkerRefusal(code=self.code, message=self.message)

    @classmethod
    def from_wire(cls, status: int, refusal: WorkerRefusal) -> Refusal:
        return cls(status, refusal.code, refusal.message)


def _openai_type(status: int) -> OpenAIErrorType:
    if status == 401:
        return "authentication_error"
    if status == 429:
        return "rate_limit_error"
    return "server_error" if status >= 500 else "invalid_request_error"
