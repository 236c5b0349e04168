"""End to end: the daemon as a real subprocess, real sources and WebSocket clients.

Covers start/stop (SIGTERM, close 1001, socket removed), seq resuming from the
journal across restarts, ``kill -9`` and torn journal lines, the exit codes of
PROTOCOL §7, and a run with no ``--config`` at all.
"""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import socket
import subprocess
import threading
from pathlib import Path
from typing import Any

import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

from aaeventd.client import EventSource, SourceError
from tests.support import (
    TIMEOUT,
    aaeventd_cmd,
    daemon_process,
    require,
    spawn,
    subprocess_env,
    write_config,
)

pytestmark = pytest.mark.e2e


def run_cli(
    tmp: Path, *args: str, stdin: str | None = None, **env: str
) -> subprocess.CompletedProcess[str]:
    """``aaeventd ARGS`` as a subprocess, with a deadline."""
    return subprocess.run(
        aaeventd_cmd(*args),
        env=subprocess_env(tmp, **env),
        input=stdin,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )


def emit(sock: str, *events: dict[str, Any]) -> list[int]:
    """Send events with the client library; the acked seqs."""
    with EventSource(sock, name="e2e", timeout=TIMEOUT) as source:
        return [source.send(event).seq for event in events]


def recv_event(ws: ClientConnection) -> dict[str, Any]:
    obj = json.loads(ws.recv(timeout=TIMEOUT))
    assert isinstance(obj, dict)
    return obj


def journal_seqs(directory: Path) -> list[int]:
    """The seq of every complete line of every journal file, in file order."""
    seqs: list[int] = []
    for path in sorted(directory.glob("events-*.jsonl")):
        for line in path.read_bytes().splitlines(keepends=True):
            if line.endswith(b"\n"):
                seqs.append(json.loads(line)["seq"])
    return seqs


# -- the full path -------------------------------------------------------------------


def test_emit_reaches_a_client_and_sigterm_stops_cleanly(tmp: Path) -> None:
    """emit → client gets seq 1; SIGTERM → exit 0, client closed 1001, socket removed."""
    config = write_config(tmp)
    with daemon_process(tmp, args=["--config", config]) as d:
        assert d.sock == str(tmp / "ev.sock")
        assert d.port > 0
        assert d.seq == 0
        with connect(d.url, open_timeout=TIMEOUT) as ws:
            connected = recv_event(ws)
            assert (connected["type"], connected["seq"]) == ("connected", 0)
            result = run_cli(tmp, "emit", "--config", config, "skill_started", "skill_name=e2e")
            assert (result.returncode, result.stdout) == (0, "accepted seq=1 delivered=1\n")
            event = recv_event(ws)
            assert {k: v for k, v in event.items() if k != "timestamp"} == {
                "type": "skill_started",
                "skill_name": "e2e",
                "seq": 1,
            }
            assert d.stop(signal.SIGTERM) == 0
            with pytest.raises(ConnectionClosed):
                ws.recv(timeout=TIMEOUT)
            assert ws.close_code == 1001
    assert not os.path.lexists(tmp / "ev.sock")
    assert any("stopped after 1 events" in line for line in d.lines), d.lines
    assert journal_seqs(tmp / "journal") == [1]


def test_sigint_stops_cleanly_too(tmp: Path) -> None:
    """SIGINT (Ctrl-C) is a clean stop too: exit 0, socket removed."""
    with daemon_process(tmp, args=["--config", write_config(tmp)]) as d:
        assert emit(d.sock, {"type": "tick"}) == [1]
        assert d.stop(signal.SIGINT) == 0
    assert not os.path.lexists(tmp / "ev.sock")


# -- seq and the journal across restarts ---------------------------------------------


