"""The source-side library: how a program sends events to aaeventd.

:class:`EventSource` (blocking, thread-safe) and :class:`AsyncEventSource` (asyncio)
speak the NDJSON protocol of PROTOCOL §1 over the Unix socket: ``hello`` with acks,
one event per line, one ``ack`` or ``error`` per line in order, and the answers to
confirmations (§3).  This module imports only the standard library and nothing of the
daemon, so a source may vendor this one file.

Example::

    with EventSource(name="skill-engine") as src:
        ack = src.emit("skill_started", skill_name="start_work", total_steps=5)
        answer = src.request_confirmation("Create branch?", options=("yes", "no"),
                                          timeout=120, default="no")

Delivery (see ``docs/client-library.md``):

* Replies are matched to events in order (the daemon answers every line, in order),
  by one reader per connection; confirmation answers are dispatched by ``id``, so
  several threads (or tasks) may wait on different confirmations over one connection.
* With ``reconnect=True`` (the default) a lost connection is re-established in the
  background with exponential back-off.  Meanwhile ``emit()`` returns ``None`` instead
  of an :class:`Ack`: the event is kept in a bounded in-memory buffer and sent, in
  order, as soon as the daemon is back.  Events sent but not yet acknowledged when the
  connection broke are put back at the front of that buffer (at-least-once: after a
  daemon *crash* one of them may be delivered twice; after a clean restart none is).
* Past ``buffer_size`` events the oldest buffered event is dropped, counted in
  :attr:`EventSource.dropped` and logged (WARNING); with ``overflow="raise"``,
  ``emit()`` raises :class:`BufferFull` instead and the event is not kept.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import queue
import random as _random
import socket
import threading
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

log = logging.getLogger(__name__)

# Limits
DEFAULT_BUFFER_SIZE = 1000
"""Events kept while the daemon is unreachable (``buffer_size``)."""
# The reconnect back-off: at once, then from RETRY_INITIAL_SECONDS doubling up to
# RETRY_MAX_SECONDS, no jitter (a refused local connect costs the daemon nothing, and
# every pause is outage the buffer must absorb).
RETRY_INITIAL_SECONDS = 0.05
RETRY_MAX_SECONDS = 2.0
MAX_REPLY_BYTES = 16 << 20

Overflow = Literal["drop_oldest", "raise"]


# -- results and errors ------------------------------------------------------------


class SourceError(Exception):
    """The root of this library's errors: aaeventd unreachable, protocol broken, closed."""


class EventRejected(SourceError):
    """The daemon refused an event: ``code``, ``message`` and the ``line`` number."""

    def __init__(self, reply: dict[str, Any]) -> None:
        self.reply = reply
        self.code = str(reply.get("code"))
        self.message = str(reply.get("message"))
        self.line = reply.get("line")
        self.details = reply.get("details")
        super().__init__(f"{self.code}: {self.message}")


class BufferFull(SourceError):
    """The outage buffer is full (``overflow="raise"``), or an event was dropped from it."""


class ConfirmationExpired(SourceError):
    """A confirmation ended without an answer and without a ``default`` to fall back on.

    ``reason`` is the daemon's (``timeout``, ``source_gone``, ``shutdown``), or
    ``connection_lost`` when the connection broke before the daemon said anything.
    """

    def __init__(self, confirmation_id: str | None, reason: str) -> None:
        self.id = confirmation_id
        self.reason = reason
        super().__init__(f"confirmation {confirmation_id} expired: {reason}")


@dataclass(frozen=True)
class Ack:
    """The daemon accepted an event: its ``seq`` and how many clients got it."""

    seq: int
    delivered: int
    id: str | None = None
    reply: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Answer:
    """How a confirmation ended.

    ``reason`` is ``None`` when a client answered; otherwise the expiry reason, and
    ``response`` is the source's ``default`` (``None`` when it gave none).
    """

    id: str | None
    response: str | None
    remember: str = "none"
    reason: str | None = None


# -- copies of two shared rules --------------------------------------------------------
#
# This file stays one stdlib-only file that a source may vendor, so it keeps its own
# copy of these two functions instead of importing them; tests/test_endpoints.py and
# tests/test_backoff.py hold each copy to the one the rest of aaeventd uses
# (aaeventd.endpoints.socket_path, aaeventd.backoff.backoff).


def default_socket_path(env: Mapping[str, str] | None = None) -> Path:
    """Where the daemon listens when nothing else says (PROTOCOL §1), without config.

    ``$AAEVENTD_SOCKET`` when set; else ``$XDG_RUNTIME_DIR/aaeventd/events.sock``
    (an absolute ``XDG_RUNTIME_DIR``); else ``/tmp/aaeventd-$UID/events.sock``.
    ``$RUNTIME_DIRECTORY`` is not read: in a program that connects it names that
    program's own systemd unit's directory, not the daemon's.

    Args:
        env: the environment to read; ``None`` means :data:`os.environ`.
    """
    env = os.environ if env is None else env
    named = env.get("AAEVENTD_SOCKET", "")
    if named:
        return Path(named)
    runtime = env.get("XDG_RUNTIME_DIR", "").split(":", 1)[0]
    if os.path.isabs(runtime):
        return Path(runtime) / "aaeventd" / "events.sock"
    return Path(f"/tmp/aaeventd-{os.getuid()}") / "events.sock"


