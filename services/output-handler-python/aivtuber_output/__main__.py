"""``aivtuber-output-handler`` / ``python services/output-handler-python/main.py``."""

from __future__ import annotations

from collections.abc import Sequence

from aivtuber_common.cli import ServiceSpec, run_service

from .app import create_app
from .keepalive import uvicorn_overrides


def main(argv: Sequence[str] | None = None) -> int:
    spec = ServiceSpec("output-handler", "output_handler", create_app, overrides=uvicorn_overrides)
    return run_service(spec, argv)


if __name__ == "__main__":
    raise SystemExit(main())
