"""Who is on the other end of a loopback TCP connection: the owner uid from /proc.

A Unix socket tells its peer's uid (``SO_PEERCRED``); a TCP socket does not.  On
loopback, though, the client's own socket is in this machine's ``/proc/net/tcp`` (or
``tcp6``) with its owner's uid, so the WebSocket side can refuse other local users
just as the Unix socket does.  :func:`parse_proc_net_tcp` is pure; :func:`tcp_peer_uid`
reads the two files.
"""

from __future__ import annotations

import ipaddress
import struct
from collections.abc import Iterable, Iterator
from typing import Any

PROC_FILES = ("/proc/net/tcp", "/proc/net/tcp6")

Endpoint = tuple[str, int]
"""An (IP address text, port) pair, IPv4-mapped IPv6 addresses shown as IPv4."""


def _decode_address(text: str) -> Endpoint:
    """``0100007F:1F90`` → ``("127.0.0.1", 8080)`` (IPv4 or IPv6, kernel byte order)."""
    host_hex, _, port_hex = text.partition(":")
    raw = bytes.fromhex(host_hex)
    # The kernel prints each 32-bit word of the address in host (little-endian) order.
    words = struct.unpack(f"<{len(raw) // 4}I", raw)
    packed = struct.pack(f">{len(words)}I", *words)
    address = ipaddress.ip_address(packed)
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return str(address), int(port_hex, 16)


def parse_proc_net_tcp(
    lines: Iterable[str],
) -> Iterator[tuple[tuple[str, int], tuple[str, int], int]]:
    """``(local, remote, uid)`` of each socket in the text of ``/proc/net/tcp[6]``."""
    for line in lines:
        fields = line.split()
        if len(fields) < 8 or fields[0] == "sl":
            continue
        try:
            yield _decode_address(fields[1]), _decode_address(fields[2]), int(fields[7])
        except ValueError:
            continue


def _normalise(address: Any) -> Endpoint | None:
    if not isinstance(address, tuple) or len(address) < 2:
        return None
    host = ipaddress.ip_address(str(address[0]).split("%")[0])
    if isinstance(host, ipaddress.IPv6Address) and host.ipv4_mapped is not None:
        host = host.ipv4_mapped
    return str(host), int(address[1])


def tcp_peer_uid(peer: Any, server: Any) -> int | None:
    """The uid owning the client end (``peer``) of our connection to ``server``.

    Args:
        peer: the connection's remote address, as asyncio reports it.
        server: our own address on that connection.

    Returns:
        The uid; ``None`` when it cannot be known (no such files: another kind of
        system, or a sandbox hiding them) — the caller decides what that means.

    Raises:
        LookupError: the files were read but hold no such connection (the client is
            not a process of this machine's network namespace).
    """
    want_local, want_remote = _normalise(peer), _normalise(server)
    if want_local is None or want_remote is None:
        return None
    readable = False
    for path in PROC_FILES:
        try:
            with open(path, encoding="ascii") as fh:
                lines = fh.readlines()
        except OSError:
            continue
        readable = True
        for local, remote, uid in parse_proc_net_tcp(lines):
            if local == want_local and remote == want_remote:
                return uid
    if not readable:
        return None
    raise LookupError(f"no socket {want_local} -> {want_remote} in {', '.join(PROC_FILES)}")
