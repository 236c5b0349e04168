"""Logs journald understands (PROTOCOL §4): ``<N>`` lines when ``$JOURNAL_STREAM`` is
stderr, and the native journal protocol, checked against a datagram socket of the
test's own (``$AAEVENTD_JOURNAL_SOCKET``) since no systemd-journald runs here."""

from __future__ import annotations

import array
import contextlib
import fcntl
import io
import json
import logging
import os
import re
import socket
import struct
import subprocess
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from aaeventd.client import EventSource
from aaeventd.daemon import logsetup
from tests.support import (
    READY_RE,
    REPO,
    TIMEOUT,
    StderrLines,
    aaeventd_cmd,
    run_python,
    short_tmpdir,
    subprocess_env,
    write_config,
)


def parse_entry(data: bytes) -> dict[str, str]:
    """A native journal protocol entry as journald reads it: ``NAME=value`` lines, or
    ``NAME``, a newline, a little-endian 64-bit length, the value and a newline."""
    fields: dict[str, str] = {}
    i = 0
    while i < len(data):
        end = data.index(b"\n", i)
        line = data[i:end]
        if b"=" in line:
            name, _, value = line.partition(b"=")
            i = end + 1
        else:
            name = line
            (size,) = struct.unpack_from("<Q", data, end + 1)
            start = end + 9
            value = data[start : start + size]
            assert data[start + size : start + size + 1] == b"\n", "binary value not ended"
            i = start + size + 1
        assert re.fullmatch(rb"[A-Z0-9][A-Z0-9_]*", name), f"bad field name {name!r}"
        assert name.decode() not in fields, f"{name!r} twice"
        fields[name.decode()] = value.decode()
    return fields


