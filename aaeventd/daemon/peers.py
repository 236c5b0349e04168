"""Who is on the other end of a loopback TCP connection: the owner uid, from the kernel.

A Unix socket tells its peer's uid (``SO_PEERCRED``); a TCP socket does not.  On
loopback, though, the client's own socket lives in this machine's kernel with its
owner's uid, so the WebSocket side can refuse other local users just as the Unix socket
does (PROTOCOL §2.4).

The kernel is asked for that one socket, as ``ss`` does: a ``NETLINK_SOCK_DIAG``
``SOCK_DIAG_BY_FAMILY`` request naming the exact 4-tuple (:func:`diag_request`), whose
``inet_diag_msg`` reply carries ``idiag_uid`` (:func:`parse_diag_reply`).  Its cost does
not depend on how many sockets the machine has, unlike scanning ``/proc/net/tcp``.  The
scan (:func:`parse_proc_net_tcp`) stays only as the fallback for a sandbox that refuses
netlink sockets (e.g. a unit whose ``RestrictAddressFamilies=`` omits ``AF_NETLINK``):
slower with many sockets, but still an answer.

Every failure to find the owner is an exception, never a uid: :class:`OwnerUnknown`
(the question could not be asked or answered: out of descriptors, no netlink, no
``/proc``) and :class:`LookupError` (asked, and no live socket of any process is that
connection's other end).  The caller refuses on both.  Packing and parsing are pure;
:func:`ask_kernel` and :func:`read_proc_net_tcp` are the only I/O.
"""

from __future__ import annotations

import errno
import ipaddress
import logging
import os
import socket
import struct
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

log = logging.getLogger("aaeventd.peers")

PROC_FILES = ("/proc/net/tcp", "/proc/net/tcp6")

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Endpoint = tuple[str, int]
"""An (IP address text, port) pair, IPv4-mapped IPv6 addresses shown as IPv4."""

# <linux/netlink.h>, <linux/sock_diag.h>, <linux/inet_diag.h>
NETLINK_SOCK_DIAG = 4
SOCK_DIAG_BY_FAMILY = 20
NLMSG_ERROR = 2
NLM_F_REQUEST = 0x01
INET_DIAG_NOCOOKIE = 0xFFFFFFFF
_ALL_STATES = 0xFFFFFFFF
_NLMSGHDR = struct.Struct("=IHHII")  # len, type, flags, seq, pid
# struct inet_diag_req_v2: family, protocol, ext, pad, states, then inet_diag_sockid.
_REQ_HEAD = struct.Struct("=BBBxI")
# struct inet_diag_sockid: sport, dport (big-endian), src[4], dst[4] (raw, network
# order), if, cookie[2].
_SOCKID = struct.Struct("!HH16s16s")
_SOCKID_TAIL = struct.Struct("=III")
# struct inet_diag_msg: family, state, timer, retrans, inet_diag_sockid (48 bytes),
# expires, rqueue, wqueue, uid, inode.
_MSG_HEAD = struct.Struct("=BBBB")
_MSG_TAIL = struct.Struct("=IIIII")
_MSG_SIZE = _MSG_HEAD.size + _SOCKID.size + _SOCKID_TAIL.size + _MSG_TAIL.size
_NLMSGERR = struct.Struct("=i")
_RECV_BYTES = 8192
# socket(AF_NETLINK) refused by the kernel or a sandbox (seccomp answers EAFNOSUPPORT
# for a family RestrictAddressFamilies= leaves out): use the /proc scan instead.
_NO_NETLINK = frozenset(
    {errno.EAFNOSUPPORT, errno.EPROTONOSUPPORT, errno.EPERM, errno.EACCES, errno.ENOSYS}
)


class OwnerUnknown(Exception):
    """The owner of a connection cannot be determined now (the check fails closed)."""


class DiagUnavailable(OwnerUnknown):
    """sock_diag cannot answer here (the ``/proc`` scan may).

    Attributes:
        lasting: the kernel or a sandbox refuses netlink sockets: no use asking again.
    """

    def __init__(self, message: str, *, lasting: bool = False) -> None:
        super().__init__(message)
        self.lasting = lasting


@dataclass(frozen=True, slots=True)
class DiagAnswer:
    """What the kernel says about one socket."""

    family: int
    state: int
    uid: int
    inode: int
    """0 when no process holds the socket any more (closed, in ``TIME_WAIT``)."""


# -- addresses -------------------------------------------------------------------------


