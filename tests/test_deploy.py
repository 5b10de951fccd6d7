"""The systemd units and the pm2 file start exactly what the Procfile starts."""

from __future__ import annotations

import re
from pathlib import Path

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
