"""Security: who may reach the daemon, and what abuse it survives (docs/security.md).

Covers what test_ingest, test_web, test_wsserver, test_config, test_cli, test_framer,
test_codec and test_events do not already: a source of another uid (run as
``nobody``), file modes under umask 0, the socket directory's owner, the token's
strength and creation, duplicated headers, the handshake timeout, floods of lines,
connections and garbage frames, clients that never read, property tests over the
whole source and client pipelines, and a random-garbage soak against the real daemon
as a subprocess.

Everything uses real sockets; waits have deadlines; nothing sleeps.
"""

from __future__ import annotations

import ast
import asyncio
import base64
import contextlib
import inspect
import json
import logging
import os
import random
import re
import socket
import stat
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from websockets.asyncio.client import ClientConnection, connect

from aaeventd import cli
from aaeventd.config import WebSocketConfig
from aaeventd.daemon import web
from aaeventd.daemon.app import Daemon
from aaeventd.errors import ConfigError, StartupError
from aaeventd.protocol.codec import decode_client_message, decode_object
from aaeventd.protocol.errors import ErrorCode, ProtocolError
from aaeventd.protocol.events import parse_client_message, validate_event
from aaeventd.protocol.framer import LineFramer, TooLong
from aaeventd.tokens import load_or_create_token
from tests.support import (
    FACTOR,
    IS_ROOT,
    TIMEOUT,
    Source,
    daemon_process,
    make_config,
    needs_root,
    other_user,
    recv_json,
    recv_until,
    run,
    run_script_as_other_user,
    running_daemon,
    short_tmpdir,
    ws_connect,
)
from tests.support import (
    private_daemon as daemon,
)

HELLO_ACKS: dict[str, Any] = {"type": "hello", "name": "security-test", "acks": True}
# Promptly: well under the generic deadline, even on a loaded machine.
PROMPT = 3.0 * FACTOR
# What a bounded abuse may add to the daemon's resident memory.
RSS_BOUND = 50 << 20

SOURCE_CODES = frozenset(
    {
        "invalid_json",
        "invalid_utf8",
        "not_an_object",
        "missing_type",
        "invalid_type_name",
        "invalid_event",
        "unknown_type",
        "reserved_type",
        "line_too_long",
        "duplicate_confirmation",
    }
)
CLIENT_CODES = frozenset(
    {
        "invalid_json",
        "not_an_object",
        "unknown_message",
        "unknown_confirmation",
        "invalid_response",
        "message_too_big",
    }
)


# -- helpers ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Logged:
    logger: str
    level: int
    message: str


class _Keep(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.logged: list[Logged] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.logged.append(Logged(record.name, record.levelno, record.getMessage()))


@contextlib.contextmanager
def capture_logs(level: int = logging.INFO) -> Iterator[list[Logged]]:
    """Every record of the ``aaeventd`` loggers at ``level`` and above, as text."""
    logger = logging.getLogger("aaeventd")
    handler = _Keep()
    old_level = logger.level
    logger.addHandler(handler)
    logger.setLevel(level)
    try:
        yield handler.logged
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)


@contextlib.contextmanager
def quiet(*names: str) -> Iterator[None]:
    """Raise these loggers to ERROR while a flood runs (thousands of WARNINGs are slow)."""
    loggers = [logging.getLogger(name) for name in names]
    old = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for logger, level in zip(loggers, old, strict=True):
            logger.setLevel(level)


@contextlib.contextmanager
def logging_restored() -> Iterator[None]:
    """Undo what a reload's ``configure_logging`` does to the process-wide loggers."""
    loggers = [logging.getLogger("aaeventd"), logging.getLogger("aaeventd.websockets")]
    saved = [(lg.level, lg.propagate, list(lg.handlers)) for lg in loggers]
    try:
        yield
    finally:
        for logger, (level, propagate, handlers) in zip(loggers, saved, strict=True):
            logger.setLevel(level)
            logger.propagate = propagate
            logger.handlers[:] = handlers


@contextlib.asynccontextmanager
async def client(d: Daemon, query: str = "", **kwargs: Any) -> AsyncIterator[ClientConnection]:
    """A WebSocket client whose ``connected`` frame has been read (so it is registered)."""
    ws = await ws_connect(d, query, **kwargs)
    async with ws:
        first = await recv_json(ws)
        assert first["type"] == "connected", first
        yield ws


def sock_path(d: Daemon) -> Path:
    assert d.socket_path is not None
    return d.socket_path


def rss_bytes(pid: int | str = "self") -> int:
    """Resident set size of a process (``self``: the in-process daemon's)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS in /proc/{pid}/status")


async def close_writer(writer: asyncio.StreamWriter) -> None:
    writer.close()
    with contextlib.suppress(ConnectionError):
        await writer.wait_closed()


@dataclass(frozen=True)
class Reply:
    status: int
    headers: dict[str, str]  # lower-case names
    body: bytes


async def http_get(port: int, path: str = "/healthz", headers: list[str] | None = None) -> Reply:
    """One raw HTTP/1.1 GET with a loopback Host and exactly the extra header lines given."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        lines = [f"GET {path} HTTP/1.1", f"Host: 127.0.0.1:{port}", *(headers or [])]
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), TIMEOUT)
        status_line, *header_lines = head.decode("latin-1").split("\r\n")
        parsed: dict[str, str] = {}
        for line in header_lines:
            if line:
                name, _, value = line.partition(":")
                parsed[name.strip().lower()] = value.strip()
        body = b""
        if "content-length" in parsed:
            body = await asyncio.wait_for(
                reader.readexactly(int(parsed["content-length"])), TIMEOUT
            )
        return Reply(int(status_line.split(" ")[1]), parsed, body)
    finally:
        await close_writer(writer)


async def health(port: int) -> dict[str, Any]:
    reply = await http_get(port)
    assert reply.status == 200, reply
    obj = json.loads(reply.body)
    assert isinstance(obj, dict)
    return obj


async def health_until(port: int, **expected: int) -> dict[str, Any]:
    """/healthz once it reports ``expected`` (each probe is a real HTTP round trip)."""
    async with asyncio.timeout(TIMEOUT):
        while True:
            obj = await health(port)
            if all(obj[key] == value for key, value in expected.items()):
                return obj


