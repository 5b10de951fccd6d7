"""The internal token every service on one machine shares when the config sets none.

The internal token is always in force in a running service: ``internal_token`` from the
config when it is set, else the machine's token file, created once (by whichever service
starts first) and read by every other service on the machine. So the one-PC case needs no
configuration, yet a local process that does not hold the token (a browser page, another
user, a stray script) cannot speak to the back ends, claim a tenant or read task ids.

The file is ``internal_token_file``, by default ``$XDG_STATE_HOME/aivtuber/internal_token``
(``~/.local/state/aivtuber/internal_token``): a private directory (0700), a private file
(0600) holding one random line. Creation is race-safe: the token is written to a private
temporary file and hard-linked to its name, which fails when another service won the race
(the same exclusivity as ``O_EXCL``, and nobody ever reads a half-written file); everyone
then reads the name. A file others can read, that is not a regular file or not the user's,
or whose token is under 16 characters, stops the start with one line (exit 2).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import stat
from collections.abc import Mapping
from pathlib import Path

from .config import ConfigError, Settings

__all__ = ["MIN_TOKEN_CHARS", "default_token_file", "load_or_create_token", "with_internal_token"]

MIN_TOKEN_CHARS = 16
_MAX_TOKEN_BYTES = 4096


def default_token_file(environ: Mapping[str, str] = os.environ) -> Path:
    """``$XDG_STATE_HOME/aivtuber/internal_token``, XDG's default state dir otherwise."""
    state = environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(state) / "aivtuber" / "internal_token"


def with_internal_token(settings: Settings, environ: Mapping[str, str] = os.environ) -> Settings:
    """``settings`` with ``internal_token`` set: the configured one, else the token file's."""
    if settings.internal_token:
        return settings
    path = settings.internal_token_file or default_token_file(environ)
    return settings.model_copy(update={"internal_token": load_or_create_token(path)})


def load_or_create_token(path: Path) -> str:
    """The token in ``path``, created (with its private directory) when there is none.
    Raises ConfigError with one line when the file cannot be trusted or made."""
    try:
        if not path.exists():
            _create(path)
        return _read(path)
    except OSError as exc:
        raise ConfigError(f"internal_token_file {str(path)!r}: {exc.strerror or exc}") from exc


def _create(path: Path) -> None:
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="ascii") as file:
            file.write(secrets.token_urlsafe(32) + "\n")
            file.flush()
            os.fsync(file.fileno())
        with contextlib.suppress(FileExistsError):  # another service made it first: use it
            os.link(temporary, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)


def _read(path: Path) -> str:
    where = f"internal_token_file {str(path)!r}"
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    with os.fdopen(fd, "rb") as file:
        info = os.fstat(file.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise ConfigError(f"{where}: not a regular file")
        if hasattr(os, "getuid") and info.st_uid != os.getuid():
            raise ConfigError(f"{where}: owned by another user; remove it or set internal_token")
        if info.st_mode & 0o077:
            raise ConfigError(f"{where}: readable by others; chmod 600 it or remove it")
        token = file.read(_MAX_TOKEN_BYTES).decode("ascii", "replace").strip()
    if len(token) < MIN_TOKEN_CHARS:
        raise ConfigError(
            f"{where}: the token is under {MIN_TOKEN_CHARS} characters; remove the file"
        )
    return token
