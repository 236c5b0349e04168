"""The sources' side: the Unix domain socket server (PROTOCOL §1).

Owns: creating the socket (directory 0700, socket 0600, stale-socket rules),
peer credentials (``SO_PEERCRED``) and the uid check, the connection limit, framing
(via the sans-I/O :class:`~aaeventd.protocol.framer.LineFramer`), parsing and
validating each line, ``hello``/``welcome``, error replies with line numbers, and a
bounded reply buffer per source.

Accepted events go to an :class:`EventSink` (the app), which stamps, journals and
broadcasts them; this module never sees the hub, the journal or a WebSocket.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import itertools
import logging
import os
import select
import socket
import stat
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, cast

from aaeventd import SERVER_NAME, __version__
from aaeventd.daemon.handshakes import LogThrottle
from aaeventd.errors import StartupError
from aaeventd.protocol.codec import decode_object, encode_json
from aaeventd.protocol.errors import ErrorCode, ProtocolError
from aaeventd.protocol.events import validate_event
from aaeventd.protocol.framer import LineFramer, TooLong

log = logging.getLogger("aaeventd.ingest")

# Replies queued for a source that does not read them are dropped past this many bytes
# (about 11,000 acks on top of what the kernel's socket buffer holds).  64 sources that
# never read hold 32 MiB at most: docs/limits.md.
REPLY_BUFFER_LIMIT = 512 << 10
_UCRED = struct.Struct("3i")
# Rejected lines logged one by one per source before the log switches to summaries.
REJECTIONS_LOGGED = 20
# At stop, sources get this long to read the replies queued for them; then their
# connections are aborted, so a source that never reads cannot hold the stop past
# PROTOCOL §5's 5 seconds (on Python >= 3.12 the server's wait_closed waits for them).
SHUTDOWN_DRAIN = 2.0
# After the drain, how long the aborted connections get to be reported lost.
SHUTDOWN_ABORT_WAIT = 1.0


@dataclass(slots=True)
class IngestSettings:
    """Live-reloadable settings of the source side."""

    max_line_bytes: int = 1 << 20
    max_connections: int = 64
    allowed_uids: frozenset[int] = frozenset()
    allow_unknown_types: bool = True
    max_timeout_seconds: float = 3600.0
    # A line in progress keeps the value in force when it started (like max_line_bytes).
    line_timeout_seconds: float = 30.0


class EventSink(Protocol):
    """What the ingest side hands accepted events to (implemented by the app)."""

    def submit(
        self, source: SourceConnection, event: dict[str, Any], event_type: str, raw: bytes
    ) -> None:
        """Take one validated event (``raw``: the line it was parsed from); raise
        ProtocolError to refuse it."""

    def flush(self) -> None:
        """Journal and broadcast everything submitted so far, then send acks."""

    def flush_soon(self) -> None:
        """:meth:`flush` at the end of this turn of the event loop (once, however
        many sources call it): what several sources sent in one turn is one batch."""

    def last_seq(self) -> int:
        """The last seq broadcast so far."""

    def source_closed(self, source: SourceConnection) -> None:
        """The source's connection is gone."""

    def keep_open_after_eof(self, source: SourceConnection) -> bool:
        """Whether a source that closed its write side still awaits an answer."""

    def hold_reply(self, source: SourceConnection, message: dict[str, Any]) -> bool:
        """Queue ``message`` behind the source's held acks; False when none are held."""