def upgrade_request(port: int, *, path: str = "/", extra: list[str] | None = None) -> bytes:
    key = base64.b64encode(os.urandom(16)).decode()
    lines = [
        f"GET {path} HTTP/1.1",
        f"Host: 127.0.0.1:{port}",
        "Upgrade: websocket",
        "Connection: Upgrade",
        f"Sec-WebSocket-Key: {key}",
        "Sec-WebSocket-Version: 13",
        *(extra or []),
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


async def raw_ws(
    port: int, *, user_agent: str = "raw-test", rcvbuf: int | None = None
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A WebSocket connection by hand: the 101 and the ``connected`` frame are read."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if rcvbuf is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.setblocking(False)
    try:
        await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
    except OSError:
        sock.close()
        raise
    reader, writer = await asyncio.open_connection(sock=sock)
    writer.write(upgrade_request(port, extra=[f"User-Agent: {user_agent}"]))
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), TIMEOUT)
    assert head.startswith(b"HTTP/1.1 101 "), head
    opcode, payload = await read_frame(reader)
    assert opcode == 0x1
    assert json.loads(payload)["type"] == "connected"
    return reader, writer


def frame(
    opcode: int,
    payload: bytes,
    *,
    fin: bool = True,
    rsv: int = 0,
    masked: bool = True,
    length: int | None = None,
) -> bytes:
    """One client frame, built by hand so that it may break the rules (RFC 6455 §5.2)."""
    n = len(payload) if length is None else length
    head = bytes([(0x80 if fin else 0) | (rsv << 4) | opcode])
    mask_bit = 0x80 if masked else 0
    if n < 126:
        head += bytes([mask_bit | n])
    elif n < 1 << 16:
        head += bytes([mask_bit | 126]) + n.to_bytes(2, "big")
    else:
        head += bytes([mask_bit | 127]) + n.to_bytes(8, "big")
    if not masked:
        return head + payload
    key = os.urandom(4)
    return head + key + bytes(b ^ key[i % 4] for i, b in enumerate(payload))


