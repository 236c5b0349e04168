"""Other local users on the WebSocket port: the loopback peer's uid, from the kernel.

The sock_diag request and reply are packed and parsed without a socket; the lookups
run against real loopback connections (IPv4, ::1, an IPv6 socket on a mapped address).
The cost of a lookup with thousands of sockets open is in test_connection_limits.py.
"""

from __future__ import annotations

import errno
import os
import socket
import struct
from collections.abc import Iterator

import pytest

from aaeventd.daemon.peers import (
    NLMSG_ERROR,
    SOCK_DIAG_BY_FAMILY,
    OwnerUnknown,
    PeerOwners,
    diag_request,
    parse_diag_reply,
    parse_proc_net_tcp,
    proc_net_tcp_uid,
    sock_diag_uid,
)
from tests.support import (
    IS_ROOT,
    TIMEOUT,
    make_config,
    needs_root,
    other_user,
    run,
    run_script_as_other_user,
    running_daemon,
    short_tmpdir,
)

SAMPLE = """\
  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:2694 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 1 1
   1: 0100007F:D431 0100007F:2694 01 00000000:00000000 00:00000000 00000000  65534       0 2 1
  2: 0000000000000000FFFF00000100007F:9C40 0000000000000000FFFF00000100007F:2694 01 0:0 0:0 0 42 0 3
  3: 00000000000000000000000001000000:A000 00000000000000000000000001000000:2694 01 0:0 0:0 0 7 0 4
   4: 0100007F:D432 0100007F:2694 06 00000000:00000000 03:00000F9F 00000000     0        0 0 3
"""

# Run as another user: one plain GET to the daemon's port, print the status line.
OTHER_UID_CLIENT = r"""
import socket, sys
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=float(sys.argv[2]))
s.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
print(s.makefile("rb").readline().decode().strip())
"""

HEADER = struct.Struct("=IHHII")


def diag_reply(uid: int, *, inode: int = 4242, sport: int = 40000, seq: int = 1) -> bytes:
    """A kernel-shaped SOCK_DIAG_BY_FAMILY answer (inet_diag_msg, no attributes)."""
    msg = (
        struct.pack("=BBBB", socket.AF_INET, 1, 0, 0)
        + struct.pack("!HH16s16s", sport, 9876, bytes(16), bytes(16))
        + struct.pack("=III", 0, 0xFFFFFFFF, 0xFFFFFFFF)
        + struct.pack("=IIIII", 0, 0, 0, uid, inode)
    )
    return HEADER.pack(HEADER.size + len(msg), SOCK_DIAG_BY_FAMILY, 0, seq, 0) + msg


def error_reply(code: int, seq: int = 1) -> bytes:
    body = struct.pack("=i", -code) + HEADER.pack(72, SOCK_DIAG_BY_FAMILY, 1, seq, 0)
    return HEADER.pack(HEADER.size + len(body), NLMSG_ERROR, 0, seq, 0) + body


@pytest.fixture(params=["127.0.0.1", "::1", "mapped"])
def loopback_pair(request: pytest.FixtureRequest) -> Iterator[tuple[socket.socket, socket.socket]]:
    """(client, accepted) over loopback: IPv4, ::1, and an IPv6 socket on ::ffff:127.0.0.1."""
    host = "127.0.0.1" if request.param == "mapped" else request.param
    with socket.socket(socket.AF_INET6 if host == "::1" else socket.AF_INET) as server:
        server.bind((host, 0))
        server.listen()
        port = server.getsockname()[1]
        if request.param == "mapped":
            client = socket.socket(socket.AF_INET6)
            client.connect(("::ffff:127.0.0.1", port))
        else:
            client = socket.create_connection((host, port))
        with client:
            accepted, _ = server.accept()
            with accepted:
                yield client, accepted


def test_parse_proc_net_tcp_reads_ipv4_ipv6_and_mapped_addresses() -> None:
    """Every held row gives (local, remote, uid); mapped IPv6 shows as IPv4; inode 0 is skipped."""
    rows = list(parse_proc_net_tcp(SAMPLE.splitlines()))
    assert rows == [
        (("127.0.0.1", 9876), ("0.0.0.0", 0), 1000),
        (("127.0.0.1", 54321), ("127.0.0.1", 9876), 65534),
        (("127.0.0.1", 40000), ("127.0.0.1", 9876), 42),
        (("::1", 40960), ("::1", 9876), 7),
    ]


