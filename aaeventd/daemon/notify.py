"""systemd integration: sd_notify messages and socket activation (PROTOCOL §5).

The only module that imports ``sdnotify``.  sdnotify 0.3.2 reads ``NOTIFY_SOCKET``
from :data:`os.environ` only, swallows every error (or, with ``debug=True``, raises
from its constructor) and encodes latin-1, so one non-latin-1 character in
``STATUS=`` silently drops the whole datagram (``READY=1`` with it).
:class:`Notifier` therefore connects the socket itself (a path or an abstract ``@``
name, taken from the environment it is given), lets sdnotify send, keeps every
message printable ASCII, reports send failures instead of hiding them, reconnects
once when the manager re-created its socket, and checks ``WATCHDOG_PID`` itself.
:func:`listen_fds` adopts sockets passed by systemd (``LISTEN_FDS``).

Must not touch: the hub, the servers, the event loop (the caller decides when to
send: :mod:`aaeventd.daemon.app` pings the watchdog from the loop itself).
"""

from __future__ import annotations

import logging
import os
import socket
import time
import unicodedata
from collections.abc import Mapping, MutableMapping

import sdnotify

log = logging.getLogger("aaeventd.notify")

SD_LISTEN_FDS_START = 3
STATUS_MAX_CHARS = 400


def ascii_line(text: str, limit: int = STATUS_MAX_CHARS) -> str:
    """One printable ASCII line of at most ``limit`` characters.

    Accents are dropped (``é`` becomes ``e``), line breaks and tabs become spaces,
    any other character outside printable ASCII becomes ``?``.
    """
    out: list[str] = []
    for ch in unicodedata.normalize("NFKD", text):
        if " " <= ch <= "~":
            out.append(ch)
        elif ch in "\r\n\t":
            out.append(" ")
        elif not unicodedata.combining(ch):
            out.append("?")
    return "".join(out)[:limit]


def _address(name: str) -> str:
    """The ``connect()`` address for a ``NOTIFY_SOCKET`` value (``@`` is abstract)."""
    return "\0" + name[1:] if name.startswith("@") else name


class Notifier:
    """Sends sd_notify datagrams when ``NOTIFY_SOCKET`` is set; otherwise does nothing.

    Every method is safe to call whatever the state: a failed send is logged
    (first failure, then every 100th) and counted in :attr:`failures`, never raised.

    Args:
        env: the environment to read (``NOTIFY_SOCKET``, ``WATCHDOG_USEC``,
            ``WATCHDOG_PID``); ``None`` means :data:`os.environ`.
    """

    def __init__(self, env: Mapping[str, str] | None = None) -> None:
        env = os.environ if env is None else env
        name = env.get("NOTIFY_SOCKET", "")
        #: the ``NOTIFY_SOCKET`` value, or ``None`` (then nothing is ever sent)
        self.address: str | None = name if name.startswith(("/", "@")) and len(name) > 1 else None
        #: seconds between ``WATCHDOG=1`` pings (``WATCHDOG_USEC / 2``), or ``None``
        self.watchdog_interval: float | None = None
        self.failures = 0
        self._notifier: sdnotify.SystemdNotifier | None = None
        if self.address is None:
            if name:
                log.warning("ignoring NOTIFY_SOCKET=%r: not an absolute path or @name", name)
            return
        usec = env.get("WATCHDOG_USEC", "")
        wd_pid = env.get("WATCHDOG_PID", "")
        # sd_watchdog_enabled(3): WATCHDOG_PID, when set, must be our pid.
        if usec.isdigit() and int(usec) > 0 and (not wd_pid or wd_pid == str(os.getpid())):
            self.watchdog_interval = int(usec) / 2_000_000

    @property
    def enabled(self) -> bool:
        """True when ``NOTIFY_SOCKET`` names a socket (sends may still fail)."""
        return self.address is not None

    def _connect(self) -> sdnotify.SystemdNotifier:
        assert self.address is not None
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)  # close-on-exec
        try:
            sock.connect(_address(self.address))
        except OSError:
            sock.close()
            raise
        # SystemdNotifier's constructor would read os.environ; give it our socket.
        notifier = sdnotify.SystemdNotifier.__new__(sdnotify.SystemdNotifier)
        notifier.debug = True  # notify() raises instead of swallowing the error
        notifier.socket = sock
        return notifier

    def _drop(self) -> None:
        if self._notifier is not None:
            self._notifier.socket.close()
            self._notifier = None

    def send(self, *lines: str) -> bool:
        """Send one datagram of ``VAR=VALUE`` lines; False (and logged) on failure."""
        if self.address is None:
            return False
        message = "\n".join(ascii_line(line) for line in lines)
        # Connected once and reused; after a failure (the manager re-created its
        # socket: ECONNREFUSED) connect again and retry once.
        for attempt in (1, 2):
            try:
                if self._notifier is None:
                    self._notifier = self._connect()
                self._notifier.notify(message)
            except OSError as exc:
                self._drop()
                if attempt == 2:
                    self.failures += 1
                    if self.failures == 1 or self.failures % 100 == 0:
                        log.warning(
                            "sd_notify to %s failed (%d so far): %s",
                            self.address,
                            self.failures,
                            exc,
                        )
            else:
                return True
        return False

    def close(self) -> None:
        """Close the socket (a later send connects again)."""
        self._drop()

    def ready(self, status: str | None = None) -> bool:
        """``READY=1`` (startup or reload finished), with ``STATUS=`` if given."""
        lines = ["READY=1"]
        if status:
            lines.append(f"STATUS={status}")
        return self.send(*lines)

    def status(self, text: str) -> bool:
        """``STATUS=`` one ASCII line."""
        return self.send(f"STATUS={text}")

    def watchdog(self) -> bool:
        """``WATCHDOG=1``: call it every :attr:`watchdog_interval` from the event loop."""
        return self.send("WATCHDOG=1")

    def reloading(self) -> bool:
        """``RELOADING=1`` with ``MONOTONIC_USEC=`` (systemd >= 253 requires it)."""
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        return self.send("RELOADING=1", f"MONOTONIC_USEC={usec}")

    def stopping(self) -> bool:
        """``STOPPING=1``: sent first thing on SIGTERM/SIGINT."""
        return self.send("STOPPING=1")


def listen_fds(env: MutableMapping[str, str] | None = None) -> dict[str, list[socket.socket]]:
    """Sockets passed by systemd socket activation, by ``LISTEN_FDNAMES`` name.

    A name may come several times (``aaeventd-ws.socket`` passes 127.0.0.1 and ::1 as
    two ``websocket`` fds): each name maps to its sockets, in fd order.  Only when
    ``LISTEN_PID`` is our pid; the three variables are then removed from the
    environment so children do not inherit them, and the fds are made
    non-inheritable.  Unnamed fds are called ``unknown``.

    Args:
        env: the environment to read and clean; ``None`` means :data:`os.environ`.
    """
    env = os.environ if env is None else env
    found: dict[str, list[socket.socket]] = {}
    if env.get("LISTEN_PID") == str(os.getpid()):
        count_text = env.get("LISTEN_FDS", "0")
        count = int(count_text) if count_text.isdigit() else 0
        names = env.get("LISTEN_FDNAMES", "").split(":") if env.get("LISTEN_FDNAMES") else []
        for i in range(count):
            fd = SD_LISTEN_FDS_START + i
            os.set_inheritable(fd, False)
            name = names[i] if i < len(names) and names[i] else "unknown"
            found.setdefault(name, []).append(socket.socket(fileno=fd))
    for var in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
        env.pop(var, None)
    return found
