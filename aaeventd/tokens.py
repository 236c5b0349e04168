"""The optional client token (``auth.token_file``, PROTOCOL §2.4).

Reads the file's first line (whitespace stripped), or creates the file ``0600``
with a random token when it is missing.  The token itself is never logged.
"""

from __future__ import annotations

import logging
import os
import secrets
from pathlib import Path

from aaeventd.errors import ConfigError

log = logging.getLogger(__name__)


def load_or_create_token(path: Path) -> str:
    """The token in ``path``; a new 32-byte random one when the file is missing.

    Raises:
        ConfigError: the file exists but cannot be read or its first line is empty.
    """
    try:
        with path.open(encoding="utf-8") as fh:
            token = fh.readline().strip()
    except FileNotFoundError:
        token = secrets.token_urlsafe(32)
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(token + "\n")
        log.info("created a new client token in %s", path)
        return token
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError("auth.token_file", f"cannot read {path}: {exc}") from exc
    if not token:
        raise ConfigError("auth.token_file", f"{path} has an empty first line")
    return token