def _backoff(
    initial_delay: float,
    min_delay: float,
    max_delay: float,
    factor: float,
    jitter: float,
    *,
    random: Callable[[], float] | None = None,
) -> Iterator[float]:
    """The pauses before each reconnection attempt (see :mod:`aaeventd.backoff`)."""
    if not (initial_delay >= 0 and 0 < min_delay <= max_delay and factor > 1):
        raise ValueError(
            f"backoff needs 0 <= initial_delay, 0 < min_delay <= max_delay and factor > 1, "
            f"got {initial_delay}, {min_delay}, {max_delay}, {factor}"
        )
    if not 0 <= jitter < 1:
        raise ValueError(f"backoff jitter must be in [0, 1), got {jitter}")
    rand = _random.random if random is None else random

    # A generator inside, so that bad numbers raise here and not at the first next().
    def delays() -> Iterator[float]:
        yield rand() * initial_delay
        delay = min_delay
        while True:
            spread = 1 + jitter * (2 * rand() - 1) if jitter else 1.0
            yield min(delay, max_delay) * spread
            delay *= factor

    return delays()


# -- the sans-I/O core shared by both classes -----------------------------------------

_QUEUED: Any = object()
"""A waiter's value when its event went back to the buffer (``emit`` returns None)."""
_END: Any = object()
"""Ends :meth:`EventSource.messages`."""

Note = tuple[Any, Any]
"""(waiter, value): a value (or exception) the glue hands to a waiter."""


@dataclass(eq=False, slots=True)
class _Item:
    """One event line on its way: buffered, then in flight until its reply."""

    line: bytes
    waiter: Any = None  # who waits for the ack/error; None once nobody does
    answer: Any = None  # who waits for the confirmation's answer (registered at the ack)
    number: int = 0  # its line number on the connection it was last sent on


class _Core:
    """The outage buffer, the in-flight queue and the confirmation waiters.

    No I/O and no locking: the glue calls it under its own lock and hands the returned
    notes to the waiters.
    """

    def __init__(self, size: int, overflow: Overflow) -> None:
        if size < 1:
            raise ValueError("buffer_size must be at least 1")
        self.size = size
        self.overflow = overflow
        self.buffer: deque[_Item] = deque()
        self.inflight: deque[_Item] = deque()
        self.answers: dict[str, Any] = {}
        self.dropped = 0
        self.rejected = 0
        self._dropped_in_outage = 0
        self._outage = False

    @property
    def backlog(self) -> int:
        """Events not yet acknowledged (buffered or in flight)."""
        return len(self.buffer) + len(self.inflight)

    def queue(self, item: _Item) -> list[Note]:
        """Keep an event for later.

        Raises:
            BufferFull: the buffer is full and ``overflow`` is ``"raise"``.
        """
        notes: list[Note] = []
        self._outage = True
        if len(self.buffer) >= self.size:
            if self.overflow == "raise":
                raise BufferFull(f"{self.size} events are already waiting for aaeventd")
            notes += self._drop(self.buffer.popleft())
        self.buffer.append(item)
        return notes

    def next_to_send(self) -> _Item | None:
        return self.buffer.popleft() if self.buffer else None

    def sent(self, item: _Item, number: int) -> None:
        item.number = number
        self.inflight.append(item)

    def reconnected(self) -> None:
        """A connection is up: report the outage that ends, if any."""
        if self._dropped_in_outage:
            log.warning(
                "connected to aaeventd; %d events were dropped while it was unreachable",
                self._dropped_in_outage,
            )
        elif self._outage:
            log.info("connected to aaeventd; sending %d buffered events", len(self.buffer))
        self._dropped_in_outage = 0
        self._outage = False

    def on_message(self, msg: dict[str, Any]) -> tuple[list[Note], dict[str, Any] | None]:
        """Dispatch one line from the daemon: the notes, and a message for ``messages()``.

        Raises:
            SourceError: a reply with no event waiting for it (the protocol broke).
        """
        kind = msg.get("type")
        if kind == "ack" or (kind == "error" and "line" in msg):
            if not self.inflight:
                raise SourceError(f"unexpected reply from aaeventd: {msg}")
            item = self.inflight.popleft()
            if kind == "ack":
                ack = Ack(
                    seq=int(msg["seq"]),
                    delivered=int(msg.get("delivered", 0)),
                    id=msg.get("id"),
                    reply=msg,
                )
                if item.answer is not None and isinstance(ack.id, str):
                    self.answers[ack.id] = item.answer
                return ([(item.waiter, ack)] if item.waiter is not None else []), None
            if msg.get("line") != item.number:
                log.warning("reply for line %s, expected line %d", msg.get("line"), item.number)
            exc = EventRejected(msg)
            notes: list[Note] = []
            if item.waiter is not None:
                notes.append((item.waiter, exc))
            else:
                self.rejected += 1
                log.warning("a buffered event was rejected by aaeventd: %s", exc)
            if item.answer is not None:
                notes.append((item.answer, exc))
            return notes, None
        if kind in ("confirmation_response", "confirmation_expired"):
            cid = msg.get("id")
            waiter = self.answers.pop(cid, None) if isinstance(cid, str) else None
            if waiter is not None:
                return [(waiter, _answer(msg))], None
        return [], msg

    def connection_lost(self, requeue: bool, reason: str) -> list[Note]:
        """Events in flight go back to the buffer (``requeue``) or fail; answers fail."""
        notes: list[Note] = []
        items = list(self.inflight)
        self.inflight.clear()
        self._outage = True
        if requeue:
            for item in items:
                if item.waiter is not None:
                    notes.append((item.waiter, _QUEUED))
                    item.waiter = None
            self.buffer.extendleft(reversed(items))
            while len(self.buffer) > self.size:
                notes += self._drop(self.buffer.popleft())
        else:
            for item in items:
                error = SourceError(f"lost the connection to aaeventd: {reason}")
                notes += [(w, error) for w in (item.waiter, item.answer) if w is not None]
        notes += [
            (w, Answer(cid, None, reason="connection_lost")) for cid, w in self.answers.items()
        ]
        self.answers.clear()
        return notes

    def close(self) -> list[Note]:
        """Everything still waiting fails; undelivered events are counted as dropped."""
        items = [*self.inflight, *self.buffer]
        self.inflight.clear()
        self.buffer.clear()
        if items:
            self.dropped += len(items)
            log.warning("closing with %d events not acknowledged by aaeventd", len(items))
        error = SourceError("the event source was closed")
        notes = [(w, error) for item in items for w in (item.waiter, item.answer) if w is not None]
        notes += [(w, error) for w in self.answers.values()]
        self.answers.clear()
        return notes

    def _drop(self, item: _Item) -> list[Note]:
        self.dropped += 1
        self._dropped_in_outage += 1
        if self._dropped_in_outage == 1:
            log.warning(
                "aaeventd unreachable and %d events buffered: dropping the oldest", self.size
            )
        if item.answer is not None:
            return [(item.answer, BufferFull("the confirmation was dropped from a full buffer"))]
        return []


