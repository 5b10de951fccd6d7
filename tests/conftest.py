"""Fixtures every test module gets."""

from __future__ import annotations

import os
from collections.abc import Generator, Iterator

import pytest
import structlog

from tests import gateway_support

# The ``bus`` fixture (both buses) and a real redis-server.
pytest_plugins = ["tests.redis_support"]

# Under CI a skipped test is a failure: the browser, Redis and nginx tests skip where their
# binary is missing, and CI must not pass by not running them (.ci/run installs them).
SKIPS_FAIL = os.environ.get("CI", "").lower() == "true"


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    if SKIPS_FAIL and report.skipped and not hasattr(report, "wasxfail"):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else report.longrepr
        report.outcome = "failed"
        report.longrepr = f"skipped under CI=true, which runs every test: {reason}"
    return report


# The gateway's client hop in both of its modes: its own frame fast path, and uvicorn's
# plain path (what runs when the installed versions are not the tested ones).
FAST_PATH_MODES = {"fast": "auto", "plain": "off"}


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Every test of the gateway (tests/test_gateway_*.py) runs once per mode."""
    module = metafunc.module.__name__.rpartition(".")[2]
    if module.startswith("test_gateway_") and "fast_path_mode" in metafunc.fixturenames:
        metafunc.parametrize(
            "fast_path_mode",
            list(FAST_PATH_MODES.values()),
            ids=list(FAST_PATH_MODES),
            indirect=True,
        )


@pytest.fixture(autouse=True, scope="session")
def machine_state_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """The services' state dir ($XDG_STATE_HOME: the generated internal token file) for the
    whole run: one "machine" shared by every service a test starts, never the user's own."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("XDG_STATE_HOME", str(tmp_path_factory.mktemp("state")))
        yield


@pytest.fixture(autouse=True)
def fast_path_mode(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """``gateway.fast_path`` of every gateway the test builds with
    :func:`tests.gateway_support.gateway_settings` ("auto" outside the gateway's tests)."""
    mode: str = getattr(request, "param", "auto")
    monkeypatch.setattr(gateway_support, "FAST_PATH", mode)
    return mode


@pytest.fixture(autouse=True)
def fresh_structlog() -> Iterator[None]:
    """structlog as a fresh process has it, whatever an earlier test configured (a level
    filter, or a stream pytest has closed since: the bench and the services' start-up
    configure it for the whole process); restored afterwards."""
    saved = structlog.get_config()
    structlog.reset_defaults()
    structlog.contextvars.clear_contextvars()
    yield
    structlog.configure(**saved)
