"""sd_notify (PROTOCOL §5): the Notifier wrapper, and the daemon as a real subprocess
talking to a fake systemd notify socket (AF_UNIX SOCK_DGRAM with SO_PASSCRED, so
every datagram carries the sender's pid: NotifyAccess=main).

No test waits on a timer: waits are on datagrams, log lines or WebSocket frames
with a deadline; "no ping" is proven by an ordering barrier (a datagram that must come
later), never by waiting.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import logging
import os
import re
import select
import signal
import socket
import struct
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from websockets.exceptions import ConnectionClosed

from aaeventd.daemon.notify import Notifier, ascii_line, listen_fds
from tests.support import (
    STOP_LIMIT,
    TIMEOUT,
    LineSource,
    Log,
    aaeventd_cmd,
    line_source,
    reap,
    short_tmpdir,
    subprocess_env,
    write_config,
    ws_client,
)

_UCRED = struct.Struct("3i")  # struct ucred: pid, uid, gid
_TIMESPEC = struct.Struct("qq")  # struct timespec: seconds, nanoseconds
# The kernel stamps each datagram as the sender queues it (Linux's value where Python
# does not name it): gaps between datagrams are the daemon's, however late we read.
SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)
# Those stamps are wall-clock time, which NTP may slew by up to 0.05 %.
SLEW = 0.0005
# PROTOCOL §5: STATUS= is refreshed at most once a second.
STATUS_EVERY = 1.0

# Runs in the daemon's own process (so its pid is the daemon's pid): optionally makes
# WATCHDOG_PID our pid as systemd does, and on SIGUSR2 blocks the main thread -- the
# event loop's thread -- for TEST_BLOCK_SECONDS, announcing begin/end on the notify
# socket.  Then runs the CLI in-process.
LAUNCHER = r"""
import os, signal, socket, sys, threading
if os.environ.pop("TEST_WATCHDOG_PID_SELF", ""):
    os.environ["WATCHDOG_PID"] = str(os.getpid())
def _say(text):
    name = os.environ["NOTIFY_SOCKET"]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        s.connect("\0" + name[1:] if name.startswith("@") else name)
        s.send(text.encode())
def _block(signum, frame):
    _say("X_TEST_BLOCK=begin")
    threading.Event().wait(float(os.environ["TEST_BLOCK_SECONDS"]))
    _say("X_TEST_BLOCK=end")
signal.signal(signal.SIGUSR2, _block)
from aaeventd.cli import main
sys.exit(main(sys.argv[1:]))
"""


# -- a fake systemd notify socket ------------------------------------------------------


@dataclass
class Datagram:
    text: str
    pid: int
    at: float  # when the daemon sent it (the kernel's stamp), in seconds

    @property
    def fields(self) -> dict[str, str]:
        return dict(line.split("=", 1) for line in self.text.split("\n") if "=" in line)


class NotifyListener:
    """A bound AF_UNIX datagram socket standing in for systemd's notify socket."""

    def __init__(self, tmp: Path, *, abstract: bool = False) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        self.sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        if abstract:
            name = f"aaeventd-test-{uuid.uuid4().hex}"
            self.sock.bind("\0" + name)
            self.address = "@" + name
        else:
            self.sock.bind(str(tmp / "notify"))
            self.address = str(tmp / "notify")

    def recv(self, timeout: float = TIMEOUT) -> Datagram:
        ready, _, _ = select.select([self.sock], [], [], timeout)
        if not ready:
            raise AssertionError(f"no sd_notify datagram within {timeout}s")
        space = socket.CMSG_SPACE(_UCRED.size) + socket.CMSG_SPACE(_TIMESPEC.size)
        data, ancdata, _, _ = self.sock.recvmsg(65536, space)
        pid, at = -1, float("nan")
        for level, kind, cdata in ancdata:
            if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
                pid = _UCRED.unpack(cdata[: _UCRED.size])[0]
            elif level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS:
                seconds, nanoseconds = _TIMESPEC.unpack(cdata[: _TIMESPEC.size])
                at = seconds + nanoseconds / 1e9
        return Datagram(data.decode("ascii"), pid, at)

    def recv_until(
        self, pred: Callable[[Datagram], bool], timeout: float = TIMEOUT
    ) -> tuple[Datagram, list[Datagram]]:
        """The first datagram satisfying ``pred``, and those received before it."""
        end = time.monotonic() + timeout
        skipped: list[Datagram] = []
        while True:
            msg = self.recv(max(0.0, end - time.monotonic()))
            if pred(msg):
                return msg, skipped
            skipped.append(msg)

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> NotifyListener:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def has(key: str, value: str | None = None) -> Callable[[Datagram], bool]:
    return lambda d: key in d.fields and (value is None or d.fields[key] == value)


