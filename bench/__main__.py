"""``./bench [--quick] [--scenario gateway|speech|edge|voices|openai|browser|plugins|all]``:
measure, print tables, write JSON.

Progress goes to stderr, the Markdown tables to stdout, everything measured (medians, each
round's values, per-line timings, the machine) to ``bench/results/latest.json``.
Exit codes: 0 done, 1 a scenario could not run (the message says why), 2 bad arguments.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import shlex
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import structlog

from . import BENCH_VERSION, nginx, report
from .browser_path import BrowserParams, run_browser_path
from .bus import BusParams, run_bus
from .chromium import find_chromium
from .edge_auth import EdgeAuthParams, run_edge_auth
from .edge_fairness import FairnessParams, run_edge_fairness
from .edge_limits import LimitsParams, run_edge_limits
from .edge_memory import EdgeMemoryParams, run_edge_memory
from .edge_refused import RefusedParams, run_edge_refused
from .gateway_hop import BARE, VARIANTS, HopParams, run_gateway_hop
from .machine import machine_info
from .openai_api import OpenAIParams, run_openai_api
from .plugins import FrameworkParams, run_frameworks
from .plugins_formats import FormatsParams, run_plugins_formats
from .procs import REPO_ROOT, BenchError, raise_nofile_limit
from .speech_path import SpeechParams, run_speech_path
from .stream import StreamParams, run_stream
from .voices import VoicesParams, run_voices

DEFAULT_OUTPUT = REPO_ROOT / "bench" / "results" / "latest.json"


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="./benchmark",
        description="Benchmark the gateway hop (direct / gateway / nginx) and the speech path "
        "(whole stack / engine alone), interleaved rounds, medians and ratios.",
    )
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="under two minutes, fewer samples")
    size.add_argument(
        "--smoke",
        action="store_true",
        help="the smallest run through every step, seconds (the test suite's); "
        "its numbers mean nothing",
    )
    parser.add_argument(
        "--scenario",
        choices=[
            *("gateway", "speech", "edge", "voices", "openai", "browser", "bus", "stream"),
            "plugins",
            "all",
        ],
        default="all",
        help="what to run (edge: the cost of authentication, fairness, memory under attack; "
        "openai: /v1/audio/speech next to the WebSocket path; all: browser only when a "
        "Chromium is found; bus: direct vs Redis Streams, needs redis-server, not in all; "
        "stream: an LLM's reply streamed in vs spoken whole or by sentence, not in all; "
        "plugins: the LiveKit and Pipecat plugins next to the raw streaming protocol, not in all)",
    )
    parser.add_argument("--rounds", type=int, help="override the number of rounds (>= 1)")
    parser.add_argument(
        "--voice",
        help="speech path voice (default: joe, the Piper voice; sine in --smoke); "
        "voices scenario: only this one of heart, joe, jf_alpha",
    )
    parser.add_argument(
        "--output",
        type=Path,
        default=DEFAULT_OUTPUT,
        help=f"JSON results (default: {DEFAULT_OUTPUT.relative_to(REPO_ROOT)})",
    )
    parser.add_argument(
        "--bare",
        action="store_true",
        help="add a gateway-hop column for the barest proxy on the gateway's own stack "
        "(what the gateway's monitoring, logging and limits cost)",
    )
    parser.add_argument(
        "--keep-logs", action="store_true", help="keep the services' logs and configs"
    )
    args = parser.parse_args(argv)
    if args.rounds is not None and args.rounds < 1:
        parser.error("--rounds must be at least 1")
    return args


def build_params(args: argparse.Namespace) -> tuple[str, HopParams, SpeechParams]:
    if args.smoke:
        mode, hop, speech = "smoke", HopParams.smoke(), SpeechParams.smoke()
    elif args.quick:
        mode, hop, speech = "quick", HopParams.quick(), SpeechParams.quick()
    else:
        mode, hop, speech = "full", HopParams(), SpeechParams()
    if args.rounds:
        hop = dataclasses.replace(hop, rounds=args.rounds)
        speech = dataclasses.replace(speech, rounds=args.rounds)
    if args.voice:
        speech = dataclasses.replace(speech, voice=args.voice)
    return mode, hop, speech


def edge_auth_params(args: argparse.Namespace) -> EdgeAuthParams:
    params = (
        EdgeAuthParams.smoke()
        if args.smoke
        else EdgeAuthParams.quick()
        if args.quick
        else EdgeAuthParams()
    )
    return dataclasses.replace(params, rounds=args.rounds) if args.rounds else params


def browser_params(args: argparse.Namespace) -> BrowserParams:
    if args.smoke:
        params = BrowserParams.smoke()
    elif args.quick:
        params = BrowserParams.quick()
    else:
        params = BrowserParams()
    if args.rounds:
        params = dataclasses.replace(params, rounds=args.rounds)
    if args.voice:
        params = dataclasses.replace(params, voice=args.voice)
    return params


def run(args: argparse.Namespace, work_dir: Path) -> dict[str, Any]:
    mode, hop_params, speech_params = build_params(args)
    started = time.perf_counter()
    binary = nginx.find_nginx()
    results: dict[str, Any] = {
        "bench_version": BENCH_VERSION,
        "mode": mode,
        "command": " ".join(["./benchmark", *map(shlex.quote, sys.argv[1:])]),
        "machine": machine_info(nginx.nginx_version(binary) if binary else None),
        "scenarios": {},
    }
    if args.scenario in ("gateway", "all"):
        variants = (*VARIANTS, BARE) if args.bare else VARIANTS
        results["scenarios"]["gateway"] = run_gateway_hop(
            hop_params, work_dir, say=_say, variants=variants
        )
    if args.scenario in ("speech", "all"):
        results["scenarios"]["speech"] = run_speech_path(speech_params, work_dir, say=_say)
    if args.scenario in ("edge", "all"):
        # Parts: auth (bench/edge_auth.py), fairness (edge_fairness.py), memory under
        # attack (edge_memory.py), keyless clients (edge_refused.py), limits on Redis
        # with 1 and 2 input handlers (edge_limits.py), each with its own stack.
        edge = results["scenarios"]["edge"] = {}
        edge["auth"] = run_edge_auth(edge_auth_params(args), work_dir, say=_say)
        fairness = {"quick": FairnessParams.quick(), "smoke": FairnessParams.smoke()}
        edge["fairness"] = run_edge_fairness(
            fairness.get(mode, FairnessParams()), work_dir, say=_say
        )
        memory = EdgeMemoryParams.smoke() if mode == "smoke" else EdgeMemoryParams()
        _say("edge memory: the fragment and header attacks")
        edge["memory"] = run_edge_memory(work_dir, memory)
        _say("edge refused: keyless clients sending 16 MiB each")
        refused = RefusedParams.smoke() if mode == "smoke" else RefusedParams()
        edge["refused"] = run_edge_refused(work_dir, refused)
        _say("edge limits: one tenant's limits with 1 and 2 input handlers on Redis")
        # Three more processes per handler count: left out of the smoke run (its own test,
        # tests/test_bench_edge_limits.py, runs it).
        edge["limits"] = (
            {"skipped": "not in a smoke run"}
            if mode == "smoke"
            else run_edge_limits(work_dir, LimitsParams())
        )
    if args.scenario in ("voices", "all") and mode != "smoke":
        voices_params = VoicesParams.quick() if mode == "quick" else VoicesParams()
        if args.rounds:
            voices_params = dataclasses.replace(voices_params, rounds=args.rounds)
        if args.voice:
            voices_params = dataclasses.replace(voices_params, voices=(args.voice,))
        results["scenarios"]["voices"] = run_voices(voices_params, work_dir, say=_say)
    if args.scenario in ("openai", "all"):
        results["scenarios"]["openai"] = run_openai_api(
            _openai_params(mode, args, speech_params.voice), work_dir, say=_say
        )
    if args.scenario == "browser" or (args.scenario == "all" and find_chromium()):
        results["scenarios"]["browser"] = run_browser_path(browser_params(args), work_dir, say=_say)
    elif args.scenario == "all":
        _say("browser scenario skipped: no Chromium found (apt-get install -y chromium)")
    if args.scenario == "plugins":
        # Parts, each under its own key: frameworks (bench/plugins.py), and the VOICEVOX
        # API and Opus rows (bench/plugins_formats.py); not in all.
        plugins = results["scenarios"]["plugins"] = {}
        plugins["frameworks"] = run_frameworks(_framework_params(mode, args), work_dir, say=_say)
        formats = {"quick": FormatsParams.quick(), "smoke": FormatsParams.smoke()}
        formats_params = formats.get(mode, FormatsParams())
        if args.rounds:
            formats_params = dataclasses.replace(formats_params, rounds=args.rounds)
        plugins["formats"] = run_plugins_formats(formats_params, work_dir, say=_say)
    if args.scenario == "bus":
        bus_params = {"quick": BusParams.quick(), "smoke": BusParams.smoke()}.get(mode, BusParams())
        if args.voice:
            bus_params = dataclasses.replace(bus_params, voice=args.voice)
        results["scenarios"]["bus"] = run_bus(bus_params, work_dir, say=_say)
    if args.scenario == "stream":
        stream = {"quick": StreamParams.quick(), "smoke": StreamParams.smoke()}
        stream_params = stream.get(mode, StreamParams())
        if args.voice:
            stream_params = dataclasses.replace(stream_params, voices=(args.voice,))
        results["scenarios"]["stream"] = run_stream(stream_params, work_dir, say=_say)
    results["elapsed_s"] = round(time.perf_counter() - started, 1)
    return results


def _framework_params(mode: str, args: argparse.Namespace) -> FrameworkParams:
    params = {"smoke": FrameworkParams.smoke, "quick": FrameworkParams.quick}.get(
        mode, FrameworkParams
    )()
    if args.rounds:
        params = dataclasses.replace(params, rounds=args.rounds)
    return params


def _openai_params(mode: str, args: argparse.Namespace, voice: str) -> OpenAIParams:
    params = {"smoke": OpenAIParams.smoke, "quick": OpenAIParams.quick}.get(mode, OpenAIParams)()
    if args.rounds:
        params = dataclasses.replace(params, rounds=args.rounds)
    return dataclasses.replace(params, voice=voice)


def write_results(results: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    tmp.replace(path)


def quiet_logging() -> None:
    """The engine loaded in this process logs through structlog: warnings only, to stderr,
    so stdout stays the tables."""
    structlog.configure(
        wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    quiet_logging()
    raise_nofile_limit()  # the children inherit it: 1000 proxied connections are 2000 sockets
    work_dir = Path(tempfile.mkdtemp(prefix="aivtuber-bench-"))
    keep = args.keep_logs
    try:
        results = run(args, work_dir)
    except BenchError as exc:
        keep = True
        print(f"bench: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("bench: interrupted", file=sys.stderr)
        return 130
    finally:
        if keep:
            _say(f"the services' logs and generated configs are in {work_dir}")
        else:
            shutil.rmtree(work_dir, ignore_errors=True)
    write_results(results, args.output)
    sys.stdout.write(report.render(results))
    _say(f"done in {results['elapsed_s']:.0f} s; results in {_shown(args.output)}")
    return 0


def _say(message: str) -> None:
    print(f"bench: {message}", file=sys.stderr, flush=True)


def _shown(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(REPO_ROOT))
    except ValueError:
        return str(path)


if __name__ == "__main__":
    raise SystemExit(main())
