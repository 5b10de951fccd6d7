"""A whole utterance with its mora timing: the input handler asks a TTS worker for it to
answer VOICEVOX's ``audio_query`` and ``synthesis`` (never reachable through the gateway)::

    POST /v1/utterance   UtteranceRequest -> 200 Utterance
                                          -> 400/404/503 WorkerRefusal (bad_request,
                                             unknown_voice, no_timing, not_ready)

``Authorization: Bearer <internal_token>`` when one is set, like the task routes.

The moras and accent phrases use VOICEVOX's own field names and units (seconds, log-F0
pitch), so the input handler passes them through unchanged. The timeline is exact: the
audio of ``text`` is ``lead_s`` + every mora's ``consonant_length`` + ``vowel_length`` and
every ``pause_mora``'s ``vowel_length``, in order, + ``tail_s``; nothing else.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

__all__ = ["UTTERANCE_PATH", "AccentPhrase", "Mora", "Utterance", "UtteranceRequest"]

UTTERANCE_PATH = "/v1/utterance"


class Mora(BaseModel):
    """One mora as VOICEVOX writes it (``consonant`` None for a bare vowel, ん or っ)."""

    model_config = ConfigDict(extra="ignore")

    text: str
    consonant: str | None = None
    consonant_length: float | None = None
    vowel: str
    vowel_length: float
    pitch: float


class AccentPhrase(BaseModel):
    model_config = ConfigDict(extra="ignore")

    moras: list[Mora]
    accent: int
    pause_mora: Mora | None = None
    is_interrogative: bool = False


class UtteranceRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    text: str
    voice: str | None = None  # None: the worker's default voice
    tenant: str | None = None  # whose engine time it is (fair sharing of the worker)
    # True (audio_query): read the text (Japanese: OpenJTalk's accent phrases) and time it;
    # ``Utterance.kana`` is then what ``text`` to send back for the audio. False
    # (synthesis): speak ``text`` as it is and send the audio.
    analyse: bool = True


class Utterance(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    voice: str
    language: str
    sample_rate: int
    # What to speak for exactly this timing: the moras' kana (Japanese) or the text.
    kana: str
    accent_phrases: list[AccentPhrase]
    lead_s: float  # audio before the first mora
    tail_s: float  # audio after the last mora
    # True when the moras are not the engine's own phonemes (English voices: mouth shapes;
    # Japanese when the reading and the model's phonemes could not be matched mora by mora).
    approximate: bool = False
    pcm: str | None = None  # base64 s16le mono at sample_rate (analyse False)
