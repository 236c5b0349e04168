"""Other local users on the WebSocket port: the loopback peer's uid from /proc/net/tcp."""

from __future__ import annotations

import os
import socket

import pytest

from aaeventd.peers import parse_proc_net_tcp, tcp_peer_uid
from tests.support import TIMEOUT, make_config, run, running_daemon, short_tmpdir
from tests.test_security import IS_ROOT, needs_root, other_user, run_script_as_other_user

SAMPLE = """\
  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:2694 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 1 1
   1: 0100007F:D431 0100007F:2694 01 00000000:00000000 00:00000000 00000000  65534       0 2 1
  2: 0000000000000000FFFF00000100007F:9C40 0000000000000000FFFF00000100007F:2694 01 0:0 0:0 0 42 0 3
  3: 00000000000000000000000001000000:A000 00000000000000000000000001000000:2694 01 0:0 0:0 0 7 0 4
"""

# Run as another user: one plain GET to the daemon's port, print the status line.
OTHER_UID_CLIENT = r"""
import socket, sys
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=float(sys.argv[2]))
s.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
print(s.makefile("rb").readline().decode().strip())
"""


def test_parse_proc_net_tcp_reads_ipv4_ipv6_and_mapped_addresses() -> None:
    """Every row gives (local, remote, uid); mapped IPv6 shows as IPv4; the header is skipped."""
    rows = list(parse_proc_net_tcp(SAMPLE.splitlines()))
    assert rows == [
        (("127.0.0.1", 9876), ("0.0.0.0", 0), 1000),
        (("127.0.0.1", 54321), ("127.0.0.1", 9876), 65534),
        (("127.0.0.1", 40000), ("127.0.0.1", 9876), 42),
        (("::1", 40960), ("::1", 9876), 7),
    ]


@pytest.mark.parametrize("family", [socket.AF_INET, socket.AF_INET6])
def test_own_connection_is_found_with_our_uid(family: socket.AddressFamily) -> None:
    """A real loopback connection of this process is found with os.getuid()."""
    host = "127.0.0.1" if family == socket.AF_INET else "::1"
    with socket.socket(family) as server:
        server.bind((host, 0))
        server.listen()
        with socket.create_connection(server.getsockname()[:2]) as client:
            accepted, _ = server.accept()
            with accepted:
                assert tcp_peer_uid(accepted.getpeername(), accepted.getsockname()) == os.getuid()
                assert client.getsockname()[:2] == accepted.getpeername()[:2]


def test_unknown_connection_is_a_lookup_error() -> None:
    """A connection that is not in the table raises LookupError (the caller refuses)."""
    with pytest.raises(LookupError):
        tcp_peer_uid(("127.0.0.1", 1), ("127.0.0.1", 2))


async def other_user_get(port: int) -> str:
    """The status line nobody gets for ``GET /healthz`` on the daemon's port."""
    return (await run_script_as_other_user(OTHER_UID_CLIENT, str(port), str(TIMEOUT))).strip()


@needs_root
def test_other_local_user_is_refused_on_the_websocket_port() -> None:
    """Another uid gets 403 over loopback TCP; listed in allowed_uids it gets in."""
    assert IS_ROOT, "CI must run the suite as root: this test connects as nobody"
    uid, _, _ = other_user()

    async def body() -> None:
        with short_tmpdir() as tmp:
            async with running_daemon(make_config(tmp)) as d:
                assert await other_user_get(d.ws_port) == "HTTP/1.1 403 Forbidden"
                assert d.front.refused.get(403) == 1
                d.apply_config(make_config(tmp, sources={"allowed_uids": [uid]}))
                assert await other_user_get(d.ws_port) == "HTTP/1.1 200 OK"

    run(body())
