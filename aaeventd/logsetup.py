"""Logging: stderr handler in text or JSON, and redaction of sensitive fields (§4).

Owns the ``aaeventd`` logger's handler and formatter.  journald keeps stderr under
systemd, so there is no file logging.  :func:`redact` is what every log line that
shows a source's payload goes through.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Iterable
from typing import Any, TextIO

ROOT = "aaeventd"
REDACTED = "***"
# The per-connection context our LoggerAdapters add (other libraries' extras, such as
# websockets' weak reference to its connection, are left out).
CONTEXT_KEYS = ("source", "pid", "uid", "client")


def redact(value: Any, fields: frozenset[str]) -> Any:
    """A copy of ``value`` with the values of keys in ``fields`` (lower-case) masked.

    Matching is case-insensitive, at any depth, inside lists too.
    """
    if isinstance(value, dict):
        return {
            k: (REDACTED if isinstance(k, str) and k.lower() in fields else redact(v, fields))
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [redact(v, fields) for v in value]
    return value


class TextFormatter(logging.Formatter):
    """``2026-02-04T10:30:00.123Z INFO aaeventd.app: message [key=value ...]``."""

    def format(self, record: logging.LogRecord) -> str:
        attrs = record.__dict__
        context = " ".join(f"{k}={attrs[k]}" for k in CONTEXT_KEYS if attrs.get(k) is not None)
        line = f"{_iso(record.created)} {record.levelname} {record.name}: {record.getMessage()}"
        if context:
            line += f" [{context}]"
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ``ts``, ``level``, ``logger``, ``msg`` and context."""

    def format(self, record: logging.LogRecord) -> str:
        obj: dict[str, Any] = {
            "ts": _iso(record.created),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        attrs = record.__dict__
        for key in CONTEXT_KEYS:
            if attrs.get(key) is not None:
                obj[key] = attrs[key]
        if record.exc_info:
            obj["exc"] = self.formatException(record.exc_info)
        return json.dumps(obj, ensure_ascii=False, default=str)


def _iso(created: float) -> str:
    ms = int(created * 1000) % 1000
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(created)) + f".{ms:03d}Z"


def configure_logging(level: str, fmt: str, stream: TextIO | None = None) -> None:
    """(Re)configure the ``aaeventd`` logger; safe to call again on reload."""
    logger = logging.getLogger(ROOT)
    logger.setLevel(level)
    logger.propagate = False
    handler = next((h for h in logger.handlers if getattr(h, "_aaeventd", False)), None)
    if handler is None:
        handler = logging.StreamHandler(stream or sys.stderr)
        handler._aaeventd = True  # type: ignore[attr-defined]
        logger.addHandler(handler)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    # websockets logs every connection and HTTP response at INFO: keep that for DEBUG.
    ws_level = logging.DEBUG if logger.level <= logging.DEBUG else logging.WARNING
    logging.getLogger(f"{ROOT}.websockets").setLevel(ws_level)


def redact_set(fields: Iterable[str]) -> frozenset[str]:
    return frozenset(f.lower() for f in fields)
