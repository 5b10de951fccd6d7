"""The plugins' protocol core without sockets: answers matched to requests, errors routed to
their task, and the text cut at the words of the timing track."""

from __future__ import annotations

import json

import pytest

from aivtuber_common.codes import ErrorCode
from aivtuber_integrations.client import AIVTuberError, ControlSession, Endpoint, WordPieces


async def test_answers_settle_the_request_they_name_and_task_errors_go_to_the_task() -> None:
    session = ControlSession()
    speak, voices = session.expect("r1"), session.expect("r2")
    hello = {"type": "system", "action": "task_id_assigned", "task_id": "t0"}
    assert session.receive(json.dumps(hello)) is None
    voice = {"name": "heart", "language": "en-US", "sample_rate": 24000, "engine": "hibari"}
    listed = {
        "type": "system",
        "action": "voices",
        "request_id": "r2",
        "voices": [voice | {"ready": True}],
    }
    session.receive(json.dumps(listed))
    session.receive(
        json.dumps(
            {
                "type": "system",
                "action": "upload_processed",
                "status": "queued",
                "task_id": "t1",
                "request_id": "r1",
            }
        )
    )
    assert speak.result() == "t1" and voices.result()[0].sample_rate == 24000
    refused = session.expect("r3")
    limited = {
        "type": "error",
        "code": "rate_limited",
        "message": "slow down",
        "request_id": "r3",
        "retry_after_ms": 500,
    }
    assert session.receive(json.dumps(limited)) is None
    with pytest.raises(AIVTuberError) as raised:
        refused.result()
    assert raised.value.code == ErrorCode.RATE_LIMITED and raised.value.retry_after_ms == 500
    assert raised.value.retryable
    ended = {"type": "error", "code": "task_ended", "message": "over", "task_id": "t1"}
    failure = session.receive(json.dumps(ended))
    assert failure is not None and failure.task_id == "t1" and failure.error.code == "task_ended"


async def test_a_lost_connection_fails_every_waiting_request_and_garbage_is_an_error() -> None:
    session = ControlSession()
    waiting = [session.expect("a"), session.expect("b")]
    session.fail_all(AIVTuberError(ErrorCode.CONNECTION_LOST, "gone"))
    assert all(f.exception().code == ErrorCode.CONNECTION_LOST for f in waiting)  # type: ignore[union-attr]
    for garbage in ("not json", "[1]", b"\x00"):
        with pytest.raises(AIVTuberError):
            session.receive(garbage)


def test_word_pieces_rebuild_the_text_sent_even_across_pieces() -> None:
    pieces = WordPieces()
    for piece in ("Hel", "lo every", "one! Wel", "come back."):
        pieces.add(piece)
    cut = [pieces.piece(w) for w in ("Hello", "everyone!", "Welcome", "back.")]
    assert cut == ["Hello", " everyone!", " Welcome", " back."]
    assert pieces.rest() == ""
    # A word spelled otherwise than sent ends the alignment: words from then on.
    odd = WordPieces()
    odd.add("It costs 42 yen, okay?")
    assert [odd.piece(w) for w in ("It", "costs", "forty", "two")] == [
        "It",
        " costs",
        "forty ",
        "two ",
    ]


def test_the_endpoint_sends_the_key_as_a_bearer_and_the_ticket_in_the_query() -> None:
    keyed = Endpoint("http://host:8000/", api_key="k" * 20)
    assert keyed.input_url() == "ws://host:8000/ws/input"
    assert keyed.headers() == {"Authorization": "Bearer " + "k" * 20}
    ticketed = Endpoint("wss://host", ticket="t1.a/b+c")
    assert ticketed.output_url("id") == "wss://host/ws/output/id?ticket=t1.a%2Fb%2Bc"
    assert ticketed.headers() == {}
