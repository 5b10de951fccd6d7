"""The whole stack for the speech path: four processes from their main.py, ephemeral ports.

The configuration is the repository's config.json (what ``./run`` runs) with only the
addresses changed, the log level at warning, and the chosen voice as the default. It is
validated with the services' own loader before anything starts, and written into the run's
temporary directory. Start order: output handler, input handler and gateway together, then,
alone, the TTS worker (timed: process start -> ``/health`` 200, i.e. voice loaded and warmed
up, connected to the output handler); the stack is ready when the input handler sees it.
"""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aivtuber_common.config import (
    ConfigError,
    HibariVoice,
    KokoroJaVoice,
    PiperVoice,
    Settings,
    SineVoice,
    load_settings,
)
from aivtuber_common.identity import GATEWAY_TOKEN_HEADER

from .procs import REPO_ROOT, BenchError, Proc, free_port, python_argv

__all__ = [
    "Ports",
    "Stack",
    "internal_headers",
    "stack_config",
    "start_worker",
    "write_config",
]

MAIN = {
    "gateway": "services/gateway-python/main.py",
    "input_handler": "services/input-handler-python/main.py",
    "output_handler": "services/output-handler-python/main.py",
    "tts_worker": "services/tts-worker/main.py",
}
# Voices the bench can run when config.json does not name them: the defaults a config
# without a "voices" key gets (see aivtuber_common.config), and the bundled ones that
# docs/voices.md tells how to enable (the Japanese voices are not in the shipped config).
DEFAULT_VOICES = {
    "joe": PiperVoice(),
    "sine": SineVoice(),
    "heart": HibariVoice(),
    "jf_alpha": KokoroJaVoice(speaker="jf_alpha"),
}
UNLIMITED = {
    "max_connections": 100_000,
    "speaks_per_minute": 1_000_000,
    "chars_per_minute": 10**9,
    "max_active_tasks": 10_000,
}
READY_TIMEOUT_S = 60.0  # a cold Piper load on a busy 2-core machine takes a few seconds


@dataclass
class Ports:
    gateway: int
    input_handler: int
    output_handler: int
    tts_worker: int

    @classmethod
    def pick(cls) -> Ports:
        return cls(free_port(), free_port(), free_port(), free_port())


def default_voice_config(voice: str) -> dict[str, Any]:
    """One of DEFAULT_VOICES as config.json writes it (its engine named: the voice settings
    are a union keyed on it, and "engine" is a default each dump would leave out)."""
    settings = DEFAULT_VOICES[voice]
    return {"engine": settings.engine, **settings.model_dump(exclude_defaults=True)}


def stack_config(
    ports: Ports, voice: str, base: Path = REPO_ROOT / "config.json"
) -> dict[str, Any]:
    """config.json with the bench's ports, log level warning, ``voice`` as the default."""
    data: dict[str, Any] = json.loads(base.read_text(encoding="utf-8")) if base.exists() else {}
    data["logging"] = {**data.get("logging", {}), "level": "warning", "format": "json"}
    local = "127.0.0.1"
    gateway = data.setdefault("gateway", {})
    gateway.update(host=local, port=ports.gateway)
    routes = gateway.setdefault(
        "routes",
        {"input": {"path": "/ws/input"}, "output": {"path": "/ws/output/{task_id}"}},
    )
    routes["input"] = {**routes.get("input", {}), "path": "/ws/input"}
    routes["input"]["backends"] = [f"ws://{local}:{ports.input_handler}"]
    routes["output"] = {**routes.get("output", {}), "path": "/ws/output/{task_id}"}
    routes["output"]["backends"] = [f"ws://{local}:{ports.output_handler}"]
    for api in ("openai", "voicevox"):  # the input handler's HTTP APIs
        if api in routes:
            routes[api]["backends"] = [f"http://{local}:{ports.input_handler}"]
    if "tasks" in routes:  # captions and WAV of a task: plain HTTP to the output handler
        routes["tasks"]["backends"] = [f"http://{local}:{ports.output_handler}"]
    data.setdefault("input_handler", {}).update(
        host=local,
        port=ports.input_handler,
        workers=[f"http://{local}:{ports.tts_worker}"],
        output_handler_url=f"ws://{local}:{ports.output_handler}",
    )
    data.setdefault("output_handler", {}).update(host=local, port=ports.output_handler)
    worker = data.setdefault("tts_worker", {})
    worker.update(
        host=local,
        port=ports.tts_worker,
        output_handler_url=f"ws://{local}:{ports.output_handler}",
        default_voice=voice,
    )
    voices = worker.get("voices") or {}
    if voice not in voices and voice in DEFAULT_VOICES:
        voices[voice] = default_voice_config(voice)
    if voice not in voices:
        known = ", ".join(sorted({*voices, *DEFAULT_VOICES}))
        raise BenchError(f"voice {voice!r} is not configured in {base.name} (known: {known})")
    # Only the voice under test is loaded: another one would lengthen the worker's start.
    worker["voices"] = {voice: voices[voice]}
    # Every listener of the bench is one anonymous client (loopback): the per-client limits
    # and the worker's per-client share of its queue would measure themselves, not speech.
    data["limits"] = {**data.get("limits", {}), **UNLIMITED}
    worker["tenant_share"] = 1.0
    # The internal token of this run's stack: what the bench shows a back end it dials
    # directly (internal_headers), never the user's own token file.
    data.setdefault("internal_token", secrets.token_urlsafe(24))
    return data


def internal_headers(settings: Settings) -> dict[str, str]:
    """What a direct client of a back end (not through the gateway) must present."""
    token = settings.internal_token
    return {GATEWAY_TOKEN_HEADER: token} if token else {}


def write_config(
    work_dir: Path, data: dict[str, Any], name: str = "stack.json"
) -> tuple[Path, Settings]:
    path = work_dir / name
    path.write_text(json.dumps(data, indent=2), encoding="utf-8")
    try:
        return path, load_settings(path, environ={})
    except ConfigError as exc:
        raise BenchError(f"the generated stack config is not valid: {exc}") from exc


def service_proc(section: str, config: Path, work_dir: Path, name: str | None = None) -> Proc:
    argv = python_argv(MAIN[section], "--config", str(config), "--log-level", "warning")
    env = _clean_env()
    return Proc(name or section, argv, work_dir, env=env)


def _clean_env() -> dict[str, str]:
    # The route overrides would point the bench's gateway at the user's running stack.
    env = dict(os.environ)
    for variable in ("INPUT_HANDLER_URL", "OUTPUT_HANDLER_URL", "AIVTUBER_CONFIG"):
        env.pop(variable, None)
    return env


def start_worker(config: Path, settings: Settings, work_dir: Path, name: str) -> tuple[Proc, float]:
    """Start a TTS worker; (the process, seconds from process start to /health 200)."""
    proc = service_proc("tts_worker", config, work_dir, name)
    proc.start()
    try:
        ready_s = proc.wait_http(
            f"http://127.0.0.1:{settings.tts_worker.port}/health", READY_TIMEOUT_S
        )
    except BaseException:
        proc.stop()
        raise
    return proc, ready_s


class Stack:
    """The four services; use as a context manager so every process is stopped."""

    def __init__(
        self,
        work_dir: Path,
        voice: str,
        customize: Callable[[dict[str, Any]], None] | None = None,
    ) -> None:
        """``customize`` may change the generated config before it is validated and written."""
        self.work_dir = work_dir
        self.ports = Ports.pick()
        data = stack_config(self.ports, voice)
        if customize is not None:
            customize(data)
        self.config_path, self.settings = write_config(work_dir, data)
        self.procs: list[Proc] = []
        self.worker_ready_s: float | None = None
        self.gateway_ws = f"ws://127.0.0.1:{self.ports.gateway}"

    def __enter__(self) -> Stack:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        # The three light services start together; the worker starts alone once they are up,
        # so its start-to-ready time is not shared with their imports. The input handler's
        # (and so the gateway's) /health says ok only once a worker is ready: until then
        # their ports, and the gateway's liveness, tell that they are up.
        starting = [self._start(section) for section in ("output_handler", "input_handler")]
        gateway = self._start("gateway")
        for proc in starting:
            proc.wait_port(getattr(self.ports, proc.name), READY_TIMEOUT_S)
        gateway.wait_http(self._health("gateway") + "z", READY_TIMEOUT_S)
        worker, self.worker_ready_s = start_worker(
            self.config_path, self.settings, self.work_dir, "tts_worker"
        )
        self.procs.append(worker)
        # 200 once the input handler has a ready worker and the output handler is up.
        gateway.wait_http(self._health("gateway"), READY_TIMEOUT_S)

    def stop(self) -> None:
        for proc in reversed(self.procs):
            proc.stop()
        self.procs.clear()

    def proc(self, name: str) -> Proc:
        return next(proc for proc in self.procs if proc.name == name)

    def _start(self, section: str) -> Proc:
        proc = service_proc(section, self.config_path, self.work_dir)
        self.procs.append(proc)
        return proc.start()

    def _health(self, section: str) -> str:
        return f"http://127.0.0.1:{getattr(self.ports, section)}/health"
