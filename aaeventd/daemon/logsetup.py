"""Logging: stderr handler in text or JSON, and redaction of sensitive fields (§4).

Owns the ``aaeventd`` logger's handler and formatter.  journald keeps stderr under
systemd, so there is no file logging.  :func:`redact` is what every log line that
shows a source's payload goes through.
"""

from __future__ import annotations

import contextlib
import json
import logging
import sys
from collections.abc import Iterable, Iterator
from typing import Any, TextIO

from aaeventd.protocol.codec import rfc3339_utc

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
    # The same format as event timestamps, and its per-second cache.
    return rfc3339_utc(created)


class BatchingHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """A stderr handler that writes through a block buffer.

    Outside a batch every record is flushed at once, as usual.  Inside
    :func:`log_batch` (one burst of events) the lines pile up in the buffer and go out
    in one ``write(2)`` when the batch ends, instead of one per event.
    """

    def __init__(self, stream: TextIO) -> None:
        super().__init__(stream)
        self.batching = 0

    def flush(self) -> None:
        if not self.batching:
            super().flush()


def _our_handler() -> BatchingHandler | None:
    for handler in logging.getLogger(ROOT).handlers:
        if isinstance(handler, BatchingHandler):
            return handler
    return None


@contextlib.contextmanager
def log_batch() -> Iterator[None]:
    """Hold log output until the block ends (then write it in one go)."""
    handler = _our_handler()
    if handler is None:
        yield
        return
    handler.batching += 1
    try:
        yield
    finally:
        handler.batching -= 1
        handler.flush()


def configure_logging(level: str, fmt: str, stream: TextIO | None = None) -> None:
    """(Re)configure the ``aaeventd`` logger; safe to call again on reload.

    Also turns off what the logging module collects per record and we never show
    (caller frame, thread and process names): that is most of a record's cost.
    """
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    logging._srcfile = None  # documented in logging: skips findCaller
    logger = logging.getLogger(ROOT)
    logger.setLevel(level)
    logger.propagate = False
    handler = _our_handler()
    if handler is None:
        if stream is None:
            # stderr is line-buffered (one write(2) per line); this buffer is not.
            stream = open(  # noqa: SIM115 - lives as long as the process
                sys.stderr.fileno(),
                "w",
                buffering=1 << 16,
                encoding="utf-8",
                errors="backslashreplace",
                closefd=False,
            )
        handler = BatchingHandler(stream)
        logger.addHandler(handler)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    # websockets logs every connection and HTTP response at INFO: keep that for DEBUG.
    ws_level = logging.DEBUG if logger.level <= logging.DEBUG else logging.WARNING
    logging.getLogger(f"{ROOT}.websockets").setLevel(ws_level)


def redact_set(fields: Iterable[str]) -> frozenset[str]:
    return frozenset(f.lower() for f in fields)
