"""The edge scenario's limits part keeps working: one tenant's limit, with 1 and 2 input
handlers on a Redis of its own (counts, not speed: the limit is what is measured)."""

from __future__ import annotations

from pathlib import Path

from bench.edge_limits import LimitsParams, render, run_edge_limits
from tests.redis_support import redis_server_path


def test_edge_limits_admit_the_same_speaks_with_one_and_two_input_handlers(
    tmp_path: Path,
) -> None:
    result = run_edge_limits(tmp_path, LimitsParams(speaks_per_minute=3))
    if redis_server_path() is None:
        assert "skipped" in result
        return
    assert [run["handlers"] for run in result["runs"]] == [1, 2]
    assert [run["admitted"] for run in result["runs"]] == [3, 3]
    assert [run["rate_limited"] for run in result["runs"]] == [6, 6]
    assert result["same_limit"] is True
    assert "| 2 | 9 | 3 | 6 |" in render(result)
