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
import functools
import http.client
import json
import os
import pwd
import queue
import re
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, TypeVar

import pytest
from prometheus_client.parser import text_string_to_metric_families
from websockets.asyncio.client import ClientConnection, connect
from websockets.sync.client import ClientConnection as SyncClientConnection
from websockets.sync.client import connect as ws_connect_sync

from aaeventd.cli import main
from aaeventd.client import EventSource
from aaeventd.config import Config, parse_config
from aaeventd.daemon.app import Daemon
from aaeventd.daemon.wsserver import ClientSession, StreamStart

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
    """Run a :class:`Daemon` in this loop until the block ends; yields it once started
    (``daemon.listening``: what :meth:`Daemon.start` bound)."""
    daemon = Daemon(config, env=env if env is not None else {})
    async with asyncio.timeout(TIMEOUT):
        await daemon.start()  # raises the startup error
    task = asyncio.create_task(daemon.serve())
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
    """A real daemon whose event loop runs in another thread (for blocking callers).

    It also tells other threads when a client's stream opens (:meth:`wait_for_client`):
    the stream is registered in the same event-loop step as ``open_stream``, so an
    event sent after the signal reaches that client live.
    """

    loop: asyncio.AbstractEventLoop | None = None

    def __init__(self, config: Config, *, env: dict[str, str] | None = None) -> None:
        super().__init__(config, env=env if env is not None else {})
        self._streams_opened = threading.Semaphore(0)
        self.opened: list[tuple[ClientSession, int | None]] = []  # (session, since)

    def open_stream(
        self, session: ClientSession, since: int | None, epoch: str | None
    ) -> StreamStart:
        start = super().open_stream(session, since, epoch)
        self.opened.append((session, since))
        self._streams_opened.release()
        return start

    def wait_for_client(self) -> None:
        """Until a client's stream has opened (one per call)."""
        assert self._streams_opened.acquire(timeout=TIMEOUT), "no client connected in time"

    @property
    def url(self) -> str:
        assert self.listening is not None
        return f"ws://127.0.0.1:{self.listening.port}/"

    @property
    def sock(self) -> str:
        assert self.listening is not None
        return str(self.listening.socket_path)

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
    """Run ``daemon`` on its own loop in a thread until the block ends; yields it started."""
    started = threading.Event()
    errors: list[BaseException] = []

    async def body() -> None:
        daemon.loop = asyncio.get_running_loop()
        try:
            await daemon.start()
        finally:
            started.set()
        await daemon.serve()

    def target() -> None:
        try:
            asyncio.run(body())
        except BaseException as exc:
            errors.append(exc)
        finally:
            started.set()

    thread = threading.Thread(target=target, name="aaeventd-daemon", daemon=True)
    thread.start()
    try:
        assert started.wait(TIMEOUT), "daemon not started in time"
        if errors:
            raise errors[0]
        assert daemon.listening is not None, "daemon stopped before it was started"
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
        XDG_DATA_HOME=str(tmp / "data"),
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
# The "ready" log line (docs/protocol.md §7): a subprocess's readiness, read here alone.
READY_RE = re.compile(
    r" ready: sources on (?P<sock>\S+), clients on ws://(?P<host>\S+?):(?P<port>\d+)/ "
    r"\(epoch (?P<epoch>\S+), seq (?P<seq>\d+)\)"
)


@dataclass
class DaemonProcess:
    """``aaeventd run`` as a subprocess and what its ready line said; its views."""

    proc: subprocess.Popen[str]
    stderr: StderrLines
    sock: str
    port: int
    epoch: str
    seq: int

    @property
    def socket_path(self) -> Path:
        return Path(self.sock)

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/"

    @property
    def lines(self) -> list[str]:
        """Every stderr line so far."""
        return self.stderr.lines

    def log(self) -> str:
        return "".join(self.stderr.lines)

    def stop(self, sig: int = signal.SIGTERM) -> int:
        """Send ``sig``, wait for the exit and the end of stderr; the exit code."""
        self.proc.send_signal(sig)
        code = self.proc.wait(TIMEOUT)
        self.stderr.join()
        return code

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