def test_seq_continues_across_a_restart(tmp: Path) -> None:
    """After a clean restart on the same journal, seq goes on and old events replay."""
    config = write_config(tmp)
    with daemon_process(tmp, args=["--config", config]) as first:
        ndjson = '{"type":"a"}\n{"type":"b"}\n{"type":"c"}\n'
        result = run_cli(tmp, "emit", "--config", config, "-", stdin=ndjson)
        assert (result.returncode, result.stdout) == (
            0,
            "accepted seq=1 delivered=0\naccepted seq=2 delivered=0\naccepted seq=3 delivered=0\n",
        )
        assert first.stop() == 0
    with daemon_process(tmp, args=["--config", config]) as second:
        assert (second.epoch, second.seq) == (first.epoch, 3)
        with connect(f"{second.url}?since=1", open_timeout=TIMEOUT) as ws:
            assert recv_event(ws)["seq"] == 3  # connected: the last seq so far
            replayed = [recv_event(ws) for _ in range(2)]
            result = run_cli(tmp, "emit", "--config", config, "d")
            assert (result.returncode, result.stdout) == (0, "accepted seq=4 delivered=1\n")
            live = recv_event(ws)
        assert second.stop() == 0
    assert [(e["seq"], e["type"]) for e in [*replayed, live]] == [(2, "b"), (3, "c"), (4, "d")]
    assert journal_seqs(tmp / "journal") == [1, 2, 3, 4]


def test_kill_9_loses_no_acked_event_and_reuses_no_seq(tmp: Path) -> None:
    """SIGKILL mid-stream (fsync: always): every acked seq is journaled; the next start
    continues after the last journaled one."""
    config = write_config(tmp, journal={"fsync": "always"})
    acked: list[int] = []
    progress = threading.Condition()
    stopped: list[BaseException] = []

    def send_forever(sock: str) -> None:
        try:
            with EventSource(sock, name="flood", timeout=TIMEOUT, reconnect=False) as source:
                for n in range(100_000):
                    seq = source.send({"type": "tick", "n": n}).seq
                    with progress:
                        acked.append(seq)
                        progress.notify_all()
        except SourceError as exc:  # the daemon died under us: expected
            stopped.append(exc)

    with daemon_process(tmp, args=["--config", config]) as first:
        sender = threading.Thread(target=send_forever, args=(first.sock,), daemon=True)
        sender.start()
        with progress:
            assert progress.wait_for(lambda: len(acked) >= 50, TIMEOUT), acked[-1:]
        assert first.stop(signal.SIGKILL) == -signal.SIGKILL
        sender.join(TIMEOUT)
        assert not sender.is_alive()
    assert len(stopped) == 1
    assert acked == list(range(1, len(acked) + 1))
    journaled = journal_seqs(tmp / "journal")
    assert journaled == list(range(1, len(journaled) + 1))  # complete, in order, no holes
    assert set(acked) <= set(journaled)
    # The stale socket left by the killed daemon is replaced; seq resumes after it.
    with daemon_process(
        tmp, args=["--config", config], before_ready="replacing stale socket"
    ) as second:
        assert (second.epoch, second.seq) == (first.epoch, journaled[-1])
        assert emit(second.sock, {"type": "after"}) == [journaled[-1] + 1]
        assert second.stop() == 0
    assert next(line for line in second.lines if "stale socket" in line).split()[1] == "WARNING"


def test_torn_last_journal_line_is_cut_with_a_warning(tmp: Path) -> None:
    """A partial last line in the newest journal file is cut with a WARNING; the start
    succeeds and seq continues after the last complete line."""
    config = write_config(tmp)
    with daemon_process(tmp, args=["--config", config]) as first:
        assert emit(first.sock, {"type": "a"}, {"type": "b"}) == [1, 2]
        assert first.stop() == 0
    newest = sorted((tmp / "journal").glob("events-*.jsonl"))[-1]
    intact = newest.read_bytes()
    assert intact.endswith(b"\n")
    with newest.open("ab") as fh:
        fh.write(b'{"type":"c","n":3,"seq":3,"timesta')
    with daemon_process(tmp, args=["--config", config], before_ready="torn last line") as second:
        assert second.seq == 2
        assert newest.read_bytes() == intact
        assert emit(second.sock, {"type": "c"}) == [3]
        assert second.stop() == 0
    assert next(line for line in second.lines if "torn last line" in line).split()[1] == "WARNING"
    assert journal_seqs(tmp / "journal") == [1, 2, 3]


