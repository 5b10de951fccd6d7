"""The VOICEVOX-compatible API (``/voicevox``) through the gateway, driven by ``voicevox-client``
(PyPI's VOICEVOX client, on aiohttp) against a real stack on ephemeral ports: gateway with a
tenant key, input handler, output handler and a TTS worker with the Japanese kokoro voice
``jf_alpha`` and the English ``heart``. The key goes in the engine URL's user info, as a
client that takes only a URL presents it."""

from __future__ import annotations

import asyncio
import contextlib
import io
import wave
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
import numpy as np
import pytest
import pytest_asyncio
from vvclient import Client
from vvclient.errors import HTTPException, NotFoundError

from aivtuber_common.config import (
    AuthSettings,
    GatewaySettings,
    HibariVoice,
    InputHandlerSettings,
    KokoroJaVoice,
    OutputHandlerSettings,
    RouteSettings,
    Settings,
    TenantSettings,
    TtsWorkerSettings,
)
from aivtuber_gateway import create_app as gateway_app
from aivtuber_input import create_app as input_app
from aivtuber_output import create_app as output_app
from aivtuber_tts import create_app as worker_app
from tests.support import RunningServer, eventually, run_server

pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.timeout(300)]

KEY = "voicevox-tenant-key-0123"
ALPHA, HEART = 0, 10  # the default style ids of jf_alpha and heart
LINE = "こんにちは、今日もいい天気ですね。"
ENGLISH = "Hi chat, welcome back to the stream."
LOAD_TIMEOUT_S = 240.0


@dataclass
class Stack:
    gateway: RunningServer

    def url(self, key: str | None = KEY) -> str:
        host = self.gateway.http_url.removeprefix("http://")
        return f"http://voicevox:{key}@{host}/voicevox" if key else f"http://{host}/voicevox"


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def vv(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Stack]:
    data = tmp_path_factory.mktemp("data")
    async with contextlib.AsyncExitStack() as outer:
        output = await outer.enter_async_context(
            run_server(output_app(Settings(output_handler=OutputHandlerSettings())))
        )
        worker_settings = TtsWorkerSettings(
            output_handler_url=output.ws_url,
            voices={
                "jf_alpha": KokoroJaVoice(speaker="jf_alpha"),
                "heart": HibariVoice(),
            },
            default_voice="heart",
            max_concurrent=2,
            data_dir=str(data),
            warmup=False,
        )
        worker = await outer.enter_async_context(
            run_server(worker_app(Settings(tts_worker=worker_settings)))
        )
        await _wait_healthy(worker)
        handler = await outer.enter_async_context(
            run_server(
                input_app(
                    Settings(
                        input_handler=InputHandlerSettings(
                            workers=[worker.http_url], output_handler_url=output.ws_url
                        )
                    )
                )
            )
        )
        routes = {
            "voicevox": RouteSettings(
                path="/voicevox/{endpoint:path}", backends=[handler.http_url], protocol="http"
            ),
        }
        settings = Settings(
            gateway=GatewaySettings(routes=routes),
            auth=AuthSettings(tenants={"studio": TenantSettings(key=KEY)}),
        )
        gateway = await outer.enter_async_context(run_server(gateway_app(settings)))
        yield Stack(gateway)


async def _wait_healthy(server: RunningServer) -> None:
    """The worker answers 200 on /health once every voice has loaded (kokoro: seconds)."""

    async def ready() -> bool:
        return (await http.get(f"{server.http_url}/health")).status_code == 200

    async with httpx.AsyncClient() as http, asyncio.timeout(LOAD_TIMEOUT_S):
        await eventually(ready, every=0.1)


def read_wav(body: bytes) -> tuple[np.ndarray, int, int]:
    with wave.open(io.BytesIO(body)) as wav:
        samples = np.frombuffer(wav.readframes(wav.getnframes()), dtype="<i2")
        return samples, wav.getframerate(), wav.getnchannels()


