"""The input handler against a corpus of malformed messages: every one is answered with
its error code and the connection keeps serving; text that cannot be spoken is refused up
front as ``invalid_text``."""

from __future__ import annotations

import json

import pytest

from tests.support import run_server
from tests.test_input_handler import FakeWorker, ask, client, input_handler, only_error, session

DEEP = 100_000
# (what the client sends as one text message, the error code it must get)
CORPUS: list[tuple[str, str]] = [
    ("[" * DEEP, "invalid_json"),
    ('{"a":' * DEEP + "1" + "}" * DEEP, "invalid_json"),
    ('{"type":"speak","text":"hi","n":' + "1" * 5000 + "}", "invalid_json"),
    ('{"type":"text","chunk_id":' + "9" * 5000 + "}", "invalid_json"),
    ("", "invalid_json"),
    ('{"type":"speak","text":"hi"} trailing', "invalid_json"),
    ('{"type":"speak","text":"hi",}', "invalid_json"),
    ("\ufeff{}", "invalid_json"),
    ("NaN", "invalid_message"),
    ("1e999", "invalid_message"),
    ('"\\ud800"', "invalid_message"),
    ("null", "invalid_message"),
    ('{"type":"text","chunk_id":1e400}', "invalid_message"),
    ('{"type":"text","chunk_id":1.5}', "invalid_message"),
    ('{"type":"speak","text":"hi","voice":["x"]}', "invalid_message"),
    ('{"type":"speak","text":"hi","request_id":"\\udfff"}', "invalid_message"),
    ('{"type":"speak","text":"hi","voice":"\\ud800"}', "invalid_message"),
    ('{"\\ud800":1,"type":"speak","text":"hi"}', "invalid_message"),
    ('{"type":"cancel","task_id":"\\ud800"}', "invalid_message"),
    ('{"type":"speak","text":"\\ud800"}', "invalid_text"),
    ('{"type":"speak","text":"a\\udc00b"}', "invalid_text"),
    ('{"type":"speak","text":"a\\u0000b"}', "invalid_text"),
    ('{"type":"speak","text":"bell\\u0007"}', "invalid_text"),
    ('{"type":"speak","text":"\\u001b[31mred"}', "invalid_text"),
    ('{"type":"speak","text":"line\\rfeed"}', "invalid_text"),
    ('{"type":"speak","text":["a"]}', "invalid_text"),
    ('{"type":[' * 1000 + "]" * 1000 + "}", "invalid_json"),
    ('{"type":{"a":"b"}}', "unknown_type"),
]


@pytest.mark.parametrize(("message", "code"), CORPUS, ids=range(len(CORPUS)))
def test_session_answers_each_malformed_message_with_its_code(message: str, code: str) -> None:
    assert only_error(session(max_message_bytes=1024 * 1024).receive_text(message)).code == code


def test_tab_and_newline_are_fine_in_text() -> None:
    events = session().receive_text(json.dumps({"type": "speak", "text": "one\ttwo\nthree"}))
    assert [type(event).__name__ for event in events] == ["Submit"]


async def test_the_malformed_corpus_over_a_socket_leaves_the_connection_serving() -> None:
    fake = FakeWorker()
    async with run_server(fake.app) as tts:
        async with input_handler([tts.http_url]) as server:
            async with client(server) as (ws, _):
                for message, code in CORPUS:
                    reply = await ask(ws, message)
                    assert reply["type"] == "error" and reply["code"] == code, (message[:60], reply)
                # The legacy chunked upload is held to the same rule.
                await ws.send(json.dumps({"type": "text", "chunk_id": 0, "action": "data_chunk"}))
                await ws.send(b"nul\x00here")
                reply = await ask(ws, {"action": "upload_complete"})
                assert reply["code"] == "invalid_text"
                reply = await ask(ws, {"type": "speak", "text": "Still here"})
                assert reply["action"] == "upload_processed", reply
    assert [task["text"] for task in fake.submitted] == ["Still here"]