async def read_frame(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    """The next server frame: (opcode, payload)."""
    b0, b1 = await asyncio.wait_for(reader.readexactly(2), TIMEOUT)
    assert not b1 & 0x80, "server frames are never masked"
    n = b1 & 0x7F
    if n == 126:
        n = int.from_bytes(await reader.readexactly(2), "big")
    elif n == 127:
        n = int.from_bytes(await reader.readexactly(8), "big")
    return b0 & 0x0F, await asyncio.wait_for(reader.readexactly(n), TIMEOUT)


async def close_code(reader: asyncio.StreamReader) -> int:
    """Skip data frames up to the server's close frame; return its code."""
    while True:
        opcode, payload = await read_frame(reader)
        if opcode == 0x8:
            return int.from_bytes(payload[:2], "big")


async def peer_closed(reader: asyncio.StreamReader, timeout: float = TIMEOUT) -> str:
    """Wait until the daemon ends the connection: ``eof`` or ``reset`` (an abort)."""
    try:
        rest = await asyncio.wait_for(reader.read(), timeout)
    except ConnectionResetError:
        return "reset"
    assert rest == b"" or rest.startswith(b"HTTP/1.1 "), rest[:200]
    return "eof"


# -- 1. Unix socket: another uid (PROTOCOL §1) -----------------------------------------

# Run as another user: connect, send a hello and an event, report what came back.
OTHER_UID_SOURCE = r"""
import json, os, socket, sys
path, wanted = sys.argv[1], int(sys.argv[2])
out = {"pid": os.getpid(), "uid": os.getuid(), "lines": [], "closed": None, "sent": True}
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.settimeout(float(sys.argv[3]))
s.connect(path)
try:
    s.sendall(b'{"type":"hello","name":"other-uid","acks":true}\n{"type":"from.other.uid"}\n')
except (BrokenPipeError, ConnectionResetError):
    out["sent"] = False  # refused (and closed) before it could send: read the refusal
f = s.makefile("rb")
try:
    while len(out["lines"]) < wanted:
        line = f.readline()
        if not line:
            out["closed"] = "eof"
            break
        out["lines"].append(json.loads(line))
except ConnectionResetError:
    out["closed"] = "reset"
f.close()
s.close()
print(json.dumps(out))
"""


async def run_as_other_user(path: Path, wanted: int) -> dict[str, Any]:
    """Run :data:`OTHER_UID_SOURCE` as ``nobody``; return its report."""
    uid, _, _ = other_user()
    report = json.loads(
        await run_script_as_other_user(OTHER_UID_SOURCE, str(path), str(wanted), str(TIMEOUT))
    )
    assert report["uid"] == uid
    return report


def expose_socket(path: Path) -> None:
    """Simulate a misconfigured filesystem: nobody can reach the socket file."""
    path.parent.chmod(0o711)
    path.chmod(0o666)


@needs_root
def test_other_uid_source_gets_forbidden_then_allowed_uids_lets_it_in() -> None:
    """Another uid gets forbidden, logged with pid/uid; listed in allowed_uids it is served."""
    assert IS_ROOT, "CI must run the suite as root: this test runs a source as nobody"
    uid, _, _ = other_user()

    async def body() -> None:
        with short_tmpdir() as tmp:
            cfg = make_config(tmp)
            with capture_logs(logging.INFO) as logged:
                async with running_daemon(cfg) as d, client(d) as ws:
                    expose_socket(sock_path(d))
                    refused = await run_as_other_user(sock_path(d), wanted=2)
                    assert len(refused["lines"]) == 1, refused
                    (line,) = refused["lines"]
                    assert set(line) == {"type", "code", "message"}, line
                    assert (line["type"], line["code"]) == ("error", "forbidden")
                    assert str(uid) in line["message"]
                    # Closed at once: Linux reports EOF, or a reset when the hello
                    # sent before the refusal was still unread.
                    assert refused["closed"] in ("eof", "reset"), refused
                    assert d.ingest.refused_forbidden == 1
                    assert d.ingest.sources == {}
                    # Its event never reached a client: the next frame is a later event.
                    async with await Source.connect(sock_path(d), hello=HELLO_ACKS) as own:
                        await own.send({"type": "own.event"})
                        assert await own.recv() == {"type": "ack", "seq": 1, "delivered": 1}
                    got = await recv_json(ws)
                    assert (got["type"], got["seq"]) == ("own.event", 1)

                    with logging_restored():  # a reload reconfigures logging
                        d.apply_config(make_config(tmp, sources={"allowed_uids": [uid]}))
                    allowed = await run_as_other_user(sock_path(d), wanted=2)
                    welcome, ack = allowed["lines"]
                    assert welcome["type"] == "welcome", allowed
                    assert ack == {"type": "ack", "seq": 2, "delivered": 1}
                    got = await recv_json(ws)
                    assert (got["type"], got["seq"]) == ("from.other.uid", 2)
                    assert d.ingest.refused_forbidden == 1
        warnings = [
            r.message
            for r in logged
            if r.logger == "aaeventd.ingest"
            and r.level == logging.WARNING
            and "refused" in r.message
        ]
        assert len(warnings) == 1, [r.message for r in logged]
        assert f"uid {uid}" in warnings[0]
        assert f"pid {refused['pid']}" in warnings[0]
        connected = [r.message for r in logged if "source connected" in r.message]
        assert f"pid={allowed['pid']} uid={uid}" in connected[-1]

    run(body())


# -- 2. file modes, whatever the umask ---------------------------------------------------


def test_socket_dir_socket_token_and_journal_modes_under_umask_0() -> None:
    """Under umask 0: socket dirs 0700, socket 0600, token 0600 in 0700 dirs, journal too."""

    async def body() -> None:
        with short_tmpdir() as tmp:
            sock = tmp / "run" / "aaeventd" / "ev.sock"
            token_file = tmp / "cfg" / "aaeventd" / "token"
            cfg = make_config(
                tmp, sources={"socket_path": str(sock)}, auth={"token_file": str(token_file)}
            )
            old = os.umask(0)
            try:
                async with running_daemon(cfg):
                    modes = {
                        p.relative_to(tmp).as_posix(): stat.S_IMODE(os.lstat(p).st_mode)
                        for p in sorted(tmp.rglob("*"))
                    }
                    assert stat.S_ISSOCK(os.lstat(sock).st_mode)
            finally:
                os.umask(old)
            journal_files = [k for k in modes if k.startswith("journal/")]
            assert journal_files, modes
            expected = {
                "run": 0o700,
                "run/aaeventd": 0o700,
                "run/aaeventd/ev.sock": 0o600,
                "cfg": 0o700,
                "cfg/aaeventd": 0o700,
                "cfg/aaeventd/token": 0o600,
                "journal": 0o700,
                **dict.fromkeys(journal_files, 0o600),
            }
            assert {k: oct(v) for k, v in modes.items()} == {k: oct(v) for k, v in expected.items()}

    run(body())


def test_world_writable_socket_directory_is_refused() -> None:
    """A socket directory anyone may write to (not sticky) is refused; a sticky one is fine."""

    async def body() -> None:
        with short_tmpdir() as tmp:
            shared = tmp / "shared"
            shared.mkdir()
            shared.chmod(0o777)
            cfg = make_config(tmp, sources={"socket_path": str(shared / "ev.sock")})
            with pytest.raises(StartupError, match="writable by every user") as info:
                async with running_daemon(cfg):
                    pass
            assert str(shared) in str(info.value)
            assert list(shared.iterdir()) == []
            shared.chmod(0o1777)  # like /tmp: others cannot remove our socket
            async with (
                running_daemon(cfg) as d,
                await Source.connect(sock_path(d), hello=HELLO_ACKS) as src,
            ):
                await src.send({"type": "sticky.ok"})
                assert await src.recv() == {"type": "ack", "seq": 1, "delivered": 0}

    run(body())


@needs_root
def test_socket_directory_owned_by_another_user_is_refused() -> None:
    """A socket directory, or a symlink naming it, owned by another uid is refused."""
    assert IS_ROOT, "CI must run the suite as root: this test chowns to nobody"
    uid, gid, _ = other_user()

    async def body() -> None:
        with short_tmpdir() as tmp:
            theirs = tmp / "theirs"
            theirs.mkdir(mode=0o700)
            os.chown(theirs, uid, gid)
            cfg = make_config(tmp, sources={"socket_path": str(theirs / "ev.sock")})
            with pytest.raises(StartupError, match=f"belongs to uid {uid}"):
                async with running_daemon(cfg):
                    pass
            assert list(theirs.iterdir()) == []
            ours = tmp / "ours"
            ours.mkdir(mode=0o700)
            link = tmp / "link"
            link.symlink_to(ours)
            os.lchown(link, uid, gid)  # they could point it elsewhere later
            cfg = make_config(tmp, sources={"socket_path": str(link / "ev.sock")})
            with pytest.raises(StartupError, match=f"belongs to uid {uid}"):
                async with running_daemon(cfg):
                    pass
            assert list(ours.iterdir()) == []

    run(body())


# -- 3. the token (PROTOCOL §2.4) -------------------------------------------------------


def test_generated_token_is_32_random_bytes_in_a_0600_file() -> None:
    """A missing token file gets 32 random bytes as 43 url-safe chars, mode 0600."""
    with short_tmpdir() as tmp:
        tokens = [load_or_create_token(tmp / name / "token") for name in ("a", "b")]
        for name, token in zip(("a", "b"), tokens, strict=True):
            assert re.fullmatch(r"[A-Za-z0-9_-]{43}", token), token
            assert len(base64.urlsafe_b64decode(token + "=")) == 32
            path = tmp / name / "token"
            assert path.read_text() == token + "\n"
            assert stat.S_IMODE(path.stat().st_mode) == 0o600
            assert load_or_create_token(path) == token  # read back, not replaced
        assert tokens[0] != tokens[1]


def test_token_compare_is_constant_time() -> None:
    """web.token_ok compares with hmac.compare_digest, and web.py never compares with ==."""
    tree = ast.parse(Path(inspect.getfile(web)).read_text())
    token_ok = next(
        n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef) and n.name == "token_ok"
    )
    calls = [ast.unparse(n.func) for n in ast.walk(token_ok) if isinstance(n, ast.Call)]
    assert "hmac.compare_digest" in calls, calls
    token_compares = [
        ast.unparse(n)
        for n in ast.walk(tree)
        if isinstance(n, ast.Compare)
        and any(isinstance(op, ast.Eq | ast.NotEq) for op in n.ops)
        and re.search(r"token|expected|got", ast.unparse(n))
    ]
    assert token_compares == []