def _address(address: Any) -> tuple[Address, int]:
    """asyncio's peer/sock name → (address, port), IPv4-mapped IPv6 shown as IPv4.

    Raises:
        OwnerUnknown: not an IP endpoint (the transport is gone, or not TCP).
    """
    if not isinstance(address, tuple) or len(address) < 2:
        raise OwnerUnknown(f"not an IP endpoint: {address!r}")
    try:
        host = ipaddress.ip_address(str(address[0]).split("%")[0])
        port = int(address[1])
    except ValueError as exc:
        raise OwnerUnknown(f"not an IP endpoint: {address!r}") from exc
    if isinstance(host, ipaddress.IPv6Address) and host.ipv4_mapped is not None:
        host = host.ipv4_mapped
    return host, port


def _normalise(address: Any) -> Endpoint:
    host, port = _address(address)
    return str(host), port


# -- sock_diag (pure) ------------------------------------------------------------------


def diag_request(peer: Any, server: Any, *, seq: int = 1) -> bytes:
    """The netlink message asking for the socket whose local end is ``peer``.

    That is the client's own socket: local address ``peer``, remote address
    ``server`` (our end of the connection).  An IPv4 or IPv4-mapped pair is asked as
    ``AF_INET``: the kernel's IPv4 lookup also finds an ``AF_INET6`` socket that
    connected to a mapped address.

    Args:
        peer: the connection's remote address, as asyncio reports it.
        server: our own address on that connection.
        seq: the netlink sequence number (echoed in the reply).

    Raises:
        OwnerUnknown: the endpoints are not a pair of IP endpoints of one family.
    """
    src, sport = _address(peer)
    dst, dport = _address(server)
    if src.version != dst.version:
        raise OwnerUnknown(f"mixed address families: {peer!r} -> {server!r}")
    family = socket.AF_INET if src.version == 4 else socket.AF_INET6
    body = b"".join(
        (
            _REQ_HEAD.pack(family, socket.IPPROTO_TCP, 0, _ALL_STATES),
            _SOCKID.pack(sport, dport, src.packed.ljust(16, b"\0"), dst.packed.ljust(16, b"\0")),
            # Any interface; no cookie: the 4-tuple names the socket.
            _SOCKID_TAIL.pack(0, INET_DIAG_NOCOOKIE, INET_DIAG_NOCOOKIE),
        )
    )
    header = _NLMSGHDR.pack(_NLMSGHDR.size + len(body), SOCK_DIAG_BY_FAMILY, NLM_F_REQUEST, seq, 0)
    return header + body


def parse_diag_reply(data: bytes, *, seq: int = 1, sport: int | None = None) -> DiagAnswer:
    """The answer in the kernel's reply to :func:`diag_request`.

    Args:
        data: what one ``recv`` on the netlink socket returned.
        seq: the request's sequence number; other messages are skipped.
        sport: the requested local port, checked against the reply when given.

    Raises:
        LookupError: the kernel has no such socket (``ENOENT``).
        OwnerUnknown: any other error, or a reply that cannot be read.
    """
    offset = 0
    while offset + _NLMSGHDR.size <= len(data):
        length, kind, _, got_seq, _ = _NLMSGHDR.unpack_from(data, offset)
        if length < _NLMSGHDR.size or offset + length > len(data):
            break
        body = offset + _NLMSGHDR.size
        offset += (length + 3) & ~3  # NLMSG_ALIGN
        if got_seq != seq:
            continue
        if kind == NLMSG_ERROR and length >= _NLMSGHDR.size + _NLMSGERR.size:
            (code,) = _NLMSGERR.unpack_from(data, body)
            if code == -errno.ENOENT:
                raise LookupError("the kernel has no such socket")
            raise OwnerUnknown(f"sock_diag: {os.strerror(-code)}")
        if kind == SOCK_DIAG_BY_FAMILY and length >= _NLMSGHDR.size + _MSG_SIZE:
            family, state, _, _ = _MSG_HEAD.unpack_from(data, body)
            got_sport, _, _, _ = _SOCKID.unpack_from(data, body + _MSG_HEAD.size)
            tail = body + _MSG_HEAD.size + _SOCKID.size + _SOCKID_TAIL.size
            _, _, _, uid, inode = _MSG_TAIL.unpack_from(data, tail)
            if sport is not None and got_sport != sport:
                raise OwnerUnknown(f"sock_diag answered for port {got_sport}, not {sport}")
            return DiagAnswer(family, state, uid, inode)
    raise OwnerUnknown("sock_diag: no answer in the reply")


# -- sock_diag (I/O) -------------------------------------------------------------------


