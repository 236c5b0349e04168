"""Logging: stderr lines in text or JSON, journald, and redaction (PROTOCOL §4).

Owns the ``aaeventd`` logger's handler and formatter.  journald keeps stderr under
systemd, so there is no file logging.  :func:`redact` is what every log line that
shows a source's payload goes through.

Where records go (``logging.target``):

* ``stderr``: lines on stderr.  When ``$JOURNAL_STREAM`` names stderr's
  ``device:inode`` (stderr *is* journald's stream, systemd.exec(5)), each record is
  one line that starts with its ``<N>`` syslog priority (sd-daemon(3)), has no
  timestamp of its own (journald stamps it) and has its newlines escaped, so a
  traceback stays one entry at the right priority.
* ``journal``: the native journal protocol (one ``AF_UNIX``/``SOCK_DGRAM`` datagram
  per record to ``/run/systemd/journal/socket``): ``MESSAGE``, ``PRIORITY``,
  ``SYSLOG_IDENTIFIER=aaeventd``, the connection context as ``AAEVENTD_SOURCE``,
  ``AAEVENTD_SOURCE_PID``, ``AAEVENTD_SOURCE_UID``, ``AAEVENTD_CLIENT``, and for the
  per-event INFO line ``AAEVENTD_SEQ``, ``AAEVENTD_TYPE``, ``AAEVENTD_SKILL`` (and
  ``AAEVENTD_SOURCE_PID``).  A value with a newline uses the protocol's binary,
  length-prefixed form.  A record too big for a datagram (``EMSGSIZE``) goes, as
  ``sd_journal_send`` does it, as a sealed memfd passed with ``SCM_RIGHTS``.  Any
  other failure (no socket, journald restarting, its queue full: the socket never
  blocks the event loop) writes that record to stderr instead, as ``stderr`` would,
  and one WARNING there says so until a send works again.
* ``auto`` (default): ``journal`` when ``$JOURNAL_STREAM`` says stderr goes to
  journald, else ``stderr``.

``$AAEVENTD_JOURNAL_SOCKET`` replaces the journal socket's path: for tests only.
"""

from __future__ import annotations

import array
import contextlib
import errno
import fcntl
import json
import logging
import os
import socket
import struct
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any, Literal, TextIO

from aaeventd.protocol.codec import rfc3339_utc

ROOT = "aaeventd"
REDACTED = "***"
# The per-connection context our LoggerAdapters add (other libraries' extras, such as
# websockets' weak reference to its connection, are left out).
CONTEXT_KEYS = ("source", "pid", "uid", "client")
# ... and their journal field names.
CONTEXT_FIELDS = {
    "source": "AAEVENTD_SOURCE",
    "pid": "AAEVENTD_SOURCE_PID",
    "uid": "AAEVENTD_SOURCE_UID",
    "client": "AAEVENTD_CLIENT",
}

