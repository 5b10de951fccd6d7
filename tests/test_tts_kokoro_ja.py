"""The kokoro_ja engine (real model, short texts): Japanese speech with mouth shapes, its
cache folder where the config says, voices sharing one model, clear config errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError

from aivtuber_common.config import KokoroJaVoice, TtsWorkerSettings
from aivtuber_tts.engines import KokoroJaEngine
from aivtuber_tts.errors import EngineError
from aivtuber_tts.visemes import Speech
from aivtuber_tts.voices import _with_data_dir
from tests.test_tts_words import spoken_words


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("data") / "kokoro-ja"


@pytest.fixture(scope="module")
def alpha(cache: Path) -> KokoroJaEngine:
    engine = KokoroJaEngine("jf_alpha", cache_dir=cache, warmup=False)
    engine.load_and_warm_up()
    return engine


def test_kokoro_ja_speaks_japanese_with_japanese_mouth_shapes(alpha: KokoroJaEngine) -> None:
    speech = alpha.synthesize_piece("こんにちは。")
    assert isinstance(speech, Speech)
    pcm = np.frombuffer(speech.pcm, dtype="<i2")
    assert alpha.sample_rate == 24000 and alpha.language == "ja"
    assert 0.4 < pcm.size / 24000 < 2.5
    assert np.abs(pcm).max() >= 32766  # full scale, within the last bit (threads' sum order)
    # koɲɲiʨiβa (ん before に is ɲ, folded), then the closing "。": o, i, a, n
    shapes = [shape for _, shape in speech.marks]
    assert shapes == ["n", "o", "i", "a", "n"]
    # the lead pad (~300 ms) is trimmed: the voice starts within the first 100 ms
    audible = np.flatnonzero(np.abs(pcm) > 327)
    assert audible[0] < 2400


def test_the_model_is_built_in_the_configured_cache_folder_and_shared(
    alpha: KokoroJaEngine, cache: Path
) -> None:
    assert (cache / "kokoro-v1.0.int8.onnx").stat().st_size > 50_000_000
    kumo = KokoroJaEngine("jm_kumo", cache_dir=cache, warmup=False)
    kumo.load()
    assert kumo._model is alpha._model  # the voices are styles of one loaded model
    assert kumo.split("はい、わかりました。それでは始めます。") == [
        "はい、",
        "わかりました。それでは始めます。",
    ]


def test_the_cache_folder_defaults_under_the_worker_data_dir() -> None:
    settings = TtsWorkerSettings(
        voices={"alpha": KokoroJaVoice()},
        default_voice="alpha",
        data_dir="/srv/aivtuber/tts",
    )
    assert _with_data_dir(settings)["alpha"].cache_dir == "/srv/aivtuber/tts/kokoro-ja"


def test_config_errors_are_clear(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="jf_alpha, jf_gongitsune"):
        KokoroJaVoice(speaker="af_heart")
    blocked = tmp_path / "a-file"
    blocked.write_text("not a folder")
    with pytest.raises(EngineError, match="cannot create the kokoro_ja cache folder"):
        KokoroJaEngine(cache_dir=blocked / "kokoro-ja", warmup=False).load()


def test_kokoro_ja_times_each_accent_phrase_of_the_text_in_order(alpha: KokoroJaEngine) -> None:
    """The words of a Japanese line are its accent phrases: together exactly the text sent,
    each starting inside the audio, in order."""
    lines = (Path(__file__).resolve().parents[1] / "bench" / "texts" / "lines-ja.txt").read_text(
        "utf-8"
    )
    for line in lines.splitlines()[:4]:
        got = spoken_words(alpha, line)
        assert "".join(got) == line and len(got) >= 3, got
