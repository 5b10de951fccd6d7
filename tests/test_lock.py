"""requirements.lock: made from pyproject.toml's dependencies, hashed, and refused when stale."""

from __future__ import annotations

import importlib.util
import re
import tomllib
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parent.parent


def _lockstamp() -> ModuleType:
    spec = importlib.util.spec_from_file_location("lockstamp", ROOT / "scripts" / "lockstamp.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_committed_lock_matches_pyproject() -> None:
    assert _lockstamp().check() is None


def test_a_changed_dependency_makes_the_lock_stale_with_a_clear_line(tmp_path: Path) -> None:
    lockstamp = _lockstamp()
    pyproject = tmp_path / "pyproject.toml"
    lock = tmp_path / "requirements.lock"
    text = (ROOT / "pyproject.toml").read_text("utf-8")
    pyproject.write_text(text, "utf-8")
    lock.write_text((ROOT / "requirements.lock").read_text("utf-8"), "utf-8")
    assert lockstamp.check(pyproject, lock) is None
    # A tool setting is not a dependency: the lock still fits.
    pyproject.write_text(text.replace("line-length = 100", "line-length = 99"), "utf-8")
    assert lockstamp.check(pyproject, lock) is None
    pyproject.write_text(text.replace('"httpx>=0.28,<1",', '"httpx>=0.28,<1", "redis>=5,<9",'))
    problem = lockstamp.check(pyproject, lock)
    assert problem is not None and "run scripts/lock" in problem
    lockstamp.write(pyproject, lock)
    assert lockstamp.check(pyproject, lock) is None


def test_every_locked_package_is_pinned_with_hashes() -> None:
    text = (ROOT / "requirements.lock").read_text("utf-8")
    pins = re.findall(r"^([A-Za-z0-9._-]+)==([^\s;]+)", text, re.MULTILINE)
    assert len(pins) > 20
    blocks = re.split(r"^(?=[A-Za-z0-9._-]+==)", text, flags=re.MULTILINE)[1:]
    assert all("--hash=sha256:" in block for block in blocks)
    names = {name.lower() for name, _ in pins}
    # The whole ".[all,dev]" set: every service's packages and the test tools.
    assert {"uvicorn", "websockets", "onnxruntime", "piper-tts", "pytest", "uv"} <= names


def test_uvicorn_and_websockets_have_upper_bounds() -> None:
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text("utf-8"))["project"]["dependencies"]
    for name in ("uvicorn", "websockets"):
        (dep,) = [dep for dep in deps if re.match(rf"{name}\b", dep)]
        assert ">=" in dep and "<" in dep.replace("<=", ""), dep


def test_the_gateway_extra_brings_no_tts_packages() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text("utf-8"))["project"]
    gateway = project["dependencies"] + project["optional-dependencies"]["gateway"]
    assert not [dep for dep in gateway if re.match(r"(onnxruntime|piper|numpy)", dep)]