Target = Literal["auto", "stderr", "journal"]
JOURNAL_SOCKET = "/run/systemd/journal/socket"
JOURNAL_SOCKET_ENV = "AAEVENTD_JOURNAL_SOCKET"  # tests only
IDENTIFIER = "aaeventd"
# The per-event INFO line (daemon/app.py ``_log_event``): its arguments become fields.
EVENTS_LOGGER = "aaeventd.events"
EVENT_LINE = "event seq=%d type=%s pid=%s skill=%s step=%s delivered=%d"
# How long the per-event lines may wait in the buffer for the next batches' (log_batch).
EVENT_LINES_DELAY = 0.05
EventArgs = tuple[int, str, Any, Any, Any, int]
"""``EVENT_LINE``'s arguments: seq, type, source pid, skill, step, delivered."""


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
        return f"{_iso(record.created)} {record.levelname} {_message(record, self)}"


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ``ts``, ``level``, ``logger``, ``msg`` and context.

    ``stamped=False`` leaves ``ts`` out (journald stamps each line itself).
    """

    def __init__(self, *, stamped: bool = True) -> None:
        super().__init__()
        self.stamped = stamped

    def format(self, record: logging.LogRecord) -> str:
        obj: dict[str, Any] = {"ts": _iso(record.created)} if self.stamped else {}
        obj["level"] = record.levelname
        obj["logger"] = record.name
        obj["msg"] = record.getMessage()
        attrs = record.__dict__
        for key in CONTEXT_KEYS:
            if attrs.get(key) is not None:
                obj[key] = attrs[key]
        if record.exc_info:
            obj["exc"] = self.formatException(record.exc_info)
        return json.dumps(obj, ensure_ascii=False, default=str)


def syslog_priority(levelno: int) -> int:
    """The syslog priority of a logging level: 2 critical, 3 error, 4 warning, 6 info, 7 debug."""
    if levelno >= logging.CRITICAL:
        return 2
    if levelno >= logging.ERROR:
        return 3
    if levelno >= logging.WARNING:
        return 4
    if levelno >= logging.INFO:
        return 6
    return 7


def _one_line(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n").replace("\r", "\\r")


class PrefixedFormatter(logging.Formatter):
    """Lines for a stderr that is journald's stream: ``<N>`` first, no timestamp, one line.

    ``<6>INFO aaeventd.app: message [key=value ...]`` (text; a traceback follows with
    its newlines escaped as ``\\n``, backslashes doubled) or ``<6>{...}`` (JSON, whose
    strings escape newlines already; no ``ts``).
    """

    def __init__(self, fmt: str) -> None:
        super().__init__()
        self.json = JsonFormatter(stamped=False) if fmt == "json" else None

    def format(self, record: logging.LogRecord) -> str:
        prefix = f"<{syslog_priority(record.levelno)}>"
        if self.json is not None:
            return prefix + self.json.format(record)
        return f"{prefix}{record.levelname} {_one_line(_message(record, self))}"


def _message(record: logging.LogRecord, formatter: logging.Formatter) -> str:
    """``logger: message [key=value ...]`` and the traceback, if any, after a newline."""
    attrs = record.__dict__
    context = " ".join(f"{k}={attrs[k]}" for k in CONTEXT_KEYS if attrs.get(k) is not None)
    text = f"{record.name}: {record.getMessage()}"
    if context:
        text += f" [{context}]"
    if record.exc_info:
        text += "\n" + formatter.formatException(record.exc_info)
    return text


def stderr_is_journal(env: Mapping[str, str] | None = None) -> bool:
    """Whether ``$JOURNAL_STREAM`` (``device:inode``) names what fd 2 is (systemd.exec(5))."""
    value = (os.environ if env is None else env).get("JOURNAL_STREAM", "")
    device, sep, inode = value.partition(":")
    try:
        st = os.fstat(2)
        return bool(sep) and (st.st_dev, st.st_ino) == (int(device), int(inode))
    except (OSError, ValueError):
        return False


def _field(name: bytes, value: str) -> bytes:
    data = value.encode("utf-8", "backslashreplace")
    if b"\n" in data:
        # The binary form: name, newline, little-endian 64-bit length, value, newline.
        return name + b"\n" + struct.pack("<Q", len(data)) + data + b"\n"
    return name + b"=" + data + b"\n"


class JournalSender:
    """Records as native journal protocol datagrams (systemd's ``sd_journal_send``)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        # Never block the event loop on journald: a full queue falls back to stderr.
        self.sock.setblocking(False)
        self._head = _field(b"SYSLOG_IDENTIFIER", IDENTIFIER)

    def close(self) -> None:
        self.sock.close()

    def datagram(self, record: logging.LogRecord, formatter: logging.Formatter) -> bytes:
        """One record as a journal entry: its fields, each ``NAME=value\\n`` or binary."""
        parts = [
            _field(b"MESSAGE", _message(record, formatter)),
            b"PRIORITY=%d\n" % syslog_priority(record.levelno),
            self._head,
        ]
        attrs = record.__dict__
        for key, name in CONTEXT_FIELDS.items():
            value = attrs.get(key)
            if value is not None:
                parts.append(_field(name.encode(), str(value)))
        args = record.args
        if record.msg == EVENT_LINE and isinstance(args, tuple) and record.name == EVENTS_LOGGER:
            seq, kind, pid, skill = args[0], args[1], args[2], args[3]
            parts.append(_field(b"AAEVENTD_SEQ", str(seq)))
            parts.append(_field(b"AAEVENTD_TYPE", str(kind)))
            if pid != "-":
                parts.append(_field(b"AAEVENTD_SOURCE_PID", str(pid)))
            if skill != "-":
                parts.append(_field(b"AAEVENTD_SKILL", str(skill)))
        return b"".join(parts)

    def event_datagram(self, args: EventArgs) -> bytes:
        """The entry :meth:`datagram` makes of an ``EVENT_LINE`` record with ``args``."""
        seq, kind, pid, skill = args[0], args[1], args[2], args[3]
        parts = [
            _field(b"MESSAGE", f"{EVENTS_LOGGER}: {EVENT_LINE % args}"),
            b"PRIORITY=6\n",
            self._head,
            _field(b"AAEVENTD_SEQ", str(seq)),
            _field(b"AAEVENTD_TYPE", str(kind)),
        ]
        if pid != "-":
            parts.append(_field(b"AAEVENTD_SOURCE_PID", str(pid)))
        if skill != "-":
            parts.append(_field(b"AAEVENTD_SKILL", str(skill)))
        return b"".join(parts)

    def send(self, data: bytes) -> None:
        """Send one entry; raises OSError when journald cannot take it."""
        try:
            self.sock.sendto(data, self.path)
        except OSError as exc:
            if exc.errno not in (errno.EMSGSIZE, errno.ENOBUFS):
                raise
            self._send_memfd(data)

    def _send_memfd(self, data: bytes) -> None:
        # Too big for a datagram: a sealed memfd, passed alone (sd_journal_send's way).
        fd = os.memfd_create("journal-data", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            seals = fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_WRITE | fcntl.F_SEAL_SEAL
            fcntl.fcntl(fd, fcntl.F_ADD_SEALS, seals)
            rights = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [fd]).tobytes())]
            self.sock.sendmsg([], rights, 0, self.path)
        finally:
            os.close(fd)


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
        self.flush_pending = False  # a deferred flush is scheduled (log_batch)
        # With the journal target: where records go first, and how to show them there.
        self.journal: JournalSender | None = None
        self.journal_formatter = logging.Formatter()
        self.journal_failing = False

    def flush(self) -> None:
        if not self.batching:
            self.flush_pending = False
            super().flush()

    def deferred_flush(self) -> None:
        """The flush :func:`log_batch` put off, unless one ran meanwhile."""
        if self.flush_pending:
            self.flush()

    def emit(self, record: logging.LogRecord) -> None:
        journal = self.journal
        if journal is not None:
            try:
                journal.send(journal.datagram(record, self.journal_formatter))
            except OSError as exc:
                self._journal_failed(exc)
            except Exception:
                self.handleError(record)
                return
            else:
                self.journal_failing = False
                return
        super().emit(record)

    def write_events(self, lines: list[EventArgs]) -> None:
        """Write per-event INFO lines of ``aaeventd.events`` without a LogRecord each.

        The same text (or journal entry) :meth:`emit` makes of
        ``logging.getLogger("aaeventd.events").info(EVENT_LINE, *args)``, for the
        formatters of this module: the hot path's log line (docs/performance.md) skips
        the record, the logger walk and the generic formatting.  Only called when
        :func:`event_writer` found this handler alone on the path.
        """
        if not lines:
            return
        created = time.time()
        journal = self.journal
        with self.lock:  # type: ignore[union-attr]  # created by Handler.__init__
            if journal is not None:
                for args in lines:
                    try:
                        journal.send(journal.event_datagram(args))
                    except OSError as exc:
                        self._journal_failed(exc)
                        self._write_event_lines([args], created)
                    else:
                        self.journal_failing = False
            else:
                self._write_event_lines(lines, created)
            self.flush()

    def _write_event_lines(self, lines: list[EventArgs], created: float) -> None:
        fmt = self.formatter
        head = f"{EVENTS_LOGGER}: "
        if isinstance(fmt, TextFormatter):
            head = f"{_iso(created)} INFO {head}"
            text = "".join(f"{head}{EVENT_LINE % args}\n" for args in lines)
        elif isinstance(fmt, PrefixedFormatter) and fmt.json is None:
            text = "".join(f"<6>INFO {_one_line(head + EVENT_LINE % args)}\n" for args in lines)
        else:  # JSON, with or without the <6> prefix
            prefix = "<6>" if isinstance(fmt, PrefixedFormatter) else ""
            stamp: dict[str, Any] = {} if prefix else {"ts": _iso(created)}
            text = "".join(
                prefix
                + json.dumps(
                    {**stamp, "level": "INFO", "logger": EVENTS_LOGGER, "msg": EVENT_LINE % args},
                    ensure_ascii=False,
                    default=str,
                )
                + "\n"
                for args in lines
            )
        self.stream.write(text)

    def _journal_failed(self, exc: OSError) -> None:
        if self.journal_failing:
            return
        self.journal_failing = True
        assert self.journal is not None
        note = logging.LogRecord(
            ROOT,
            logging.WARNING,
            __file__,
            0,
            "cannot send to the journal socket %s (%s); logging to stderr until it works",
            (self.journal.path, exc.strerror or exc),
            None,
        )
        super().emit(note)