def test_token_file_readable_by_others_warns_without_the_token() -> None:
    """An existing token file with group/other bits still works, with a warning."""
    with short_tmpdir() as tmp:
        path = tmp / "token"
        path.write_text("Shared-Token-Value-123\n")
        path.chmod(0o644)
        with capture_logs(logging.DEBUG) as logged:
            assert load_or_create_token(path) == "Shared-Token-Value-123"
        warnings = [r.message for r in logged if r.level == logging.WARNING]
        assert len(warnings) == 1, warnings
        assert "0644" in warnings[0]
        assert str(path) in warnings[0]
        assert all("Shared-Token-Value-123" not in r.message for r in logged)
        path.chmod(0o600)
        with capture_logs(logging.DEBUG) as logged:
            load_or_create_token(path)
        assert [r for r in logged if r.level >= logging.WARNING] == []


def test_token_file_that_cannot_be_created_is_a_config_error() -> None:
    """A token file below a regular file cannot be created: ConfigError on auth.token_file."""
    with short_tmpdir() as tmp:
        (tmp / "file").write_text("x")
        with pytest.raises(ConfigError) as info:
            load_or_create_token(tmp / "file" / "token")
        assert info.value.key == "auth.token_file"


@pytest.mark.parametrize(
    ("websocket", "auth", "code"),
    [
        pytest.param({"host": "0.0.0.0"}, {}, 2, id="public-no-token"),
        pytest.param(
            {"host": "0.0.0.0", "allow_remote": True}, {}, 2, id="public-allow-remote-no-token"
        ),
        pytest.param(
            {"host": "0.0.0.0", "allow_remote": True},
            {"token_file": "~/.config/aaeventd/token"},
            0,
            id="public-with-allow-remote-and-token",
        ),
    ],
)
def test_check_config_public_bind_needs_allow_remote_and_token(
    websocket: dict[str, Any],
    auth: dict[str, Any],
    code: int,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """check-config refuses a public bind (exit 2) unless allow_remote and a token are set."""
    with short_tmpdir() as tmp:
        path = tmp / "c.yaml"
        path.write_text(json.dumps({"websocket": websocket, "auth": auth}))
        assert cli.main(["check-config", str(path)]) == code
    err = capsys.readouterr().err
    assert ("websocket.host" in err) == (code == 2), err


# -- 4. HTTP hardening ------------------------------------------------------------------


@pytest.mark.parametrize("name", ["Host", "Origin", "Authorization", "Upgrade", "User-Agent"])
def test_duplicated_header_gets_400_not_a_traceback(name: str) -> None:
    """A request with two Host/Origin/Authorization/Upgrade/User-Agent headers gets 400."""
    values = {
        "Host": "127.0.0.1",
        "Origin": "vscode-webview://x",
        "Authorization": "Bearer x",
        "Upgrade": "websocket",
        "User-Agent": "x",
    }

    async def body() -> None:
        with capture_logs(logging.DEBUG) as logged:
            async with daemon() as d:
                port = d.ws_port
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
                try:
                    request = upgrade_request(port, extra=[f"{name}: {values[name]}"] * 2)
                    if name in ("Host", "Upgrade"):  # already in the request once
                        request = upgrade_request(port, extra=[f"{name}: {values[name]}"])
                    writer.write(request)
                    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), TIMEOUT)
                finally:
                    await close_writer(writer)
                assert head.startswith(b"HTTP/1.1 400 "), head
                assert d.front.refused == {400: 1}
                async with client(d) as ws:
                    await ws.send('{"type":"heartbeat"}')
                    assert await recv_json(ws) == {"type": "heartbeat_ack"}
        assert [r for r in logged if r.level >= logging.ERROR] == []

    run(body())


def test_since_too_long_for_int_gets_400() -> None:
    """A since= that int() cannot convert (over 4300 digits) gets 400; 4300 digits is fine."""

    async def body() -> None:
        with capture_logs(logging.DEBUG) as logged:
            async with daemon() as d:
                port = d.ws_port
                for digits, status in ((4301, b"400"), (4300, b"101")):
                    reader, writer = await asyncio.open_connection("127.0.0.1", port)
                    try:
                        writer.write(upgrade_request(port, path="/?since=" + "9" * digits))
                        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), TIMEOUT)
                        assert head.split(b" ")[1] == status, head
                        if status == b"101":
                            opcode, payload = await read_frame(reader)
                            assert opcode == 0x1
                            assert json.loads(payload)["type"] == "connected"
                    finally:
                        await close_writer(writer)
        assert [r for r in logged if r.level >= logging.ERROR] == []

    run(body())


def test_http_responses_forbid_framing_and_referrers() -> None:
    """UI, API and refusals forbid framing (clickjacking) and Referers (token in the URL)."""

    async def body() -> None:
        with short_tmpdir() as tmp:
            token_file = tmp / "token"
            token_file.write_text("Frame-Test-Token-0123456789\n")
            token_file.chmod(0o600)
            cfg = make_config(tmp, auth={"token_file": str(token_file)})
            async with running_daemon(cfg) as d:
                replies = [
                    await http_get(d.ws_port, "/?token=Frame-Test-Token-0123456789"),
                    await http_get(d.ws_port, "/healthz"),
                    await http_get(d.ws_port, "/"),
                ]
        assert [r.status for r in replies] == [200, 200, 401]
        for reply in replies:
            assert reply.headers["x-frame-options"] == "DENY"
            assert reply.headers["content-security-policy"] == "frame-ancestors 'none'"
            assert reply.headers["referrer-policy"] == "no-referrer"

    run(body())


# -- 5. handshake timeout --------------------------------------------------------------

# The daemon's handshake timeout (websocket.handshake_timeout_seconds, PROTOCOL §2.4),
# at its default here: aaeventd/handshakes.py enforces it (websockets' own open_timeout
# is off, see WsServer.start).
HANDSHAKE_TIMEOUT: float = WebSocketConfig().handshake_timeout_seconds


