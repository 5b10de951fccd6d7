"""The configured voices, each with its engine and load state.

Voices load once, at start, in the background (the lifespan starts :meth:`Voices.load_all`)
so the worker answers ``/health`` with ``starting`` meanwhile instead of refusing
connections; a voice that fails to load is reported with its error and the others serve.
"""

from __future__ import annotations

import time
from concurrent.futures import Executor
from dataclasses import dataclass
from pathlib import Path

import httpx
import structlog

from aivtuber_common.config import KokoroJaVoice, TtsWorkerSettings, VoiceSettings
from aivtuber_common.health import VoiceDescription, VoiceState

from .engines import Engine, EngineFactory, build_engine
from .errors import EngineError

__all__ = ["EngineFactory", "Voice", "VoiceState", "Voices"]

log = structlog.get_logger("aivtuber_tts.voices")


@dataclass
class Voice:
    id: str
    settings: VoiceSettings
    engine: Engine
    state: VoiceState = VoiceState.LOADING
    error: str | None = None
    load_s: float | None = None

    def describe(self) -> VoiceDescription:
        return VoiceDescription(
            id=self.id,
            engine=self.engine.name,
            language=self.settings.language or self.engine.language,
            device=self.engine.device,
            sample_rate=self.engine.sample_rate,
            state=self.state,
            load_s=None if self.load_s is None else round(self.load_s, 3),
            error=self.error or None,
        )


class Voices:
    def __init__(
        self,
        settings: TtsWorkerSettings,
        client: httpx.AsyncClient,
        engine_factory: EngineFactory = build_engine,
        executor: Executor | None = None,
    ) -> None:
        self.default = settings.default_voice
        self.executor = executor
        self.threads = settings.max_concurrent
        self.voices = {
            voice_id: Voice(
                voice_id,
                voice,
                engine_factory(
                    voice_id,
                    voice,
                    max_concurrent=settings.max_concurrent,
                    client=client,
                    warmup=settings.warmup,
                ),
            )
            for voice_id, voice in _with_data_dir(settings).items()
        }
        self.ready_s: float | None = None  # from app creation until every voice settled
        self._created = time.monotonic()

    def get(self, voice_id: str) -> Voice | None:
        return self.voices.get(voice_id)

    @property
    def loading(self) -> bool:
        return any(voice.state is VoiceState.LOADING for voice in self.voices.values())

    @property
    def failed(self) -> list[Voice]:
        return [voice for voice in self.voices.values() if voice.state is VoiceState.FAILED]

    async def load_all(self) -> None:
        # One after the other: on 2 cores parallel loads only slow each other down.
        for voice in self.voices.values():
            await self._load(voice)
        self.ready_s = time.monotonic() - self._created
        log.info("voices_loaded", ready_s=round(self.ready_s, 3), failed=len(self.failed))

    async def aclose(self) -> None:
        for voice in self.voices.values():
            await voice.engine.aclose()

    async def _load(self, voice: Voice) -> None:
        started = time.perf_counter()
        try:
            await voice.engine.start(self.executor, self.threads)
        except EngineError as exc:
            voice.state, voice.error = VoiceState.FAILED, str(exc)
            log.error("voice_failed", voice=voice.id, engine=voice.engine.name, error=str(exc))
            return
        except Exception as exc:  # a bug or a broken install: this task has no caller to tell
            voice.state, voice.error = VoiceState.FAILED, f"unexpected error: {exc}"
            log.exception("voice_failed", voice=voice.id, engine=voice.engine.name)
            return
        voice.load_s = time.perf_counter() - started
        voice.state = VoiceState.READY
        log.info(
            "voice_ready",
            voice=voice.id,
            engine=voice.engine.name,
            device=voice.engine.device,
            load_s=round(voice.load_s, 3),
        )


def _with_data_dir(settings: TtsWorkerSettings) -> dict[str, VoiceSettings]:
    """The voices, a kokoro_ja voice's cache folder defaulting to <data_dir>/kokoro-ja."""
    default_cache = str(Path(settings.data_dir).expanduser() / "kokoro-ja")
    return {
        voice_id: voice.model_copy(update={"cache_dir": default_cache})
        if isinstance(voice, KokoroJaVoice) and not voice.cache_dir
        else voice
        for voice_id, voice in settings.voices.items()
    }
