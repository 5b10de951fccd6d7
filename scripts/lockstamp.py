"""Ties requirements.lock to the dependencies in pyproject.toml it was resolved from.

``python3 scripts/lockstamp.py write`` (run by scripts/lock) records a digest of
``requires-python``, ``dependencies`` and ``optional-dependencies`` in the lock's header;
``check`` (run by scripts/bootstrap.sh before every ./run, ./test and ./benchmark) exits 1
with one line saying what to do when pyproject.toml's dependencies changed since. Other
edits of pyproject.toml (tool settings) do not need a new lock. Standard library only: it
runs before the virtual environment exists.
"""

from __future__ import annotations

import hashlib
import json
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = ROOT / "pyproject.toml"
LOCK = ROOT / "requirements.lock"
PREFIX = "# pyproject-dependencies-sha256: "


def digest(pyproject: Path = PYPROJECT) -> str:
    """A digest of what the lock is resolved from, insensitive to comments and layout."""
    project = tomllib.loads(pyproject.read_text("utf-8"))["project"]
    wanted = {
        key: project.get(key)
        for key in ("requires-python", "dependencies", "optional-dependencies")
    }
    return hashlib.sha256(json.dumps(wanted, sort_keys=True).encode()).hexdigest()


def recorded(lock: Path = LOCK) -> str | None:
    """The digest written into the lock's header, or None."""
    if not lock.exists():
        return None
    for line in lock.read_text("utf-8").splitlines():
        if line.startswith(PREFIX):
            return line[len(PREFIX) :].strip()
        if line and not line.startswith("#"):
            break
    return None


def write(pyproject: Path = PYPROJECT, lock: Path = LOCK) -> None:
    lines = [
        line
        for line in lock.read_text("utf-8").splitlines(keepends=True)
        if not line.startswith(PREFIX)
    ]
    lock.write_text(PREFIX + digest(pyproject) + "\n" + "".join(lines), "utf-8")


def check(pyproject: Path = PYPROJECT, lock: Path = LOCK) -> str | None:
    """None when the lock fits pyproject.toml, else the line to print."""
    if not lock.exists():
        return f"error: {lock.name} is missing: run scripts/lock"
    if recorded(lock) != digest(pyproject):
        return (
            f"error: the dependencies in {pyproject.name} changed since {lock.name} was "
            "made: run scripts/lock and commit requirements.lock"
        )
    return None


def main(argv: list[str]) -> int:
    if argv == ["write"]:
        write()
        return 0
    if argv == ["check"]:
        problem = check()
        if problem is not None:
            print(problem, file=sys.stderr)
            return 1
        return 0
    print("usage: lockstamp.py write|check", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