def timeline_s(query: dict[str, Any]) -> float:
    """What VOICEVOX says the audio lasts: pre + every mora and pause + post."""
    total = query["prePhonemeLength"] + query["postPhonemeLength"]
    for phrase in query["accent_phrases"]:
        for mora in phrase["moras"]:
            total += (mora["consonant_length"] or 0.0) + mora["vowel_length"]
        if phrase["pause_mora"]:
            total += phrase["pause_mora"]["vowel_length"]
    return float(total)


def first_loud_s(samples: np.ndarray, rate: int) -> float:
    return float(np.flatnonzero(np.abs(samples.astype(np.int32)) > 328)[0]) / rate


async def test_speakers_list_every_voice_as_one_speaker_with_a_stable_style_id(vv: Stack) -> None:
    async with httpx.AsyncClient() as http:
        version = await http.get(f"{vv.url(None)}/version", params={"api_key": KEY})
        speakers = await http.get(
            f"{vv.url(None)}/speakers", headers={"authorization": f"Bearer {KEY}"}
        )
    assert version.status_code == 200 and isinstance(version.json(), str)
    assert speakers.status_code == 200
    by_name = {speaker["name"]: speaker for speaker in speakers.json()}
    assert set(by_name) == {"jf_alpha", "heart"}
    assert [style["id"] for style in by_name["jf_alpha"]["styles"]] == [ALPHA]
    assert [style["id"] for style in by_name["heart"]["styles"]] == [HEART]
    assert by_name["jf_alpha"]["speaker_uuid"] != by_name["heart"]["speaker_uuid"]


async def test_a_japanese_query_has_real_mora_timing_and_synthesis_plays_it(vv: Stack) -> None:
    async with Client(vv.url()) as client:
        query = await client.create_audio_query(LINE, speaker=ALPHA)
        body = await query.synthesis(speaker=ALPHA)
    data = query.data
    moras = [mora for phrase in data["accent_phrases"] for mora in phrase["moras"]]
    assert "".join(m["text"] for m in moras) == "コンニチワキョーモイイテンキデスネ"
    assert moras[0]["consonant"] == "k" and moras[0]["vowel"] == "o"
    # The model's own durations: they differ mora by mora (not an even split)...
    assert all(m["vowel_length"] > 0 for m in moras)
    assert all(m["consonant_length"] > 0 for m in moras if m["consonant"])
    assert len({round(m["vowel_length"], 3) for m in moras}) > 3
    # ...the pause after こんにちは is there, and pitch follows the accent (unvoiced: 0).
    assert data["accent_phrases"][0]["pause_mora"]["vowel_length"] > 0
    assert all(m["pitch"] == 0 for m in moras if m["vowel"] in "AIUEO")
    assert all(5 < m["pitch"] < 7 for m in moras if m["vowel"] in "aiueoN")
    samples, rate, channels = read_wav(body)
    assert (rate, channels) == (24000, 1) and data["outputSamplingRate"] == 24000
    # The audio is exactly as long as the moras say, to the sample.
    assert samples.size == pytest.approx(timeline_s(data) * rate, abs=2)
    # Nothing audible in prePhonemeLength; sound within the first mora.
    first = first_loud_s(samples, rate)
    first_mora = moras[0]["consonant_length"] + moras[0]["vowel_length"]
    assert data["prePhonemeLength"] - 0.03 <= first <= data["prePhonemeLength"] + first_mora


async def test_synthesis_honours_volume_lengths_rate_and_stereo(vv: Stack) -> None:
    async with Client(vv.url()) as client:
        query = await client.create_audio_query(LINE, speaker=ALPHA)
        plain, _, _ = read_wav(await query.synthesis(speaker=ALPHA))
        query.data.update(
            volumeScale=0.5,
            prePhonemeLength=0.4,
            postPhonemeLength=0.0,
            outputSamplingRate=48000,
            outputStereo=True,
        )
        samples, rate, channels = read_wav(await query.synthesis(speaker=ALPHA))
    assert (rate, channels) == (48000, 2)
    left = samples[0::2]
    assert np.array_equal(left, samples[1::2])
    assert left.size == pytest.approx(timeline_s(query.data) * 48000, abs=8)
    assert 0.37 <= first_loud_s(left, rate) <= 0.55
    assert np.abs(left).max() == pytest.approx(np.abs(plain).max() / 2, rel=0.05)