class Journal:
    """A Unix datagram socket standing in for journald's ``/run/systemd/journal/socket``."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(TIMEOUT)

    def entry(self) -> dict[str, str]:
        """The next entry (read from the memfd when one was passed instead of data)."""
        data, ancdata, _, _ = self.sock.recvmsg(1 << 20, socket.CMSG_SPACE(4))
        if ancdata:
            ((level, kind, raw),) = ancdata
            assert (level, kind) == (socket.SOL_SOCKET, socket.SCM_RIGHTS)
            fd = array.array("i", raw)[0]
            try:
                assert data == b"", "a memfd comes alone"
                seals = fcntl.fcntl(fd, fcntl.F_GET_SEALS)
                assert seals & 0x0F == 0x0F, f"memfd seals {seals:#x}: not sealed"
                data = os.pread(fd, os.fstat(fd).st_size, 0)
            finally:
                os.close(fd)
        return parse_entry(data)

    def entry_with(self, needle: str) -> dict[str, str]:
        """The next entry whose MESSAGE contains ``needle`` (earlier ones are skipped)."""
        seen: list[str] = []
        while True:
            try:
                fields = self.entry()
            except TimeoutError:
                raise AssertionError(f"{needle!r} not in any entry: {seen}") from None
            if needle in fields["MESSAGE"]:
                return fields
            seen.append(fields["MESSAGE"])

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def journal(monkeypatch: pytest.MonkeyPatch) -> Iterator[Journal]:
    """A fake journal socket that configure_logging in this process sends to."""
    with short_tmpdir() as tmp:
        fake = Journal(tmp / "journal.sock")
        monkeypatch.setenv(logsetup.JOURNAL_SOCKET_ENV, str(fake.path))
        try:
            yield fake
        finally:
            fake.close()


@pytest.fixture
def stderr_text() -> Iterator[io.StringIO]:
    """A fresh handler of our own writing to a StringIO (conftest restores the loggers)."""
    logging.getLogger(logsetup.ROOT).handlers[:] = []
    out = io.StringIO()
    yield out
    handler = logsetup._our_handler()
    if handler is not None and handler.journal is not None:
        handler.journal.close()


def fd2_stream() -> str:
    st = os.fstat(2)
    return f"{st.st_dev}:{st.st_ino}"


def test_journal_datagram_fields(journal: Journal, stderr_text: io.StringIO) -> None:
    """One datagram per record: MESSAGE, PRIORITY, SYSLOG_IDENTIFIER, context and
    event fields; a traceback in the binary form; nothing on stderr."""
    logsetup.configure_logging("DEBUG", "text", stream=stderr_text, target="journal")
    events = logging.getLogger("aaeventd.events")
    events.info(logsetup.EVENT_LINE, 7, "skill_failed", 4242, "start_work", "fetch", 1)
    got = journal.entry()
    assert got == {
        "MESSAGE": "aaeventd.events: event seq=7 type=skill_failed pid=4242 "
        "skill=start_work step=fetch delivered=1",
        "PRIORITY": "6",
        "SYSLOG_IDENTIFIER": "aaeventd",
        "AAEVENTD_SEQ": "7",
        "AAEVENTD_TYPE": "skill_failed",
        "AAEVENTD_SOURCE_PID": "4242",
        "AAEVENTD_SKILL": "start_work",
    }, got
    adapter = logging.LoggerAdapter(logging.getLogger("aaeventd.ingest"), {"pid": 9, "uid": 1})
    try:
        raise ValueError("first\nsecond")
    except ValueError:
        adapter.exception("internal error")
    got = journal.entry()
    assert got["PRIORITY"] == "3", got
    assert got["MESSAGE"].startswith("aaeventd.ingest: internal error [pid=9 uid=1]\nTraceback")
    assert got["MESSAGE"].endswith("ValueError: first\nsecond"), got["MESSAGE"]
    assert (got["AAEVENTD_SOURCE_PID"], got["AAEVENTD_SOURCE_UID"]) == ("9", "1"), got
    levels = {"debug": "7", "info": "6", "warning": "4", "error": "3", "critical": "2"}
    for name, priority in levels.items():
        getattr(logging.getLogger("aaeventd.app"), name)("at %s", name)
        entry = journal.entry()
        assert entry["PRIORITY"] == priority, (name, entry)
    assert stderr_text.getvalue() == "", stderr_text.getvalue()


def test_journal_record_too_big_for_a_datagram_goes_by_memfd(
    journal: Journal, stderr_text: io.StringIO
) -> None:
    """A 4 MiB record (past any datagram) arrives whole through a sealed memfd."""
    logsetup.configure_logging("INFO", "text", stream=stderr_text, target="journal")
    big = "x" * (4 << 20)
    logging.getLogger("aaeventd.app").warning("big %s", big)
    got = journal.entry()
    assert len(got["MESSAGE"]) == len("aaeventd.app: big ") + len(big), len(got["MESSAGE"])
    assert got["PRIORITY"] == "4"
    assert stderr_text.getvalue() == "", stderr_text.getvalue()[:300]


def test_journal_unreachable_falls_back_to_stderr(
    monkeypatch: pytest.MonkeyPatch, stderr_text: io.StringIO
) -> None:
    """No journal socket: every record is written to stderr, after one WARNING saying so."""
    monkeypatch.setenv(logsetup.JOURNAL_SOCKET_ENV, "/nonexistent/journal.sock")
    monkeypatch.delenv("JOURNAL_STREAM", raising=False)
    logsetup.configure_logging("INFO", "text", stream=stderr_text, target="journal")
    for n in range(3):
        logging.getLogger("aaeventd.app").info("record %d", n)
    lines = stderr_text.getvalue().splitlines()
    assert len(lines) == 4, lines
    assert "WARNING aaeventd: cannot send to the journal socket /nonexistent" in lines[0]
    assert [ln.split(": ", 1)[1] for ln in lines[1:]] == ["record 0", "record 1", "record 2"]


def test_prefixed_lines_when_stderr_is_the_journal_stream(
    monkeypatch: pytest.MonkeyPatch, stderr_text: io.StringIO
) -> None:
    """$JOURNAL_STREAM = fd 2's dev:ino: ``<N>`` lines, no timestamp, traceback on one line."""
    monkeypatch.setenv("JOURNAL_STREAM", fd2_stream())
    logsetup.configure_logging("INFO", "text", stream=stderr_text, target="stderr")
    log = logging.getLogger("aaeventd.app")
    log.warning("careful")
    try:
        raise RuntimeError("a\\b\nc")
    except RuntimeError:
        log.exception("failed")
    lines = stderr_text.getvalue().splitlines()
    assert len(lines) == 2, lines
    assert lines[0] == "<4>WARNING aaeventd.app: careful", lines[0]
    assert lines[1].startswith("<3>ERROR aaeventd.app: failed\\nTraceback"), lines[1]
    assert lines[1].endswith("RuntimeError: a\\\\b\\nc"), lines[1]
    # JSON lines: the prefix, and no "ts" of their own.
    logsetup.configure_logging("INFO", "json", stream=stderr_text, target="stderr")
    log.error("as json")
    last = stderr_text.getvalue().splitlines()[-1]
    assert last.startswith("<3>{"), last
    assert json.loads(last[3:]) == {"level": "ERROR", "logger": "aaeventd.app", "msg": "as json"}
    # Another device:inode is not our stderr: plain lines with their timestamp.
    monkeypatch.setenv("JOURNAL_STREAM", "1:1")
    logsetup.configure_logging("INFO", "text", stream=stderr_text, target="auto")
    log.warning("plain")
    last = stderr_text.getvalue().splitlines()[-1]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\S+Z WARNING aaeventd.app: plain", last), last


