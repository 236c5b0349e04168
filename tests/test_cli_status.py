"""``aaeventd status``, ``clients``, ``ui``, ``install-service`` and ``watch --live``
(aaeventd.cli), and the text they show (aaeventd.cli.console).

Commands that talk to a daemon reach a real one running in a background thread
(tests/test_cli.py's :func:`daemon_thread`: real Unix socket, real WebSocket/HTTP
port), through a config file naming its real port.  :class:`LiveView` is pure: it is
fed frames and rendered with an explicit ``now``, so countdowns are tested without
waiting.
"""

from __future__ import annotations

import contextlib
import http.server
import io
import json
import os
import re
import socket
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import pytest
from websockets.sync.client import connect

from aaeventd import __version__
from aaeventd.cli import main
from aaeventd.cli.console import (
    LiveView,
    display_width,
    format_clients,
    format_duration,
    format_event,
    format_health,
)
from aaeventd.cli.service import render_units
from aaeventd.client import EventSource
from aaeventd.protocol.codec import rfc3339_utc
from tests.support import (
    TIMEOUT,
    BackgroundMain,
    ThreadedDaemon,
    daemon_thread,
    emit_all,
    make_config,
    write_yaml,
)

# -- fixtures ------------------------------------------------------------------------

pytestmark = pytest.mark.usefixtures("private_env")


@pytest.fixture
def daemon(tmp: Path) -> Iterator[ThreadedDaemon]:
    with daemon_thread(ThreadedDaemon(make_config(tmp))) as d:
        yield d


def cli_config(tmp: Path, port: int, **sections: dict[str, Any]) -> str:
    """A config file that points the CLI at ``port`` (plus ``sections``)."""
    data: dict[str, Any] = {"websocket": {"port": port}}
    for name, values in sections.items():
        data.setdefault(name, {}).update(values)
    return write_yaml(tmp / "cli.yaml", data)


def fields(out: str) -> dict[str, str]:
    """``label: value`` lines as a dict (the labels are padded to align)."""
    result = {}
    for line in out.splitlines():
        label, sep, value = line.partition(":")
        assert sep, line
        result[label] = value.strip()
    return result


class FakeTerminal(io.StringIO):
    """A UTF-8 terminal as stdout (only isatty and encoding differ from a pipe)."""

    def isatty(self) -> bool:
        return True

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return "utf-8"


class CannedHandler(http.server.BaseHTTPRequestHandler):
    """Answers every GET with :attr:`body` (an HTTP server that is not aaeventd)."""

    body: ClassVar[bytes] = b""

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet."""


@contextlib.contextmanager
def canned_http(body: bytes) -> Iterator[int]:
    """A real HTTP server on a free port answering ``body``; yields the port."""
    handler = type("Handler", (CannedHandler,), {"body": body})
    with http.server.HTTPServer(("127.0.0.1", 0), handler) as server:
        thread = threading.Thread(target=server.serve_forever, name="canned-http", daemon=True)
        thread.start()
        try:
            yield server.server_address[1]
        finally:
            server.shutdown()
            thread.join(TIMEOUT)


# -- status --------------------------------------------------------------------------


def test_status_prints_health_readably_with_the_ui_link(
    daemon: ThreadedDaemon, tmp: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`status`: exit 0; version, seq, clients, sources, socket path and the UI link."""
    path = cli_config(tmp, daemon.ws_port)
    assert emit_all(daemon, {"type": "a"}, {"type": "b"}) == [1, 2]
    with (
        connect(daemon.url, open_timeout=TIMEOUT) as ws,
        EventSource(daemon.sock, name="status-test"),
    ):
        assert json.loads(ws.recv(timeout=TIMEOUT))["type"] == "connected"
        assert main(["status", "--config", path]) == 0
    captured = capsys.readouterr()
    assert captured.err == ""
    shown = fields(captured.out)
    assert shown["status"] == "ok"
    assert shown["version"] == __version__
    assert shown["seq"] == "2"
    assert shown["clients"] == "1"
    assert shown["sources"] == "1"
    assert shown["pending confirmations"] == "0"
    assert shown["port"] == str(daemon.ws_port)
    assert shown["socket"] == daemon.sock
    assert re.fullmatch(r"\d+s", shown["uptime"]), shown["uptime"]
    assert captured.out.splitlines()[-1] == (
        f"web UI:                http://127.0.0.1:{daemon.ws_port}/"
    )
    # Aligned: every value starts in the same column.
    columns = {
        len(line) - len(line.split(":", 1)[1].lstrip()) for line in captured.out.splitlines()
    }
    assert len(columns) == 1


