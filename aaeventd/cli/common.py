"""What the ``aaeventd`` commands share: exit codes, the error line, the config, the
daemon's address and the token.

Nothing here talks to the daemon; :mod:`aaeventd.cli.status` (HTTP),
:mod:`aaeventd.cli.watch` and :mod:`aaeventd.cli.confirm` (WebSocket) do.
"""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING, TextIO

from aaeventd.endpoints import http_base, url_host, websocket_url
from aaeventd.errors import AaeventdError
from aaeventd.tokens import read_token

if TYPE_CHECKING:
    # Imported where used: ``aaeventd --version`` and ``--help`` never load pydantic.
    from aaeventd.config import Config

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2
# Ctrl-C: 128 + SIGINT, as a shell reports a command it interrupted.
EXIT_INTERRUPTED = 130

REMEMBER_CHOICES = ("none", "this-error", "this-skill", "always")


class CommandFailed(AaeventdError):
    """A command cannot do its job: the message goes to stderr, ``code`` is the exit code."""

    def __init__(self, message: str, code: int = EXIT_FAILURE) -> None:
        super().__init__(message)
        self.code = code


def err(text: str, stream: TextIO | None = None) -> None:
    print(f"aaeventd: {text}", file=stream or sys.stderr)


def load(args: argparse.Namespace) -> tuple[Config, str | None]:
    from aaeventd.config import load_config

    return load_config(getattr(args, "config", None))


def configured_token(config: Config) -> str | None:
    """The configured token (:func:`aaeventd.tokens.read_token` of ``auth.token_file``).

    Returns:
        ``None`` when no token is configured, or the file does not exist yet (the
        daemon creates it when it starts) or its first line is empty.

    Raises:
        ConfigError: the file exists but cannot be read.
    """
    from aaeventd.config import resolve_token_file

    token_file = resolve_token_file(config)
    return None if token_file is None else read_token(token_file)


def daemon_base(config: Config, args: argparse.Namespace) -> str:
    """The daemon's ``http://HOST:PORT/``: from ``--url`` (http(s) or ws(s)), else the config.

    Raises:
        CommandFailed: (exit 2) a malformed ``--url``, or port 0 in the config.
    """
    if args.url:
        try:
            return http_base(args.url)
        except ValueError as exc:
            raise bad_url(args.url) from exc
    if config.websocket.port == 0:
        raise CommandFailed(
            "websocket.port is 0 in the config: the daemon picked its port at start "
            "(its log says which); pass --url http://127.0.0.1:PORT/",
            EXIT_USAGE,
        )
    return f"http://{url_host(config.websocket.host)}:{config.websocket.port}/"


def stream_url(
    config: Config, args: argparse.Namespace, *, types: str | None = None, token: str | None = None
) -> str:
    """The WebSocket URL of ``watch`` and ``confirm``: ``--url`` (its path and query
    kept) or the config's address, as :func:`aaeventd.endpoints.websocket_url` makes it.

    Raises:
        CommandFailed: as :func:`daemon_base`.
    """
    try:
        return websocket_url(args.url or daemon_base(config, args), types=types, token=token)
    except ValueError as exc:
        raise bad_url(args.url) from exc


def bad_url(url: str) -> CommandFailed:
    return CommandFailed(
        f"--url must look like http://127.0.0.1:9876/ (or ws://...), got {url!r}", EXIT_USAGE
    )