@contextlib.contextmanager
def daemon_on_journal_stream(
    tmp: Path, *, target: str, extra_env: dict[str, str] | None = None
) -> Iterator[tuple[subprocess.Popen[str], StderrLines, str]]:
    """``aaeventd run`` whose stderr is a pipe that $JOURNAL_STREAM names; its socket."""
    config = write_config(tmp, logging={"level": "DEBUG", "target": target})
    read_fd, write_fd = os.pipe()
    st = os.fstat(write_fd)
    env = subprocess_env(tmp, JOURNAL_STREAM=f"{st.st_dev}:{st.st_ino}", **(extra_env or {}))
    # A stale socket file where the daemon listens: a WARNING at start.
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(tmp / "ev.sock"))
    stale.close()
    proc = subprocess.Popen(
        aaeventd_cmd("run", "--config", config),
        env=env,
        cwd=REPO,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=write_fd,
        text=True,
    )
    os.close(write_fd)
    reader = open(read_fd, encoding="utf-8")  # noqa: SIM115 - closed below
    lines = StderrLines(types.SimpleNamespace(stderr=reader))  # type: ignore[arg-type]
    try:
        yield proc, lines, str(tmp / "ev.sock")
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(TIMEOUT)
        lines.join()
        reader.close()


def test_daemon_writes_priority_lines_under_journald() -> None:
    """A real daemon with JOURNAL_STREAM naming its stderr pipe writes only ``<N>`` lines:
    the stale-socket WARNING ``<4>``, INFO ``<6>``, DEBUG ``<7>``, no timestamp first."""
    with short_tmpdir() as tmp, daemon_on_journal_stream(tmp, target="stderr") as (proc, err, sock):
        ready = err.wait_for(" ready: ")
        assert READY_RE.search(ready), ready
        with EventSource(sock, name="t", reconnect=False) as source:
            source.send({"type": "skill_started", "skill_name": "s", "token": "hunter2"})
        err.wait_for("payload=")
        proc.terminate()
        proc.wait(TIMEOUT)
        err.join()
    lines = err.lines
    bad = [ln for ln in lines if not re.match(r"<[2-7]>(DEBUG|INFO|WARNING|ERROR) aaeventd", ln)]
    assert bad == [], f"{len(bad)} of {len(lines)} lines without a priority prefix: {bad}"
    stale = [ln for ln in lines if "replacing stale socket" in ln]
    assert [ln[:3] for ln in stale] == ["<4>"], stale
    assert ready.startswith("<6>INFO "), ready
    payload = next(ln for ln in lines if "payload=" in ln)
    assert payload.startswith("<7>DEBUG "), payload
    assert "hunter2" not in payload, payload


