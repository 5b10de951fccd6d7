"""The processes a run starts, and what the bench reads from them (CPU time, resident memory).

Every process gets its own log file in the run's temporary directory; when one dies or never
becomes ready, :class:`BenchError` carries the last lines of that log so the user sees why.
Children inherit a raised file-descriptor limit (1000 idle connections through a proxy are
2000 sockets) and die with the bench if it is killed (Linux ``PR_SET_PDEATHSIG``).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import resource
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import httpx
import psutil

__all__ = [
    "REPO_ROOT",
    "BenchError",
    "Proc",
    "free_port",
    "raise_nofile_limit",
    "wait_until",
]

REPO_ROOT = Path(__file__).resolve().parent.parent
_PR_SET_PDEATHSIG = 1


class BenchError(Exception):
    """Something the bench needs is missing or broke; the message says what, for a user."""


def raise_nofile_limit() -> int:
    """Raise this process's open-file soft limit to its hard limit; return the new limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        hard = max(soft, 1 << 20)
    if soft < hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
    return soft


def _child_setup() -> None:
    # Runs in the child between fork and exec: no Python objects shared with the parent.
    raise_nofile_limit()
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def free_port() -> int:
    """A loopback port that was free a moment ago (for processes that must be told theirs)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until(check: Callable[[], bool], timeout_s: float, interval_s: float = 0.01) -> bool:
    """Poll ``check`` until it is true or the time is up; True when it became true."""
    deadline = time.monotonic() + timeout_s
    while True:
        if check():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval_s)


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.2):
            return True
    except OSError:
        return False


class Proc:
    """One child process: started with :meth:`start`, always stopped with :meth:`stop`."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        log_dir: Path,
        env: dict[str, str] | None = None,
        cwd: Path = REPO_ROOT,
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self.log_path = log_dir / f"{name}.log"
        self.env = env
        self.cwd = cwd
        self.popen: subprocess.Popen[bytes] | None = None
        self.started_at = 0.0  # time.perf_counter() just before the fork
        self._ps: psutil.Process | None = None

    @property
    def pid(self) -> int:
        assert self.popen is not None, "not started"
        return self.popen.pid

    def start(self, stdin: int | None = subprocess.DEVNULL, stdout: int | None = None) -> Proc:
        env = dict(os.environ if self.env is None else self.env)
        env.setdefault("PYTHONUNBUFFERED", "1")
        log = open(self.log_path, "ab")  # noqa: SIM115 - the child holds it; closed below
        try:
            self.started_at = time.perf_counter()
            self.popen = subprocess.Popen(
                self.argv,
                cwd=self.cwd,
                env=env,
                stdin=stdin,
                stdout=log if stdout is None else stdout,
                stderr=log,
                preexec_fn=_child_setup,
            )
        except OSError as exc:
            raise BenchError(f"cannot start {self.name} ({self.argv[0]}): {exc}") from exc
        finally:
            log.close()
        self._ps = psutil.Process(self.popen.pid)
        return self

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def check_alive(self) -> None:
        if not self.alive():
            code = self.popen.returncode if self.popen else None
            raise BenchError(f"{self.name} exited (code {code}).\n{self.log_tail()}")

    def wait_ready(
        self, check: Callable[[], bool], timeout_s: float, what: str, interval_s: float = 0.01
    ) -> float:
        """Wait until ``check()`` (and the process is alive); seconds since the start."""

        def ready() -> bool:
            self.check_alive()
            return check()

        if not wait_until(ready, timeout_s, interval_s):
            raise BenchError(
                f"{self.name} did not become ready ({what}) within {timeout_s:.0f} s.\n"
                f"{self.log_tail()}"
            )
        return time.perf_counter() - self.started_at

    def wait_port(self, port: int, timeout_s: float = 20.0) -> float:
        return self.wait_ready(lambda: port_open(port), timeout_s, f"port {port}")

    def wait_http(self, url: str, timeout_s: float = 30.0) -> float:
        """Wait until GET ``url`` answers 200."""

        # One client for the whole wait: a new one per poll builds an SSL context each time,
        # CPU taken from the very start-up being timed.
        with httpx.Client(timeout=1.0) as client:

            def ok() -> bool:
                try:
                    return client.get(url).status_code == 200
                except httpx.HTTPError:
                    return False

            return self.wait_ready(ok, timeout_s, f"200 from {url}", interval_s=0.02)

    def _tree(self) -> list[psutil.Process]:
        # nginx's work happens in its worker processes: count the whole tree.
        assert self._ps is not None, "not started"
        try:
            return [self._ps, *self._ps.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []

    def cpu_seconds(self) -> tuple[float, float]:
        """(user, system) CPU time of the process and its children so far."""
        user = system = 0.0
        for proc in self._tree():
            with contextlib.suppress(psutil.NoSuchProcess):
                times = proc.cpu_times()
                user += times.user
                system += times.system
        return user, system

    def cpu_exact_seconds(self) -> float:
        """CPU time of the process tree so far, to the nanosecond where Linux tells it.

        psutil's user/system times count in clock ticks (10 ms), too coarse for a phase of a
        second on a proxy that spends a few microseconds per message; the scheduler's own
        per-thread run time (``/proc/<pid>/task/<tid>/schedstat``) is exact.
        """
        total = 0.0
        for proc in self._tree():
            tasks = Path(f"/proc/{proc.pid}/task")
            try:
                for task in tasks.iterdir():
                    total += int((task / "schedstat").read_text().split()[0]) / 1e9
            except (OSError, ValueError, IndexError):
                return sum(self.cpu_seconds())
        return total

    def rss_bytes(self) -> int:
        total = 0
        for proc in self._tree():
            with contextlib.suppress(psutil.NoSuchProcess):
                total += proc.memory_info().rss
        return total

    def log_tail(self, lines: int = 15) -> str:
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return f"(no log at {self.log_path})"
        tail = text.strip().splitlines()[-lines:]
        if not tail:
            return f"({self.name} wrote nothing to {self.log_path})"
        return f"last lines of {self.log_path}:\n    " + "\n    ".join(tail)

    def stop(self, timeout_s: float = 5.0) -> int | None:
        """SIGTERM, then SIGKILL if it lingers; the exit code (None if never started)."""
        if self.popen is None:
            return None
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()
        for stream in (self.popen.stdin, self.popen.stdout):
            if stream is not None:
                stream.close()
        return self.popen.returncode


def python_argv(*args: str) -> list[str]:
    """The interpreter running the bench (the project's venv), with ``args``."""
    return [sys.executable, *args]