def write_config(tmp: Path, name: str = "config.yaml", **sections: dict[str, Any]) -> str:
    """A config file private to one test (JSON is YAML; ``sections`` override); its path.

    Socket, journal and port are private; no pings; the journal never prunes for free
    space (replays and restarts read the older files, see :func:`make_config`).
    """
    data: dict[str, Any] = {
        "sources": {"socket_path": str(tmp / "ev.sock")},
        "websocket": {"port": 0, "ping_interval_seconds": None},
        "journal": {"directory": str(tmp / "journal"), "keep_free_bytes": 0},
    }
    for section, values in sections.items():
        data.setdefault(section, {}).update(values)
    path = tmp / name
    path.write_text(json.dumps(data), encoding="utf-8")
    return str(path)


@contextlib.contextmanager
def spawn(
    *args: str,
    env: dict[str, str],
    preexec_fn: Callable[[], None] | None = None,
) -> Iterator[tuple[subprocess.Popen[str], StderrLines]]:
    """``aaeventd ARGS`` as a subprocess with stderr read line by line; always killed after."""
    proc = subprocess.Popen(
        aaeventd_cmd(*args),
        env=env,
        cwd=REPO,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=preexec_fn,
    )
    stderr = stderr_lines(proc)
    try:
        yield proc, stderr
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(TIMEOUT)
        stderr.join()
        assert proc.stderr is not None
        proc.stderr.close()


@contextlib.contextmanager
def daemon_process(
    tmp: Path | None = None,
    *,
    args: Sequence[str] | None = None,
    env: dict[str, str] | None = None,
    preexec_fn: Callable[[], None] | None = None,
    before_ready: str | None = None,
    **sections: dict[str, Any],
) -> Iterator[DaemonProcess]:
    """``aaeventd run`` as a subprocess; yields once it logged ready; always killed after.

    The one place a subprocess daemon's readiness is read (its documented ready line).

    Args:
        tmp: the test's private directory (``None``: one of its own for the block).
        args: the arguments after ``run`` (``["--config", path]``); by default a
            config written by :func:`write_config` with ``sections``.
        env: the whole environment (default :func:`subprocess_env` of ``tmp``).
        preexec_fn: run in the child before exec (``setrlimit``...).
        before_ready: a log line fragment that must appear before the ready line.
    """
    with contextlib.ExitStack() as stack:
        if tmp is None:
            tmp = stack.enter_context(short_tmpdir())
        if args is None:
            args = ["--config", write_config(tmp, **sections)]
        else:
            assert not sections, "with args, sections go in the config file they name"
        env = env if env is not None else subprocess_env(tmp)
        proc, stderr = stack.enter_context(spawn("run", *args, env=env, preexec_fn=preexec_fn))
        if before_ready is not None:
            stderr.wait_for(before_ready)
        line = stderr.wait_for(" ready: ")
        match = READY_RE.search(line)
        assert match is not None, line
        yield DaemonProcess(
            proc,
            stderr,
            sock=match["sock"],
            port=int(match["port"]),
            epoch=match["epoch"],
            seq=int(match["seq"]),
        )


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


# -- shared by several test modules, so that none imports another ----------------------

# PROTOCOL §5: from SIGTERM or SIGINT to a clean exit within 5 s.
STOP_LIMIT = 5.0


# Acting as another uid (``nobody``): only root can, and CI runs the suite as root.
IS_ROOT = os.geteuid() == 0
IN_CI = os.environ.get("AAEVENTD_CI") == "1"
# Off CI a developer may run the suite unprivileged; CI runs as root and must run these.
needs_root = pytest.mark.skipif(
    not IS_ROOT and not IN_CI,
    reason="needs root to act as another uid (nobody); CI runs the suite as root",
)


def require(available: bool, what: str) -> None:
    """Go on only if ``available``: off CI a missing tool skips, on CI it fails."""
    if available:
        return
    if IN_CI:
        pytest.fail(f"AAEVENTD_CI=1: {what}")
    pytest.skip(what)


