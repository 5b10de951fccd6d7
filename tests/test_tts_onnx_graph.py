"""A graph output added on an ONNX model's bytes (aivtuber_tts.engines.onnx_graph): parsed,
the same model the ``onnx`` package makes, and the worker's start never imports ``onnx``."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import onnx
import pytest
from hibari.voices import voice_path
from piper.patch_voice_with_alignment import add_alignment_output

from aivtuber_tts.engines import onnx_graph
from aivtuber_tts.engines.hibari import DURATIONS
from aivtuber_tts.engines.piper import resolve_paths


def test_piper_alignments_are_added_as_piper_adds_them() -> None:
    path, _ = resolve_paths(None)
    data = path.read_bytes()
    graph = onnx_graph.scan(data)
    ceil = [tensor for tensor, op in graph.produced_by.items() if op == "Ceil"]
    assert len(ceil) == 1 and ceil[0] not in graph.outputs
    expected = onnx.load(str(path))
    add_alignment_output(expected)
    patched = onnx_graph.with_output(data, ceil[0])
    assert onnx.load_from_string(patched) == expected
    assert onnx_graph.scan(patched).outputs == [*graph.outputs, ceil[0]]


def test_hibari_durations_are_added_with_their_float_type() -> None:
    path = Path(voice_path("heart", download_missing=False))
    expected = onnx.load(str(path))
    expected.graph.output.append(
        onnx.helper.make_tensor_value_info(DURATIONS, onnx.TensorProto.FLOAT, None)
    )
    patched = onnx_graph.with_output(path.read_bytes(), DURATIONS, onnx_graph.FLOAT)
    assert onnx.load_from_string(patched) == expected


@pytest.mark.parametrize("data", [b"", b"\x0a\x05abc", b"\xff" * 12, b"\x3a\x10short"])
def test_bytes_that_are_no_model_are_a_value_error(data: bytes) -> None:
    with pytest.raises(ValueError, match="not an ONNX model"):
        onnx_graph.scan(data)


@pytest.mark.piper
def test_loading_the_timed_voices_does_not_import_onnx() -> None:
    # Importing onnx (its ml_dtypes extension) cost the worker's start 0.6-0.9 s on 2 cores.
    script = (
        "import sys\n"
        "from aivtuber_tts.engines import HibariEngine, PiperEngine\n"
        "PiperEngine(device='cpu', wide_threads=2).load()\n"
        "HibariEngine('heart').load()\n"
        "assert 'onnx' not in sys.modules, 'onnx was imported'\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
