"""The input handler: its sans-I/O session, and over real sockets against fake workers."""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from aivtuber_common.config import InputHandlerSettings, Settings
from aivtuber_common.health import WorkerHealth
from aivtuber_common.internal import SubmitTask
from aivtuber_common.protocol import ErrorMessage, TaskIdAssigned, UploadProcessed
from aivtuber_input import create_app
from aivtuber_input.session import CancelTask, Close, InputSession, Reply, Submit
from aivtuber_input.workers import HttpTaskSubmitter
from tests.support import RunningServer, eventually, free_port, run_server
from tests.tts_fakes import worker_health

# --- the session without sockets ---------------------------------------------------------


def session(**overrides: Any) -> InputSession:
    options: dict[str, Any] = {"max_text_chars": 50, "max_message_bytes": 4096}
    options.update(overrides)
    return InputSession(**options)


def only_error(events: list[Any]) -> ErrorMessage:
    assert len(events) == 1 and isinstance(events[0], Reply), events
    message = events[0].message
    assert isinstance(message, ErrorMessage), message
    return message


def test_session_opens_with_the_assigned_id_and_the_first_speak_uses_it() -> None:
    s = session()
    [opening] = s.opening()
    assert isinstance(opening, Reply) and isinstance(opening.message, TaskIdAssigned)
    assigned = opening.message.task_id
    [submit] = s.receive_text('{"type":"speak","text":"Hi","request_id":"r1"}')
    assert submit == Submit(task_id=assigned, text="Hi", voice=None, request_id="r1")
    reply = processed(s.queued(submit))
    following = reply.next_task_id
    assert reply == UploadProcessed(task_id=assigned, request_id="r1", next_task_id=following)
    assert following is not None and following != assigned
    # The id told in the answer goes to the next utterance, whose answer tells the next one.
    [second] = s.receive_text('{"type":"speak","text":"Again"}')
    assert isinstance(second, Submit) and second.task_id == following
    assert processed(s.queued(second)).next_task_id not in (None, assigned, following)


def test_session_keeps_the_told_next_id_while_a_speak_is_pending() -> None:
    """Two speaks before either is answered: the second gets a fresh id; the told next id
    stays reserved for the utterance after them."""
    s = session()
    assigned = s.assigned_id
    [first] = s.receive_text('{"type":"speak","text":"One"}')
    [second] = s.receive_text('{"type":"speak","text":"Two"}')
    assert isinstance(first, Submit) and isinstance(second, Submit)
    assert first.task_id == assigned != second.task_id
    told = {processed(s.queued(first)).next_task_id, processed(s.queued(second)).next_task_id}
    assert len(told) == 1 and None not in told
    [third] = s.receive_text('{"type":"speak","text":"Three"}')
    assert isinstance(third, Submit) and third.task_id in told


def processed(events: list[Any]) -> UploadProcessed:
    assert len(events) == 1 and isinstance(events[0], Reply), events
    message = events[0].message
    assert isinstance(message, UploadProcessed), message
    return message


def test_session_keeps_the_assigned_id_when_the_first_submission_is_refused() -> None:
    s = session()
    assigned = s.assigned_id
    [first] = s.receive_text('{"type":"speak","text":"Hi"}')
    assert isinstance(first, Submit)
    error = only_error(s.refused(first, "tts_unavailable", "No worker."))
    assert (error.code, error.task_id) == ("tts_unavailable", assigned)
    [retry] = s.receive_text('{"type":"speak","text":"Hi"}')
    assert isinstance(retry, Submit) and retry.task_id == assigned


def test_session_reassembles_the_legacy_chunked_upload() -> None:
    s = session()
    text = "Héllo, wörld!".encode()
    assert s.receive_text('{"type":"text","chunk_id":0,"action":"data_chunk"}') == []
    assert s.receive_bytes(text[:2]) == []  # splits the two bytes of "é"
    assert s.receive_text('{"type":"text","chunk_id":1,"action":"data_chunk"}') == []
    assert s.receive_bytes(text[2:]) == []
    [submit] = s.receive_text('{"action":"upload_complete","voice":"sine"}')
    assert isinstance(submit, Submit)
    assert (submit.text, submit.voice) == ("Héllo, wörld!", "sine")


