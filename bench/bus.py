"""``./benchmark --scenario bus``: the direct bus against the Redis bus, in the same run.

1. Time to first audio: a direct stack and a Redis stack (each its own processes, the sine
   voice so that the engine adds next to nothing and the transport shows) are up together;
   utterances go to one then the other, one at a time. p50/p95 of each, and the p50
   difference (target: Redis adds at most 3 ms).
2. Fan-out: one finished task of a long line, read at once by N subscribers connected
   straight to ONE output handler; frames per second delivered, per bus.
3. Real-time streams: on the Redis bus with the bench voice (Piper by default), the largest
   number of simultaneous utterances with no late frame, with 1 and with 2 workers. On a
   2-core machine the second worker shares the same cores (each Piper slot already uses 2
   threads), so it adds no synthesis capacity: the figure shows what the bus itself costs.
"""

from __future__ import annotations

import asyncio
import shutil
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import httpx
from websockets.asyncio.client import connect

from .procs import BenchError, Proc, free_port, python_argv
from .speech_client import Utterance, prepare, speak_and_listen
from .speech_path import _speak_together, read_lines, realtime_streams
from .stack import (
    MAIN,
    READY_TIMEOUT_S,
    Ports,
    _clean_env,
    internal_headers,
    stack_config,
    write_config,
)
from .stats import percentile

__all__ = ["BusParams", "run_bus"]

LONG_LINE = " ".join(["The quick brown fox jumps over the lazy dog."] * 8)


@dataclass(frozen=True)
class BusParams:
    utterances: int = 60  # time-to-first-audio samples per bus
    subscribers: int = 50  # fan-out readers of one task
    levels: tuple[int, ...] = (1, 2, 4, 6, 8)
    voice: str = "joe"  # real-time streams; the TTFA and fan-out parts use sine

    @classmethod
    def quick(cls) -> BusParams:
        return cls(utterances=20, subscribers=20, levels=(1, 2, 4))

    @classmethod
    def smoke(cls) -> BusParams:
        return cls(utterances=2, subscribers=2, levels=(1,), voice="sine")


class BusStack:
    """gateway, input handler, one output handler and ``workers`` TTS workers on one bus."""

    def __init__(
        self, work_dir: Path, name: str, voice: str, redis_url: str | None, workers: int = 1
    ) -> None:
        self.work_dir, self.name = work_dir, name
        self.ports = Ports.pick()
        self.worker_ports = [self.ports.tts_worker] + [free_port() for _ in range(workers - 1)]
        data = stack_config(self.ports, voice)
        data["input_handler"]["workers"] = [f"http://127.0.0.1:{p}" for p in self.worker_ports]
        if redis_url is not None:
            data["bus"] = {
                "kind": "redis",
                "url": redis_url,
                "prefix": f"bench{uuid.uuid4().hex[:8]}",
            }
        self.config, self.settings = write_config(work_dir, data, f"{name}.json")
        self.procs: list[Proc] = []
        self.gateway_ws = f"ws://127.0.0.1:{self.ports.gateway}"
        self.output_ws = f"ws://127.0.0.1:{self.ports.output_handler}"

    def start(self) -> BusStack:
        for section in ("output_handler", "input_handler", "gateway"):
            self._proc(section, section, getattr(self.ports, section))
        for number, port in enumerate(self.worker_ports):
            self._proc("tts_worker", f"tts_worker{number}", port)
        url = f"http://127.0.0.1:{self.ports.input_handler}/health"
        with httpx.Client(timeout=1.0) as client:
            self.procs[1].wait_ready(
                lambda: _workers_seen(client, url) >= len(self.worker_ports),
                READY_TIMEOUT_S,
                "sees every TTS worker",
                0.05,
            )
        return self

    def stop(self) -> None:
        for proc in reversed(self.procs):
            proc.stop()

    def _proc(self, section: str, name: str, port: int) -> None:
        argv = python_argv(
            MAIN[section],
            "--config",
            str(self.config),
            "--port",
            str(port),
            "--log-level",
            "warning",
        )
        proc = Proc(f"{self.name}-{name}", argv, self.work_dir, env=_clean_env()).start()
        self.procs.append(proc)
        proc.wait_http(f"http://127.0.0.1:{port}/health", READY_TIMEOUT_S)


def _workers_seen(client: httpx.Client, url: str) -> int:
    try:
        return int(client.get(url).json().get("workers_available", 0))
    except (httpx.HTTPError, ValueError):
        return 0