def test_daemon_sends_event_fields_to_the_journal() -> None:
    """target auto under journald: event entries carry AAEVENTD_* fields and the DEBUG
    payload entry shows the ``token`` field as ``***`` in every field."""
    with short_tmpdir() as tmp:
        fake = Journal(tmp / "journal.sock")
        env = {logsetup.JOURNAL_SOCKET_ENV: str(fake.path)}
        try:
            with daemon_on_journal_stream(tmp, target="auto", extra_env=env) as (proc, err, sock):
                ready = fake.entry_with(" ready: ")
                assert ready["PRIORITY"] == "6", ready
                with EventSource(sock, name="t", reconnect=False) as source:
                    ack = source.send(
                        {"type": "skill_started", "skill_name": "deploy", "token": "hunter2"}
                    )
                assert ack is not None
                event = fake.entry_with(f"event seq={ack.seq} type=skill_started")
                payload = fake.entry_with("payload=")
                proc.terminate()
                proc.wait(TIMEOUT)
                err.join()
        finally:
            fake.close()
    assert {k: v for k, v in event.items() if k.startswith("AAEVENTD_")} == {
        "AAEVENTD_SEQ": str(ack.seq),
        "AAEVENTD_TYPE": "skill_started",
        "AAEVENTD_SKILL": "deploy",
        "AAEVENTD_SOURCE_PID": str(os.getpid()),
    }, event
    assert event["SYSLOG_IDENTIFIER"] == "aaeventd"
    assert payload["PRIORITY"] == "7", payload
    shown = json.loads(payload["MESSAGE"].split("payload=", 1)[1])
    assert shown["token"] == "***", shown
    assert not any("hunter2" in v for v in payload.values()), payload
    # Everything went to the journal: stderr had nothing to say.
    assert err.lines == [], err.lines


def test_event_line_cost_is_reported() -> None:
    """The per-event journal send stays cheap: under 500 µs a line (about 25 measured)."""
    code = """
import logging, os, socket, sys, tempfile, time
from aaeventd.daemon import logsetup
d = tempfile.mkdtemp(); path = os.path.join(d, "j.sock")
r = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM); r.bind(path); r.setblocking(False)
os.environ[logsetup.JOURNAL_SOCKET_ENV] = path
logsetup.configure_logging("INFO", "text", stream=open(os.devnull, "w"), target="journal")
ev = logging.getLogger("aaeventd.events")
n, spent = 5000, 0.0
for i in range(n):
    t = time.perf_counter()
    ev.info(logsetup.EVENT_LINE, i, "step_started", 1, "skill", "step", 1)
    spent += time.perf_counter() - t
    r.recv(65536)
assert not logsetup._our_handler().journal_failing
print(spent / n * 1e6)
"""
    done = run_python(code)
    assert done.returncode == 0, done.stderr
    micros = float(done.stdout)
    assert micros < 500, f"{micros:.1f} µs per event line"


_STAMP = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")
_EVENT_ARGS: list[logsetup.EventArgs] = [
    (7, "skill_failed", 4242, "start_work", "fetch", 1),
    (8, "step_started", "-", "-", "-", 0),
    (9, "x.y", 1, "ünï \\ code", "multi\\nline", 3),
]


@pytest.mark.parametrize("fmt", ["text", "json"])
@pytest.mark.parametrize("on_journal_stream", [False, True])
def test_event_writer_writes_what_the_logger_would(
    monkeypatch: pytest.MonkeyPatch, stderr_text: io.StringIO, fmt: str, on_journal_stream: bool
) -> None:
    """The hot path's per-event lines (no LogRecord) are the logger's lines, byte for
    byte but the millisecond of the timestamp, in every stderr format."""
    monkeypatch.setenv("JOURNAL_STREAM", fd2_stream() if on_journal_stream else "1:1")
    logsetup.configure_logging("INFO", fmt, stream=stderr_text, target="stderr")
    writer = logsetup.event_writer()
    assert writer is not None
    writer(list(_EVENT_ARGS))
    fast = stderr_text.getvalue()
    stderr_text.seek(0)
    stderr_text.truncate()
    for args in _EVENT_ARGS:
        logging.getLogger(logsetup.EVENTS_LOGGER).info(logsetup.EVENT_LINE, *args)
    slow = stderr_text.getvalue()
    assert len(fast.splitlines()) == len(_EVENT_ARGS), fast
    assert _STAMP.sub("T", fast) == _STAMP.sub("T", slow), (fast, slow)
    assert bool(_STAMP.search(fast)) is not on_journal_stream, fast


