"""The input handler: takes what the avatar should say and queues it on a TTS worker (port 8001)."""

from .app import create_app

__all__ = ["create_app"]
