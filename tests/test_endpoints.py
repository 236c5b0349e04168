"""aaeventd.endpoints: where a program finds the daemon, for the daemon, CLI and library.

The socket rule is checked as a table, then through its users: the config's
resolution, the source library's vendorable copy, and ``aaeventd emit`` reaching a
real daemon named only by ``$AAEVENTD_SOCKET``.  The URL builder is checked as a
table, then through ``watch`` and ``confirm`` given the ``http://`` link that
``status`` and ``ui`` accept.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from aaeventd import client
from aaeventd.cli import main
from aaeventd.client import EventSource
from aaeventd.config import parse_config, resolve_socket_path
from aaeventd.endpoints import http_base, socket_path, websocket_url
from tests.support import TIMEOUT, ThreadedDaemon, daemon_thread, make_config

pytestmark = pytest.mark.usefixtures("private_env")

SYSTEMD = {"RUNTIME_DIRECTORY": "/run/u", "XDG_RUNTIME_DIR": "/x"}
TMP_DEFAULT = Path(f"/tmp/aaeventd-{os.getuid()}/events.sock")
ENVS: list[dict[str, str]] = [
    {},
    {"AAEVENTD_SOCKET": "/s/named.sock"},
    {"AAEVENTD_SOCKET": "relative.sock", "XDG_RUNTIME_DIR": "/run/user/7"},
    {"AAEVENTD_SOCKET": "", "XDG_RUNTIME_DIR": "/run/user/7"},
    {"RUNTIME_DIRECTORY": "/run/user/7/aaeventd:/other", "XDG_RUNTIME_DIR": "/run/user/7"},
    {"RUNTIME_DIRECTORY": "/run/unit", "AAEVENTD_SOCKET": "/s/named.sock"},
    {"XDG_RUNTIME_DIR": "relative"},
    {"XDG_RUNTIME_DIR": ""},
    {"XDG_RUNTIME_DIR": "/run/a:/run/b"},
]


# -- the socket ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("env", "connecting", "configured", "expected"),
    [
        ({"AAEVENTD_SOCKET": "/s/n.sock"}, True, None, Path("/s/n.sock")),
        ({"AAEVENTD_SOCKET": "/s/n.sock"}, True, Path("/c.sock"), Path("/s/n.sock")),
        ({"AAEVENTD_SOCKET": "/s/n.sock"}, False, None, TMP_DEFAULT),
        ({"AAEVENTD_SOCKET": "/s/n.sock"}, False, Path("/c.sock"), Path("/c.sock")),
        (SYSTEMD, True, Path("/c"), Path("/c")),
        (SYSTEMD, False, None, Path("/run/u/events.sock")),
        (SYSTEMD, True, None, Path("/x/aaeventd/events.sock")),
        ({"XDG_RUNTIME_DIR": "/x"}, False, None, Path("/x/aaeventd/events.sock")),
        ({"XDG_RUNTIME_DIR": "x"}, True, None, TMP_DEFAULT),
        ({}, False, None, TMP_DEFAULT),
    ],
)
def test_socket_path_order(
    env: dict[str, str], connecting: bool, configured: Path | None, expected: Path
) -> None:
    """$AAEVENTD_SOCKET (connecting), configured, $RUNTIME_DIRECTORY (daemon), XDG, /tmp."""
    assert socket_path(env, connecting=connecting, configured=configured) == expected


@pytest.mark.parametrize("env", ENVS)
def test_client_copy_is_the_shared_socket_rule(env: dict[str, str]) -> None:
    """The source library's vendorable default_socket_path() is the rule for programs
    that connect, in every environment of the table."""
    got = client.default_socket_path(env)
    assert got == socket_path(env, connecting=True), f"client says {got}"


@pytest.mark.parametrize("env", ENVS)
def test_config_resolution_is_the_shared_socket_rule(env: dict[str, str]) -> None:
    """resolve_socket_path() is the same rule, for the daemon and for `aaeventd emit`."""
    defaults = parse_config({})
    configured = parse_config({"sources": {"socket_path": "/c/ev.sock"}})
    for connecting in (False, True):
        assert resolve_socket_path(defaults, env, connecting=connecting) == socket_path(
            env, connecting=connecting
        )
        assert resolve_socket_path(configured, env, connecting=connecting) == socket_path(
            env, connecting=connecting, configured=Path("/c/ev.sock")
        )


def test_library_default_reaches_the_daemon_named_by_aaeventd_socket(
    tmp: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """EventSource() with no path sends to the socket $AAEVENTD_SOCKET names."""
    with daemon_thread(ThreadedDaemon(make_config(tmp), env={})) as d:
        monkeypatch.setenv("AAEVENTD_SOCKET", str(d.socket_path))
        with EventSource(name="t", timeout=TIMEOUT, reconnect=False) as src:
            ack = src.emit("tick")
    assert ack is not None
    assert ack.seq == 1, f"ack {ack}"


def test_emit_honours_aaeventd_socket(
    tmp: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`aaeventd emit` with no --socket sends to $AAEVENTD_SOCKET (PROTOCOL §1), even
    when the config names another socket."""
    config = tmp / "c.json"
    config.write_text(json.dumps({"sources": {"socket_path": str(tmp / "nobody.sock")}}))
    monkeypatch.setenv("AAEVENTD_CONFIG", str(config))
    with daemon_thread(ThreadedDaemon(make_config(tmp), env={})) as d:
        assert d.socket_path != tmp / "run" / "aaeventd" / "events.sock"  # not the default
        monkeypatch.setenv("AAEVENTD_SOCKET", str(d.socket_path))
        code = main(["emit", "tick"])
    captured = capsys.readouterr()
    assert (code, captured.out) == (0, "accepted seq=1 delivered=0\n"), captured.err


