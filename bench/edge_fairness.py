"""Edge scenario, fair sharing: tenant B's time to first audio while tenant A floods the
worker, next to B alone, in one run.

One stack (:class:`bench.stack.Stack`, the chosen voice, the shipped limits) with two
tenants: ``alpha`` may keep as many tasks as the worker lets one tenant hold (its share of
the queue, ``tts_worker.tenant_share``), ``beta`` has the default limits. The frontends talk
to the input and output handlers directly, with the identity headers the gateway would add
and the stack's internal token: this measures how the worker shares itself, not the
gateway's authentication (the edge scenario measures that on its own).

Each round, interleaved so the machine's drift hits both sides alike, beta speaks the same
line twice (a line's first clause sets most of its time to first audio: 5 to 49 characters
in the bench texts), alone first in even rounds and flooded first in odd ones:

- *alone*: beta speaks the line on an idle worker;
- *flood*: alpha fills its share of the worker with long lines and keeps it full (it
  speaks again as soon as one of its tasks ends); once the worker has refused alpha for
  being full, beta speaks the line; then alpha cancels everything it has, and the round
  waits until the engine is idle (a piece already in a thread runs to its end), so an
  *alone* line has the worker to itself.

(Before, the two sides spoke different lines, and the flooded ones had the longer first
clauses: a median 37 characters against 20, which alone made the ratio about 1.5x.)

Time to first audio: ``speak`` sent -> the first *audible* sample received on
``/ws/output/{task_id}`` (both sockets open before the clock starts). Target: flood / alone
at most 2.

``python -m bench.edge_fairness [--voice sine|joe] [--rounds N]`` runs it alone and prints
the result as JSON; :func:`run_edge_fairness` is what the ``edge`` scenario calls.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from websockets.asyncio.client import ClientConnection, connect

from aivtuber_common.identity import CLIENT_HEADER, TENANT_HEADER

from .procs import BenchError
from .speech_path import read_lines
from .stack import Stack, internal_headers
from .stats import median

__all__ = ["FairnessParams", "render", "run_edge_fairness"]

FLOODER, LISTENER = "alpha", "beta"
TARGET_RATIO = 2.0
AUDIBLE = 64  # |sample| above this (about -54 dBFS) is sound, not silence
OPEN_TIMEOUT_S = 20.0
LINE_TIMEOUT_S = 120.0
FULL_TIMEOUT_S = 60.0


@dataclass(frozen=True)
class FairnessParams:
    rounds: int = 8
    voice: str = "joe"
    flood_lines: int = 6  # bench lines joined into each of the flooder's utterances
    spare_slot: bool = True  # tts_worker.spare_slot (off: for comparison)
    preempt: bool = True  # tts_worker.preempt (off: for comparison)

    @classmethod
    def quick(cls) -> FairnessParams:
        return cls(rounds=4)

    @classmethod
    def smoke(cls) -> FairnessParams:
        return cls(rounds=1, voice="sine", flood_lines=2)


@dataclass
class _Flood:
    """The flooder's state: its task ids, and whether the worker has refused it as full."""

    task_ids: list[str] = field(default_factory=list)
    full: asyncio.Event = field(default_factory=asyncio.Event)
    refused_full: int = 0
    rate_limited: int = 0


def _customize(data: dict[str, Any]) -> None:
    """The shipped limits (the speech stack lifts them), and the two tenants."""
    data.pop("limits", None)
    data.get("tts_worker", {}).pop("tenant_share", None)
    unlimited = {"speaks_per_minute": 1_000_000, "chars_per_minute": 10**9}
    data.setdefault("auth", {})["tenants"] = {
        # alpha's limit is the worker's share of its queue, so it can keep the share full.
        FLOODER: {
            "key": "bench-alpha-key-0001",
            "limits": {**unlimited, "max_active_tasks": 10_000},
        },
        LISTENER: {"key": "bench-beta-key-00001"},
    }


def _headers(tenant: str, internal: dict[str, str]) -> dict[str, str]:
    """What the gateway would send for ``tenant`` (the back ends are dialed directly)."""
    return {TENANT_HEADER: tenant, CLIENT_HEADER: "127.0.0.1", **internal}


async def _connect(url: str, tenant: str, internal: dict[str, str]) -> ClientConnection:
    try:
        return await connect(
            url,
            additional_headers=_headers(tenant, internal),
            compression=None,
            max_size=None,
            ping_interval=None,
            open_timeout=OPEN_TIMEOUT_S,
        )
    except (OSError, TimeoutError) as exc:
        raise BenchError(f"cannot open {url}: {exc}") from exc


async def _json(ws: ClientConnection) -> dict[str, Any]:
    message = await ws.recv()
    if not isinstance(message, str):
        raise BenchError(f"expected JSON, got {len(message)} binary bytes")
    data: dict[str, Any] = json.loads(message)
    return data