def test_status_json_prints_the_raw_healthz(
    daemon: ThreadedDaemon, tmp: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`status --json`: exit 0 and exactly the /healthz object."""
    path = cli_config(tmp, daemon.ws_port)
    emit_all(daemon, {"type": "a"})
    assert main(["status", "--json", "--config", path]) == 0
    health = json.loads(capsys.readouterr().out)
    assert {k: health[k] for k in ("status", "version", "seq", "port", "socket_path")} == {
        "status": "ok",
        "version": __version__,
        "seq": 1,
        "port": daemon.ws_port,
        "socket_path": daemon.sock,
    }


def test_status_url_option_accepts_http_and_ws(
    daemon: ThreadedDaemon, capsys: pytest.CaptureFixture[str]
) -> None:
    """`--url` names the daemon (http:// or the ws:// URL watch takes); no config needed."""
    for url in (f"http://127.0.0.1:{daemon.ws_port}", daemon.url + "?types=x"):
        assert main(["status", "--url", url]) == 0
        shown = fields(capsys.readouterr().out)
        assert shown["web UI"] == f"http://127.0.0.1:{daemon.ws_port}/"


def test_status_with_a_token_prints_the_link_with_it(
    tmp: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """With auth.token_file, the printed link carries ?token= with the file's token."""
    token_file = tmp / "token"
    with daemon_thread(ThreadedDaemon(make_config(tmp, auth={"token_file": str(token_file)}))) as d:
        token = token_file.read_text(encoding="utf-8").strip()
        port = d.ws_port
        path = cli_config(tmp, port, auth={"token_file": str(token_file)})
        assert main(["status", "--config", path]) == 0
    captured = capsys.readouterr()
    assert captured.err == ""
    link = fields(captured.out)["web UI"]
    assert link == f"http://127.0.0.1:{port}/?token={token}"


def test_status_nothing_listening_exits_1(tmp: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A port nobody listens on: exit 1, a message on stderr, nothing on stdout."""
    with socket.socket() as holder:  # bound, never listening: connections are refused
        holder.bind(("127.0.0.1", 0))
        port = holder.getsockname()[1]
        assert main(["status", "--config", cli_config(tmp, port)]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert f"cannot reach aaeventd at http://127.0.0.1:{port}/" in captured.err
    assert "is aaeventd running?" in captured.err


def test_status_peer_that_hangs_up_exits_1(tmp: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A TCP server that closes every connection at once: exit 1 with a message."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]

        def hang_up() -> None:
            conn, _ = server.accept()
            conn.close()

        thread = threading.Thread(target=hang_up, name="hang-up", daemon=True)
        thread.start()
        assert main(["status", "--config", cli_config(tmp, port)]) == 1
        thread.join(TIMEOUT)
    captured = capsys.readouterr()
    assert captured.out == ""
    assert f"cannot reach aaeventd at http://127.0.0.1:{port}/" in captured.err


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"<html>hello</html>", "did not answer with a JSON object: is that aaeventd?"),
        (b'{"status": "degraded", "version": "9"}', "the daemon reports status 'degraded'"),
    ],
)
def test_status_not_healthy_exits_1(
    body: bytes, message: str, tmp: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An answer that is not JSON, or a status other than ok: exit 1, saying so."""
    with canned_http(body) as port:
        assert main(["status", "--config", cli_config(tmp, port)]) == 1
    assert message in capsys.readouterr().err


def test_status_port_zero_needs_url(tmp: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """websocket.port 0 in the config (picked at start): exit 2, pointing at --url."""
    assert main(["status", "--config", cli_config(tmp, 0)]) == 2
    err = capsys.readouterr().err
    assert "websocket.port is 0" in err
    assert "--url" in err


def test_status_bad_url_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    """A --url that is not http(s)/ws(s)://HOST:PORT exits 2."""
    assert main(["status", "--url", "ftp://127.0.0.1:1/"]) == 2
    assert "--url must look like http://127.0.0.1:9876/" in capsys.readouterr().err


def test_status_bad_config_exits_2(tmp: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`status --config BAD` exits 2 naming the key."""
    path = write_yaml(tmp / "bad.yaml", {"websocket": {"prot": 1}})
    assert main(["status", "--config", path]) == 2
    assert "websocket.prot" in capsys.readouterr().err


# -- clients -------------------------------------------------------------------------


def test_clients_table_shows_the_client_and_the_source(
    daemon: ThreadedDaemon, tmp: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`clients`: a WebSocket client's row has its user agent and filter; a source's
    row has its pid, uid and hello name."""
    path = cli_config(tmp, daemon.ws_port)
    agent = "table-test/1.0"
    with (
        connect(daemon.url + "?types=skill_*", open_timeout=TIMEOUT, user_agent_header=agent) as ws,
        EventSource(daemon.sock, name="table-src") as source,
    ):
        assert json.loads(ws.recv(timeout=TIMEOUT))["type"] == "connected"
        source.emit("skill_started", skill_name="s")
        assert json.loads(ws.recv(timeout=TIMEOUT))["type"] == "skill_started"
        assert main(["clients", "--config", path]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "clients (1)"
    assert lines[1].split() == [
        "ID",
        "ADDRESS",
        "USER",
        "AGENT",
        "FILTER",
        "SINCE",
        "FRAMES",
        "BACKLOG",
    ]
    row = lines[2].split()
    assert row[1:4] == ["127.0.0.1", agent, "skill_*"]
    assert re.fullmatch(r"\d{4}-\d\d-\d\d", row[4])
    assert row[6:] == ["2", "0", "B"]  # connected + skill_started; nothing waiting
    assert lines[3] == "sources (1)"
    assert lines[4].split() == [
        "PID",
        "UID",
        "NAME",
        "EXECUTABLE",
        "UNIT",
        "SINCE",
        "EVENTS",
        "ERRORS",
        "DROPPED",
    ]
    src = lines[5].split()
    assert src[:3] == [str(os.getpid()), str(os.getuid()), "table-src"]
    assert src[-3:] == ["1", "0", "0"]
    assert len(lines) == 6
    # The header's columns line up with the rows'.
    assert lines[2].index(agent) == lines[1].index("USER AGENT")
    assert lines[5].index("table-src") == lines[4].index("NAME")


def test_clients_with_nobody_connected(
    daemon: ThreadedDaemon, tmp: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """No client, no source: both tables say none."""
    assert main(["clients", "--config", cli_config(tmp, daemon.ws_port)]) == 0
    assert capsys.readouterr().out == "clients (0)\n  none\nsources (0)\n  none\n"


def test_clients_needs_the_token(tmp: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """With a token, `clients` sends it (exit 0, --json is the /clients object); a
    config without the token gets 401, explained, exit 1."""
    token_file = tmp / "token"
    with daemon_thread(ThreadedDaemon(make_config(tmp, auth={"token_file": str(token_file)}))) as d:
        path = cli_config(tmp, d.ws_port, auth={"token_file": str(token_file)})
        assert main(["clients", "--json", "--config", path]) == 0
        assert json.loads(capsys.readouterr().out) == {"clients": [], "sources": []}
        assert main(["clients", "--url", f"http://127.0.0.1:{d.ws_port}/"]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "HTTP 401: the token is missing or wrong" in captured.err
    assert "no auth.token_file" in captured.err


def test_clients_nothing_listening_exits_1(tmp: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`clients` against a port nobody listens on: exit 1 with a message."""
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        port = holder.getsockname()[1]
        assert main(["clients", "--config", cli_config(tmp, port)]) == 1
    assert "is aaeventd running?" in capsys.readouterr().err


# -- ui ------------------------------------------------------------------------------


def test_ui_prints_the_link(tmp: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`ui`: exactly the link, from the config's host and port."""
    assert main(["ui", "--config", cli_config(tmp, 4321)]) == 0
    assert capsys.readouterr().out == "http://127.0.0.1:4321/\n"


def test_ui_link_carries_the_token_url_encoded(
    tmp: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """With a token file, the link ends in ?token= with the first line, URL-encoded."""
    token_file = tmp / "token"
    token_file.write_text("a+b/c=d \nignored\n", encoding="utf-8")
    path = cli_config(tmp, 4321, auth={"token_file": str(token_file)})
    assert main(["ui", "--config", path]) == 0
    assert capsys.readouterr().out == "http://127.0.0.1:4321/?token=a%2Bb%2Fc%3Dd\n"


def test_ui_ipv6_loopback_host(tmp: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """An IPv6 host is bracketed in the link."""
    path = write_yaml(tmp / "c.yaml", {"websocket": {"host": "::1", "port": 4321}})
    assert main(["ui", "--config", path]) == 0
    assert capsys.readouterr().out == "http://[::1]:4321/\n"


def test_ui_token_file_not_created_yet_exits_1(
    tmp: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A configured token file that does not exist yet: no link (it would be refused)."""
    path = cli_config(tmp, 4321, auth={"token_file": str(tmp / "missing")})
    assert main(["ui", "--config", path]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert f"no token in {tmp / 'missing'} yet" in captured.err


# -- install-service -----------------------------------------------------------------


def test_install_service_dry_run_prints_the_unit(
    tmp: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`install-service --dry-run`: exit 0, prints a Type=notify unit whose ExecStart
    runs this interpreter; writes nothing."""
    assert main(["install-service", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "\nType=notify\n" in out
    assert f"\nExecStart={sys.executable} -m aaeventd run\n" in out
    assert render_units(python=sys.executable, socket_activated=False)["aaeventd.service"] in out
    assert "aaeventd.socket (dry run" not in out
    assert not (tmp / "cfg" / "systemd").exists()


def test_install_service_socket_activated_dry_run(
    tmp: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`--socket-activated --dry-run` prints the two socket units as well."""
    assert main(["install-service", "--socket-activated", "--dry-run"]) == 0
    out = capsys.readouterr().out
    for name, text in render_units(python=sys.executable, socket_activated=True).items():
        assert f"{name} (dry run: not written)\n{text}" in out
    assert not (tmp / "cfg" / "systemd").exists()


# -- watch --live --------------------------------------------------------------------


def test_watch_live_without_a_terminal_prints_lines(
    daemon: ThreadedDaemon, capsys: pytest.CaptureFixture[str]
) -> None:
    """`watch --live` with stdout not a terminal: one plain line per event, no ANSI."""
    watch = BackgroundMain(["watch", "--live", "--url", daemon.url, "--count", "2"]).start()
    daemon.wait_for_client()
    emit_all(
        daemon,
        {"type": "skill_started", "skill_name": "s", "total_steps": 2},
        {"type": "tick", "n": 1},
    )
    assert watch.exit_code() == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2
    assert re.fullmatch(
        r"\s+1 \d\d:\d\d:\d\d\.\d{3} skill_started skill_name=s total_steps=2", lines[0]
    ), lines[0]
    assert re.fullmatch(r"\s+2 \d\d:\d\d:\d\d\.\d{3} tick n=1", lines[1]), lines[1]


def test_watch_live_and_json_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    """--live and --json together are a usage error."""
    assert main(["watch", "--live", "--json"]) == 2
    assert "choose one" in capsys.readouterr().err


def test_watch_live_on_a_terminal_draws_skills_and_confirmations(
    tmp: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On a terminal: the alternate screen, a bar with `step 2/4`, the pending
    confirmation with its countdown, the events; the screen is restored at the end."""
    monkeypatch.setenv("COLUMNS", "120")
    monkeypatch.setenv("LINES", "20")
    terminal = FakeTerminal()
    monkeypatch.setattr("sys.stdout", terminal)
    token_file = tmp / "token"
    with daemon_thread(ThreadedDaemon(make_config(tmp, auth={"token_file": str(token_file)}))) as d:
        port = d.ws_port
        path = cli_config(tmp, port, auth={"token_file": str(token_file)})
        watch = BackgroundMain(["watch", "--live", "--config", path, "--count", "4"]).start()
        d.wait_for_client()
        with EventSource(d.sock, name="live") as source:
            source.emit("skill_started", skill_name="start_work", skill_id="s1", total_steps=4)
            source.emit("step_started", skill_id="s1", step_name="fetch_issue", step_index=1)
            source.emit("step_started", skill_name="other", step_name="x", step_index=0)
            source.emit(
                "confirmation_required", message="Push?", options=["yes", "no"], skill_id="s1"
            )
            assert watch.exit_code() == 0
        token = token_file.read_text(encoding="utf-8").strip()
    out = terminal.getvalue()
    assert out.startswith("\x1b[?1049h")
    assert out.endswith("\x1b[?25h\x1b[?1049l")
    assert token not in out
    frame = out.split("\x1b[H")[-1].split("\x1b[J")[0]
    assert frame.endswith("\x1b[K")  # each line cleared to its end
    last = frame.removesuffix("\x1b[K").split("\x1b[K\r\n")
    assert last[0] == (
        f"aaeventd  seq 4  1 running  1 pending  [connected to ws://127.0.0.1:{port}/]"
    )
    assert last[1] == "Running skills (1)"
    assert re.fullmatch(r"  start_work {16}█{5}░{15}  step 2/4  \ds  fetch_issue", last[2]), last[2]
    assert last[3] == "Pending confirmations (1)"
    assert re.fullmatch(r" +(1m 00s|59s) left  Push\?  \[yes/no\]  id [0-9a-f-]{36}", last[4]), (
        last[4]
    )
    assert last[5] == "Last events"
    assert [line.split()[2] for line in last[6:10]] == [
        "skill_started",
        "step_started",
        "step_started",
        "confirmation_required",
    ]
    assert len(last) == 10
    assert all(display_width(line) <= 119 for line in last)


# -- LiveView (pure) -----------------------------------------------------------------


def snapshot(seq: int = 0, **kwargs: Any) -> dict[str, Any]:
    return {
        "type": "connected",
        "server": "aaeventd",
        "epoch": "e",
        "seq": seq,
        "running_skills": kwargs.get("skills", []),
        "pending_confirmations": kwargs.get("pending", []),
    }


def event(seq: int, kind: str, **fields: Any) -> dict[str, Any]:
    return {"type": kind, **fields, "seq": seq, "timestamp": "2026-02-04T10:30:00.123Z"}


def section(lines: list[str], title: str) -> list[str]:
    """The lines under a section header, up to the next header."""
    start = next(i for i, line in enumerate(lines) if line.startswith(title))
    rest = lines[start + 1 :]
    end = next((i for i, line in enumerate(rest) if not line.startswith("  ")), len(rest))
    return rest[:end]


def test_live_view_shows_the_current_step_one_based() -> None:
    """step_index is 0-based on the wire: index 1 of 5 shows `step 2/5`, with the step
    name and the elapsed time since skill_started."""
    view = LiveView()
    view.feed(snapshot(), 100.0)
    view.feed(event(1, "skill_started", skill_name="start_work", total_steps=5), 100.0)
    view.feed(
        event(2, "step_started", skill_name="start_work", step_name="fetch", step_index=1), 101
    )
    lines = view.render(165.0, 80, 24)
    assert lines[0].startswith("aaeventd  seq 2  1 running  0 pending")
    assert section(lines, "Running skills") == [
        f"  {'start_work':<24}  {view.bar(1, 5, 16)}  step 2/5  1m 05s  fetch"
    ]


def test_live_view_completed_steps_fill_the_bar() -> None:
    """step_completed of index i counts i+1 steps done; the bar fills in proportion."""
    view = LiveView(ascii=True)
    view.feed(snapshot(), 0.0)
    view.feed(event(1, "skill_started", skill_id="k", skill_name="s", total_steps=2), 0.0)
    view.feed(event(2, "step_started", skill_id="k", step_name="a", step_index=0), 0.0)
    assert view.render(0.0, 60, 24)[2] == f"  {'s':<20}  [..........]  step 1/2  0s  a"
    view.feed(event(3, "step_completed", skill_id="k", step_name="a", step_index=0), 0.0)
    assert view.render(0.0, 60, 24)[2] == f"  {'s':<20}  [#####.....]  step 1/2  0s  a"
    view.feed(event(4, "step_started", skill_id="k", step_name="b", step_index=1), 0.0)
    assert view.render(0.0, 60, 24)[2] == f"  {'s':<20}  [#####.....]  step 2/2  0s  b"
    view.feed(event(5, "step_completed", skill_id="k", step_name="b", step_index=1), 0.0)
    assert view.render(0.0, 60, 24)[2] == f"  {'s':<20}  [##########]  step 2/2  0s  b"


def test_live_view_bar_characters() -> None:
    """Unicode bars use full and partial blocks; ASCII bars `[###...]`; no total: empty."""
    view = LiveView()
    assert view.bar(1, 4, 8) == "██░░░░░░"
    assert view.bar(0, 5, 10) == "░" * 10
    assert view.bar(5, 5, 10) == "█" * 10
    assert view.bar(9, 5, 10) == "█" * 10
    assert view.bar(1, 3, 10) == "███▍░░░░░░"
    assert view.bar(2, None, 6) == "░" * 6
    ascii_view = LiveView(ascii=True)
    assert ascii_view.bar(1, 4, 10) == "[##......]"
    assert ascii_view.bar(0, 0, 10) == "[........]"


@pytest.mark.parametrize("end", ["skill_completed", "skill_failed", "skill_error"])
def test_live_view_finished_skills_leave(end: str) -> None:
    """A skill leaves on skill_completed/failed/error (found by its skill_id)."""
    view = LiveView()
    view.feed(snapshot(), 0.0)
    view.feed(event(1, "skill_started", skill_id="k1", skill_name="a"), 0.0)
    view.feed(event(2, "skill_started", skill_id="k2", skill_name="b"), 0.0)
    view.feed(event(3, end, skill_id="k1"), 1.0)
    lines = view.render(2.0, 80, 24)
    assert [line.split()[0] for line in section(lines, "Running skills")] == ["b"]
    view.feed(event(4, end, skill_name="b"), 3.0)
    assert "Running skills: none" in view.render(4.0, 80, 24)


def test_live_view_step_failed_is_marked_and_skill_stays() -> None:
    """step_failed marks the current step; the skill stays until it ends."""
    view = LiveView()
    view.feed(snapshot(), 0.0)
    view.feed(event(1, "skill_started", skill_name="s", total_steps=2), 0.0)
    view.feed(event(2, "step_started", skill_name="s", step_name="x", step_index=0), 0.0)
    view.feed(event(3, "step_failed", skill_name="s", step_name="x", step_index=0), 0.0)
    assert section(view.render(0.0, 80, 24), "Running skills")[0].endswith(
        "step 1/2  0s  x (failed)"
    )


def test_live_view_heal_shows_on_the_skill() -> None:
    """heal_started names the tool on its skill's line until heal_completed."""
    view = LiveView()
    view.feed(snapshot(), 0.0)
    view.feed(event(1, "skill_started", skill_id="k", skill_name="s"), 0.0)
    view.feed(event(2, "auto_heal_triggered", skill_id="k", tool_name="git_push"), 0.0)
    assert section(view.render(0.0, 100, 24), "Running skills")[0].endswith("[healing: git_push]")
    view.feed(event(3, "heal_completed", skill_id="k", success=True), 0.0)
    assert "healing" not in section(view.render(0.0, 100, 24), "Running skills")[0]


def test_live_view_snapshot_skills_use_started_at() -> None:
    """Skills of the connected snapshot show their step and the time since started_at."""
    view = LiveView()
    skill = {
        "skill_id": "k",
        "skill_name": "start_work",
        "total_steps": 5,
        "current_step": 2,
        "current_step_name": "fetch_issue",
        "status": "running",
        "started_at": rfc3339_utc(1_700_000_000.0),
    }
    view.feed(snapshot(7, skills=[skill]), 1_700_000_030.0)
    row = section(view.render(1_700_000_042.0, 80, 24), "Running skills")
    assert row == [f"  {'start_work':<24}  {view.bar(2, 5, 16)}  step 3/5  42s  fetch_issue"]


def test_live_view_confirmation_countdown_decreases_with_now() -> None:
    """A confirmation_required counts down from timeout_seconds at receipt."""
    view = LiveView()
    view.feed(snapshot(), 1000.0)
    view.feed(
        event(
            1,
            "confirmation_required",
            id="c1",
            prompt="Deploy?",
            message="Deploy?",
            options=["yes", "no"],
            timeout_seconds=60,
        ),
        1000.0,
    )
    lines = [section(view.render(now, 80, 24), "Pending") for now in (1000.0, 1017.5, 1100.0)]
    assert lines == [
        ["       1m 00s left  Deploy?  [yes/no]  id c1"],
        ["          43s left  Deploy?  [yes/no]  id c1"],
        ["           0s left  Deploy?  [yes/no]  id c1"],
    ]


def test_live_view_snapshot_confirmations_and_pause() -> None:
    """Snapshot confirmations count down from remaining_seconds; paused ones stand still."""
    pending = [
        {
            "id": "run",
            "prompt": "A?",
            "options": ["y", "n"],
            "remaining_seconds": 42.5,
            "paused": False,
            "skill_name": "s",
        },
        {"id": "held", "message": "B?", "options": ["ok"], "remaining_seconds": 10, "paused": True},
    ]
    view = LiveView()
    view.feed(snapshot(3, pending=pending), 500.0)
    assert section(view.render(500.0, 80, 24), "Pending") == [
        "          43s left  A?  [y/n]  id run  (s)",
        "  paused, 10s left  B?  [ok]  id held",
    ]
    assert section(view.render(510.0, 80, 24), "Pending") == [
        "          33s left  A?  [y/n]  id run  (s)",
        "  paused, 10s left  B?  [ok]  id held",
    ]


@pytest.mark.parametrize("end", ["confirmation_answered", "confirmation_expired"])
def test_live_view_answered_or_expired_confirmation_leaves(end: str) -> None:
    """confirmation_answered / confirmation_expired remove that confirmation."""
    view = LiveView()
    view.feed(snapshot(), 0.0)
    for seq, cid in ((1, "a"), (2, "b")):
        view.feed(event(seq, "confirmation_required", id=cid, prompt=cid, timeout_seconds=9), 0.0)
    view.feed(event(3, end, id="a", response="yes"), 1.0)
    assert [line.split()[-1] for line in section(view.render(1.0, 80, 24), "Pending")] == ["b"]
    assert view.render(1.0, 80, 24)[0].startswith("aaeventd  seq 3  0 running  1 pending")


def test_live_view_replayed_events_do_not_redo_the_snapshot() -> None:
    """Events at or below the snapshot's seq (a replay) are listed but change nothing;
    a new connected frame replaces the state."""
    skill = {"skill_id": "k", "skill_name": "s", "current_step": None, "started_at": "x"}
    view = LiveView()
    view.feed(snapshot(5, skills=[skill]), 0.0)
    view.feed(event(4, "skill_completed", skill_id="k"), 0.0)
    lines = view.render(0.0, 80, 24)
    assert section(lines, "Running skills")[0].startswith("  s ")
    assert lines[-1].split()[:1] + lines[-1].split()[2:] == ["4", "skill_completed", "skill_id=k"]
    view.feed(event(6, "skill_completed", skill_id="k"), 0.0)
    assert "Running skills: none" in view.render(0.0, 80, 24)
    view.feed(snapshot(9, skills=[skill]), 0.0)
    assert section(view.render(0.0, 80, 24), "Running skills")[0].startswith("  s ")


def test_live_view_fits_width_and_height() -> None:
    """Every line fits the width (wide characters count double); the event list keeps
    the newest events that fit the height."""
    view = LiveView()
    view.feed(snapshot(), 0.0)
    view.feed(event(1, "skill_started", skill_name="長い名前のスキル" * 3, total_steps=3), 0.0)
    view.feed(event(2, "confirmation_required", id="c", prompt="確認 " * 40, timeout_seconds=5), 0)
    for seq in range(3, 40):
        view.feed(event(seq, "tick", n=seq, text="x" * seq), 0.0)
    for width in (1, 7, 20, 33, 80, 200):
        for height in (1, 3, 12):
            lines = view.render(1.0, width, height)
            assert len(lines) == height
            assert all(display_width(line) <= width for line in lines), (width, lines)
    lines = view.render(1.0, 200, 12)
    assert [line.split()[0] for line in lines[-6:]] == ["34", "35", "36", "37", "38", "39"]
    assert lines[-7] == "Last events"
    assert view.render(1.0, 0, 10) == []


def test_live_view_escapes_control_characters() -> None:
    """An escape sequence or newline from a source is shown escaped, never sent raw."""
    view = LiveView()
    view.feed(snapshot(), 0.0)
    view.feed(
        event(1, "confirmation_required", id="c", prompt="a\x1b[2Jb\nc", timeout_seconds=5), 0
    )
    text = "\n".join(view.render(0.0, 200, 24))
    assert "\x1b" not in text
    assert "a\\u001b[2Jb\\nc" in text


def test_live_view_lists_replay_gaps() -> None:
    """A replay_gap becomes a line of the event list."""
    view = LiveView()
    view.feed(snapshot(9), 0.0)
    view.feed({"type": "replay_gap", "reason": "evicted", "from": 2, "to": 5}, 0.0)
    assert view.render(0.0, 80, 24)[-1] == "     - replay gap: events 2-5 are no longer kept"


# -- console formatting (pure) -------------------------------------------------------


def test_format_event_is_one_line_with_escaped_controls() -> None:
    """format_event: `seq time type k=v`, JSON for non-strings, controls escaped."""
    line = format_event(event(7, "tick", text="two\nlines\x1b[31m", n=[1, "é"], ok=None))
    assert line == '     7 10:30:00.123 tick text=two\\nlines\\u001b[31m n=[1, "é"] ok=null'


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0, "0s"),
        (59.9, "59s"),
        (60, "1m 00s"),
        (3599, "59m 59s"),
        (3600, "1h 00m 00s"),
        (7384.5, "2h 03m 04s"),
        (86_400 * 3 + 4 * 3600 + 5 * 60 + 6, "3d 04h 05m"),
        (-5, "0s"),
    ],
)
def test_format_duration(seconds: float, text: str) -> None:
    """Durations read as days/hours/minutes/seconds."""
    assert format_duration(seconds) == text


def test_format_health_lines() -> None:
    """/healthz as aligned lines: known keys in order and labelled, uptime humanised,
    null as none, unknown keys last, the link at the end."""
    health = {
        "zeta_extra": 1,
        "status": "ok",
        "version": "1.2.3",
        "uptime_seconds": 3725.25,
        "seq": 41,
        "socket_path": "/run/x.sock",
        "last_error": None,
    }
    assert format_health(health, "http://127.0.0.1:1/") == [
        "status:     ok",
        "version:    1.2.3",
        "uptime:     1h 02m 05s",
        "seq:        41",
        "socket:     /run/x.sock",
        "last error: none",
        "zeta extra: 1",
        "web UI:     http://127.0.0.1:1/",
    ]


def test_format_clients_tables() -> None:
    """/clients as two aligned tables; long user agents are cut, an empty filter is *."""
    view = {
        "clients": [
            {
                "id": "c1",
                "address": "127.0.0.1",
                "user_agent": "A" * 60,
                "filter": [],
                "connected_since": "2026-02-04T10:30:00.123Z",
                "frames_sent": 12345,
                "backlog_bytes": 2048,
            }
        ],
        "sources": [
            {
                "pid": 42,
                "uid": 1000,
                "executable": "/usr/bin/python3",
                "unit": None,
                "name": "engine",
                "connected_since": "2026-02-04T10:31:00.000Z",
                "events_accepted": 7,
                "errors": 1,
                "dropped_replies": 0,
            }
        ],
    }
    agent = "A" * 39 + "…"
    assert format_clients(view) == [
        "clients (1)",
        f"  ID  ADDRESS    USER AGENT{' ' * 32}FILTER  SINCE                 FRAMES  BACKLOG",
        f"  c1  127.0.0.1  {agent}  *       2026-02-04 10:30:00Z   12345  2.0 KiB",
        "sources (1)",
        "  PID   UID  NAME    EXECUTABLE        UNIT  SINCE                 "
        "EVENTS  ERRORS  DROPPED",
        "   42  1000  engine  /usr/bin/python3  -     2026-02-04 10:31:00Z       "
        "7       1        0",
    ]
