"""Shared test helpers: an in-process daemon, real source and client connections.

Everything here uses real sockets: a Unix socket in a short private temp dir, the
WebSocket server on port 0 (the real port read back from the server), real
websockets clients.  Waits have deadlines scaled by one factor
(``AAEVENTD_TESTS_TIMEOUT_FACTOR``); nothing sleeps to synchronise.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import http.client
import json
import os
import queue
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, TypeVar

from websockets.asyncio.client import ClientConnection, connect

from aaeventd.config import Config, parse_config
from aaeventd.daemon.app import Daemon

FACTOR = float(os.environ.get("AAEVENTD_TESTS_TIMEOUT_FACTOR", "1"))
TIMEOUT = 10.0 * FACTOR  # the longest any single wait may take
REPO = Path(__file__).resolve().parent.parent

T = TypeVar("T")


def run(coro: Awaitable[T], timeout: float = 60.0) -> T:
    """Run one async test body on a fresh loop, failing (not hanging) past ``timeout``."""

    async def bounded() -> T:
        async with asyncio.timeout(timeout * FACTOR):
            return await coro

    return asyncio.run(bounded())


@contextlib.contextmanager
def short_tmpdir() -> Iterator[Path]:
    """A private directory with a short path (AF_UNIX paths are limited to ~107 bytes)."""
    path = Path(tempfile.mkdtemp(prefix="aaev-", dir="/tmp"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def make_config(tmp: Path, **sections: dict[str, Any]) -> Config:
    """A config whose socket, journal and port are private to one test.

    ``sections`` override keys per section, e.g. ``websocket={"max_clients": 2}``.
    The journal never prunes for free space (``keep_free_bytes: 0``, unless a test
    sets its own): a CI box with little free space in /tmp would otherwise remove the
    older files a replay reads.
    """
    data: dict[str, Any] = {
        "sources": {"socket_path": str(tmp / "ev.sock")},
        "websocket": {"port": 0},
        "journal": {"directory": str(tmp / "journal"), "keep_free_bytes": 0},
    }
    for name, values in sections.items():
        data.setdefault(name, {}).update(values)
    return parse_config(data)


@contextlib.asynccontextmanager
async def running_daemon(
    config: Config, env: dict[str, str] | None = None
) -> AsyncIterator[Daemon]:
    """Run a :class:`Daemon` in this loop until the block ends; yields it once ready."""
    daemon = Daemon(config, env=env if env is not None else {})
    task = asyncio.create_task(daemon.run())
    ready = asyncio.create_task(daemon.ready.wait())
    done, _ = await asyncio.wait({task, ready}, timeout=TIMEOUT, return_when="FIRST_COMPLETED")
    if task in done:
        ready.cancel()
        task.result()  # raises the startup error
        raise AssertionError("daemon stopped before it was ready")
    if ready not in done:
        raise AssertionError("daemon not ready in time")
    try:
        yield daemon
    finally:
        daemon.request_stop()
        await asyncio.wait_for(task, TIMEOUT)


@contextlib.asynccontextmanager
async def private_daemon(**sections: dict[str, Any]) -> AsyncIterator[Daemon]:
    """A running daemon on a private socket, journal and port (``sections`` as make_config)."""
    with short_tmpdir() as tmp:
        async with running_daemon(make_config(tmp, **sections)) as d:
            yield d


@contextlib.asynccontextmanager
async def connected_client(
    d: Daemon, query: str = "", **kwargs: Any
) -> AsyncIterator[tuple[ClientConnection, dict[str, Any]]]:
    """A WebSocket client and its ``connected`` frame (so it is registered)."""
    async with await ws_connect(d, query, **kwargs) as ws:
        first = await recv_json(ws)
        assert first["type"] == "connected", first
        yield ws, first


class ThreadedDaemon(Daemon):
    """A real daemon whose event loop runs in another thread (for blocking callers)."""

    loop: asyncio.AbstractEventLoop | None = None

    def stop_soon(self) -> None:
        """Ask it to stop, from any thread."""
        assert self.loop is not None
        self.loop.call_soon_threadsafe(self.request_stop)

    def call(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run ``coro`` on the daemon's loop and wait for its result."""
        assert self.loop is not None
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(TIMEOUT)


D = TypeVar("D", bound=ThreadedDaemon)


@contextlib.contextmanager
def daemon_thread(daemon: D) -> Iterator[D]:
    """Run ``daemon`` on its own loop in a thread until the block ends; yields it ready."""
    ready = threading.Event()
    errors: list[BaseException] = []

    async def body() -> None:
        daemon.loop = asyncio.get_running_loop()
        task = asyncio.create_task(daemon.run())
        started = asyncio.create_task(daemon.ready.wait())
        await asyncio.wait({task, started}, return_when=asyncio.FIRST_COMPLETED)
        started.cancel()
        ready.set()
        await task

    def target() -> None:
        try:
            asyncio.run(body())
        except BaseException as exc:
            errors.append(exc)
        finally:
            ready.set()

    thread = threading.Thread(target=target, name="aaeventd-daemon", daemon=True)
    thread.start()
    try:
        assert ready.wait(TIMEOUT), "daemon not ready in time"
        if errors:
            raise errors[0]
        assert daemon.ready.is_set(), "daemon stopped before it was ready"
        yield daemon
    finally:
        if daemon.loop is not None and thread.is_alive():
            with contextlib.suppress(RuntimeError):  # the loop may have ended already
                daemon.loop.call_soon_threadsafe(daemon.request_stop)
        thread.join(TIMEOUT)
        assert not thread.is_alive(), "daemon did not stop in time"
    if errors:
        raise errors[0]