class SourceConnection(asyncio.Protocol):
    """One source on the Unix socket: framing, validation and replies."""

    _ids = itertools.count(1)

    def __init__(self, server: IngestServer) -> None:
        self.server = server
        self.id = next(self._ids)
        self.pid: int | None = None
        self.uid: int | None = None
        self.gid: int | None = None
        self.name: str | None = None
        self.wants_ack = False
        self.connected_at = 0.0
        self.events_accepted = 0
        self.errors = 0
        self.dropped_replies = 0
        self.half_closed = False
        self.transport: asyncio.Transport | None = None
        self._framer = LineFramer(server.settings.max_line_bytes)
        self._greeted = False
        self._closed = False
        # One timer per source while a line is unfinished (PROTOCOL §1, line_timeout).
        # It is armed when a partial line starts after an idle stretch; a line starting
        # while it is armed only moves the deadline (no timer churn per line or byte),
        # and the timer re-arms itself for the moved deadline when it fires early.
        self._line_timer: asyncio.TimerHandle | None = None
        self._line_deadline = 0.0
        self._line_timeout = 0.0
        self.log: logging.LoggerAdapter[logging.Logger] = logging.LoggerAdapter(
            log, {"source": self.id}
        )

    # -- asyncio.Protocol --------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A stream transport (asyncio's or uvloop's, which does not subclass it).
        self.transport = transport = cast(asyncio.Transport, transport)
        self.connected_at = asyncio.get_running_loop().time()
        sock = transport.get_extra_info("socket")
        try:
            creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size)
            self.pid, self.uid, self.gid = _UCRED.unpack(creds)
        except OSError as exc:  # pragma: no cover - AF_UNIX always has SO_PEERCRED
            self.log.warning("cannot read peer credentials: %s", exc)
        self.log = logging.LoggerAdapter(log, {"source": self.id, "pid": self.pid, "uid": self.uid})
        server = self.server
        if not server.uid_allowed(self.uid):
            server.refused_forbidden += 1
            self.log.warning("source refused: uid %s is not allowed (pid %s)", self.uid, self.pid)
            self._send_error(ErrorCode.FORBIDDEN, f"uid {self.uid} may not send events", None)
            self._close()
            return
        if len(server.sources) >= server.settings.max_connections:
            server.refused_overloaded += 1
            # A flood of connections past the limit: one line a minute, with counts.
            count = server.overloaded_log.hit(self.connected_at)
            if count is not None:
                self.log.warning(
                    "source refused: %d sources connected (max_connections); %d refused"
                    " since the last report, %d in all",
                    len(server.sources),
                    count,
                    server.overloaded_log.total,
                )
            self._send_error(
                ErrorCode.OVERLOADED,
                f"too many sources (max_connections={server.settings.max_connections})",
                None,
            )
            self._close()
            return
        server.sources[self.id] = self
        self.log.info("source connected: pid=%s uid=%s", self.pid, self.uid)

    def data_received(self, data: bytes) -> None:
        if self._closed:
            return
        framer = self._framer
        framer.max_line_bytes = self.server.settings.max_line_bytes
        lines_before = framer.lines_seen
        try:
            self._process(framer.feed(data))
        except Exception:
            # Our bug, not the peer's: drop this one connection, keep serving the rest.
            self.log.exception("internal error while handling a source; closing it")
            self._close()
            return
        if framer.pending:
            if self._line_timer is None or framer.lines_seen != lines_before:
                self._line_started()
        elif self._line_timer is not None:
            self._line_timer.cancel()
            self._line_timer = None

    def _line_started(self) -> None:
        """A partial line began with this chunk: its deadline starts now."""
        loop = asyncio.get_running_loop()
        self._line_timeout = self.server.settings.line_timeout_seconds
        self._line_deadline = loop.time() + self._line_timeout
        if self._line_timer is None:
            self._line_timer = loop.call_at(self._line_deadline, self._line_timer_fired)

    def _line_timer_fired(self) -> None:
        self._line_timer = None
        if self._closed or not self._framer.pending:
            return
        loop = asyncio.get_running_loop()
        if loop.time() < self._line_deadline:
            # Armed for an earlier line; the unfinished one started later.
            self._line_timer = loop.call_at(self._line_deadline, self._line_timer_fired)
            return
        number = self._framer.lines_seen + 1
        code = ErrorCode.LINE_TIMEOUT
        self.errors += 1
        self.server.rejected[code] = self.server.rejected.get(code, 0) + 1
        self.log.warning(
            "line %d unfinished after %g s (line_timeout_seconds): closing the source",
            number,
            self._line_timeout,
        )
        transport = self.transport
        # A source that does not read its replies will not read this one either: its
        # slot is what matters, so do not wait for a backlog to drain.
        stuck = transport is not None and transport.get_write_buffer_size() > 0
        self._send_error(
            code,
            f"line {number} unfinished after {self._line_timeout:g} s; closing the connection",
            None,
        )
        self._close()
        if stuck and transport is not None:
            transport.abort()

    def eof_received(self) -> bool:
        self._cancel_line_timer()
        if not self._closed:
            self._process(self._framer.eof())
        # Now, not at the end of the turn: the acks must go out before a close below.
        self.server.sink.flush()
        self.half_closed = True
        if self._peer_gone():
            return False  # an exited source: connection_lost follows, and source_gone
        # A source that only shut its write side may still await a confirmation's
        # answer: keep our side open; the app closes us once it has been delivered.
        return self.server.sink.keep_open_after_eof(self)

    def _peer_gone(self) -> bool:
        """True when the peer closed both directions (POLLHUP), not just its writes."""
        sock = self.transport.get_extra_info("socket") if self.transport else None
        if sock is None:  # pragma: no cover - a Unix socket transport always has one
            return True
        poller = select.poll()
        poller.register(sock.fileno(), select.POLLOUT)
        return any(ev & (select.POLLHUP | select.POLLERR) for _, ev in poller.poll(0))

    def connection_lost(self, exc: Exception | None) -> None:
        self._closed = True
        self._cancel_line_timer()
        if self.server.sources.pop(self.id, None) is not None:
            self.log.info(
                "source disconnected: %d events, %d errors, %d replies dropped",
                self.events_accepted,
                self.errors,
                self.dropped_replies,
            )
            self.server.sink.source_closed(self)
            self.server.source_removed()

    # -- lines -------------------------------------------------------------------

    def _process(self, items: list[Any]) -> None:
        sink = self.server.sink
        settings = self.server.settings
        for item in items:
            number = item.number
            try:
                if isinstance(item, TooLong):
                    raise ProtocolError(
                        ErrorCode.LINE_TOO_LONG,
                        f"line {number} is longer than {item.limit} bytes; discarded",
                    )
                event = decode_object(item.data)
                event_type: str = event["type"]
                if not self._greeted:
                    self._greeted = True
                    if event_type == "hello":
                        self._hello(event)
                        continue
                validate_event(
                    event,
                    allow_unknown_types=settings.allow_unknown_types,
                    max_timeout_seconds=settings.max_timeout_seconds,
                )
                sink.submit(self, event, event_type, item.data)
                self.events_accepted += 1
            except ProtocolError as exc:
                self._greeted = True
                # Acks of the lines before this one go out first: replies stay in order.
                sink.flush()
                self.errors += 1
                self.server.rejected[exc.code] = self.server.rejected.get(exc.code, 0) + 1
                self._log_rejection(number, exc)
                self._send_error(exc.code, exc.message, number, exc.details)
        sink.flush_soon()

    def _log_rejection(self, number: int, exc: ProtocolError) -> None:
        # A flooding source must not flood the log: the first few at WARNING, then one
        # summary line per thousand (every rejection is still counted in /metrics).
        errors = self.errors
        if errors <= REJECTIONS_LOGGED:
            self.log.warning("line %d rejected: %s: %s", number, exc.code, exc.message)
        elif errors % 1000 == 0:
            self.log.warning(
                "%d lines rejected so far (latest: line %d, %s)", errors, number, exc.code
            )
        else:
            self.log.debug("line %d rejected: %s: %s", number, exc.code, exc.message)

    def _hello(self, event: dict[str, Any]) -> None:
        name = event.get("name")
        acks = event.get("acks", False)
        details = []
        if name is not None and not isinstance(name, str):
            details.append({"loc": ["name"], "msg": "Input should be a valid string"})
        if not isinstance(acks, bool):
            details.append({"loc": ["acks"], "msg": "Input should be a valid boolean"})
        if details:
            raise ProtocolError(
                ErrorCode.INVALID_EVENT,
                f"hello: {details[0]['loc'][0]}: {details[0]['msg']}",
                details=details,
            )
        self.name = name
        self.wants_ack = acks
        self.log.info("hello from %r (acks=%s)", name, acks)
        self.reply(
            {
                "type": "welcome",
                "server": SERVER_NAME,
                "version": __version__,
                "seq": self.server.sink.last_seq(),
            }
        )

    # -- replies -----------------------------------------------------------------

    def reply(self, message: dict[str, Any]) -> None:
        """Write one NDJSON line; dropped (and counted) when the source does not read.

        While the app holds acks for this source (group commit, PROTOCOL §4) the line
        waits behind them: replies stay in line order.
        """
        if not self.server.sink.hold_reply(self, message):
            self.write_line(encode_json(message))

    def write_line(self, payload: bytes | memoryview) -> None:
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        if transport.get_write_buffer_size() > REPLY_BUFFER_LIMIT:
            self.dropped_replies += 1
            self.server.dropped_replies += 1
            if self.dropped_replies == 1:
                self.log.warning("source does not read its replies; dropping them")
            return
        transport.write(bytes(payload) + b"\n")

    def write_lines(self, payloads: list[bytes]) -> None:
        """Write several NDJSON lines in one write (dropped and counted, each, like
        :meth:`write_line`'s, when the source does not read)."""
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        if transport.get_write_buffer_size() > REPLY_BUFFER_LIMIT:
            self.dropped_replies += len(payloads)
            self.server.dropped_replies += len(payloads)
            if self.dropped_replies == len(payloads):
                self.log.warning("source does not read its replies; dropping them")
            return
        payloads.append(b"")
        transport.write(b"\n".join(payloads))

    def _send_error(
        self,
        code: ErrorCode,
        message: str,
        line: int | None,
        details: list[dict[str, Any]] | None = None,
    ) -> None:
        reply: dict[str, Any] = {"type": "error", "code": str(code), "message": message}
        if line is not None:
            reply["line"] = line
        if details is not None:
            reply["details"] = details
        self.reply(reply)

    def _cancel_line_timer(self) -> None:
        if self._line_timer is not None:
            self._line_timer.cancel()
            self._line_timer = None

    def _close(self) -> None:
        self._closed = True
        self._cancel_line_timer()
        if self.transport is not None:
            self.transport.close()

    def close(self) -> None:
        """Close after the queued replies are written."""
        self._close()

    def abort(self) -> None:
        """Drop the connection now, queued replies and all."""
        self._close()
        if self.transport is not None:
            self.transport.abort()


