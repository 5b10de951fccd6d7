"""``aivtuber-input-handler`` / ``python services/input-handler-python/main.py``."""

from __future__ import annotations

from collections.abc import Sequence

from aivtuber_common.cli import ServiceSpec, run_service

from .app import create_app


def main(argv: Sequence[str] | None = None) -> int:
    return run_service(ServiceSpec("input-handler", "input_handler", create_app), argv)


if __name__ == "__main__":
    raise SystemExit(main())
