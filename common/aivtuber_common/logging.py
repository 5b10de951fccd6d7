"""structlog set up once per process: one event per line, JSON off a terminal.

uvicorn's and other libraries' stdlib log records go through the same renderer, so a
service's output is uniformly JSON under pm2/systemd and readable on a terminal.
"""

from __future__ import annotations

import logging
import re
import sys
from typing import Literal

import structlog

from .redact import short_path

__all__ = ["configure_logging", "level_number"]

_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}


def level_number(level: str) -> int:
    return _LEVELS[level]


def configure_logging(
    level: str = "info",
    fmt: Literal["auto", "json", "console"] = "auto",
    service: str | None = None,
) -> None:
    """Configure structlog and the stdlib root logger. Safe to call more than once."""
    use_json = fmt == "json" or (fmt == "auto" and not sys.stdout.isatty())
    shared: list[structlog.typing.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    if service:
        shared.append(_add_service(service))
    if level != "debug":
        # A whole task id is all it takes to hear someone's speech: at info and above a
        # prefix is enough to correlate the services' lines.
        shared.append(_shorten_task_ids)
    renderer: structlog.typing.Processor = (
        structlog.processors.JSONRenderer()
        if use_json
        else structlog.dev.ConsoleRenderer(colors=sys.stdout.isatty())
    )
    structlog.configure(
        processors=[
            *shared,
            structlog.processors.StackInfoRenderer(),
            structlog.processors.format_exc_info,
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.make_filtering_bound_logger(level_number(level)),
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=shared,
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                *([structlog.processors.format_exc_info] if use_json else []),
                renderer,
            ],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level_number(level))
    # uvicorn's access log is one line per HTTP request; /health polling would drown the
    # useful events, so it is shown only at debug.
    logging.getLogger("uvicorn.access").setLevel(
        logging.DEBUG if level == "debug" else logging.WARNING
    )
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True
    # uvicorn logs each request's path with its query string, where browsers put tokens
    # (they cannot set headers on a WebSocket), at info for every WebSocket handshake: keep
    # the path with long segments (task ids) cut, drop the query.
    for name in ("uvicorn.error", "uvicorn.access"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, _RedactQueryStrings) for f in logger.filters):
            logger.addFilter(_RedactQueryStrings())
    # At debug these libraries log whole handshakes (headers included: Authorization,
    # Cookie) and frames (content): never let a secret reach a log.
    for name in ("websockets", "hpack"):
        logging.getLogger(name).setLevel(max(logging.INFO, level_number(level)))
    # httpx logs every request's whole URL at info ("HTTP Request: DELETE .../v1/tasks/<id>",
    # a forwarded query string): whole task ids and credentials. Its warnings only.
    for name in ("httpx", "httpcore"):
        logging.getLogger(name).setLevel(max(logging.WARNING, level_number(level)))
    # uvicorn's WebSocket implementations hand "uvicorn.error" to websockets as its logger,
    # and uvicorn resets that logger's level itself: a filter drops its debug records.
    error_logger = logging.getLogger("uvicorn.error")
    if not any(isinstance(f, _DropDebug) for f in error_logger.filters):
        error_logger.addFilter(_DropDebug())


_QUERY = re.compile(r"\?[^\s\"']*")


class _RedactQueryStrings(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple) and any(
            isinstance(arg, str) and ("?" in arg or arg.startswith("/")) for arg in record.args
        ):
            record.args = tuple(
                _redact_request(arg) if isinstance(arg, str) else arg for arg in record.args
            )
        return True


def _redact_request(arg: str) -> str:
    if arg.startswith("/"):  # a request path: "/ws/output/<task id>?api_key=..."
        path, query, _ = arg.partition("?")
        return short_path(path) + ("?<redacted>" if query else "")
    return _QUERY.sub("?<redacted>", arg)


TASK_ID_FIELDS = ("task_id", "task_ids", "tasks")
TASK_ID_PREFIX = 8


def _short_id(value: object) -> object:
    if isinstance(value, str) and len(value) > TASK_ID_PREFIX + 4:
        return value[:TASK_ID_PREFIX] + "…"
    if isinstance(value, list | tuple):
        return [_short_id(item) for item in value]
    return value


def _shorten_task_ids(
    _: object, __: str, event: structlog.typing.EventDict
) -> structlog.typing.EventDict:
    for name in TASK_ID_FIELDS:
        if name in event:
            event[name] = _short_id(event[name])
    return event


def _add_service(service: str) -> structlog.typing.Processor:
    def add(_: object, __: str, event: structlog.typing.EventDict) -> structlog.typing.EventDict:
        event.setdefault("service", service)
        return event

    return add


class _DropDebug(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.INFO
