"""The command line every service shares, and the uvicorn runner behind it.

``python services/<service>/main.py [--config PATH] [--host H] [--port P] [--log-level L]``
and the console scripts end here. A bad config prints one line and exits with code 2.
"""

from __future__ import annotations

import argparse
import signal
import socket
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from types import FrameType
from typing import Any

import structlog
import uvicorn

from .config import ConfigError, Settings, load_settings
from .logging import configure_logging
from .protected import check_exposure
from .token_file import with_internal_token

__all__ = ["GracefulServer", "ServiceSpec", "parse_args", "run_service", "uvicorn_config"]

EXIT_CONFIG = 2


class GracefulServer(uvicorn.Server):
    """uvicorn's server, minus re-raising the signal after a graceful shutdown.

    uvicorn restores the default handlers and raises SIGTERM/SIGINT again once it has shut
    down, so the process dies of the signal (exit -15, or a KeyboardInterrupt traceback)
    instead of exiting 0. A second SIGINT still forces the exit, as in uvicorn.
    """

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self.started:
            # The port actually bound: with --port 0 the kernel picks it, and whoever
            # started the process (a test, a supervisor) reads it from this line.
            bound = [sock.getsockname() for server in self.servers for sock in server.sockets]
            if bound:
                structlog.get_logger().info("listening", host=bound[0][0], port=bound[0][1])

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self.should_exit and sig == signal.SIGINT:
            self.force_exit = True
        else:
            self.should_exit = True


class ServiceSpec:
    """What a service hands to :func:`run_service`."""

    def __init__(
        self,
        name: str,
        section: str,
        create_app: Callable[[Settings], Any],
        server_class: type[uvicorn.Server] = GracefulServer,
        check: Callable[[Settings], None] | None = None,
        overrides: Callable[[Settings], dict[str, Any]] | None = None,
    ) -> None:
        self.name = name
        self.section = section  # the key of config.json this service reads
        self.create_app = create_app
        self.server_class = server_class
        # Extra start-up checks that need more than the schema (a model file, a GPU);
        # raise ConfigError with one line.
        self.check = check
        # uvicorn settings of its own (keepalive pings where the service needs them).
        self.overrides = overrides


def parse_args(name: str, argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog=name, description=f"Run the {name} service.")
    parser.add_argument(
        "--config", type=Path, help="config file (default: $AIVTUBER_CONFIG or ./config.json)"
    )
    parser.add_argument("--host", help="interface to listen on (overrides the config)")
    parser.add_argument("--port", type=int, help="port to listen on (overrides the config)")
    parser.add_argument(
        "--log-level",
        choices=["debug", "info", "warning", "error"],
        help="log level (overrides the config)",
    )
    return parser.parse_args(argv)


def apply_overrides(settings: Settings, section: str, args: argparse.Namespace) -> Settings:
    """Fold --host/--port/--log-level into the settings, validated like the file."""
    data = settings.model_dump()
    if args.host is not None:
        data[section]["host"] = args.host
    if args.port is not None:
        data[section]["port"] = args.port
    if args.log_level is not None:
        data["logging"]["level"] = args.log_level
    return Settings.model_validate(data)


def uvicorn_config(app: Any, host: str, port: int, log_level: str) -> uvicorn.Config:
    """uvicorn tuned for a WebSocket service: the sans-I/O websockets implementation (the
    fastest), no permessage-deflate, our logging instead of uvicorn's."""
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        loop="auto",
        http="auto",
        ws="websockets-sansio",
        ws_per_message_deflate=False,
        ws_max_size=16 * 1024 * 1024,
        ws_ping_interval=None,  # each service pings where it needs to
        ws_ping_timeout=None,
        lifespan="on",
        log_config=None,
        log_level=log_level,
        access_log=log_level == "debug",
        timeout_graceful_shutdown=5,
        server_header=False,
        # Never derive a client's address from X-Forwarded-For / Forwarded: every service
        # takes the peer's own (the gateway believes proxies only in gateway.trusted_proxies).
        proxy_headers=False,
    )


def run_service(spec: ServiceSpec, argv: Sequence[str] | None = None) -> int:
    args = parse_args(spec.name, argv)
    try:
        settings = apply_overrides(load_settings(args.config), spec.section, args)
        check_exposure(settings, spec.section)  # protected mode: never wide open by accident
        # The internal token is always in force: the config's, else the machine's token file.
        settings = with_internal_token(settings)
        if spec.check is not None:
            spec.check(settings)
    except ConfigError as exc:
        print(f"{spec.name}: config error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except ValueError as exc:  # pydantic's ValidationError from an override
        print(f"{spec.name}: config error: {str(exc).splitlines()[-1].strip()}", file=sys.stderr)
        return EXIT_CONFIG
    configure_logging(settings.logging.level, settings.logging.format, service=spec.name)
    section = getattr(settings, spec.section)
    app = spec.create_app(settings)
    config = uvicorn_config(app, section.host, section.port, settings.logging.level)
    for key, value in (spec.overrides(settings) if spec.overrides else {}).items():
        setattr(config, key, value)
    server = spec.server_class(config)
    structlog.get_logger().info("starting", host=section.host, port=section.port)
    server.run()
    # uvicorn leaves started=False when it could not bind or start the app.
    return 0 if server.started else 1
