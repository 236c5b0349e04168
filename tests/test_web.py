"""Tests for HTTP on the WebSocket port (PROTOCOL §2.4, §6): aaeventd.daemon.web.

The access rules (Host, Origin, token, max_clients) and the plain GET routes are
exercised over real TCP: raw HTTP requests written by hand where exact headers
matter, the websockets client elsewhere.  ``host_is_loopback`` and
``origin_allowed`` are also tested directly.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import os
import stat
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import InvalidStatus
from websockets.typing import Origin

from aaeventd import __version__
from aaeventd.daemon.app import Daemon
from aaeventd.daemon.web import AccessSettings, host_is_loopback, origin_allowed
from tests.support import (
    TIMEOUT,
    Source,
    make_config,
    recv_json,
    run,
    running_daemon,
    short_tmpdir,
    ws_connect,
)
from tests.support import (
    private_daemon as daemon,
)

TOKEN = "s3cret-Token_value"

# -- helpers -----------------------------------------------------------------------


@dataclass(frozen=True)
class Reply:
    status: int
    headers: dict[str, str]  # lower-case names
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


async def http(
    port: int,
    path: str = "/healthz",
    *,
    host: str | None = "{host_port}",
    upgrade: bool = False,
    headers: dict[str, str] | None = None,
) -> Reply:
    """One raw HTTP/1.1 GET with exactly these headers; ``{host_port}`` is 127.0.0.1:PORT."""
    lines = [f"GET {path} HTTP/1.1"]
    if host is not None:
        lines.append("Host: " + host.format(host_port=f"127.0.0.1:{port}", port=port))
    if upgrade:
        key = base64.b64encode(os.urandom(16)).decode()
        lines += [
            "Upgrade: websocket",
            "Connection: Upgrade",
            f"Sec-WebSocket-Key: {key}",
            "Sec-WebSocket-Version: 13",
        ]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
        await writer.drain()
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), TIMEOUT)
        status_line, *header_lines = head.decode("latin-1").split("\r\n")
        status = int(status_line.split(" ")[1])
        parsed = {}
        for line in header_lines:
            if line:
                name, _, value = line.partition(":")
                parsed[name.strip().lower()] = value.strip()
        body = b""
        if status != 101:
            body = await asyncio.wait_for(
                reader.readexactly(int(parsed["content-length"])), TIMEOUT
            )
        return Reply(status, parsed, body)
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


@contextlib.asynccontextmanager
async def token_daemon(content: str = f"  {TOKEN}  \nsecond line\n") -> AsyncIterator[Daemon]:
    """A daemon whose auth.token_file holds ``content``."""
    with short_tmpdir() as tmp:
        token_file = tmp / "token"
        token_file.write_text(content)
        token_file.chmod(0o600)
        async with running_daemon(make_config(tmp, auth={"token_file": str(token_file)})) as d:
            yield d


@contextlib.asynccontextmanager
async def client(d: Daemon, query: str = "", **kwargs: Any) -> AsyncIterator[ClientConnection]:
    """A connected client whose `connected` frame has been read."""
    ws = await ws_connect(d, query, **kwargs)
    async with ws:
        assert (await recv_json(ws))["type"] == "connected"
        yield ws


async def refused_status(d: Daemon, query: str = "", **kwargs: Any) -> int:
    """The HTTP status of a refused websockets handshake (fails if it succeeds)."""
    try:
        ws = await ws_connect(d, query, **kwargs)
    except InvalidStatus as exc:
        return exc.response.status_code
    await ws.close()
    raise AssertionError("the handshake was accepted")


async def health(d: Daemon) -> dict[str, Any]:
    reply = await http(d.ws_port, "/healthz")
    assert reply.status == 200
    obj = reply.json()
    assert isinstance(obj, dict)
    return obj


@contextlib.contextmanager
def captured_logs() -> Iterator[list[logging.LogRecord]]:
    """Every record of the ``aaeventd`` loggers, at DEBUG, while the block runs."""
    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    logger = logging.getLogger("aaeventd")
    handler = Keep(logging.DEBUG)
    old_level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    try:
        yield records
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)


# -- host_is_loopback / origin_allowed (units) -------------------------------------------


@pytest.mark.parametrize(
    "host",
    [
        "localhost",
        "localhost:9876",
        "LocalHost:1",
        "127.0.0.1",
        "127.0.0.1:9876",
        "[::1]",
        "[::1]:9876",
        " localhost:9876 ",
    ],
)
def test_host_is_loopback_accepts(host: str) -> None:
    """localhost, 127.0.0.1 and [::1], with or without a port, are loopback hosts."""
    assert host_is_loopback(host) is True


@pytest.mark.parametrize(
    "host",
    [
        None,
        "",
        "evil.example",
        "localhost.evil.example",
        "127.0.0.1.nip.io",
        "localhost.evil.example:9876",
        "evil.example:9876",
        "localhost@evil.example",
        "localhost:abc",
        "localhost:9876:1",
        "127.0.0.1:80x",
        "::1",
        "[::1",
        "[::1]x",
        "[::1]:abc",
        "[::2]:9876",
        "0.0.0.0:9876",
        "127.1:9876",
    ],
)
def test_host_is_loopback_refuses(host: str | None) -> None:
    """Anything but the three loopback names (DNS rebinding) is refused."""
    assert host_is_loopback(host) is False


def _settings(port: int = 9876, origins: tuple[str, ...] | None = None) -> AccessSettings:
    settings = AccessSettings() if origins is None else AccessSettings(allowed_origins=origins)
    settings.set_port(port)
    return settings


@pytest.mark.parametrize(
    ("origin", "allowed"),
    [
        (None, True),
        ("vscode-webview://abc", True),
        ("vscode-webview://0a1b2c3d-extension", True),
        ("vscode-file://vscode-app", True),
        ("http://127.0.0.1:9876", True),
        ("http://localhost:9876", True),
        ("HTTP://LOCALHOST:9876", True),
        ("https://evil.example", False),
        ("http://evil.example:9876", False),
        ("http://localhost:1", False),
        ("http://localhost:98765", False),
        ("http://127.0.0.1:9876.evil.example", False),
        ("https://localhost:9876", False),
        ("http://localhost", False),
        ("null", False),
        ("", False),
        ("vscode-webviewx://abc", False),
    ],
)
def test_origin_allowed_defaults(origin: str | None, allowed: bool) -> None:
    """Absent, the default vscode globs and the daemon's own origins pass; others do not."""
    assert origin_allowed(origin, _settings()) is allowed


