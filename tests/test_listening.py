"""What ``Daemon.start()`` binds and returns (issue 11, readiness as API), and what
``websocket.host`` means for it (PROTOCOL §2: ``localhost`` is both loopback addresses,
any other address just itself); ``/healthz`` ``addresses`` (§6).

Real sockets throughout: the daemon in this loop, plain TCP connects, HTTP over the
loopback addresses.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import shutil
import socket
import subprocess
import sys

import pytest

from aaeventd.daemon.app import Daemon
from aaeventd.errors import StartupError
from tests.support import (
    IS_ROOT,
    REPO,
    TIMEOUT,
    healthz_over,
    make_config,
    needs_root,
    run,
    running_daemon,
    short_tmpdir,
)


async def connect_errno(host: str, port: int) -> int:
    """0 when a TCP connect to ``host``:``port`` succeeds, else its errno."""
    try:
        _, writer = await asyncio.open_connection(host, port)
    except OSError as exc:
        return exc.errno or -1
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return 0


def free_port_on_both() -> int:
    """A port free on 127.0.0.1 and on ::1 when asked (the test then takes ::1's)."""
    for _ in range(20):
        with socket.socket() as v4:
            v4.bind(("127.0.0.1", 0))
            port = int(v4.getsockname()[1])
            with socket.socket(socket.AF_INET6) as v6:
                try:
                    v6.bind(("::1", port))
                except OSError:
                    continue
                return port
    raise AssertionError("no port free on both loopback addresses in 20 tries")


def test_start_returns_what_it_bound_and_healthz_agrees() -> None:
    """start() (default host localhost, port 0) returns the socket path, 127.0.0.1 and
    ::1 on one port, epoch and seq: the same as /healthz over either address."""

    async def body() -> None:
        with short_tmpdir() as tmp:
            daemon = Daemon(make_config(tmp), env={})
            listening = await daemon.start()
            serving = asyncio.create_task(daemon.serve())
            try:
                port = listening.port
                assert listening.socket_path == tmp / "ev.sock"
                assert listening.addresses == (("127.0.0.1", port), ("::1", port))
                assert (listening.epoch, listening.seq) == (daemon.hub.epoch, 0)
                assert listening.url == f"ws://127.0.0.1:{port}/"
                for host in ("127.0.0.1", "::1"):
                    health = await asyncio.to_thread(healthz_over, host, port)
                    assert health["addresses"] == [f"127.0.0.1:{port}", f"[::1]:{port}"], host
                    assert (health["port"], health["socket_path"]) == (
                        port,
                        str(listening.socket_path),
                    )
            finally:
                daemon.request_stop()
                await asyncio.wait_for(serving, TIMEOUT)

    run(body())


@pytest.mark.parametrize("host", ["127.0.0.1", "::1"])
def test_any_other_address_binds_just_itself(host: str) -> None:
    """websocket.host 127.0.0.1 (or ::1): that address alone; the other one refuses."""

    async def body() -> tuple[list[str], int]:
        with short_tmpdir() as tmp:
            async with running_daemon(make_config(tmp, websocket={"host": host})) as d:
                assert d.listening is not None
                port = d.listening.port
                health = await asyncio.to_thread(healthz_over, host, port)
                other = "::1" if host == "127.0.0.1" else "127.0.0.1"
                return health["addresses"], await connect_errno(other, port)

    addresses, refused = run(body())
    shown = f"[{host}]" if ":" in host else host
    assert [a.rpartition(":")[0] for a in addresses] == [shown], addresses
    assert refused == errno.ECONNREFUSED, f"the other address answered errno {refused}"


def test_a_fixed_port_taken_on_ipv6_loopback_is_a_startup_error() -> None:
    """localhost with a fixed port another process holds on ::1 alone: StartupError naming
    localhost:PORT, nothing left listening on 127.0.0.1 (a client resolving localhost to
    ::1 first must not reach another server)."""

    async def body() -> tuple[str, int]:
        port = free_port_on_both()
        with short_tmpdir() as tmp, socket.socket(socket.AF_INET6) as holder:
            holder.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            holder.bind(("::1", port))
            holder.listen()
            message = "started"
            try:
                async with running_daemon(make_config(tmp, websocket={"port": port})):
                    pass
            except StartupError as exc:
                message = str(exc)
            return message, await connect_errno("127.0.0.1", port)

    message, v4 = run(body())
    assert message.startswith("cannot listen on localhost:"), message
    assert v4 == errno.ECONNREFUSED, f"127.0.0.1 still answered (errno {v4})"


# In a network namespace of its own (lo up, IPv6 off on it): a host without an IPv6
# loopback.  Prints what start() bound, /healthz's addresses and the wsserver's log.
NO_IPV6_SCRIPT = r"""
import asyncio, http.client, json, logging, subprocess, sys, tempfile
from pathlib import Path
subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
Path("/proc/sys/net/ipv6/conf/lo/disable_ipv6").write_text("1\n")
from aaeventd.config import parse_config
from aaeventd.daemon.app import Daemon
lines = []
handler = logging.Handler()
handler.emit = lambda r: lines.append(f"{r.levelname} {r.getMessage()}")
logging.getLogger("aaeventd.wsserver").addHandler(handler)
logging.getLogger("aaeventd.wsserver").setLevel(logging.INFO)

async def main():
    tmp = Path(tempfile.mkdtemp(prefix="aaev-"))
    config = parse_config({"sources": {"socket_path": str(tmp / "ev.sock")},
                           "websocket": {"port": 0}, "journal": {"enabled": False}})
    daemon = Daemon(config, env={})
    listening = await daemon.start()
    def healthz():
        conn = http.client.HTTPConnection("127.0.0.1", listening.port, timeout=10)
        conn.request("GET", "/healthz", headers={"Host": "localhost"})
        return json.loads(conn.getresponse().read())
    health = await asyncio.to_thread(healthz)
    daemon.request_stop()
    await daemon.serve()
    print(json.dumps({"bound": listening.addresses, "port": listening.port,
                      "healthz": health["addresses"], "log": lines}))

asyncio.run(main())
"""


@needs_root
def test_without_an_ipv6_loopback_localhost_is_ipv4_alone_with_one_info_line() -> None:
    """On a host with no ::1 (a network namespace with IPv6 off on lo), localhost binds
    127.0.0.1 alone, says so in one INFO line, and /healthz lists that one address."""
    assert IS_ROOT, "CI must run the suite as root: this test makes a network namespace"
    assert shutil.which("unshare"), "unshare (util-linux) is needed"
    done = subprocess.run(
        ["unshare", "--net", sys.executable, "-c", NO_IPV6_SCRIPT],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    got = json.loads(done.stdout)
    port = got["port"]
    assert got["bound"] == [["127.0.0.1", port]], got["bound"]
    assert got["healthz"] == [f"127.0.0.1:{port}"], got["healthz"]
    said = [line for line in got["log"] if "IPv6" in line]
    assert len(said) == 1, got["log"]
    assert said[0].startswith("INFO no IPv6 loopback"), said
