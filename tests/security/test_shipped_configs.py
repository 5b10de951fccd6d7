"""Finding 4 and the Redis stack as documented: every shipped config, started exactly as
shipped, has the documented limits and speaks.

- ``config.json`` and ``config.redis.json`` list ``gateway.routes`` without
  ``max_message_bytes``; naming a route now overrides only the keys given, so the routes
  keep their 1 MiB and the output route its ``audio_metrics`` (they had 16 MiB and none);
- the stacks start as documented: ``./run`` (Procfile), ``./run --redis`` (Procfile.redis,
  a redis-server of its own on a free port with a password, the services told the URL
  through ``REDIS_URL``; it used to fail with ModuleNotFoundError or exit 2), and the
  commands of ``deploy/systemd`` and ``deploy/systemd-redis`` (the same ones
  ``deploy/ecosystem*.config.js`` run: tests/test_deploy.py), with their paths moved from
  /opt/aivtuber-gateway to this checkout; each then speaks a line through the gateway, the
  status page's metrics see its first audio, and a 2 MiB message is refused with 1009.

The stacks use the shipped ports (8000-8003, 8012): when one is taken (another stack runs
on this machine) those tests are skipped, saying so.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from redis.asyncio import Redis
from redis.exceptions import AuthenticationError, ResponseError
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from aivtuber_common.config import RedisBusSettings, load_settings
from aivtuber_gateway.server import uvicorn_overrides
from tests.frontend import Heard, frontend, listen, speak
from tests.redis_support import running_redis
from tests.support import free_port

ROOT = Path(__file__).resolve().parents[2]
MIB = 1024 * 1024
PORTS = (8000, 8001, 8002, 8003, 8012)
GATEWAY = "http://127.0.0.1:8000"
START_S = 120.0  # the first start of a fresh venv loads piper and warms it up
INSTALLED = "/opt/aivtuber-gateway"


@pytest.mark.parametrize("name", ["config.json", "config.redis.json"])
def test_a_shipped_config_keeps_the_default_route_limits_and_audio_metrics(name: str) -> None:
    settings = load_settings(ROOT / name, environ={})
    routes = settings.gateway.routes
    assert routes["input"].max_message_bytes == MIB
    assert routes["output"].max_message_bytes == MIB
    assert routes["output"].audio_metrics is True
    assert uvicorn_overrides(settings.gateway)["ws_max_size"] == MIB
    assert settings.gateway.host == "127.0.0.1"


def test_naming_a_route_overrides_only_the_keys_given() -> None:
    path = ROOT / "config.json"
    settings = load_settings(path, environ={})
    custom = settings.model_validate(
        {"gateway": {"routes": {"output": {"backends": ["ws://10.0.0.2:9002"]}}}}
    )
    output = custom.gateway.routes["output"]
    assert output.backends == ["ws://10.0.0.2:9002"]
    assert output.path == "/ws/output/{task_id}"
    assert (output.max_message_bytes, output.audio_metrics) == (MIB, True)
    assert set(custom.gateway.routes) == {"output"}  # routes not named are not served
    own = custom.model_validate(
        {"gateway": {"routes": {"input": {"backends": ["ws://h:1"], "max_message_bytes": 4096}}}}
    )
    assert own.gateway.routes["input"].max_message_bytes == 4096


def test_the_redis_config_keeps_its_password_out_of_the_file() -> None:
    shipped = load_settings(ROOT / "config.redis.json", environ={})
    assert isinstance(shipped.bus, RedisBusSettings)
    assert "@" not in shipped.bus.url
    url = "redis://:s3cret@127.0.0.1:6390/0"
    told = load_settings(ROOT / "config.redis.json", environ={"REDIS_URL": url})
    assert isinstance(told.bus, RedisBusSettings) and told.bus.url == url
    # The direct bus ignores it.
    assert load_settings(ROOT / "config.json", environ={"REDIS_URL": url}).bus.kind == "direct"


# --- the stacks, as shipped ----------------------------------------------------------------


def _busy(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


@pytest.fixture
def shipped_ports() -> None:
    busy = [port for port in PORTS if _busy(port)]
    if busy:
        pytest.skip(f"the shipped ports {busy} are taken by another stack on this machine")


def _environment(**extra: str) -> dict[str, str]:
    """This environment without the test venv on PATH: the command must find its own."""
    venv_bin = str(Path(sys.executable).parent)
    path = [p for p in os.environ.get("PATH", "").split(os.pathsep) if p != venv_bin]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VIRTUAL_ENV", "REDIS_"))}
    return {**env, "PATH": os.pathsep.join(path), "PYTHONUNBUFFERED": "1", **extra}


@contextlib.contextmanager
def _started(
    commands: list[list[str]], env: dict[str, str]
) -> Iterator[list[subprocess.Popen[bytes]]]:
    processes = [
        subprocess.Popen(
            command,
            cwd=ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,  # its own process group: stopped with all its children
        )
        for command in commands
    ]
    try:
        yield processes
    finally:
        for process in processes:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGINT)
        for process in processes:
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=5)


async def _speaks_with_the_documented_limits(processes: list[subprocess.Popen[bytes]]) -> None:
    """The gateway's /health turns ok; a line is heard; its first audio reaches the metrics;
    a 2 MiB message on /ws/input is refused with 1009 (the route's 1 MiB)."""
    async with httpx.AsyncClient(trust_env=False) as http:
        async with asyncio.timeout(START_S):
            while True:
                for process in processes:
                    assert process.poll() is None, f"{process.args} exited {process.returncode}"
                with contextlib.suppress(httpx.TransportError):
                    if (await http.get(f"{GATEWAY}/health")).status_code == 200:
                        break
                await asyncio.sleep(0.2)
        async with frontend("ws://127.0.0.1:8000") as (ws, _):
            task_id = await speak(ws, "Hi chat! Welcome back.")
            heard = await asyncio.wait_for(listen("ws://127.0.0.1:8000", task_id, Heard()), 60)
        assert heard.end is not None and heard.end.get("status", "completed") == "completed"
        assert len(heard.audio) > 0
        metrics = (await http.get(f"{GATEWAY}/metrics")).text
        first = re.search(r'time_to_first_audio_seconds_count\{route="output"\} (\d+)', metrics)
        assert first is not None and int(first.group(1)) >= 1, "no time to first audio"
    async with connect("ws://127.0.0.1:8000/ws/input", max_size=None) as ws:
        await ws.recv()
        # Refused at its header: the gateway may close before the whole send is written,
        # so the send itself can end with the close.
        with contextlib.suppress(ConnectionClosed, TimeoutError):
            await ws.send(bytes(2 * MIB))
            while True:
                await asyncio.wait_for(ws.recv(), 30)
        assert ws.close_code == 1009


def _unit_commands(folder: str, env: dict[str, str]) -> list[list[str]]:
    """Each unit's ExecStart (one instance per port the Procfile starts for templates),
    moved to this checkout."""
    commands = []
    units = sorted((ROOT / "deploy" / folder).glob("*.service"))
    for unit in units:
        text = unit.read_text()
        exec_start = re.search(r"^ExecStart=(.*)$", text, re.MULTILINE)
        assert exec_start is not None
        line = exec_start.group(1).replace(INSTALLED, str(ROOT))
        instances = [""]
        if unit.stem.endswith("@"):
            role = unit.stem.removeprefix("aivtuber-redis-").removesuffix("@")
            procfile = (ROOT / "Procfile.redis").read_text()
            instances = re.findall(rf"^{role}-(\d+):", procfile, re.MULTILINE)
        commands += [line.replace("%i", port).split() for port in instances]
    for command in commands:
        assert command[0] == str(ROOT / ".venv" / "bin" / "python"), command
    return commands


async def test_run_starts_the_direct_stack_as_shipped(shipped_ports: None) -> None:
    with _started([[str(ROOT / "run")]], _environment()) as processes:
        await _speaks_with_the_documented_limits(processes)


async def test_run_redis_starts_the_redis_stack_with_a_password(shipped_ports: None) -> None:
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed (apt-get install -y redis-server)")
    port, password = free_port(), secrets.token_hex(16)
    env = _environment(REDIS_PORT=str(port), REDIS_PASSWORD=password)
    with _started([[str(ROOT / "run"), "--redis"]], env) as processes:
        await _speaks_with_the_documented_limits(processes)
        # Its Redis answers only with the password.
        anonymous = Redis(host="127.0.0.1", port=port)
        try:
            with pytest.raises((AuthenticationError, ResponseError)):
                await anonymous.ping()
        finally:
            await anonymous.aclose()
        async with Redis(host="127.0.0.1", port=port, password=password) as client:
            assert await client.ping()


async def test_the_systemd_units_commands_start_the_direct_stack(shipped_ports: None) -> None:
    env = _environment()
    with _started(_unit_commands("systemd", env), env) as processes:
        await _speaks_with_the_documented_limits(processes)


async def test_the_systemd_redis_units_commands_start_the_redis_stack(shipped_ports: None) -> None:
    password = secrets.token_hex(16)
    with running_redis() as redis:
        # As /etc/aivtuber/redis.env gives it to the units (deploy/README.md).
        await _require_password(redis.port, password)
        url = f"redis://:{password}@127.0.0.1:{redis.port}/0"
        env = _environment(REDIS_URL=url)
        with _started(_unit_commands("systemd-redis", env), env) as processes:
            await _speaks_with_the_documented_limits(processes)


async def _require_password(port: int, password: str) -> None:
    async with Redis(host="127.0.0.1", port=port) as client:
        await client.config_set("requirepass", password)