@pytest.mark.parametrize(
    ("origin", "allowed"),
    [
        ("http://app.local:3000", True),
        ("http://app.local:8080", True),
        ("http://localhost:4242", True),  # own origin, always allowed
        ("http://127.0.0.1:4242", True),
        (None, True),
        ("vscode-webview://abc", False),
        ("vscode-file://vscode-app", False),
        ("https://app.local:3000", False),
        ("http://localhost:9876", False),
    ],
)
def test_origin_allowed_configured_list_replaces_defaults(
    origin: str | None, allowed: bool
) -> None:
    """A configured allowed_origins replaces the defaults; the own origin stays allowed."""
    assert origin_allowed(origin, _settings(4242, ("http://app.local:*",))) is allowed


# -- Host over the wire (§2.4) --------------------------------------------------------


@pytest.mark.parametrize(
    "host", ["evil.example", "localhost.evil.example", "127.0.0.1.nip.io", "evil.example:{port}"]
)
def test_foreign_host_header_gets_403(host: str) -> None:
    """An upgrade or GET whose Host is not loopback gets HTTP 403 (DNS rebinding)."""

    async def body() -> None:
        async with daemon() as d:
            assert (await http(d.ws_port, "/", host=host, upgrade=True)).status == 403
            assert (await http(d.ws_port, "/healthz", host=host)).status == 403
            assert (await health(d))["clients"] == 0

    run(body())


def test_missing_host_header_gets_403() -> None:
    """A request without a Host header is refused with 403."""

    async def body() -> None:
        async with daemon() as d:
            assert (await http(d.ws_port, "/", host=None, upgrade=True)).status == 403
            assert (await http(d.ws_port, "/healthz", host=None)).status == 403

    run(body())


@pytest.mark.parametrize(
    "host", ["localhost", "localhost:{port}", "127.0.0.1:{port}", "[::1]:{port}", "127.0.0.1"]
)
def test_loopback_host_header_is_accepted(host: str) -> None:
    """A loopback Host (with or without port) gets 101 on upgrade and 200 on /healthz."""

    async def body() -> None:
        async with daemon() as d:
            reply = await http(d.ws_port, "/ws", host=host, upgrade=True)
            assert reply.status == 101
            assert reply.headers["upgrade"].lower() == "websocket"
            assert (await http(d.ws_port, "/healthz", host=host)).status == 200

    run(body())


# -- Origin over the wire (§2.4) ------------------------------------------------------


