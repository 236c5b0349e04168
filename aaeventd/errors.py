"""The exception hierarchy shared by every aaeventd module.

A *peer's* mistake (a bad line from a source, a bad frame from a client) is data:
it becomes an error reply with a code (see :mod:`aaeventd.protocol.errors`), never an
exception that escapes a connection.  Our own failures raise one of these.

This module imports nothing from aaeventd, so every layer may import it.
"""

from __future__ import annotations


class AaeventdError(Exception):
    """Root of every exception aaeventd raises on purpose."""


class ConfigError(AaeventdError):
    """The configuration is invalid (exit code 2).

    Attributes:
        key: dotted path of the offending key (``websocket.port``), or ``""`` when the
            whole document is at fault (not YAML, not a mapping).
        reason: human-readable explanation.
    """

    def __init__(self, key: str, reason: str, *, source: str | None = None) -> None:
        self.key = key
        self.reason = reason
        self.source = source
        where = f"{source}: " if source else ""
        super().__init__(f"{where}{key}: {reason}" if key else f"{where}{reason}")


class StartupError(AaeventdError):
    """The daemon cannot start for a reason other than config (exit code 1)."""