# -- exit codes ----------------------------------------------------------------------


def test_bad_config_exits_2_naming_the_key(tmp: Path) -> None:
    """`run` with an invalid config exits 2 with the dotted key on stderr."""
    config = write_config(tmp, websocket={"port": "x"})
    result = run_cli(tmp, "run", "--config", config)
    assert result.returncode == 2
    assert "websocket.port" in result.stderr
    assert not os.path.lexists(tmp / "ev.sock")


def test_regular_file_at_socket_path_exits_1(tmp: Path) -> None:
    """A regular file where the socket goes: exit 1, the file is left alone."""
    (tmp / "ev.sock").write_text("mine\n", encoding="utf-8")
    result = run_cli(tmp, "run", "--config", write_config(tmp))
    assert result.returncode == 1
    assert "not a socket" in result.stderr
    assert (tmp / "ev.sock").read_text(encoding="utf-8") == "mine\n"


def test_websocket_port_in_use_exits_1(tmp: Path) -> None:
    """A WebSocket port taken by another listener: exit 1 naming it; no socket left behind."""
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        result = run_cli(tmp, "run", "--config", write_config(tmp, websocket={"port": port}))
    assert result.returncode == 1
    assert f"cannot listen on localhost:{port}" in result.stderr
    assert not os.path.lexists(tmp / "ev.sock")


def test_second_daemon_on_the_same_socket_exits_1(tmp: Path) -> None:
    """A second daemon on a live socket exits 1; the first keeps serving."""
    config = write_config(tmp)
    other = write_config(tmp, "other.yaml", journal={"directory": str(tmp / "journal2")})
    with daemon_process(tmp, args=["--config", config]) as first:
        assert emit(first.sock, {"type": "a"}) == [1]
        result = run_cli(tmp, "run", "--config", other)
        assert result.returncode == 1, result.stderr
        assert "another daemon is listening" in result.stderr
        result = run_cli(tmp, "run", "--config", config)  # same socket and journal
        assert result.returncode == 1, result.stderr
        assert " ERROR " in result.stderr
        assert emit(first.sock, {"type": "b"}) == [2]
        with connect(first.url, open_timeout=TIMEOUT) as ws:
            assert recv_event(ws)["seq"] == 2
        assert first.stop() == 0
    assert journal_seqs(tmp / "journal") == [1, 2]
    assert not (tmp / "journal2").exists() or journal_seqs(tmp / "journal2") == []


def test_second_daemon_on_the_same_journal_exits_1(tmp: Path) -> None:
    """A second daemon (own socket and port) on a journal in use exits 1: two writers
    would stamp the same seqs."""
    config = write_config(tmp)
    other = write_config(tmp, "other.yaml", sources={"socket_path": str(tmp / "ev2.sock")})
    with daemon_process(tmp, args=["--config", config]) as first:
        assert emit(first.sock, {"type": "a"}) == [1]
        with spawn("run", "--config", other, env=subprocess_env(tmp)) as (proc, stderr):
            try:
                stderr.wait_for(" ready: ")
            except AssertionError:  # it exited before it was ready: good
                pass
            else:  # it started: show that both now hand out the same seq
                seqs = emit(first.sock, {"type": "b"}) + emit(str(tmp / "ev2.sock"), {"type": "b"})
                pytest.fail(f"the second daemon shares the journal; they acked seqs {seqs}")
            assert proc.wait(TIMEOUT) == 1
        assert emit(first.sock, {"type": "b"}) == [2]
        assert first.stop() == 0


# -- no config at all ----------------------------------------------------------------


