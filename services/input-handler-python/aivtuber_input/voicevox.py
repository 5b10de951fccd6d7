"""The VOICEVOX-compatible API of the input handler (reached through the gateway at
``http://host:8000/voicevox``, the engine URL a VOICEVOX client is given).

Routes::

    GET  /voicevox/version                  our version, as a JSON string
    GET  /voicevox/speakers                 every voice: one speaker, one style each
    POST /voicevox/audio_query?text=&speaker=   AudioQuery with mora timing
    POST /voicevox/synthesis?speaker=       AudioQuery -> audio/wav
    POST /voicevox/initialize_speaker?speaker=      204 (voices load at the worker's start)
    GET  /voicevox/is_initialized_speaker?speaker=  true when the voice is ready

Both ``audio_query`` and ``synthesis`` ask a worker for the timed utterance
(:mod:`aivtuber_common.utterance`, ``POST /v1/utterance``); each is a speak of the text's
characters for the tenant's limits, like ``/v1/audio/speech``. What ``synthesis`` speaks is
the query's moras written back as kana (Japanese voices) or its ``kana`` field (English
voices, where it holds the text): the same text ``audio_query`` timed, so the moras a client
animates a mouth with describe the audio it plays. The WAV is laid out as VOICEVOX lays it:
``prePhonemeLength`` of silence, the moras, ``postPhonemeLength``.

Refusals are FastAPI's shape, as VOICEVOX answers them: ``{"detail": "...", "code": "..."}``
(422 for a body or parameter that does not parse, like FastAPI).
"""

from __future__ import annotations

import base64
import importlib.metadata
import io
import re
import uuid
import wave
import zlib

import av
import httpx
import numpy as np
import structlog
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from aivtuber_common.codes import ErrorCode
from aivtuber_common.config import Settings
from aivtuber_common.identity import read_identity
from aivtuber_common.internal import WorkerRefusal
from aivtuber_common.protocol import VoiceInfo, new_task_id
from aivtuber_common.transport import TransportError
from aivtuber_common.utterance import (
    UTTERANCE_PATH,
    AccentPhrase,
    Utterance,
    UtteranceRequest,
)

from .speech import SpeechApi
from .workers import HttpTaskSubmitter

__all__ = ["AudioQuery", "VoicevoxApi", "spoken_text"]

log = structlog.get_logger("aivtuber_input.voicevox")

PREFIX = "/voicevox"
STYLE_NAME = "ノーマル"  # VOICEVOX's name of a speaker's plain style
SPEAKER_NAMESPACE = uuid.UUID("5d1c53b4-2f57-4ac5-9b4e-3c1f3f2e9b7a")
MAX_QUERY_BYTES = 4 * 1024 * 1024
MIN_RATE, MAX_RATE = 8000, 96000
KATAKANA = re.compile(r"[\u30a1-\u30fa]")


class AudioQuery(BaseModel):
    """VOICEVOX's AudioQuery; unknown keys of newer engines are ignored."""

    model_config = ConfigDict(extra="ignore")

    accent_phrases: list[AccentPhrase]
    speedScale: float = 1.0  # noqa: N815 - VOICEVOX's names
    pitchScale: float = 0.0  # noqa: N815
    intonationScale: float = 1.0  # noqa: N815
    volumeScale: float = Field(default=1.0, ge=0.0, le=10.0)  # noqa: N815
    prePhonemeLength: float = Field(default=0.1, ge=0.0, le=10.0)  # noqa: N815
    postPhonemeLength: float = Field(default=0.1, ge=0.0, le=10.0)  # noqa: N815
    pauseLength: float | None = None  # noqa: N815
    pauseLengthScale: float = 1.0  # noqa: N815
    outputSamplingRate: int = Field(default=24000, ge=MIN_RATE, le=MAX_RATE)  # noqa: N815
    outputStereo: bool = False  # noqa: N815
    kana: str | None = None


class VoicevoxError(Exception):
    def __init__(self, status: int, code: str, detail: str) -> None:
        super().__init__(detail)
        self.status, self.code, self.detail = status, code, detail

    def response(self) -> JSONResponse:
        return JSONResponse({"detail": self.detail, "code": self.code}, status_code=self.status)