@functools.cache
def other_user() -> tuple[int, int, str]:
    """``nobody``'s uid, gid, and a Python interpreter that user may run."""
    entry = pwd.getpwnam("nobody")
    candidates = [sys.executable, shutil.which("python3") or "", "/usr/bin/python3"]
    for python in candidates:
        if not python:
            continue
        try:
            probe = subprocess.run(
                [python, "-I", "-c", "pass"],
                user=entry.pw_uid,
                group=entry.pw_gid,
                extra_groups=[],
                cwd="/",
                env={"PATH": "/usr/bin:/bin"},
                capture_output=True,
                timeout=TIMEOUT,
                check=False,
            )
        except PermissionError:  # e.g. a venv under /root, which nobody cannot enter
            continue
        if probe.returncode == 0:
            return entry.pw_uid, entry.pw_gid, python
    raise AssertionError(f"user nobody can run none of {candidates}")


async def run_script_as_other_user(script: str, *args: str) -> str:
    """Run a Python ``script`` with ``args`` as ``nobody``; its standard output."""
    uid, gid, python = other_user()
    proc = await asyncio.create_subprocess_exec(
        python,
        "-I",
        "-c",
        script,
        *args,
        user=uid,
        group=gid,
        extra_groups=[],
        cwd="/",
        env={"PATH": "/usr/bin:/bin"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), TIMEOUT)
    assert proc.returncode == 0, err.decode()
    return out.decode()


# Raw connections and pacing.


async def pause(seconds: float) -> None:
    """A client's pause between attempts (pacing, not synchronisation)."""
    done = asyncio.get_running_loop().create_future()
    handle = asyncio.get_running_loop().call_later(seconds, done.set_result, None)
    try:
        await done
    finally:
        handle.cancel()


async def peer_closed(sock: socket.socket, timeout: float) -> str:
    """Wait until the other end ends ``sock`` (non-blocking): ``eof`` or ``reset``."""
    loop = asyncio.get_running_loop()
    try:
        data = await asyncio.wait_for(loop.sock_recv(sock, 1 << 16), timeout)
    except ConnectionResetError:
        return "reset"
    assert data == b"" or data.startswith(b"HTTP/1.1 "), data[:200]
    return "eof"


async def silent_connection(port: int) -> socket.socket:
    """A TCP connection to the daemon that never sends a byte."""
    sock = socket.socket()
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
    return sock


# Plain HTTP on the WebSocket port, and /metrics read with the reference parser.


async def http_get(port: int, path: str) -> tuple[int, str]:
    """One ``GET`` on a new connection: the status and the body."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode())
    await writer.drain()
    raw = await asyncio.wait_for(reader.read(), TIMEOUT)
    writer.close()
    await writer.wait_closed()
    head, _, body = raw.partition(b"\r\n\r\n")
    return int(head.split()[1]), body.decode()


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of a ``/metrics`` text by (name, sorted labels)."""
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


# A blocking source and a blocking client (for tests that drive a daemon subprocess).


class LineSource:
    """A blocking source on the Unix socket that said hello with acks."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.reader = sock.makefile("rb")

    def send(self, obj: dict[str, Any]) -> dict[str, Any]:
        """Send one event; its reply."""
        self.sock.sendall(json.dumps(obj).encode() + b"\n")
        return self.recv()

    def recv(self) -> dict[str, Any]:
        line = self.reader.readline()
        assert line, "the daemon closed the source connection"
        obj = json.loads(line)
        assert isinstance(obj, dict)
        return obj


@contextlib.contextmanager
def line_source(path: Path) -> Iterator[LineSource]:
    """A :class:`LineSource` on the socket at ``path``, welcomed."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(TIMEOUT)
        sock.connect(str(path))
        source = LineSource(sock)
        try:
            welcome = source.send({"type": "hello", "name": "test", "acks": True})
            assert welcome["type"] == "welcome", welcome
            yield source
        finally:
            source.reader.close()