def test_session_refuses_a_chunk_out_of_order_and_discards_its_bytes() -> None:
    s = session()
    for chunk_id in (0, 1):
        s.receive_text(json.dumps({"type": "text", "chunk_id": chunk_id, "action": "data_chunk"}))
        s.receive_bytes(b"ab")
    error = only_error(s.receive_text('{"type":"text","chunk_id":0,"action":"data_chunk"}'))
    assert error.code == "chunk_id_mismatch"
    assert "Chunk ID mismatch: expected 2, got 0" in error.message
    assert s.receive_bytes(b"lost") == []  # belonged to the refused chunk
    s.receive_text('{"type":"text","chunk_id":0,"action":"data_chunk"}')
    s.receive_bytes(b"fresh start")
    [submit] = s.receive_text('{"action":"upload_complete"}')
    assert isinstance(submit, Submit) and submit.text == "fresh start"


@pytest.mark.parametrize(
    ("message", "code"),
    [
        ("{nope", "invalid_json"),
        ("[1, 2]", "invalid_message"),
        ('{"text":"hi"}', "missing_type"),
        ('{"type":"dance"}', "unknown_type"),
        ('{"type":"speak"}', "missing_text"),
        ('{"type":"speak","text":42}', "invalid_text"),
        ('{"type":"speak","text":"   "}', "empty_text"),
        ('{"type":"speak","text":"' + "x" * 51 + '"}', "text_too_long"),
        ('{"type":"audio","action":"data_chunk"}', "audio_not_supported"),
        ('{"type":"cancel","task_id":"nope"}', "invalid_task_id"),
        ('{"type":"cancel"}', "invalid_task_id"),
        ('{"type":"text","chunk_id":"x"}', "invalid_message"),
        ('{"action":"upload_complete"}', "empty_text"),
    ],
)
def test_session_answers_each_bad_message_with_its_error_code(message: str, code: str) -> None:
    assert only_error(session().receive_text(message)).code == code


def test_session_refuses_binary_without_metadata_and_invalid_utf8() -> None:
    s = session()
    assert only_error(s.receive_bytes(b"hello")).code == "unexpected_binary"
    s.receive_text('{"type":"text","chunk_id":0,"action":"data_chunk"}')
    s.receive_bytes(b"\xff\xfe")
    assert only_error(s.receive_text('{"action":"upload_complete"}')).code == "invalid_utf8"


def test_session_closes_with_1009_on_an_oversize_message() -> None:
    s = session(max_message_bytes=1024)
    [close] = s.receive_text("x" * 1025)
    assert isinstance(close, Close) and close.code == 1009
    [close] = s.receive_bytes(b"x" * 1025)
    assert isinstance(close, Close) and close.code == 1009


def test_session_turns_cancel_into_a_cancel_request() -> None:
    task_id = str(uuid.uuid4())
    assert session().receive_text(json.dumps({"type": "cancel", "task_id": task_id})) == [
        CancelTask(task_id)
    ]


# --- a fake worker on a real socket --------------------------------------------------------


class FakeWorker:
    """Records submissions; answers as told: accept, busy, unknown_voice or hang."""

    def __init__(self, mode: str = "accept", token: str | None = None) -> None:
        self.mode = mode
        self.token = token
        self.submitted: list[dict[str, Any]] = []
        self.cancelled: list[str] = []
        self.headers: list[str | None] = []
        self.release = asyncio.Event()
        self.app = Starlette(
            routes=[
                Route("/v1/tasks", self.submit, methods=["POST"]),
                Route("/v1/tasks/{task_id}", self.cancel, methods=["DELETE"]),
                Route("/health", self.health),
            ]
        )

    async def submit(self, request: Request) -> Response:
        self.headers.append(request.headers.get("authorization"))
        body = await request.json()
        if self.mode == "hang":
            await self.release.wait()
        if self.mode == "busy":
            return JSONResponse({"code": "busy", "message": "At capacity."}, status_code=503)
        if self.mode == "unknown_voice":
            message = f"No voice {body.get('voice')!r} here."
            return JSONResponse({"code": "unknown_voice", "message": message}, status_code=404)
        self.submitted.append(body)
        voice = body.get("voice") or "sine"
        return JSONResponse({"task_id": body["task_id"], "voice": voice, "queued": 0}, 202)

    async def cancel(self, request: Request) -> Response:
        task_id = request.path_params["task_id"]
        known = any(task["task_id"] == task_id for task in self.submitted)
        if not known:
            return JSONResponse({"code": "not_found", "message": "No such task."}, 404)
        self.cancelled.append(task_id)
        return JSONResponse({"task_id": task_id, "cancelled": True})

    async def health(self, request: Request) -> Response:
        body = worker_health(max_concurrent=2).model_dump_json()
        return Response(body, media_type="application/json")


