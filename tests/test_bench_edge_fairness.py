"""The edge scenario's fair-sharing part keeps working: its smoke run, structure only (the
numbers of a smoke run on a shared machine mean nothing)."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.edge_fairness import FairnessParams, render, run_edge_fairness

# A smoke run starts whole stacks of service processes: far over the default 60 s pytest
# timeout on a loaded 2-core machine (a hang guard, never a speed check).
pytestmark = pytest.mark.timeout(300)


def test_smoke_run_measures_the_listener_alone_and_under_a_flood(tmp_path: Path) -> None:
    said: list[str] = []
    result = run_edge_fairness(FairnessParams.smoke(), tmp_path, say=said.append)
    assert result["params"]["voice"] == "sine"
    assert result["alone_ttfa_ms"] > 0 and result["flood_ttfa_ms"] > 0
    assert result["ratio"] == result["flood_ttfa_ms"] / result["alone_ttfa_ms"]
    assert result["target_ratio"] == 2.0 and isinstance(result["meets_target"], bool)
    # The flooder had filled its whole share of the worker (and was refused) before the
    # listener spoke.
    assert result["flooder_tasks_submitted"][0] >= result["flooder_share"]
    assert result["flooder_refused_full"][0] >= 1
    assert len(result["alone_ttfa_ms_each"]) == len(result["flood_ttfa_ms_each"]) == 1
    assert any("round 1/1" in line for line in said)
    table = render(result)
    assert "| beta alone |" in table and f"{result['ratio']:.2f}x" in table