def test_unfinished_handshakes_are_cut_by_the_open_timeout() -> None:
    """Silent or half-sent handshakes are cut after the handshake timeout; others are served."""

    async def body() -> None:
        async with daemon() as d:
            port = d.ws_port
            partial = [
                b"",
                b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n",
                upgrade_request(port)[:-2],  # every header, but not the blank line
            ]
            conns = []
            started = time.monotonic()
            for data in partial:
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
                writer.write(data)
                conns.append((reader, writer))
            try:
                # Meanwhile everyone else is served.
                async with client(d) as ws:
                    await ws.send('{"type":"heartbeat"}')
                    assert await recv_json(ws, timeout=PROMPT) == {"type": "heartbeat_ack"}
                assert (await health(port))["status"] == "ok"
                # The deadline is only so that a daemon that never cuts them fails.
                endings = await asyncio.gather(
                    *(peer_closed(r, HANDSHAKE_TIMEOUT + TIMEOUT) for r, _ in conns)
                )
                elapsed = time.monotonic() - started
            finally:
                for _, writer in conns:
                    await close_writer(writer)
            assert all(e in ("eof", "reset") for e in endings), endings
            # PROTOCOL §2.4 states when they are cut, not how soon after: not before.
            assert elapsed >= HANDSHAKE_TIMEOUT, f"cut after {elapsed:.2f} s"
            await health_until(port, clients=0)

    run(body())


# -- 6. abuse: floods of lines and connections -------------------------------------------


