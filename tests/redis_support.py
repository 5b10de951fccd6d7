"""A real ``redis-server`` for the tests, and the ``bus`` fixture that runs a test on both
buses (a pytest plugin: tests/conftest.py loads it).

Debian's ``redis-server`` is used (``.ci/run`` installs it when missing); without it the
Redis half of every bus-parametrized test is skipped with that reason. Each test gets its
own key prefix, so tests never see each other's tasks on the shared server.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from aivtuber_common.config import BusSettings, DirectBusSettings, RedisBusSettings
from tests.support import free_port

__all__ = ["RedisServer", "bus", "redis_bus_settings", "redis_server"]

START_TIMEOUT_S = 10.0
# Fast enough for tests: heartbeats every 0.2 s, a dead worker's tasks claimed after 3 s.
# Not 1 s: a process stalled that long on a loaded machine would be counted out, and a
# live worker's task claimed by another (worker_lost) or refused (tts_unavailable).
TEST_BUS = {"heartbeat_interval_s": 0.2, "heartbeat_ttl_s": 3.0, "claim_idle_s": 3.0}


def redis_server_path() -> str | None:
    return shutil.which("redis-server") or (
        "/usr/bin/redis-server" if Path("/usr/bin/redis-server").exists() else None
    )


class RedisServer:
    """One redis-server process on a loopback port; :meth:`stop` / :meth:`start` again on the
    same port (a restart mid-run)."""

    def __init__(self, executable: str, port: int | None = None) -> None:
        self.executable = executable
        self.port = port or free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(
            [
                self.executable,
                "--port", str(self.port),
                "--bind", "127.0.0.1",
                "--save", "",
                "--appendonly", "no",
                "--protected-mode", "yes",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        # Imported here: this plugin loads in every test venv, and the gateway-only one
        # (.ci/lowest-bounds, .[gateway,dev]) has no redis client.
        from redis import Redis
        from redis.exceptions import ConnectionError as RedisConnectionError

        client = Redis.from_url(self.url, socket_connect_timeout=0.5)
        deadline = time.monotonic() + START_TIMEOUT_S
        try:
            while True:
                try:
                    client.ping()
                    return
                except RedisConnectionError:
                    if self.process.poll() is not None or time.monotonic() > deadline:
                        raise RuntimeError(f"redis-server did not start on {self.port}") from None
                    time.sleep(0.02)
        finally:
            client.close()

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=START_TIMEOUT_S)

    async def akill(self) -> None:
        await asyncio.to_thread(self.kill)

    async def astart(self) -> None:
        await asyncio.to_thread(self.start)


@contextlib.contextmanager
def running_redis(port: int | None = None) -> Iterator[RedisServer]:
    executable = redis_server_path()
    if executable is None:
        pytest.skip("redis-server is not installed (apt-get install -y redis-server)")
    server = RedisServer(executable, port)
    server.start()
    try:
        yield server
    finally:
        server.kill()


def redis_bus_settings(url: str, **overrides: Any) -> RedisBusSettings:
    """Bus settings with a prefix of its own (one test's keys) and the fast test timings."""
    options = {**TEST_BUS, "prefix": f"t{uuid.uuid4().hex[:12]}", **overrides}
    return RedisBusSettings(kind="redis", url=url, **options)


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    with running_redis() as server:
        yield server


@pytest.fixture(params=["direct", "redis"])
def bus(request: pytest.FixtureRequest) -> BusSettings:
    """Runs the test once per bus; on Redis with its own key prefix."""
    if request.param == "direct":
        return DirectBusSettings()
    server: RedisServer = request.getfixturevalue("redis_server")
    return redis_bus_settings(server.url)
