"""Wire messages keep the exact shapes existing frontends read."""

from __future__ import annotations

import json
import uuid

import pytest
from pydantic import ValidationError

from aivtuber_common.closecodes import sendable
from aivtuber_common.internal import FrameHeader, decode_frame, encode_frame
from aivtuber_common.protocol import (
    AudioChunk,
    AudioStart,
    ClientMessageAdapter,
    OutputError,
    Speak,
    TaskIdAssigned,
    UploadProcessed,
    dump,
    is_canonical_uuid,
    new_task_id,
)


def test_task_id_assigned_has_the_legacy_shape() -> None:
    task_id = new_task_id()
    assert json.loads(dump(TaskIdAssigned(task_id=task_id))) == {
        "type": "system",
        "action": "task_id_assigned",
        "task_id": task_id,
    }


def test_upload_processed_leaves_out_an_absent_request_id() -> None:
    message = json.loads(dump(UploadProcessed(task_id="t")))
    assert message == {
        "type": "system",
        "action": "upload_processed",
        "status": "queued",
        "task_id": "t",
    }


def test_audio_chunk_sends_total_chunks_as_null() -> None:
    message = json.loads(dump(AudioChunk(task_id="t", chunk_id=3, samples=882, level=0.5)))
    assert message["total_chunks"] is None
    assert message["chunk_id"] == 3


def test_audio_start_carries_the_keys_old_frontends_read_first() -> None:
    message = json.loads(
        dump(AudioStart(task_id="t", content="hi", sample_rate=22050, voice="joe", engine="piper"))
    )
    assert message["status"] == "success"
    assert message["content"] == "hi"
    assert message["audio_present"] is True
    assert message["format"] == "pcm_s16le"


def test_output_error_has_status_error_and_an_error_sentence() -> None:
    message = json.loads(dump(OutputError(task_id=None, code="worker_lost", error="Lost.")))
    assert message == {
        "type": "error",
        "status": "error",
        "task_id": None,
        "code": "worker_lost",
        "error": "Lost.",
    }


def test_client_messages_are_dispatched_on_their_type() -> None:
    message = ClientMessageAdapter.validate_json('{"type":"speak","text":"Hi","voice":"joe"}')
    assert isinstance(message, Speak)
    assert message.voice == "joe"
    with pytest.raises(ValidationError):
        ClientMessageAdapter.validate_json('{"type":"dance"}')


def test_only_the_canonical_uuid_form_is_a_task_id() -> None:
    task_id = new_task_id()
    assert is_canonical_uuid(task_id)
    assert not is_canonical_uuid(task_id.upper())
    assert not is_canonical_uuid(task_id.replace("-", ""))
    assert not is_canonical_uuid("../../etc/passwd")


def test_binary_frame_round_trips_task_chunk_level_and_pcm() -> None:
    task_id = str(uuid.uuid4())
    data = encode_frame(task_id, 7, 0.25, b"\x01\x02\x03\x04")
    assert len(data) == FrameHeader.SIZE + 4
    got_id, chunk_id, level, pcm, visemes, words = decode_frame(data)
    assert (got_id, chunk_id, level, bytes(pcm)) == (task_id, 7, 0.25, b"\x01\x02\x03\x04")
    assert visemes is None and words is None
    with pytest.raises(ValueError, match="shorter than its header"):
        decode_frame(b"\x00" * 3)


@pytest.mark.parametrize(
    ("code", "expected"),
    [
        (None, 1000),
        (1000, 1000),
        (1005, 1000),
        (1006, 1011),
        (1015, 1011),
        (4000, 4000),
        (1001, 1001),
        (2000, 1011),
        (1004, 1011),
    ],
)
def test_close_codes_that_cannot_go_on_the_wire_are_mapped(code: int | None, expected: int) -> None:
    assert sendable(code) == expected