def test_tiny_line_flood_does_not_starve_another_source() -> None:
    """10,000 tiny events: another source is still acked, a client gets all, no gap."""
    flood = 10_000

    async def body() -> None:
        async with (
            daemon() as d,
            client(d) as ws,
            await Source.connect(sock_path(d), hello=HELLO_ACKS) as a,
            await Source.connect(sock_path(d), hello=HELLO_ACKS) as b,
        ):
            rss_before = rss_bytes()
            first_chunk_sent = asyncio.Event()

            async def flooder() -> None:
                lines = b'{"type":"t"}\n' * 500
                for _ in range(flood // 500):
                    await a.send_raw(lines)
                    first_chunk_sent.set()

            async def acks_of_a() -> list[int]:
                return [(await a.recv())["seq"] for _ in range(flood)]

            async def other() -> dict[str, Any]:
                await first_chunk_sent.wait()
                await b.send({"type": "other.source"})
                return await b.recv()

            async def watcher() -> list[dict[str, Any]]:
                return [await recv_json(ws) for _ in range(flood + 1)]

            # How soon b is answered is PROTOCOL §5's "heartbeat within a second" under
            # floods: test_limits.py and test_confirmation_flood.py measure it.
            _, a_seqs, b_reply, seen = await asyncio.gather(
                flooder(), acks_of_a(), other(), watcher()
            )
            assert b_reply["type"] == "ack", b_reply
            assert [e["seq"] for e in seen] == list(range(1, flood + 2))
            assert sum(e["type"] == "other.source" for e in seen) == 1
            assert a_seqs == sorted(a_seqs)
            assert len(set(a_seqs)) == flood
            assert d.counters.events_in == flood + 1
            assert rss_bytes() - rss_before < RSS_BOUND

    run(body())


def test_sources_connecting_in_a_loop_and_past_max_connections() -> None:
    """Source churn, then 100 at once: max_connections welcomed, the rest overloaded."""
    limit = 32

    async def body() -> None:
        async with daemon(sources={"max_connections": limit}) as d:
            path = str(sock_path(d))
            port = d.ws_port
            rss_before = rss_bytes()
            for i in range(100):
                reader, writer = await asyncio.open_unix_connection(path)
                kind = i % 5
                if kind == 1:
                    writer.write(json.dumps(HELLO_ACKS).encode() + b"\n")
                    assert json.loads(await reader.readline())["type"] == "welcome"
                elif kind == 2:
                    writer.write(b'{"type":"half a line')
                elif kind == 3:
                    writer.write(b"not json\n")
                    assert json.loads(await reader.readline())["code"] == "invalid_json"
                elif kind == 4:
                    writer.transport.abort()
                await close_writer(writer)
            await health_until(port, sources=0)

            async def hold() -> tuple[str, asyncio.StreamWriter]:
                reader, writer = await asyncio.open_unix_connection(path)
                writer.write(json.dumps(HELLO_ACKS).encode() + b"\n")
                reply = json.loads(await asyncio.wait_for(reader.readline(), TIMEOUT))
                return reply.get("code", reply["type"]), writer

            held = await asyncio.gather(*(hold() for _ in range(100)))
            try:
                kinds = sorted(kind for kind, _ in held)
                assert kinds == ["overloaded"] * (100 - limit) + ["welcome"] * limit
                assert d.ingest.refused_overloaded == 100 - limit
                assert (await health(port))["sources"] == limit
            finally:
                for _, writer in held:
                    await close_writer(writer)
            await health_until(port, sources=0)
            async with await Source.connect(path, hello=HELLO_ACKS) as src:
                await src.send({"type": "after.churn"})
                assert await src.recv() == {"type": "ack", "seq": 1, "delivered": 0}
            assert rss_bytes() - rss_before < RSS_BOUND

    run(body())


def test_client_connections_in_a_loop_leave_nothing_behind() -> None:
    """500 client connections in a loop: /healthz answers, clients back to 0, events flow."""

    async def body() -> None:
        async with daemon() as d:
            port = d.ws_port
            rss_before = rss_bytes()
            with quiet("aaeventd.websockets", "aaeventd.wsserver"):
                for i in range(500):
                    ws = await ws_connect(d)
                    if i % 2:
                        assert (await recv_json(ws))["type"] == "connected"
                    await ws.close()
                    if i % 10 == 0:
                        _, writer = await asyncio.open_connection("127.0.0.1", port)
                        await close_writer(writer)
                        assert (await http_get(port, "/metrics")).status == 200
            obj = await health_until(port, clients=0)
            assert obj["status"] == "ok"
            assert d.ws.sessions == {}
            async with (
                client(d) as ws,
                await Source.connect(sock_path(d), hello=HELLO_ACKS) as src,
            ):
                await src.send({"type": "after.churn"})
                assert await src.recv() == {"type": "ack", "seq": 1, "delivered": 1}
                assert (await recv_json(ws))["type"] == "after.churn"
            assert rss_bytes() - rss_before < RSS_BOUND

    run(body())


GARBAGE_FRAMES = [
    pytest.param(frame(0x1, b'{"type":"\xff\xfe"}'), 1007, id="text-invalid-utf8"),
    pytest.param(frame(0x3, b"x"), 1002, id="reserved-opcode-3"),
    pytest.param(frame(0xB, b"x"), 1002, id="reserved-control-opcode-b"),
    pytest.param(frame(0x1, b'{"type":"heartbeat"}', masked=False), 1002, id="unmasked"),
    pytest.param(frame(0x1, b'{"type":"heartbeat"}', rsv=0b100), 1002, id="rsv1-no-extension"),
    pytest.param(frame(0x9, b"p" * 126), 1002, id="ping-over-125-bytes"),
    pytest.param(frame(0x9, b"p", fin=False), 1002, id="fragmented-ping"),
    pytest.param(frame(0x0, b"x"), 1002, id="continuation-without-start"),
    pytest.param(frame(0x1, b"{", fin=False) + frame(0x1, b"}"), 1002, id="text-inside-text"),
    pytest.param(frame(0x8, (999).to_bytes(2, "big")), 1002, id="close-code-999"),
    pytest.param(frame(0x8, b"\x03"), 1002, id="close-one-byte"),
    pytest.param(frame(0x8, (1000).to_bytes(2, "big") + b"\xff"), 1007, id="close-reason-utf8"),
]


@pytest.mark.parametrize(("garbage", "code"), GARBAGE_FRAMES)
def test_garbage_frame_closes_that_connection_with_a_code(garbage: bytes, code: int) -> None:
    """A frame breaking RFC 6455 closes that connection (1002/1007); others are served."""

    async def body() -> None:
        async with daemon() as d, client(d) as other:
            reader, writer = await raw_ws(d.ws_port)
            try:
                with quiet("aaeventd.websockets"):
                    writer.write(garbage)
                    assert await close_code(reader) == code
                    assert await peer_closed(reader) in ("eof", "reset")
            finally:
                await close_writer(writer)
            await other.send('{"type":"heartbeat"}')
            assert await recv_json(other, timeout=PROMPT) == {"type": "heartbeat_ack"}
            await health_until(d.ws_port, clients=1)

    run(body())


def test_frame_announcing_a_huge_length_closes_1009_at_once() -> None:
    """A frame header announcing 2**62 bytes is refused with 1009 before any payload."""

    async def body() -> None:
        async with daemon() as d:
            reader, writer = await raw_ws(d.ws_port)
            try:
                writer.write(frame(0x1, b"", length=1 << 62)[:14])
                assert await close_code(reader) == 1009
            finally:
                await close_writer(writer)
            await health_until(d.ws_port, clients=0)

    run(body())


@pytest.mark.parametrize(
    ("message", "total"),
    [
        pytest.param(frame(0x1, b'{"type":"heartbeat"}'), 4 << 20, id="heartbeats"),
        pytest.param(frame(0x9, b"p" * 125), 16 << 20, id="pings"),
    ],
)
def test_client_that_never_reads_its_replies_is_bounded(message: bytes, total: int) -> None:
    """Replies to a client that floods heartbeats/pings and never reads stay bounded."""
    limit = 64 << 10

    async def body() -> None:
        async with daemon(websocket={"slow_client_buffer_bytes": limit}) as d, client(d) as other:
            _, writer = await raw_ws(d.ws_port, user_agent="never-reads", rcvbuf=4096)
            (session,) = [s for s in d.ws.sessions.values() if s.user_agent == "never-reads"]
            rss_before = rss_bytes()
            chunk = message * (65536 // len(message))
            sent = 0
            peak = 0
            try:
                while sent < total:
                    writer.write(chunk)
                    try:
                        await asyncio.wait_for(writer.drain(), PROMPT)
                    except (TimeoutError, ConnectionError):
                        break  # the daemon stopped reading us, or closed us: bounded
                    sent += len(chunk)
                    peak = max(peak, session.backlog)
            finally:
                writer.transport.abort()
            assert peak <= limit + len(chunk) * 2, (peak, sent)
            assert rss_bytes() - rss_before < RSS_BOUND
            await other.send('{"type":"heartbeat"}')
            assert await recv_json(other, timeout=PROMPT) == {"type": "heartbeat_ack"}

    run(body())


def test_valid_event_nested_near_the_recursion_limit_keeps_the_connection() -> None:
    """Events nested 850-1000 deep: each acked or invalid_json, connection kept, no seq gap."""
    depths = range(850, 1001)

    async def body() -> None:
        with quiet("aaeventd.ingest"):
            async with (
                daemon() as d,
                client(d) as ws,
                await Source.connect(sock_path(d), hello=HELLO_ACKS) as src,
            ):
                replies = []
                for depth in depths:
                    nested = b"[" * depth + b"]" * depth
                    await src.send_raw(b'{"type":"deep","v":' + nested + b"}\n")
                    reply = await src.recv()
                    replies.append(reply)
                    if reply["type"] == "ack":
                        assert (await recv_json(ws))["seq"] == reply["seq"]
                acked = [r["seq"] for r in replies if r["type"] == "ack"]
                refused = [r["code"] for r in replies if r["type"] == "error"]
                assert len(acked) + len(refused) == len(depths)
                assert set(refused) <= {"invalid_json"}
                assert acked == list(range(1, len(acked) + 1))
                await src.send({"type": "after.deep"})
                assert await src.recv() == {
                    "type": "ack",
                    "seq": len(acked) + 1,
                    "delivered": 1,
                }
                last = await recv_until(ws, lambda m: m["type"] == "after.deep")
                assert last["seq"] == len(acked) + 1

    run(body())


# -- 7. properties: the whole pipelines raise nothing but protocol errors ---------------

_fragments = st.one_of(
    st.binary(max_size=24),
    st.sampled_from(
        [
            b"\n",
            b"\r\n",
            b"\r",
            b" ",
            b'{"type":"x"}',
            b'{"type":"step_started","step_name":"s","step_index":0,"skill_name":"k"}',
            b'{"type":"confirmation_required","message":"m","timeout_seconds":',
            b'{"type":"error"}',
            b'{"type":"hello"}',
            b'{"type":',
            b"NaN",
            b"-Infinity",
            b"1e999",
            b"9" * 4400,
            b"[" * 3000,
            b'"\\ud800"',
            b"\xff",
            b"\xc3",
            b"\xed\xa0\x80",
            b"\xf0\x9f\x98\x80",
            b"{",
            b"}",
            b":",
            b",",
            b"[]",
            b'"',
        ]
    ),
)


def _outcomes(chunks: list[bytes], limit: int) -> list[tuple[int, str]]:
    """Each non-blank line's number and what the daemon answers (a code, or ``ok``)."""
    framer = LineFramer(limit)
    items = [item for chunk in chunks for item in framer.feed(chunk)] + framer.eof()
    out = []
    for item in items:
        if isinstance(item, TooLong):
            out.append((item.number, "line_too_long"))
            continue
        try:
            validate_event(decode_object(item.data))
        except ProtocolError as exc:
            out.append((item.number, str(exc.code)))
        else:
            out.append((item.number, "ok"))
    return out


@settings(max_examples=300, deadline=None)
@given(
    stream=st.lists(_fragments, max_size=40).map(b"".join),
    limit=st.integers(16, 8192),
    data=st.data(),
)
def test_source_pipeline_any_split_gives_the_same_answers(
    stream: bytes, limit: int, data: st.DataObject
) -> None:
    """Framer+decode+validate: any split, same per-line answers; only ProtocolError raised."""
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=10)))
    chunks = [stream[a:b] for a, b in zip([0, *cuts], [*cuts, len(stream)], strict=True)]
    whole = _outcomes([stream], limit)
    assert _outcomes(chunks, limit) == whole
    numbers = [n for n, _ in whole]
    assert numbers == sorted(set(numbers))
    assert all(n <= stream.count(b"\n") + 1 for n in numbers)
    assert {code for _, code in whole} <= SOURCE_CODES | {"ok"}