@contextlib.asynccontextmanager
async def input_handler(
    workers: list[str], token: str | None = None, **options: Any
) -> AsyncIterator[RunningServer]:
    config = InputHandlerSettings(workers=workers, **options)
    async with run_server(create_app(Settings(internal_token=token, input_handler=config))) as s:
        yield s


@contextlib.asynccontextmanager
async def client(
    server: RunningServer, token: str | None = None
) -> AsyncIterator[tuple[ClientConnection, str]]:
    """A client of the input handler (as the gateway is: with ``token`` when one is set)."""
    headers = {"x-aivtuber-gateway-token": token} if token else {}
    async with connect(server.ws_url + "/ws/input", additional_headers=headers) as ws:
        hello = json.loads(await ws.recv())
        assert hello["type"] == "system" and hello["action"] == "task_id_assigned"
        yield ws, hello["task_id"]


async def ask(ws: ClientConnection, message: dict[str, Any] | str) -> dict[str, Any]:
    await ws.send(message if isinstance(message, str) else json.dumps(message))
    return json.loads(await ws.recv())


async def test_speak_is_queued_on_the_worker_under_the_assigned_id() -> None:
    fake = FakeWorker()
    async with run_server(fake.app) as tts, input_handler([tts.http_url]) as server:
        async with client(server) as (ws, assigned):
            reply = await ask(ws, {"type": "speak", "text": "Hello!", "request_id": "r1"})
            assert reply == {
                "type": "system",
                "action": "upload_processed",
                "status": "queued",
                "task_id": assigned,
                "request_id": "r1",
                "next_task_id": reply["next_task_id"],
            }
            assert uuid.UUID(reply["next_task_id"]).version == 4
            assert reply["next_task_id"] != assigned
    assert fake.submitted == [
        {
            "task_id": assigned,
            "text": "Hello!",
            "voice": None,
            "tenant": None,
            "client": "127.0.0.1",
            "stream": False,
        }
    ]


async def test_several_speak_messages_get_distinct_ids_each_told_in_the_answer_before() -> None:
    fake = FakeWorker()
    async with run_server(fake.app) as tts, input_handler([tts.http_url]) as server:
        async with client(server) as (ws, assigned):
            replies = [
                await ask(ws, {"type": "speak", "text": f"Line {n}", "voice": "sine"})
                for n in range(3)
            ]
            ids = [reply["task_id"] for reply in replies]
    assert ids[0] == assigned and len(set(ids)) == 3
    assert [reply["next_task_id"] for reply in replies[:-1]] == ids[1:]
    assert all(uuid.UUID(task_id).version == 4 for task_id in ids)
    assert [task["text"] for task in fake.submitted] == ["Line 0", "Line 1", "Line 2"]


async def test_the_legacy_chunked_upload_is_queued_as_one_task() -> None:
    fake = FakeWorker()
    async with run_server(fake.app) as tts, input_handler([tts.http_url]) as server:
        async with client(server) as (ws, assigned):
            for chunk_id, part in enumerate([b"Hello ", "w\xf6rld".encode()]):
                await ws.send(
                    json.dumps({"type": "text", "chunk_id": chunk_id, "action": "data_chunk"})
                )
                await ws.send(part)
            reply = await ask(ws, {"action": "upload_complete"})
    assert reply["action"] == "upload_processed" and reply["task_id"] == assigned
    assert fake.submitted[0]["text"] == "Hello w\xf6rld"


