"""Every pressure of docs/limits.md at once, on a daemon with the default limits.

The other pressure tests push one bound each, with small budgets so they are quick.
This one keeps every limit at its default and applies the pressures together — clients
that never read, replays nobody reads, a full replay ring, sources holding unfinished
1 MiB lines, sources that never read their replies, the most pending confirmations with
the longest texts, thousands of event types, connections that never finish their
handshake, a crowd of clients connecting at once — and checks the promises of
docs/limits.md: the daemon's peak resident size stays within the worst case the budget
states over its idle size, a heartbeat is answered within a second throughout, a client
that reads gets every event in order, and SIGTERM still ends it within 5 s.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import signal
import socket
import time
from typing import Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from tests.support import (
    KIB,
    MIB,
    TIMEOUT,
    DaemonProcess,
    Source,
    daemon_process,
    non_reader,
    recv_json,
    run,
    wait_for_clients,
)

#: docs/limits.md, "Worst case": what misbehaving sources and clients can grow the daemon
#: by under the default limits.
WORST_CASE_GROWTH = 246 * MIB
HEARTBEAT_LIMIT = 1.0  # PROTOCOL §5, not scaled: the contract's own figure
STOP_LIMIT = 5.0

FLOOD, FLOOD_SIZE, TYPES = 9_000, 4 * KIB, 2_000  # 36 MiB: more than the 32 MiB ring
SLOW_CLIENTS, SLOW_REPLAYS, CROWD = 100, 5, 20
PARTIAL_LINES, DEAF_SOURCES, CONFIRMING_SOURCES, SILENT = 40, 4, 5, 60
PER_SOURCE = 20  # confirmations.max_pending_per_source; 5 x 20 = max_pending
BAD_LINES = 3_000  # invalid_event replies of ~300 bytes: past a deaf source's 1 MiB


async def unix_source(d: DaemonProcess, *, rcvbuf: int | None = None) -> Source:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    if rcvbuf is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, str(d.socket_path))
    reader, writer = await asyncio.open_unix_connection(sock=sock, limit=16 << 20)
    return Source(reader, writer)


def confirmation(source: int, n: int) -> dict[str, Any]:
    text = f"{source}/{n} " + "p" * 4_000
    return {
        "type": "confirmation_required",
        "prompt": text[:4096],
        "claude_suggestion": "c" * 4096,
        "options": [f"{o:02d}" + "o" * 62 for o in range(16)],
        "skill_name": "s" * 4096,
        "step_name": "t" * 4096,
        "timeout_seconds": 600,
    }


class Healthy:
    """A client that reads everything and measures heartbeat round trips meanwhile."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.seqs: list[int] = []
        self.waits: list[float] = []
        self._asked: collections.deque[float] = collections.deque()

    async def read(self, until_seq: int) -> None:
        loop = asyncio.get_running_loop()
        while not self.seqs or self.seqs[-1] < until_seq:
            frame = await recv_json(self.ws)
            if frame["type"] == "heartbeat_ack":
                self.waits.append(loop.time() - self._asked.popleft())
            elif "seq" in frame:
                self.seqs.append(frame["seq"])

    async def beat(self, stop: asyncio.Event) -> None:
        loop = asyncio.get_running_loop()
        while not stop.is_set():
            self._asked.append(loop.time())
            await self.ws.send(json.dumps({"type": "heartbeat"}))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.05)


async def crowd_connects(d: DaemonProcess) -> list[int]:
    """CROWD clients with a 1 MiB frame limit connect at once; their connected sizes."""

    async def one() -> int:
        async with connect(d.url, max_size=1 * MIB, ping_interval=None) as ws:
            frame = await ws.recv()
            assert json.loads(frame)["type"] == "connected"
            return len(frame.encode() if isinstance(frame, str) else frame)

    return list(await asyncio.gather(*(one() for _ in range(CROWD))))