_client_objects = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda kids: st.lists(kids, max_size=3) | st.dictionaries(st.text(max_size=5), kids),
    max_leaves=8,
)


@settings(max_examples=300, deadline=None)
@given(
    message=st.one_of(
        st.binary(max_size=64),
        st.text(max_size=64),
        _client_objects.map(lambda v: json.dumps(v)),
        st.fixed_dictionaries(
            {
                "type": st.sampled_from(
                    [
                        "heartbeat",
                        "subscribe",
                        "confirmation_response",
                        "pause_timer",
                        "resume_timer",
                        "x",
                        "",
                    ]
                )
                | st.integers()
                | st.none()
            },
            optional={
                "id": _client_objects,
                "response": _client_objects,
                "remember": _client_objects,
                "types": _client_objects | st.lists(st.text(max_size=130), max_size=70),
            },
        ).map(lambda v: json.dumps(v)),
    )
)
def test_client_pipeline_raises_only_protocol_errors(message: str | bytes) -> None:
    """Any client message either parses or raises ProtocolError with a §2.1 code."""
    error: ProtocolError | None = None
    try:
        parse_client_message(decode_client_message(message))
    except ProtocolError as exc:
        error = exc
    if error is not None:
        assert isinstance(error.code, ErrorCode)
        assert str(error.code) in CLIENT_CODES


# -- 8. soak: random garbage against the real daemon -------------------------------------

SOAK_MAX_LINE = 8192
SOAK_SEED = 20_260_204
RESERVED = (
    "connected",
    "welcome",
    "ack",
    "error",
    "heartbeat_ack",
    "subscribed",
    "replay_gap",
    "confirmation_response",
    "confirmation_answered",
    "confirmation_expired",
    "hello",
)


def soak_line(rng: random.Random, serial: str) -> tuple[bytes, str | None]:
    """One line (without its newline) and the code it must get; ``ok``: acked; None: any
    source error code; ``blank``: no reply at all."""
    kind = rng.randrange(16)
    if kind == 0:
        return json.dumps({"type": "soak.ok", "serial": serial}).encode(), "ok"
    if kind == 1:
        constant = rng.choice([b"NaN", b"Infinity", b"-Infinity", b"1e999", b"-1e400"])
        return b'{"type":"x","v":' + constant + b"}", "invalid_json"
    if kind == 2:
        return b'{"type":"x","v":' + b"7" * rng.randint(4301, 8000) + b"}", "invalid_json"
    if kind == 3:
        depth = rng.randint(2000, 4000)  # far past the recursion limit, under the line limit
        closed = rng.random() < 0.5
        return b'{"type":"x","v":' + b"[" * depth + (b"]" * depth + b"}" if closed else b""), (
            "invalid_json"
        )
    if kind == 4:
        lone = rng.choice([b"\\ud800", b"\\udfff", b"x\\udc00y", b"\\ud83d"])
        return b'{"type":"x","v":"' + lone + b'"}', "invalid_json"
    if kind == 5:
        bad = rng.choice([b"\xff", b"\xc3", b"\xed\xa0\x80", b"\xc0\xaf", b"\xf8\x88\x80\x80"])
        return b'{"type":"x","v":"' + bad + b'"}', "invalid_utf8"
    if kind == 6:
        return b"x" * (SOAK_MAX_LINE + rng.randint(1, 200_000)), "line_too_long"
    if kind == 7:
        return json.dumps({"type": rng.choice(RESERVED)}).encode(), "reserved_type"
    if kind == 8:
        return rng.choice([b"[]", b"42", b'"text"', b"null", b"true", b'[{"type":"x"}]']), (
            "not_an_object"
        )
    if kind == 9:
        return rng.choice([b"{}", b'{"type":5}', b'{"type":null}', b'{"type":["x"]}']), (
            "missing_type"
        )
    if kind == 10:
        name = rng.choice(["", "Upper", "a" * 65, "1x", "a b", "x\n", "é"])
        return json.dumps({"type": name}).encode(), "invalid_type_name"
    if kind == 11:
        bad: dict[str, Any] = rng.choice(
            [
                {"type": "step_started", "skill_name": "s"},
                {"type": "skill_started"},
                {"type": "confirmation_required", "message": ""},
                {"type": "confirmation_required", "message": "m", "timeout_seconds": 1e9},
                {"type": "persona_changed", "persona": 3},
            ]
        )
        return json.dumps(bad).encode(), "invalid_event"
    if kind == 12:
        return rng.choice([b"", b"   ", b"\t", b" \r"]), "blank"
    # Noise: random bytes on one line, never blank.
    noise = bytes(rng.randrange(256) for _ in range(rng.randint(1, 300))).replace(b"\n", b"?")
    if not noise.strip(b" \t\r"):
        noise = b"?" + noise
    return noise, None


def client_garbage(rng: random.Random) -> str | bytes:
    """One WebSocket message that always gets exactly one error reply."""
    kind = rng.randrange(6)
    if kind == 0:
        return bytes(rng.randrange(256) for _ in range(rng.randint(1, 200)))
    if kind == 1:
        return "".join(chr(rng.randrange(32, 0x2FF)) for _ in range(rng.randint(1, 100)))
    if kind == 2:
        return rng.choice(['{"type":"x","v":NaN}', '{"a":1e999}', "[1,2]", '"s"', "{"])
    if kind == 3:
        return json.dumps({"type": rng.choice(["nope", "ack", "hello", "", 5, None])})
    if kind == 4:
        return json.dumps({"type": "confirmation_response", "id": "none", "response": "yes"})
    return json.dumps({"type": "pause_timer", "id": rng.choice(["none", 5, None])})