# Worker refusal codes -> our HTTP status (anything else from a worker: 502).
_STATUS: dict[str, int] = {
    ErrorCode.UNKNOWN_VOICE: 404,
    ErrorCode.NO_TIMING: 400,
    ErrorCode.BAD_REQUEST: 400,
    ErrorCode.NOT_READY: 503,
    ErrorCode.BUSY: 503,
    ErrorCode.ENGINE_ERROR: 503,
}


class VoicevoxApi:
    """The routes; shares the speech API's workers, limits and active-task count."""

    def __init__(self, settings: Settings, speech: SpeechApi) -> None:
        self.settings = settings
        self.speech = speech
        self.config = settings.input_handler.voicevox
        self.max_chars = settings.input_handler.max_text_chars

    def routes(self) -> list[Route]:
        return [
            Route(f"{PREFIX}/version", self.version, methods=["GET"]),
            Route(f"{PREFIX}/speakers", self.speakers, methods=["GET"]),
            Route(f"{PREFIX}/audio_query", self.audio_query, methods=["POST"]),
            Route(f"{PREFIX}/synthesis", self.synthesis, methods=["POST"]),
            Route(f"{PREFIX}/initialize_speaker", self.initialize, methods=["POST"]),
            Route(f"{PREFIX}/is_initialized_speaker", self.is_initialized, methods=["GET"]),
        ]

    def style_id(self, voice: str) -> int:
        configured = self.config.style_ids.get(voice)
        if configured is not None:
            return configured
        return 1000 + zlib.crc32(voice.encode()) % 1_000_000

    # --- discovery --------------------------------------------------------------------------

    async def version(self, _: Request) -> JSONResponse:
        return JSONResponse(_version())

    async def speakers(self, _: Request) -> JSONResponse:
        found = await self._voices()
        return JSONResponse(
            [
                {
                    "name": voice,
                    "speaker_uuid": str(uuid.uuid5(SPEAKER_NAMESPACE, voice)),
                    "styles": [{"name": STYLE_NAME, "id": self.style_id(voice), "type": "talk"}],
                    "version": _version(),
                    "supported_features": {"permitted_synthesis_morphing": "NOTHING"},
                }
                for voice in sorted(found)
            ]
        )

    async def initialize(self, request: Request) -> Response:
        try:
            await self._voice_of(request)
        except VoicevoxError as exc:
            return exc.response()
        return Response(status_code=204)

    async def is_initialized(self, request: Request) -> JSONResponse:
        try:
            voice = await self._voice_of(request)
        except VoicevoxError as exc:
            return exc.response()
        found = await self._voices()
        return JSONResponse(found[voice].ready if voice in found else False)

    # --- speech -----------------------------------------------------------------------------

    async def audio_query(self, request: Request) -> JSONResponse:
        try:
            voice = await self._voice_of(request)
            text = request.query_params.get("text", "")
            if not text.strip():
                raise VoicevoxError(422, ErrorCode.EMPTY_TEXT, "'text' is empty.")
            made = await self._utterance(request, UtteranceRequest(text=text, voice=voice))
        except VoicevoxError as exc:
            return self._refuse(exc)
        query = AudioQuery(
            accent_phrases=made.accent_phrases,
            outputSamplingRate=made.sample_rate,
            kana=made.kana,
        )
        log.info("voicevox_query", voice=voice, chars=len(text), approximate=made.approximate)
        return JSONResponse(query.model_dump())

    async def synthesis(self, request: Request) -> Response:
        try:
            voice = await self._voice_of(request)
            query = await _read_query(request)
            _check_supported(query)
            text = spoken_text(query)
            if not text.strip():
                raise VoicevoxError(422, ErrorCode.EMPTY_TEXT, "The query has nothing to speak.")
            made = await self._utterance(
                request, UtteranceRequest(text=text, voice=voice, analyse=False)
            )
        except VoicevoxError as exc:
            return self._refuse(exc)
        body = render_wav(made, query)
        log.info("voicevox_synthesis", voice=voice, chars=len(text), bytes=len(body))
        return Response(body, media_type="audio/wav")

    # --- internals --------------------------------------------------------------------------

    async def _voices(self) -> dict[str, VoiceInfo]:
        """Every voice of the workers by name; none when no worker answers."""
        submitter = self.speech.submitter
        if submitter is None:
            return {}
        try:
            return {voice.name: voice for voice in await submitter.voices()}
        except TransportError as exc:
            log.info("voices_unavailable", code=exc.code)
            return {}

    def _refuse(self, exc: VoicevoxError) -> JSONResponse:
        self.speech.metrics.errors.labels(exc.code).inc()
        log.info("voicevox_refused", code=exc.code, status=exc.status)
        return exc.response()

    async def _voice_of(self, request: Request) -> str:
        raw = request.query_params.get("speaker", "")
        try:
            style = int(raw)
        except ValueError:
            raise VoicevoxError(
                422, ErrorCode.BAD_REQUEST, "'speaker' must be a style id (a whole number)."
            ) from None
        found = await self._voices()
        for voice in found:
            if self.style_id(voice) == style:
                return voice
        raise VoicevoxError(
            404, ErrorCode.UNKNOWN_VOICE, f"No speaker style {style}; GET /speakers lists them."
        )

    async def _utterance(self, request: Request, asked: UtteranceRequest) -> Utterance:
        if len(asked.text) > self.max_chars:
            raise VoicevoxError(
                422,
                ErrorCode.TEXT_TOO_LONG,
                f"The text is {len(asked.text)} characters long; the limit is {self.max_chars}.",
            )
        identity = read_identity(
            list(request.headers.items()),
            request.client.host if request.client else None,
            self.settings.internal_token,
        )
        asked = asked.model_copy(update={"tenant": identity.tenant})
        speech = self.speech
        key = identity.limits_key
        task_id = new_task_id()
        limited = await speech.limiter.admit(
            key, self.settings.limits_for(identity.tenant), len(asked.text), task_id
        )
        if limited is not None:
            raise VoicevoxError(429, limited.code, limited.message)
        # Counted as an active task while a worker makes it, like a speak.
        speech.active.admitted(task_id, key, len(asked.text))
        try:
            return await self._ask_workers(asked)
        finally:
            speech.active.refused(task_id)

    async def _ask_workers(self, asked: UtteranceRequest) -> Utterance:
        submitter = self.speech.submitter
        if not isinstance(submitter, HttpTaskSubmitter):
            # The Redis bus carries tasks, not calls with an answer: see docs/voicevox.md.
            raise VoicevoxError(
                503,
                ErrorCode.TTS_UNAVAILABLE,
                "The VOICEVOX API needs the direct bus (input_handler.workers over HTTP).",
            )
        timeout = self.settings.input_handler.worker_timeout_s
        unknown: VoicevoxError | None = None
        problems: list[str] = []
        # Healthy workers first; a worker without the voice says unknown_voice: try the next.
        for worker in sorted(submitter.workers, key=lambda w: (not w.healthy, w.busy, w.load)):
            try:
                response = await submitter.client.post(
                    worker.url + UTTERANCE_PATH,
                    content=asked.model_dump_json(),
                    headers={**submitter.headers, "content-type": "application/json"},
                    # Synthesis of a whole text: as long as its longest task could take.
                    timeout=httpx.Timeout(timeout, read=max(timeout, 60.0)),
                )
            except httpx.HTTPError as exc:
                problems.append(f"{worker.url} {type(exc).__name__}")
                continue
            if response.status_code == 200:
                return Utterance.model_validate_json(response.content)
            try:
                refusal = WorkerRefusal.model_validate_json(response.content)
            except ValidationError:
                problems.append(f"{worker.url} {response.status_code}")
                continue
            error = VoicevoxError(_STATUS.get(refusal.code, 502), refusal.code, refusal.message)
            if refusal.code == ErrorCode.UNKNOWN_VOICE:
                unknown = error
                continue
            if refusal.code in (ErrorCode.BUSY, ErrorCode.NOT_READY):
                problems.append(f"{worker.url} {refusal.code}")
                continue
            raise error
        if unknown is not None:
            raise unknown
        log.warning("voicevox_no_worker", problems=problems)
        raise VoicevoxError(503, ErrorCode.TTS_UNAVAILABLE, "No TTS worker could take the text.")


