"""The source-side library: how a program sends events to aaeventd.

:class:`EventSource` speaks the NDJSON protocol of PROTOCOL §1 over the Unix
socket: ``hello`` with acks, one event per line, and waits for each ``ack`` or
``error``.  It imports nothing of the daemon's internals, so it can be vendored by a
source.

Example::

    with EventSource(name="skill-engine") as src:
        ack = src.emit("skill_started", skill_name="start_work", total_steps=5)
        print(ack.seq, ack.delivered)
        ack = src.emit("confirmation_required", message="Deploy?", timeout_seconds=120)
        for msg in src.messages():  # blocks until a UI answers or the timeout passes
            if msg.get("id") == ack.id:
                print(msg["type"], msg.get("response"))
                break
"""

from __future__ import annotations

import json
import os
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


class SourceError(Exception):
    """The daemon could not be reached or broke the protocol."""


class EventRejected(SourceError):
    """The daemon refused an event: ``code``, ``message`` and the ``line`` number."""

    def __init__(self, reply: dict[str, Any]) -> None:
        self.reply = reply
        self.code = str(reply.get("code"))
        self.message = str(reply.get("message"))
        self.line = reply.get("line")
        self.details = reply.get("details")
        super().__init__(f"{self.code}: {self.message}")


@dataclass(frozen=True)
class Ack:
    """The daemon accepted an event: its ``seq`` and how many clients got it."""

    seq: int
    delivered: int
    id: str | None = None
    reply: dict[str, Any] = field(default_factory=dict)


def default_socket_path(env: dict[str, str] | None = None) -> Path:
    """Where the daemon listens by default (PROTOCOL §1), without reading config."""
    env = dict(os.environ) if env is None else env
    if env.get("AAEVENTD_SOCKET"):
        return Path(env["AAEVENTD_SOCKET"])
    runtime = env.get("XDG_RUNTIME_DIR")
    if runtime:
        return Path(runtime) / "aaeventd" / "events.sock"
    return Path(f"/tmp/aaeventd-{os.getuid()}/events.sock")


class EventSource:
    """A blocking, thread-safe connection that sends events and waits for acks.

    Args:
        socket_path: the daemon's Unix socket; default as :func:`default_socket_path`.
        name: sent in ``hello`` so the daemon's logs and ``/clients`` show who we are.
        timeout: seconds to wait for a connection or a reply.
    """

    def __init__(
        self,
        socket_path: str | os.PathLike[str] | None = None,
        *,
        name: str = "aaeventd-client",
        timeout: float = 10.0,
    ) -> None:
        self.socket_path = Path(socket_path) if socket_path is not None else default_socket_path()
        self.name = name
        self.timeout = timeout
        self.welcome: dict[str, Any] | None = None
        self._sock: socket.socket | None = None
        self._buffer = b""
        self._lock = threading.Lock()
        self._line = 0
        self._side_messages: list[dict[str, Any]] = []

    def __enter__(self) -> EventSource:
        self.connect()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def connect(self) -> None:
        """Connect and say ``hello`` (acks on).

        Raises:
            SourceError: the daemon is not reachable or refused us.
        """
        self.close()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(str(self.socket_path))
        except OSError as exc:
            sock.close()
            raise SourceError(
                f"cannot connect to {self.socket_path}: {exc.strerror or exc} "
                "(is aaeventd running?)"
            ) from exc
        self._sock = sock
        self._buffer = b""
        self._line = 0
        self._write({"type": "hello", "name": self.name, "acks": True})
        reply = self._read_reply()
        if reply.get("type") == "error":
            self.close()
            raise EventRejected(reply)
        self.welcome = reply

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def emit(self, event_type: str, **fields: Any) -> Ack:
        """Send one event and wait for its ``ack``.

        Raises:
            EventRejected: the daemon refused it (the reply's code and message).
        """
        return self.send({"type": event_type, **fields})

    def send(self, event: dict[str, Any]) -> Ack:
        """Send an event object as is; see :meth:`emit`."""
        return self.send_line(json.dumps(event, ensure_ascii=False, allow_nan=False).encode())

    def send_line(self, line: bytes) -> Ack:
        """Send one already-encoded JSON line (without newline) and wait for the reply."""
        with self._lock:
            if self._sock is None:
                self.connect()
            self._write_raw(line)
            reply = self._read_reply()
            if reply.get("type") == "error":
                raise EventRejected(reply)
            return Ack(
                seq=int(reply["seq"]),
                delivered=int(reply.get("delivered", 0)),
                id=reply.get("id"),
                reply=reply,
            )

    def messages(self, timeout: float | None = None) -> Iterator[dict[str, Any]]:
        """Replies that are not acks (confirmation answers and expiries), in order.

        Blocks between messages; call it from one thread, not while another thread
        is sending on this connection.

        Args:
            timeout: seconds to wait for each message; ``None`` waits as long as the
                connection lives (a confirmation may take minutes to be answered).

        Raises:
            TimeoutError: nothing arrived within ``timeout``.

        The iteration ends when the daemon closes the connection.
        """
        while True:
            if self._side_messages:
                yield self._side_messages.pop(0)
                continue
            try:
                msg = self._read_line_within(timeout)
            except SourceError:  # closed; a TimeoutError propagates
                return
            if msg.get("type") not in ("ack", "welcome", "error"):
                yield msg

    # -- wire --------------------------------------------------------------------

    def _write(self, obj: dict[str, Any]) -> None:
        self._write_raw(json.dumps(obj, ensure_ascii=False).encode())

    def _write_raw(self, line: bytes) -> None:
        assert self._sock is not None
        self._line += 1
        try:
            self._sock.sendall(line + b"\n")
        except OSError as exc:
            self.close()
            raise SourceError(f"lost the connection to aaeventd: {exc}") from exc

    def _read_reply(self) -> dict[str, Any]:
        """The next ack/welcome/error; other messages are kept for :meth:`messages`."""
        while True:
            msg = self._read_line()
            if msg.get("type") in ("ack", "welcome", "error"):
                return msg
            self._side_messages.append(msg)

    def _read_line(self) -> dict[str, Any]:
        """The next line, within the connection's timeout (a late reply is an error)."""
        try:
            return self._read_line_within(self.timeout)
        except TimeoutError:
            # The late reply would be taken for the next request's: start afresh.
            self.close()
            raise SourceError(f"no reply from aaeventd within {self.timeout} s") from None

    def _read_line_within(self, timeout: float | None) -> dict[str, Any]:
        """The next line from the daemon; ``timeout`` ``None`` waits without limit.

        Raises:
            TimeoutError: nothing complete arrived in time (the connection stays usable).
            SourceError: the connection failed or the daemon sent something that is
                not a JSON object.
        """
        sock = self._sock
        if sock is None:
            raise SourceError("not connected")
        sock.settimeout(timeout)
        try:
            while b"\n" not in self._buffer:
                try:
                    chunk = sock.recv(65536)
                except TimeoutError:
                    raise
                except OSError as exc:  # reset, or closed under us
                    raise SourceError(f"no reply from aaeventd: {exc}") from exc
                if not chunk:
                    raise SourceError("aaeventd closed the connection")
                self._buffer += chunk
        finally:
            sock.settimeout(self.timeout)
        line, _, self._buffer = self._buffer.partition(b"\n")
        try:
            obj = json.loads(line)
        except ValueError as exc:
            raise SourceError(f"unexpected reply: {line[:200]!r}") from exc
        if not isinstance(obj, dict):
            raise SourceError(f"unexpected reply: {line[:200]!r}")
        return obj