def _answer(msg: dict[str, Any]) -> Answer:
    cid = msg.get("id")
    response = msg.get("response")
    if msg.get("type") == "confirmation_response":
        return Answer(cid, response, str(msg.get("remember", "none")))
    return Answer(cid, response if isinstance(response, str) else None, reason=str(msg["reason"]))


def _encode(event: dict[str, Any]) -> bytes:
    return json.dumps(event, ensure_ascii=False, allow_nan=False).encode()


def _check_line(line: bytes) -> None:
    if b"\n" in line:
        # Two lines would get two replies and shift every later ack by one.
        raise ValueError("an event line must not contain a newline")


def _confirmation_event(
    message: str,
    options: Iterable[str],
    timeout: float | None,
    default: str | None,
    fields: dict[str, Any],
) -> dict[str, Any]:
    event: dict[str, Any] = {"type": "confirmation_required", "message": message}
    event["options"] = list(options)
    if timeout is not None:
        event["timeout_seconds"] = timeout
    if default is not None:
        event["default"] = default
    event.update(fields)
    return event


def _result(answer: Answer) -> str:
    if answer.response is None:
        raise ConfirmationExpired(answer.id, answer.reason or "unknown")
    return answer.response


def _parse_reply(line: bytes) -> dict[str, Any]:
    try:
        obj = json.loads(line)
    except ValueError as exc:
        raise SourceError(f"unexpected reply: {line[:200]!r}") from exc
    if not isinstance(obj, dict):
        raise SourceError(f"unexpected reply: {line[:200]!r}")
    return obj


def _hello(name: str) -> bytes:
    return _encode({"type": "hello", "name": name, "acks": True}) + b"\n"


def _check_welcome(reply: dict[str, Any]) -> None:
    if reply.get("type") == "error":
        raise EventRejected(reply)
    if reply.get("type") != "welcome":
        raise SourceError(f"expected welcome from aaeventd, got {reply}")


def _log_retry(exc: SourceError, delay: float) -> None:
    # Refusals (forbidden, overloaded) deserve a look; "not running yet" does not.
    level = logging.WARNING if isinstance(exc, EventRejected) else logging.DEBUG
    log.log(level, "reconnect failed: %s; next try in %.2f s", exc, delay)


def _unreachable(path: Path, exc: OSError) -> SourceError:
    return SourceError(f"cannot connect to {path}: {exc.strerror or exc} (is aaeventd running?)")


# -- the blocking client ----------------------------------------------------------------


class _Waiter:
    """A one-shot result slot for one waiting thread (set under the source's lock)."""

    __slots__ = ("_event", "value")

    def __init__(self) -> None:
        self._event = threading.Event()
        self.value: Any = None

    def set(self, value: Any) -> None:
        if not self._event.is_set():
            self.value = value
            self._event.set()

    def wait(self, timeout: float | None) -> bool:
        return self._event.wait(timeout)


class _Conn:
    """One connection: its socket (closed by its reader thread) and write state."""

    def __init__(self, sock: socket.socket, rest: bytes) -> None:
        self.sock = sock
        self.rest = rest
        self.lines = 1  # hello
        self.ready = False  # the buffer has been flushed: emit() may write directly
        self.broken = False  # a write failed: the reader will see the end
        self.closed = False
        self.reason: str | None = None
        self.io_lock = threading.Lock()  # socket writes vs close

    def kill(self, reason: str) -> None:
        """Make the reader see the end now (replies not read yet are lost)."""
        self.reason = self.reason or reason
        self.broken = True
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)


