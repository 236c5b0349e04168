"""Memory that stays bounded however clients behave, and a stop that is always quick.

PROTOCOL §2.3: each client holds at most ``slow_client_buffer_bytes`` unsent, a replay
included; all clients together at most ``clients_buffer_budget_bytes``; the replay ring
at most ``replay_buffer_bytes``.  §5: a heartbeat is answered within a second under
load, and SIGTERM ends the daemon within 5 s even when a client never reads.

The daemon runs as a real subprocess, so the figures are the process's own: its peak
resident size (``VmHWM`` in ``/proc/PID/status``) against its resident size before the
pressure, and its time from SIGTERM to exit.  A client that stops reading is a raw TCP
socket that did the WebSocket handshake with a 4 KiB receive buffer, so the kernel's
buffers cannot hide the backlog the daemon keeps.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import socket
import struct
import time
from pathlib import Path
from typing import Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from aaeventd.config import WebSocketConfig
from aaeventd.daemon.wsserver import INCOMING_QUEUE
from tests.support import (
    KIB,
    MIB,
    STOP_LIMIT,
    TIMEOUT,
    DaemonProcess,
    Source,
    daemon_process,
    event_lines,
    make_config,
    non_reader,
    recv_json,
    run,
    running_daemon,
    short_tmpdir,
    stderr_lines,
    wait_for_clients,
    wait_for_line,
)

# What the daemon may grow by besides the buffers the config bounds: the allocator's
# arenas and the freed blocks it keeps, one read batch of events joined for the
# journal and the fan-out, the ring's per-event bookkeeping (~100 bytes an event), the
# log records in flight.  None of it grows with the number of clients that stop
# reading, the size of a replay or the size of the events, which is what the budgets
# bound: without them the same tests grew by 30 to 50 MiB.
ALLOWANCE = 8 * MIB

# PROTOCOL §5, not scaled by the tests' timeout factor: the contract's own figure (the
# stop's is support.STOP_LIMIT).
HEARTBEAT_LIMIT = 1.0

HELLO = {"type": "hello", "name": "budgets", "acks": True}


async def emit(src: Source, first: int, count: int, size: int) -> None:
    """Send ``count`` events and wait for their acks (so they are in the ring)."""
    await src.send_raw(event_lines(first, count, size))
    for _ in range(count):
        assert (await src.recv())["type"] == "ack"


async def read_events(ws: ClientConnection, count: int) -> list[int]:
    """The seqs of the next ``count`` frames, which must all be events."""
    seqs = []
    for _ in range(count):
        frame = await recv_json(ws)
        assert "seq" in frame, frame
        seqs.append(frame["seq"])
    return seqs


def wait_for_slow_closes(d: DaemonProcess, count: int) -> None:
    """Until ``count`` slow-consumer closes are logged (one WARNING line each)."""
    for _ in range(count):
        wait_for_line(d.proc, "closing slow consumer")


# -- the global budget (§2.3) and heartbeats under load (§5) ---------------------------


def test_clients_that_never_read_stay_within_the_global_budget() -> None:
    """40 clients that never read while 2,000 events of 4 KiB flow: the daemon grows by
    at most the global budget (plus one client's limit, the ring and the allowance), every
    non-reader is closed 1013, and a client that reads gets every event in order with each
    heartbeat answered within a second."""
    n_slow, total, chunk, size = 40, 2000, 50, 4 * KIB
    budget, per_client, ring = 4 * MIB, 1 * MIB, 1 * MIB

    async def body(d: DaemonProcess) -> tuple[int, int, list[int], list[float]]:
        slow = [non_reader(d.port) for _ in range(n_slow)]
        try:
            async with connect(d.url, max_size=None, ping_interval=None) as healthy:
                assert (await recv_json(healthy))["type"] == "connected"
                await wait_for_clients(d, n_slow + 1)
                before = d.memory()
                loop = asyncio.get_running_loop()
                got: list[int] = []
                waited: list[float] = []
                src = await Source.connect(d.socket_path)
                async with src:
                    for base in range(0, total, chunk):
                        await src.send_raw(event_lines(base, chunk, size))
                        asked = loop.time()
                        await healthy.send(json.dumps({"type": "heartbeat"}))
                        events, acked = 0, False
                        while events < chunk or not acked:
                            frame = await recv_json(healthy)
                            if frame["type"] == "heartbeat_ack":
                                waited.append(loop.time() - asked)
                                acked = True
                            else:
                                got.append(frame["seq"])
                                events += 1
                return before, d.memory("VmHWM"), got, waited
        finally:
            for sock in slow:
                sock.close()

    with daemon_process(
        websocket={
            "slow_client_buffer_bytes": per_client,
            "clients_buffer_budget_bytes": budget,
        },
        events={"replay_buffer_bytes": ring},
    ) as d:
        before, peak, got, waited = run(body(d))
        wait_for_slow_closes(d, n_slow)
        closes = d.metric("slow_client_disconnects_total")
        for_budget = d.log().count(f"> budget {budget})")
    # The clients closed for the budget hold their backlog (at most one client's limit)
    # until the next write over budget aborts them.
    growth, bound = peak - before, budget + per_client + ring + ALLOWANCE
    assert growth <= bound, (
        f"RSS grew {growth / MIB:.1f} MiB > {bound / MIB:.1f} MiB with {n_slow} clients "
        "that never read"
    )
    assert got == list(range(1, total + 1)), f"{len(got)} events, not 1..{total} in order"
    assert max(waited) < HEARTBEAT_LIMIT, f"a heartbeat waited {max(waited):.3f} s"
    assert closes == str(n_slow), f"{closes} slow-consumer closes, not {n_slow}"
    assert for_budget > n_slow // 2, f"only {for_budget} of the closes were for the budget"


# -- replays count against the slow-client limit (§2.3) --------------------------------


def test_replays_to_clients_that_do_not_read_hold_at_most_their_limit() -> None:
    """5 clients ask for since=0 with 8 MiB in the ring and do not read: the daemon grows
    by at most 5 times slow_client_buffer_bytes (plus the allowance); a client that reads gets
    the whole replay in order, then live events; the non-readers are closed 1013 once the
    live events held behind their replay pass their limit."""
    n_slow, total, live, size = 5, 2000, 100, 4 * KIB
    per_client = 256 * KIB

    async def body(d: DaemonProcess) -> tuple[int, int, list[int]]:
        src = await Source.connect(d.socket_path, hello=HELLO)
        async with src:
            for base in range(0, total, 100):
                await emit(src, base, 100, size)
            before = d.memory()
            slow = [non_reader(d.port, "since=0") for _ in range(n_slow)]
            try:
                async with connect(d.url + "?since=0", max_size=None, ping_interval=None) as ws:
                    assert (await recv_json(ws))["type"] == "connected"
                    got = await read_events(ws, total)
                    # Live events now queue behind the replays nobody reads.
                    await emit(src, total, live, size)
                    got += await read_events(ws, live)
                    await asyncio.to_thread(wait_for_slow_closes, d, n_slow)
                    return before, d.memory("VmHWM"), got
            finally:
                for sock in slow:
                    sock.close()

    with daemon_process(
        websocket={"slow_client_buffer_bytes": per_client},
        events={"replay_buffer_bytes": 16 * MIB},
    ) as d:
        before, peak, got = run(body(d))
        closes = d.metric("slow_client_disconnects_total")
    growth, bound = peak - before, n_slow * per_client + ALLOWANCE
    assert growth <= bound, (
        f"RSS grew {growth / MIB:.1f} MiB > {bound / MIB:.1f} MiB with {n_slow} "
        f"unread replays of {total * size / MIB:.0f} MiB"
    )
    assert got == list(range(1, total + live + 1)), f"{len(got)} events, not in order"
    assert closes == str(n_slow), f"{closes} slow-consumer closes, not {n_slow}"


# -- the ring's byte bound (§2.3) --------------------------------------------------------


def test_replay_ring_is_bounded_by_bytes_and_the_journal_fills_in() -> None:
    """1,000 events of 16 KiB with replay_buffer_bytes 2 MiB: the daemon grows by at most
    the ring's bytes (plus the allowance), and a since=0 client still gets all 1,000 in
    order with no gap (what left the ring comes from the journal)."""
    total, size, ring = 1000, 16 * KIB, 2 * MIB

    async def body(d: DaemonProcess) -> tuple[int, int, list[dict[str, Any]]]:
        before = d.memory()
        src = await Source.connect(d.socket_path, hello=HELLO)
        async with src:
            for base in range(0, total, 50):
                await emit(src, base, 50, size)
        peak = d.memory("VmHWM")
        async with connect(d.url + "?since=0", max_size=None, ping_interval=None) as ws:
            assert (await recv_json(ws))["type"] == "connected"
            frames = [await recv_json(ws) for _ in range(total)]
        return before, peak, frames

    with daemon_process(events={"replay_buffer_bytes": ring}) as d:
        before, peak, frames = run(body(d))
        growth, bound = peak - before, ring + ALLOWANCE
        assert growth <= bound, (
            f"RSS grew {growth / MIB:.1f} MiB > {bound / MIB:.1f} MiB holding "
            f"{total * size / MIB:.0f} MiB of events"
        )
        held = int(d.metric("replay_ring_bytes"))
    assert ring - 2 * size < held <= ring, f"the ring holds {held} bytes, limit {ring}"
    assert [f.get("seq") for f in frames] == list(range(1, total + 1)), [
        f for f in frames if f.get("type") != "bulk"
    ]


# -- what clients send: websockets' incoming queue ---------------------------------------

# asyncio reads a socket this much at a time: the frames decoded from the read that takes
# a client's queue past its mark are queued before reading pauses.
SOCKET_READ_BYTES = 256 * KIB


def client_text_frame(payload: bytes) -> bytes:
    """A masked (all-zero mask: the payload goes as is) text frame, as a client sends."""
    return b"\x81\xff" + struct.pack("!Q", len(payload)) + b"\0\0\0\0" + payload


def test_clients_flooding_messages_hold_a_few_frames_each() -> None:
    """20 clients send 64 KiB messages as fast as they can for 2 s while their replay
    waits for them to read (nothing takes their messages meanwhile): the daemon grows by
    at most 20 times one client's incoming queue (its high-water mark, one socket read and
    a partial frame of max_message_bytes) plus the allowance, and another client's
    heartbeats are answered within a second."""
    n_flood, seconds = 20, 2.0
    size = WebSocketConfig().max_message_bytes  # the default: 64 KiB
    message = json.dumps({"type": "heartbeat", "pad": ""}).encode()
    message = message[:-2] + b"x" * (size - len(message)) + message[-2:]
    burst = client_text_frame(message) * 4

    async def flood(sock: socket.socket, until: float) -> int:
        loop = asyncio.get_running_loop()
        sock.setblocking(False)
        sent = 0
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout_at(until):
                while True:
                    await loop.sock_sendall(sock, burst)
                    sent += 4
        return sent

    async def body(d: DaemonProcess) -> tuple[int, int, list[int], list[float]]:
        src = await Source.connect(d.socket_path, hello=HELLO)
        async with src:
            # More to replay than the kernel's socket buffers take (tcp_wmem's 4 MiB
            # at most): the replay to a client that does not read stalls.
            for base in range(0, 2000, 100):
                await emit(src, base, 100, 4 * KIB)
        flooders = [non_reader(d.port, "since=0") for _ in range(n_flood)]
        try:
            async with connect(d.url, ping_interval=None) as healthy:
                assert (await recv_json(healthy))["type"] == "connected"
                await wait_for_clients(d, n_flood + 1)
                before = d.memory()
                loop = asyncio.get_running_loop()
                until = loop.time() + seconds
                floods = [asyncio.create_task(flood(s, until)) for s in flooders]
                waited: list[float] = []
                while loop.time() < until:
                    asked = loop.time()
                    await healthy.send(json.dumps({"type": "heartbeat"}))
                    assert (await recv_json(healthy))["type"] == "heartbeat_ack"
                    waited.append(loop.time() - asked)
                sent = await asyncio.gather(*floods)
                return before, d.memory("VmHWM"), sent, waited
        finally:
            for sock in flooders:
                sock.close()

    with daemon_process() as d:
        before, peak, sent, waited = run(body(d))
    high, _ = INCOMING_QUEUE
    per_client = high * size + SOCKET_READ_BYTES + size
    growth, bound = peak - before, n_flood * per_client + ALLOWANCE
    assert growth <= bound, (
        f"RSS grew {growth / MIB:.1f} MiB > {bound / MIB:.1f} MiB with {n_flood} clients"
        f" that sent {sum(sent)} messages of {size // KIB} KiB unread"
    )
    assert min(sent) > high + SOCKET_READ_BYTES // size, f"messages sent per client: {sent}"
    assert max(waited) < HEARTBEAT_LIMIT, f"a heartbeat waited {max(waited):.3f} s"


# -- a quick stop (§5) -------------------------------------------------------------------


def test_sigterm_with_a_client_that_never_reads_exits_within_5_seconds() -> None:
    """SIGTERM while a client that never reads has 1 MiB of events it has not read: a
    reading client gets 1001, the journal is flushed and the daemon exits 0 within 5 s."""
    total, size = 250, 4 * KIB

    async def body(d: DaemonProcess) -> tuple[float, int, int | None]:
        slow = non_reader(d.port)
        try:
            async with connect(d.url, max_size=None, ping_interval=None) as ws:
                assert (await recv_json(ws))["type"] == "connected"
                await wait_for_clients(d, 2)
                src = await Source.connect(d.socket_path, hello=HELLO)
                async with src:
                    await emit(src, 0, total, size)
                    assert await read_events(ws, total) == list(range(1, total + 1))
                    start = time.monotonic()
                    d.proc.send_signal(signal.SIGTERM)
                    with contextlib.suppress(ConnectionClosed):
                        async with asyncio.timeout(TIMEOUT):
                            while True:
                                await ws.recv()
                    code = await asyncio.to_thread(d.proc.wait, 3 * TIMEOUT)
                    return time.monotonic() - start, code, ws.close_code
        finally:
            slow.close()

    with daemon_process() as d:
        took, code, close_code = run(body(d))
        stderr_lines(d.proc).join()
        log = d.log()
    assert took < STOP_LIMIT, f"SIGTERM to exit took {took:.2f} s"
    assert code == 0, f"exit code {code}"
    assert close_code == 1001, f"the reading client got {close_code}"
    assert f"stopped after {total} events" in log, log[-2000:]
    assert "closing slow consumer" not in log, "the non-reader was closed before the stop"


# -- reload (§5) -----------------------------------------------------------------------


def test_reload_applies_both_budgets_live() -> None:
    """A reload applies clients_buffer_budget_bytes and replay_buffer_bytes at once; a
    smaller ring keeps its newest events."""
    size = 1 * KIB

    async def body(tmp: Path) -> None:
        async with running_daemon(make_config(tmp)) as d:
            src = await Source.connect(d.socket_path, hello=HELLO)
            async with src:
                await emit(src, 0, 20, size)
            d.apply_config(
                make_config(
                    tmp,
                    websocket={"clients_buffer_budget_bytes": 2 * MIB},
                    events={"replay_buffer_bytes": 4 * size},
                )
            )
            assert d.ws.settings.clients_buffer_budget_bytes == 2 * MIB
            assert d.hub.ring_bytes <= 4 * size, f"the ring holds {d.hub.ring_bytes} bytes"
            assert d.hub.oldest_in_ring == 18, d.hub.oldest_in_ring

    with short_tmpdir() as tmp:
        run(body(tmp))