def test_diag_request_names_the_exact_four_tuple() -> None:
    """IPv4 (and mapped) ask AF_INET, ::1 asks AF_INET6; ports big-endian; the client end is src."""
    v4 = diag_request(("127.0.0.1", 40000), ("127.0.0.1", 9876), seq=7)
    mapped = diag_request(
        ("::ffff:127.0.0.1", 40000, 0, 0), ("::ffff:127.0.0.1", 9876, 0, 0), seq=7
    )
    assert v4 == mapped
    length, kind, flags, seq, _ = HEADER.unpack_from(v4)
    assert (length, kind, flags, seq) == (len(v4), SOCK_DIAG_BY_FAMILY, 1, 7) == (72, 20, 1, 7)
    family, proto, _, states = struct.unpack_from("=BBBxI", v4, 16)
    assert (family, proto, states) == (socket.AF_INET, socket.IPPROTO_TCP, 0xFFFFFFFF)
    sport, dport, src, dst = struct.unpack_from("!HH16s16s", v4, 24)
    assert (sport, dport) == (40000, 9876)
    assert src == dst == bytes([127, 0, 0, 1]) + bytes(12)
    assert struct.unpack_from("=III", v4, 60) == (0, 0xFFFFFFFF, 0xFFFFFFFF)
    v6 = diag_request(("::1", 40000, 0, 0), ("::1", 9876, 0, 0))
    assert struct.unpack_from("=B", v6, 16)[0] == socket.AF_INET6
    assert struct.unpack_from("!HH16s16s", v6, 24)[2] == bytes(15) + b"\x01"
    with pytest.raises(OwnerUnknown):
        diag_request(None, ("127.0.0.1", 9876))  # the transport is gone


def test_parse_diag_reply_uid_errors_and_garbage() -> None:
    """The reply's uid; ENOENT is LookupError; other errors and garbage are OwnerUnknown."""
    answer = parse_diag_reply(diag_reply(65534), sport=40000)
    assert (answer.uid, answer.inode, answer.state) == (65534, 4242, 1)
    # A message of another request (seq) is skipped.
    assert parse_diag_reply(diag_reply(1, seq=9) + diag_reply(2)).uid == 2
    with pytest.raises(LookupError):
        parse_diag_reply(error_reply(errno.ENOENT))
    with pytest.raises(OwnerUnknown, match="not permitted"):
        parse_diag_reply(error_reply(errno.EPERM))
    with pytest.raises(OwnerUnknown):
        parse_diag_reply(diag_reply(1000), sport=40001)  # an answer about another socket
    for garbage in (b"", b"\x00" * 15, diag_reply(1000)[:40], diag_reply(1000, seq=2)):
        with pytest.raises(OwnerUnknown):
            parse_diag_reply(garbage)


def test_own_connection_is_found_with_our_uid(
    loopback_pair: tuple[socket.socket, socket.socket],
) -> None:
    """A real loopback connection of this process: sock_diag and the /proc scan say os.getuid()."""
    _, accepted = loopback_pair
    peer, ours = accepted.getpeername(), accepted.getsockname()
    assert sock_diag_uid(peer, ours) == os.getuid()
    assert proc_net_tcp_uid(peer, ours) == os.getuid()
    owners = PeerOwners()
    assert owners.uid(peer, ours) == os.getuid()
    assert owners.diag_unavailable is None


def test_unknown_or_closed_connection_is_a_lookup_error(
    loopback_pair: tuple[socket.socket, socket.socket],
) -> None:
    """No such client socket, or one no process holds any more (uid 0, FIN_WAIT2): LookupError."""
    client, accepted = loopback_pair
    peer, ours = accepted.getpeername(), accepted.getsockname()
    with pytest.raises(LookupError):
        sock_diag_uid((peer[0], 1, *peer[2:]), ours)  # our listener is found: diag works
    client.close()  # its socket lingers in FIN_WAIT2 with uid 0 and no inode
    with pytest.raises(LookupError):
        sock_diag_uid(peer, ours)
    with pytest.raises(LookupError):
        proc_net_tcp_uid(peer, ours)


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