async def test_every_bad_input_gets_its_error_and_the_connection_keeps_working() -> None:
    fake = FakeWorker()
    bad_inputs: list[tuple[Any, str]] = [
        ("{oops", "invalid_json"),
        ({"type": "dance"}, "unknown_type"),
        ({"type": "speak"}, "missing_text"),
        ({"type": "speak", "text": ""}, "empty_text"),
        ({"type": "speak", "text": "x" * 101}, "text_too_long"),
        ({"type": "audio"}, "audio_not_supported"),
        ({"type": "cancel", "task_id": "x"}, "invalid_task_id"),
        (b"stray bytes", "unexpected_binary"),
    ]
    async with run_server(fake.app) as tts:
        async with input_handler([tts.http_url], max_text_chars=100) as server:
            async with client(server) as (ws, _):
                for message, code in bad_inputs:
                    if isinstance(message, bytes):
                        await ws.send(message)
                        reply = json.loads(await ws.recv())
                    else:
                        reply = await ask(
                            ws, message if isinstance(message, str) else json.dumps(message)
                        )
                    assert reply["type"] == "error" and reply["code"] == code, reply
                    assert reply["message"].endswith(".")
                # Chunk order and UTF-8 of the legacy upload.
                await ws.send(json.dumps({"type": "text", "chunk_id": 1, "action": "data_chunk"}))
                reply = json.loads(await ws.recv())
                assert reply["code"] == "chunk_id_mismatch"
                assert "Chunk ID mismatch: expected 0, got 1" in reply["message"]
                await ws.send(b"discarded with its chunk")
                await ws.send(json.dumps({"type": "text", "chunk_id": 0, "action": "data_chunk"}))
                await ws.send(b"\xc3\x28")
                reply = await ask(ws, {"action": "upload_complete"})
                assert reply["code"] == "invalid_utf8"
                reply = await ask(ws, {"type": "speak", "text": "Still here"})
                assert reply["action"] == "upload_processed"
    assert [task["text"] for task in fake.submitted] == ["Still here"]


async def test_an_oversize_message_closes_the_socket_with_1009() -> None:
    async with input_handler(["http://127.0.0.1:9"], max_message_bytes=2048) as server:
        async with client(server) as (ws, _):
            await ws.send("x" * 4096)
            with pytest.raises(ConnectionClosed):
                await ws.recv()
            assert ws.close_code == 1009


async def test_a_busy_worker_is_skipped_for_the_next_one() -> None:
    busy, free = FakeWorker("busy"), FakeWorker()
    async with run_server(busy.app) as one, run_server(free.app) as two:
        async with input_handler([one.http_url, two.http_url]) as server:
            async with client(server) as (ws, _):
                for n in range(3):
                    reply = await ask(ws, {"type": "speak", "text": f"Line {n}"})
                    assert reply["action"] == "upload_processed"
    assert len(free.submitted) == 3 and busy.submitted == []


async def test_no_worker_available_answers_tts_unavailable_without_hanging() -> None:
    busy, hanging = FakeWorker("busy"), FakeWorker("hang")
    down = f"http://127.0.0.1:{free_port()}"
    async with run_server(busy.app) as one, run_server(hanging.app) as two:
        workers = [one.http_url, two.http_url, down]
        # The hanging worker is given up after 2 s; the others answer well within it, loaded.
        async with input_handler(workers, worker_timeout_s=2.0) as server:
            async with client(server) as (ws, assigned):
                reply = await ask(ws, {"type": "speak", "text": "Anyone?", "request_id": "r"})
                assert reply["type"] == "error" and reply["code"] == "tts_unavailable"
                assert reply["task_id"] == assigned and reply["request_id"] == "r"
                hanging.release.set()
                busy.mode = hanging.mode = "accept"  # a later try succeeds, same id
                reply = await ask(ws, {"type": "speak", "text": "Anyone?"})
                assert reply["action"] == "upload_processed" and reply["task_id"] == assigned


async def test_an_unknown_voice_is_reported_to_the_client() -> None:
    fake = FakeWorker("unknown_voice")
    async with run_server(fake.app) as tts, input_handler([tts.http_url]) as server:
        async with client(server) as (ws, _):
            reply = await ask(ws, {"type": "speak", "text": "Hi", "voice": "nobody"})
    assert reply["code"] == "unknown_voice" and "nobody" in reply["message"]


