"""systemd integration: sd_notify messages and socket activation (PROTOCOL §5).

The only module that imports ``sdnotify``.  sdnotify 0.3.2 swallows every error and
encodes latin-1, so one non-latin-1 character in ``STATUS=`` silently drops the whole
datagram (``READY=1`` with it).  :class:`Notifier` therefore keeps every message
ASCII, reports send failures, checks ``WATCHDOG_PID`` itself and supports abstract
(``@``) sockets.  :func:`listen_fds` adopts sockets passed by systemd.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Mapping, MutableMapping

import sdnotify

log = logging.getLogger(__name__)

SD_LISTEN_FDS_START = 3


def ascii_line(text: str, limit: int = 400) -> str:
    """One printable ASCII line: other characters become ``?``, newlines spaces."""
    cleaned = "".join(
        ch if " " <= ch <= "~" else ("?" if ch not in "\r\n\t" else " ") for ch in text
    )
    return cleaned[:limit]


class Notifier:
    """Sends sd_notify datagrams when ``NOTIFY_SOCKET`` is set; otherwise does nothing."""

    def __init__(self, env: Mapping[str, str] | None = None) -> None:
        env = os.environ if env is None else env
        self.address = env.get("NOTIFY_SOCKET") or None
        self._notifier: sdnotify.SystemdNotifier | None = None
        self.watchdog_interval: float | None = None
        self.failures = 0
        if self.address:
            self._notifier = sdnotify.SystemdNotifier(debug=True)
        usec = env.get("WATCHDOG_USEC")
        wd_pid = env.get("WATCHDOG_PID")
        if usec and usec.isdigit() and int(usec) > 0 and (not wd_pid or wd_pid == str(os.getpid())):
            self.watchdog_interval = int(usec) / 2_000_000

    @property
    def enabled(self) -> bool:
        return self._notifier is not None

    def send(self, *lines: str) -> bool:
        """Send one datagram of ``VAR=VALUE`` lines; False (and logged) on failure."""
        if self._notifier is None:
            return False
        message = "\n".join(ascii_line(line) for line in lines)
        try:
            # sdnotify connects once in __init__ and handles "@" abstract addresses.
            self._notifier.socket.sendall(message.encode("ascii"))
        except OSError as exc:
            self.failures += 1
            if self.failures == 1 or self.failures % 100 == 0:
                log.warning("sd_notify to %s failed: %s", self.address, exc)
            return False
        return True

    def ready(self, status: str | None = None) -> None:
        lines = ["READY=1"]
        if status:
            lines.append(f"STATUS={status}")
        self.send(*lines)

    def status(self, text: str) -> None:
        self.send(f"STATUS={text}")

    def watchdog(self) -> None:
        self.send("WATCHDOG=1")

    def reloading(self) -> None:
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        self.send("RELOADING=1", f"MONOTONIC_USEC={usec}")

    def stopping(self) -> None:
        self.send("STOPPING=1")


def listen_fds(env: MutableMapping[str, str] | None = None) -> dict[str, socket.socket]:
    """Sockets passed by systemd socket activation, by ``LISTEN_FDNAMES`` name.

    Only when ``LISTEN_PID`` is our pid; the three variables are then removed from
    the environment so children do not inherit them, and the fds are made
    non-inheritable.  Unnamed fds are called ``unknown``, ``unknown2``...
    """
    env = os.environ if env is None else env
    found: dict[str, socket.socket] = {}
    if env.get("LISTEN_PID") == str(os.getpid()):
        count_text = env.get("LISTEN_FDS", "0")
        count = int(count_text) if count_text.isdigit() else 0
        names = env.get("LISTEN_FDNAMES", "").split(":") if env.get("LISTEN_FDNAMES") else []
        for i in range(count):
            fd = SD_LISTEN_FDS_START + i
            os.set_inheritable(fd, False)
            name = names[i] if i < len(names) and names[i] else "unknown"
            key, n = name, 1
            while key in found:
                n += 1
                key = f"{name}{n}"
            found[key] = socket.socket(fileno=fd)
    for var in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
        env.pop(var, None)
    return found