def spoken_text(query: AudioQuery) -> str:
    """What ``synthesis`` speaks: Japanese moras written back as kana (edits to their text
    are honoured), else the ``kana`` field (the text, for English voices)."""
    moras = [mora for phrase in query.accent_phrases for mora in phrase.moras]
    if not any(KATAKANA.search(mora.text) for mora in moras):
        return query.kana or ""
    out: list[str] = []
    for index, phrase in enumerate(query.accent_phrases):
        out.append("".join(mora.text for mora in phrase.moras))
        last = index == len(query.accent_phrases) - 1
        if phrase.is_interrogative and (phrase.pause_mora is not None or last):
            out.append("？")
        elif last:
            out.append("。")
        else:
            out.append("、" if phrase.pause_mora is not None else " ")
    return "".join(out)


def render_wav(made: Utterance, query: AudioQuery) -> bytes:
    """The utterance laid out as VOICEVOX lays it, at the asked volume, rate and channels."""
    rate = made.sample_rate
    pcm = np.frombuffer(base64.b64decode(made.pcm or ""), dtype="<i2").astype(np.float32)
    # The first mora starts at prePhonemeLength; the last ends postPhonemeLength before the end.
    lead, tail = round(made.lead_s * rate), round(made.tail_s * rate)
    pre, post = round(query.prePhonemeLength * rate), round(query.postPhonemeLength * rate)
    body = pcm[max(0, lead - pre) : len(pcm) - max(0, tail - post)]
    audio = np.concatenate(
        [np.zeros(max(0, pre - lead), np.float32), body, np.zeros(max(0, post - tail), np.float32)]
    )
    audio = np.clip(audio * query.volumeScale, -32768, 32767).astype("<i2")
    if query.outputSamplingRate != rate:
        audio = _resample(audio, rate, query.outputSamplingRate)
    channels = 2 if query.outputStereo else 1
    if channels == 2:
        audio = np.repeat(audio, 2)
    out = io.BytesIO()
    with wave.open(out, "wb") as wav:
        wav.setnchannels(channels)
        wav.setsampwidth(2)
        wav.setframerate(query.outputSamplingRate)
        wav.writeframes(audio.tobytes())
    return out.getvalue()


