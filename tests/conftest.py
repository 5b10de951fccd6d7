"""Fixtures every test module gets."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import structlog

# The ``bus`` fixture (both buses) and a real redis-server.
pytest_plugins = ["tests.redis_support"]


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