def test_every_pressure_at_once_stays_within_the_documented_worst_case() -> None:
    """All the pressures of docs/limits.md together, default limits: peak RSS over idle
    within the documented worst case, heartbeats within a second, every event in order to
    a reading client, the crowd's connected frames within 1 MiB, and a stop within 5 s."""

    async def body(d: DaemonProcess) -> dict[str, Any]:
        closers: list[socket.socket] = []
        sources: list[Source] = []
        idle = d.memory()
        try:
            async with connect(d.url, max_size=None, ping_interval=None) as ws:
                assert (await recv_json(ws))["type"] == "connected"
                healthy = Healthy(ws)
                loop = asyncio.get_running_loop()
                # Connections that never send their request (pending handshakes).
                for _ in range(SILENT):
                    sock = socket.socket()
                    sock.setblocking(False)
                    await loop.sock_connect(sock, ("127.0.0.1", d.port))
                    closers.append(sock)
                closers += [non_reader(d.port) for _ in range(SLOW_CLIENTS)]
                await wait_for_clients(d, SLOW_CLIENTS + 1)
                # Sources that hold an unfinished line just under max_line_bytes.
                for _ in range(PARTIAL_LINES):
                    src = await unix_source(d)
                    await src.send_raw(b'{"type":"partial","pad":"' + b"x" * (MIB - 64))
                    sources.append(src)
                # Sources that never read their replies, and get many.
                for _ in range(DEAF_SOURCES):
                    src = await unix_source(d, rcvbuf=4096)
                    src.writer.write(b'{"type":"step_started"}\n' * BAD_LINES)
                    sources.append(src)
                # The most pending confirmations, with the longest texts.
                for s in range(CONFIRMING_SOURCES):
                    src = await unix_source(d)
                    for n in range(PER_SOURCE):
                        await src.send(confirmation(s, n))
                    sources.append(src)
                confirmations = CONFIRMING_SOURCES * PER_SOURCE
                await healthy.read(confirmations)
                stop = asyncio.Event()
                beating = asyncio.create_task(healthy.beat(stop))
                try:
                    flood = await unix_source(d)
                    sources.append(flood)
                    pad = "x" * FLOOD_SIZE
                    half = FLOOD // 2
                    for part in (range(half), range(half, FLOOD)):
                        lines = b"".join(
                            json.dumps({"type": f"t{n % TYPES}", "n": n, "pad": pad}).encode()
                            + b"\n"
                            for n in part
                        )
                        flood.writer.write(lines)
                        await asyncio.gather(
                            flood.writer.drain(),
                            healthy.read(confirmations + part[-1] + 1),
                        )
                        if part.start == 0:
                            # Replays of a full ring that nobody reads, and a crowd.
                            closers += [non_reader(d.port, "since=0") for _ in range(SLOW_REPLAYS)]
                            sizes = await crowd_connects(d)
                    metrics = await asyncio.to_thread(d.get, "/metrics")
                finally:
                    stop.set()
                    await beating
                await ws.send(json.dumps({"type": "heartbeat"}))
                peak = d.memory("VmHWM")
                start = time.monotonic()
                d.proc.send_signal(signal.SIGTERM)
                with contextlib.suppress(ConnectionClosed):
                    async with asyncio.timeout(TIMEOUT):
                        while True:
                            await ws.recv()
                code = await asyncio.to_thread(d.proc.wait, 3 * TIMEOUT)
                took = time.monotonic() - start
        finally:
            for sock in closers:
                sock.close()
            for src in sources:
                src.writer.transport.abort()
        return {
            "idle": idle,
            "peak": peak,
            "seqs": healthy.seqs,
            "waits": healthy.waits,
            "sizes": sizes,
            "metrics_bytes": len(metrics),
            "took": took,
            "code": code,
        }

    with daemon_process() as d:
        got = run(body(d), timeout=180)
    growth = got["peak"] - got["idle"]
    assert growth <= WORST_CASE_GROWTH, (
        f"peak RSS {got['peak'] / MIB:.1f} MiB is {growth / MIB:.1f} MiB over idle "
        f"({got['idle'] / MIB:.1f} MiB) > {WORST_CASE_GROWTH / MIB:.0f} MiB"
    )
    total = CONFIRMING_SOURCES * PER_SOURCE + FLOOD
    assert got["seqs"] == list(range(1, total + 1)), f"{len(got['seqs'])} events, not in order"
    assert got["waits"], "no heartbeat was answered"
    assert max(got["waits"]) < HEARTBEAT_LIMIT, (
        f"a heartbeat waited {max(got['waits']):.3f} s ({len(got['waits'])} sent)"
    )
    assert max(got["sizes"]) <= MIB, f"a connected frame was {max(got['sizes'])} bytes"
    assert got["metrics_bytes"] < 64 * KIB, f"/metrics is {got['metrics_bytes']} bytes"
    assert got["took"] < STOP_LIMIT, f"SIGTERM to exit took {got['took']:.2f} s"
    assert got["code"] == 0, f"exit code {got['code']}"
