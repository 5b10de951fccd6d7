"""The systemd units and the pm2 file start exactly what the Procfile starts."""

from __future__ import annotations

import json
import re
from pathlib import Path

from aivtuber_common.config import load_settings

ROOT = Path(__file__).resolve().parent.parent


def procfile_scripts() -> dict[str, str]:
    entries = {}
    for line in (ROOT / "Procfile").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, command = line.split(":", 1)
            python, script = command.split()
            assert python == "python"
            entries[name.strip()] = script
    return entries


def test_procfile_has_one_line_per_service_folder() -> None:
    scripts = procfile_scripts()
    folders = sorted(p.parent.name for p in (ROOT / "services").glob("*/main.py"))
    assert sorted(Path(s).parent.name for s in scripts.values()) == folders
    for script in scripts.values():
        assert (ROOT / script).is_file()


def test_each_procfile_entry_has_a_systemd_unit_running_the_same_script() -> None:
    for name, script in procfile_scripts().items():
        unit = (ROOT / "deploy" / "systemd" / f"aivtuber-{name}.service").read_text()
        exec_start = re.search(r"^ExecStart=(.*)$", unit, re.MULTILINE)
        assert exec_start is not None
        assert exec_start.group(1).split()[-1] == script
        assert f"aivtuber-{name}.service" in (ROOT / "deploy/systemd/aivtuber.target").read_text()
    units = {p.stem for p in (ROOT / "deploy" / "systemd").glob("*.service")}
    assert units == {f"aivtuber-{name}" for name in procfile_scripts()}


def test_pm2_ecosystem_starts_the_procfile_scripts_and_nothing_else() -> None:
    text = (ROOT / "deploy" / "ecosystem.config.js").read_text()
    started = dict(re.findall(r'service\("([\w-]+)", "([^"]+)"\)', text))
    assert started == procfile_scripts()


# --- the stack on the Redis bus: Procfile.redis, deploy/systemd-redis, the pm2 file -------


def redis_procfile() -> dict[str, str]:
    """name -> the command's arguments after "python" (the services; not the redis-server
    line, which systemd and pm2 leave to the system's own Redis: see deploy/README.md)."""
    entries = {}
    for line in (ROOT / "Procfile.redis").read_text().splitlines():
        if line.strip() and not line.startswith(("#", "redis:")):
            name, command = line.split(":", 1)
            python, arguments = command.split(maxsplit=1)
            assert python == "python"
            entries[name.strip()] = arguments
    return entries


def test_procfile_redis_starts_every_service_on_the_redis_config() -> None:
    entries = redis_procfile()
    scripts = {arguments.split()[0] for arguments in entries.values()}
    assert scripts == set(procfile_scripts().values())
    for arguments in entries.values():
        assert "--config config.redis.json" in arguments
    config = json.loads((ROOT / "config.redis.json").read_text())
    assert load_settings(ROOT / "config.redis.json").bus.kind == "redis"
    outputs = [a for a in entries.values() if "output-handler" in a]
    backends = config["gateway"]["routes"]["output"]["backends"]
    assert [f"ws://127.0.0.1:{a.split('--port ')[1]}" for a in outputs] == backends


def test_each_procfile_redis_entry_has_a_systemd_unit_in_the_redis_target() -> None:
    units = ROOT / "deploy" / "systemd-redis"
    wanted = (units / "aivtuber-redis.target").read_text()
    for name, arguments in redis_procfile().items():
        role, _, port = name.partition("-")
        unit = f"aivtuber-redis-{role}@{port}.service" if port else f"aivtuber-redis-{role}.service"
        template = unit.replace(f"@{port}", "@") if port else unit
        text = (units / template).read_text()
        exec_start = re.search(r"^ExecStart=\S+ (.*)$", text, re.MULTILINE)
        assert exec_start is not None
        assert exec_start.group(1).replace("%i", port) == arguments, name
        assert unit in wanted, unit


def test_pm2_redis_ecosystem_starts_the_procfile_redis_entries_and_nothing_else() -> None:
    text = (ROOT / "deploy" / "ecosystem.redis.config.js").read_text()
    started = {
        name: f"{script} {args}"
        for name, script, args in re.findall(r'service\("([\w-]+)", "([^"]+)", "([^"]+)"\)', text)
    }
    assert started == redis_procfile()
