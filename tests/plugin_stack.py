"""The stack the framework plugins are tested against: gateway (optionally with a tenant key),
input and output handlers and one worker with the real ``heart`` voice and a ``sine`` voice
that holds any piece containing HOLD (a task stays mid-stream for cancel tests), each a real
server on an ephemeral port; a TCP relay in front of the gateway can cut every connection
through it (a dropped network, not a polite close)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from aivtuber_common.config import (
    AuthSettings,
    GatewaySettings,
    HibariVoice,
    InputHandlerSettings,
    OutputHandlerSettings,
    RouteSettings,
    Settings,
    SineVoice,
    TenantSettings,
    TtsWorkerSettings,
)
from aivtuber_gateway import create_app as gateway_app
from aivtuber_input import create_app as input_app
from aivtuber_output import create_app as output_app
from aivtuber_tts import create_app as worker_app
from tests.support import RunningServer, run_server
from tests.test_end_to_end import HOLD, Gate, held_factory, wait_ready

__all__ = ["HOLD", "KEY", "SINE_RATE", "PluginStack", "Relay", "plugin_stack"]

KEY = "plugin-tests-key-0123456789"
SINE_RATE = 16000
HEART_RATE = 24000


class Relay:
    """Forwards TCP connections to ``target_port``; :meth:`cut` aborts every one of them."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.url = ""
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._pumps: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        port = self._server.sockets[0].getsockname()[1]
        self.url = f"ws://127.0.0.1:{port}"

    def cut(self) -> None:
        """Drop every connection at once, without a close frame or a FIN (an RST)."""
        for writer in list(self._writers):
            writer.transport.abort()

    async def stop(self) -> None:
        self.cut()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        for pump in list(self._pumps):
            pump.cancel()
        await asyncio.gather(*self._pumps, return_exceptions=True)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            writer.transport.abort()
            return
        self._writers |= {writer, up_writer}
        for source, sink in ((reader, up_writer), (up_reader, writer)):
            pump = asyncio.create_task(self._pump(source, sink))
            self._pumps.add(pump)
            pump.add_done_callback(self._pumps.discard)

    async def _pump(self, source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
        try:
            while data := await source.read(65536):
                sink.write(data)
                await sink.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            sink.transport.abort()
            self._writers.discard(sink)


@dataclass
class PluginStack:
    gateway: RunningServer
    output: RunningServer
    relay: Relay
    gate: Gate
    tasks_seen: list[str] = field(default_factory=list)

    @property
    def url(self) -> str:
        """The gateway through the relay (cut it with ``relay.cut()``)."""
        return self.relay.url

    @property
    def direct_url(self) -> str:
        return self.gateway.ws_url


@contextlib.asynccontextmanager
async def plugin_stack(*, keyed: bool = False) -> AsyncIterator[PluginStack]:
    """The whole stack; ``keyed``: one tenant whose key is KEY, anonymous clients refused."""
    auth = AuthSettings(tenants={"studio": TenantSettings(key=KEY)}) if keyed else AuthSettings()
    async with contextlib.AsyncExitStack() as outer:
        output = await outer.enter_async_context(
            run_server(output_app(Settings(output_handler=OutputHandlerSettings(task_wait_s=3))))
        )
        gate = Gate()
        voices = {
            "heart": HibariVoice(),
            "sine": SineVoice(sample_rate=SINE_RATE, ms_per_char=20.0),
        }
        config = TtsWorkerSettings(
            output_handler_url=output.ws_url, voices=voices, default_voice="heart"
        )
        worker = await outer.enter_async_context(
            run_server(worker_app(Settings(tts_worker=config), engine_factory=held_factory(gate)))
        )
        outer.callback(gate.release)  # first: never leave an engine thread waiting
        await wait_ready(worker)
        handler = await outer.enter_async_context(
            run_server(
                input_app(
                    Settings(
                        auth=auth, input_handler=InputHandlerSettings(workers=[worker.http_url])
                    )
                )
            )
        )
        routes = {
            "input": RouteSettings(path="/ws/input", backends=[handler.ws_url]),
            "output": RouteSettings(path="/ws/output/{task_id}", backends=[output.ws_url]),
        }
        gateway = await outer.enter_async_context(
            run_server(gateway_app(Settings(auth=auth, gateway=GatewaySettings(routes=routes))))
        )
        relay = Relay(gateway.port)
        await relay.start()
        outer.push_async_callback(relay.stop)
        yield PluginStack(gateway, output, relay, gate)
