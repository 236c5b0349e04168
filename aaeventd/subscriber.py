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

:class:`Confirmations` (and the one-call :func:`pending_confirmations` and
:func:`answer_confirmation` built on it) is the confirm side, what ``aaeventd
confirm`` speaks: list the pending confirmations, answer one, and know whether the
answer won.

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


# -- confirmations -------------------------------------------------------------------

# What a confirmation connection subscribes to: only what tells whether an answer won
# (``error`` and ``heartbeat_ack`` are never filtered), so that a busy stream does not
# pile up while a human reads the prompt.
CONFIRMATION_TYPES = "confirmation_answered"


class ConfirmationRefused(SubscriberError):
    """The daemon refused an answer: ``code`` is its error code (``unknown_confirmation``,
    ``invalid_response``, ...), the message is the daemon's."""

    def __init__(self, code: str | None, message: str | None) -> None:
        super().__init__(f"not answered ({code}): {message}")
        self.code = code
        self.reason = message


class Confirmations:
    """One WebSocket connection to list pending confirmations and answer one (PROTOCOL §2.2).

    Entering connects and reads the ``connected`` snapshot (:attr:`pending` is its
    ``pending_confirmations``); :meth:`answer` sends an answer and tells whether it won.
    The connection stays open in between, so a human can take their time to choose.

    Example::

        with Confirmations("http://127.0.0.1:9876/") as conn:
            for item in conn.pending:
                print(item["id"], item.get("prompt"))
            answered = conn.answer(conn.pending[0]["id"], "yes")

    Args:
        url: the daemon's address, ``ws://...`` or ``http://...`` (a ``?token=`` in it
            is kept).
        token: sent as ``?token=`` when the daemon requires one.
        user_agent: the ``User-Agent`` header (shown as ``answered_by.user_agent`` and
            in the daemon's audit line); ``None`` for websockets' default.
        open_timeout: seconds to connect.
        timeout: seconds to wait for each frame of the daemon's answer.

    Raises:
        ValueError: ``url`` is not an ``http``, ``https``, ``ws`` or ``wss`` URL.
    """

    def __init__(
        self,
        url: str,
        *,
        token: str | None = None,
        user_agent: str | None = None,
        open_timeout: float = 5.0,
        timeout: float = 10.0,
    ) -> None:
        self.url = websocket_url(url, types=CONFIRMATION_TYPES, token=token)
        self.user_agent = user_agent
        self.open_timeout = open_timeout
        self.timeout = timeout
        self.pending: list[dict[str, Any]] = []
        self._ws: ClientConnection | None = None
        self._stack = contextlib.ExitStack()

    @property
    def shown_url(self) -> str:
        """The URL without its query (never shows the token)."""
        return self.url.split("?")[0]

    def __enter__(self) -> Confirmations:
        try:
            self.open()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def open(self) -> None:
        """Connect and read the snapshot into :attr:`pending`.

        Raises:
            SubscriberError: the daemon cannot be reached, refuses the connection
                (``status``), does not answer in time or closes the connection.
        """
        extra: dict[str, Any] = {}
        if self.user_agent is not None:
            extra["user_agent_header"] = self.user_agent
        with self._errors():
            self._ws = self._stack.enter_context(
                connect(
                    self.url,
                    open_timeout=self.open_timeout,
                    max_size=None,
                    close_timeout=2,
                    **extra,
                )
            )
            snapshot = json.loads(self._ws.recv(timeout=self.timeout))
        self.pending = list(snapshot.get("pending_confirmations") or [])

    def close(self) -> None:
        """Close the connection."""
        self._ws = None
        self._stack.close()

    def answer(self, cid: str, response: str, remember: str = "none") -> dict[str, Any]:
        """Send the answer and tell whether it won: the ``confirmation_answered`` frame.

        A ``heartbeat`` sent right after is the barrier: the daemon handles a client's
        messages in order and writes the outcome of the answer (the ``error`` reply, or
        the ``confirmation_answered`` broadcast) before the ``heartbeat_ack``.  So the
        answer won exactly when ``confirmation_answered`` for this id, and no ``error``,
        arrives before that ack (another client's earlier win is followed by our error).

        Raises:
            ConfirmationRefused: the daemon refused the answer (it lost, or is invalid).
            SubscriberError: as :meth:`open`, or the daemon broke the protocol.
        """
        ws = self._ws
        if ws is None:
            raise RuntimeError("Confirmations.answer() outside its with block")
        with self._errors():
            ws.send(
                json.dumps(
                    {
                        "type": "confirmation_response",
                        "id": cid,
                        "response": response,
                        "remember": remember,
                    }
                )
            )
            ws.send(json.dumps({"type": "heartbeat"}))
            answered: dict[str, Any] | None = None
            while True:
                msg = json.loads(ws.recv(timeout=self.timeout))
                kind = msg.get("type")
                if kind == "error":
                    raise ConfirmationRefused(msg.get("code"), msg.get("message"))
                if kind == "confirmation_answered" and msg.get("id") == cid:
                    answered = msg
                elif kind == "heartbeat_ack":
                    break
        if answered is None:  # pragma: no cover - the daemon broke the protocol
            raise SubscriberError(f"no confirmation_answered for {cid} from the daemon")
        return answered

    @contextlib.contextmanager
    def _errors(self) -> Iterator[None]:
        """The connection's failures as :class:`SubscriberError` (the cause chained)."""
        try:
            yield
        except InvalidStatus as exc:
            status = exc.response.status_code
            raise SubscriberError(
                f"{self.shown_url} refused the connection: HTTP {status}", status
            ) from exc
        except (OSError, InvalidHandshake, TimeoutError) as exc:
            raise SubscriberError(
                f"cannot connect to {self.shown_url}: {exc} (is aaeventd running?)"
            ) from exc
        except ConnectionClosed as exc:
            raise SubscriberError(f"the daemon closed the connection: {exc}") from exc


def pending_confirmations(
    url: str, *, token: str | None = None, user_agent: str | None = None
) -> list[dict[str, Any]]:
    """The pending confirmations of the daemon at ``url`` (its ``connected`` snapshot).

    Raises:
        SubscriberError: as :meth:`Confirmations.open`.
    """
    with Confirmations(url, token=token, user_agent=user_agent) as conn:
        return conn.pending


def answer_confirmation(
    url: str,
    cid: str,
    response: str,
    *,
    remember: str = "none",
    token: str | None = None,
    user_agent: str | None = None,
) -> dict[str, Any]:
    """Answer confirmation ``cid`` with ``response``: the ``confirmation_answered`` frame.

    Raises:
        ConfirmationRefused: the daemon refused the answer (another client answered
            first, the id is unknown, the response is not an option).
        SubscriberError: as :meth:`Confirmations.open`.
    """
    with Confirmations(url, token=token, user_agent=user_agent) as conn:
        return conn.answer(cid, response, remember)
