"""``aaeventd watch``: follow the daemon's events, one line each or on a live screen.

:func:`_follow` reads frames from a :class:`~aaeventd.subscriber.Subscriber` (it
reconnects and resumes) into a sink: :class:`_PlainSink` prints a line per event (or
its JSON), :class:`_LiveSink` redraws a :class:`~aaeventd.cli.console.LiveView` in the
terminal's alternate screen.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import shutil
import sys
import time
from collections.abc import Callable
from typing import Any, Protocol, TextIO

from aaeventd.cli.common import (
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_USAGE,
    CommandFailed,
    configured_token,
    err,
    load,
    stream_url,
)
from aaeventd.cli.console import LiveView, format_event
from aaeventd.config import Config

# watch --live redraws on each event, but at most this often (seconds).
REDRAW_INTERVAL = 0.2
# Alternate screen on, cursor hidden / cursor shown, alternate screen off.
_SCREEN_ENTER = "\x1b[?1049h\x1b[?25l"
_SCREEN_LEAVE = "\x1b[?25h\x1b[?1049l"


class _Sink(Protocol):
    """Where :func:`_follow` puts what it receives: plain lines or the live screen."""

    def connected(self, snapshot: dict[str, Any], url: str) -> None:
        """The ``connected`` frame of a new connection (``url`` without its query)."""

    def event(self, msg: dict[str, Any]) -> None:
        """A stream event (or a control reply such as ``error``)."""

    def gap(self, msg: dict[str, Any]) -> None:
        """A ``replay_gap`` frame."""

    def notice(self, text: str) -> None:
        """A disconnect or reconnect note."""

    def timeout(self) -> float | None:
        """How long to wait for a frame before :meth:`idle` (``None``: forever)."""

    def idle(self) -> None:
        """No frame came within :meth:`timeout`."""

    def wait(self, seconds: float) -> None:
        """The back-off before a reconnect."""


class _PlainSink:
    """One line per event: readable, or the raw JSON with ``--json``."""

    def __init__(self, out: TextIO, *, as_json: bool) -> None:
        self.out = out
        self.as_json = as_json

    def connected(self, snapshot: dict[str, Any], url: str) -> None:
        pass  # nothing to print: the events are what this mode shows

    def event(self, msg: dict[str, Any]) -> None:
        line = json.dumps(msg, ensure_ascii=False) if self.as_json else format_event(msg)
        self.out.write(line + "\n")
        self.out.flush()

    def gap(self, msg: dict[str, Any]) -> None:
        err(f"replay gap: {msg}")

    def notice(self, text: str) -> None:
        err(text)

    def timeout(self) -> float | None:
        return None

    def idle(self) -> None:  # pragma: no cover - timeout() is None: never idle
        pass

    def wait(self, seconds: float) -> None:
        time.sleep(seconds)  # back-off between reconnect attempts, not synchronisation


class _LiveSink:
    """The live screen: a :class:`LiveView` redrawn in the terminal's alternate screen.

    Redraws on each frame, at most every :data:`REDRAW_INTERVAL`, and between frames
    so that countdowns and elapsed times move; a frame identical to the one on screen
    is not written again.  Used as a context manager: the terminal gets its normal
    screen and cursor back however the block ends (Ctrl-C included).
    """

    def __init__(
        self,
        out: TextIO,
        view: LiveView,
        *,
        clock: Callable[[], float] = time.time,
        size: Callable[[], os.terminal_size] = shutil.get_terminal_size,
    ) -> None:
        self.out = out
        self.view = view
        self.clock = clock
        self.size = size
        self.last_draw = -math.inf
        self.dirty = False
        self.on_screen: tuple[list[str], os.terminal_size] | None = None

    def __enter__(self) -> _LiveSink:
        self.out.write(_SCREEN_ENTER)
        self.draw(force=True)  # "connecting" until the first snapshot
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            if self.dirty:
                self.draw(force=True)
        finally:
            self.out.write(_SCREEN_LEAVE)
            self.out.flush()

    def draw(self, *, force: bool = False) -> None:
        now = self.clock()
        if not force and now - self.last_draw < REDRAW_INTERVAL:
            self.dirty = True
            return
        size = self.size()
        # One column spare: writing the last cell of a line makes some terminals wrap.
        lines = self.view.render(now, size.columns - 1, size.lines)
        self.last_draw = now
        self.dirty = False
        if self.on_screen == (lines, size):
            return
        self.on_screen = (lines, size)
        self.out.write("\x1b[H" + "\x1b[K\r\n".join(lines) + "\x1b[K\x1b[J")
        self.out.flush()

    def connected(self, snapshot: dict[str, Any], url: str) -> None:
        self.view.feed(snapshot, self.clock())
        self.view.status = f"connected to {url}"
        self.draw(force=True)

    def event(self, msg: dict[str, Any]) -> None:
        self.view.feed(msg, self.clock())
        self.draw()

    def gap(self, msg: dict[str, Any]) -> None:
        self.event(msg)

    def notice(self, text: str) -> None:
        self.view.status = text
        self.draw(force=True)

    def timeout(self) -> float | None:
        if self.dirty:
            return max(0.0, self.last_draw + REDRAW_INTERVAL - self.clock())
        return REDRAW_INTERVAL

    def idle(self) -> None:
        self.draw()

    def wait(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            time.sleep(min(left, REDRAW_INTERVAL))  # back-off, redrawn while it lasts
            self.draw()


def _follow(config: Config, args: argparse.Namespace, sink: _Sink) -> int:
    """Receive events until ``--count`` of them (or forever); the
    :class:`~aaeventd.subscriber.Subscriber` reconnects and resumes after a disconnect.

    Raises:
        CommandFailed: the first connection fails, or the daemon refuses the handshake.
    """
    from aaeventd.subscriber import Subscriber, SubscriberError

    base = stream_url(config, args)
    received = 0
    sub = Subscriber(
        base,
        types=getattr(args, "types", None) or None,
        since=args.since,
        token=configured_token(config),
        on_disconnect=lambda exc: sink.notice(f"disconnected ({exc}); reconnecting"),
        sleep=sink.wait,
    )
    with sub:
        while True:
            try:
                msg = sub.recv(timeout=sink.timeout())
            except SubscriberError as exc:
                raise CommandFailed(str(exc)) from exc
            if msg is None:
                sink.idle()
                continue
            kind = msg.get("type")
            if kind == "connected":
                sink.connected(msg, sub.shown_url)
            elif kind == "replay_gap":
                sink.gap(msg)
            else:
                sink.event(msg)
                received += 1
                if args.count is not None and received >= args.count:
                    return EXIT_OK


def _can_show(out: TextIO, text: str) -> bool:
    try:
        text.encode(out.encoding or "ascii")
    except (UnicodeEncodeError, LookupError):
        return False
    return True


def cmd_watch(args: argparse.Namespace) -> int:
    if args.count is not None and args.count < 1:
        err("--count must be at least 1")
        return EXIT_USAGE
    if args.live and args.json:
        err("--live draws a screen, --json prints JSON lines: choose one")
        return EXIT_USAGE
    config, _ = load(args)
    out = sys.stdout
    try:
        if args.live and out.isatty():
            view = LiveView(ascii=not _can_show(out, "█░▏▎▍▌▋▊▉…"))
            with _LiveSink(out, view) as sink:
                return _follow(config, args, sink)
        # Not a terminal (a pipe, a file): --live falls back to one line per event.
        return _follow(config, args, _PlainSink(out, as_json=args.json))
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    finally:
        with contextlib.suppress(OSError, ValueError):  # stdout closed under us
            out.flush()