class _SourceBase:
    """What both twins share: their settings, the sans-I/O core and its counters."""

    def __init__(
        self,
        socket_path: str | os.PathLike[str] | None = None,
        *,
        name: str = "aaeventd-client",
        timeout: float = 10.0,
        reconnect: bool = True,
        buffer_size: int = DEFAULT_BUFFER_SIZE,
        overflow: Overflow = "drop_oldest",
        retry_initial: float = RETRY_INITIAL_SECONDS,
        retry_max: float = RETRY_MAX_SECONDS,
    ) -> None:
        if not 0 < retry_initial <= retry_max:
            raise ValueError("retry_initial must be above 0 and at most retry_max")
        self.socket_path = Path(socket_path) if socket_path is not None else default_socket_path()
        self.name = name
        self.timeout = timeout
        self.reconnect = reconnect
        self.retry_initial = retry_initial
        self.retry_max = retry_max
        self.welcome: dict[str, Any] | None = None
        self._core = _Core(buffer_size, overflow)
        self._closed = False
        self._init_io()

    def _init_io(self) -> None:
        """The twin's own locks, connection and queues."""
        raise NotImplementedError

    def _delays(self) -> Iterator[float]:
        """The pauses before each reconnection attempt: the first is 0 (at once)."""
        return _backoff(0.0, self.retry_initial, self.retry_max, 2.0, 0.0)

    @property
    def dropped(self) -> int:
        """Events lost: dropped from a full buffer, or not delivered when closed."""
        return self._core.dropped

    @property
    def rejected(self) -> int:
        """Buffered events refused by the daemon after a reconnect (no caller to raise to)."""
        return self._core.rejected