def ask_kernel(request: bytes) -> bytes:
    """Send one sock_diag request on a fresh netlink socket; the reply's bytes.

    The kernel answers while ``sendto`` runs, so the ``recv`` never waits.

    Raises:
        DiagUnavailable: netlink sockets are refused here.
        OwnerUnknown: any other failure (``EMFILE``: out of descriptors, ...).
    """
    try:
        sock = socket.socket(
            socket.AF_NETLINK, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC, NETLINK_SOCK_DIAG
        )
    except OSError as exc:
        if exc.errno in _NO_NETLINK:
            raise DiagUnavailable(
                f"no netlink socket: {exc.strerror or exc}", lasting=True
            ) from exc
        raise OwnerUnknown(f"no netlink socket: {exc.strerror or exc}") from exc
    try:
        with sock:
            sock.sendto(request, (0, 0))
            return sock.recv(_RECV_BYTES, socket.MSG_DONTWAIT)
    except OSError as exc:
        raise OwnerUnknown(f"sock_diag: {exc.strerror or exc}") from exc


def sock_diag_uid(peer: Any, server: Any) -> int:
    """The uid owning the client end (``peer``) of our connection to ``server``.

    Raises:
        LookupError: no live socket of any process is that connection's client end.
        DiagUnavailable: sock_diag does not work here (no netlink, no ``tcp_diag``).
        OwnerUnknown: the kernel could not be asked now.
    """
    _, sport = _address(peer)
    try:
        answer = parse_diag_reply(ask_kernel(diag_request(peer, server)), sport=sport)
    except LookupError:
        # ENOENT also means "no inet_diag/tcp_diag handler" (a kernel without it, or a
        # module that cannot be loaded).  So ask for our own end: the kernel's lookup
        # finds it, or (once a reset has unhashed it) our listening socket on that
        # address.  When it finds neither, sock_diag is no use here.
        try:
            parse_diag_reply(ask_kernel(diag_request(server, peer)))
        except LookupError:
            raise DiagUnavailable("sock_diag finds no TCP sockets (no tcp_diag?)") from None
        raise
    if answer.inode == 0:
        # A socket no process holds (closed, in TIME_WAIT) reports uid 0: it is no one's.
        raise LookupError("the client's socket is already closed")
    return answer.uid


# -- /proc/net/tcp (the fallback) ------------------------------------------------------


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
    """``(local, remote, uid)`` of each socket a process holds, from ``/proc/net/tcp[6]``.

    Rows with inode 0 (no process holds them: ``TIME_WAIT``, closed) are skipped.
    """
    for line in lines:
        fields = line.split()
        if len(fields) < 10 or fields[0] == "sl" or fields[9] == "0":
            continue
        try:
            yield _decode_address(fields[1]), _decode_address(fields[2]), int(fields[7])
        except ValueError:
            continue


def read_proc_net_tcp(paths: Iterable[str] = PROC_FILES) -> list[str]:
    """The lines of ``/proc/net/tcp`` and ``tcp6``.

    Raises:
        OwnerUnknown: neither file can be read.
    """
    lines: list[str] = []
    errors: list[str] = []
    for path in paths:
        try:
            with open(path, encoding="ascii") as fh:
                lines.extend(fh)
        except OSError as exc:
            errors.append(f"{path}: {exc.strerror or exc}")
    if errors and not lines:
        raise OwnerUnknown("; ".join(errors))
    return lines


def proc_net_tcp_uid(peer: Any, server: Any) -> int:
    """Like :func:`sock_diag_uid`, by scanning ``/proc/net/tcp[6]`` (cost grows with sockets).

    Raises:
        LookupError: the files hold no such connection.
        OwnerUnknown: the files cannot be read.
    """
    want_local, want_remote = _normalise(peer), _normalise(server)
    for local, remote, uid in parse_proc_net_tcp(read_proc_net_tcp()):
        if local == want_local and remote == want_remote:
            return uid
    raise LookupError(f"no socket {want_local} -> {want_remote} in {', '.join(PROC_FILES)}")


class PeerOwners:
    """Looks up loopback peers' uids; remembers when netlink is refused here."""

    def __init__(self) -> None:
        #: Why sock_diag cannot be used (then every lookup scans /proc); ``None``: it can.
        self.diag_unavailable: str | None = None

    def uid(self, peer: Any, server: Any) -> int:
        """The uid owning the client end (``peer``) of our connection to ``server``.

        Args:
            peer: the connection's remote address, as asyncio reports it.
            server: our own address on that connection.

        Raises:
            LookupError: no process of this machine's network namespace holds the
                client end (the caller refuses: 403).
            OwnerUnknown: the owner cannot be determined now (the caller refuses: 503).
        """
        if self.diag_unavailable is None:
            try:
                return sock_diag_uid(peer, server)
            except DiagUnavailable as exc:
                if not exc.lasting:
                    return proc_net_tcp_uid(peer, server)
                self.diag_unavailable = str(exc)
                log.warning(
                    "%s: finding clients' uids by scanning /proc/net/tcp instead"
                    " (slower with many sockets; allow AF_NETLINK to the daemon)",
                    exc,
                )
        return proc_net_tcp_uid(peer, server)
