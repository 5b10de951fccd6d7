"""What the services' logs may show: task ids shortened at info, whole at debug."""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Iterator

import pytest
import structlog

from aivtuber_common.logging import configure_logging


@pytest.fixture(autouse=True)
def restore_root_logger() -> Iterator[None]:
    """configure_logging() points the root logger at this test's captured stdout."""
    root, uvicorn_error = logging.getLogger(), logging.getLogger("uvicorn.error")
    handlers, level, uvicorn_level = root.handlers[:], root.level, uvicorn_error.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    uvicorn_error.setLevel(uvicorn_level)


@pytest.mark.parametrize(("level", "whole"), [("info", False), ("debug", True)])
def test_task_ids_are_a_prefix_in_logs_at_info_and_whole_at_debug(
    capsys: pytest.CaptureFixture[str], level: str, whole: bool
) -> None:
    task_id, other = str(uuid.uuid4()), str(uuid.uuid4())
    configure_logging(level, "json", service="test")
    structlog.contextvars.bind_contextvars(task_id=task_id)
    structlog.get_logger("test").warning("ingest_lost_tasks", tasks=[other], chars=12)
    structlog.contextvars.clear_contextvars()
    line = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    if whole:
        assert line["task_id"] == task_id and line["tasks"] == [other]
    else:
        assert line["task_id"] == task_id[:8] + "…" and line["tasks"] == [other[:8] + "…"]
        assert task_id not in json.dumps(line)
    assert line["chars"] == 12


def test_uvicorn_request_lines_show_no_whole_task_id_and_no_query(
    capsys: pytest.CaptureFixture[str],
) -> None:
    task_id = str(uuid.uuid4())
    configure_logging("info", "json", service="test")
    uvicorn_error = logging.getLogger("uvicorn.error")
    # As uvicorn sets it at log level info (an earlier test's server may have raised it).
    uvicorn_error.setLevel(logging.INFO)
    uvicorn_error.info(
        '%s - "WebSocket %s" [accepted]', "127.0.0.1:5000", f"/ws/output/{task_id}?ticket=t1.x"
    )
    line = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert (
        line["event"]
        == f'127.0.0.1:5000 - "WebSocket /ws/output/{task_id[:8]}…?<redacted>" [accepted]'
    )