# -- the daemon as a subprocess -------------------------------------------------------


@contextlib.contextmanager
def daemon(
    tmp: Path,
    listener: NotifyListener,
    *,
    launcher: bool = False,
    env: dict[str, str] | None = None,
) -> Iterator[subprocess.Popen[bytes]]:
    """``aaeventd run`` with ``NOTIFY_SOCKET``; stopped (and reaped) at the end."""
    cfg = tmp / "config.yaml"
    if not cfg.exists():
        write_config(tmp)
    args = aaeventd_cmd("run", "--config", str(cfg))
    if launcher:
        args = [sys.executable, "-c", LAUNCHER, *args[3:]]
    proc = subprocess.Popen(
        args,
        env=subprocess_env(tmp, NOTIFY_SOCKET=listener.address, **(env or {})),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        yield proc
    finally:
        reap(proc)


def ready_port(log: Log) -> int:
    line = log.until(" ready: ")[-1]
    match = re.search(r"clients on ws://\S+?:(\d+)/", line)
    assert match, line
    return int(match.group(1))


def monotonic_usec() -> int:
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000


# -- Notifier, in process -------------------------------------------------------------


def test_ascii_line_keeps_status_printable_ascii() -> None:
    """STATUS text is one printable ASCII line: accents dropped, the rest '?'."""
    assert ascii_line("café ✓ ok\nnext\tcol") == "cafe ? ok next col"
    assert ascii_line("x" * 500) == "x" * 400
    assert ascii_line("\x00\x7f") == "??"


@pytest.mark.parametrize("abstract", [False, True], ids=["path", "abstract"])
def test_notifier_sends_to_path_and_abstract_sockets(abstract: bool) -> None:
    """Each call is one datagram from our pid, to a path or an '@' abstract socket."""
    with short_tmpdir() as tmp:
        listener = NotifyListener(tmp, abstract=abstract)
        notifier = Notifier({"NOTIFY_SOCKET": listener.address})
        try:
            assert notifier.enabled
            assert notifier.ready("2 clients")
            first = listener.recv()
            assert (first.text, first.pid) == ("READY=1\nSTATUS=2 clients", os.getpid())
            assert notifier.status("naïve ✓")
            assert listener.recv().text == "STATUS=naive ?"
            assert notifier.stopping()
            assert listener.recv().text == "STOPPING=1"
            assert notifier.watchdog()
            assert listener.recv().text == "WATCHDOG=1"
            assert notifier.failures == 0
        finally:
            notifier.close()
            listener.close()


def test_non_ascii_status_does_not_lose_ready() -> None:
    """A non-latin-1 STATUS (which sdnotify alone would drop silently) still sends READY."""
    with short_tmpdir() as tmp:
        listener = NotifyListener(tmp)
        notifier = Notifier({"NOTIFY_SOCKET": listener.address})
        try:
            assert notifier.ready("source “✓” ünïcode")
            assert listener.recv().fields == {"READY": "1", "STATUS": "source ??? unicode"}
        finally:
            notifier.close()
            listener.close()


def test_reloading_carries_monotonic_usec() -> None:
    """RELOADING=1 comes with MONOTONIC_USEC= on CLOCK_MONOTONIC (needed from systemd 253)."""
    with short_tmpdir() as tmp:
        listener = NotifyListener(tmp)
        notifier = Notifier({"NOTIFY_SOCKET": listener.address})
        try:
            before = monotonic_usec()
            assert notifier.reloading()
            after = monotonic_usec()
            msg = listener.recv()
            assert list(msg.fields) == ["RELOADING", "MONOTONIC_USEC"]
            assert msg.fields["RELOADING"] == "1"
            assert before <= int(msg.fields["MONOTONIC_USEC"]) <= after
        finally:
            notifier.close()
            listener.close()


@pytest.mark.parametrize(
    ("usec", "wd_pid", "interval"),
    [
        ("1000000", None, 0.5),
        ("1000000", "self", 0.5),
        ("1000000", "1", None),
        ("0", None, None),
        ("abc", None, None),
        (None, None, None),
    ],
)
def test_watchdog_interval_honours_watchdog_usec_and_pid(
    usec: str | None, wd_pid: str | None, interval: float | None
) -> None:
    """Pings every WATCHDOG_USEC/2, and only when WATCHDOG_PID is unset or our pid."""
    env = {"NOTIFY_SOCKET": "/nonexistent/notify"}
    if usec is not None:
        env["WATCHDOG_USEC"] = usec
    if wd_pid is not None:
        env["WATCHDOG_PID"] = str(os.getpid()) if wd_pid == "self" else wd_pid
    assert Notifier(env).watchdog_interval == interval


def test_without_notify_socket_nothing_is_sent() -> None:
    """No NOTIFY_SOCKET (or an unusable one): disabled, no watchdog, sends report False."""
    for env in ({}, {"NOTIFY_SOCKET": "relative/path", "WATCHDOG_USEC": "1000000"}):
        notifier = Notifier(env)
        assert (notifier.enabled, notifier.watchdog_interval) == (False, None)
        assert notifier.ready("x") is False
        assert notifier.failures == 0


class Collect(logging.Handler):
    """Keeps the WARNING+ records it is given."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def test_send_failure_is_reported_not_raised() -> None:
    """A socket nobody listens on: send returns False, counts and logs, never raises."""
    handler = Collect()
    records = handler.records
    logger = logging.getLogger("aaeventd.notify")
    logger.addHandler(handler)  # directly: the aaeventd logger may not propagate
    try:
        with short_tmpdir() as tmp:
            notifier = Notifier({"NOTIFY_SOCKET": str(tmp / "absent")})
            assert notifier.ready() is False
            assert notifier.watchdog() is False
            notifier.close()
    finally:
        logger.removeHandler(handler)
    assert notifier.failures == 2
    assert [r.levelno for r in records] == [logging.WARNING]
    assert str(tmp / "absent") in records[0].getMessage()


def test_notifier_reconnects_when_the_socket_is_recreated() -> None:
    """When the manager re-creates its notify socket, the next send reaches the new one."""
    with short_tmpdir() as tmp:
        old = NotifyListener(tmp)
        notifier = Notifier({"NOTIFY_SOCKET": old.address})
        try:
            assert notifier.status("one")
            assert old.recv().text == "STATUS=one"
            old.close()
            (tmp / "notify").unlink()
            new = NotifyListener(tmp)
            try:
                assert notifier.status("two")
                assert new.recv().text == "STATUS=two"
                assert notifier.failures == 0
            finally:
                new.close()
        finally:
            notifier.close()


def test_listen_fds_ignores_another_pids_sockets() -> None:
    """LISTEN_PID not ours: no socket adopted, and the three variables are removed."""
    env = {"LISTEN_PID": str(os.getpid() + 1), "LISTEN_FDS": "2", "LISTEN_FDNAMES": "a:b"}
    env["KEEP"] = "1"
    assert listen_fds(env) == {}
    assert env == {"KEEP": "1"}


# -- the daemon, as a subprocess --------------------------------------------------------


@pytest.mark.parametrize("abstract", [False, True], ids=["path", "abstract"])
def test_ready_only_once_both_sockets_accept(abstract: bool) -> None:
    """READY=1 (from the main pid) comes when both the Unix socket and WS port accept."""
    with (
        short_tmpdir() as tmp,
        NotifyListener(tmp, abstract=abstract) as listener,
        daemon(tmp, listener) as proc,
    ):
        ready = listener.recv()
        # Connect at once: both must already accept.
        with line_source(tmp / "ev.sock"), ws_client(ready_port(Log(proc))):
            pass
        assert ready.pid == proc.pid
        assert ready.fields == {"READY": "1", "STATUS": "0 clients, 0 sources, 0 events, seq 0"}


def test_status_reports_clients_sources_and_events() -> None:
    """STATUS= follows clients, sources and events, at most about once a second."""
    with short_tmpdir() as tmp, NotifyListener(tmp) as listener, daemon(tmp, listener) as proc:
        listener.recv_until(has("READY", "1"))
        with ws_client(ready_port(Log(proc))):
            first, _ = listener.recv_until(has("STATUS", "1 clients, 0 sources, 0 events, seq 0"))
            with line_source(tmp / "ev.sock") as source:
                ack = source.send({"type": "persona_changed", "persona": "devops"})
                second, _ = listener.recv_until(
                    has("STATUS", "1 clients, 1 sources, 1 events, seq 1")
                )
        assert (ack["type"], ack["seq"]) == ("ack", 1)
        assert (first.pid, second.pid) == (proc.pid, proc.pid)
        gap = second.at - first.at
        assert gap >= STATUS_EVERY * (1 - SLEW), f"STATUS= sent {gap:.4f} s apart"


def test_watchdog_pings_every_half_watchdog_usec() -> None:
    """WATCHDOG_USEC=1s and WATCHDOG_PID=our pid: WATCHDOG=1 from the main pid every ~0.5 s."""
    env = {"WATCHDOG_USEC": "1000000", "TEST_WATCHDOG_PID_SELF": "1"}
    with (
        short_tmpdir() as tmp,
        NotifyListener(tmp) as listener,
        daemon(tmp, listener, launcher=True, env=env) as proc,
    ):
        listener.recv_until(has("READY", "1"))
        pings = [listener.recv_until(has("WATCHDOG", "1"))[0] for _ in range(7)]
        gaps = [round(b.at - a.at, 4) for a, b in itertools.pairwise(pings)]
        assert {p.pid for p in pings} == {proc.pid}
        # Every WATCHDOG_USEC/2, and never a gap systemd would kill for (WATCHDOG_USEC).
        assert all(0.5 * (1 - SLEW) <= gap <= 1.0 for gap in gaps), f"gaps (s): {gaps}"


def test_no_watchdog_pings_when_watchdog_pid_is_another_process() -> None:
    """WATCHDOG_PID names another pid: no WATCHDOG=1 at all, even at a 0.1 s interval."""
    env = {"WATCHDOG_USEC": "200000", "WATCHDOG_PID": str(os.getpid())}
    with (
        short_tmpdir() as tmp,
        NotifyListener(tmp) as listener,
        daemon(tmp, listener, env=env) as proc,
    ):
        ready = listener.recv()
        with line_source(tmp / "ev.sock"):
            # Barrier: STATUS comes from the once-a-second housekeeping, >= 1 s after
            # READY; about ten pings would have come before it.
            status, before = listener.recv_until(has("STATUS"))
        assert ready.fields["READY"] == "1"
        assert status.fields["STATUS"].startswith("0 clients, 1 sources")
        assert status.pid == proc.pid
        assert [d.text for d in before] == []


def test_watchdog_pings_stop_while_the_event_loop_is_blocked() -> None:
    """Pings come from the event loop: none while it is blocked, and they resume after."""
    env = {"WATCHDOG_USEC": "1000000", "TEST_BLOCK_SECONDS": "2"}
    with (
        short_tmpdir() as tmp,
        NotifyListener(tmp) as listener,
        daemon(tmp, listener, launcher=True, env=env) as proc,
    ):
        listener.recv_until(has("READY", "1"))
        listener.recv_until(has("WATCHDOG", "1"))
        proc.send_signal(signal.SIGUSR2)
        begin, _ = listener.recv_until(has("X_TEST_BLOCK", "begin"))
        end, during = listener.recv_until(has("X_TEST_BLOCK", "end"))
        resumed, _ = listener.recv_until(has("WATCHDOG", "1"))
        assert (begin.pid, end.pid, resumed.pid) == (proc.pid, proc.pid, proc.pid)
        assert [d.text for d in during] == []
        blocked, late = end.at - begin.at, resumed.at - end.at
        assert blocked >= 1.5, f"blocked {blocked:.3f} s: three pings at least were due meanwhile"
        # Within WATCHDOG_USEC of the loop's return, or systemd would have killed it.
        assert late <= 1.0, f"first ping {late:.3f} s after the loop was free again"


def test_sighup_reload_sequence_and_live_log_level() -> None:
    """SIGHUP: RELOADING=1 + MONOTONIC_USEC, then READY=1; logging.level DEBUG applies live."""
    with short_tmpdir() as tmp, NotifyListener(tmp) as listener, contextlib.ExitStack() as stack:
        write_config(tmp, logging={"level": "INFO"})
        with daemon(tmp, listener) as proc:
            listener.recv_until(has("READY", "1"))
            log = Log(proc)
            source = stack.enter_context(line_source(tmp / "ev.sock"))
            first = source.send({"type": "persona_changed", "persona": "a"})
            write_config(tmp, logging={"level": "DEBUG"})
            before = monotonic_usec()
            proc.send_signal(signal.SIGHUP)
            reloading, _ = listener.recv_until(has("RELOADING"))
            after = monotonic_usec()
            ready = listener.recv()
            seen = log.until("configuration reloaded")
            second = source.send({"type": "persona_changed", "persona": "b"})
            seen += log.until("event seq=2 payload=")
        assert (first["seq"], second["seq"]) == (1, 2)
        assert reloading.pid == ready.pid == proc.pid
        assert list(reloading.fields) == ["RELOADING", "MONOTONIC_USEC"]
        assert reloading.fields["RELOADING"] == "1"
        assert before <= int(reloading.fields["MONOTONIC_USEC"]) <= after
        assert ready.fields == {"READY": "1", "STATUS": "0 clients, 1 sources, 1 events, seq 1"}
        assert [ln for ln in seen if "event seq=1 payload=" in ln] == []


def test_reload_keeps_socket_keys_with_a_warning_naming_them() -> None:
    """A reload that changes the socket path and port keeps both, warning per key."""
    with short_tmpdir() as tmp, NotifyListener(tmp) as listener, daemon(tmp, listener) as proc:
        listener.recv_until(has("READY", "1"))
        log = Log(proc)
        port = ready_port(log)
        write_config(tmp, sources={"socket_path": str(tmp / "other.sock")}, websocket={"port": 1})
        proc.send_signal(signal.SIGHUP)
        listener.recv_until(has("RELOADING", "1"))
        ready = listener.recv()
        seen = log.until("configuration reloaded")
        with line_source(tmp / "ev.sock"), ws_client(port):
            pass
        warnings = [ln.split(": ", 1)[1] for ln in seen if " WARNING " in ln]
        assert warnings == [
            "reload: sources.socket_path changed; it takes effect only after a restart",
            "reload: websocket.port changed; it takes effect only after a restart",
        ]
        assert ready.fields == {"READY": "1", "STATUS": "0 clients, 0 sources, 0 events, seq 0"}
        assert not (tmp / "other.sock").exists()


def assert_still_info(log: Log, source: LineSource) -> None:
    """The log level is still INFO: after seq 1's event line comes seq 2's, no payload line."""
    source.send({"type": "persona_changed", "persona": "a"})
    source.send({"type": "persona_changed", "persona": "b"})
    log.until("event seq=1 type=persona_changed")
    assert "event seq=2 type=persona_changed" in log.until("event seq=")[-1]


def test_invalid_reload_keeps_the_old_config_and_says_why() -> None:
    """An invalid config on SIGHUP changes nothing; the reason is in the log and STATUS."""
    with short_tmpdir() as tmp, NotifyListener(tmp) as listener, daemon(tmp, listener) as proc:
        listener.recv_until(has("READY", "1"))
        log = Log(proc)
        log.until(" ready: ")
        write_config(tmp, logging={"level": "DEBUG"}, websocket={"max_clients": -1})
        proc.send_signal(signal.SIGHUP)
        listener.recv_until(has("RELOADING", "1"))
        ready = listener.recv()
        error = log.until("reload failed")[-1]
        with line_source(tmp / "ev.sock") as source:  # the old socket still serves
            assert_still_info(log, source)
        write_config(tmp)  # fixed: the next reload succeeds and clears the error
        proc.send_signal(signal.SIGHUP)
        listener.recv_until(has("RELOADING", "1"))
        fixed = listener.recv()
        assert fixed.fields == {"READY": "1", "STATUS": "0 clients, 0 sources, 2 events, seq 2"}
        assert ready.pid == proc.pid
        assert ready.fields["READY"] == "1"
        status = ready.fields["STATUS"]
        assert status.startswith("0 clients, 0 sources, 0 events, seq 0; last error: reload failed")
        assert "websocket.max_clients" in status
        assert " ERROR " in error
        assert "websocket.max_clients" in error


def test_reload_with_an_unusable_token_file_changes_nothing() -> None:
    """A token_file that cannot be read fails the reload before anything is applied."""
    with short_tmpdir() as tmp, NotifyListener(tmp) as listener, daemon(tmp, listener) as proc:
        listener.recv_until(has("READY", "1"))
        log = Log(proc)
        log.until(" ready: ")
        write_config(tmp, logging={"level": "DEBUG"}, auth={"token_file": str(tmp)})
        proc.send_signal(signal.SIGHUP)
        listener.recv_until(has("RELOADING", "1"))
        ready = listener.recv()
        log.until("reload failed")
        with line_source(tmp / "ev.sock") as source:
            assert_still_info(log, source)
        assert ready.fields["READY"] == "1"
        assert "reload failed: auth.token_file: " in ready.fields["STATUS"]


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_stop_signal_sends_stopping_and_exits_cleanly(signum: signal.Signals) -> None:
    """STOPPING=1, pending confirmations expired 'shutdown', clients closed 1001, exit 0."""
    with (
        short_tmpdir() as tmp,
        NotifyListener(tmp, abstract=True) as listener,
        daemon(tmp, listener) as proc,
    ):
        listener.recv_until(has("READY", "1"))
        log = Log(proc)
        with ws_client(ready_port(log)) as ws, line_source(tmp / "ev.sock") as source:
            ack = source.send({"type": "confirmation_required", "prompt": "Deploy?", "id": "c1"})
            required = json.loads(ws.recv(timeout=TIMEOUT))
            started = time.monotonic()
            proc.send_signal(signum)
            stopping, _ = listener.recv_until(has("STOPPING"))
            told_source = source.recv()
            expired = json.loads(ws.recv(timeout=TIMEOUT))
            with pytest.raises(ConnectionClosed) as closed:
                ws.recv(timeout=TIMEOUT)
            code = proc.wait(TIMEOUT)
            elapsed = time.monotonic() - started
            tail = log.until("stopped after")
        assert (ack["type"], ack["id"], required["type"]) == ("ack", "c1", "confirmation_required")
        assert (stopping.text, stopping.pid) == ("STOPPING=1", proc.pid)
        assert told_source == {"type": "confirmation_expired", "id": "c1", "reason": "shutdown"}
        assert (expired["type"], expired["id"], expired["reason"]) == (
            "confirmation_expired",
            "c1",
            "shutdown",
        )
        assert closed.value.rcvd is not None
        assert closed.value.rcvd.code == 1001
        assert code == 0
        assert elapsed <= STOP_LIMIT, (
            f"stopped {elapsed:.2f} s after the signal; PROTOCOL §5 allows {STOP_LIMIT:g} s"
        )
        assert "stopped after 2 events" in tail[-1]
        journal = b"".join(p.read_bytes() for p in sorted((tmp / "journal").glob("*.jsonl")))
        last = json.loads(journal.splitlines()[-1])
        assert (last["seq"], last["type"], last["reason"]) == (
            2,
            "confirmation_expired",
            "shutdown",
        )
