"""An intermediate tensor of an ONNX model made a graph output, on the model's bytes.

The timed engines read each phoneme's duration from a tensor their models compute but do
not output (Piper's ``Ceil``, hibari's and kokoro-ja's ``Round``). Adding it as an output
with the ``onnx`` package cost a worker's start about a second on 2 cores: importing it
(0.6-0.9 s, most of it its ``ml_dtypes`` extension) and parsing and re-serialising the whole
model (0.35 s for Piper's 63 MB). The change is one field appended to the graph, so it is
made here on the protobuf wire format: the graph's fields are walked (the weights skipped
by their length, never copied one by one), the output appended to the graph's bytes, and
the graph's length prefix rewritten. Parsed, the result is the model ``onnx`` would make
(tests/test_tts_engines.py compares them).

Pure functions on bytes, no I/O.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

__all__ = ["FLOAT", "Graph", "scan", "with_output"]

FLOAT = 1  # TensorProto.FLOAT, the elem_type of a float tensor

# Field numbers (onnx.proto3).
_MODEL_GRAPH = 7
_GRAPH_NODE = 1
_GRAPH_OUTPUT = 12
_NODE_OUTPUT = 2
_NODE_OP_TYPE = 4
_VALUE_INFO_NAME = 1
_VALUE_INFO_TYPE = 2
_TYPE_TENSOR = 1
_TENSOR_ELEM_TYPE = 1

_VARINT, _FIXED64, _LEN, _FIXED32 = 0, 1, 2, 5


@dataclass
class Graph:
    """What :func:`scan` found in a model's graph."""

    produced_by: dict[str, str] = field(default_factory=dict)  # tensor -> its node's op type
    outputs: list[str] = field(default_factory=list)


def scan(model: bytes) -> Graph:
    """The tensors the graph's nodes produce and the graph's outputs; ValueError when
    ``model`` is no ONNX model."""
    _, start, end = _graph_span(model)
    view = memoryview(model)
    graph = Graph()
    for number, value_start, value_end in _fields(view, start, end):
        if number == _GRAPH_NODE:
            op_type = ""
            produced: list[str] = []
            for inner, inner_start, inner_end in _fields(view, value_start, value_end):
                if inner == _NODE_OUTPUT:
                    produced.append(_text(view, inner_start, inner_end))
                elif inner == _NODE_OP_TYPE:
                    op_type = _text(view, inner_start, inner_end)
            for tensor in produced:
                graph.produced_by[tensor] = op_type
        elif number == _GRAPH_OUTPUT:
            for inner, inner_start, inner_end in _fields(view, value_start, value_end):
                if inner == _VALUE_INFO_NAME:
                    graph.outputs.append(_text(view, inner_start, inner_end))
    return graph


def with_output(model: bytes, tensor: str, elem_type: int | None = None) -> bytes:
    """``model`` with ``tensor`` appended to its graph's outputs (with its element type when
    given, as ``onnx.helper.make_tensor_value_info(tensor, elem_type, None)`` makes it; a
    bare name otherwise, as ``piper.patch_voice_with_alignment`` does)."""
    key_start, start, end = _graph_span(model)
    info = _string(_VALUE_INFO_NAME, tensor.encode())
    if elem_type is not None:
        tensor_type = _key(_TENSOR_ELEM_TYPE, _VARINT) + _varint(elem_type)
        info += _string(_VALUE_INFO_TYPE, _string(_TYPE_TENSOR, tensor_type))
    addition = _string(_GRAPH_OUTPUT, info)
    # The graph's key and length prefix are written anew (the length grows).
    header = _key(_MODEL_GRAPH, _LEN) + _varint(end - start + len(addition))
    return b"".join((model[:key_start], header, model[start:end], addition, model[end:]))


def _graph_span(model: bytes) -> tuple[int, int, int]:
    """(where the graph field's key starts, where its value starts, where it ends)."""
    view = memoryview(model)
    found: list[tuple[int, int, int]] = []
    pos = 0
    while pos < len(view):
        key_start = pos
        key, pos = _read_varint(view, pos)
        if key & 7 != _LEN:
            pos = _skip(view, pos, key & 7)
            continue
        length, pos = _read_varint(view, pos)
        if key >> 3 == _MODEL_GRAPH:
            found.append((key_start, pos, pos + length))
        pos += length
    if len(found) != 1 or found[0][2] > len(view):
        raise ValueError("not an ONNX model: no single graph")
    return found[0]


def _fields(view: memoryview, start: int, end: int) -> Iterator[tuple[int, int, int]]:
    """(field number, value start, value end) of each length-delimited field in
    ``view[start:end]``; other fields are skipped."""
    pos = start
    while pos < end:
        key, pos = _read_varint(view, pos)
        wire = key & 7
        if wire == _LEN:
            length, pos = _read_varint(view, pos)
            if pos + length > end:
                raise ValueError("not an ONNX model: a field runs past its end")
            yield key >> 3, pos, pos + length
            pos += length
        else:
            pos = _skip(view, pos, wire)
    if pos != end:
        raise ValueError("not an ONNX model: a field runs past its end")


def _skip(view: memoryview, pos: int, wire: int) -> int:
    if wire == _VARINT:
        return _read_varint(view, pos)[1]
    if wire == _FIXED64:
        return pos + 8
    if wire == _FIXED32:
        return pos + 4
    raise ValueError(f"not an ONNX model: wire type {wire}")


def _read_varint(view: memoryview, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= len(view) or shift > 63:
            raise ValueError("not an ONNX model: a truncated number")
        byte = view[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7


def _text(view: memoryview, start: int, end: int) -> str:
    return bytes(view[start:end]).decode("utf-8", errors="replace")


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _key(number: int, wire: int) -> bytes:
    return _varint(number << 3 | wire)


def _string(number: int, payload: bytes) -> bytes:
    return _key(number, _LEN) + _varint(len(payload)) + payload
