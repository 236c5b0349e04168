"""Tests for aaeventd.cli: ``main(argv)`` in-process, exit codes and output.

Commands that talk to a daemon reach a real one running in a background thread
with its own event loop (real Unix socket, real WebSocket port); the WebSocket
side is checked with a real websockets client.
"""

from __future__ import annotations

import contextlib
import io
import json
import re
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
from websockets.sync.client import ClientConnection, connect

from aaeventd import __version__
from aaeventd.cli import main
from aaeventd.client import EventSource
from tests.support import (
    REPO,
    TIMEOUT,
    BackgroundMain,
    ThreadedDaemon,
    daemon_thread,
    emit_all,
    make_config,
    write_yaml,
)

SHIPPED = REPO / "config" / "aaeventd.yaml"
SUBCOMMANDS = [
    "run",
    "check-config",
    "emit",
    "watch",
    "confirm",
    "status",
    "clients",
    "ui",
    "install-service",
]
T = TypeVar("T")

pytestmark = pytest.mark.usefixtures("private_env")


# -- a daemon in a background thread -------------------------------------------------


@pytest.fixture
def daemon(tmp: Path) -> Iterator[ThreadedDaemon]:
    with daemon_thread(ThreadedDaemon(make_config(tmp))) as d:
        yield d


def recv_event(ws: ClientConnection) -> dict[str, Any]:
    obj = json.loads(ws.recv(timeout=TIMEOUT))
    assert isinstance(obj, dict)
    return obj


@contextlib.contextmanager
def ws_client(d: ThreadedDaemon, query: str = "") -> Iterator[ClientConnection]:
    """A real WebSocket client whose ``connected`` frame has been read."""
    with connect(d.url + (f"?{query}" if query else ""), open_timeout=TIMEOUT) as ws:
        assert recv_event(ws)["type"] == "connected"
        yield ws


# -- usage and help ------------------------------------------------------------------


