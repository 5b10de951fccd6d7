"""A Low of issue 15: a subscriber dropped by the output handler's keepalive.

A frozen peer (a SIGSTOPped gateway, a machine gone without a FIN) stops reading and stops
answering pings; uvicorn's keepalive then closes the connection without telling the
application. Each later send raised a RuntimeError (a traceback per subscriber), or, with the
socket's buffers full, waited for room forever: the subscription never ended while the peer's
TCP connection stayed up.
"""

from __future__ import annotations

import logging
import uuid

import pytest
from websockets.asyncio.client import connect

from aivtuber_output.app import create_app
from aivtuber_output.keepalive import uvicorn_overrides
from tests.support import run_server, wait_until
from tests.test_output_handler import _no_subscribers, frame, make_settings, worker


async def test_a_frozen_subscriber_is_let_go_quietly_while_its_connection_lingers(
    caplog: pytest.LogCaptureFixture,
) -> None:
    task_id = str(uuid.uuid4())
    frames = [frame(i, samples=8000) for i in range(400)]  # 6.4 MB: more than socket buffers
    settings = make_settings(task_timeout_s=1.5)  # pings every 0.5 s, given up after 0.5 s
    caplog.set_level(logging.ERROR)
    async with (
        run_server(create_app(settings), **uvicorn_overrides(settings)) as server,
        worker(server) as tts,
    ):
        await tts.open(task_id)
        url = f"{server.ws_url}/ws/output/{task_id}"
        async with connect(url, max_queue=1, close_timeout=0.2, ping_interval=None) as frozen:
            await frozen.recv()  # audio_start
            frozen.transport.pause_reading()  # neither reads nor answers a ping from now on
            await tts.frames(task_id, frames)
            await tts.end(task_id)
            # Let go while the frozen peer's connection is still open.
            await wait_until(lambda: _no_subscribers(server))
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []
