"""The baseline: the smallest websockets server that does aaeventd's job, minus the rest.

NDJSON lines come in on a Unix socket; each is parsed with ``json.loads``, given a
``seq``, serialised again with ``json.dumps`` and sent with
``websockets.asyncio.server.broadcast(connections, text)``, the library's own fan-out.
No validation, no journal, no logging, no replay, no slow-consumer policy, no
per-client filter.  Each client first gets ``{"type":"connected"}`` (so the benchmark
knows it is registered, as with the daemon's ``connected`` frame).

Compression is off, as in the daemon: per-message deflate would make ``broadcast()``
compress once per connection.  Ping settings are websockets' defaults (20 s / 20 s),
the daemon's defaults too.

Usage (what ``run_all.py`` does)::

    python benchmarks/baseline_server.py --socket /tmp/x/ev.sock

It logs ``baseline ready: sources on PATH, clients on ws://127.0.0.1:PORT/`` to stderr
once both sockets listen (and sends ``READY=1`` to ``$NOTIFY_SOCKET`` when set, as the
daemon does), and stops on SIGTERM or SIGINT.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import socket
import sys
from typing import Any

from websockets.asyncio.server import ServerConnection, broadcast, serve


class Baseline(asyncio.Protocol):
    """One source connection: split lines, stamp ``seq``, broadcast each one."""

    def __init__(self, hub: BaselineHub) -> None:
        self.hub = hub
        self.buf = b""

    def data_received(self, data: bytes) -> None:
        lines = (self.buf + data).split(b"\n")
        self.buf = lines.pop()
        hub = self.hub
        for line in lines:
            if not line.strip():
                continue
            obj: dict[str, Any] = json.loads(line)
            hub.seq += 1
            obj["seq"] = hub.seq
            broadcast(hub.connections, json.dumps(obj))


class BaselineHub:
    """The set of connected clients and the seq counter."""

    def __init__(self) -> None:
        self.connections: set[ServerConnection] = set()
        self.seq = 0

    async def handler(self, ws: ServerConnection) -> None:
        await ws.send('{"type":"connected"}')
        self.connections.add(ws)
        try:
            await ws.wait_closed()
        finally:
            self.connections.discard(ws)


async def main(socket_path: str, host: str) -> None:
    hub = BaselineHub()
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(socket_path)
    unix = await loop.create_unix_server(lambda: Baseline(hub), socket_path)
    async with serve(hub.handler, host, 0, compression=None) as server:
        port = next(s.getsockname()[1] for s in server.sockets)
        print(
            f"baseline ready: sources on {socket_path}, clients on ws://{host}:{port}/",
            file=sys.stderr,
            flush=True,
        )
        notify = os.environ.get("NOTIFY_SOCKET")
        if notify:  # sd_notify, as the daemon does: the harness waits for it
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
                sock.sendto(b"READY=1", notify)
        await stop.wait()
    unix.close()
    await unix.wait_closed()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--socket", required=True, help="the Unix socket to listen on")
    parser.add_argument("--host", default="127.0.0.1")
    args = parser.parse_args()
    asyncio.run(main(args.socket, args.host))