def test_run_without_config_option_uses_env_config_and_xdg_dirs(tmp: Path) -> None:
    """`python -m aaeventd run` with only $AAEVENTD_CONFIG (port 0) serves on the XDG
    default socket and journal; a bare `aaeventd emit` finds it."""
    (tmp / "c.yaml").write_text("websocket: {port: 0}\n", encoding="utf-8")
    extra = {"AAEVENTD_CONFIG": str(tmp / "c.yaml")}
    sock = tmp / "run" / "aaeventd" / "events.sock"
    with daemon_process(tmp, args=[], env=subprocess_env(tmp, **extra)) as d:
        assert d.sock == str(sock)
        assert (sock.parent.stat().st_mode & 0o777, sock.stat().st_mode & 0o777) == (0o700, 0o600)
        with connect(d.url, open_timeout=TIMEOUT) as ws:
            assert recv_event(ws)["type"] == "connected"
            result = run_cli(tmp, "emit", "tick", "n=1", **extra)
            assert (result.returncode, result.stdout) == (0, "accepted seq=1 delivered=1\n")
            assert recv_event(ws)["n"] == 1
        assert d.stop() == 0
    assert journal_seqs(tmp / "state" / "aaeventd" / "journal") == [1]
    assert not os.path.lexists(sock)


def test_check_config_without_any_config_says_built_in_defaults(tmp: Path) -> None:
    """`aaeventd check-config` with no argument and no config file exits 0 on defaults."""
    result = run_cli(tmp, "check-config")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "built-in defaults: ok"
    assert str(tmp / "run" / "aaeventd" / "events.sock") in result.stdout
    assert "ws://127.0.0.1:9876/" in result.stdout


def test_port_0_is_logged_even_at_warning_level(tmp: Path) -> None:
    """§7: with port 0 the real port is logged, also when INFO lines are off."""
    cfg = write_config(tmp, logging={"level": "WARNING"})
    with spawn("run", "--config", cfg, env=subprocess_env(tmp)) as (proc, stderr):
        line = stderr.wait_for("listening for clients on port ")
        port = int(line.split("listening for clients on port ")[1].split()[0])
        with connect(f"ws://127.0.0.1:{port}/", open_timeout=TIMEOUT) as ws:
            assert json.loads(ws.recv(TIMEOUT))["type"] == "connected"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(TIMEOUT) == 0
        stderr.join()
    assert not any(" INFO " in ln for ln in stderr.lines)


def test_the_opt_in_uvloop_event_loop_runs_the_same_path(tmp: Path) -> None:
    """AAEVENTD_EVENT_LOOP=uvloop (the uvloop extra): the daemon says which loop runs it,
    and sources, acks, clients and the stop work as on asyncio's; a bad value exits 2."""
    require(importlib.util.find_spec("uvloop") is not None, "uvloop (pip install -e '.[test]')")
    config = write_config(tmp)
    env = subprocess_env(tmp, AAEVENTD_EVENT_LOOP="uvloop")
    with (
        daemon_process(
            tmp, args=["--config", config], env=env, before_ready="event loop: uvloop.Loop"
        ) as d,
        connect(d.url, open_timeout=TIMEOUT) as ws,
    ):
        assert recv_event(ws)["type"] == "connected"
        with EventSource(d.sock, name="uv", timeout=TIMEOUT) as src:
            acks = [src.send({"type": "uv.test", "n": n}) for n in range(3)]
        got = [(a.seq, a.delivered) if a is not None else None for a in acks]
        assert got == [(1, 1), (2, 1), (3, 1)], got
        assert [recv_event(ws)["n"] for _ in range(3)] == [0, 1, 2]
        assert d.stop(signal.SIGTERM) == 0
    assert journal_seqs(tmp / "journal") == [1, 2, 3]
    bad = run_cli(tmp, "run", "--config", config, AAEVENTD_EVENT_LOOP="tokio")
    assert bad.returncode == 2, bad.stderr
    assert "AAEVENTD_EVENT_LOOP: must be asyncio or uvloop, not 'tokio'" in bad.stderr, bad.stderr