async def speak_timed(
    input_url: str, output_url: str, text: str, internal: dict[str, str]
) -> float:
    """Beta speaks ``text``; ms from speak sent to the first audible sample."""
    async with contextlib.AsyncExitStack() as stack:
        speaker = await _connect(f"{input_url}/ws/input", LISTENER, internal)
        stack.push_async_callback(speaker.close)
        hello = await _json(speaker)
        task_id = hello.get("task_id")
        if hello.get("action") != "task_id_assigned" or not task_id:
            raise BenchError(f"expected task_id_assigned, got {hello}")
        listener = await _connect(f"{output_url}/ws/output/{task_id}", LISTENER, internal)
        stack.push_async_callback(listener.close)
        async with asyncio.timeout(LINE_TIMEOUT_S):
            sent = time.perf_counter()
            await speaker.send(json.dumps({"type": "speak", "text": text}))
            answer = await _json(speaker)
            if answer.get("type") == "error":
                raise BenchError(f"{LISTENER}'s speak was refused: {answer}")
            async for message in listener:
                if isinstance(message, bytes):
                    samples = np.frombuffer(message, dtype="<i2")
                    if samples.size and int(np.abs(samples.astype(np.int32)).max()) > AUDIBLE:
                        return (time.perf_counter() - sent) * 1000
                    continue
                event = json.loads(message)
                if event.get("type") in ("audio_complete", "error"):
                    raise BenchError(f"{LISTENER}'s line ended without an audible sample: {event}")
        raise BenchError(f"{LISTENER}'s output closed before any audio")


async def flood(
    input_url: str, text: str, state: _Flood, stop: asyncio.Event, internal: dict[str, str]
) -> None:
    """Alpha keeps the worker's share of it full until ``stop``; then cancels it all."""
    ws = await _connect(f"{input_url}/ws/input", FLOODER, internal)
    try:
        await _json(ws)  # task_id_assigned
        while not stop.is_set():
            await ws.send(json.dumps({"type": "speak", "text": text}))
            reply = await _json(ws)
            if reply.get("action") == "upload_processed":
                state.task_ids.append(reply["task_id"])
                continue
            if reply.get("code") == "rate_limited":
                state.rate_limited += 1
                pause = min(reply.get("retry_after_ms", 100), 250) / 1000
            elif reply.get("code") == "tts_unavailable":  # the worker: alpha's share is full
                state.refused_full += 1
                state.full.set()
                pause = 0.1
            else:
                raise BenchError(f"{FLOODER}'s speak got {reply}")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), pause)
        for task_id in state.task_ids:
            await ws.send(json.dumps({"type": "cancel", "task_id": task_id}))
            await _json(ws)  # cancelled, or task_not_running when it had finished
    finally:
        await ws.close()


@contextlib.asynccontextmanager
async def flooding(input_url: str, text: str, internal: dict[str, str]) -> AsyncIterator[_Flood]:
    state, stop = _Flood(), asyncio.Event()
    runner = asyncio.create_task(flood(input_url, text, state, stop, internal))
    try:
        waiting = asyncio.create_task(state.full.wait())
        await asyncio.wait(
            {runner, waiting}, timeout=FULL_TIMEOUT_S, return_when=asyncio.FIRST_COMPLETED
        )
        waiting.cancel()
        if runner.done():
            runner.result()  # its error
            raise BenchError(f"{FLOODER}'s flood stopped before the worker was full")
        if not state.full.is_set():
            raise BenchError(f"the worker never refused {FLOODER} in {FULL_TIMEOUT_S:.0f} s")
        yield state
    finally:
        stop.set()
        await runner


async def wait_engine_idle(worker_url: str) -> None:
    """Until no engine slot is busy and no piece waits (the worker's gauges)."""
    gauges = ("aivtuber_tts_engine_slots_busy ", "aivtuber_tts_pieces_waiting ")
    async with httpx.AsyncClient(timeout=5.0) as http, asyncio.timeout(LINE_TIMEOUT_S):
        while True:
            text = (await http.get(f"{worker_url}/metrics")).text
            values = [line.split()[-1] for line in text.splitlines() if line.startswith(gauges)]
            if values and all(float(value) == 0 for value in values):
                return
            await asyncio.sleep(0.02)


async def preemptions(worker_url: str) -> int:
    """Pieces the worker has pre-empted so far (its counter)."""
    async with httpx.AsyncClient(timeout=5.0) as http:
        text = (await http.get(f"{worker_url}/metrics")).text
    name = "aivtuber_tts_pieces_preempted_total "
    return sum(int(float(line.split()[-1])) for line in text.splitlines() if line.startswith(name))


