"""The client-side library: watch aaeventd's events and never lose one to a reconnect.

:class:`Subscriber` is a blocking WebSocket client of PROTOCOL §2.  It remembers the
``epoch`` of the ``connected`` frame and the ``seq`` of the last event it handed out,
and after a disconnect (a daemon restart, a slow-consumer close, a network blip) it
reconnects with ``since``/``epoch``: the daemon replays what was missed, and anything
already seen is dropped, so the caller gets every event once, in order.  When events
really are gone (``replay_gap``) the frame is handed to the caller as is.

Example::

    with Subscriber("ws://127.0.0.1:9876/", types="skill_*") as sub:
        for frame in sub:
            print(frame["type"], frame.get("seq"))

``url`` may be the daemon's ``http://`` address too (the link ``aaeventd ui``
prints): :func:`aaeventd.endpoints.websocket_url` builds the stream's URL.  Pauses
between reconnection attempts follow :func:`aaeventd.backoff.backoff`.

Only the standard library, ``websockets`` and aaeventd's stdlib-only ``endpoints``
and ``backoff`` modules are used; nothing of the daemon.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import Callable, Iterator
from typing import Any

from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus
from websockets.sync.client import ClientConnection, connect

from aaeventd.backoff import WATCH_INITIAL_DELAY, WATCH_MAX_DELAY, WATCH_MIN_DELAY, backoff
from aaeventd.endpoints import websocket_url

log = logging.getLogger(__name__)


class SubscriberError(Exception):
    """The daemon cannot be reached at all, or refuses us (``status`` is the HTTP code)."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class Subscriber:
    """A reconnecting, resuming WebSocket client.

    Args:
        url: the daemon's address, ``ws://127.0.0.1:9876/`` or ``http://...`` (a
            ``?token=`` in it is kept).
        types: comma-separated type globs (``skill_*,heal_*``); ``None`` for all.
        since: replay every event after this seq on the first connection too.
        token: sent as ``?token=`` when the daemon requires one.
        open_timeout: seconds for one connection attempt.
        max_backoff: the longest pause between reconnection attempts (before
            jitter; the rest of the policy is :mod:`aaeventd.backoff`'s ``WATCH_*``).
        on_disconnect: called with the exception each time the connection drops.
        sleep: how to spend a back-off pause (a live display redraws meanwhile).

    Raises:
        ValueError: ``url`` is not an ``http``, ``https``, ``ws`` or ``wss`` URL, or
            ``max_backoff`` is not above 0.
    """

    def __init__(
        self,
        url: str,
        *,
        types: str | None = None,
        since: int | None = None,
        token: str | None = None,
        open_timeout: float = 5.0,
        max_backoff: float = WATCH_MAX_DELAY,
        on_disconnect: Callable[[BaseException], None] | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.base_url = websocket_url(url)
        self.types = types
        self.last_seq = since
        self.epoch: str | None = None
        self.token = token
        self.open_timeout = open_timeout
        self.max_backoff = max_backoff
        self.on_disconnect = on_disconnect
        self.reconnects = 0
        self._sleep = sleep
        self._ws: ClientConnection | None = None
        self._stack = contextlib.ExitStack()
        self._ever_connected = False
        self._delays = self._new_delays()

    # -- connection --------------------------------------------------------------

    @property
    def shown_url(self) -> str:
        """The URL without its query (never shows the token)."""
        return self.base_url.split("?")[0]

    def url(self) -> str:
        """The URL of the next connection, with the resume point."""
        return websocket_url(
            self.base_url,
            types=self.types or None,
            since=self.last_seq,
            epoch=self.epoch,
            token=self.token,
        )

    def _connect(self) -> ClientConnection:
        """Connect (retrying with back-off once a first connection has worked).

        Raises:
            SubscriberError: the first connection fails, or any handshake is refused.
        """
        while True:
            try:
                # Entered as a context manager (what websockets >= 17.1 expects); the
                # stack exits it in close().
                ws = self._stack.enter_context(
                    connect(self.url(), open_timeout=self.open_timeout, max_size=None)
                )
            except InvalidStatus as exc:
                status = exc.response.status_code
                raise SubscriberError(
                    f"{self.shown_url} refused the connection: HTTP {status}", status
                ) from exc
            except (OSError, InvalidHandshake, TimeoutError) as exc:
                if not self._ever_connected:
                    raise SubscriberError(
                        f"cannot connect to {self.shown_url}: {exc} (is aaeventd running?)"
                    ) from exc
                log.debug("reconnect to %s failed: %s", self.shown_url, exc)
                self._pause()
                continue
            if self._ever_connected:
                self.reconnects += 1
            self._ever_connected = True
            self._delays = self._new_delays()
            return ws

    def _new_delays(self) -> Iterator[float]:
        cap = self.max_backoff
        return backoff(min(WATCH_INITIAL_DELAY, cap), min(WATCH_MIN_DELAY, cap), cap)

    def _pause(self) -> None:
        self._sleep(next(self._delays))  # back-off between attempts, not synchronisation

    def close(self) -> None:
        """Close the connection (the subscriber can be used again: it reconnects)."""
        self._ws = None
        self._stack.close()

    def __enter__(self) -> Subscriber:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- frames ------------------------------------------------------------------

    def recv(self, timeout: float | None = None) -> dict[str, Any] | None:
        """The next frame (``connected``, an event, ``replay_gap``, a control reply).

        Reconnects and resumes by itself; events already handed out are not handed
        out again.

        Args:
            timeout: seconds to wait for a frame; ``None`` waits for ever.

        Returns:
            The frame, or ``None`` when ``timeout`` passed without one.

        Raises:
            SubscriberError: as :meth:`_connect`.
        """
        while True:
            if self._ws is None:
                self._ws = self._connect()
            try:
                raw = self._ws.recv(timeout=timeout)
            except TimeoutError:
                return None
            except ConnectionClosed as exc:
                self.close()
                if self.on_disconnect is not None:
                    self.on_disconnect(exc)
                self._pause()
                continue
            frame = json.loads(raw)
            if not isinstance(frame, dict):
                continue
            if self._accept(frame):
                return frame

    def _accept(self, frame: dict[str, Any]) -> bool:
        kind = frame.get("type")
        if kind == "connected":
            epoch = frame.get("epoch")
            if self.epoch is not None and epoch != self.epoch:
                self.last_seq = None  # a new journal: its seqs start again
            self.epoch = epoch if isinstance(epoch, str) else None
            if self.last_seq is None and isinstance(frame.get("seq"), int):
                self.last_seq = frame["seq"]
            return True
        seq = frame.get("seq")
        if isinstance(seq, int):
            if self.last_seq is not None and seq <= self.last_seq:
                return False  # seen before this reconnect
            self.last_seq = seq
        return True

    def __iter__(self) -> Iterator[dict[str, Any]]:
        while True:
            frame = self.recv()
            if frame is not None:
                yield frame