@pytest.mark.parametrize(
    ("origin", "status"),
    [
        (None, 101),
        ("vscode-webview://abc", 101),
        ("vscode-file://vscode-app", 101),
        ("http://127.0.0.1:{port}", 101),
        ("http://localhost:{port}", 101),
        ("https://evil.example", 403),
        ("http://localhost:1", 403),
        ("null", 403),
    ],
)
def test_origin_rules_on_upgrade(origin: str | None, status: int) -> None:
    """Origin absent, vscode or own is accepted; anything else gets 403."""

    async def body() -> None:
        async with daemon() as d:
            headers = {} if origin is None else {"Origin": origin.format(port=d.ws_port)}
            reply = await http(d.ws_port, "/", upgrade=True, headers=headers)
            assert reply.status == status

    run(body())


def test_foreign_origin_gets_403_on_plain_get_too() -> None:
    """The Origin rule also applies to the plain GET routes."""

    async def body() -> None:
        async with daemon() as d:
            evil = {"Origin": "https://evil.example"}
            assert (await http(d.ws_port, "/healthz", headers=evil)).status == 403
            assert (await http(d.ws_port, "/metrics", headers=evil)).status == 403

    run(body())


def test_websockets_client_with_foreign_origin_is_refused_403() -> None:
    """A real client sending a foreign Origin fails its handshake with status 403."""

    async def body() -> None:
        async with daemon() as d:
            assert await refused_status(d, origin=Origin("https://evil.example")) == 403
            async with client(d, origin=Origin(f"http://localhost:{d.ws_port}")) as ws:
                await ws.send('{"type":"heartbeat"}')
                assert await recv_json(ws) == {"type": "heartbeat_ack"}

    run(body())


@pytest.mark.parametrize(
    ("origin", "status"),
    [
        ("vscode-webview://abc", 403),
        ("vscode-file://vscode-app", 403),
        ("http://app.local:3000", 101),
        ("http://localhost:{port}", 101),
        (None, 101),
    ],
)
def test_configured_allowed_origins_replace_defaults(origin: str | None, status: int) -> None:
    """allowed_origins: ["http://app.local:*"] replaces the vscode defaults."""

    async def body() -> None:
        async with daemon(websocket={"allowed_origins": ["http://app.local:*"]}) as d:
            headers = {} if origin is None else {"Origin": origin.format(port=d.ws_port)}
            reply = await http(d.ws_port, "/", upgrade=True, headers=headers)
            assert reply.status == status

    run(body())


# -- max_clients (§2.4) ----------------------------------------------------------------


def test_max_clients_refuses_with_503_until_one_leaves() -> None:
    """With max_clients 2 the third upgrade gets 503; after one closes a new one fits."""

    async def body() -> None:
        async with daemon(websocket={"max_clients": 2}) as d, client(d):
            async with client(d):
                assert await refused_status(d) == 503
                assert await refused_status(d, path="/ws") == 503
                # Plain GETs are not clients: still served.
                assert (await health(d))["clients"] == 2
            async with asyncio.timeout(TIMEOUT):
                while (await health(d))["clients"] != 1:
                    pass  # each probe is a real HTTP round trip
            async with client(d) as ws:
                await ws.send('{"type":"heartbeat"}')
                assert await recv_json(ws) == {"type": "heartbeat_ack"}
                assert (await health(d))["clients"] == 2
                assert await refused_status(d) == 503

    run(body())


# -- token (§2.4) ----------------------------------------------------------------------


def test_token_required_for_upgrade() -> None:
    """With a token, an upgrade needs ?token= or Authorization: Bearer, else 401."""

    async def body() -> None:
        async with token_daemon() as d:
            assert await refused_status(d) == 401
            assert await refused_status(d, "token=wrong") == 401
            assert await refused_status(d, f"token={TOKEN}x") == 401
            assert await refused_status(d, "token=") == 401
            for headers in (
                {"Authorization": "Bearer wrong"},
                {"Authorization": f"Basic {TOKEN}"},
                {"Authorization": TOKEN},
            ):
                assert await refused_status(d, additional_headers=headers) == 401
            async with client(d, f"token={TOKEN}"):
                pass
            async with client(d, f"types=skill_*&token={TOKEN}", path="/ws"):
                pass
            async with client(d, additional_headers={"Authorization": f"Bearer {TOKEN}"}):
                pass
            async with client(d, additional_headers={"Authorization": f"bearer {TOKEN}"}):
                pass

    run(body())


