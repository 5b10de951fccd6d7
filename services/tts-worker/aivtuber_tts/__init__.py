"""The TTS worker: text in, PCM frames out to the output handler as each piece is made."""

from .app import create_app

__all__ = ["create_app"]
