"""Load generators for the benchmarks: the source process and the client processes.

Each function here is the body of one :mod:`multiprocessing` child started by
``run_all.py``; it talks to the parent over one ``Pipe`` end only, with small tuples:
``("ready", ...)`` once set up, then ``("done", result)`` or ``("error", text)``.

Sources write NDJSON to the server's Unix socket with blocking ``sendall``: all lines
at once, or one line per call (several sources at once, the small-batch path).
Clients are asyncio WebSocket clients, one process holding many connections.  Three
client implementations exist:

* ``raw`` (the default): a real RFC 6455 client (HTTP upgrade, ``Sec-WebSocket-Accept``
  checked, pings answered with masked pongs) whose receive path only reads frame
  headers.  It costs the client side a few microseconds per frame, so that on two
  cores the server, not the clients, is what gets measured.
* ``websockets``: ``websockets.asyncio.client.connect`` and ``recv()``, the library's
  full per-message path.  Several times dearer per frame; kept to show how much the
  client side weighs.
* ``probe``: one raw connection that ``json.loads`` every frame and checks that
  nothing is missing or out of order (:class:`_ProbeClient`).

:class:`StalledClient` is the odd one out: a blocking client, driven by the parent,
that completes the handshake and then stops reading (the slow-consumer scenario).

Timestamps are ``time.monotonic_ns()``: every process on the host reads the same
``CLOCK_MONOTONIC``, so a send time taken in one process and a receive time taken in
another subtract to a latency.  Nothing here opens anything but loopback and Unix
sockets, and every wait has a deadline.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import hashlib
import json
import os
import re
import socket
import time
from array import array
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any

from websockets.asyncio.client import connect

_WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
_T_SEND = re.compile(rb'"t_send": ?(\d+)')
_OP_TEXT, _OP_CLOSE, _OP_PING, _OP_PONG = 0x1, 0x8, 0x9, 0xA

# The measured event: a known type (so the daemon validates it with its model), about
# ``LINE_BYTES`` as a source line.  Slots: the source's number (in ``skill_id``, which
# the probe client keys its order check on), step_index, padding, t_send.
_EVENT_TEMPLATE = (
    '{"type":"step_completed","skill_name":"bench","skill_id":"bench-%04d",'
    '"step_name":"fetch_issue","step_index":%d,"duration_ms":12.5,"result":"ok",'
    '"output":"%s","t_send":%d}\n'
)
LINE_BYTES = 200


def _padding(line_bytes: int = LINE_BYTES) -> str:
    probe = _EVENT_TEMPLATE % (1, 0, "", 0)
    # Sized for a 5-digit index and the width of a monotonic_ns() reading now.
    return "x" * max(0, line_bytes - len(probe) - 4 - (len(str(time.monotonic_ns())) - 1))


def event_line(index: int, t_send: int, pad: str, source: int = 1) -> bytes:
    """One source line (with its ``\\n``): a ``step_completed`` event of ~``LINE_BYTES``."""
    return (_EVENT_TEMPLATE % (source, index, pad, t_send)).encode()


# -- the source ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SourcePlan:
    """What one source process sends.

    ``rate`` is events per second for a paced (latency) run, or ``None`` to send
    everything as fast as the socket takes it (throughput run): in one ``sendall``,
    or with ``per_line`` one ``sendall`` per line (one ``send(2)`` each on a blocking
    Unix socket; the small-batch path several sources take).  ``source`` numbers the
    source (its ``skill_id``) when several run at once; a paced source starts
    ``offset_s`` after the start time the parent's ``go`` carries (if it carries one),
    so that several sources' lines interleave evenly.
    """

    socket_path: str
    events: int
    rate: float | None
    hello: bool
    timeout: float
    line_bytes: int = LINE_BYTES
    source: int = 1
    per_line: bool = False
    offset_s: float = 0.0


def source_main(pipe: Connection, plan: SourcePlan) -> None:
    """Connect, say hello (acks off), wait for ``go``, send, report send times."""
    try:
        pipe.send(("done", _run_source(pipe, plan)))
    except Exception as exc:  # report, do not hang the parent
        pipe.send(("error", f"source: {exc!r}"))
    finally:
        pipe.close()


def _run_source(pipe: Connection, plan: SourcePlan) -> dict[str, int]:
    pad = _padding(plan.line_bytes)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(plan.timeout)
    src = plan.source
    try:
        sock.connect(plan.socket_path)
        if plan.hello:
            sock.sendall(b'{"type":"hello","name":"bench","acks":false}\n')
            welcome = sock.recv(4096)
            if b'"welcome"' not in welcome:
                raise RuntimeError(f"no welcome: {welcome[:200]!r}")
        now = time.monotonic_ns()
        lines = [event_line(i, now, pad, src) for i in range(plan.events)]
        pipe.send(("ready", sum(map(len, lines)) // max(plan.events, 1)))
        if not pipe.poll(plan.timeout):
            raise TimeoutError("no go from the parent")
        _, start_at = pipe.recv()
        if plan.rate is None:
            t_first = time.monotonic_ns()
            if plan.per_line:
                for line in lines:
                    sock.sendall(line)
            else:
                sock.sendall(b"".join(lines))
            t_last = time.monotonic_ns()
        else:
            del lines
            period = 1e9 / plan.rate
            start = (start_at or time.monotonic_ns()) + int(plan.offset_s * 1e9)
            t_first = 0
            t_last = start
            for i in range(plan.events):
                delay = (start + i * period - time.monotonic_ns()) / 1e9
                if delay > 0:
                    # Pacing a load generator, not synchronising: nothing to wait on.
                    time.sleep(delay)
                t_last = time.monotonic_ns()
                t_first = t_first or t_last
                sock.sendall(event_line(i, t_last, pad, src))
        return {"t_first": t_first, "t_last": t_last}
    finally:
        sock.close()


# -- the clients --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ClientPlan:
    """What one client process does.

    ``latency``: record ``receive time - t_send`` per event instead of only the time
    the last event arrived (``times``: and each event's ``t_send``).  ``kind``: ``raw``,
    ``websockets`` (see the module doc) or ``probe`` (one raw connection that decodes
    every frame and checks the order, see :class:`_ProbeClient`; ``sources``: how
    many sources share ``events``).  ``path``: the request target, with its query
    (``/?since=0`` for a replay).  ``events == 0``: idle clients, which stay connected
    until the parent says ``stop``.  At most ``window`` handshakes are outstanding at
    once (the daemon closes the oldest past ``websocket.max_pending_handshakes``);
    ``start_at_ns``: connect no earlier than this ``monotonic_ns()`` reading.
    """

    host: str
    port: int
    connections: int
    events: int
    latency: bool
    kind: str
    timeout: float
    path: str = "/"
    times: bool = False
    sources: int = 1
    window: int = 16
    start_at_ns: int = 0


@dataclass(slots=True)
class _Stream:
    """What one connection saw."""

    frames: int = 0
    first_ns: int = 0  # when the ``connected`` frame arrived
    last_ns: int = 0
    last_payload: bytes = b""
    latencies: array[int] = field(default_factory=lambda: array("q"))
    sends: array[int] = field(default_factory=lambda: array("q"))  # t_send, with ``times``
    probe: dict[str, int] = field(default_factory=dict)  # the probe client's checks


def client_main(pipe: Connection, plan: ClientPlan) -> None:
    """Open ``plan.connections`` clients, report ready, then report what they received."""
    try:
        asyncio.run(_run_clients(pipe, plan))
    except Exception as exc:  # report, do not hang the parent
        pipe.send(("error", f"clients: {exc!r}"))
    finally:
        pipe.close()


async def _run_clients(pipe: Connection, plan: ClientPlan) -> None:
    loop = asyncio.get_running_loop()
    delay = (plan.start_at_ns - time.monotonic_ns()) / 1e9
    if delay > 0:
        # Scheduling a load generator (the replay client of a busy run), not synchronising.
        await asyncio.sleep(delay)
    ready = [loop.create_future() for _ in range(plan.connections)]
    done = [loop.create_future() for _ in range(plan.connections)]
    streams = [_Stream() for _ in range(plan.connections)]
    closers: list[asyncio.Transport] = []
    tasks: list[asyncio.Task[None]] = []
    try:
        async with asyncio.timeout(plan.timeout):
            if plan.kind in ("raw", "probe"):
                protocol = _ProbeClient if plan.kind == "probe" else _RawClient
                for i in range(plan.connections):
                    if i >= plan.window:
                        await ready[i - plan.window]
                    transport, _ = await loop.create_connection(
                        functools.partial(protocol, plan, streams[i], ready[i], done[i]),
                        plan.host,
                        plan.port,
                    )
                    closers.append(transport)
            else:
                url = f"ws://{plan.host}:{plan.port}{plan.path}"
                tasks = [
                    asyncio.create_task(
                        _ws_client(
                            url,
                            plan,
                            streams[i],
                            ready[i],
                            done[i],
                            ready[i - plan.window] if i >= plan.window else None,
                        )
                    )
                    for i in range(plan.connections)
                ]
            await asyncio.gather(*ready)
        pipe.send(("ready", plan.connections))
        cpu_before = time.process_time()
        async with asyncio.timeout(plan.timeout):
            if plan.events:
                await asyncio.gather(*done)
            else:  # idle clients: connected until the parent says stop (or one is lost)
                stop = loop.run_in_executor(None, pipe.poll, plan.timeout)
                await asyncio.wait([stop, *done], return_when=asyncio.FIRST_COMPLETED)
                for future in done:
                    if future.done():
                        future.result()  # a lost connection: raise its error
                if not await stop:
                    raise TimeoutError("idle clients: no stop from the parent")
                pipe.recv()
                for future in done:
                    future.cancel()  # the connections are closed below: not a failure
        summary = _summary(streams, plan.latency, plan.times)
        if plan.kind == "probe":
            summary["probe"] = streams[0].probe
        summary["cpu_s"] = time.process_time() - cpu_before
        pipe.send(("done", summary))
    finally:
        for transport in closers:
            transport.abort()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for future in (*ready, *done):
            if future.done() and not future.cancelled():
                future.exception()  # retrieved: the first one already went to the parent


def _summary(streams: list[_Stream], latency: bool, times: bool = False) -> dict[str, Any]:
    result: dict[str, Any] = {
        "frames": [s.frames for s in streams],
        "first_ns": [s.first_ns for s in streams],
        "last_ns": [s.last_ns for s in streams],
        "last_payload": streams[0].last_payload,
    }
    if latency:
        merged = array("q")
        for s in streams:
            merged.extend(s.latencies)
        result["latencies"] = merged.tobytes()
    if times:
        sends = array("q")
        for s in streams:
            sends.extend(s.sends)
        result["sends"] = sends.tobytes()
    return result


def _on_event(
    stream: _Stream, payload: bytes, now: int, latency: bool, times: bool = False
) -> None:
    stream.frames += 1
    if latency:
        match = _T_SEND.search(payload)
        if match is None:
            raise RuntimeError(f"event without t_send: {payload[:200]!r}")
        t_send = int(match.group(1))
        stream.latencies.append(now - t_send)
        if times:
            stream.sends.append(t_send)


async def _ws_client(
    url: str,
    plan: ClientPlan,
    stream: _Stream,
    ready: asyncio.Future[None],
    done: asyncio.Future[None],
    after: asyncio.Future[None] | None,
) -> None:
    if after is not None:  # at most plan.window handshakes outstanding
        await asyncio.shield(after)
    async with connect(
        url, compression=None, max_size=None, user_agent_header="aaeventd-bench"
    ) as ws:
        await ws.recv(decode=False)  # connected
        stream.first_ns = time.monotonic_ns()
        ready.set_result(None)
        for _ in range(plan.events):
            payload = await ws.recv(decode=False)
            now = time.monotonic_ns()
            assert isinstance(payload, bytes)
            _on_event(stream, payload, now, plan.latency)
            stream.last_ns = now
            stream.last_payload = payload
        done.set_result(None)


class _RawClient(asyncio.Protocol):
    """A minimal RFC 6455 client that counts text frames (and reads ``t_send``)."""

    def __init__(
        self,
        plan: ClientPlan,
        stream: _Stream,
        ready: asyncio.Future[None],
        done: asyncio.Future[None],
    ) -> None:
        self.plan = plan
        self.stream = stream
        self.ready = ready
        self.done = done
        self.buf = bytearray()
        self.open = False
        self.connected_seen = False
        self.key = base64.b64encode(os.urandom(16))
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        plan = self.plan
        transport.write(
            b"GET %s HTTP/1.1\r\n"
            b"Host: %s:%d\r\n"
            b"Upgrade: websocket\r\n"
            b"Connection: Upgrade\r\n"
            b"Sec-WebSocket-Key: %s\r\n"
            b"Sec-WebSocket-Version: 13\r\n"
            b"User-Agent: aaeventd-bench\r\n\r\n"
            % (plan.path.encode(), plan.host.encode(), plan.port, self.key)
        )

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail(f"connection lost: {exc!r}")

    def _fail(self, reason: str) -> None:
        for future in (self.ready, self.done):
            if not future.done():
                future.set_exception(ConnectionError(reason))
        if self.transport is not None:
            self.transport.abort()

    def data_received(self, data: bytes) -> None:
        now = time.monotonic_ns()
        buf = self.buf
        buf += data
        if not self.open and not self._handshake():
            return
        n = len(buf)
        pos = 0
        while n - pos >= 2:
            b1 = buf[pos + 1] & 0x7F
            if b1 < 126:
                header, length = 2, b1
            elif b1 == 126:
                if n - pos < 4:
                    break
                header, length = 4, int.from_bytes(buf[pos + 2 : pos + 4], "big")
            else:
                if n - pos < 10:
                    break
                header, length = 10, int.from_bytes(buf[pos + 2 : pos + 10], "big")
            end = pos + header + length
            if end > n:
                break
            opcode = buf[pos] & 0x0F
            if opcode == _OP_TEXT:
                self._text(buf, pos + header, end, now)
            elif opcode == _OP_PING:
                self._send(_OP_PONG, bytes(buf[pos + header : end]))
            elif opcode == _OP_CLOSE:
                self._fail(f"server closed the connection: {bytes(buf[pos + header : end])!r}")
                return
            pos = end
        if pos:
            del buf[:pos]

    def _handshake(self) -> bool:
        buf = self.buf
        end = buf.find(b"\r\n\r\n")
        if end < 0:
            return False
        head = bytes(buf[:end]).decode("latin-1")
        del buf[: end + 4]
        accept = base64.b64encode(hashlib.sha1(self.key + _WS_GUID).digest()).decode()
        if not head.startswith("HTTP/1.1 101") or accept not in head:
            self._fail(f"handshake refused: {head.splitlines()[0]!r}")
            return False
        self.open = True
        return True

    def _text(self, buf: bytearray, start: int, end: int, now: int) -> None:
        if not self.connected_seen:
            self.connected_seen = True
            self.stream.first_ns = now
            self.ready.set_result(None)
            return
        stream = self.stream
        if self.plan.latency:
            _on_event(stream, bytes(buf[start:end]), now, True, self.plan.times)
        else:
            stream.frames += 1
        if stream.frames == self.plan.events:
            stream.last_ns = now
            stream.last_payload = bytes(buf[start:end])
            self.done.set_result(None)

    def _send(self, opcode: int, payload: bytes) -> None:
        # Only short control frames (pongs) are sent.
        assert self.transport is not None
        self.transport.write(_masked(opcode, payload))


class _ProbeClient(_RawClient):
    """One raw connection that decodes every frame and checks the order of events.

    Each event frame is ``json.loads``-ed (the cost a real client pays); ``seq`` must
    go up by exactly one from frame to frame (a jump counts its missing seqs in
    ``seq_gaps``, a step back or a repeat counts in ``seq_backwards``) and each
    source's ``step_index`` (the source is the number in ``skill_id``) by one too
    (``order_errors``).  Latency is read from the decoded ``t_send``.  Done once every
    event has come, or the last event of every source has (``missing`` says how many
    did not).
    """

    def __init__(
        self,
        plan: ClientPlan,
        stream: _Stream,
        ready: asyncio.Future[None],
        done: asyncio.Future[None],
    ) -> None:
        super().__init__(plan, stream, ready, done)
        self.last_seq: int | None = None
        self.next_index = [0] * (plan.sources + 1)
        self.per_source = plan.events // plan.sources
        self.finished = 0
        stream.probe.update(
            decoded=0, seq_gaps=0, seq_backwards=0, order_errors=0, other=0, missing=0
        )

    def _text(self, buf: bytearray, start: int, end: int, now: int) -> None:
        if not self.connected_seen:
            super()._text(buf, start, end, now)
            return
        stream, plan = self.stream, self.plan
        report = stream.probe
        payload = bytes(buf[start:end])
        obj = json.loads(payload)
        report["decoded"] += 1
        seq = obj.get("seq")
        if isinstance(seq, int):
            if self.last_seq is not None and seq != self.last_seq + 1:
                if seq > self.last_seq:
                    report["seq_gaps"] += seq - self.last_seq - 1
                else:
                    report["seq_backwards"] += 1
            self.last_seq = seq if self.last_seq is None else max(seq, self.last_seq)
        if obj.get("type") != "step_completed" or obj.get("skill_name") != "bench":
            report["other"] += 1
            return
        source, index = int(obj["skill_id"][6:]), obj["step_index"]
        if index != self.next_index[source]:
            report["order_errors"] += 1
        self.next_index[source] = index + 1
        stream.frames += 1
        if plan.latency:
            stream.latencies.append(now - obj["t_send"])
            if plan.times:
                stream.sends.append(obj["t_send"])
        stream.last_ns = now
        if index == self.per_source - 1:
            self.finished += 1
        if (stream.frames == plan.events or self.finished == plan.sources) and not self.done.done():
            stream.last_payload = payload
            report["missing"] = plan.events - stream.frames
            self.done.set_result(None)


# -- a client that stops reading -------------------------------------------------------


def _parse_frame(buf: bytearray | bytes, pos: int) -> tuple[int, int, int] | None:
    """``(opcode, payload start, end)`` of the unmasked frame at ``pos``, if complete."""
    n = len(buf)
    if n - pos < 2:
        return None
    b1 = buf[pos + 1] & 0x7F
    if b1 < 126:
        header, length = 2, b1
    elif b1 == 126:
        if n - pos < 4:
            return None
        header, length = 4, int.from_bytes(buf[pos + 2 : pos + 4], "big")
    else:
        if n - pos < 10:
            return None
        header, length = 10, int.from_bytes(buf[pos + 2 : pos + 10], "big")
    end = pos + header + length
    if end > n:
        return None
    return buf[pos] & 0x0F, pos + header, end


def _masked(opcode: int, payload: bytes) -> bytes:
    """A short client frame (masked, RFC 6455 §5.3)."""
    mask = os.urandom(4)
    body = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return bytes((0x80 | opcode, 0x80 | len(payload))) + mask + body


class StalledClient:
    """A WebSocket client that completes the handshake and then reads nothing.

    Blocking, driven by the parent process (it costs nothing while it stalls).  Its
    receive buffer is shrunk (``SO_RCVBUF``, before connecting, so the advertised
    window is small from the start): the kernel soon stops taking data for it, and
    the server's backlog for it grows by every event.  After the run,
    :meth:`read_close` reads what the server had buffered, up to its close frame, and
    answers it.
    """

    def __init__(self, host: str, port: int, *, rcvbuf: int = 4096, timeout: float = 10.0) -> None:
        self.host = host
        self.port = port
        self.timeout = timeout
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.settimeout(timeout)
        self.buf = bytearray()

    def connect(self) -> None:
        """Connect and complete the opening handshake (then read no more)."""
        key = base64.b64encode(os.urandom(16))
        self.sock.connect((self.host, self.port))
        self.sock.sendall(
            b"GET / HTTP/1.1\r\n"
            b"Host: %s:%d\r\n"
            b"Upgrade: websocket\r\n"
            b"Connection: Upgrade\r\n"
            b"Sec-WebSocket-Key: %s\r\n"
            b"Sec-WebSocket-Version: 13\r\n"
            b"User-Agent: aaeventd-bench-stalled\r\n\r\n" % (self.host.encode(), self.port, key)
        )
        while b"\r\n\r\n" not in self.buf:
            data = self.sock.recv(4096)
            if not data:
                raise ConnectionError("stalled client: connection closed during the handshake")
            self.buf += data
        end = self.buf.index(b"\r\n\r\n")
        head = bytes(self.buf[:end]).decode("latin-1")
        del self.buf[: end + 4]
        accept = base64.b64encode(hashlib.sha1(key + _WS_GUID).digest()).decode()
        if not head.startswith("HTTP/1.1 101") or accept not in head:
            raise ConnectionError(f"stalled client: handshake refused: {head.splitlines()[0]!r}")

    def read_close(self, timeout: float) -> dict[str, Any]:
        """Read everything up to the server's close frame; answer it.

        Returns ``code`` and ``reason`` of the close frame (``None`` if the connection
        ended, or ``timeout`` passed, without one), the events (text ``frames`` after
        ``connected``) and the ``bytes`` read before it.
        """
        deadline = time.monotonic() + timeout
        frames = 0
        received = len(self.buf)
        buf = self.buf
        pos = 0
        result: dict[str, Any] = {"code": None, "reason": None, "frames": 0, "bytes": 0}
        try:
            while True:
                while (frame := _parse_frame(buf, pos)) is not None:
                    opcode, start, end = frame
                    if opcode == _OP_TEXT:
                        frames += 1
                    elif opcode == _OP_CLOSE:
                        payload = bytes(buf[start:end])
                        code = int.from_bytes(payload[:2], "big") if len(payload) >= 2 else None
                        result["code"] = code
                        result["reason"] = payload[2:].decode("utf-8", "replace")
                        self.sock.sendall(_masked(_OP_CLOSE, payload[:2]))
                        return result
                    pos = end
                del buf[:pos]
                pos = 0
                left = deadline - time.monotonic()
                if left <= 0:
                    return result
                self.sock.settimeout(left)
                data = self.sock.recv(1 << 20)
                if not data:
                    return result
                received += len(data)
                buf += data
        except OSError:  # reset (the server gave up on us) or timed out
            return result
        finally:
            result["frames"] = max(0, frames - 1)  # the first is ``connected``
            result["bytes"] = received

    def close(self) -> None:
        self.sock.close()
