"""Connections that are not clients yet, and running out of descriptors (PROTOCOL §2.4).

Owns: the bound on TCP connections still in their opening handshake
(``websocket.max_pending_handshakes``) and the handshake timeout
(``websocket.handshake_timeout_seconds``), raising the soft ``RLIMIT_NOFILE`` to the
hard limit at start, and the loop exception handler that turns ``accept()`` running
out of descriptors into one log line a minute instead of a traceback per attempt.

:class:`PendingHandshakes` is pure bookkeeping (it takes ``now``); :class:`HandshakeGuard`
is the thin glue that feeds it from a websockets ``ServerConnection`` subclass
(:meth:`HandshakeGuard.track`) and closes what it names.  It never looks at a request:
who may connect is ``web.py``'s business.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import math
import resource
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, TypeVar

if TYPE_CHECKING:  # only in annotations: ingest.py uses LogThrottle without websockets
    from websockets.asyncio.server import ServerConnection

log = logging.getLogger("aaeventd.handshakes")

K = TypeVar("K")

#: A pending connection younger than this is never closed to make room for a newer one:
#: a real client sends its request within milliseconds, so only a connection that has
#: had a fair chance and sent nothing gives way (PROTOCOL §2.4).
MIN_AGE_TO_EVICT = 1.0
#: Recurring pressure (descriptors, pending handshakes) is logged at most this often.
PRESSURE_LOG_INTERVAL = 60.0
# What asyncio's accept loop reports when the process or the system is out of a
# resource: it pauses accepting for a second and calls the loop's exception handler.
_ACCEPT_EXHAUSTION = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})


class LogThrottle:
    """At most one log line per ``interval`` for a recurring condition, with counts.

    Args:
        interval: seconds between two lines.
    """

    __slots__ = ("_next", "_since", "interval", "total")

    def __init__(self, interval: float = PRESSURE_LOG_INTERVAL) -> None:
        self.interval = interval
        self.total = 0
        self._since = 0
        self._next = -math.inf

    def hit(self, now: float) -> int | None:
        """Count one occurrence at ``now``.

        Returns:
            When a line is due: the occurrences since the previous line (this one
            included); ``None`` while the line would come too soon.
        """
        self.total += 1
        self._since += 1
        if now < self._next:
            return None
        count, self._since = self._since, 0
        self._next = now + self.interval
        return count


@dataclass(slots=True)
class HandshakeSettings:
    """Live-reloadable bounds on connections in their opening handshake."""

    max_pending: int = 64
    timeout: float = 10.0


class PendingHandshakes(Generic[K]):
    """Which connections are in their opening handshake, and since when.

    Keys are kept in the order they opened (so the oldest is first), with the time
    they opened.  Nothing here closes anything: the methods name what to close.
    """

    __slots__ = ("_opened", "settings")

    def __init__(self, settings: HandshakeSettings) -> None:
        self.settings = settings
        self._opened: dict[K, float] = {}

    def __len__(self) -> int:
        return len(self._opened)

    def __contains__(self, key: object) -> bool:
        return key in self._opened

    def opened(self, key: K, now: float) -> K | None:
        """Register a new connection; the one to close to stay within the bound.

        Returns:
            ``None`` (there was room), the oldest pending connection (open for at
            least :data:`MIN_AGE_TO_EVICT`: it leaves, ``key`` takes its place), or
            ``key`` itself (every pending one is younger: the newcomer is refused).
        """
        opened = self._opened
        if len(opened) >= self.settings.max_pending:
            oldest, since = next(iter(opened.items()))
            if now - since < MIN_AGE_TO_EVICT:
                return key
            del opened[oldest]
            opened[key] = now
            return oldest
        opened[key] = now
        return None

    def done(self, key: K) -> bool:
        """The connection finished its handshake or closed; whether it was pending."""
        return self._opened.pop(key, None) is not None

    def expired(self, now: float) -> list[K]:
        """Remove and return the connections whose handshake took too long by ``now``."""
        cutoff = now - self.settings.timeout
        opened = self._opened
        out: list[K] = []
        for key, since in opened.items():
            if since > cutoff:
                break  # in opening order: every later one is younger
            out.append(key)
        for key in out:
            del opened[key]
        return out

    def clear(self) -> list[K]:
        """Remove and return every pending connection, oldest first."""
        out = list(self._opened)
        self._opened.clear()
        return out

    def next_deadline(self) -> float | None:
        """When the oldest pending handshake times out; ``None`` when none is pending."""
        for since in self._opened.values():
            return since + self.settings.timeout
        return None


class HandshakeGuard:
    """Applies :class:`PendingHandshakes` to real connections: one timer, aborts.

    A closed pending connection is aborted (no answer: it has not asked anything yet,
    and its descriptor is what we need back).  One timer is armed for the oldest
    deadline, not one per connection.
    """

    def __init__(self, settings: HandshakeSettings) -> None:
        self.settings = settings
        self.pending: PendingHandshakes[ServerConnection] = PendingHandshakes(settings)
        self.evicted = 0  # oldest pending closed for a newer one
        self.refused = 0  # new connections closed because every pending one was young
        self.timed_out = 0
        self._closed = False
        self._timer: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._crowded = LogThrottle()
        self._slow = LogThrottle()

    def track(self, base: type[ServerConnection]) -> type[ServerConnection]:
        """A subclass of ``base`` that reports its opening handshake to this guard."""
        guard = self

        class Tracked(base):  # type: ignore[valid-type,misc]
            def connection_made(self, transport: asyncio.BaseTransport) -> None:
                super().connection_made(transport)
                guard.opened(self)

            async def handshake(self, *args: Any, **kwargs: Any) -> None:
                try:
                    await super().handshake(*args, **kwargs)
                finally:
                    guard.pending.done(self)

            def connection_lost(self, exc: Exception | None) -> None:
                guard.pending.done(self)
                super().connection_lost(exc)

        Tracked.__name__ = Tracked.__qualname__ = f"Tracked{base.__name__}"
        return Tracked

    def opened(self, conn: ServerConnection) -> None:
        """A TCP connection was accepted: register it, close one if over the bound."""
        if self._closed:
            # Accepted while the server stops (before its listening socket closed):
            # nobody will answer it, and nothing may hold the stop (§5).
            conn.transport.abort()
            return
        now = conn.loop.time()
        victim = self.pending.opened(conn, now)
        if victim is not None:
            if victim is conn:
                self.refused += 1
            else:
                self.evicted += 1
            count = self._crowded.hit(now)
            if count is not None:
                log.warning(
                    "%d connections closed before their handshake since the last report"
                    " (max_pending_handshakes=%d reached; %d closed in all)",
                    count,
                    self.settings.max_pending,
                    self._crowded.total,
                )
            victim.transport.abort()
        self._arm(conn.loop)

    def settings_changed(self) -> None:
        """Re-arm the timer after a reload changed the timeout."""
        if self._timer is not None and self._loop is not None:
            self._timer.cancel()
            self._timer = None
            self._arm(self._loop)

    def close(self) -> None:
        """The server is stopping: abort every pending connection, and any new one.

        With websockets' own ``open_timeout`` off, nothing else ends a connection that
        never sends its request, and the server's stop waits for every connection's
        handler (PROTOCOL §5: the stop takes under 5 s).  Whatever they have sent, the
        answer at stop would be websockets' 503: aborting frees them at once instead.
        """
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        pending = self.pending.clear()
        if pending:
            log.info("closing %d connections still in their opening handshake", len(pending))
            for conn in pending:
                conn.transport.abort()

    def _arm(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        if self._timer is not None:
            return
        deadline = self.pending.next_deadline()
        if deadline is not None:
            self._timer = loop.call_at(deadline, self._expire, loop)

    def _expire(self, loop: asyncio.AbstractEventLoop) -> None:
        self._timer = None
        now = loop.time()
        late = self.pending.expired(now)
        if late:
            self.timed_out += len(late)
            count = self._slow.hit(now)
            if count is not None:
                log.info(
                    "%d connections closed without a handshake after %g s since the last"
                    " report (%d in all)",
                    count,
                    self.settings.timeout,
                    self._slow.total,
                )
            for conn in late:
                conn.transport.abort()
        self._arm(loop)


# -- descriptors -----------------------------------------------------------------------


def raise_fd_limit() -> tuple[int, int]:
    """Raise the soft ``RLIMIT_NOFILE`` to the hard limit; the (old soft, new soft) pair.

    A user service starts with a soft limit of 1024 while its hard limit is far
    higher; every client, source and pending handshake holds one descriptor.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft >= hard:
        log.debug("open-file limit %d (already the hard limit)", soft)
        return soft, soft
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    except (OSError, ValueError) as exc:
        log.warning("cannot raise the open-file limit from %d to %d: %s", soft, hard, exc)
        return soft, soft
    log.info("open-file limit raised from %d to %d (the hard limit)", soft, hard)
    return soft, hard


