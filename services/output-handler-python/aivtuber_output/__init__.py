"""The output handler: streams each task's audio frames to its subscribers (port 8002)."""

from .app import create_app

__all__ = ["create_app"]
