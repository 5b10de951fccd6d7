"""Scenario 1, the gateway hop: the echo backend reached directly, through our gateway, and
through nginx, in interleaved rounds (direct, gateway, nginx, direct, gateway, nginx, ...).

Each variant's round starts a fresh backend and a fresh proxy, so the memory figure is measured
on a process that has not yet held a thousand connections, and no variant inherits another's
warm caches. Within a round the order of the measurements is fixed: warm-up, idle memory,
1-connection round trips, 50-connection round trips, streaming.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from . import nginx
from .procs import BenchError, Proc, free_port, python_argv
from .stats import Samples

__all__ = ["HopParams", "run_gateway_hop"]

# The gateway twice: with its frame fast path, and on uvicorn's plain path (gateway.fast_path
# "off", what runs when the installed uvicorn/websockets are not the tested ones).
PLAIN = "gateway-plain"
VARIANTS = ("direct", "gateway", PLAIN, "nginx")
BARE = "bare"  # optional (--bare): the barest proxy on the gateway's own stack
ANCHORS = ("direct", PLAIN, "nginx", BARE)
ROUTE_PATH = "/ws/echo"


@dataclass(frozen=True)
class HopParams:
    rounds: int = 5
    text_bytes: int = 100
    rtt_seconds: float = 3.0
    conns: int = 50
    conns_seconds: float = 3.0
    stream_bytes: int = 4096
    stream_seconds: float = 3.0
    idle_conns: int = 1000
    warmup_seconds: float = 0.3
    # Let the proxy finish the per-connection work that follows the 101 before reading RSS.
    idle_settle_seconds: float = 0.5

    @classmethod
    def quick(cls) -> HopParams:
        return cls(rounds=3, rtt_seconds=0.5, conns_seconds=0.8, stream_seconds=0.8)

    @classmethod
    def smoke(cls) -> HopParams:
        """The smallest run that still goes through every step (the test suite's)."""
        return cls(
            rounds=1,
            rtt_seconds=0.05,
            conns=4,
            conns_seconds=0.05,
            stream_seconds=0.05,
            idle_conns=10,
            warmup_seconds=0.02,
            idle_settle_seconds=0.05,
        )


class LoadClient:
    """The bench's handle on the load-client process (JSON lines over its stdin/stdout)."""

    def __init__(self, work_dir: Path) -> None:
        self.proc = Proc("load-client", python_argv("-m", "bench.load_client"), work_dir)

    def start(self) -> LoadClient:
        self.proc.start(stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        return self

    def call(self, op: str, **args: Any) -> dict[str, Any]:
        popen = self.proc.popen
        assert popen is not None and popen.stdin is not None and popen.stdout is not None
        try:
            popen.stdin.write((json.dumps({"op": op, **args}) + "\n").encode())
            popen.stdin.flush()
        except BrokenPipeError as exc:
            raise BenchError(f"the load client died.\n{self.proc.log_tail()}") from exc
        line = popen.stdout.readline()
        if not line:
            raise BenchError(f"the load client died.\n{self.proc.log_tail()}")
        answer: dict[str, Any] = json.loads(line)
        if not answer.get("ok"):
            raise BenchError(f"load client {op}: {answer.get('error')}")
        return answer

    def stop(self) -> None:
        popen = self.proc.popen
        if popen is not None and popen.stdin is not None and popen.poll() is None:
            with contextlib.suppress(BrokenPipeError):
                popen.stdin.write(b'{"op": "quit"}\n')
                popen.stdin.flush()
        self.proc.stop()


def run_gateway_hop(
    params: HopParams,
    work_dir: Path,
    say: Callable[[str], None] = print,
    variants: tuple[str, ...] = VARIANTS,
) -> dict[str, Any]:
    """Run every round; the scenario's section of latest.json."""
    binary = nginx.find_nginx() if "nginx" in variants else None
    skipped = {}
    if "nginx" in variants and not binary:
        skipped["nginx"] = nginx.INSTALL_HINT
    variants = tuple(v for v in variants if v not in skipped)
    if skipped:
        say(f"gateway hop: {nginx.INSTALL_HINT}")
    samples = Samples()
    client = LoadClient(work_dir).start()
    try:
        for number in range(1, params.rounds + 1):
            say(f"gateway hop: round {number}/{params.rounds}: {' '.join(variants)}")
            for variant in variants:
                with _variant(variant, work_dir, params, binary, number) as (measured, url):
                    samples.add_all(variant, _measure(client, measured, url, params))
            _add_paired(samples, variants)
    finally:
        client.stop()
    return {
        "params": asdict(params),
        "variants": variants,
        "anchors": [a for a in ANCHORS if a in variants],
        "skipped": skipped,
        "measured_process": {
            "direct": "echo backend",
            "gateway": "gateway",
            PLAIN: "gateway (fast_path off)",
            "nginx": "nginx (master + worker)",
            BARE: "bare proxy (bench/bare_proxy.py)",
        },
        "medians": samples.medians(),
        "ratios": {
            v: {a: samples.paired_ratios(v, a) for a in ANCHORS if a in variants and a != v}
            for v in variants
        },
        "rounds": samples.rounds(),
        "nginx_version": nginx.nginx_version(binary) if binary else None,
    }


@contextlib.contextmanager
def _variant(
    variant: str, work_dir: Path, params: HopParams, binary: str | None, number: int
) -> Iterator[tuple[Proc, str]]:
    """Start the backend (and the proxy); yield the process to measure and the URL to load."""
    backend_port = free_port()
    backend = Proc(
        f"echo-{variant}-{number}",
        python_argv("-m", "bench.echo_backend", "--port", str(backend_port)),
        work_dir,
    )
    proxy: Proc | None = None
    try:
        backend.start().wait_port(backend_port)
        if variant == "direct":
            yield backend, f"ws://127.0.0.1:{backend_port}{ROUTE_PATH}"
            return
        port = free_port()
        if variant in ("gateway", PLAIN):
            fast_path = "auto" if variant == "gateway" else "off"
            proxy = _gateway_proc(work_dir, port, backend_port, f"{variant}-{number}", fast_path)
            proxy.start().wait_port(port, timeout_s=30.0)
        elif variant == BARE:
            backend_url = f"ws://127.0.0.1:{backend_port}"
            argv = ["-m", "bench.bare_proxy", "--port", str(port), "--backend", backend_url]
            proxy = Proc(f"bare-{number}", python_argv(*argv), work_dir)
            proxy.start().wait_port(port, timeout_s=30.0)
        else:
            assert binary is not None
            proxy = nginx.nginx_proc(
                binary, work_dir, port, backend_port, params.idle_conns, f"nginx-{number}"
            )
            proxy.start().wait_port(port)
        yield proxy, f"ws://127.0.0.1:{port}{ROUTE_PATH}"
    finally:
        if proxy is not None:
            proxy.stop()
        backend.stop()


def _gateway_proc(work_dir: Path, port: int, backend_port: int, name: str, fast_path: str) -> Proc:
    config = {
        "logging": {"level": "warning", "format": "json"},
        "gateway": {
            "host": "127.0.0.1",
            "port": port,
            "fast_path": fast_path,
            "routes": {
                "echo": {"path": ROUTE_PATH, "backends": [f"ws://127.0.0.1:{backend_port}"]}
            },
        },
        # Every phase connects from one address (50 conns, 1000 idle): the per-IP quota
        # (limits.max_connections, 32 by default) must never be what is measured.
        "limits": {"max_connections": 100_000},
    }
    path = work_dir / f"{name}.json"
    path.write_text(json.dumps(config, indent=2), encoding="utf-8")
    main_py = "services/gateway-python/main.py"
    argv = python_argv(main_py, "--config", str(path), "--log-level", "warning")
    return Proc(name, argv, work_dir)


def _measure(client: LoadClient, proc: Proc, url: str, p: HopParams) -> dict[str, float | None]:
    out: dict[str, float | None] = {}
    # Warm-up: imports, first-use allocations, the JIT-less but lazy paths of every process.
    client.call("open", url=url, conns=p.conns)
    client.call("rtt", seconds=p.warmup_seconds, size=p.text_bytes)
    client.call("close")

    before = proc.rss_bytes()
    client.call("open", url=url, conns=p.idle_conns)
    time.sleep(p.idle_settle_seconds)
    after = proc.rss_bytes()
    client.call("close")
    out["idle_kb_per_conn"] = (after - before) / p.idle_conns / 1024

    client.call("open", url=url, conns=1)
    with _cpu(proc, out, "1conn") as moved:
        one = client.call("rtt", seconds=p.rtt_seconds, size=p.text_bytes)
        moved.append(one["messages"])
    client.call("close")
    out["rtt1_p50_us"] = one["p50_us"]
    out["rtt1_p99_us"] = one["p99_us"]

    client.call("open", url=url, conns=p.conns)
    with _cpu(proc, out, "conns") as moved:
        many = client.call("rtt", seconds=p.conns_seconds, size=p.text_bytes)
        moved.append(many["messages"])
    client.call("close")
    out["conns_p50_us"] = many["p50_us"]
    out["conns_p99_us"] = many["p99_us"]
    out["conns_round_trips_per_s"] = many["round_trips_per_s"]

    client.call("open", url=url, conns=1)
    with _cpu(proc, out, "stream") as moved:
        stream = client.call("stream", seconds=p.stream_seconds, size=p.stream_bytes)
        moved.append(stream["messages"])
    client.call("close")
    out["stream_messages_per_s"] = stream["messages_per_s"]
    out["stream_mb_per_s"] = stream["mb_per_s"]
    return out


@contextlib.contextmanager
def _cpu(proc: Proc, out: dict[str, float | None], phase: str) -> Iterator[list[int]]:
    """CPU time of ``proc`` per message moved during the block (the block appends the count):
    ``cpu_us_per_msg_<phase>`` and its kernel part ``cpu_sys_us_per_msg_<phase>``."""
    moved: list[int] = []
    exact = proc.cpu_exact_seconds()
    _, system = proc.cpu_seconds()
    yield moved
    exact_after = proc.cpu_exact_seconds()
    _, system_after = proc.cpu_seconds()
    messages = max(sum(moved), 1)
    out[f"cpu_us_per_msg_{phase}"] = (exact_after - exact) * 1e6 / messages
    # In clock ticks (10 ms): coarse, but it tells kernel time from the proxy's own.
    out[f"cpu_sys_us_per_msg_{phase}"] = (system_after - system) * 1e6 / messages


def _add_paired(samples: Samples, variants: tuple[str, ...]) -> None:
    """What each proxy adds to direct's 1-connection p50, within the round just measured."""
    rounds = samples.rounds()
    direct = rounds.get("direct", {}).get("rtt1_p50_us", [None])[-1]
    for variant in variants:
        if variant == "direct":
            continue
        mine = rounds.get(variant, {}).get("rtt1_p50_us", [None])[-1]
        added = None if mine is None or direct is None else mine - direct
        samples.add(variant, "rtt1_added_p50_us", added)
