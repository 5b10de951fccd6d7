"""The last minutes of speech at the gateway, for the status page's live view.

Prometheus histograms (``metrics.py``) hold the totals since start; a chart of "time to
first audio over the last minutes" needs the recent samples themselves. :class:`RecentSpeech`
keeps them in bounded deques (a hostile or busy client cannot grow it): each time to first
audio with its time, and per-minute counts of audio frames and late frames. It is fed by the
same two observers as the histograms, on routes with ``audio_metrics``.

A *late frame* is a binary frame sent to a client more than :data:`LATE_FRAME_S` after the
one before it on the same connection: a stall longer than a browser's jitter buffer
typically holds (aivtuber.js starts with 100 ms and adapts). Bursts that arrive faster than
real time build up a client's buffer, so a late frame is a risk of a gap, not proof of one;
the client's own ``underruns`` counter says what was heard.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from typing import Any

__all__ = ["LATE_FRAME_S", "RecentSpeech"]

LATE_FRAME_S = 0.25
WINDOW_S = 600  # ten minutes of history
MAX_SAMPLES = 2048  # time-to-first-audio samples kept (the oldest go first)


class RecentSpeech:
    """Recent time-to-first-audio samples and frame counts, bounded in time and memory."""

    def __init__(
        self,
        window_s: float = WINDOW_S,
        max_samples: int = MAX_SAMPLES,
        late_frame_s: float = LATE_FRAME_S,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.window_s = window_s
        self.late_frame_s = late_frame_s
        self._clock = clock
        self._ttfa: deque[tuple[float, float]] = deque(maxlen=max_samples)
        # [minute start (unix s), frames, late frames]; one entry per minute with traffic.
        self._minutes: deque[list[int]] = deque(maxlen=int(window_s // 60) + 1)

    def first_audio(self, seconds: float) -> None:
        now = self._clock()
        self._ttfa.append((now, seconds))
        self._count(now, late=False)

    def frame_gap(self, seconds: float) -> None:
        self._count(self._clock(), late=seconds > self.late_frame_s)

    def _count(self, now: float, late: bool) -> None:
        minute = int(now // 60 * 60)
        if not self._minutes or self._minutes[-1][0] != minute:
            self._minutes.append([minute, 0, 0])
        bucket = self._minutes[-1]
        bucket[1] += 1
        bucket[2] += late

    def snapshot(self) -> dict[str, Any]:
        """What the window holds now: samples (unix time, ms), percentiles, frame counts."""
        now = self._clock()
        since = now - self.window_s
        samples = [(at, seconds) for at, seconds in self._ttfa if at >= since]
        values = sorted(seconds for _, seconds in samples)
        minutes = [list(m) for m in self._minutes if m[0] + 60 > since]
        return {
            "window_s": self.window_s,
            "now": round(now, 3),
            "time_to_first_audio": {
                "count": len(values),
                "p50_ms": _ms(_percentile(values, 0.5)),
                "p95_ms": _ms(_percentile(values, 0.95)),
                "samples": [[round(at, 3), _ms(seconds)] for at, seconds in samples],
            },
            "frames": {
                "sent": sum(m[1] for m in minutes),
                "late": sum(m[2] for m in minutes),
                "late_after_ms": round(self.late_frame_s * 1000),
                "per_minute": [{"minute": m[0], "frames": m[1], "late": m[2]} for m in minutes],
            },
        }


def _percentile(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile of sorted ``values``."""
    if not values:
        return None
    rank = max(0, min(len(values) - 1, round(q * len(values) + 0.5) - 1))
    return values[rank]


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 1)