def _our_handler() -> BatchingHandler | None:
    for handler in _LOGGERS[1].handlers:
        if isinstance(handler, BatchingHandler):
            return handler
    return None


# Loggers live as long as the process: looked up once (getLogger takes a lock).
_LOGGERS = (logging.getLogger(EVENTS_LOGGER), logging.getLogger(ROOT))


def event_writer() -> Callable[[list[EventArgs]], None] | None:
    """:meth:`BatchingHandler.write_events` when INFO lines of ``aaeventd.events`` would
    reach that handler alone, through no filter, in one of this module's formats; else
    None, and the caller logs each line through the logger (tests' capture handlers,
    a DEBUG setup with extra handlers, logging not configured by us)."""
    events, root = _LOGGERS
    handler = _our_handler()
    if (
        handler is None
        or not events.isEnabledFor(logging.INFO)
        or events.handlers
        or events.filters
        or not events.propagate
        or root.filters
        or root.propagate
        or root.handlers != [handler]
        or handler.filters
        or handler.level > logging.INFO
        or type(handler.formatter) not in (TextFormatter, JsonFormatter, PrefixedFormatter)
        or (isinstance(handler.formatter, JsonFormatter) and not handler.formatter.stamped)
    ):
        return None
    return handler.write_events


@contextlib.contextmanager
def log_batch(
    defer: Callable[[float, Callable[[], None]], object] | None = None,
) -> Iterator[None]:
    """Hold log output until the block ends, then write it in one go.

    With ``defer`` (``loop.call_later``), the write waits up to
    :data:`EVENT_LINES_DELAY` instead, sharing one ``write(2)`` with the batches of
    the next turns of the loop: at a moderate rate a turn holds a few events, and a
    write to a log file per turn was a third of the server's CPU for 10 clients at
    2,000 events/s (docs/performance.md).  A record outside a batch (a warning,
    another logger) still writes at once, and so everything before it.
    """
    handler = _our_handler()
    if handler is None:
        yield
        return
    handler.batching += 1
    try:
        yield
    finally:
        handler.batching -= 1
        if defer is None or handler.batching:
            handler.flush()
        elif not handler.flush_pending:
            handler.flush_pending = True
            defer(EVENT_LINES_DELAY, handler.deferred_flush)