@contextlib.contextmanager
def ws_client(port: int) -> Iterator[SyncClientConnection]:
    """A WebSocket client whose ``connected`` frame has been read."""
    with ws_connect_sync(f"ws://127.0.0.1:{port}/", open_timeout=TIMEOUT) as ws:
        first = json.loads(ws.recv(timeout=TIMEOUT))
        assert first["type"] == "connected", first
        yield ws


# A daemon subprocess's stderr as bytes (its config: :func:`write_config`).


class Log:
    """The daemon's stderr, read line by line with a deadline (raw fd: no hidden buffer)."""

    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        assert proc.stderr is not None
        self.fd = proc.stderr.fileno()
        self.buffer = b""

    def until(self, needle: str, timeout: float = TIMEOUT) -> list[str]:
        """The lines read up to and including the first containing ``needle``."""
        end = time.monotonic() + timeout
        seen: list[str] = []
        while True:
            while b"\n" in self.buffer:
                raw, self.buffer = self.buffer.split(b"\n", 1)
                line = raw.decode("utf-8", "replace")
                seen.append(line)
                if needle in line:
                    return seen
            ready, _, _ = select.select([self.fd], [], [], max(0.0, end - time.monotonic()))
            chunk = os.read(self.fd, 65536) if ready else b""
            if not chunk:
                raise AssertionError(f"{needle!r} not logged in {timeout}s:\n" + "\n".join(seen))
            self.buffer += chunk


# The CLI in-process: a config file, ``main`` in a thread, events sent with the library.


def write_yaml(path: Path, data: dict[str, Any]) -> str:
    """Write ``data`` as a config file (JSON is YAML) and return its path."""
    path.write_text(json.dumps(data), encoding="utf-8")
    return str(path)


@dataclass
class BackgroundMain:
    """``main(argv)`` running in a thread (for ``watch``, which blocks)."""

    argv: Sequence[str]
    result: list[int] = field(default_factory=list)
    thread: threading.Thread | None = None

    def start(self) -> BackgroundMain:
        self.thread = threading.Thread(
            target=lambda: self.result.append(main(self.argv)), name="cli-main", daemon=True
        )
        self.thread.start()
        return self

    def exit_code(self) -> int:
        assert self.thread is not None
        self.thread.join(TIMEOUT)
        assert not self.thread.is_alive(), f"main({list(self.argv)}) did not return in time"
        assert len(self.result) == 1
        return self.result[0]


def emit_all(d: ThreadedDaemon, *events: dict[str, Any]) -> list[int]:
    """Send events with the client library; their seqs."""
    with EventSource(d.sock, name="test", timeout=TIMEOUT) as source:
        return [source.send(event).seq for event in events]


# A fake ``systemctl`` on PATH.


@contextlib.contextmanager
def fake_systemctl(tmp: Path, monkeypatch: pytest.MonkeyPatch, rc: int) -> Iterator[Path]:
    """A ``systemctl`` on PATH that records its arguments (no user manager runs here)."""
    bin_dir = tmp / "bin"
    bin_dir.mkdir()
    calls = tmp / "systemctl-calls"
    script = bin_dir / "systemctl"
    script.write_text(
        f'#!/bin/sh\necho "$*" >> {calls}\n'
        f'[ {rc} -eq 0 ] || echo "Failed to connect to bus: No medium found" >&2\nexit {rc}\n',
        encoding="utf-8",
    )
    script.chmod(0o755)
    monkeypatch.setenv("PATH", str(bin_dir))
    yield calls


def healthz_over(host: str, port: int) -> dict[str, Any]:
    """``GET /healthz`` on ``host`` (an address; IPv6 may be in brackets), as a dict."""
    conn = http.client.HTTPConnection(host.strip("[]"), port, timeout=TIMEOUT)
    try:
        conn.request("GET", "/healthz", headers={"Host": f"localhost:{port}"})
        response = conn.getresponse()
        body = json.loads(response.read())
        assert response.status == 200, (response.status, body)
        assert isinstance(body, dict)
        return body
    finally:
        conn.close()


def run_python(code: str) -> subprocess.CompletedProcess[str]:
    """Run ``python -c code`` from the repository, output captured, with the deadline."""
    return subprocess.run(
        [sys.executable, "-c", code],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )
