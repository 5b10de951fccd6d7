"""``POST /v1/utterance``: one text read, timed mora by mora and (for synthesis) spoken whole,
for the input handler's VOICEVOX-compatible API (see :mod:`aivtuber_common.utterance`).

The work runs in one engine slot of the worker's scheduler, as the tenant's, so it shares
the cores fairly with the streaming tasks; it is synthesis either way (our models compute
the phoneme durations in the same pass as the audio), piece by piece as a task would be, so
the audio ``synthesis`` returns is exactly the audio ``audio_query`` timed.
"""

from __future__ import annotations

import base64
import functools
import time

from aivtuber_common.codes import ErrorCode
from aivtuber_common.refusal import Refusal
from aivtuber_common.utterance import Utterance, UtteranceRequest

from .engines import KokoroJaEngine, LocalEngine
from .errors import EngineError
from .moras import ipa_moras, japanese_phrases, kana_text, read_labels, shape_phrases
from .scheduler import PieceScheduler
from .visemes import Mark, Speech
from .voices import Voice, Voices, VoiceState

__all__ = ["utterance"]

# Log-F0 of a neutral mora (VOICEVOX's scale): female voices speak higher than male ones.
FEMALE_PITCH = 5.8
MALE_PITCH = 5.4
# Rough engine seconds per character, for the scheduler's fair-share estimate.
COST_PER_CHAR_S = 0.02


async def utterance(
    request: UtteranceRequest, voices: Voices, scheduler: PieceScheduler
) -> Utterance:
    """Raises :class:`Refusal` (unknown voice, not ready, no timing, engine failure)."""
    voice_id = request.voice or voices.default
    voice = voices.get(voice_id)
    if voice is None:
        known = ", ".join(sorted(voices.voices))
        raise Refusal(404, ErrorCode.UNKNOWN_VOICE, f"No voice {voice_id!r}; known: {known}.")
    if voice.state is not VoiceState.READY:
        raise Refusal(503, ErrorCode.NOT_READY, f"The voice {voice_id!r} is {voice.state}.")
    engine = voice.engine
    if not isinstance(engine, LocalEngine) or not engine.visemes:
        raise Refusal(
            400,
            ErrorCode.NO_TIMING,
            f"The voice {voice_id!r} ({engine.name}) does not say when each sound is spoken, "
            "so it has no mora timing.",
        )
    work = functools.partial(_utterance, voice, request.text, request.analyse)
    try:
        return await scheduler.run(
            time.perf_counter(),
            work,
            group=request.tenant or "",
            cost=COST_PER_CHAR_S * len(request.text),
        )
    except EngineError as exc:
        raise Refusal(503, ErrorCode.ENGINE_ERROR, str(exc)) from exc


def _utterance(voice: Voice, text: str, analyse: bool) -> Utterance:
    """Blocking: in an engine slot."""
    engine = voice.engine
    language = voice.settings.language or engine.language
    if isinstance(engine, KokoroJaEngine):
        return _japanese(voice.id, engine, language, text, analyse)
    assert isinstance(engine, LocalEngine)
    pieces: list[tuple[int, tuple[Mark, ...]]] = []
    pcm = bytearray()
    for piece in engine.split(text):
        made = engine.synthesize_piece(piece)
        speech = made if isinstance(made, Speech) else Speech(made, ())
        pieces.append((len(speech.pcm) // 2, speech.marks))
        pcm += speech.pcm
    phrases, lead, tail = shape_phrases(pieces, engine.sample_rate, FEMALE_PITCH)
    return Utterance(
        voice=voice.id,
        language=language,
        sample_rate=engine.sample_rate,
        kana=text,
        accent_phrases=phrases,
        lead_s=lead,
        tail_s=tail,
        approximate=True,
        pcm=None if analyse else base64.b64encode(pcm).decode(),
    )


def _japanese(
    voice_id: str, engine: KokoroJaEngine, language: str, text: str, analyse: bool
) -> Utterance:
    phrases = read_labels(*engine.read(text)) if analyse else []
    # What is spoken: the moras' kana (audio_query), or the kana sent back (synthesis).
    spoken = kana_text(phrases) if phrases else text
    played: list[tuple[str, int]] = []
    pcm = bytearray()
    for piece in engine.split(spoken):
        speech, phonemes = engine.timed_phonemes(piece)
        played += phonemes
        pcm += speech.pcm
    timeline = ipa_moras(played)
    pitch = MALE_PITCH if engine.speaker.startswith("jm") else FEMALE_PITCH
    accent_phrases, approximate = japanese_phrases(phrases, timeline, engine.sample_rate, pitch)
    return Utterance(
        voice=voice_id,
        language=language,
        sample_rate=engine.sample_rate,
        kana=spoken,
        accent_phrases=accent_phrases,
        lead_s=timeline.lead / engine.sample_rate,
        tail_s=timeline.tail / engine.sample_rate,
        approximate=approximate,
        pcm=None if analyse else base64.b64encode(pcm).decode(),
    )
