"""Percentiles within a round, medians across rounds, ratios to the anchors.

A round measures every variant once (A B C), rounds repeat (A B C A B C ...), and each number
in the table is the median over rounds of that round's value. Drift on a shared machine then
hits every variant alike, so the ratios hold even when absolute times move.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Sequence
from typing import Any

__all__ = ["Samples", "median", "percentile", "ratio", "summarize"]


def percentile(values: Sequence[float], q: float) -> float | None:
    """The q-th percentile (0-100) by linear interpolation; None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    if len(ordered) == 1:
        return float(ordered[0])
    rank = (len(ordered) - 1) * q / 100.0
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return float(ordered[low] + (ordered[high] - ordered[low]) * (rank - low))


def summarize(values: Sequence[float], quantiles: Iterable[int] = (50, 95, 99)) -> dict[str, Any]:
    """count, mean and the given percentiles of one round's samples."""
    out: dict[str, float | int | None] = {"count": len(values)}
    out["mean"] = statistics.fmean(values) if values else None
    for q in quantiles:
        out[f"p{q}"] = percentile(values, q)
    return out


def median(values: Iterable[float | None]) -> float | None:
    """Median of the rounds' values, ignoring rounds that produced none."""
    present = [v for v in values if v is not None]
    return float(statistics.median(present)) if present else None


def ratio(value: float | None, anchor: float | None) -> float | None:
    if value is None or anchor is None or anchor == 0:
        return None
    return value / anchor


class Samples:
    """Per-round values of many metrics for many variants: ``add(variant, metric, value)``.

    ``medians()`` gives ``{variant: {metric: median}}`` and ``rounds()`` the raw per-round lists
    (both go into the JSON so a reader can see the spread, not only the middle).
    """

    def __init__(self) -> None:
        self._values: dict[str, dict[str, list[float | None]]] = {}

    def add(self, variant: str, metric: str, value: float | None) -> None:
        self._values.setdefault(variant, {}).setdefault(metric, []).append(value)

    def add_all(self, variant: str, metrics: dict[str, float | None]) -> None:
        for metric, value in metrics.items():
            self.add(variant, metric, value)

    def median(self, variant: str, metric: str) -> float | None:
        return median(self._values.get(variant, {}).get(metric, []))

    def medians(self) -> dict[str, dict[str, float | None]]:
        return {
            variant: {metric: median(values) for metric, values in metrics.items()}
            for variant, metrics in self._values.items()
        }

    def paired_ratios(self, variant: str, anchor: str) -> dict[str, float | None]:
        """Per metric, the median over rounds of (variant / anchor) within the same round."""
        mine = self._values.get(variant, {})
        theirs = self._values.get(anchor, {})
        return {
            metric: median(ratio(v, a) for v, a in zip(values, theirs[metric], strict=True))
            for metric, values in mine.items()
            if metric in theirs
        }

    def rounds(self) -> dict[str, dict[str, list[float | None]]]:
        return {
            variant: {metric: list(values) for metric, values in metrics.items()}
            for variant, metrics in self._values.items()
        }
