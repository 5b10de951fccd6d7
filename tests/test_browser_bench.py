"""``./benchmark --scenario browser`` keeps working: its smoke run in Debian's Chromium.

Only the structure is checked, never a speed (speed belongs in the benchmark's own report).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.browser import needs_chromium
from tests.test_bench import run_bench

pytestmark = needs_chromium


@pytest.mark.timeout(180)
def test_browser_smoke_run_times_first_audio_in_the_page_next_to_the_python_client(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    results = run_bench(tmp_path, "--scenario", "browser")

    browser = results["scenarios"]["browser"]
    assert browser["voice"] == "sine"
    rows = browser["per_line"]
    assert len(rows) == 2
    for row in rows:
        # Heard in the page means after the first frame arrived there.
        assert row["browser_ttfa_ms"] >= row["browser_first_frame_ms"] > 0
        assert row["python_ttfa_ms"] > 0 and row["chunks"] > 0
    assert browser["medians"]["browser"]["heard_over_python_p50"] is not None
    assert "heard in the page" in capsys.readouterr().out