class EventSource(_SourceBase):
    """A blocking, thread-safe connection that sends events and waits for their acks.

    Args:
        socket_path: the daemon's Unix socket; default as :func:`default_socket_path`.
        name: sent in ``hello`` so the daemon's logs and ``/clients`` show who we are.
        timeout: seconds to wait for a connection or for a reply to one event.
        reconnect: re-establish a lost connection in the background and buffer events
            meanwhile (``emit`` then returns ``None``).  With ``False`` a lost
            connection raises :class:`SourceError` and the next ``emit`` reconnects.
        buffer_size: events kept while the daemon is unreachable.
        overflow: past ``buffer_size``, ``"drop_oldest"`` (counted in :attr:`dropped`,
            logged) or ``"raise"`` (:class:`BufferFull` from ``emit``).
        retry_initial, retry_max: the reconnect back-off: the first attempt at once,
            then pauses doubling from the first to the second (seconds).
    """

    def _init_io(self) -> None:
        self._state = threading.Condition()  # guards everything below and the core
        self._send_lock = threading.Lock()  # one writer at a time: wire order = FIFO order
        self._conn: _Conn | None = None
        self._closing = threading.Event()
        self._supervisor: threading.Thread | None = None
        self._threads: set[threading.Thread] = set()
        self._side: queue.Queue[Any] = queue.Queue()

    # -- lifecycle -------------------------------------------------------------------

    def __enter__(self) -> EventSource:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def connected(self) -> bool:
        """Whether events are being sent now (not buffered)."""
        with self._state:
            return self._conn is not None and self._conn.ready and not self._conn.broken

    @property
    def buffered(self) -> int:
        """Events not acknowledged yet (waiting for the daemon, or in flight)."""
        with self._state:
            return self._core.backlog

    def start(self) -> None:
        """Connect; with ``reconnect``, a daemon that is not there yet is not an error.

        Raises:
            SourceError: (only with ``reconnect=False``) the daemon is not reachable.
        """
        try:
            self.connect()
        except SourceError as exc:
            if not self.reconnect:
                raise
            log.warning("%s; events are buffered until it is", exc)
            with self._state:
                self._start_supervisor()

    def connect(self) -> None:
        """Connect now and say ``hello`` (acks on); a no-op when connected.

        Raises:
            SourceError: the daemon is not reachable.
            EventRejected: it refused us (``forbidden``, ``overloaded``).
        """
        with self._send_lock:
            with self._state:
                if self._closed:
                    self._reopen()
                if self._conn is not None:
                    return
            self._connect_locked()

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every event emitted so far is acknowledged; False past ``timeout``."""
        with self._state:
            return self._state.wait_for(lambda: self._core.backlog == 0, timeout)

    def close(self, flush_timeout: float | None = None) -> None:
        """Deliver what is buffered (up to ``flush_timeout``, default ``timeout``), then close.

        Events still undelivered are counted in :attr:`dropped` (and logged); threads
        waiting for a reply or an answer get :class:`SourceError`.
        """
        with self._state:
            pending = self._core.backlog and not self._closed and self.reconnect
        if pending:
            self.flush(self.timeout if flush_timeout is None else flush_timeout)
        with self._state:
            self._closed = True
            self._closing.set()
            conn = self._conn
            self._deliver(self._core.close())
            threads = list(self._threads)
        if conn is not None:
            conn.kill("closed")
        for thread in threads:
            if thread is not threading.current_thread():
                thread.join(self.timeout + 1)
        self._side.put(_END)

    def _reopen(self) -> None:
        self._closed = False
        self._closing = threading.Event()
        self._side = queue.Queue()

    # -- sending ---------------------------------------------------------------------

    def emit(self, event_type: str, /, **fields: Any) -> Ack | None:
        """Send one event and wait for its ``ack``.

        Returns:
            The :class:`Ack`, or ``None`` when the daemon is unreachable and the event
            was buffered (it is sent, in order, once the daemon is back).

        Raises:
            EventRejected: the daemon refused it (the reply's code and message).
            BufferFull: buffered, full, and ``overflow="raise"``.
            SourceError: (``reconnect=False``) the daemon is not reachable.
        """
        return self.send({"type": event_type, **fields})

    def send(self, event: dict[str, Any]) -> Ack | None:
        """Send an event object as is; see :meth:`emit`."""
        return self.send_line(_encode(event))

    def send_line(self, line: bytes) -> Ack | None:
        """Send one already-encoded JSON line (without newline); see :meth:`emit`."""
        _check_line(line)
        return self._submit(_Item(line, waiter=_Waiter()))

    def ask(
        self,
        message: str,
        /,
        options: Iterable[str] = ("yes", "no"),
        timeout: float | None = 60,
        default: str | None = None,
        *,
        wait: float | None = None,
        **fields: Any,
    ) -> Answer:
        """Send ``confirmation_required`` and block until it is answered or expires.

        ``timeout`` is the daemon's countdown (``None``: its default), ``wait`` a
        local bound on the whole call (``None``: as long as it takes, pauses included).
        Other fields (``skill_id``, ``step_name``, ``claude_suggestion``, ``id``, ...)
        are sent as given.  While the daemon is unreachable the request is buffered
        like any event and the wait goes on.

        Returns:
            The :class:`Answer`; an expiry is an answer too (``reason`` set), also
            ``connection_lost`` when the connection broke while it was pending (the
            daemon then expires it as ``source_gone``).

        Raises:
            EventRejected: the daemon refused the request.
            BufferFull: the request was dropped from a full outage buffer.
            TimeoutError: ``wait`` passed.
        """
        line = _encode(_confirmation_event(message, options, timeout, default, fields))
        answer = _Waiter()
        self._submit(_Item(line, waiter=_Waiter(), answer=answer))
        if not answer.wait(wait):
            raise TimeoutError(f"no answer within {wait} s")
        if isinstance(answer.value, BaseException):
            raise answer.value
        result: Answer = answer.value
        return result

    def request_confirmation(
        self,
        message: str,
        /,
        options: Iterable[str] = ("yes", "no"),
        timeout: float | None = 60,
        default: str | None = None,
        **fields: Any,
    ) -> str:
        """Ask a human (through any connected UI) and return the chosen option.

        Returns:
            The response, or the ``default`` when the confirmation expired (timeout,
            daemon shutdown) and one was given.

        Raises:
            ConfirmationExpired: it expired without a default (``reason`` says why).
            EventRejected: the daemon refused the request.
        """
        return _result(self.ask(message, options, timeout, default, **fields))

    def messages(self, timeout: float | None = None) -> Iterator[dict[str, Any]]:
        """Daemon messages that no call waits for, in order.

        These are answers to confirmations sent with :meth:`emit` (not :meth:`ask`)
        and anything unexpected.  The iteration ends when the source is closed (or,
        with ``reconnect=False``, when the connection is lost).

        Args:
            timeout: seconds to wait for each message; ``None`` waits without limit.

        Raises:
            TimeoutError: nothing arrived within ``timeout``.
        """
        side = self._side
        while True:
            try:
                msg = side.get(timeout=timeout)
            except queue.Empty:
                raise TimeoutError(f"no message from aaeventd within {timeout} s") from None
            if msg is _END:
                side.put(_END)  # for any other iterator
                return
            yield msg

    # -- internals -------------------------------------------------------------------

    def _deliver(self, notes: list[Note]) -> None:
        # Called with the state lock held: Event.set() never blocks.
        for waiter, value in notes:
            waiter.set(value)

    def _submit(self, item: _Item) -> Ack | None:
        with self._send_lock:
            with self._state:
                if self._closed:
                    raise SourceError("the event source is closed")
                first_use = self._conn is None and self._supervisor is None
            if first_use:
                try:
                    self._connect_locked()
                except SourceError:
                    if not self.reconnect:
                        raise
            with self._state:
                conn = self._conn
                if conn is None or not conn.ready or conn.broken:
                    if not self.reconnect:
                        raise SourceError("not connected to aaeventd")
                    item.waiter = None  # emit() returns None now
                    self._deliver(self._core.queue(item))
                    self._start_supervisor()
                    return None
                conn.lines += 1
                self._core.sent(item, conn.lines)
            self._write(conn, item)
        return self._await_reply(conn, item)

    def _await_reply(self, conn: _Conn, item: _Item) -> Ack | None:
        waiter: _Waiter = item.waiter
        if not waiter.wait(self.timeout):
            conn.kill(f"no reply from aaeventd within {self.timeout} s")
            if not waiter.wait(self.timeout):  # pragma: no cover - the reader is stuck
                raise SourceError(f"no reply from aaeventd within {self.timeout} s")
        value = waiter.value
        if value is _QUEUED:
            return None
        if isinstance(value, BaseException):
            raise value
        ack: Ack = value
        return ack

    def _write(self, conn: _Conn, item: _Item) -> None:
        with conn.io_lock:
            if conn.closed or conn.broken:
                return  # the reader requeues (or fails) it when it sees the end
            try:
                conn.sock.sendall(item.line + b"\n")
            except TimeoutError:
                conn.kill(f"aaeventd did not read for {self.timeout} s")
            except OSError as exc:
                # The peer is gone; its last replies may still be unread: let the
                # reader drain them and see the end by itself.
                conn.broken = True
                conn.reason = f"lost the connection to aaeventd: {exc}"
                with contextlib.suppress(OSError):
                    conn.sock.shutdown(socket.SHUT_WR)

    def _establish(self) -> _Conn:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(str(self.socket_path))
        except OSError as exc:
            sock.close()
            raise _unreachable(self.socket_path, exc) from exc
        try:
            sock.sendall(_hello(self.name))
            buf = b""
            while b"\n" not in buf:
                chunk = sock.recv(65536)
                if not chunk:
                    raise SourceError("aaeventd closed the connection")
                buf += chunk
            line, _, rest = buf.partition(b"\n")
            reply = _parse_reply(line)
            _check_welcome(reply)
        except TimeoutError:
            sock.close()
            raise SourceError(f"no reply from aaeventd within {self.timeout} s") from None
        except OSError as exc:
            sock.close()
            raise SourceError(f"lost the connection to aaeventd: {exc}") from exc
        except SourceError:
            sock.close()
            raise
        self.welcome = reply
        return _Conn(sock, rest)

    def _connect_locked(self) -> None:
        """Connect, start the reader, send the buffer (the send lock is held)."""
        conn = self._establish()
        with self._state:
            if self._closed:
                conn.sock.close()
                raise SourceError("the event source is closed")
            self._conn = conn
            reader = threading.Thread(
                target=self._read_loop, args=(conn,), name="aaeventd-source-reader", daemon=True
            )
            self._threads.add(reader)
            self._core.reconnected()
        reader.start()
        while True:
            with self._state:
                if self._conn is not conn:
                    return
                item = self._core.next_to_send()
                if item is None:
                    conn.ready = True
                    self._state.notify_all()
                    return
                conn.lines += 1
                self._core.sent(item, conn.lines)
            self._write(conn, item)

    def _start_supervisor(self) -> None:
        """Start the reconnect thread unless one runs (the state lock is held)."""
        if self._closed or self._conn is not None or self._supervisor is not None:
            return
        thread = threading.Thread(target=self._supervise, name="aaeventd-reconnect", daemon=True)
        self._supervisor = thread
        self._threads.add(thread)
        thread.start()

    def _supervise(self) -> None:
        delays = self._delays()
        delay = next(delays)
        try:
            while True:
                with self._state:
                    # Deciding to stop and saying so happen under one lock: a loss
                    # right after this finds no supervisor and starts a new one.
                    if self._closed or self._conn is not None:
                        self._supervisor = None
                        return
                if delay and self._closing.wait(delay):
                    continue
                with self._send_lock:
                    with self._state:
                        if self._closed or self._conn is not None:
                            continue
                    try:
                        self._connect_locked()
                        delays = self._delays()
                        delay = next(delays)
                        continue
                    except SourceError as exc:
                        delay = next(delays)
                        _log_retry(exc, delay)
        finally:
            with self._state:
                if self._supervisor is threading.current_thread():
                    self._supervisor = None
                self._threads.discard(threading.current_thread())

    def _read_loop(self, conn: _Conn) -> None:
        reason = "aaeventd closed the connection"
        buf = conn.rest
        try:
            while True:
                if b"\n" in buf:
                    *lines, buf = buf.split(b"\n")
                    for line in lines:
                        if line.strip():
                            self._on_line(conn, line)
                try:
                    chunk = conn.sock.recv(65536)
                except TimeoutError:
                    continue  # idle: replies may take minutes (confirmations)
                except OSError as exc:
                    reason = f"lost the connection to aaeventd: {exc}"
                    break
                if not chunk:
                    break
                buf += chunk
                if len(buf) > MAX_REPLY_BYTES:
                    raise SourceError("a reply from aaeventd is too long")
        except SourceError as exc:
            reason = str(exc)
        except Exception:
            # Our bug: drop this connection (and reconnect), never the program.
            log.exception("internal error while reading from aaeventd")
            reason = "internal error"
        finally:
            with conn.io_lock:
                conn.closed = True
                conn.sock.close()
            self._lost(conn, conn.reason or reason)

    def _on_line(self, conn: _Conn, line: bytes) -> None:
        msg = _parse_reply(line)
        with self._state:
            notes, side = self._core.on_message(msg)
            self._deliver(notes)
            self._state.notify_all()
        if side is not None:
            self._side.put(side)

    def _lost(self, conn: _Conn, reason: str) -> None:
        with self._state:
            if self._conn is conn:
                self._conn = None
            requeue = self.reconnect and not self._closed
            self._deliver(self._core.connection_lost(requeue, reason))
            if not self._closed:
                if self.reconnect:
                    log.warning("%s; reconnecting (events are buffered meanwhile)", reason)
                    self._start_supervisor()
                else:
                    self._side.put(_END)
            self._threads.discard(threading.current_thread())
            self._state.notify_all()


# -- the asyncio client -----------------------------------------------------------------


class _AConn:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.lines = 1
        self.ready = False
        self.broken = False
        self.reason: str | None = None

    def kill(self, reason: str) -> None:
        self.reason = self.reason or reason
        self.broken = True
        self.writer.transport.abort()


class AsyncEventSource(_SourceBase):
    """The asyncio twin of :class:`EventSource`: same arguments, same semantics.

    Use it from one event loop (it is not thread-safe); every method that talks to
    the daemon is a coroutine.  Its reader and reconnect tasks belong to it and end
    in :meth:`close` (or at the end of ``async with``).
    """

    def _init_io(self) -> None:
        self._send_lock = asyncio.Lock()
        self._conn: _AConn | None = None
        self._closing = asyncio.Event()
        self._drained = asyncio.Event()
        self._drained.set()
        self._supervisor: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._side: asyncio.Queue[Any] = asyncio.Queue()

    async def __aenter__(self) -> AsyncEventSource:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def connected(self) -> bool:
        return self._conn is not None and self._conn.ready and not self._conn.broken

    @property
    def buffered(self) -> int:
        return self._core.backlog

    async def start(self) -> None:
        """Connect; with ``reconnect``, a daemon that is not there yet is not an error."""
        try:
            await self.connect()
        except SourceError as exc:
            if not self.reconnect:
                raise
            log.warning("%s; events are buffered until it is", exc)
            self._start_supervisor()

    async def connect(self) -> None:
        """Connect now (a no-op when connected); see :meth:`EventSource.connect`."""
        async with self._send_lock:
            if self._closed:
                self._closed = False
                self._closing = asyncio.Event()
                self._side = asyncio.Queue()
            if self._conn is None:
                await self._connect_locked()

    async def flush(self, timeout: float | None = None) -> bool:  # noqa: ASYNC109 - the sync twin's API
        """Wait until every event emitted so far is acknowledged; False past ``timeout``."""
        try:
            await asyncio.wait_for(self._drained.wait(), timeout)
        except TimeoutError:
            return False
        return True

    async def close(self, flush_timeout: float | None = None) -> None:
        """Deliver what is buffered (up to ``flush_timeout``), then close."""
        if self._core.backlog and not self._closed and self.reconnect:
            await self.flush(self.timeout if flush_timeout is None else flush_timeout)
        self._closed = True
        self._closing.set()
        self._deliver(self._core.close())
        self._update_drained()
        if self._conn is not None:
            self._conn.kill("closed")
        if self._supervisor is not None:
            self._supervisor.cancel()
        tasks = [t for t in self._tasks if t is not asyncio.current_task()]
        if tasks:
            await asyncio.wait(tasks, timeout=self.timeout + 1)
        self._side.put_nowait(_END)

    async def emit(self, event_type: str, /, **fields: Any) -> Ack | None:
        """Send one event; see :meth:`EventSource.emit`."""
        return await self.send({"type": event_type, **fields})

    async def send(self, event: dict[str, Any]) -> Ack | None:
        return await self.send_line(_encode(event))

    async def send_line(self, line: bytes) -> Ack | None:
        _check_line(line)
        return await self._submit(_Item(line, waiter=asyncio.get_running_loop().create_future()))

    async def ask(
        self,
        message: str,
        /,
        options: Iterable[str] = ("yes", "no"),
        timeout: float | None = 60,  # noqa: ASYNC109 - the daemon's countdown, not ours
        default: str | None = None,
        *,
        wait: float | None = None,
        **fields: Any,
    ) -> Answer:
        """See :meth:`EventSource.ask`."""
        line = _encode(_confirmation_event(message, options, timeout, default, fields))
        loop = asyncio.get_running_loop()
        answer: asyncio.Future[Answer] = loop.create_future()
        try:
            await self._submit(_Item(line, waiter=loop.create_future(), answer=answer))
            return await asyncio.wait_for(answer, wait)
        finally:
            if not answer.done():
                answer.cancel()

    async def request_confirmation(
        self,
        message: str,
        /,
        options: Iterable[str] = ("yes", "no"),
        timeout: float | None = 60,  # noqa: ASYNC109 - the daemon's countdown, not ours
        default: str | None = None,
        **fields: Any,
    ) -> str:
        """See :meth:`EventSource.request_confirmation`."""
        return _result(await self.ask(message, options, timeout, default, **fields))

    async def messages(
        self,
        timeout: float | None = None,  # noqa: ASYNC109 - per message, as in the sync twin
    ) -> AsyncIterator[dict[str, Any]]:
        """See :meth:`EventSource.messages`."""
        side = self._side
        while True:
            try:
                msg = await asyncio.wait_for(side.get(), timeout)
            except TimeoutError:
                raise TimeoutError(f"no message from aaeventd within {timeout} s") from None
            if msg is _END:
                side.put_nowait(_END)
                return
            yield msg

    # -- internals -------------------------------------------------------------------

    def _deliver(self, notes: list[Note]) -> None:
        for future, value in notes:
            if future.done():
                continue
            if isinstance(value, BaseException):
                future.set_exception(value)
            else:
                future.set_result(value)

    def _update_drained(self) -> None:
        if self._core.backlog == 0:
            self._drained.set()
        else:
            self._drained.clear()

    async def _submit(self, item: _Item) -> Ack | None:
        async with self._send_lock:
            if self._closed:
                raise SourceError("the event source is closed")
            if self._conn is None and self._supervisor is None:
                try:
                    await self._connect_locked()
                except SourceError:
                    if not self.reconnect:
                        raise
            conn = self._conn
            if conn is None or not conn.ready or conn.broken:
                if not self.reconnect:
                    raise SourceError("not connected to aaeventd")
                item.waiter = None
                self._deliver(self._core.queue(item))
                self._update_drained()
                self._start_supervisor()
                return None
            conn.lines += 1
            self._core.sent(item, conn.lines)
            self._update_drained()
            await self._write(conn, item)
        return await self._await_reply(conn, item)

    async def _await_reply(self, conn: _AConn, item: _Item) -> Ack | None:
        future: asyncio.Future[Any] = item.waiter
        try:
            value = await asyncio.wait_for(asyncio.shield(future), self.timeout)
        except TimeoutError:
            conn.kill(f"no reply from aaeventd within {self.timeout} s")
            value = await asyncio.wait_for(future, self.timeout)
        if value is _QUEUED:
            return None
        ack: Ack = value
        return ack

    async def _write(self, conn: _AConn, item: _Item) -> None:
        if conn.broken or conn.writer.is_closing():
            return
        conn.writer.write(item.line + b"\n")
        try:
            await asyncio.wait_for(conn.writer.drain(), self.timeout)
        except TimeoutError:
            conn.kill(f"aaeventd did not read for {self.timeout} s")
        except OSError as exc:
            conn.broken = True
            conn.reason = f"lost the connection to aaeventd: {exc}"

    async def _establish(self) -> _AConn:
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_unix_connection(str(self.socket_path), limit=MAX_REPLY_BYTES),
                self.timeout,
            )
        except TimeoutError:
            raise SourceError(f"no connection to aaeventd within {self.timeout} s") from None
        except OSError as exc:
            raise _unreachable(self.socket_path, exc) from exc
        try:
            writer.write(_hello(self.name))
            await asyncio.wait_for(writer.drain(), self.timeout)
            line = await asyncio.wait_for(reader.readline(), self.timeout)
            if not line:
                raise SourceError("aaeventd closed the connection")
            reply = _parse_reply(line)
            _check_welcome(reply)
        except BaseException as exc:
            writer.close()
            if isinstance(exc, TimeoutError):
                raise SourceError(f"no reply from aaeventd within {self.timeout} s") from None
            if isinstance(exc, OSError):
                raise SourceError(f"lost the connection to aaeventd: {exc}") from exc
            raise
        self.welcome = reply
        return _AConn(reader, writer)

    async def _connect_locked(self) -> None:
        conn = await self._establish()
        if self._closed:
            conn.writer.close()
            raise SourceError("the event source is closed")
        self._conn = conn
        self._core.reconnected()
        task = asyncio.get_running_loop().create_task(self._read_loop(conn))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        while self._conn is conn:
            item = self._core.next_to_send()
            if item is None:
                conn.ready = True
                return
            conn.lines += 1
            self._core.sent(item, conn.lines)
            await self._write(conn, item)

    def _start_supervisor(self) -> None:
        if self._closed or self._conn is not None or self._supervisor is not None:
            return
        task = asyncio.get_running_loop().create_task(self._supervise())
        self._supervisor = task
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _supervise(self) -> None:
        delays = self._delays()
        delay = next(delays)
        try:
            while not self._closed and self._conn is None:
                if delay:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._closing.wait(), delay)
                    if self._closed or self._conn is not None:
                        break
                try:
                    async with self._send_lock:
                        if self._closed or self._conn is not None:
                            break
                        await self._connect_locked()
                    delays = self._delays()
                    delay = next(delays)
                    continue
                except SourceError as exc:
                    delay = next(delays)
                    _log_retry(exc, delay)
        finally:
            # No await between the loop's last check and here: a loss after this
            # finds no supervisor and starts a new one.
            if self._supervisor is asyncio.current_task():
                self._supervisor = None

    async def _read_loop(self, conn: _AConn) -> None:
        reason = "aaeventd closed the connection"
        try:
            while True:
                line = await conn.reader.readline()
                if not line.endswith(b"\n"):
                    break  # EOF (a partial last line is not a reply)
                if not line.strip():
                    continue
                msg = _parse_reply(line)
                notes, side = self._core.on_message(msg)
                self._deliver(notes)
                self._update_drained()
                if side is not None:
                    self._side.put_nowait(side)
        except (OSError, ValueError) as exc:  # ValueError: a line over the limit
            reason = f"lost the connection to aaeventd: {exc}"
        except SourceError as exc:
            reason = str(exc)
        except Exception:
            log.exception("internal error while reading from aaeventd")
            reason = "internal error"
        finally:
            conn.writer.close()
            self._lost(conn, conn.reason or reason)

    def _lost(self, conn: _AConn, reason: str) -> None:
        if self._conn is conn:
            self._conn = None
        requeue = self.reconnect and not self._closed
        self._deliver(self._core.connection_lost(requeue, reason))
        self._update_drained()
        if not self._closed:
            if self.reconnect:
                log.warning("%s; reconnecting (events are buffered meanwhile)", reason)
                self._start_supervisor()
            else:
                self._side.put_nowait(_END)