@pytest.mark.parametrize("command", SUBCOMMANDS)
def test_subcommand_help_exits_0_with_an_example(
    command: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """`aaeventd CMD --help` exits 0 and shows an example."""
    assert main([command, "--help"]) == 0
    out = capsys.readouterr().out
    assert f"usage: aaeventd {command}" in out
    assert "example" in out


def test_top_level_help_lists_every_command(capsys: pytest.CaptureFixture[str]) -> None:
    """`aaeventd --help` exits 0 and names each sub-command."""
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for command in SUBCOMMANDS:
        assert command in out


def test_version_exits_0(capsys: pytest.CaptureFixture[str]) -> None:
    """`aaeventd --version` prints the version and exits 0."""
    assert main(["--version"]) == 0
    assert capsys.readouterr().out == f"aaeventd {__version__}\n"


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["bogus"],
        ["check-config", "a.yaml", "b.yaml"],
        ["watch", "--count", "x"],
        ["emit", "--no-such-option", "x"],
    ],
)
def test_usage_errors_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    """An unknown command, option or bad argument exits 2 with a usage message."""
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "usage: aaeventd" in err
    assert "error:" in err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["emit"], "emit needs TYPE"),
        (["emit", "skill_started", "novalue"], "expected KEY=VALUE, got 'novalue'"),
        (["emit", "skill_started", "=3"], "expected KEY=VALUE, got '=3'"),
        (["emit", "--json", '{"type":"x"}', "skill_started"], "not both"),
        (["emit", "-", "a=1"], "'-' reads every event from stdin"),
        (["watch", "--count", "0"], "--count must be at least 1"),
    ],
)
def test_missing_or_contradictory_arguments_exit_2(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Missing or contradictory arguments exit 2 before any connection, saying why."""
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert message in captured.err
    assert captured.out == ""


# -- check-config --------------------------------------------------------------------


def test_check_config_valid_file_prints_ok(tmp: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A valid file: exit 0, 'PATH: ok' and the resolved socket and URL."""
    path = write_yaml(
        tmp / "c.yaml", {"sources": {"socket_path": "/tmp/x/ev.sock"}, "websocket": {"port": 1234}}
    )
    assert main(["check-config", path]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0] == f"{path}: ok"
    assert "/tmp/x/ev.sock" in out
    assert "ws://127.0.0.1:1234/" in out


def test_check_config_unknown_key_names_the_dotted_key(
    tmp: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An unknown key: exit 2 and stderr names `websocket.bogus`."""
    path = write_yaml(tmp / "c.yaml", {"websocket": {"bogus": 1}})
    assert main(["check-config", path]) == 2
    captured = capsys.readouterr()
    assert "websocket.bogus" in captured.err
    assert "unknown key" in captured.err
    assert captured.out == ""


def test_check_config_wrong_type_names_the_dotted_key(
    tmp: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`websocket.port: "x"`: exit 2 and stderr names `websocket.port`."""
    path = tmp / "c.yaml"
    path.write_text('websocket:\n  port: "x"\n', encoding="utf-8")
    assert main(["check-config", str(path)]) == 2
    err = capsys.readouterr().err
    assert "websocket.port" in err
    assert "integer" in err


def test_check_config_impossible_value_exits_2(
    tmp: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A remote bind without a token is refused by check-config too (§2.4)."""
    path = write_yaml(tmp / "c.yaml", {"websocket": {"host": "0.0.0.0"}})
    assert main(["check-config", path]) == 2
    assert "websocket.host" in capsys.readouterr().err


def test_check_config_missing_file_exits_2(tmp: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A config file that does not exist: exit 2 naming it."""
    assert main(["check-config", str(tmp / "nope.yaml")]) == 2
    assert "nope.yaml" in capsys.readouterr().err


def test_check_config_invalid_yaml_exits_2(tmp: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Unparsable YAML: exit 2 saying it is invalid YAML."""
    path = tmp / "c.yaml"
    path.write_text("websocket: [unclosed\n", encoding="utf-8")
    assert main(["check-config", str(path)]) == 2
    assert "invalid YAML" in capsys.readouterr().err


def test_check_config_shipped_file_is_valid(capsys: pytest.CaptureFixture[str]) -> None:
    """The shipped config/aaeventd.yaml passes check-config."""
    assert main(["check-config", str(SHIPPED)]) == 0
    assert capsys.readouterr().out.splitlines()[0] == f"{SHIPPED}: ok"


def test_check_config_without_any_config_uses_defaults(
    tmp: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """No argument and no config anywhere: exit 0, 'built-in defaults: ok'."""
    assert main(["check-config"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0] == "built-in defaults: ok"
    assert str(tmp / "run" / "aaeventd" / "events.sock") in out
    assert "ws://127.0.0.1:9876/" in out


def test_check_config_reads_aaeventd_config(
    tmp: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Without an argument, $AAEVENTD_CONFIG is the file checked."""
    path = write_yaml(tmp / "env.yaml", {"websocket": {"bogus": True}})
    monkeypatch.setenv("AAEVENTD_CONFIG", path)
    assert main(["check-config"]) == 2
    assert "websocket.bogus" in capsys.readouterr().err


def test_check_config_reads_xdg_config_home(tmp: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Without an argument or $AAEVENTD_CONFIG, $XDG_CONFIG_HOME/aaeventd/config.yaml."""
    (tmp / "cfg" / "aaeventd").mkdir(parents=True)
    path = write_yaml(tmp / "cfg" / "aaeventd" / "config.yaml", {"websocket": {"port": 4321}})
    assert main(["check-config"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0] == f"{path}: ok"
    assert "ws://127.0.0.1:4321/" in out


# -- run -----------------------------------------------------------------------------


def test_run_with_bad_config_exits_2(tmp: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`run --config BAD` exits 2 naming the key, without starting anything."""
    path = write_yaml(
        tmp / "bad.yaml",
        {"sources": {"socket_path": str(tmp / "ev.sock")}, "journal": {"fsync": "sometimes"}},
    )
    assert main(["run", "--config", path]) == 2
    assert "journal.fsync" in capsys.readouterr().err
    assert not (tmp / "ev.sock").exists()


def test_run_with_missing_config_exits_2(tmp: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`run --config MISSING` exits 2."""
    assert main(["run", "--config", str(tmp / "missing.yaml")]) == 2
    assert "missing.yaml" in capsys.readouterr().err


# -- emit ----------------------------------------------------------------------------


def test_emit_prints_the_accepted_seq(
    daemon: ThreadedDaemon, capsys: pytest.CaptureFixture[str]
) -> None:
    """`emit TYPE k=v` exits 0 and prints the seq the daemon acked."""
    assert main(["emit", "--socket", daemon.sock, "skill_started", "skill_name=a"]) == 0
    assert main(["emit", "--socket", daemon.sock, "skill_started", "skill_name=b"]) == 0
    assert capsys.readouterr().out == ("accepted seq=1 delivered=0\naccepted seq=2 delivered=0\n")


def test_emit_quiet_prints_nothing(
    daemon: ThreadedDaemon, capsys: pytest.CaptureFixture[str]
) -> None:
    """`emit -q` exits 0 and prints nothing; the event still gets a seq."""
    assert main(["emit", "-q", "--socket", daemon.sock, "tick"]) == 0
    assert capsys.readouterr().out == ""
    assert emit_all(daemon, {"type": "tick"}) == [2]


def test_emit_values_are_json_else_strings(
    daemon: ThreadedDaemon, capsys: pytest.CaptureFixture[str]
) -> None:
    """KEY=VALUE: JSON values keep their JSON type, anything else is a string."""
    with ws_client(daemon) as ws:
        code = main(
            [
                "emit",
                "--socket",
                daemon.sock,
                "skill_started",
                "skill_name=build it",
                "total_steps=3",
                "dry_run=true",
                "ratio=0.5",
                'inputs={"a": 1, "b": [1, "x"]}',
                "nothing=null",
                'quoted="3"',
                "text=hello",
                "eq=a=b",
                "empty=",
            ]
        )
        assert code == 0
        assert capsys.readouterr().out == "accepted seq=1 delivered=1\n"
        event = recv_event(ws)
    assert event == {
        "type": "skill_started",
        "skill_name": "build it",
        "total_steps": 3,
        "dry_run": True,
        "ratio": 0.5,
        "inputs": {"a": 1, "b": [1, "x"]},
        "nothing": None,
        "quoted": "3",
        "text": "hello",
        "eq": "a=b",
        "empty": "",
        "seq": 1,
        "timestamp": event["timestamp"],
    }
    assert list(event)[:3] == ["type", "skill_name", "total_steps"]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", event["timestamp"])


def test_emit_non_strict_json_values_stay_strings(
    daemon: ThreadedDaemon, capsys: pytest.CaptureFixture[str]
) -> None:
    """NaN, Infinity and 1e999 are not strict JSON: sent as strings, not refused."""
    with ws_client(daemon) as ws:
        argv = ["emit", "--socket", daemon.sock, "tick", "a=NaN", "b=-Infinity", "c=1e999"]
        assert main(argv) == 0
        assert capsys.readouterr().out == "accepted seq=1 delivered=1\n"
        event = recv_event(ws)
    assert (event["a"], event["b"], event["c"]) == ("NaN", "-Infinity", "1e999")


def test_emit_json_object(daemon: ThreadedDaemon, capsys: pytest.CaptureFixture[str]) -> None:
    """`emit --json OBJ` sends the object as is."""
    with ws_client(daemon) as ws:
        argv = [
            "emit",
            "--socket",
            daemon.sock,
            "--json",
            '{"type":"persona_changed","persona":"x"}',
        ]
        assert main(argv) == 0
        assert capsys.readouterr().out == "accepted seq=1 delivered=1\n"
        event = recv_event(ws)
    assert {k: v for k, v in event.items() if k != "timestamp"} == {
        "type": "persona_changed",
        "persona": "x",
        "seq": 1,
    }


def test_emit_confirmation_prints_its_id(
    daemon: ThreadedDaemon, capsys: pytest.CaptureFixture[str]
) -> None:
    """A confirmation_required ack carries the id, and emit prints it."""
    with ws_client(daemon) as ws:
        argv = ["emit", "--socket", daemon.sock, "confirmation_required", "message=ok?"]
        assert main(argv) == 0
        event = recv_event(ws)
    assert event["type"] == "confirmation_required"
    assert capsys.readouterr().out == f"accepted seq=1 delivered=1 id={event['id']}\n"


def test_emit_stdin_ndjson_reports_bad_lines_and_sends_the_rest(
    daemon: ThreadedDaemon, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`emit -`: every good line is accepted; bad ones are reported by line; exit 1."""
    data = (
        b'{"type":"skill_started","skill_name":"one"}\n'
        b"not json\n"
        b"\n"
        b'{"type":"tick","n":2}\r\n'
        b'{"type":"step_started","step_name":"x","skill_name":"one"}\n'
        b'{"type":"tick","n":3}'
    )
    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(data)))
    with ws_client(daemon) as ws:
        assert main(["emit", "--socket", daemon.sock, "-"]) == 1
        received = [recv_event(ws) for _ in range(3)]
    captured = capsys.readouterr()
    assert captured.out == (
        "accepted seq=1 delivered=1\naccepted seq=2 delivered=1\naccepted seq=3 delivered=1\n"
    )
    assert "stdin line 2: rejected (invalid_json)" in captured.err
    assert "stdin line 5: rejected (invalid_event)" in captured.err
    assert "step_index" in captured.err
    assert [(e["seq"], e["type"]) for e in received] == [
        (1, "skill_started"),
        (2, "tick"),
        (3, "tick"),
    ]
    assert [e.get("n") for e in received] == [None, 2, 3]


def test_emit_stdin_all_good_exits_0(
    daemon: ThreadedDaemon, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`emit -` with only good lines exits 0, one ack line each."""
    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(b'{"type":"a"}\n{"type":"b"}\n')))
    assert main(["emit", "--socket", daemon.sock, "-"]) == 0
    assert capsys.readouterr().out == "accepted seq=1 delivered=0\naccepted seq=2 delivered=0\n"


def test_emit_rejected_event_exits_1_with_code_and_field(
    daemon: ThreadedDaemon, capsys: pytest.CaptureFixture[str]
) -> None:
    """A rejected event: exit 1, stderr has the code and the field; no client sees it."""
    with ws_client(daemon) as ws:
        assert main(["emit", "--socket", daemon.sock, "step_started", "step_name=x"]) == 1
        captured = capsys.readouterr()
        assert captured.out == ""
        assert "invalid_event" in captured.err
        assert "step_index" in captured.err
        # Barrier: the next event is the next frame, and it gets seq 1.
        assert emit_all(daemon, {"type": "tick"}) == [1]
        event = recv_event(ws)
    assert (event["type"], event["seq"]) == ("tick", 1)


def test_emit_lists_every_validation_problem(
    daemon: ThreadedDaemon, capsys: pytest.CaptureFixture[str]
) -> None:
    """Each invalid field of a rejected event is named on stderr."""
    argv = ["emit", "--socket", daemon.sock, "step_started", "step_name=x", 'step_index="3"']
    assert main([*argv, "skill_name=s", "total_steps=-1"]) == 1
    err = capsys.readouterr().err
    assert "step_index" in err
    assert "total_steps" in err


def test_emit_without_daemon_exits_1(tmp: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """No daemon on the socket: exit 1 with a message naming the socket."""
    missing = str(tmp / "nobody.sock")
    assert main(["emit", "--socket", missing, "tick"]) == 1
    err = capsys.readouterr().err
    assert f"cannot connect to {missing}" in err
    assert "is aaeventd running?" in err


def test_emit_uses_the_socket_of_config(
    daemon: ThreadedDaemon, tmp: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`emit --config PATH` sends to that config's sources.socket_path."""
    path = write_yaml(tmp / "c.yaml", {"sources": {"socket_path": daemon.sock}})
    assert main(["emit", "--config", path, "tick"]) == 0
    assert capsys.readouterr().out == "accepted seq=1 delivered=0\n"


def test_emit_socket_option_wins_over_config(
    daemon: ThreadedDaemon, tmp: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`--socket` beats the config's socket path."""
    path = write_yaml(tmp / "c.yaml", {"sources": {"socket_path": str(tmp / "other.sock")}})
    assert main(["emit", "--config", path, "--socket", daemon.sock, "tick"]) == 0
    assert capsys.readouterr().out == "accepted seq=1 delivered=0\n"


def test_emit_with_bad_config_exits_2(tmp: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`emit --config BAD` exits 2 naming the key."""
    path = write_yaml(tmp / "c.yaml", {"sources": {"socket_pathh": "/x"}})
    assert main(["emit", "--config", path, "tick"]) == 2
    assert "sources.socket_pathh" in capsys.readouterr().err


def test_emit_default_socket_ignores_runtime_directory(
    tmp: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """With no config, emit finds $XDG_RUNTIME_DIR/aaeventd/events.sock even when the
    calling unit has its own $RUNTIME_DIRECTORY."""
    monkeypatch.setenv("RUNTIME_DIRECTORY", str(tmp / "other-unit"))
    sock = tmp / "run" / "aaeventd" / "events.sock"
    with daemon_thread(ThreadedDaemon(make_config(tmp, sources={"socket_path": str(sock)}))) as d:
        assert d.sock == str(sock)
        assert main(["emit", "tick"]) == 0
    assert capsys.readouterr().out == "accepted seq=1 delivered=0\n"


def test_emit_reads_aaeventd_config(
    daemon: ThreadedDaemon,
    tmp: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Without --config, emit reads $AAEVENTD_CONFIG."""
    monkeypatch.setenv(
        "AAEVENTD_CONFIG", write_yaml(tmp / "c.yaml", {"sources": {"socket_path": daemon.sock}})
    )
    assert main(["emit", "tick"]) == 0
    assert capsys.readouterr().out == "accepted seq=1 delivered=0\n"


# -- watch ---------------------------------------------------------------------------


def test_watch_json_prints_the_broadcast_events(
    daemon: ThreadedDaemon, tmp: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`watch --count N --json` prints N raw JSON lines equal to what a client receives."""
    path = write_yaml(tmp / "c.yaml", {"websocket": {"port": daemon.ws_port}})
    with ws_client(daemon) as ws:
        daemon.wait_for_client()
        watch = BackgroundMain(["watch", "--config", path, "--count", "3", "--json"]).start()
        daemon.wait_for_client()
        events: list[dict[str, Any]] = [
            {"type": "skill_started", "skill_name": "s", "inputs": {"k": [1, 2]}},
            {"type": "tick", "text": "héllo"},
            {"type": "skill_completed", "skill_name": "s"},
        ]
        assert emit_all(daemon, *events) == [1, 2, 3]
        broadcast = [recv_event(ws) for _ in events]
        assert watch.exit_code() == 0
    lines = capsys.readouterr().out.splitlines()
    assert [json.loads(line) for line in lines] == broadcast
    assert [e["seq"] for e in broadcast] == [1, 2, 3]


def test_watch_types_filters(daemon: ThreadedDaemon, capsys: pytest.CaptureFixture[str]) -> None:
    """`watch --types 'skill_*'` prints only matching events."""
    watch = BackgroundMain(
        ["watch", "--url", daemon.url, "--types", "skill_*", "--count", "2", "--json"]
    ).start()
    daemon.wait_for_client()
    emit_all(
        daemon,
        {"type": "persona_changed", "persona": "p"},
        {"type": "skill_started", "skill_name": "s"},
        {"type": "heal_started"},
        {"type": "skill_failed", "skill_name": "s"},
    )
    assert watch.exit_code() == 0
    printed = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [(e["seq"], e["type"]) for e in printed] == [(2, "skill_started"), (4, "skill_failed")]


def test_watch_human_format(daemon: ThreadedDaemon, capsys: pytest.CaptureFixture[str]) -> None:
    """Without --json: one line with seq, time, type and the other fields."""
    watch = BackgroundMain(["watch", "--url", daemon.url, "--count", "1"]).start()
    daemon.wait_for_client()
    emit_all(daemon, {"type": "skill_started", "skill_name": "start_work", "total_steps": 5})
    assert watch.exit_code() == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 1
    assert re.fullmatch(
        r"\s+1 \d\d:\d\d:\d\d\.\d{3} skill_started skill_name=start_work total_steps=5", lines[0]
    ), lines[0]


def test_watch_since_replays(daemon: ThreadedDaemon, capsys: pytest.CaptureFixture[str]) -> None:
    """`watch --since N` first prints the events after N that were sent before it ran."""
    emit_all(daemon, {"type": "a"}, {"type": "b"}, {"type": "c"})
    argv = ["watch", "--url", daemon.url, "--since", "1", "--count", "2", "--json"]
    assert BackgroundMain(argv).start().exit_code() == 0
    printed = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [(e["seq"], e["type"]) for e in printed] == [(2, "b"), (3, "c")]


def test_watch_sends_the_configured_token(tmp: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """With auth.token_file in the config, watch authenticates with that token."""
    token_file = str(tmp / "token")
    with daemon_thread(ThreadedDaemon(make_config(tmp, auth={"token_file": token_file}))) as d:
        path = write_yaml(
            tmp / "c.yaml",
            {"websocket": {"port": d.ws_port}, "auth": {"token_file": token_file}},
        )
        watch = BackgroundMain(["watch", "--config", path, "--count", "1", "--json"]).start()
        d.wait_for_client()
        emit_all(d, {"type": "tick"})
        assert watch.exit_code() == 0
        assert json.loads(capsys.readouterr().out)["seq"] == 1
        # Without the token the daemon refuses the handshake: exit 1, the status shown.
        assert BackgroundMain(["watch", "--url", d.url, "--count", "1"]).start().exit_code() == 1
        assert "HTTP 401" in capsys.readouterr().err


def test_watch_reconnects_and_resumes_without_loss_or_duplicate(
    daemon: ThreadedDaemon, capsys: pytest.CaptureFixture[str]
) -> None:
    """When the server drops it, watch reconnects with since= and prints every event once."""
    watch = BackgroundMain(["watch", "--url", daemon.url, "--count", "3", "--json"]).start()
    daemon.wait_for_client()
    assert emit_all(daemon, {"type": "a"}) == [1]
    first, since = daemon.opened[-1]
    assert since is None
    daemon.call(first.conn.close(1012, "service restart"))
    assert emit_all(daemon, {"type": "b"}) == [2]  # sent while watch is disconnected
    daemon.wait_for_client()
    _, since = daemon.opened[-1]
    assert since in (0, 1)  # the last seq it had seen
    assert emit_all(daemon, {"type": "c"}) == [3]
    assert watch.exit_code() == 0
    captured = capsys.readouterr()
    printed = [json.loads(line) for line in captured.out.splitlines()]
    assert [(e["seq"], e["type"]) for e in printed] == [(1, "a"), (2, "b"), (3, "c")]
    assert "reconnecting" in captured.err


def test_watch_closed_port_exits_1(capsys: pytest.CaptureFixture[str]) -> None:
    """watch against a port nobody listens on exits 1 with a message."""
    with socket.socket() as holder:  # bound, never listening: connections are refused
        holder.bind(("127.0.0.1", 0))
        port = holder.getsockname()[1]
        argv = ["watch", "--url", f"ws://127.0.0.1:{port}/", "--count", "1"]
        assert BackgroundMain(argv).start().exit_code() == 1
    err = capsys.readouterr().err
    assert f"cannot connect to ws://127.0.0.1:{port}/" in err
    assert "is aaeventd running?" in err


# -- EventSource, the library behind emit --------------------------------------------


def test_event_source_messages_outlive_the_reply_timeout(daemon: ThreadedDaemon) -> None:
    """messages() keeps waiting past the connection's reply timeout: a confirmation
    answer may take longer than an ack."""
    with EventSource(daemon.sock, name="t", timeout=0.1) as source:
        ack = source.emit("confirmation_required", message="ok?", timeout_seconds=0.5, default="no")
        assert ack.id is not None
        msg = next(source.messages(timeout=TIMEOUT), None)
    assert msg == {
        "type": "confirmation_expired",
        "id": ack.id,
        "reason": "timeout",
        "response": "no",
    }


def test_event_source_messages_yield_the_answer(daemon: ThreadedDaemon) -> None:
    """A client's answer reaches the source through messages(); acks never do."""
    with ws_client(daemon) as ws, EventSource(daemon.sock, name="t") as source:
        ack = source.emit("confirmation_required", message="deploy?")
        assert recv_event(ws)["id"] == ack.id
        assert source.emit("tick").seq == 2
        ws.send(json.dumps({"type": "confirmation_response", "id": ack.id, "response": "yes"}))
        msg = next(source.messages(timeout=TIMEOUT))
    assert msg == {
        "type": "confirmation_response",
        "id": ack.id,
        "response": "yes",
        "remember": "none",
    }


def test_event_source_messages_timeout_keeps_the_connection(daemon: ThreadedDaemon) -> None:
    """messages(timeout=T) raises TimeoutError when nothing comes; sending still works."""
    with EventSource(daemon.sock, name="t") as source:
        with pytest.raises(TimeoutError):
            next(source.messages(timeout=0.05))
        assert source.emit("tick").seq == 1