async def test_cancel_reaches_the_worker_that_took_the_task() -> None:
    first, second = FakeWorker(), FakeWorker()
    async with run_server(first.app) as one, run_server(second.app) as two:
        async with input_handler([one.http_url, two.http_url]) as server:
            async with client(server) as (ws, _):
                queued = [
                    (await ask(ws, {"type": "speak", "text": f"Line {n}"}))["task_id"]
                    for n in range(2)
                ]
                for task_id in queued:
                    reply = await ask(ws, {"type": "cancel", "task_id": task_id})
                    assert reply == {"type": "system", "action": "cancelled", "task_id": task_id}
                unknown = str(uuid.uuid4())
                reply = await ask(ws, {"type": "cancel", "task_id": unknown})
                assert reply["code"] == "task_not_found" and reply["task_id"] == unknown
    assert sorted(first.cancelled + second.cancelled) == sorted(queued)
    owners = {task["task_id"]: w for w in (first, second) for task in w.submitted}
    assert all(task_id in w.cancelled for task_id, w in owners.items())


TOKEN = "s3cret-internal-token"


async def test_the_internal_token_is_sent_to_the_workers() -> None:
    fake = FakeWorker()
    async with run_server(fake.app) as tts, input_handler([tts.http_url], token=TOKEN) as server:
        async with client(server, TOKEN) as (ws, _):
            await ask(ws, {"type": "speak", "text": "Hi"})
    assert fake.headers == [f"Bearer {TOKEN}"]


async def test_health_and_metrics_describe_the_workers_and_the_traffic() -> None:
    fake = FakeWorker()
    async with run_server(fake.app) as tts, input_handler([tts.http_url]) as server:
        async with client(server) as (ws, _):
            await ask(ws, {"type": "speak", "text": "Hi"})
            await ask(ws, {"type": "dance"})
            async with httpx.AsyncClient() as http:

                async def probed() -> dict[str, Any] | None:
                    # The first health probe of the worker runs as the handler starts.
                    body: dict[str, Any] = (await http.get(f"{server.http_url}/health")).json()
                    return body if body["workers"][0]["capacity"] == 2 else None

                async with asyncio.timeout(10):
                    health = await eventually(probed)
                metrics = (await http.get(f"{server.http_url}/metrics")).text
    assert health["status"] == "ok" and health["connections"] == 1
    assert health["workers"][0]["url"] == tts.http_url
    assert health["workers"][0]["capacity"] == 2
    assert 'aivtuber_input_submissions_total{result="queued"} 1.0' in metrics
    assert 'aivtuber_input_errors_total{code="unknown_type"} 1.0' in metrics


# --- choosing a worker (httpx.MockTransport: pure request/response logic) ------------------


def mock_workers(health: dict[str, tuple[int, WorkerHealth]], posted: list[str]) -> Any:
    def handle(request: httpx.Request) -> httpx.Response:
        base = f"http://{request.url.host}"
        if request.url.path == "/health":
            status, body = health[base]
            return httpx.Response(status, content=body.model_dump_json())
        posted.append(base)
        task = json.loads(request.content)
        return httpx.Response(202, json={"task_id": task["task_id"], "voice": "sine", "queued": 0})

    return httpx.MockTransport(handle)


async def test_the_least_busy_healthy_worker_gets_each_task() -> None:
    posted: list[str] = []
    health = {
        "http://busy": (200, worker_health(running=2, queued=3, max_concurrent=2)),
        "http://idle": (200, worker_health(running=0, queued=0, max_concurrent=2)),
        "http://down": (503, worker_health("starting", {"sine": "loading"})),
    }
    async with httpx.AsyncClient(transport=mock_workers(health, posted)) as http:
        submitter = HttpTaskSubmitter(http, list(health), timeout_s=1.0)
        await submitter.refresh()
        for _ in range(3):
            await submitter.submit(SubmitTask(task_id=str(uuid.uuid4()), text="Hi"))
    # idle: 0, 0.5, 1.0 of its slots; busy stays at 2.5; down is last whatever its load.
    assert posted == ["http://idle"] * 3
    assert submitter.available == 2


async def test_equally_loaded_workers_take_turns() -> None:
    posted: list[str] = []
    idle = (200, worker_health())
    health = {"http://a": idle, "http://b": idle}
    async with httpx.AsyncClient(transport=mock_workers(health, posted)) as http:
        submitter = HttpTaskSubmitter(http, list(health), timeout_s=1.0)
        await submitter.refresh()
        for _ in range(4):
            await submitter.submit(SubmitTask(task_id=str(uuid.uuid4()), text="Hi"))
    assert sorted(posted) == ["http://a", "http://a", "http://b", "http://b"]