async def _measure(
    stack: Stack, params: FairnessParams, say: Callable[[str], None]
) -> dict[str, Any]:
    lines = read_lines()
    flood_text = " ".join(lines[: params.flood_lines])
    input_url = f"ws://127.0.0.1:{stack.ports.input_handler}"
    output_url = f"ws://127.0.0.1:{stack.ports.output_handler}"
    worker_url = f"http://127.0.0.1:{stack.ports.tts_worker}"
    internal = internal_headers(stack.settings)
    await speak_timed(input_url, output_url, lines[0], internal)  # warm the path once, not measured
    alone: list[float] = []
    flooded: list[float] = []
    held: list[int] = []  # tasks the flooder had submitted when the listener spoke
    refused: list[int] = []  # times the worker had refused the flooder as full by then
    preempted: list[int] = []  # pieces the worker stopped for the listener's (tts_worker.preempt)
    for round_no in range(params.rounds):
        line = lines[(round_no + 1) % len(lines)]
        for side in ("alone", "flood") if round_no % 2 == 0 else ("flood", "alone"):
            await wait_engine_idle(worker_url)
            if side == "alone":
                alone.append(await speak_timed(input_url, output_url, line, internal))
                continue
            before = await preemptions(worker_url)
            async with flooding(input_url, flood_text, internal) as state:
                held.append(len(state.task_ids))
                refused.append(state.refused_full)
                flooded.append(await speak_timed(input_url, output_url, line, internal))
            preempted.append(await preemptions(worker_url) - before)
        say(
            f"edge fairness round {round_no + 1}/{params.rounds}: {LISTENER} alone "
            f"{alone[-1]:.0f} ms, while {FLOODER} keeps its share full ({held[-1]} tasks sent) "
            f"{flooded[-1]:.0f} ms ({preempted[-1]} pieces pre-empted)"
        )
    alone_ms, flood_ms = median(alone), median(flooded)
    assert alone_ms is not None and flood_ms is not None  # rounds >= 1, every line measured
    ratio = flood_ms / alone_ms
    return {
        "alone_ttfa_ms": alone_ms,
        "flood_ttfa_ms": flood_ms,
        "ratio": ratio,
        "target_ratio": TARGET_RATIO,
        "meets_target": ratio <= TARGET_RATIO,
        "flooder_tasks_submitted": held,
        "flooder_refused_full": refused,
        "preempted_each": preempted,
        "alone_ttfa_ms_each": alone,
        "flood_ttfa_ms_each": flooded,
        "flood_chars_per_task": len(flood_text),
    }


def run_edge_fairness(
    params: FairnessParams, work_dir: Path, say: Callable[[str], None] = lambda _: None
) -> dict[str, Any]:
    """Start a stack, measure, stop it; the results as a JSON-ready dict."""
    say(f"edge fairness: starting the stack ({params.voice})")

    def customize(data: dict[str, Any]) -> None:
        _customize(data)
        data.setdefault("tts_worker", {})["spare_slot"] = params.spare_slot
        data["tts_worker"]["preempt"] = params.preempt

    with Stack(work_dir, params.voice, customize=customize) as stack:
        worker = stack.settings.tts_worker
        result = asyncio.run(_measure(stack, params, say))
    share = -(-(worker.max_concurrent + worker.max_queued) * worker.tenant_share // 1)
    return {"params": asdict(params), "flooder_share": int(share), **result}


def render(result: dict[str, Any]) -> str:
    """The result as a Markdown table, for the edge scenario's report."""
    verdict = "meets" if result["meets_target"] else "misses"
    return (
        f"Fair sharing ({result['params']['voice']}, {len(result['alone_ttfa_ms_each'])} rounds): "
        f"{LISTENER}'s time to first audible sample, medians\n\n"
        f"| {LISTENER} alone | while {FLOODER} holds its share ({result['flooder_share']} tasks) "
        "| ratio |\n|---|---|---|\n"
        f"| {result['alone_ttfa_ms']:.0f} ms | {result['flood_ttfa_ms']:.0f} ms "
        f"| {result['ratio']:.2f}x ({verdict} the {result['target_ratio']:.0f}x target) |\n"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.edge_fairness", description=__doc__)
    parser.add_argument("--voice", default="joe")
    parser.add_argument("--rounds", type=int, default=FairnessParams.quick().rounds)
    parser.add_argument("--no-spare", action="store_true", help="tts_worker.spare_slot off")
    parser.add_argument("--no-preempt", action="store_true", help="tts_worker.preempt off")
    args = parser.parse_args(argv)
    params = FairnessParams(
        rounds=args.rounds,
        voice=args.voice,
        spare_slot=not args.no_spare,
        preempt=not args.no_preempt,
    )
    with tempfile.TemporaryDirectory(prefix="aivtuber-edge-") as work_dir:
        try:
            result = run_edge_fairness(
                params, Path(work_dir), say=lambda m: print(m, file=sys.stderr, flush=True)
            )
        except BenchError as exc:
            print(f"bench: error: {exc}", file=sys.stderr)
            return 1
    print(json.dumps(result, indent=2))
    print(render(result), file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