def test_event_writer_sends_what_the_logger_would_to_the_journal(
    journal: Journal, stderr_text: io.StringIO
) -> None:
    """To the journal: the same datagrams, fields and all."""
    logsetup.configure_logging("INFO", "text", stream=stderr_text, target="journal")
    writer = logsetup.event_writer()
    assert writer is not None
    writer(list(_EVENT_ARGS))
    fast = [journal.entry() for _ in _EVENT_ARGS]
    for args in _EVENT_ARGS:
        logging.getLogger(logsetup.EVENTS_LOGGER).info(logsetup.EVENT_LINE, *args)
    slow = [journal.entry() for _ in _EVENT_ARGS]
    assert fast == slow, (fast, slow)
    assert fast[0]["AAEVENTD_SEQ"] == "7", fast[0]
    assert stderr_text.getvalue() == ""


def test_event_writer_steps_aside_for_other_handlers_and_levels(
    stderr_text: io.StringIO,
) -> None:
    """Another handler or filter on the way, or INFO off: no shortcut (the logger runs)."""
    logsetup.configure_logging("INFO", "text", stream=stderr_text, target="stderr")
    assert logsetup.event_writer() is not None
    events = logging.getLogger(logsetup.EVENTS_LOGGER)
    extra = logging.NullHandler()
    events.addHandler(extra)
    try:
        assert logsetup.event_writer() is None
    finally:
        events.removeHandler(extra)
    events.addFilter(lambda record: True)
    try:
        assert logsetup.event_writer() is None
    finally:
        events.filters.clear()
    logsetup.configure_logging("WARNING", "text", stream=stderr_text, target="stderr")
    assert logsetup.event_writer() is None


def test_event_lines_wait_for_the_deferred_flush_but_never_overtake(tmp_path: Path) -> None:
    """With a ``defer`` (the daemon passes loop.call_later), a batch's lines stay in the
    buffer for EVENT_LINES_DELAY, one flush for many batches; a warning meanwhile writes
    them first, in order."""
    logging.getLogger(logsetup.ROOT).handlers[:] = []
    path = tmp_path / "stderr.log"
    with open(path, "w", buffering=1 << 16, encoding="utf-8") as stream:
        logsetup.configure_logging("INFO", "text", stream=stream, target="stderr")
        scheduled: list[tuple[float, Any]] = []

        def defer(delay: float, callback: Any) -> None:
            scheduled.append((delay, callback))

        for n in range(3):
            with logsetup.log_batch(defer):
                writer = logsetup.event_writer()
                assert writer is not None
                writer([(n + 1, "x.y", 1, "-", "-", 1)])
        assert path.read_text() == "", "held in the buffer"
        assert [delay for delay, _ in scheduled] == [logsetup.EVENT_LINES_DELAY], scheduled
        scheduled[0][1]()
        assert [line.split(" seq=")[1][0] for line in path.read_text().splitlines()] == [
            "1",
            "2",
            "3",
        ]
        with logsetup.log_batch(defer):
            writer([(4, "x.y", 1, "-", "-", 1)])
        logging.getLogger("aaeventd.app").warning("meanwhile")
        lines = path.read_text().splitlines()
        assert "seq=4" in lines[-2], lines
        assert lines[-1].endswith("WARNING aaeventd.app: meanwhile"), lines
        scheduled[-1][1]()  # nothing left: no second copy
        assert len(path.read_text().splitlines()) == 5
    logging.getLogger(logsetup.ROOT).handlers[:] = []