def test_token_on_http_routes() -> None:
    """With a token, GET /healthz is open but /metrics and /clients need it (401)."""

    async def body() -> None:
        async with token_daemon() as d:
            port = d.ws_port
            assert (await http(port, "/healthz")).status == 200
            assert (await http(port, "/metrics")).status == 401
            assert (await http(port, "/clients")).status == 401
            assert (await http(port, "/metrics?token=nope")).status == 401
            assert (await http(port, f"/metrics?token={TOKEN}")).status == 200
            bearer = {"Authorization": f"Bearer {TOKEN}"}
            assert (await http(port, "/clients", headers=bearer)).status == 200
            # An upgrade on /healthz is not the open GET.
            assert (await http(port, "/healthz", upgrade=True)).status == 401
            assert (await http(port, "/", upgrade=True)).status == 401
            assert (await http(port, f"/?token={TOKEN}", upgrade=True)).status == 101

    run(body())


def test_allow_remote_turns_the_host_check_off_and_the_token_guards() -> None:
    """With allow_remote: true any Host is accepted, but only with the token."""

    async def body() -> None:
        with short_tmpdir() as tmp:
            token_file = tmp / "token"
            token_file.write_text(TOKEN + "\n")
            cfg = make_config(
                tmp, websocket={"allow_remote": True}, auth={"token_file": str(token_file)}
            )
            async with running_daemon(cfg) as d:
                port = d.ws_port
                host = "evil.example"
                assert (await http(port, "/", host=host, upgrade=True)).status == 401
                reply = await http(port, f"/?token={TOKEN}", host=host, upgrade=True)
                assert reply.status == 101
                assert (await http(port, "/healthz", host=host)).status == 200
                # Origin is still checked.
                evil = {"Origin": "https://evil.example"}
                reply = await http(port, f"/?token={TOKEN}", upgrade=True, headers=evil)
                assert reply.status == 403

    run(body())


def test_token_file_created_0600_when_missing() -> None:
    """A missing auth.token_file is created 0600 with a fresh token, which is required."""

    async def body() -> None:
        with short_tmpdir() as tmp:
            token_file = tmp / "auth" / "token"
            cfg = make_config(tmp, auth={"token_file": str(token_file)})
            async with running_daemon(cfg) as d:
                assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
                token = token_file.read_text().splitlines()[0].strip()
                assert len(token) >= 16
                assert await refused_status(d) == 401
                async with client(d, f"token={token}"):
                    pass
            # A restart reads the same token back.
            async with running_daemon(cfg) as d:
                assert token_file.read_text().splitlines()[0].strip() == token
                async with client(d, additional_headers={"Authorization": f"Bearer {token}"}):
                    pass

    run(body())


def test_token_is_never_logged() -> None:
    """Neither a right nor a wrong token shows in any log record, even at DEBUG."""

    async def body() -> None:
        with captured_logs() as records:
            async with token_daemon() as d:
                async with client(d, f"token={TOKEN}"):
                    pass
                async with client(d, additional_headers={"Authorization": f"Bearer {TOKEN}"}):
                    pass
                assert await refused_status(d, "token=WrongGuess123") == 401
                assert (await http(d.ws_port, f"/metrics?token={TOKEN}")).status == 200
        text = "\n".join(r.getMessage() for r in records)
        assert "GET /" in text  # the debug log was on
        assert TOKEN not in text
        assert "WrongGuess123" not in text

    run(body())


# -- GET routes (§6) ---------------------------------------------------------------------


def test_healthz_reports_state() -> None:
    """/healthz is JSON with status, version, uptime, epoch, seq, counts, port, socket."""

    async def body() -> None:
        async with daemon() as d, client(d):
            src = await Source.connect(d.socket_path, hello={"type": "hello", "acks": True})
            async with src:
                for event in (
                    {"type": "tick"},
                    {"type": "tick"},
                    {"type": "confirmation_required", "message": "Go?"},
                ):
                    await src.send(event)
                    assert (await src.recv())["type"] == "ack"
                reply = await http(d.ws_port, "/healthz")
                assert reply.status == 200
                assert reply.headers["content-type"].startswith("application/json")
                obj = reply.json()
                uptime = obj["uptime_seconds"]
                assert isinstance(uptime, int | float)
                assert uptime >= 0
                assert obj["status"] == "ok"
                assert obj["version"] == __version__
                assert obj["epoch"] == d.hub.epoch
                assert obj["seq"] == 3
                assert obj["clients"] == 1
                assert obj["sources"] == 1
                assert obj["pending_confirmations"] == 1
                assert obj["port"] == d.ws_port
                assert obj["socket_path"] == d.config.sources.socket_path
                assert stat.S_ISSOCK(os.stat(obj["socket_path"]).st_mode)

    run(body())