def _resample(audio: np.ndarray, rate: int, to: int) -> np.ndarray:
    """FFmpeg's resampler (PyAV), drained so the tail is kept."""
    resampler = av.AudioResampler(format="s16", layout="mono", rate=to)
    frame = av.AudioFrame.from_ndarray(audio.reshape(1, -1), format="s16", layout="mono")
    frame.sample_rate = rate
    frames = [*resampler.resample(frame), *resampler.resample(None)]
    if not frames:
        return np.zeros(0, "<i2")
    return np.concatenate([f.to_ndarray().ravel() for f in frames]).astype("<i2")


def _check_supported(query: AudioQuery) -> None:
    """Honest refusals: our voices speak at their own pace and pitch (no time-stretching or
    pitch shifting), so these are refused rather than silently ignored."""
    asked = {
        "speedScale": (query.speedScale, 1.0),
        "pitchScale": (query.pitchScale, 0.0),
        "intonationScale": (query.intonationScale, 1.0),
        "pauseLengthScale": (query.pauseLengthScale, 1.0),
    }
    for name, (value, default) in asked.items():
        if value != default:
            raise VoicevoxError(
                400,
                ErrorCode.UNSUPPORTED_PARAMETER,
                f"{name} {value:g} is not supported: the voices speak at their own pace and "
                f"pitch. Send {default:g}.",
            )
    if query.pauseLength is not None:
        raise VoicevoxError(
            400,
            ErrorCode.UNSUPPORTED_PARAMETER,
            "pauseLength is not supported: pauses are the voice's own. Send null.",
        )


async def _read_query(request: Request) -> AudioQuery:
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_QUERY_BYTES:
            raise VoicevoxError(413, ErrorCode.BAD_REQUEST, "The AudioQuery is too large.")
    try:
        return AudioQuery.model_validate_json(bytes(body))
    except ValidationError as exc:
        error = exc.errors(include_url=False)[0]
        where = ".".join(str(part) for part in error["loc"]) or "body"
        raise VoicevoxError(422, ErrorCode.BAD_REQUEST, f"{where}: {error['msg']}") from exc


def _version() -> str:
    try:
        return importlib.metadata.version("aivtuber-gateway")
    except importlib.metadata.PackageNotFoundError:
        return "0.0.0"
