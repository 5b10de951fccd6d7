"""The machine's internal token file: created once, private, shared; a weak token stops a
start with one line (issue 15: "internal_token at least 16 characters", the token file)."""

from __future__ import annotations

import asyncio
import json
import os
import stat
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from aivtuber_common.config import ConfigError, Settings
from aivtuber_common.token_file import default_token_file, load_or_create_token, with_internal_token

ROOT = Path(__file__).resolve().parents[2]


def test_a_config_without_a_token_gets_the_machines_private_generated_one(tmp_path: Path) -> None:
    path = tmp_path / "state" / "aivtuber" / "internal_token"
    settings = with_internal_token(Settings(internal_token_file=path))
    again = with_internal_token(Settings(internal_token_file=path))
    assert settings.internal_token == again.internal_token  # every service reads the same one
    assert settings.internal_token is not None and len(settings.internal_token) >= 32
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert path.read_text().strip() == settings.internal_token
    set_one = Settings(internal_token="a-configured-token-0123", internal_token_file=path)
    assert with_internal_token(set_one).internal_token == "a-configured-token-0123"


def test_the_default_path_is_in_the_users_state_dir() -> None:
    assert default_token_file({"XDG_STATE_HOME": "/s"}) == Path("/s/aivtuber/internal_token")
    assert default_token_file({}).parts[-4:] == (".local", "state", "aivtuber", "internal_token")


def test_services_starting_at_once_all_get_the_same_token(tmp_path: Path) -> None:
    path = tmp_path / "race" / "internal_token"
    with ThreadPoolExecutor(8) as pool:
        tokens = set(pool.map(lambda _: load_or_create_token(path), range(32)))
    assert len(tokens) == 1
    assert [p.name for p in path.parent.iterdir()] == ["internal_token"]  # no leftovers


@pytest.mark.parametrize(
    ("mode", "content", "problem"),
    [(0o644, "a-long-enough-token-0123456789", "readable by others"), (0o600, "short", "under 16")],
)
def test_a_token_file_others_can_read_or_too_short_is_refused(
    tmp_path: Path, mode: int, content: str, problem: str
) -> None:
    path = tmp_path / "internal_token"
    path.write_text(content)
    os.chmod(path, mode)
    with pytest.raises(ConfigError, match=problem):
        load_or_create_token(path)


async def test_an_internal_token_under_16_characters_exits_2_with_one_line(tmp_path: Path) -> None:
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"internal_token": "x"}))
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "services/output-handler-python/main.py",
        "--config",
        str(config),
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await process.communicate()
    lines = err.decode().strip().splitlines()
    # Before: "x" passed and guarded every internal endpoint.
    assert process.returncode == 2 and len(lines) == 1, (out, err)
    assert "internal_token" in lines[0] and "16 characters" in lines[0]