def test_metrics_exposition() -> None:
    """/metrics is Prometheus text with HELP/TYPE lines and aaeventd_-prefixed samples."""

    async def body() -> None:
        async with daemon() as d, client(d):
            src = await Source.connect(d.socket_path, hello={"type": "hello", "acks": True})
            async with src:
                for event in ({"type": "tick"}, {"type": "tock"}):
                    await src.send(event)
                    assert (await src.recv())["type"] == "ack"
                await src.send_raw(b"{oops\n")
                assert (await src.recv())["code"] == "invalid_json"
                reply = await http(d.ws_port, "/metrics")
        assert reply.status == 200
        assert reply.headers["content-type"].startswith("text/plain")
        lines = reply.body.decode().splitlines()
        assert "# TYPE aaeventd_events_in_total counter" in lines
        assert any(line.startswith("# HELP aaeventd_events_in_total ") for line in lines)
        assert "aaeventd_events_in_total 2" in lines
        assert 'aaeventd_events_out_total{type="tick"} 1' in lines
        assert 'aaeventd_events_rejected_total{code="invalid_json"} 1' in lines
        assert "aaeventd_clients 1" in lines
        assert "aaeventd_sources 1" in lines
        assert "aaeventd_dropped_replies_total 0" in lines
        assert "aaeventd_slow_client_disconnects_total 0" in lines
        journal = [line for line in lines if line.startswith("aaeventd_journal_bytes_total ")]
        assert len(journal) == 1
        assert int(journal[0].split()[1]) > 0
        for line in lines:
            assert line.startswith(("# HELP aaeventd_", "# TYPE aaeventd_", "aaeventd_")), line

    run(body())


def test_clients_lists_clients_and_sources() -> None:
    """/clients shows a client's id, address, user agent and filter, and a source's pid."""

    async def body() -> None:
        async with (
            daemon() as d,
            client(d, "types=skill_*,heal_*", user_agent_header="web-tests/1.0"),
        ):
            src = await Source.connect(d.socket_path, hello={"type": "hello", "name": "tester"})
            async with src:
                reply = await http(d.ws_port, "/clients")
                assert reply.status == 200
                assert reply.headers["content-type"].startswith("application/json")
                view = reply.json()
                [cli] = view["clients"]
                assert cli["id"] == next(iter(d.ws.sessions))
                assert cli["address"] == "127.0.0.1"
                assert cli["user_agent"] == "web-tests/1.0"
                assert cli["filter"] == ["skill_*", "heal_*"]
                assert isinstance(cli["connected_since"], str)
                assert cli["frames_sent"] == 1  # the connected frame
                assert cli["backlog_bytes"] == 0
                [source] = view["sources"]
                assert source["pid"] == os.getpid()
                assert source["uid"] == os.getuid()
                assert source["name"] == "tester"
                assert source["executable"] == os.readlink("/proc/self/exe")
                assert source["events_accepted"] == 0
                assert source["errors"] == 0
                assert source["dropped_replies"] == 0

    run(body())


@pytest.mark.parametrize("path", ["/nope", "/healthz/x", "/static/missing.js", "/ws/x"])
def test_unknown_path_gets_404(path: str) -> None:
    """A plain GET of an unknown path is 404."""

    async def body() -> None:
        async with daemon() as d:
            assert (await http(d.ws_port, path)).status == 404

    run(body())


@pytest.mark.parametrize("path", ["/other", "/healthz", "/ws/"])
def test_upgrade_on_other_path_gets_404(path: str) -> None:
    """WebSocket upgrades are only served on / and /ws; elsewhere 404."""

    async def body() -> None:
        async with daemon() as d:
            assert (await http(d.ws_port, path, upgrade=True)).status == 404
            assert await refused_status(d, path=path) == 404
            assert (await health(d))["clients"] == 0

    run(body())


@pytest.mark.parametrize(("since", "status"), [("abc", 400), ("-1", 400), ("1.5", 400), ("7", 101)])
def test_since_must_be_a_non_negative_integer(since: str, status: int) -> None:
    """A since= that is not a non-negative integer is refused with 400."""

    async def body() -> None:
        async with daemon() as d:
            reply = await http(d.ws_port, f"/?since={since}", upgrade=True)
            assert reply.status == status

    run(body())