def configure_logging(
    level: str, fmt: str, stream: TextIO | None = None, target: Target = "stderr"
) -> None:
    """(Re)configure the ``aaeventd`` logger; safe to call again on reload.

    ``target`` is ``logging.target`` (see the module's docstring).  Also turns off
    what the logging module collects per record and we never show (caller frame,
    thread and process names): that is most of a record's cost.
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
    to_journal = stderr_is_journal()
    if to_journal:
        handler.setFormatter(PrefixedFormatter(fmt))
    else:
        handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    if handler.journal is not None:
        handler.journal.close()
        handler.journal = None
    if target == "journal" or (target == "auto" and to_journal):
        try:
            handler.journal = JournalSender(os.environ.get(JOURNAL_SOCKET_ENV) or JOURNAL_SOCKET)
        except OSError as exc:  # no AF_UNIX sockets left: stay on stderr
            logger.warning("cannot open a journal socket (%s); logging to stderr", exc)
        handler.journal_failing = False
    # websockets logs every connection and HTTP response at INFO: keep that for DEBUG.
    ws_level = logging.DEBUG if logger.level <= logging.DEBUG else logging.WARNING
    logging.getLogger(f"{ROOT}.websockets").setLevel(ws_level)


def redact_set(fields: Iterable[str]) -> frozenset[str]:
    return frozenset(f.lower() for f in fields)
