"""The worker's exceptions; library errors are mapped onto these at the boundary.

::

    TtsError                    base; ``code`` is the snake_case code a client sees
    └── EngineError             synthesis failed (code engine_error)
        ├── EngineUnavailable   a remote engine cannot be reached (engine_unavailable)
        └── EngineTimeout       a remote engine did not answer in time (engine_timeout)

(A lost frame path is :class:`aivtuber_common.transport.SinkLost`, the same on every bus.)
"""

from __future__ import annotations

from aivtuber_common.codes import ErrorCode

__all__ = ["EngineError", "EngineTimeout", "EngineUnavailable", "TtsError"]


class TtsError(Exception):
    code = ErrorCode.TTS_ERROR


class EngineError(TtsError):
    """The message is one sentence a user can act on."""

    code = ErrorCode.ENGINE_ERROR


class EngineUnavailable(EngineError):
    code = ErrorCode.ENGINE_UNAVAILABLE


class EngineTimeout(EngineError):
    code = ErrorCode.ENGINE_TIMEOUT