class Source:
    """A real source connection on the daemon's Unix socket (NDJSON both ways)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def connect(cls, path: Path | str, *, hello: dict[str, Any] | None = None) -> Source:
        reader, writer = await asyncio.open_unix_connection(str(path), limit=16 << 20)
        source = cls(reader, writer)
        if hello is not None:
            await source.send(hello)
            welcome = await source.recv()
            assert welcome["type"] == "welcome", welcome
        return source

    async def send_raw(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def send(self, obj: dict[str, Any]) -> None:
        await self.send_raw(json.dumps(obj).encode() + b"\n")

    async def recv(self, timeout: float = TIMEOUT) -> dict[str, Any]:
        line = await asyncio.wait_for(self.reader.readline(), timeout)
        if not line:
            raise EOFError("the daemon closed the connection")
        obj = json.loads(line)
        assert isinstance(obj, dict)
        return obj

    async def recv_type(self, kind: str, timeout: float = TIMEOUT) -> dict[str, Any]:
        """The next reply of type ``kind`` (others are skipped)."""
        async with asyncio.timeout(timeout):
            while True:
                msg = await self.recv()
                if msg.get("type") == kind:
                    return msg

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(OSError):
            await self.writer.wait_closed()

    async def __aenter__(self) -> Source:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


def ws_url(daemon: Daemon, query: str = "", path: str = "/") -> str:
    return f"ws://127.0.0.1:{daemon.ws_port}{path}" + (f"?{query}" if query else "")


async def ws_connect(daemon: Daemon, query: str = "", **kwargs: Any) -> ClientConnection:
    """A real WebSocket client; the ``connected`` frame is left for the test to read."""
    return await connect(ws_url(daemon, query, kwargs.pop("path", "/")), **kwargs)


async def recv_json(ws: ClientConnection, timeout: float = TIMEOUT) -> dict[str, Any]:
    raw = await asyncio.wait_for(ws.recv(), timeout)
    obj = json.loads(raw)
    assert isinstance(obj, dict)
    return obj


async def recv_until(
    ws: ClientConnection, pred: Callable[[dict[str, Any]], bool], timeout: float = TIMEOUT
) -> dict[str, Any]:
    """The first frame satisfying ``pred`` (earlier frames are dropped)."""
    async with asyncio.timeout(timeout):
        while True:
            msg = await recv_json(ws)
            if pred(msg):
                return msg


def reap(proc: subprocess.Popen[Any]) -> None:
    """Kill ``proc`` if it still runs, wait for it, and close its stderr pipe."""
    if proc.poll() is None:
        proc.kill()
    proc.wait(TIMEOUT)
    if proc.stderr is not None:
        proc.stderr.close()


def aaeventd_cmd(*args: str) -> list[str]:
    """The command line that runs this checkout's aaeventd in a subprocess."""
    return [sys.executable, "-m", "aaeventd", *args]


def subprocess_env(tmp: Path, **extra: str) -> dict[str, str]:
    """An environment whose XDG dirs are private to one test."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("XDG_", "AAEVENTD_"))}
    env.update(
        XDG_RUNTIME_DIR=str(tmp / "run"),
        XDG_STATE_HOME=str(tmp / "state"),
        XDG_CONFIG_HOME=str(tmp / "cfg"),
        PYTHONUNBUFFERED="1",
    )
    env.pop("NOTIFY_SOCKET", None)
    env.update(extra)
    return env


class StderrLines:
    """Every stderr line of a subprocess, read by a thread and handed out in order.

    The reader thread keeps the pipe drained (a daemon never blocks on a full pipe)
    and, unlike a ``select`` on a buffered text stream, never misses a line that
    arrived in the same read as the previous one.
    """

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        assert proc.stderr is not None
        self.lines: list[str] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._thread = threading.Thread(
            target=self._read, args=(proc.stderr,), name="stderr-reader", daemon=True
        )
        self._thread.start()

    def _read(self, stream: IO[str]) -> None:
        for line in stream:
            self.lines.append(line)
            self._queue.put(line)
        self._queue.put(None)

    def wait_for(self, needle: str, timeout: float = TIMEOUT) -> str:
        """The next line containing ``needle`` (fails on a deadline or at end of stderr)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(
                    f"{needle!r} not seen in stderr within {timeout}s:\n{''.join(self.lines)}"
                ) from None
            if line is None:
                self._queue.put(None)
                raise AssertionError(
                    f"{needle!r} not seen before stderr closed:\n{''.join(self.lines)}"
                )
            if needle in line:
                return line

    def join(self) -> None:
        self._thread.join(TIMEOUT)
        assert not self._thread.is_alive(), "stderr still open after the process ended"