class IngestServer:
    """Owns the listening socket and the set of connected sources."""

    def __init__(self, settings: IngestSettings, sink: EventSink) -> None:
        self.settings = settings
        self.sink = sink
        self.sources: dict[int, SourceConnection] = {}
        self.own_uid = os.getuid()
        self.refused_forbidden = 0
        self.refused_overloaded = 0
        self.overloaded_log = LogThrottle()
        self.dropped_replies = 0
        self.rejected: dict[str, int] = {}
        self.path: Path | None = None
        self._bound_inode: int | None = None
        self._server: asyncio.Server | None = None
        # Set once the server is closing and the last source is gone.
        self._closing = False
        self._all_gone = asyncio.Event()

    def uid_allowed(self, uid: int | None) -> bool:
        return uid is not None and (uid == self.own_uid or uid in self.settings.allowed_uids)

    async def start(self, *, path: Path | None = None, sock: socket.socket | None = None) -> None:
        """Listen on ``path`` (created as §1 says) or on an inherited socket."""
        loop = asyncio.get_running_loop()
        if sock is None:
            assert path is not None
            sock = bind_unix_socket(path)
            self.path = path
            self._bound_inode = os.stat(path).st_ino
        else:
            sockname = sock.getsockname()
            self.path = Path(sockname) if isinstance(sockname, str) and sockname else path
        self._server = await loop.create_unix_server(lambda: SourceConnection(self), sock=sock)

    async def stop_accepting(self) -> None:
        if self._server is not None:
            self._server.close()

    def source_removed(self) -> None:
        """A source's connection is gone (called once per source, after ``sources``)."""
        if self._closing and not self.sources:
            self._all_gone.set()

    async def close(self) -> None:
        """Close every source and remove our socket file, in bounded time.

        Sources get :data:`SHUTDOWN_DRAIN` seconds to read the replies queued for
        them; the connections of those that do not are then aborted (§5).
        """
        await self.stop_accepting()
        self._closing = True
        for source in list(self.sources.values()):
            source.close()
        if self.sources:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._all_gone.wait(), SHUTDOWN_DRAIN)
        stuck = list(self.sources.values())
        if stuck:
            log.warning(
                "aborted %d source connections that did not read their replies within %.0f s",
                len(stuck),
                SHUTDOWN_DRAIN,
            )
            for source in stuck:
                source.abort()
        if self._server is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._server.wait_closed(), SHUTDOWN_ABORT_WAIT)
        if self.path is not None and self._bound_inode is not None:
            with contextlib.suppress(FileNotFoundError):
                if os.stat(self.path).st_ino == self._bound_inode:
                    os.unlink(self.path)


