"""The optional client token (``auth.token_file``, PROTOCOL §2.4): the one reader.

The token is the file's first line, whitespace stripped.  The daemon reads it with
:func:`load_or_create_token` (which creates the file ``0600`` with a random token
when it is missing); the CLI with :func:`read_token` (which never creates it).  The
token itself is never logged.
"""

from __future__ import annotations

import logging
import os
import secrets
import stat
from pathlib import Path

from aaeventd.errors import ConfigError

log = logging.getLogger(__name__)


def read_token(path: Path) -> str | None:
    """The token in ``path``, as a program that connects reads it.

    Returns:
        ``None`` when the file does not exist (yet: the daemon creates it when it
        starts) or its first line is empty.

    Raises:
        ConfigError: the file exists but cannot be read.
    """
    found = _read(path)
    if found is None:
        return None
    return found[0] or None


def load_or_create_token(path: Path) -> str:
    """The token in ``path``; a new 32-byte random one when the file is missing.

    A token file that other users may read still works, with a warning.

    Raises:
        ConfigError: the file exists but cannot be read or its first line is empty,
            or it is missing and cannot be created.
    """
    found = _read(path)
    if found is None:
        return _create(path)
    token, mode = found
    if not token:
        raise ConfigError("auth.token_file", f"{path} has an empty first line")
    if mode & 0o077:
        log.warning(
            "token file %s is accessible to other users (mode %04o); chmod 600 it",
            path,
            stat.S_IMODE(mode),
        )
    return token


def _read(path: Path) -> tuple[str, int] | None:
    """(the first line stripped, the file's mode), or ``None`` when there is no file.

    Raises:
        ConfigError: the file exists but cannot be read (or is not UTF-8).
    """
    try:
        with path.open(encoding="utf-8") as fh:
            return fh.readline().strip(), os.fstat(fh.fileno()).st_mode
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError("auth.token_file", f"cannot read {path}: {exc}") from exc


def _create(path: Path) -> str:
    token = secrets.token_urlsafe(32)
    # Under a tight umask, so that missing parent directories are 0700 too, whatever
    # the umask the daemon was started with.
    old = os.umask(0o077)
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        raise ConfigError("auth.token_file", f"cannot create {path}: {exc}") from exc
    finally:
        os.umask(old)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(token + "\n")
    log.info("created a new client token in %s", path)
    return token