ExceptionHandler = Callable[[asyncio.AbstractEventLoop, dict[str, Any]], object]


class AcceptExhaustion:
    """A loop exception handler: out of descriptors in ``accept()``, logged with counts.

    asyncio's accept loop reports ``EMFILE``/``ENFILE`` (and ``ENOBUFS``/``ENOMEM``)
    through the loop's exception handler, with a traceback, each time it retries (once
    a second per listening socket).  This handler logs at most one line a minute for
    them, with the number of failed attempts and the limit; every other context goes
    to ``previous`` (or the loop's default handler).

    Args:
        previous: the handler that was installed before (``None``: the default).
    """

    def __init__(self, previous: ExceptionHandler | None) -> None:
        self.previous = previous
        self.throttle = LogThrottle()

    def __call__(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        exc = context.get("exception")
        if (
            isinstance(exc, OSError)
            and exc.errno in _ACCEPT_EXHAUSTION
            and "accept" in str(context.get("message", ""))
        ):
            count = self.throttle.hit(loop.time())
            if count is not None:
                soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
                log.error(
                    "cannot accept connections: %s (%d failed accepts since the last report,"
                    " %d in all; open-file limit %d); new connections wait in the queue",
                    exc.strerror or exc,
                    count,
                    self.throttle.total,
                    soft,
                )
            return
        if self.previous is not None:
            self.previous(loop, context)
        else:
            loop.default_exception_handler(context)