def bind_unix_socket(path: Path) -> socket.socket:
    """Create the listening socket at ``path``: dir 0700 if missing, socket 0600.

    A stale socket (nobody answers) is replaced; a live one, or a path that is not a
    socket, is refused.  So is a directory another user could tamper with (see
    :func:`_check_directory`).

    Raises:
        StartupError: the path is in use, unsafe or cannot be created.
    """
    try:
        if not path.parent.exists():
            old = os.umask(0o077)
            try:
                path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            finally:
                os.umask(old)
        _check_directory(path.parent)
        _clear_stale(path)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old = os.umask(0o177)
        try:
            sock.bind(str(path))
        finally:
            os.umask(old)
        os.chmod(path, 0o600)
        sock.listen(128)
        sock.setblocking(False)
    except OSError as exc:
        raise StartupError(f"cannot listen on {path}: {exc.strerror or exc}") from exc
    return sock


def _check_directory(directory: Path) -> None:
    """Refuse a socket directory that another user could tamper with.

    Whoever owns the directory (or can write to it without the sticky bit) can remove
    our socket and put their own in its place: sources would then send their events,
    and take their confirmation answers, from that user.  The directory (and the
    symlink naming it, if it is one) must belong to us or to root, and must not be
    world-writable unless sticky (like ``/tmp``).  This matters for the fallback
    ``/tmp/aaeventd-$UID``, which any local user could create first.

    Raises:
        StartupError: the directory is unsafe.
    """
    own = os.getuid()
    for st in (os.lstat(directory), os.stat(directory)):
        if st.st_uid not in (own, 0):
            raise StartupError(
                f"{directory} belongs to uid {st.st_uid}, not to us (uid {own}):"
                " refusing to put the socket there"
            )
    mode = os.stat(directory).st_mode
    if mode & stat.S_IWOTH and not mode & stat.S_ISVTX:
        raise StartupError(
            f"{directory} is writable by every user (mode {stat.S_IMODE(mode):04o},"
            " not sticky): refusing to put the socket there"
        )


def _clear_stale(path: Path) -> None:
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise StartupError(f"{path} exists and is not a socket; refusing to replace it")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(1.0)
    try:
        probe.connect(str(path))
    except OSError as exc:
        if exc.errno not in (errno.ECONNREFUSED, errno.ENOENT):
            raise StartupError(f"cannot probe existing socket {path}: {exc}") from exc
        log.warning("replacing stale socket %s", path)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
    else:
        raise StartupError(f"another daemon is listening on {path}")
    finally:
        probe.close()
