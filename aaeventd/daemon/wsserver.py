"""The clients' side: the WebSocket server and the per-client send path (PROTOCOL §2).

Owns: ``websockets.asyncio.server.serve`` wiring, one :class:`ClientSession` per
connection (filter, counters, backlog), the fan-out of already-encoded frames, client
messages (``heartbeat``, ``subscribe``; the rest goes to the :class:`ClientSink`), and
the slow-consumer close, and the memory budgets of §2.3: each client holds at most
``slow_client_buffer_bytes`` unsent (a replay included: it is written a piece at a
time, as the client reads), and all clients together at most
``clients_buffer_budget_bytes`` (past it, the largest backlogs are closed as slow
consumers).

The fan-out is the hot path.  A server frame is unmasked, so without compression it
is the same bytes for every client: each event is framed once (by the hub) and the
per-client work is "append these bytes to that client's transport".  Frames are
written straight to the transport, bypassing websockets' per-message send path (which
re-frames the message for every connection); websockets keeps handling the opening
handshake, pings, incoming frames and the closing handshake.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import itertools
import logging
import re
import socket
from collections.abc import AsyncGenerator, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol
from urllib.parse import parse_qs, urlsplit

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.protocol import State

from aaeventd.daemon.handshakes import HandshakeGuard
from aaeventd.daemon.hub import Stamped
from aaeventd.daemon.web import HttpFront
from aaeventd.protocol.codec import decode_client_message, encode_json, ws_text_frame
from aaeventd.protocol.errors import ProtocolError
from aaeventd.protocol.events import ClientMessage, Heartbeat, Subscribe, parse_client_message
from aaeventd.protocol.filters import TypeFilter

log = logging.getLogger("aaeventd.wsserver")

# Close code and reason for a client that does not keep up (§2.3).
SLOW_CLOSE_CODE = 1013
SLOW_CLOSE_REASON = "slow consumer"

# At stop, clients get this long to complete the closing handshake (read what is
# buffered and the 1001 close frame); then their connections are aborted, so a client
# that never reads cannot hold the stop past PROTOCOL §5's 5 seconds.
SHUTDOWN_GRACE = 2.0
# After the grace, how long the aborted connections' handlers get to finish.
SHUTDOWN_ABORT_WAIT = 1.0
# A replay is written in pieces of about this many bytes (or this many events looked
# at), each after the client has read the one before (drain): a client that asked for
# a replay and does not read holds one piece, not the replay.
REPLAY_PIECE_BYTES = 64 << 10
REPLAY_PIECE_EVENTS = 2000
# websockets' queue of incoming frames per client, as (high, low) water marks: past
# ``high`` frames it stops reading the socket, below ``low`` it reads again.  The handler
# takes each message as soon as it runs and handles it without awaiting, so the queue
# only fills while the handler waits on something else (a replay written at the
# client's pace): one frame of slack is enough.  A client then holds at most ``high``
# frames, those decoded from the one socket read that passed the mark (asyncio reads
# 256 KiB at a time) and one partial frame: (1 + 4 + 1) x 64 KiB = 384 KiB with the
# default max_message_bytes, instead of 1.3 MiB with websockets' default of 16 frames.
INCOMING_QUEUE = (1, 0)
# Control replies a client may have waiting behind its own held answer (group commit,
# PROTOCOL §4) before it is closed as a slow consumer: it sends that much in one fsync.
MAX_CONTROL_HELD = 256


# The client token (PROTOCOL §2.4) is never logged, but websockets' debug log shows the
# request line (``GET /?token=...``) and every header (``Authorization: Bearer ...``).
_TOKEN_QUERY = re.compile(r"([?&]token=)[^&\s#]*", re.IGNORECASE)
_AUTH_HEADER = re.compile(r"^([<>] authorization: ).*$", re.IGNORECASE | re.MULTILINE)


class RedactTokens(logging.Filter):
    """Masks ``token=`` query values and ``Authorization`` header values in records."""

    def filter(self, record: logging.LogRecord) -> bool:
        text = record.getMessage()
        redacted = _AUTH_HEADER.sub(r"\1***", _TOKEN_QUERY.sub(r"\1***", text))
        if redacted != text:
            record.msg = redacted
            record.args = None
        return True


def websockets_logger() -> logging.Logger:
    """The logger given to websockets, with :class:`RedactTokens` attached once."""
    logger = logging.getLogger("aaeventd.websockets")
    if not any(isinstance(f, RedactTokens) for f in logger.filters):
        logger.addFilter(RedactTokens())
    return logger


@dataclass(slots=True)
class StreamSettings:
    """Live-reloadable settings of the send path."""

    slow_client_buffer_bytes: int = 4 << 20
    clients_buffer_budget_bytes: int = 64 << 20
    close_timeout: float = 10.0


@dataclass(slots=True)
class StreamStart:
    """What a new client gets before live events, in this order.

    ``head`` (``connected``, maybe a ``replay_gap``), then, when ``replay`` is
    ``(after, upto)``, the events ``after < seq <= upto`` (read a piece at a time with
    :meth:`ClientSink.replay_piece`); live events after ``upto`` wait until then.
    """

    head: list[bytes]
    replay: tuple[int, int] | None = None


@dataclass(slots=True)
class ReplayPiece:
    """The next piece of a replay: ``frames`` to write, or a seq range ``backfill``
    to read from the journal; either way the replay goes on after ``last``."""

    last: int
    frames: list[bytes] = field(default_factory=list)
    backfill: tuple[int, int] | None = None


class ClientSink(Protocol):
    """What the WebSocket side needs from the app."""

    def open_stream(
        self, session: ClientSession, since: int | None, epoch: str | None
    ) -> StreamStart:
        """The snapshot and replay plan for a new client."""

    def replay_piece(self, after: int, upto: int, type_filter: TypeFilter) -> ReplayPiece:
        """The next piece of the replay ``after < seq <= upto``, from memory."""

    def backfill(
        self, seqs: tuple[int, int], type_filter: TypeFilter
    ) -> AsyncGenerator[tuple[bytes, int], None]:
        """Frames (and their count) for the events in ``seqs`` from the journal."""

    def client_message(self, session: ClientSession, message: ClientMessage) -> None:
        """A confirmation answer or timer message; raise ProtocolError to refuse it."""

    def client_closed(self, session: ClientSession) -> None:
        """The client is gone."""


class ClientSession:
    """One connected client: its filter, counters and raw send path."""

    __slots__ = (
        "_abort",
        "_on_slow",
        "address",
        "closing",
        "conn",
        "connected_at",
        "control_held",
        "counted",
        "filter",
        "frames_sent",
        "held",
        "held_bytes",
        "id",
        "log",
        "settings",
        "transport",
        "user_agent",
    )

    def __init__(
        self,
        cid: str,
        conn: ServerConnection,
        type_filter: TypeFilter,
        settings: StreamSettings,
        connected_at: float,
        on_slow: Callable[[], None] = lambda: None,
    ) -> None:
        self.id = cid
        self._on_slow = on_slow  # counts a slow-consumer close when it happens
        self.conn = conn
        self.transport = conn.transport
        self.filter = type_filter
        self.settings = settings
        self.connected_at = connected_at
        self.frames_sent = 0
        self.closing = False
        # While a replay is read from the journal, live frames wait here (bounded).
        self.held: list[tuple[bytes, int]] | None = None
        self.held_bytes = 0
        # While this client's confirmation answer waits for its fsync (group commit),
        # control replies wait here: the outcome of a message comes before the replies
        # to the messages after it (a heartbeat right after an answer is a barrier).
        self.control_held: list[dict[str, Any]] | None = None
        # This client's share of WsServer.unsent_bytes, as of its last fan-out.
        self.counted = 0
        self.user_agent: str | None = (
            conn.request.headers.get("User-Agent") if conn.request else None
        )
        try:
            self.address = str(conn.remote_address[0])
        except (TypeError, IndexError):  # pragma: no cover
            self.address = "?"
        self._abort: asyncio.TimerHandle | None = None
        self.log = logging.LoggerAdapter(log, {"client": cid})

    @property
    def backlog(self) -> int:
        """Bytes written to this client that the kernel has not taken yet."""
        return self.transport.get_write_buffer_size()

    @property
    def unsent(self) -> int:
        """What this client holds in the daemon: the bytes written to it that the kernel
        has not taken yet, and the live frames held back during its replay."""
        return self.transport.get_write_buffer_size() + self.held_bytes

    def send(self, data: bytes, frames: int) -> bool:
        """Queue already-framed events; close as a slow consumer past the limit.

        Returns whether the frames were handed to the transport.
        """
        if self.closing or self.conn.protocol.state is not State.OPEN:
            return False
        limit = self.settings.slow_client_buffer_bytes
        if self.held is not None:
            # During a replay the piece being written counts too (§2.3).
            self.held_bytes += len(data)
            if self.held_bytes + self.transport.get_write_buffer_size() > limit:
                self.close_slow()
                return False
            self.held.append((data, frames))
            return True
        transport = self.transport
        if transport.get_write_buffer_size() > limit:
            self.close_slow()
            return False
        transport.write(data)
        self.frames_sent += frames
        if transport.get_write_buffer_size() > limit:
            self.close_slow()
        return True

    def write_now(self, data: bytes, frames: int) -> None:
        """Write the head or a replay piece ahead of anything held.

        No slow-consumer check: the caller writes one bounded piece at a time and
        waits for the client to read it (:meth:`WsServer._replay`).
        """
        if data and not self.closing and self.conn.protocol.state is State.OPEN:
            self.transport.write(data)
            self.frames_sent += frames

    def release(self) -> None:
        """End the replay: write the held live frames and go live."""
        held, self.held, self.held_bytes = self.held or [], None, 0
        for data, frames in held:
            self.send(data, frames)

    def send_control(self, message: dict[str, Any]) -> None:
        """A control reply (never dropped for slowness while the connection is open)."""
        if self.closing or self.conn.protocol.state is not State.OPEN:
            return
        held = self.control_held
        if held is not None:
            if len(held) >= MAX_CONTROL_HELD:
                self.close_slow()
                return
            held.append(message)
            return
        if self.transport.get_write_buffer_size() > self.settings.slow_client_buffer_bytes:
            # A client that sends heartbeats but never reads the acks.
            self.close_slow()
            return
        self.transport.write(ws_text_frame(encode_json(message)))
        self.frames_sent += 1

    def release_control(self) -> None:
        """The held answer went out: send the control replies that waited behind it."""
        held, self.control_held = self.control_held or [], None
        for message in held:
            self.send_control(message)

    def close_slow(self, *, over_budget: int | None = None) -> None:
        """Close with 1013 after what is already buffered; abort if the peer never reads.

        ``over_budget``: the total of all clients' unsent bytes, when that (rather than
        this client's own limit) is the reason.
        """
        if self.closing:
            return
        self.closing = True
        self._on_slow()
        if over_budget is None:
            self.log.warning(
                "closing slow consumer (%d bytes unsent > %d)",
                self.unsent,
                self.settings.slow_client_buffer_bytes,
            )
        else:
            self.log.warning(
                "closing slow consumer (%d bytes unsent; all clients %d > budget %d)",
                self.unsent,
                over_budget,
                self.settings.clients_buffer_budget_bytes,
            )
        self.conn.protocol.send_close(SLOW_CLOSE_CODE, SLOW_CLOSE_REASON)
        self.conn.send_data()
        loop = asyncio.get_running_loop()
        self._abort = loop.call_later(self.settings.close_timeout, self.transport.abort)

    def abort(self) -> None:
        """Drop the connection now: its buffered bytes are freed at once."""
        self.closing = True  # a replay in progress stops at its next piece
        self.cancel_timers()
        self.held, self.held_bytes = None, 0
        self.transport.abort()

    def cancel_timers(self) -> None:
        if self._abort is not None:
            self._abort.cancel()
            self._abort = None


def _bounded_connection(settings: StreamSettings) -> type[ServerConnection]:
    """A ServerConnection that drops a peer whose unread replies pile up.

    websockets answers every ping with a pong by itself; a client that floods pings
    and never reads would grow our write buffer without bound.  Events and control
    replies are bounded in :class:`ClientSession`; this covers what websockets writes.
    """

    class BoundedConnection(ServerConnection):
        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            if self.transport.get_write_buffer_size() > settings.slow_client_buffer_bytes:
                log.warning(
                    "dropping %s: %d bytes of replies unread",
                    self.remote_address,
                    self.transport.get_write_buffer_size(),
                )
                self.transport.abort()

    return BoundedConnection


class WsServer:
    """The WebSocket endpoint and its set of sessions."""

    def __init__(
        self,
        settings: StreamSettings,
        sink: ClientSink,
        front: HttpFront,
        *,
        max_message_bytes: int,
        ping_interval: float | None,
        ping_timeout: float | None,
    ) -> None:
        self.settings = settings
        self.sink = sink
        self.front = front
        self.sessions: dict[str, ClientSession] = {}
        self.slow_closes = 0
        # All clients' unsent bytes, kept up to date by the fan-out from each client's
        # ``counted`` share (§2.3's global budget); the kernel only ever makes it smaller.
        self.unsent_bytes = 0
        self.messages_in = 0
        self._ids = itertools.count(1)
        self.max_message_bytes = max_message_bytes
        self._ping_interval = ping_interval
        self._ping_timeout = ping_timeout
        self._servers: list[Server] = []  # one per listening socket

    @property
    def port(self) -> int:
        """The port clients connect to (the same on every address, §2)."""
        for _, port in self.bound:
            return port
        raise RuntimeError("the WebSocket server has no TCP socket")  # pragma: no cover

    @property
    def bound(self) -> list[tuple[str, int]]:
        """Every address listened on, as ``(host, port)``, IPv4 first."""
        found: list[tuple[str, int]] = []
        for server in self._servers:
            for sock in server.sockets:
                name = sock.getsockname()
                if isinstance(name, tuple):
                    found.append((str(name[0]), int(name[1])))
        return sorted(found, key=lambda a: ":" in a[0])

    @property
    def addresses(self) -> list[str]:
        """:attr:`bound` as ``host:port`` strings, IPv6 in brackets (``[::1]:9876``)."""
        return [f"[{h}]:{p}" if ":" in h else f"{h}:{p}" for h, p in self.bound]

    async def start(
        self,
        *,
        host: str | None = None,
        port: int | None = None,
        socks: Sequence[socket.socket] = (),
        handshakes: HandshakeGuard | None = None,
    ) -> None:
        """Listen on ``socks`` (inherited) or on ``host``:``port``.

        ``localhost`` means both loopback addresses (:func:`bind_localhost`); any other
        host is bound as given.  ``handshakes`` bounds the connections still in their
        opening handshake.  With a guard, it also owns the handshake timeout
        (live-reloadable), so websockets' own ``open_timeout`` (same span: request,
        ``process_request``, response) is off; without one, websockets' default applies.
        """
        if not socks and host is not None and host.lower() == "localhost":
            socks = bind_localhost(port or 0)
        targets: list[dict[str, Any]] = (
            [{"sock": sock} for sock in socks] if socks else [{"host": host, "port": port}]
        )
        connection = _bounded_connection(self.settings)
        options: dict[str, Any] = {}
        if handshakes is not None:
            connection = handshakes.track(connection)
            options["open_timeout"] = None
        try:
            for target in targets:
                server = await serve(
                    self._handler,
                    create_connection=connection,
                    process_request=self.front,
                    compression=None,  # frames are shared bytes: no per-client deflate
                    max_size=self.max_message_bytes,
                    ping_interval=self._ping_interval,
                    ping_timeout=self._ping_timeout,
                    close_timeout=self.settings.close_timeout,
                    max_queue=INCOMING_QUEUE,
                    server_header=None,
                    logger=websockets_logger(),
                    **options,
                    **target,
                )
                self._servers.append(server)
        except BaseException:
            for target in targets:
                if "sock" in target:
                    target["sock"].close()
            raise

    def set_max_message_bytes(self, limit: int) -> None:
        """Apply a reloaded ``websocket.max_message_bytes`` to every connection.

        websockets reads the limit for each incoming frame, so open connections and
        new ones (set again in the handler) all use the new value.
        """
        self.max_message_bytes = limit
        for session in self.sessions.values():
            session.conn.protocol.max_message_size = limit

    # -- fan-out (hot path) ------------------------------------------------------

    def fan_out(self, batch: Sequence[Stamped]) -> list[int]:
        """Hand each event to every client whose filter matches; count deliveries.

        The global budget is checked after each client's write, on a running total
        that each write updates by that client's change (no scan unless over budget),
        so one batch to many clients cannot overshoot it by more than one client's write.
        """
        delivered = [0] * len(batch)
        if not self.sessions:
            return delivered
        everything: bytes | None = None
        to_all = 0
        total = self.unsent_bytes
        budget = self.settings.clients_buffer_budget_bytes
        for session in list(self.sessions.values()):
            type_filter = session.filter
            if type_filter.matches_all:
                if everything is None:
                    everything = (
                        batch[0].frame if len(batch) == 1 else b"".join(s.frame for s in batch)
                    )
                if session.send(everything, len(batch)):
                    to_all += 1
            else:
                matched = [i for i, s in enumerate(batch) if type_filter.matches(s.type)]
                if matched:
                    data = b"".join(batch[i].frame for i in matched)
                    if session.send(data, len(matched)):
                        for i in matched:
                            delivered[i] += 1
            unsent = session.transport.get_write_buffer_size() + session.held_bytes
            total += unsent - session.counted
            session.counted = unsent
            if total > budget:
                total = self._enforce_budget()
        if to_all:
            delivered = [d + to_all for d in delivered]
        self.unsent_bytes = total
        return delivered

    def _enforce_budget(self) -> int:
        """Bring all clients' unsent bytes back under the budget; the new total.

        The running total may count bytes the kernel has taken since, so it is summed
        again first.  Clients already closing go first, largest first: their close
        frame waits behind data they are not reading, and aborting frees their buffer
        at once.  Then the open clients with the largest backlogs are closed 1013 after
        what they have buffered until the others fit.  They may still read it and their
        close frame, but they stay in the total: the next write while over budget
        aborts them.  Runs only when over budget.
        """
        budget = self.settings.clients_buffer_budget_bytes
        sessions = list(self.sessions.values())
        for session in sessions:
            session.counted = session.unsent
        total = sum(s.counted for s in sessions)
        over = total
        open_: list[ClientSession] = []
        closing: list[ClientSession] = []
        for session in sessions:
            is_open = not session.closing and session.conn.protocol.state is State.OPEN
            (open_ if is_open else closing).append(session)
        for session in sorted(closing, key=lambda s: s.counted, reverse=True):
            if total <= budget or not session.counted:
                break
            session.log.info(
                "aborting closing client: %d bytes unsent, all clients over budget",
                session.counted,
            )
            session.abort()
            total -= session.counted
            session.counted = 0
        shed = 0
        for session in sorted(open_, key=lambda s: s.counted, reverse=True):
            if total - shed <= budget:
                break
            session.close_slow(over_budget=over)
            shed += session.counted
        return total

    def _forget(self, session: ClientSession) -> None:
        """Take a finished client out of the sessions and the running total."""
        if self.sessions.pop(session.id, None) is not None:
            self.unsent_bytes -= session.counted
            session.counted = 0

    # -- connections -------------------------------------------------------------

    def _count_slow_close(self) -> None:
        self.slow_closes += 1

    async def _handler(self, conn: ServerConnection) -> None:
        request = conn.request
        assert request is not None
        conn.protocol.max_message_size = self.max_message_bytes  # may have been reloaded
        query = parse_qs(urlsplit(request.path).query)
        since_values = query.get("since")
        since = int(since_values[-1]) if since_values else None
        epoch_values = query.get("epoch")
        epoch = epoch_values[-1] if epoch_values else None
        types = query.get("types")
        session = ClientSession(
            f"c{next(self._ids)}",
            conn,
            TypeFilter.from_query(types[-1] if types else None),
            self.settings,
            asyncio.get_running_loop().time(),
            on_slow=self._count_slow_close,
        )
        # The snapshot, the replay plan and the registration happen in one step of the
        # event loop, so no live event can fall between them or arrive twice.
        start = self.sink.open_stream(session, since, epoch)
        session.write_now(b"".join(start.head), len(start.head))
        if start.replay is not None:
            session.held = []  # live events wait until the replay is written
        self.sessions[session.id] = session
        session.log.info(
            "client connected from %s (%s), types=%s since=%s",
            session.address,
            session.user_agent,
            ",".join(session.filter.globs) or "*",
            since,
        )
        try:
            if start.replay is not None:
                await self._replay(session, start.replay)
            async for message in conn:
                self.messages_in += 1
                self._on_message(session, message)
        except ConnectionClosed:
            pass
        finally:
            self._forget(session)
            session.cancel_timers()
            session.log.info(
                "client disconnected (%s), %d frames sent", conn.close_code, session.frames_sent
            )
            self.sink.client_closed(session)

    async def _replay(self, session: ClientSession, seqs: tuple[int, int]) -> None:
        """The replay at the pace the client reads, from memory or the journal; then live.

        Each piece is read when the one before has been taken by the client, so a
        client that does not read pins one piece, and events that leave the ring
        meanwhile come from the journal (or a ``replay_gap`` without one).
        """
        after, upto = seqs
        while after < upto:
            piece = self.sink.replay_piece(after, upto, session.filter)
            if piece.backfill is not None:
                chunks = self.sink.backfill(piece.backfill, session.filter)
                async with contextlib.aclosing(chunks):
                    async for chunk, count in chunks:
                        if not await self._write_paced(session, chunk, count):
                            return
            elif piece.frames and not await self._write_paced(
                session, b"".join(piece.frames), len(piece.frames)
            ):
                return
            after = piece.last
        session.release()

    @staticmethod
    async def _write_paced(session: ClientSession, data: bytes, frames: int) -> bool:
        """Write one replay piece and wait until the client has read most of it.

        Returns whether the replay goes on (the client is neither closing nor gone).
        """
        if session.closing:
            return False
        session.write_now(data, frames)
        try:
            # Flow control: wait while the transport is over its high-water mark; and
            # yield either way, so a long replay to a fast reader shares the loop.
            await session.conn.drain()
            await asyncio.sleep(0)
        except OSError:
            return False  # the connection is gone; the handler's loop sees it closed
        return not session.closing

    def _on_message(self, session: ClientSession, data: str | bytes) -> None:
        try:
            message = parse_client_message(decode_client_message(data))
            if isinstance(message, Heartbeat):
                session.send_control({"type": "heartbeat_ack"})
            elif isinstance(message, Subscribe):
                session.filter = TypeFilter(message.types)
                session.send_control({"type": "subscribed", "types": list(message.types)})
            else:
                self.sink.client_message(session, message)
        except ProtocolError as exc:
            session.log.info("client message refused: %s: %s", exc.code, exc.message)
            session.send_control({"type": "error", "code": str(exc.code), "message": exc.message})

    async def close(self) -> None:
        """Close every client with 1001 (going away) and stop listening, in bounded time.

        Clients get :data:`SHUTDOWN_GRACE` seconds to read what is buffered and the
        close frame; the connections of those that do not are then aborted (§5: the
        whole stop takes under 5 s, whatever clients do).
        """
        servers = self._servers
        if not servers:
            return
        for server in servers:
            server.close(close_connections=True)
        waits = [server.wait_closed() for server in servers]
        try:
            await asyncio.wait_for(asyncio.gather(*waits), SHUTDOWN_GRACE)
            return
        except TimeoutError:
            pass
        stuck = {conn for server in servers for conn in server.all_connections}
        stuck.update(s.conn for s in self.sessions.values())
        for conn in stuck:
            conn.transport.abort()
        log.warning(
            "aborted %d client connections that did not close within %.0f s",
            len(stuck),
            SHUTDOWN_GRACE,
        )
        with contextlib.suppress(TimeoutError):
            waits = [server.wait_closed() for server in servers]
            await asyncio.wait_for(asyncio.gather(*waits), SHUTDOWN_ABORT_WAIT)


# Tries at finding a port free on both loopback addresses (port 0: the kernel picks it
# for IPv4, and another process may hold it on ::1).
LOCALHOST_PORT_TRIES = 8
# ::1 cannot be bound because the host has no IPv6 loopback (or no IPv6 at all).
_NO_IPV6 = (errno.EADDRNOTAVAIL, errno.EAFNOSUPPORT)


def bind_localhost(port: int) -> list[socket.socket]:
    """Bound (not yet listening) sockets for ``localhost``: 127.0.0.1 and ::1, one port.

    Without an IPv6 loopback (``EADDRNOTAVAIL``, ``EAFNOSUPPORT``) IPv4 alone, with one
    INFO line.  With ``port`` 0 the port IPv4 got is bound on ::1 too, retried with a new
    one when ::1 has it taken; a fixed port taken on either address is an ``OSError``
    (a client resolving localhost to ::1 must not reach another process).
    """
    for attempt in range(LOCALHOST_PORT_TRIES):
        v4 = _bound(socket.AF_INET, "127.0.0.1", port)
        try:
            v6 = _bound(socket.AF_INET6, "::1", v4.getsockname()[1])
        except OSError as exc:
            if exc.errno in _NO_IPV6:
                log.info("no IPv6 loopback (%s): listening on 127.0.0.1 only", exc.strerror)
                return [v4]
            v4.close()
            if exc.errno == errno.EADDRINUSE and port == 0 and attempt + 1 < LOCALHOST_PORT_TRIES:
                continue
            raise
        return [v4, v6]
    raise AssertionError("unreachable")  # pragma: no cover


def _bound(family: socket.AddressFamily, host: str, port: int) -> socket.socket:
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as asyncio does
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind((host, port))
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock
