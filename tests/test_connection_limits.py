"""Bounded and honest at the door: connections that cost descriptors and slots.

PROTOCOL §2.4 (the owner check asks the kernel for one socket and fails closed; pending
handshakes are bounded and time out; running out of descriptors is logged once a
minute) and §1 (``line_timeout``: a stuck writer does not hold a source slot for ever).
Real sockets throughout; the descriptor cases run the daemon as a subprocess with a
small ``RLIMIT_NOFILE`` (soft and hard, so raising the soft limit to the hard one at
start cannot undo it), and the other-user case runs a client as ``nobody``.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import re
import resource
import socket
import statistics
import subprocess
import time
from pathlib import Path
from typing import Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import InvalidMessage

from aaeventd.daemon.handshakes import (
    MIN_AGE_TO_EVICT,
    AcceptExhaustion,
    HandshakeSettings,
    LogThrottle,
    PendingHandshakes,
)
from aaeventd.daemon.peers import proc_net_tcp_uid, sock_diag_uid
from tests.support import (
    FACTOR,
    IS_ROOT,
    TIMEOUT,
    DaemonProcess,
    Source,
    daemon_process,
    make_config,
    needs_root,
    other_user,
    pause,
    peer_closed,
    private_daemon,
    recv_json,
    run,
    run_script_as_other_user,
    running_daemon,
    short_tmpdir,
    silent_connection,
    wait_for_line,
)

HELLO_ACKS: dict[str, Any] = {"type": "hello", "name": "limits-test", "acks": True}
# Promptly: well under the generic deadline, even on a loaded machine.
PROMPT = 1.0 * FACTOR
NO_JOURNAL: dict[str, Any] = {"enabled": False}

# Run as nobody: connect to HOST PORT and hold the connection until the other end closes.
HOLD_CLIENT = r"""
import socket, sys
s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=float(sys.argv[3]))
print(s.getsockname()[1], flush=True)
s.recv(1)
"""

# Run as nobody: a WebSocket upgrade request to the daemon; print the status line.
OTHER_UID_UPGRADE = r"""
import socket, sys
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=float(sys.argv[2]))
s.sendall(
    b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
)
print(s.makefile("rb").readline().decode().strip())
"""


# -- helpers ---------------------------------------------------------------------------


def raise_own_fd_limit(need: int) -> None:
    """Let this test process hold ``need`` descriptors (root may raise the hard limit)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= need:
        return
    if hard < need and IS_ROOT:
        hard = need
    assert hard >= need, f"this test needs {need} descriptors; the hard limit is {hard}"
    resource.setrlimit(resource.RLIMIT_NOFILE, (need, hard))


def fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


async def closed_within(sock: socket.socket, seconds: float, what: str) -> float:
    """Seconds until the daemon ends ``sock``; a failure naming ``what`` past ``seconds``."""
    started = time.monotonic()
    try:
        await peer_closed(sock, seconds)
    except TimeoutError:
        raise AssertionError(f"{what}: still open after {seconds:.2f} s") from None
    return time.monotonic() - started


async def connect_retrying(url: str, within: float) -> tuple[ClientConnection, float, int]:
    """A real client that retries when its connection is closed before any answer.

    Returns the open connection (its ``connected`` frame read), the seconds it took
    and the number of attempts.  An HTTP refusal (403, 503) is not retried.
    """
    started = time.monotonic()
    attempts = 0
    while True:
        attempts += 1
        try:
            ws = await connect(url, open_timeout=TIMEOUT)
        except (InvalidMessage, OSError):
            if time.monotonic() - started > within + TIMEOUT:
                raise
            await pause(0.02)
            continue
        first = await recv_json(ws)
        assert first["type"] == "connected", first
        return ws, time.monotonic() - started, attempts


def limited_daemon(
    tmp: Path, nofile: int, **sections: dict[str, Any]
) -> contextlib.AbstractContextManager[DaemonProcess]:
    """``aaeventd run`` on 127.0.0.1 alone, no journal, limited to ``nofile`` descriptors
    (soft and hard)."""

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))

    sections["websocket"] = {"host": "127.0.0.1", **sections.get("websocket", {})}
    return daemon_process(tmp, preexec_fn=limit, journal=NO_JOURNAL, **sections)


def stop_and_read_log(d: DaemonProcess) -> str:
    """SIGTERM, the exit code checked, and everything the daemon wrote to stderr."""
    assert d.stop() == 0
    return d.log()


# -- the owner lookup: one socket, asked of the kernel -----------------------------------


@needs_root
def test_sock_diag_gives_another_users_uid_over_ipv4_and_ipv6() -> None:
    """A connection nobody makes to 127.0.0.1 and to ::1 is looked up with nobody's uid."""
    assert IS_ROOT, "CI must run the suite as root: this test connects as nobody"
    uid, _, _ = other_user()

    async def one(family: socket.AddressFamily, host: str) -> tuple[int, int]:
        loop = asyncio.get_running_loop()
        with socket.socket(family) as server:
            server.bind((host, 0))
            server.listen()
            server.setblocking(False)
            port = server.getsockname()[1]
            held = asyncio.create_task(
                run_script_as_other_user(HOLD_CLIENT, host, str(port), str(TIMEOUT))
            )
            accepted, _ = await asyncio.wait_for(loop.sock_accept(server), TIMEOUT)
            with accepted:
                found = sock_diag_uid(accepted.getpeername(), accepted.getsockname())
                scanned = proc_net_tcp_uid(accepted.getpeername(), accepted.getsockname())
            await held
            return found, scanned

    async def body() -> None:
        for family, host in ((socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")):
            found, scanned = await one(family, host)
            assert found == scanned == uid, f"{host}: sock_diag {found}, /proc {scanned}, not {uid}"

    run(body())


def test_owner_lookup_cost_does_not_grow_with_open_sockets() -> None:
    """With 5,000 idle loopback sockets open, a sock_diag lookup stays under 5 ms."""
    pairs = 2_500  # both ends count: 5,000 sockets in the kernel's table
    raise_own_fd_limit(2 * pairs + 200)
    bound_ms = 5.0
    with contextlib.ExitStack() as stack:
        server = stack.enter_context(socket.socket())
        server.bind(("127.0.0.1", 0))
        server.listen(512)
        address = server.getsockname()
        for _ in range(pairs):
            stack.enter_context(socket.create_connection(address))
            stack.enter_context(server.accept()[0])
        client = stack.enter_context(socket.create_connection(address))
        accepted = stack.enter_context(server.accept()[0])
        peer, ours = accepted.getpeername(), accepted.getsockname()
        assert client.getsockname() == peer

        lookups = []
        for _ in range(20):
            started = time.perf_counter()
            assert sock_diag_uid(peer, ours) == os.getuid()
            lookups.append((time.perf_counter() - started) * 1000)
        started = time.perf_counter()
        assert proc_net_tcp_uid(peer, ours) == os.getuid()
        scan_ms = (time.perf_counter() - started) * 1000
    median = statistics.median(lookups)
    assert median < bound_ms, (
        f"sock_diag lookup took {median:.2f} ms (median of 20) with {2 * pairs} sockets open"
        f" (bound {bound_ms} ms); the /proc/net/tcp scan took {scan_ms:.1f} ms"
    )
    assert median * 5 < scan_ms, (
        f"sock_diag {median:.2f} ms is not far below the /proc scan's {scan_ms:.1f} ms"
    )


# -- failing closed when descriptors run out ----------------------------------------------


@needs_root
def test_owner_check_fails_closed_when_descriptors_run_out() -> None:
    """At its fd limit the daemon answers nobody 503 (not 101), logs accept() failures once."""
    assert IS_ROOT, "CI must run the suite as root: this test connects as nobody"
    nofile = 64
    timeout = 2.5  # the silent connection holds the last descriptor this long

    async def body(proc: subprocess.Popen[str], port: int) -> None:
        url = f"ws://127.0.0.1:{port}/"
        clients: list[ClientConnection] = []
        try:
            # Our own clients until one descriptor is left: each takes one for good and
            # one for a moment (the owner lookup), so the last one still gets in.
            while fd_count(proc.pid) < nofile - 1:
                assert len(clients) < nofile, f"{fd_count(proc.pid)} fds after {len(clients)}"
                ws, _, _ = await connect_retrying(url, PROMPT)
                clients.append(ws)
            used = fd_count(proc.pid)
            status = (await run_script_as_other_user(OTHER_UID_UPGRADE, str(port), "5")).strip()
            assert status == "HTTP/1.1 503 Service Unavailable", (
                f"nobody got {status!r} with {used} of {nofile} descriptors in use"
            )
            # The last descriptor held by a connection that says nothing: accept() fails
            # (EMFILE) and asyncio retries once a second until the handshake timeout.
            silent = await silent_connection(port)
            waiting = [await silent_connection(port) for _ in range(3)]
            wait_for_line(proc, "cannot accept connections", TIMEOUT)
            assert await peer_closed(silent, timeout + TIMEOUT) in ("eof", "reset")
            for sock in [silent, *waiting]:
                sock.close()
            # With descriptors to spare the owner is known again: nobody gets 403.
            for ws in clients[-4:]:
                await ws.close()
            status = (await run_script_as_other_user(OTHER_UID_UPGRADE, str(port), "5")).strip()
            assert status == "HTTP/1.1 403 Forbidden", status
        finally:
            for ws in clients:
                await ws.close()

    with (
        short_tmpdir() as tmp,
        limited_daemon(tmp, nofile, websocket={"handshake_timeout_seconds": timeout}) as d,
    ):
        run(body(d.proc, d.port))
        log = stop_and_read_log(d)
    tracebacks = log.count("Traceback")
    exhausted = len(re.findall("cannot accept connections", log))
    owner_lines = len(re.findall(r"refusing requests \(503\)", log))
    assert (tracebacks, exhausted, owner_lines) == (0, 1, 1), (
        f"{tracebacks} tracebacks, {exhausted} fd-exhaustion lines, {owner_lines} owner-unknown"
        f" lines in stderr:\n{log[-4000:]}"
    )


# -- a flood of connections that never send a request ------------------------------------


def test_half_open_connection_flood_leaves_room_and_a_quiet_log() -> None:
    """1,100 silent connections at fd limit 1024: a real client gets in within 1 s, no traceback."""
    flood = 1_100
    nofile = 1_024
    max_pending = 64  # the default
    raise_own_fd_limit(flood + 300)

    async def body(pid: int, port: int) -> tuple[float, int, int]:
        loop = asyncio.get_running_loop()
        socks = []
        baseline = fd_count(pid)
        try:
            for _ in range(flood):
                sock = socket.socket()
                sock.setblocking(False)
                socks.append(sock)
            # All at once: the kernel completes them, the daemon accepts at its pace.
            await asyncio.gather(*(loop.sock_connect(s, ("127.0.0.1", port)) for s in socks))
            ws, took, attempts = await connect_retrying(f"ws://127.0.0.1:{port}/", 1.0)
            async with ws:
                await ws.send('{"type":"heartbeat"}')
                assert await recv_json(ws, PROMPT) == {"type": "heartbeat_ack"}
                # Silent connections hold at most max_pending descriptors of the daemon.
                held = fd_count(pid) - baseline
            return took, attempts, held
        finally:
            for sock in socks:
                sock.close()

    with short_tmpdir() as tmp, limited_daemon(tmp, nofile) as d:
        took, attempts, held = run(body(d.proc.pid, d.port))
        log = stop_and_read_log(d)
    tracebacks = log.count("Traceback")
    exhausted = len(re.findall(r"Too many open files|cannot accept connections", log))
    # While every pending one is younger than a second a newcomer is closed (§2.4), so a
    # client retrying from the start of the flood gets in once the oldest are a second old.
    assert took < MIN_AGE_TO_EVICT + PROMPT / 4, (
        f"the real client needed {took:.2f} s ({attempts} attempts) among {flood} silent"
        " connections"
    )
    assert (tracebacks, min(exhausted, 1)) == (0, exhausted), (
        f"{tracebacks} tracebacks and {exhausted} fd-exhaustion lines in stderr"
        f" ({len(log)} bytes):\n{log[-3000:]}"
    )
    # Theirs, plus the real client's (1), held while the count was taken.
    assert held <= max_pending + 1, (
        f"{flood} silent connections held {held} descriptors of the daemon"
        f" (max_pending_handshakes {max_pending})"
    )


def test_pending_handshakes_past_the_bound_close_the_newest_then_the_oldest() -> None:
    """max_pending_handshakes 4: a 5th silent one is closed at once; later the oldest gives way."""

    async def body() -> None:
        async with private_daemon(
            websocket={"max_pending_handshakes": 4, "handshake_timeout_seconds": 30},
            journal=NO_JOURNAL,
        ) as d:
            port = d.ws_port
            held = [await silent_connection(port) for _ in range(4)]
            extra = await silent_connection(port)
            await closed_within(extra, PROMPT, "a 5th pending connection")
            extra.close()
            # A real client: refused while every pending one is under a second old,
            # then let in in place of the oldest.
            ws, took, attempts = await connect_retrying(f"ws://127.0.0.1:{port}/", 1.0)
            async with ws:
                await closed_within(held[0], PROMPT, "the oldest pending connection")
                still = [s for s in held[1:] if not _closed_now(s)]
                assert len(still) == 3, "only the oldest pending connection should have gone"
            for sock in held:
                sock.close()
            assert took < MIN_AGE_TO_EVICT + PROMPT, f"client took {took:.2f} s, {attempts} tries"
            assert d.handshakes.refused >= 1
            assert d.handshakes.evicted >= 1

    run(body())


def _closed_now(sock: socket.socket) -> bool:
    try:
        return sock.recv(1) == b""
    except BlockingIOError:
        return False
    except OSError:
        return True


def test_handshake_timeout_closes_a_silent_connection_and_is_reloadable() -> None:
    """handshake_timeout_seconds cuts a connection that never sends its request; reload applies."""
    timeout = 0.5

    async def cut_after(port: int) -> float:
        with await silent_connection(port) as sock:
            return await closed_within(sock, 2 * TIMEOUT, "a silent connection")

    async def body() -> None:
        with short_tmpdir() as tmp:
            config = make_config(
                tmp, websocket={"handshake_timeout_seconds": timeout}, journal=NO_JOURNAL
            )
            async with running_daemon(config) as d:
                waited = await cut_after(d.ws_port)
                assert timeout - 0.05 <= waited < timeout + PROMPT, (
                    f"a silent connection was cut after {waited:.2f} s (timeout {timeout} s)"
                )
                d.apply_config(
                    make_config(
                        tmp,
                        websocket={"handshake_timeout_seconds": 2 * timeout},
                        journal=NO_JOURNAL,
                    )
                )
                waited = await cut_after(d.ws_port)
                assert 2 * timeout - 0.05 <= waited < 2 * timeout + PROMPT, (
                    f"after a reload to {2 * timeout} s it was cut after {waited:.2f} s"
                )
                assert d.handshakes.timed_out == 2

    run(body())


# -- sources that never finish a line -------------------------------------------------------


async def trickle(source: Source, data: bytes, every: float) -> None:
    """Send ``data`` one byte at a time, ``every`` seconds apart, until the daemon closes."""
    for byte in data:
        try:
            await source.send_raw(bytes([byte]))
        except (ConnectionError, BrokenPipeError):
            return
        await pause(every)


async def reply_within(source: Source, seconds: float, what: str) -> dict[str, Any]:
    """The source's next reply, or a failure that says how long it waited and for what."""
    started = time.monotonic()
    try:
        return await source.recv(seconds)
    except (TimeoutError, EOFError, ConnectionError) as exc:
        waited = time.monotonic() - started
        raise AssertionError(f"{what}: nothing after {waited:.2f} s ({exc!r})") from exc


def test_trickling_sources_get_line_timeout_and_free_their_slots() -> None:
    """4 sources trickling a byte at a time hold all slots; line_timeout frees them in time."""
    line_timeout = 1.0

    async def body() -> None:
        async with private_daemon(
            sources={"max_connections": 4, "line_timeout_seconds": line_timeout},
            journal=NO_JOURNAL,
        ) as d:
            path = d.socket_path
            assert path is not None
            started = time.monotonic()
            stuck = [await Source.connect(path) for _ in range(4)]
            pacers = [
                asyncio.create_task(trickle(s, b'{"type":"never.ends","pad":"' + b"x" * 100, 0.1))
                for s in stuck
            ]
            try:
                async with await Source.connect(path) as refused:
                    assert (await refused.recv())["code"] == "overloaded"
                replies = [
                    await reply_within(s, line_timeout + PROMPT, "line_timeout to a trickler")
                    for s in stuck
                ]
                for reply in replies:
                    assert (reply["type"], reply["code"]) == ("error", "line_timeout"), reply
                    assert "line" not in reply, reply
                    assert reply["message"].startswith("line 1 unfinished"), reply
                for s in stuck:
                    assert await s.reader.read() == b""  # and closed
                async with await Source.connect(path, hello=HELLO_ACKS) as real:
                    await real.send({"type": "real.source"})
                    assert (await real.recv())["type"] == "ack"
                    accepted_after = time.monotonic() - started
            finally:
                for task in pacers:
                    task.cancel()
                for s in stuck:
                    await s.close()
            assert accepted_after < line_timeout + 1.0 * FACTOR, (
                f"a real source got in {accepted_after:.2f} s after 4 trickling ones took"
                f" every slot (line_timeout {line_timeout} s)"
            )
            assert d.ingest.rejected.get("line_timeout") == 4

    run(body())


def test_idle_source_and_lines_completed_in_pieces_are_not_closed() -> None:
    """Idle between lines, or lines split across writes that each finish in time: kept open."""
    line_timeout = 0.4

    async def body() -> None:
        async with private_daemon(
            sources={"line_timeout_seconds": line_timeout}, journal=NO_JOURNAL
        ) as d:
            path = d.socket_path
            assert path is not None
            async with (
                await Source.connect(path, hello=HELLO_ACKS) as idle,
                await Source.connect(path, hello=HELLO_ACKS) as pieces,
                await Source.connect(path) as stuck,
            ):
                await idle.send({"type": "before.idling"})
                assert (await idle.recv())["type"] == "ack"
                started = time.monotonic()
                # A stuck writer on a third connection, cut meanwhile.
                await stuck.send_raw(b'{"type":')
                # For 3 line timeouts: each line ends in the next write, 0.15 s later,
                # and the next one starts in that same write.
                try:
                    await pieces.send_raw(b'{"type":"piece"')
                    for _ in range(int(3 * line_timeout / 0.15)):
                        await pause(0.15)
                        await pieces.send_raw(b'}\n{"type":"piece"')
                        assert (await pieces.recv(PROMPT))["type"] == "ack"
                    await pieces.send_raw(b"}\n")
                    assert (await pieces.recv(PROMPT))["type"] == "ack"
                except (ConnectionError, EOFError) as exc:
                    raise AssertionError(
                        f"a source whose lines each end within 0.15 s was closed after"
                        f" {time.monotonic() - started:.2f} s (line_timeout {line_timeout} s)"
                    ) from exc
                elapsed = time.monotonic() - started
                reply = await reply_within(stuck, PROMPT, "line_timeout to the stuck writer")
                assert reply["code"] == "line_timeout", reply
                await idle.send({"type": "after.idling"})
                reply = await reply_within(idle, PROMPT, f"ack after {elapsed:.2f} s idle")
                assert reply["type"] == "ack", reply
            assert elapsed > 2 * line_timeout
            assert d.ingest.rejected.get("line_timeout") == 1

    run(body())


def test_sources_refused_as_overloaded_are_logged_once_a_minute() -> None:
    """500 source connections past max_connections: each is refused `overloaded`, and
    stderr gets one WARNING line for them (with counts), not one per refusal."""
    refused = 500

    async def body(path: Path) -> list[str]:
        async with await Source.connect(path, hello=HELLO_ACKS):  # holds the only slot
            codes = []
            for _ in range(refused):
                async with await Source.connect(path) as extra:
                    codes.append((await extra.recv())["code"])
            return codes

    with (
        short_tmpdir() as tmp,
        limited_daemon(tmp, 1_024, sources={"max_connections": 1}) as d,
    ):
        codes = run(body(tmp / "ev.sock"))
        log = stop_and_read_log(d)
    lines = [line for line in log.splitlines() if "source refused" in line]
    assert codes == ["overloaded"] * refused, sorted(set(codes))
    assert len(lines) == 1, (
        f"{len(lines)} log lines for {refused} sources refused as overloaded:\n"
        + "\n".join(lines[:3])
    )
    assert "1 refused since the last report, 1 in all" in lines[0], lines[0]


# -- the pure parts ----------------------------------------------------------------------


def test_pending_handshakes_bookkeeping() -> None:
    """Room: admitted; full and all young: the newcomer goes; an old one: it gives way."""
    pending: PendingHandshakes[str] = PendingHandshakes(HandshakeSettings(2, timeout=10))
    assert pending.opened("a", 0.0) is None
    assert pending.opened("b", 0.5) is None
    assert pending.opened("c", 0.9) == "c"  # a is 0.9 s old: too young to evict
    assert "c" not in pending
    assert pending.opened("d", 1.0) == "a"  # a is a second old now
    assert list(pending._opened) == ["b", "d"]
    assert pending.done("b")
    assert not pending.done("b")
    assert pending.next_deadline() == 11.0
    assert pending.expired(10.9) == []
    assert pending.expired(11.0) == ["d"]
    assert pending.next_deadline() is None
    assert len(pending) == 0


def test_log_throttle_and_accept_exhaustion_handler() -> None:
    """One line per interval with the count since the last; other loop errors pass through."""
    throttle = LogThrottle(60.0)
    assert [throttle.hit(t) for t in (0.0, 1.0, 59.0, 60.0, 61.0)] == [1, None, None, 3, None]
    assert throttle.total == 5

    passed: list[dict[str, Any]] = []
    handler = AcceptExhaustion(lambda _loop, context: passed.append(context))
    loop = asyncio.new_event_loop()
    try:
        emfile = OSError(errno.EMFILE, "Too many open files")
        for _ in range(5):
            handler(
                loop, {"message": "socket.accept() out of system resource", "exception": emfile}
            )
        other = {"message": "something else", "exception": ValueError("x")}
        handler(loop, other)
    finally:
        loop.close()
    assert handler.throttle.total == 5
    assert passed == [other]