# -- the URLs ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "kwargs", "expected"),
    [
        ("http://127.0.0.1:9876/", {}, "ws://127.0.0.1:9876/"),
        ("https://h:1", {}, "wss://h:1/"),
        ("ws://h:1/ws", {"types": "skill_*"}, "ws://h:1/ws?types=skill_%2A"),
        ("WSS://h:1/", {"since": 4, "epoch": "e"}, "wss://h:1/?since=4&epoch=e"),
        ("http://[::1]:1/?token=T", {"since": 0}, "ws://[::1]:1/?token=T&since=0"),
        ("http://h:1/?token=T", {"token": "U"}, "ws://h:1/?token=U"),
        ("http://h:1/?token=a%26b", {}, "ws://h:1/?token=a%26b"),
    ],
)
def test_websocket_url(url: str, kwargs: dict[str, object], expected: str) -> None:
    """http(s) and ws(s) bases give the stream URL; the base's query is kept."""
    assert websocket_url(url, **kwargs) == expected  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("ws://h:1/x?token=T", "http://h:1/"),
        ("wss://h:1", "https://h:1/"),
        ("http://127.0.0.1:9876/", "http://127.0.0.1:9876/"),
    ],
)
def test_http_base(url: str, expected: str) -> None:
    """Any of the four schemes gives the daemon's http(s)://HOST:PORT/."""
    assert http_base(url) == expected


@pytest.mark.parametrize("url", ["ftp://h:1/", "127.0.0.1:9876", "http://", "http://h:x/", ""])
def test_bad_addresses_raise_value_error(url: str) -> None:
    """Not an http(s)/ws(s) URL with a host and a numeric port: ValueError."""
    with pytest.raises(ValueError, match=r"(expected a daemon address|bad port)"):
        websocket_url(url)
    with pytest.raises(ValueError, match=r"(expected a daemon address|bad port)"):
        http_base(url)


def test_watch_and_confirm_accept_the_http_link(
    tmp: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`watch --url` and `confirm --url` take the http://...?token= link `aaeventd ui`
    prints (as status/clients/ui do), not only ws://."""
    token_file = tmp / "token"
    config = make_config(tmp, auth={"token_file": str(token_file)})
    with daemon_thread(ThreadedDaemon(config, env={})) as d:
        link = f"http://127.0.0.1:{d.ws_port}/?token={token_file.read_text().strip()}"
        with EventSource(d.socket_path, name="t", timeout=TIMEOUT) as src:
            src.emit("tick", n=1)
        watch = main(["watch", "--url", link, "--since", "0", "--count", "1", "--json"])
        watched = capsys.readouterr()
        confirm = main(["confirm", "--url", link])
        confirmed = capsys.readouterr()
    assert watch == 0, watched.err
    event = json.loads(watched.out)
    assert (event["type"], event["seq"], event["n"]) == ("tick", 1, 1), watched.out
    assert (confirm, confirmed.out) == (0, "no pending confirmations\n"), confirmed.err


@pytest.mark.parametrize("command", ["watch", "confirm", "status"])
def test_bad_url_exits_2_for_every_command(
    command: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """A --url that is not http(s)/ws(s)://HOST:PORT exits 2 with one message, no traceback."""
    assert main([command, "--url", "ftp://127.0.0.1:1/"]) == 2
    assert "--url must look like http://127.0.0.1:9876/" in capsys.readouterr().err