_readers: weakref.WeakKeyDictionary[subprocess.Popen[str], StderrLines] = (
    weakref.WeakKeyDictionary()
)


def stderr_lines(proc: subprocess.Popen[str]) -> StderrLines:
    """The one :class:`StderrLines` reader of ``proc`` (created on first use)."""
    reader = _readers.get(proc)
    if reader is None:
        reader = _readers[proc] = StderrLines(proc)
    return reader


def wait_for_line(proc: subprocess.Popen[str], needle: str, timeout: float = TIMEOUT) -> str:
    """The next stderr line of ``proc`` containing ``needle`` (fails on a deadline)."""
    return stderr_lines(proc).wait_for(needle, timeout)


def proc_status_bytes(pid: int, field: str = "VmRSS") -> int:
    """A memory figure of a process from ``/proc/PID/status`` (``VmRSS``, ``VmHWM``: peak)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no {field} in /proc/{pid}/status")


# -- the daemon as a subprocess, and clients that never read ---------------------------

KIB, MIB = 1 << 10, 1 << 20
READY_RE = re.compile(r"clients on ws://\S+?:(\d+)/")


@dataclass
class DaemonProcess:
    """``aaeventd run`` as a subprocess: its process, port and socket, and its views."""

    proc: subprocess.Popen[str]
    port: int
    socket_path: Path

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/"

    def memory(self, field: str = "VmRSS") -> int:
        return proc_status_bytes(self.proc.pid, field)

    def get(self, path: str) -> str:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=TIMEOUT)
        try:
            conn.request("GET", path, headers={"Host": "localhost"})
            response = conn.getresponse()
            body = response.read().decode()
            assert response.status == 200, (response.status, body, self.log()[-3000:])
            return body
        finally:
            conn.close()

    def metric(self, name: str) -> str:
        for line in self.get("/metrics").splitlines():
            if line.startswith(f"aaeventd_{name} "):
                return line.split(" ", 1)[1]
        raise AssertionError(f"aaeventd_{name} not in /metrics")

    def client_count(self) -> int:
        count = json.loads(self.get("/healthz"))["clients"]
        assert isinstance(count, int)
        return count

    def log(self) -> str:
        return "".join(stderr_lines(self.proc).lines)


@contextlib.contextmanager
def daemon_process(**sections: dict[str, Any]) -> Iterator[DaemonProcess]:
    """``aaeventd run`` with a private socket, journal and port; ``sections`` override."""
    with short_tmpdir() as tmp:
        config: dict[str, Any] = {
            "sources": {"socket_path": str(tmp / "ev.sock")},
            "websocket": {"port": 0, "ping_interval_seconds": None},
            # No pruning for free space: replays read the older files (see make_config).
            "journal": {"directory": str(tmp / "journal"), "keep_free_bytes": 0},
        }
        for name, values in sections.items():
            config.setdefault(name, {}).update(values)
        path = tmp / "config.yaml"
        path.write_text(json.dumps(config), encoding="utf-8")  # JSON is YAML
        proc = subprocess.Popen(
            aaeventd_cmd("run", "--config", str(path)),
            env=subprocess_env(tmp),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            match = READY_RE.search(wait_for_line(proc, " ready: "))
            assert match is not None
            yield DaemonProcess(proc, int(match.group(1)), tmp / "ev.sock")
        finally:
            reap(proc)


def non_reader(port: int, query: str = "") -> socket.socket:
    """A WebSocket client that completes the opening handshake and then never reads."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        # Before connect: a small, fixed window (no autotuning) for the whole connection.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.settimeout(TIMEOUT)
        sock.connect(("127.0.0.1", port))
        key = base64.b64encode(os.urandom(16)).decode()
        target = "/" + (f"?{query}" if query else "")
        sock.sendall(
            f"GET {target} HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n".encode()
        )
        response = b""
        while not response.endswith(b"\r\n\r\n"):
            byte = sock.recv(1)  # one at a time: the frames after it stay unread
            assert byte, f"closed during the handshake: {response!r}"
            response += byte
        assert response.startswith(b"HTTP/1.1 101 "), response
    except BaseException:
        sock.close()
        raise
    return sock


async def wait_for_clients(d: DaemonProcess, count: int) -> None:
    """Until the daemon has registered ``count`` clients (each check is a real request)."""
    async with asyncio.timeout(TIMEOUT):
        while await asyncio.to_thread(d.client_count) != count:
            pass


def event_lines(first: int, count: int, size: int) -> bytes:
    pad = "x" * size
    return b"".join(
        json.dumps({"type": "bulk", "n": n, "pad": pad}).encode() + b"\n"
        for n in range(first, first + count)
    )
