"""A TTS worker process that stops answering (SIGSTOP): its tasks, running and queued, end
with ``timeout`` for their subscribers instead of leaving them waiting forever.

The worker is a real process whose voice streams from a remote TTS server played by this
test (see :mod:`tests.test_worker_crash`), held open so the first task is mid-stream and
the second queued behind it when the worker is stopped. The output handler pings its
WebSocket peers as it does when run from the command line.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path

import httpx

from aivtuber_common.config import OutputHandlerSettings, Settings
from aivtuber_common.internal import TASKS_PATH, SubmitTask
from aivtuber_common.protocol import new_task_id
from aivtuber_common.token_file import with_internal_token
from aivtuber_output import create_app as output_app
from aivtuber_output.keepalive import uvicorn_overrides
from tests.frontend import Heard, listen
from tests.support import free_port, run_server
from tests.test_worker_crash import HoldingTts, wait_healthy, worker_process

TASK_TIMEOUT_S = 3.0
HANG_GUARD_S = 60.0  # the test never waits longer than this, whatever happens


async def test_tasks_of_a_stopped_worker_fail_with_timeout(tmp_path: Path) -> None:
    tts = HoldingTts()
    settings = Settings(output_handler=OutputHandlerSettings(task_timeout_s=TASK_TIMEOUT_S))
    # The worker process reads the machine's token file: its task endpoints want it.
    internal = {"Authorization": f"Bearer {with_internal_token(Settings()).internal_token}"}
    port = free_port()
    worker_url = f"http://127.0.0.1:{port}"
    async with run_server(tts.app) as remote:
        output = run_server(output_app(settings), **uvicorn_overrides(settings))
        async with output as handler, httpx.AsyncClient() as http:
            try:
                async with worker_process(tmp_path, port, handler, remote) as (process, _):
                    await wait_healthy(worker_url)
                    ids = [new_task_id(), new_task_id()]
                    for task_id in ids:  # the first runs (and holds), the second may queue
                        task = SubmitTask(task_id=task_id, text="This line HOLDs forever.")
                        response = await http.post(
                            worker_url + TASKS_PATH, json=task.model_dump(), headers=internal
                        )
                        assert response.status_code == 202, response.text
                    heard = [Heard(), Heard()]
                    listening = [
                        asyncio.create_task(listen(handler.ws_url, task_id, into))
                        for task_id, into in zip(ids, heard, strict=True)
                    ]
                    await asyncio.wait_for(heard[0].first_frame.wait(), HANG_GUARD_S)
                    os.kill(process.pid, signal.SIGSTOP)
                    stopped = time.monotonic()
                    try:
                        await asyncio.wait_for(asyncio.gather(*listening), HANG_GUARD_S)
                    finally:
                        elapsed = time.monotonic() - stopped
                        os.kill(process.pid, signal.SIGCONT)
            finally:
                tts.release.set()
    print(f"both subscribers got their error {elapsed:.1f} s after SIGSTOP")
    for one in heard:
        assert one.end is not None and one.end["type"] == "error", one.end
        assert one.end["code"] == "timeout", one.end
        assert "stopped answering" in one.end["error"]
