"""onnxruntime sessions whose runs the worker's scheduler may stop (pre-emption: see
:mod:`aivtuber_tts.scheduler`).

A piece's audio comes out of ``session.run`` whole, so a run stopped half way has given
nothing to anybody: the scheduler runs the piece again later. onnxruntime checks
``RunOptions.terminate`` between the graph's nodes, so a run ends within milliseconds of
being told (measured with Piper: a 55 ms run asked to stop at 20 ms ended at 21 ms).
"""

from __future__ import annotations

import functools
from typing import Any

import onnxruntime

from ..scheduler import stoppable

__all__ = ["StoppableSession"]


class StoppableSession:
    """Stands in for an ``InferenceSession`` (Piper calls ``session.run(None, feeds)``):
    each run gets its own ``RunOptions``, which the scheduler may tell to terminate."""

    def __init__(self, session: onnxruntime.InferenceSession) -> None:
        self.session = session

    def run(
        self,
        output_names: list[str] | None,
        input_feed: dict[str, Any],
        run_options: onnxruntime.RunOptions | None = None,
    ) -> Any:
        options = run_options if run_options is not None else onnxruntime.RunOptions()
        with stoppable(functools.partial(setattr, options, "terminate", True)):
            return self.session.run(output_names, input_feed, options)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.session, name)
