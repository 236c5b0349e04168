"""A stop that is always quick, whatever the connections do (PROTOCOL §5, §2.4).

SIGTERM ends the daemon within 5 s with exit code 0 even while connections that never
finish their opening handshake, a source that never reads its replies and a client
that never reads its frames are open: the pending handshakes are closed at once, the
source and the client after a bounded grace.  The daemon runs as a real subprocess, so
the figure is the process's own time from SIGTERM to exit.
"""

from __future__ import annotations

import asyncio
import json
import select
import signal
import socket
import time

from tests.support import (
    FACTOR,
    STOP_LIMIT,
    TIMEOUT,
    DaemonProcess,
    daemon_process,
    non_reader,
    peer_closed,
    run,
    silent_connection,
    stderr_lines,
    wait_for_clients,
)

HELLO = {"type": "hello", "name": "stop-bounds", "acks": True}
# Promptly: well under the stop's own bound, even on a loaded machine.
PROMPT = 1.0 * FACTOR


async def until_metric(d: DaemonProcess, name: str, done: object) -> float:
    """Until ``aaeventd_<name>`` satisfies ``done`` (a predicate); its value."""
    assert callable(done)
    async with asyncio.timeout(TIMEOUT):
        while True:
            value = float(await asyncio.to_thread(d.metric, name))
            if done(value):
                return value


async def hung_up(sock: socket.socket, timeout: float) -> None:
    """Until the daemon ends ``sock``'s connection, read nothing (POLLHUP)."""
    poller = select.poll()
    poller.register(sock.fileno(), select.POLLRDHUP)
    async with asyncio.timeout(timeout):
        while not any(ev & (select.POLLHUP | select.POLLRDHUP) for _, ev in poller.poll(0)):
            await asyncio.to_thread(poller.poll, 50)


async def deaf_source(d: DaemonProcess) -> socket.socket:
    """A source asking for acks that never reads them, flooded until the daemon drops
    acks for it: its replies fill the daemon's buffer and stay there."""
    loop = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    await loop.sock_connect(sock, str(d.socket_path))
    await loop.sock_sendall(sock, json.dumps(HELLO).encode() + b"\n")
    batch = b'{"type":"flood"}\n' * 2000
    async with asyncio.timeout(TIMEOUT):
        while True:
            await loop.sock_sendall(sock, batch)
            if float(await asyncio.to_thread(d.metric, "dropped_replies_total")) > 0:
                return sock


def test_sigterm_with_silent_handshakes_a_deaf_source_and_a_deaf_client_exits_in_5_s() -> None:
    """SIGTERM with 10 silent pending handshakes, a source that never reads its acks and a
    client that never reads: exit 0 within 5 s, the silent connections closed at once."""
    silent_count = 10

    async def body(d: DaemonProcess) -> tuple[float, int, list[float], float]:
        client = non_reader(d.port)
        source = await deaf_source(d)
        silent = [await silent_connection(d.port) for _ in range(silent_count)]
        try:
            await wait_for_clients(d, 1)
            # The scrape's own connection is pending while it is answered: one more.
            await until_metric(d, "pending_handshakes", lambda v: v >= silent_count)
            started = time.monotonic()
            d.proc.send_signal(signal.SIGTERM)

            async def ended(sock: socket.socket) -> float:
                await peer_closed(sock, TIMEOUT)
                return time.monotonic() - started

            async def source_ended() -> float:
                await hung_up(source, TIMEOUT)
                return time.monotonic() - started

            endings = asyncio.gather(*(ended(s) for s in silent))
            source_end = asyncio.create_task(source_ended())
            code = await asyncio.to_thread(d.proc.wait, 3 * TIMEOUT)
            took = time.monotonic() - started
            return took, code, await endings, await source_end
        finally:
            for sock in (client, source, *silent):
                sock.close()

    with daemon_process() as d:
        took, code, silent_ended, source_ended = run(body(d))
        stderr_lines(d.proc).join()
        log = d.log()
    assert took < STOP_LIMIT, (
        f"SIGTERM to exit took {took:.2f} s with {silent_count} silent handshakes, a source"
        " and a client that never read"
    )
    assert code == 0, f"exit code {code}"
    assert max(silent_ended) < PROMPT, (
        f"silent pending handshakes ended {min(silent_ended):.2f}..{max(silent_ended):.2f} s"
        f" after SIGTERM (the daemon exited after {took:.2f} s)"
    )
    assert "aborted 1 source connections" in log, (
        f"the source that does not read was not aborted (its connection ended"
        f" {source_ended:.2f} s after SIGTERM):\n{log[-2000:]}"
    )
    assert "aborted 1 client connections" in log, log[-2000:]
    assert "stopped after" in log, log[-2000:]
