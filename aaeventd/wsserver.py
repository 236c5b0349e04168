"""The clients' side: the WebSocket server and the per-client send path (PROTOCOL §2).

Owns: ``websockets.asyncio.server.serve`` wiring, one :class:`ClientSession` per
connection (filter, counters, backlog), the fan-out of already-encoded frames, client
messages (``heartbeat``, ``subscribe``; the rest goes to the :class:`ClientSink`), and
the slow-consumer close.

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

from aaeventd.hub import Stamped
from aaeventd.protocol.codec import decode_client_message, encode_json, ws_text_frame
from aaeventd.protocol.errors import ProtocolError
from aaeventd.protocol.events import ClientMessage, Heartbeat, Subscribe, parse_client_message
from aaeventd.protocol.filters import TypeFilter
from aaeventd.web import HttpFront

log = logging.getLogger(__name__)

# Close code and reason for a client that does not keep up (§2.3).
SLOW_CLOSE_CODE = 1013
SLOW_CLOSE_REASON = "slow consumer"


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
    close_timeout: float = 10.0


@dataclass(slots=True)
class StreamStart:
    """What a new client gets before live events, in this order.

    ``head`` (``connected``, maybe a ``replay_gap``), then the events of ``backfill``
    (a seq range read from the journal), then ``tail`` (replayed from memory).
    """

    head: list[bytes]
    backfill: tuple[int, int] | None = None
    tail: list[bytes] = field(default_factory=list)


class ClientSink(Protocol):
    """What the WebSocket side needs from the app."""

    def open_stream(
        self, session: ClientSession, since: int | None, epoch: str | None
    ) -> StreamStart:
        """The snapshot and replay plan for a new client."""

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

    def send(self, data: bytes, frames: int) -> bool:
        """Queue already-framed events; close as a slow consumer past the limit.

        Returns whether the frames were handed to the transport.
        """
        if self.closing or self.conn.protocol.state is not State.OPEN:
            return False
        limit = self.settings.slow_client_buffer_bytes
        if self.held is not None:
            self.held_bytes += len(data)
            if self.held_bytes > limit:
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
        """Write replay frames ahead of anything held (no slow-consumer check)."""
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
        if self.transport.get_write_buffer_size() > self.settings.slow_client_buffer_bytes:
            # A client that sends heartbeats but never reads the acks.
            self.close_slow()
            return
        self.transport.write(ws_text_frame(encode_json(message)))
        self.frames_sent += 1

    def close_slow(self) -> None:
        """Close with 1013 after what is already buffered; abort if the peer never reads."""
        if self.closing:
            return
        self.closing = True
        self._on_slow()
        self.log.warning(
            "closing slow consumer (%d bytes unsent > %d)",
            self.backlog,
            self.settings.slow_client_buffer_bytes,
        )
        self.conn.protocol.send_close(SLOW_CLOSE_CODE, SLOW_CLOSE_REASON)
        self.conn.send_data()
        loop = asyncio.get_running_loop()
        self._abort = loop.call_later(self.settings.close_timeout, self.transport.abort)

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
        self.messages_in = 0
        self._ids = itertools.count(1)
        self.max_message_bytes = max_message_bytes
        self._ping_interval = ping_interval
        self._ping_timeout = ping_timeout
        self._server: Server | None = None

    @property
    def port(self) -> int:
        assert self._server is not None
        for sock in self._server.sockets:
            name = sock.getsockname()
            if isinstance(name, tuple):
                return int(name[1])
        raise RuntimeError("the WebSocket server has no TCP socket")  # pragma: no cover

    async def start(
        self, *, host: str | None = None, port: int | None = None, sock: socket.socket | None = None
    ) -> None:
        kwargs: dict[str, Any] = (
            {"sock": sock} if sock is not None else {"host": host, "port": port}
        )
        self._server = await serve(
            self._handler,
            create_connection=_bounded_connection(self.settings),
            process_request=self.front,
            compression=None,  # frames are shared bytes: no per-client deflate
            max_size=self.max_message_bytes,
            ping_interval=self._ping_interval,
            ping_timeout=self._ping_timeout,
            close_timeout=self.settings.close_timeout,
            server_header=None,
            logger=websockets_logger(),
            **kwargs,
        )

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
        """Hand each event to every client whose filter matches; count deliveries."""
        delivered = [0] * len(batch)
        if not self.sessions:
            return delivered
        everything: bytes | None = None
        to_all = 0
        for session in list(self.sessions.values()):
            type_filter = session.filter
            if type_filter.matches_all:
                if everything is None:
                    everything = (
                        batch[0].frame if len(batch) == 1 else b"".join(s.frame for s in batch)
                    )
                if session.send(everything, len(batch)):
                    to_all += 1
                continue
            matched = [i for i, s in enumerate(batch) if type_filter.matches(s.type)]
            if not matched:
                continue
            data = b"".join(batch[i].frame for i in matched)
            if session.send(data, len(matched)):
                for i in matched:
                    delivered[i] += 1
        if to_all:
            delivered = [d + to_all for d in delivered]
        return delivered

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
        if start.backfill is None:
            session.write_now(b"".join(start.tail), len(start.tail))
        else:
            session.held = []
        self.sessions[session.id] = session
        session.log.info(
            "client connected from %s (%s), types=%s since=%s",
            session.address,
            session.user_agent,
            ",".join(session.filter.globs) or "*",
            since,
        )
        try:
            if start.backfill is not None:
                await self._replay(session, start)
            async for message in conn:
                self.messages_in += 1
                self._on_message(session, message)
        except ConnectionClosed:
            pass
        finally:
            self.sessions.pop(session.id, None)
            session.cancel_timers()
            session.log.info(
                "client disconnected (%s), %d frames sent", conn.close_code, session.frames_sent
            )
            self.sink.client_closed(session)

    async def _replay(self, session: ClientSession, start: StreamStart) -> None:
        """Journal backfill at the pace the client reads, then memory, then live."""
        assert start.backfill is not None
        chunks = self.sink.backfill(start.backfill, session.filter)
        async with contextlib.aclosing(chunks):
            async for chunk, count in chunks:
                if session.closing:
                    return
                session.write_now(chunk, count)
                try:
                    # Flow control: wait while the transport is over its high-water mark.
                    await session.conn.drain()
                except OSError:
                    return  # the connection is gone; the handler's loop sees it closed
        session.write_now(b"".join(start.tail), len(start.tail))
        session.release()

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
        """Close every client with 1001 (going away) and stop listening."""
        if self._server is None:
            return
        self._server.close(close_connections=True)
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._server.wait_closed(), self.settings.close_timeout + 1)