def run_bus(params: BusParams, work_dir: Path, say: Callable[[str], None]) -> dict[str, Any]:
    executable = shutil.which("redis-server")
    if executable is None:
        raise BenchError("the bus scenario needs redis-server (apt-get install -y redis-server)")
    port = free_port()
    redis = Proc(
        "redis", [executable, "--port", str(port), "--save", "", "--appendonly", "no"], work_dir
    ).start()
    redis.wait_port(port)
    url = f"redis://127.0.0.1:{port}/0"
    try:
        result: dict[str, Any] = {"params": asdict(params)}
        say("bus: direct and redis stacks (sine voice) side by side")
        stacks = {
            "direct": BusStack(work_dir, "direct", "sine", None),
            "redis": BusStack(work_dir, "redis", "sine", url),
        }
        try:
            for stack in stacks.values():
                stack.start()
            result["ttfa"] = _ttfa(stacks, params.utterances)
            result["fanout"] = {
                name: asyncio.run(_fanout(stack, params.subscribers))
                for name, stack in stacks.items()
            }
        finally:
            for stack in stacks.values():
                stack.stop()
        result["realtime"] = {}
        lines = read_lines()
        for workers in (1, 2):
            say(f"bus: real-time streams on redis, {workers} worker(s), voice {params.voice}")
            stack = BusStack(work_dir, f"rt{workers}", params.voice, url, workers)
            try:
                stack.start()
                rows = []
                for level in params.levels:
                    rows.append(_level(stack, lines, level))
                result["realtime"][str(workers)] = {
                    "levels": rows,
                    "realtime_streams": realtime_streams(rows, params.levels),
                }
            finally:
                stack.stop()
        return result
    finally:
        redis.stop()


def _ttfa(stacks: dict[str, BusStack], count: int) -> dict[str, Any]:
    samples: dict[str, list[float]] = {name: [] for name in stacks}
    for _ in range(2):  # warm-up: first connections, the voice's first piece
        for stack in stacks.values():
            asyncio.run(_one(stack.gateway_ws, "Warming up."))
    for index in range(count):
        order = list(stacks.items()) if index % 2 == 0 else list(reversed(stacks.items()))
        for name, stack in order:
            utterance = asyncio.run(_one(stack.gateway_ws, "Hello there, how are you today?"))
            if utterance.ttfa_ms is not None:
                samples[name].append(utterance.ttfa_ms)
    table: dict[str, Any] = {
        name: {"p50_ms": percentile(values, 50), "p95_ms": percentile(values, 95), "n": len(values)}
        for name, values in samples.items()
    }
    direct, redis = table["direct"]["p50_ms"], table["redis"]["p50_ms"]
    table["redis_adds_p50_ms"] = None if direct is None or redis is None else redis - direct
    return table


async def _one(gateway_ws: str, text: str) -> Utterance:
    return await speak_and_listen(await prepare(gateway_ws, text))


async def _fanout(stack: BusStack, subscribers: int) -> dict[str, Any]:
    done = await _one(stack.gateway_ws, LONG_LINE)
    url = f"{stack.output_ws}/ws/output/{done.task_id}"

    async def read() -> int:
        frames = 0
        internal = internal_headers(stack.settings)  # the output handler, dialed directly
        async with connect(url, max_size=None, compression=None, additional_headers=internal) as ws:
            async for message in ws:
                frames += isinstance(message, bytes)
        return frames

    started = time.perf_counter()
    counts = await asyncio.gather(*(read() for _ in range(subscribers)))
    wall = time.perf_counter() - started
    return {
        "subscribers": subscribers,
        "frames_per_task": counts[0],
        "frames": sum(counts),
        "wall_s": wall,
        "frames_per_s": sum(counts) / wall,
    }


def _level(stack: BusStack, lines: list[str], level: int) -> dict[str, Any]:
    texts = [lines[i % len(lines)] for i in range(level)]
    utterances = asyncio.run(_speak_together(stack.gateway_ws, texts))
    late = [u.underruns() for u in utterances]
    ttfa = [u.ttfa_ms for u in utterances if u.ttfa_ms is not None]
    return {
        "level": level,
        "late_frames": sum(count for count, _, _ in late),
        "streams_with_late_frames": sum(1 for count, _, _ in late if count),
        "ttfa_p50_ms": percentile(ttfa, 50),
    }


def bus_tables(result: dict[str, Any]) -> list[str]:
    """The scenario's Markdown tables (see bench/report.py)."""
    from .report import markdown_table

    def ms(value: float | None) -> str:
        return "n/a" if value is None else f"{value:.1f}"

    ttfa, fan, rt = result["ttfa"], result["fanout"], result["realtime"]
    rows = [
        [
            name,
            ms(ttfa[name]["p50_ms"]),
            ms(ttfa[name]["p95_ms"]),
            f"{fan[name]['frames_per_s']:.0f}",
        ]
        for name in ("direct", "redis")
    ]
    adds = ttfa["redis_adds_p50_ms"]
    subscribers = fan["direct"]["subscribers"]
    parts = [
        "### Bus: direct vs Redis Streams (sine voice)\n\n"
        + markdown_table(
            [
                "bus",
                "TTFA p50 ms",
                "TTFA p95 ms",
                f"fan-out frames/s ({subscribers} subs)",
            ],
            rows,
        )
        + f"\n\nRedis adds {ms(adds)} ms to the TTFA p50 (target: at most 3 ms).",
        "### Real-time streams on the Redis bus\n\n"
        + markdown_table(
            ["workers", "real-time streams"],
            [[workers, str(data["realtime_streams"])] for workers, data in rt.items()],
        ),
    ]
    return parts