@dataclass
class SoakSourceResult:
    acked: list[int]
    codes: dict[str, int]


async def soak_source(path: str, rng: random.Random, index: int, count: int) -> SoakSourceResult:
    """Send ``count`` random lines (in random chunks) and check each reply in order."""
    lines = [soak_line(rng, f"{index}-{i}") for i in range(count)]
    expected = [(number, code) for number, (_, code) in enumerate(lines, start=2)]
    stream = b"".join(line + b"\n" for line, _ in lines)
    reader, writer = await asyncio.open_unix_connection(path, limit=1 << 20)
    try:
        writer.write(json.dumps(HELLO_ACKS).encode() + b"\n")
        assert json.loads(await reader.readline())["type"] == "welcome"

        async def send() -> None:
            pos = 0
            while pos < len(stream):
                step = rng.randint(1, 64 << 10)
                writer.write(stream[pos : pos + step])
                await writer.drain()
                pos += step
            # Barrier: the reply to this line comes after every other reply.
            writer.write(b'{"type":"soak.barrier"}\n')
            await writer.drain()

        async def receive() -> SoakSourceResult:
            result = SoakSourceResult([], {})
            for number, code in expected:
                if code == "blank":
                    continue
                reply = json.loads(await asyncio.wait_for(reader.readline(), TIMEOUT))
                if code == "ok":
                    assert reply["type"] == "ack", (number, reply)
                    result.acked.append(reply["seq"])
                    continue
                assert reply["type"] == "error", (number, code, reply)
                assert reply["line"] == number, (number, code, reply)
                assert reply["code"] in SOURCE_CODES, reply
                if code is not None:
                    assert reply["code"] == code, (number, lines[number - 2][0][:80], reply)
                result.codes[reply["code"]] = result.codes.get(reply["code"], 0) + 1
            barrier = json.loads(await asyncio.wait_for(reader.readline(), TIMEOUT))
            assert barrier["type"] == "ack", barrier
            result.acked.append(barrier["seq"])
            return result

        _, result = await asyncio.gather(send(), receive())
        return result
    finally:
        await close_writer(writer)


async def soak_client(port: int, rng: random.Random, count: int) -> int:
    """Send ``count`` garbage messages; each gets one error; then a heartbeat barrier."""
    async with connect(f"ws://127.0.0.1:{port}/?types=none.such", max_size=None) as ws:
        assert (await recv_json(ws))["type"] == "connected"
        for _ in range(count):
            await ws.send(client_garbage(rng))
        await ws.send('{"type":"heartbeat"}')
        errors = 0
        while True:
            reply = await recv_json(ws)
            if reply["type"] == "heartbeat_ack":
                return errors
            assert reply["type"] == "error", reply
            assert reply["code"] in CLIENT_CODES, reply
            errors += 1


async def soak_bad_frames(port: int) -> list[int]:
    """Raw connections each sending one invalid frame, or one message over the limit."""
    codes = []
    for garbage in (
        frame(0x1, b"\xff"),
        frame(0x3, b""),
        frame(0x1, b"{}", masked=False),
        frame(0x1, b"x" * 5000),
    ):
        reader, writer = await raw_ws(port)
        try:
            writer.write(garbage)
            codes.append(await close_code(reader))
        finally:
            await close_writer(writer)
    return codes


def metric_samples(text: str, name: str) -> dict[str, float]:
    """``{label_value: value}`` of one labelled Prometheus metric."""
    out = {}
    for match in re.finditer(rf'^aaeventd_{name}\{{\w+="([^"]+)"\}} (\S+)$', text, re.M):
        out[match.group(1)] = float(match.group(2))
    return out


@pytest.mark.e2e
def test_random_garbage_soak_against_the_real_daemon() -> None:
    """Random garbage from sources and clients: one coded reply each, daemon up, events flow."""
    sources, per_source, client_messages = 4, 500, 300

    async def body(proc: subprocess.Popen[str], sock: str, port: int) -> None:
        rss_start = rss_bytes(proc.pid)
        rng = random.Random(SOAK_SEED)
        seeds = [rng.randrange(1 << 32) for _ in range(sources + 1)]
        results = await asyncio.gather(
            *(soak_source(sock, random.Random(seeds[i]), i, per_source) for i in range(sources)),
            soak_client(port, random.Random(seeds[-1]), client_messages),
            soak_bad_frames(port),
        )
        *source_results, client_errors, frame_codes = results
        assert client_errors == client_messages
        assert frame_codes == [1007, 1002, 1002, 1009]
        acked = sorted(seq for r in source_results for seq in r.acked)
        assert acked == list(range(1, len(acked) + 1))  # every good event, no gap
        codes: dict[str, int] = {}
        for r in source_results:
            for code, n in r.codes.items():
                codes[code] = codes.get(code, 0) + n
        assert set(codes) >= SOURCE_CODES - {"unknown_type", "duplicate_confirmation"}, codes
        assert sum(codes.values()) > per_source * sources * 0.8
        assert len(acked) > sources  # good events among the garbage, and the barriers
        assert proc.poll() is None
        # A normal event still flows, to a fresh client.
        async with connect(f"ws://127.0.0.1:{port}/") as ws:
            assert (await recv_json(ws))["type"] == "connected"
            async with await Source.connect(sock, hello=HELLO_ACKS) as src:
                await src.send({"type": "soak.final"})
                ack = await src.recv()
                assert ack == {"type": "ack", "seq": len(acked) + 1, "delivered": 1}
            final = await recv_json(ws)
            assert (final["type"], final["seq"]) == ("soak.final", len(acked) + 1)
        metrics = (await http_get(port, "/metrics")).body.decode()
        assert metric_samples(metrics, "events_rejected_total") == {
            code: float(n) for code, n in codes.items()
        }
        assert rss_bytes(proc.pid) - rss_start < RSS_BOUND

    with daemon_process(
        sources={"max_line_bytes": SOAK_MAX_LINE},
        websocket={"max_message_bytes": 4096},
    ) as d:
        run(body(d.proc, d.sock, d.port))
        assert d.stop() == 0
        log = d.log()
        assert "Traceback" not in log, log[-3000:]
        assert " ERROR " not in log, log[-3000:]