async def test_speed_and_pitch_changes_are_refused_with_a_reason(vv: Stack) -> None:
    async with Client(vv.url()) as client:
        query = await client.create_audio_query("はい。", speaker=ALPHA)
        query.data["speedScale"] = 1.5
        with pytest.raises(HTTPException) as caught:
            await query.synthesis(speaker=ALPHA)
    assert caught.value.status_code == 400
    assert "speedScale" in caught.value.message and "unsupported_parameter" in caught.value.message


async def test_a_wrong_key_or_none_is_refused(vv: Stack) -> None:
    async with Client(vv.url("wrong-key-0000000000")) as client:
        with pytest.raises(HTTPException) as wrong:
            await client.create_audio_query(LINE, speaker=ALPHA)
    async with Client(vv.url(None)) as client:
        with pytest.raises(HTTPException) as missing:
            await client.create_audio_query(LINE, speaker=ALPHA)
    assert wrong.value.status_code == 401 and "invalid_api_key" in wrong.value.message
    assert missing.value.status_code == 401 and "missing_api_key" in missing.value.message


async def test_an_unknown_speaker_is_not_found(vv: Stack) -> None:
    async with Client(vv.url()) as client:
        with pytest.raises(NotFoundError):
            await client.create_audio_query(LINE, speaker=999)


async def test_an_english_voice_gets_mouth_shape_moras_that_time_its_audio(vv: Stack) -> None:
    async with Client(vv.url()) as client:
        query = await client.create_audio_query(ENGLISH, speaker=HEART)
        body = await query.synthesis(speaker=HEART)
    data = query.data
    moras = [mora for phrase in data["accent_phrases"] for mora in phrase["moras"]]
    assert data["kana"] == ENGLISH
    assert moras and {m["vowel"] for m in moras} <= set("aiueoN")
    assert {m["vowel"] for m in moras} & set("aiueo")
    samples, rate, _ = read_wav(body)
    assert samples.size == pytest.approx(timeline_s(data) * rate, abs=2)


async def test_the_key_may_also_come_as_a_query_parameter(vv: Stack) -> None:
    async with httpx.AsyncClient(timeout=120) as http:
        query = await http.post(
            f"{vv.url(None)}/audio_query",
            params={"text": "はい。", "speaker": ALPHA, "api_key": KEY},
        )
        synthesis = await http.post(
            f"{vv.url(None)}/synthesis",
            params={"speaker": ALPHA, "api_key": KEY},
            json=query.json(),
        )
    assert query.status_code == 200, query.text
    assert synthesis.status_code == 200 and synthesis.headers["content-type"] == "audio/wav"
    assert synthesis.content[:4] == b"RIFF"


async def test_a_bad_speaker_or_query_is_refused_in_fastapis_shape(vv: Stack) -> None:
    auth = {"authorization": f"Bearer {KEY}"}
    async with httpx.AsyncClient(timeout=60, headers=auth) as http:
        not_a_number = await http.post(
            f"{vv.url(None)}/audio_query", params={"text": "はい", "speaker": "alpha"}
        )
        empty = await http.post(f"{vv.url(None)}/audio_query", params={"text": " ", "speaker": 0})
        broken = await http.post(
            f"{vv.url(None)}/synthesis", params={"speaker": ALPHA}, json={"accent_phrases": 3}
        )
        ready = await http.get(f"{vv.url(None)}/is_initialized_speaker", params={"speaker": 0})
    assert not_a_number.status_code == 422 and not_a_number.json()["code"] == "bad_request"
    assert empty.status_code == 422 and empty.json()["code"] == "empty_text"
    assert broken.status_code == 422 and "accent_phrases" in broken.json()["detail"]
    assert ready.status_code == 200 and ready.json() is True
