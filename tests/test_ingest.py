"""The sources' side (aaeventd.daemon.ingest, PROTOCOL §1): real Unix sockets, in-process daemon.

Every test talks to a :func:`~tests.support.running_daemon` over its real Unix socket
and, where clients matter, over real WebSocket connections.  Nothing waits blindly:
"this did not arrive" is proved with an ordering barrier (a later line whose reply or
broadcast must come next).
"""

from __future__ import annotations

import asyncio
import calendar
import contextlib
import json
import logging
import os
import re
import socket
import stat
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import pytest
from websockets.asyncio.client import ClientConnection

from aaeventd import __version__
from aaeventd.daemon.app import Daemon
from aaeventd.daemon.ingest import REPLY_BUFFER_LIMIT, SourceConnection
from aaeventd.daemon.logsetup import TextFormatter
from aaeventd.daemon.wsserver import ClientSession
from aaeventd.errors import StartupError
from tests.support import (
    FACTOR,
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

HELLO_ACKS: dict[str, Any] = {"type": "hello", "name": "test-source", "acks": True}
PROBE: dict[str, Any] = {"type": "probe.ok"}
TIMESTAMP_RE = re.compile(r"\A\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z\Z")
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
)
# Promptly: well under the generic deadline, even on a loaded machine.
PROMPT = 3.0 * FACTOR


# -- helpers ---------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def client(d: Daemon, query: str = "") -> AsyncIterator[ClientConnection]:
    """A WebSocket client whose ``connected`` frame has been read (so it is registered)."""
    ws = await ws_connect(d, query)
    try:
        first = await recv_json(ws)
        assert first["type"] == "connected", first
        yield ws
    finally:
        await ws.close()


async def expect_error(src: Source, code: str, line: int | None) -> dict[str, Any]:
    """The next reply is an ``error`` with ``code`` and ``line``; return it."""
    reply = await src.recv()
    assert reply["type"] == "error", reply
    assert reply["code"] == code, reply
    assert isinstance(reply["message"], str), reply
    assert reply["message"], reply
    if line is None:
        assert "line" not in reply, reply
    else:
        assert reply["line"] == line, reply
    return reply


async def expect_ack(src: Source, seq: int, delivered: int) -> dict[str, Any]:
    """The next reply is exactly the ack of event ``seq`` handed to ``delivered`` clients."""
    reply = await src.recv()
    assert reply == {"type": "ack", "seq": seq, "delivered": delivered}, reply
    return reply


def sock_path(d: Daemon) -> Path:
    assert d.socket_path is not None
    return d.socket_path


def only_source(d: Daemon) -> SourceConnection:
    sources = list(d.ingest.sources.values())
    assert len(sources) == 1, sources
    return sources[0]


def without_stamps(event: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in event.items() if k not in ("seq", "timestamp")}


def rss_bytes() -> int:
    """This process's resident set size (the in-process daemon's memory)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS in /proc/self/status")


def same_chunk(total: int, size: int) -> Iterator[bytes]:
    """``total`` bytes of filler in ``size`` chunks, all the same object (no big alloc)."""
    block = b"x" * size
    for _ in range(total // size):
        yield block


@dataclass(frozen=True)
class Logged:
    """One log record as the daemon's text formatter wrote it."""

    logger: str
    level: int
    message: str
    text: str


class _ListHandler(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.setFormatter(TextFormatter())
        self.logged: list[Logged] = []

    def emit(self, record: logging.LogRecord) -> None:
        # Formatted now: websockets' records hold weak references to their connection.
        self.logged.append(
            Logged(record.name, record.levelno, record.getMessage(), self.format(record))
        )


@contextlib.contextmanager
def capture_logs(level: int) -> Iterator[list[Logged]]:
    """What the ``aaeventd`` loggers log at ``level`` and above.

    The handler sits on the ``aaeventd`` logger itself rather than on the root (as
    pytest's ``caplog`` does): once anything in the process has called
    ``configure_logging`` (e.g. a reload test), that logger stops propagating.
    """
    logger = logging.getLogger("aaeventd")
    handler = _ListHandler()
    old_level = logger.level
    logger.addHandler(handler)
    logger.setLevel(level)
    try:
        yield handler.logged
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)


# -- 1. every source error code, with its line number; the connection survives ------

NESTED = b'{"type":"x","v":' + b"[" * 100_000 + b"]" * 100_000 + b"}"

BAD_LINE_CASES: list[tuple[str, bytes, str]] = [
    ("json-syntax", b'{"type":"x",}', "invalid_json"),
    ("json-truncated", b'{"type":"x"', "invalid_json"),
    ("json-single-quotes", b"{'type':'x'}", "invalid_json"),
    ("nan", b'{"type":"x","v":NaN}', "invalid_json"),
    ("infinity", b'{"type":"x","v":Infinity}', "invalid_json"),
    ("minus-infinity", b'{"type":"x","v":-Infinity}', "invalid_json"),
    ("1e999", b'{"type":"x","v":1e999}', "invalid_json"),
    ("minus-1e999", b'{"type":"x","v":-1e999}', "invalid_json"),
    ("int-5000-digits", b'{"type":"x","v":' + b"7" * 5000 + b"}", "invalid_json"),
    ("int-4301-digits", b'{"type":"x","v":' + b"7" * 4301 + b"}", "invalid_json"),
    ("nested-100000", NESTED, "invalid_json"),
    ("lone-surrogate", b'{"type":"x","v":"\\ud800"}', "invalid_json"),
    ("utf8-ff", b'{"type":"x","v":"\xff"}', "invalid_utf8"),
    ("utf8-truncated", b'{"type":"x","v":"\xc3"}', "invalid_utf8"),
    ("utf8-surrogate", b'{"type":"x","v":"\xed\xa0\x80"}', "invalid_utf8"),
    ("array", b'[{"type":"x"}]', "not_an_object"),
    ("string", b'"x"', "not_an_object"),
    ("number", b"42", "not_an_object"),
    ("null", b"null", "not_an_object"),
    ("type-absent", b'{"v":1}', "missing_type"),
    ("type-number", b'{"type":5}', "missing_type"),
    ("type-null", b'{"type":null}', "missing_type"),
    ("type-list", b'{"type":["x"]}', "missing_type"),
    ("type-empty", b'{"type":""}', "invalid_type_name"),
    ("type-uppercase", b'{"type":"Upper"}', "invalid_type_name"),
    ("type-65-chars", b'{"type":"' + b"a" * 65 + b'"}', "invalid_type_name"),
    ("type-trailing-newline", b'{"type":"ab\\n"}', "invalid_type_name"),
    ("type-leading-digit", b'{"type":"1ab"}', "invalid_type_name"),
    ("type-space", b'{"type":"a b"}', "invalid_type_name"),
    ("invalid", b'{"type":"step_started","skill_name":"s"}', "invalid_event"),
    ("reserved-hello-on-line-2", b'{"type":"hello"}', "reserved_type"),
    *((t, f'{{"type":"{t}"}}'.encode(), "reserved_type") for t in RESERVED),
]
BAD_LINES = [pytest.param(line, code, id=name) for name, line, code in BAD_LINE_CASES]


@pytest.mark.parametrize(("line", "code"), BAD_LINES)
def test_bad_line_gets_error_with_line_number_and_connection_survives(
    line: bytes, code: str
) -> None:
    """A rejected line gets one error naming its line; the next valid line is acked."""

    async def body() -> None:
        async with daemon() as d, await Source.connect(sock_path(d), hello=HELLO_ACKS) as src:
            await src.send_raw(line + b"\n")
            reply = await expect_error(src, code, 2)
            expected_keys = {"type", "code", "message", "line"}
            if code == "invalid_event":
                expected_keys.add("details")
            assert set(reply) == expected_keys
            await src.send(PROBE)
            await expect_ack(src, 1, 0)
            assert d.ingest.rejected == {code: 1}
            assert d.hub.last_seq == 1

    run(body())


def test_invalid_event_details_list_loc_and_msg() -> None:
    """invalid_event carries details: one {loc, msg} per problem, loc naming the field."""

    async def body() -> None:
        async with daemon() as d, await Source.connect(sock_path(d)) as src:
            await src.send({"type": "step_started", "skill_name": "s"})
            reply = await expect_error(src, "invalid_event", 1)
            details = reply["details"]
            assert [item["loc"] for item in details] == [["step_name"], ["step_index"]]
            for item in details:
                assert set(item) == {"loc", "msg"}
                assert isinstance(item["msg"], str)
                assert item["msg"]
            # Strict types: "3" is not an integer.
            await src.send(
                {"type": "step_started", "skill_name": "s", "step_name": "a", "step_index": "3"}
            )
            reply = await expect_error(src, "invalid_event", 2)
            assert [item["loc"] for item in reply["details"]] == [["step_index"]]
            assert d.hub.last_seq == 0
        # A bad hello on the first line is invalid_event too, with details.
        async with daemon() as d, await Source.connect(sock_path(d)) as src:
            await src.send({"type": "hello", "acks": "yes"})
            reply = await expect_error(src, "invalid_event", 1)
            assert [item["loc"] for item in reply["details"]] == [["acks"]]

    run(body())


def test_line_numbers_count_blank_lines_and_hello() -> None:
    """Line numbers count blank lines and the hello; hello after a blank line is welcomed."""

    async def body() -> None:
        async with daemon() as d, await Source.connect(sock_path(d)) as src:
            await src.send_raw(b"\n")  # line 1: blank
            await src.send_raw(json.dumps(HELLO_ACKS).encode() + b"\n")  # line 2
            welcome = await src.recv()
            assert welcome["type"] == "welcome"
            await src.send_raw(b"  \n\t\r\n\r\n")  # lines 3-5: blank
            await src.send_raw(b"nope\n")  # line 6
            await expect_error(src, "invalid_json", 6)
            await src.send_raw(b'{"type":"a"}\n\n[]\n')  # lines 7-9
            await expect_ack(src, 1, 0)
            await expect_error(src, "not_an_object", 9)

    run(body())


def test_hello_after_an_event_or_a_rejected_line_is_reserved() -> None:
    """hello is only allowed as the first non-blank line; later it is reserved_type."""

    async def body() -> None:
        async with daemon() as d:
            async with await Source.connect(sock_path(d)) as src:
                await src.send({"type": "first.event"})
                await src.send(HELLO_ACKS)
                await expect_error(src, "reserved_type", 2)
            async with await Source.connect(sock_path(d)) as src:
                await src.send_raw(b"garbage\n")
                await src.send(HELLO_ACKS)
                await expect_error(src, "invalid_json", 1)
                await expect_error(src, "reserved_type", 2)
            assert d.hub.last_seq == 1

    run(body())


def test_line_too_long_is_discarded_and_next_line_works() -> None:
    """A line over max_line_bytes gets line_too_long; the limit itself is fine (\\r\\n too)."""

    async def body() -> None:
        async with (
            daemon(sources={"max_line_bytes": 64}) as d,
            await Source.connect(sock_path(d), hello=HELLO_ACKS) as src,
        ):
            exact = b'{"type":"fits","pad":"' + b"p" * (64 - 24) + b'"}'
            assert len(exact) == 64
            await src.send_raw(exact + b"\r\n")  # line 2: exactly the limit, with \r\n
            await expect_ack(src, 1, 0)
            too_long = b'{"type":"big","pad":"' + b"p" * (65 - 23) + b'"}'
            assert len(too_long) == 65
            await src.send_raw(too_long + b"\n")  # line 3
            await expect_error(src, "line_too_long", 3)
            await src.send_raw(b"{" + b" " * 5000 + b"\n")  # line 4: long, in one write
            await expect_error(src, "line_too_long", 4)
            await src.send(PROBE)  # line 5
            await expect_ack(src, 2, 0)
            assert d.ingest.rejected == {"line_too_long": 2}

    run(body())


def test_unknown_type_refused_when_not_allowed() -> None:
    """With allow_unknown_types false an unknown type is unknown_type; known ones pass."""

    async def body() -> None:
        async with (
            daemon(events={"allow_unknown_types": False}) as d,
            await Source.connect(sock_path(d), hello=HELLO_ACKS) as src,
        ):
            await src.send({"type": "my.custom"})
            await expect_error(src, "unknown_type", 2)
            await src.send({"type": "ack"})  # reserved wins over unknown
            await expect_error(src, "reserved_type", 3)
            await src.send({"type": "persona_changed", "persona": "dev"})
            await expect_ack(src, 1, 0)

    run(body())


def test_duplicate_confirmation_id_while_pending() -> None:
    """A second confirmation_required with a pending id gets duplicate_confirmation."""

    async def body() -> None:
        async with daemon() as d, await Source.connect(sock_path(d), hello=HELLO_ACKS) as src:
            confirmation = {"type": "confirmation_required", "id": "c1", "message": "Go?"}
            await src.send(confirmation)
            assert await src.recv() == {"type": "ack", "seq": 1, "delivered": 0, "id": "c1"}
            await src.send(confirmation)
            await expect_error(src, "duplicate_confirmation", 3)
            await src.send(PROBE)
            await expect_ack(src, 2, 0)
            assert [p.id for p in d.hub.iter_pending()] == ["c1"]

    run(body())


def test_crlf_line_endings_are_accepted() -> None:
    """\\r\\n-terminated lines are events like \\n-terminated ones (no \\r kept)."""

    async def body() -> None:
        async with (
            daemon() as d,
            client(d) as ws,
            await Source.connect(sock_path(d)) as src,
        ):
            await src.send_raw(b'{"type":"hello","acks":true}\r\n')
            assert (await src.recv())["type"] == "welcome"
            await src.send_raw(b'{"type":"crlf.test","v":"a"}\r\n{"type":"crlf.two"}\r\n')
            await expect_ack(src, 1, 1)
            await expect_ack(src, 2, 1)
            first = await recv_json(ws)
            assert without_stamps(first) == {"type": "crlf.test", "v": "a"}
            assert (await recv_json(ws))["type"] == "crlf.two"

    run(body())


def test_final_line_without_newline_is_processed_at_eof() -> None:
    """An unterminated last line before a half-close is processed and answered, then EOF."""

    async def body() -> None:
        async with daemon() as d, client(d) as ws:
            async with await Source.connect(sock_path(d), hello=HELLO_ACKS) as src:
                await src.send_raw(b'{"type":"tail.event","n":1}')
                src.writer.write_eof()
                await expect_ack(src, 1, 1)
                assert await asyncio.wait_for(src.reader.read(), TIMEOUT) == b""
            event = await recv_json(ws)
            assert without_stamps(event) == {"type": "tail.event", "n": 1}
            # A bad unterminated last line gets its error before the EOF.
            async with await Source.connect(sock_path(d)) as src:
                await src.send_raw(b'\n{"type":"x"')
                src.writer.write_eof()
                await expect_error(src, "invalid_json", 2)
                assert await asyncio.wait_for(src.reader.read(), TIMEOUT) == b""

    run(body())


# -- 2. rejected lines never reach clients -----------------------------------------


def test_rejected_lines_never_reach_clients() -> None:
    """After a burst of bad lines, the next frame a client sees is the next valid event."""

    async def body() -> None:
        async with (
            daemon() as d,
            client(d) as ws,
            await Source.connect(sock_path(d)) as src,
        ):
            bad = [line for name, line, _ in BAD_LINE_CASES if name != "reserved-hello-on-line-2"]
            await src.send({"type": "first.valid"})  # line 1 (so hello is reserved)
            await src.send_raw(b"\n".join(bad) + b'\n{"type":"hello"}\n')
            await src.send({"type": "after.bad", "k": 1})
            for number in range(2, len(bad) + 3):
                reply = await src.recv()
                assert reply["type"] == "error", reply
                assert reply["line"] == number
            first = await recv_json(ws)
            assert without_stamps(first) == {"type": "first.valid"}
            assert first["seq"] == 1
            nxt = await recv_json(ws)
            assert without_stamps(nxt) == {"type": "after.bad", "k": 1}
            assert nxt["seq"] == 2
            assert d.hub.last_seq == 2

    run(body())


# -- 3. hello / welcome / acks ----------------------------------------------------


def test_welcome_reports_server_version_and_last_seq() -> None:
    """welcome carries server, version and the last seq broadcast so far."""

    async def body() -> None:
        async with daemon() as d:
            async with await Source.connect(sock_path(d)) as src:
                await src.send(HELLO_ACKS)
                assert await src.recv() == {
                    "type": "welcome",
                    "server": "aaeventd",
                    "version": __version__,
                    "seq": 0,
                }
                for seq in (1, 2, 3):
                    await src.send(PROBE)
                    await expect_ack(src, seq, 0)
            async with await Source.connect(sock_path(d)) as other:
                await other.send({"type": "hello", "name": "second"})
                assert await other.recv() == {
                    "type": "welcome",
                    "server": "aaeventd",
                    "version": __version__,
                    "seq": 3,
                }

    run(body())


def test_ack_delivered_counts_matching_clients() -> None:
    """delivered is the number of clients whose filter matched: 0, 1, 2, not the others."""

    async def body() -> None:
        async with daemon() as d, await Source.connect(sock_path(d), hello=HELLO_ACKS) as src:
            await src.send({"type": "count.me"})
            await expect_ack(src, 1, 0)
            async with client(d) as everything:
                await src.send({"type": "count.me"})
                await expect_ack(src, 2, 1)
                async with client(d, "types=count.*") as matching:
                    await src.send({"type": "count.me"})
                    await expect_ack(src, 3, 2)
                    async with client(d, "types=skill_*") as other:
                        await src.send({"type": "count.me"})
                        await expect_ack(src, 4, 2)
                        await src.send({"type": "skill_started", "skill_name": "s"})
                        await expect_ack(src, 5, 2)
                        # The filtered-out client's next frame is the matching event.
                        assert (await recv_json(other))["seq"] == 5
                    assert [(await recv_json(matching))["seq"] for _ in range(2)] == [3, 4]
                assert [(await recv_json(everything))["seq"] for _ in range(4)] == [2, 3, 4, 5]

    run(body())


@pytest.mark.parametrize(
    "hello",
    [
        pytest.param(None, id="no-hello"),
        pytest.param({"type": "hello", "name": "quiet"}, id="hello-without-acks"),
        pytest.param({"type": "hello", "name": "quiet", "acks": False}, id="acks-false"),
    ],
)
def test_no_acks_without_hello_acks_true(hello: dict[str, Any] | None) -> None:
    """Without hello acks:true no ack is sent, but errors are."""

    async def body() -> None:
        async with daemon() as d, client(d) as ws, await Source.connect(sock_path(d)) as src:
            first_line = 1
            if hello is not None:
                await src.send(hello)
                assert (await src.recv())["type"] == "welcome"
                first_line = 2
            await src.send({"type": "silent.event"})
            await src.send_raw(b"not json\n")
            # The first reply is the error: the event before it got no ack.
            await expect_error(src, "invalid_json", first_line + 1)
            event = await recv_json(ws)
            assert without_stamps(event) == {"type": "silent.event"}

    run(body())


def test_confirmation_ack_always_carries_id() -> None:
    """confirmation_required is acked with its id even without hello (id assigned if absent)."""

    async def body() -> None:
        async with daemon() as d, await Source.connect(sock_path(d)) as src:
            await src.send({"type": "confirmation_required", "message": "Deploy?"})
            ack = await src.recv()
            assert set(ack) == {"type", "seq", "delivered", "id"}
            assert (ack["type"], ack["seq"], ack["delivered"]) == ("ack", 1, 0)
            assert uuid.UUID(ack["id"]).version == 4
            async with client(d) as ws:
                await src.send({"type": "confirmation_required", "id": "mine", "prompt": "Ok?"})
                assert await src.recv() == {"type": "ack", "seq": 2, "delivered": 1, "id": "mine"}
                event = await recv_json(ws)
                assert (event["type"], event["id"], event["seq"]) == (
                    "confirmation_required",
                    "mine",
                    2,
                )

    run(body())


# -- 4. seq and timestamp; pass-through ------------------------------------------


def test_seq_increases_by_one_across_sources() -> None:
    """seq grows by exactly 1 per broadcast event, whichever source sent it."""

    async def body() -> None:
        async with (
            daemon() as d,
            client(d) as ws,
            await Source.connect(sock_path(d), hello=HELLO_ACKS) as a,
            await Source.connect(sock_path(d), hello=HELLO_ACKS) as b,
            await Source.connect(sock_path(d)) as c,
        ):
            expected = []
            for seq, (src, name) in enumerate(
                [(a, "a"), (b, "b"), (a, "a"), (c, "c"), (b, "b"), (c, "c"), (a, "a")], start=1
            ):
                await src.send({"type": f"from.{name}", "seq": 10_000 - seq})
                if src is not c:
                    await expect_ack(src, seq, 1)
                # The broadcast arrives before the next source sends (c has no acks).
                got = await recv_json(ws)
                assert (got["type"], got["seq"]) == (f"from.{name}", seq)
                expected.append(seq)
            assert expected == list(range(1, 8))
            assert d.hub.last_seq == 7

    run(body())


def test_source_seq_overwritten_in_place_and_timestamp_rules() -> None:
    """A sent seq is replaced where it stood; timestamp is added only when absent."""

    async def body() -> None:
        async with (
            daemon() as d,
            client(d) as ws,
            await Source.connect(sock_path(d), hello=HELLO_ACKS) as src,
        ):
            before = time.time()
            await src.send({"type": "x", "seq": 999, "a": 1})
            await expect_ack(src, 1, 1)
            got = await recv_json(ws)
            after = time.time()
            assert list(got) == ["type", "seq", "a", "timestamp"]
            assert got["seq"] == 1
            assert TIMESTAMP_RE.match(got["timestamp"]), got["timestamp"]
            stamp = calendar.timegm(time.strptime(got["timestamp"][:19], "%Y-%m-%dT%H:%M:%S"))
            stamp_utc = stamp + int(got["timestamp"][20:23]) / 1000
            assert before - 1 <= stamp_utc <= after + 1

            sent_stamps = ["2001-02-03T04:05:06.789Z", "not a time at all", "2026-01-01T00:00:00Z"]
            for seq, ts in enumerate(sent_stamps, start=2):
                await src.send({"type": "y", "timestamp": ts, "seq": "s", "b": [1]})
                await expect_ack(src, seq, 1)
                got = await recv_json(ws)
                assert list(got) == ["type", "timestamp", "seq", "b"]
                assert got == {"type": "y", "timestamp": ts, "seq": seq, "b": [1]}

    run(body())


def test_unknown_types_and_extra_fields_pass_through_unchanged() -> None:
    """Everything a source sends is broadcast with equal values and in the same key order."""

    huge = int("9" * 4300)  # the longest integer Python's default limit converts
    events: list[dict[str, Any]] = [
        {
            "type": "custom.thing:v1-x",
            "zeta": "first key",
            "nested": {"a": [1, 2.5, {"b": None, "c": True, "d": False}], "z": {}, "e": []},
            "unicode": "héllo wörld ✓ 😀 \u0000 \u2028 \t\"'\\",
            "big": 2**64 + 1,
            "neg": -(2**63),
            "huge": huge,
            "floats": [0.1, 1e308, -2.5e-308, 5e-324, 1.7976931348623157e308, -0.0, 3.0],
            "alpha": "after zeta",
            "": "empty key",
        },
        {
            "type": "step_completed",
            "skill_name": "s",
            "step_name": "compile",
            "step_index": 0,
            "extra": {"deep": [{"k": "v"}]},
            "duration_ms": 12.5,
            "result": {"any": ["json", 1, None]},
        },
        {"type": "a" * 64},
        {"type": "deep.but.fine", "v": json.loads("[" * 500 + "]" * 500)},
    ]

    async def body() -> None:
        async with (
            daemon() as d,
            client(d) as ws,
            await Source.connect(sock_path(d), hello=HELLO_ACKS) as src,
        ):
            for seq, sent in enumerate(events, start=1):
                await src.send(sent)
                await expect_ack(src, seq, 1)
                got = await recv_json(ws)
                assert list(got) == [*sent, "seq", "timestamp"]
                body_only = without_stamps(got)
                assert body_only == sent
                # Same types and float spellings too (1 is not 1.0, -0.0 stays -0.0).
                assert json.dumps(body_only) == json.dumps(sent)
            # A surrogate pair escape is the character it stands for.
            await src.send_raw(b'{"type":"esc","v":"\\ud83d\\ude00\\u00e9"}\n')
            await expect_ack(src, len(events) + 1, 1)
            got = await recv_json(ws)
            assert got["v"] == "😀é"

    run(body())


# -- 5. a 100 MB line does not make the daemon buffer it -----------------------------


def test_huge_line_streamed_is_refused_without_buffering() -> None:
    """A 100 MB line is answered with line_too_long before it ends, in bounded memory."""
    limit = 1024

    async def body() -> None:
        async with (
            daemon(sources={"max_line_bytes": limit}) as d,
            await Source.connect(sock_path(d), hello=HELLO_ACKS) as src,
        ):
            conn = only_source(d)
            rss_before = rss_bytes()
            rss_peak = rss_before
            buffered_peak = 0
            await src.send_raw(b'{"type":"big","pad":"')
            error: dict[str, Any] | None = None
            for chunk in same_chunk(100 << 20, 1 << 20):
                await src.send_raw(chunk)
                buffered_peak = max(buffered_peak, conn._framer.buffered)
                rss_peak = max(rss_peak, rss_bytes())
                if error is None:
                    # Answered while the line is still arriving: it was never held whole.
                    error = await expect_error(src, "line_too_long", 2)
            await src.send_raw(b'"}\n')
            await src.send(PROBE)
            await expect_ack(src, 1, 0)
            assert error is not None
            assert buffered_peak <= limit + 1
            assert rss_peak - rss_before < 30 << 20, (rss_before, rss_peak)
            assert conn._framer.buffered == 0
            assert conn.errors == 1

    run(body())


# -- 6. socket setup --------------------------------------------------------------


def test_socket_dir_0700_socket_0600_and_removed_on_stop() -> None:
    """The missing directory is created 0700, the socket 0600; the socket goes on stop."""

    async def body() -> None:
        with short_tmpdir() as tmp:
            path = tmp / "run" / "aaeventd" / "ev.sock"
            cfg = make_config(tmp, sources={"socket_path": str(path)})
            old = os.umask(0o022)  # the daemon must not depend on a strict umask
            try:
                async with running_daemon(cfg) as d:
                    assert d.socket_path == path
                    st = os.stat(path)
                    assert stat.S_ISSOCK(st.st_mode)
                    assert stat.S_IMODE(st.st_mode) == 0o600
                    assert stat.S_IMODE(os.stat(path.parent).st_mode) == 0o700
                    async with await Source.connect(path, hello=HELLO_ACKS) as src:
                        await src.send(PROBE)
                        await expect_ack(src, 1, 0)
            finally:
                os.umask(old)
            assert not path.exists()
            assert path.parent.is_dir()

    run(body())


def test_stale_socket_is_replaced() -> None:
    """A socket file nobody listens on any more is replaced."""

    async def body() -> None:
        with short_tmpdir() as tmp:
            path = tmp / "ev.sock"
            stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            stale.bind(str(path))
            stale.listen(1)
            stale.close()  # closed without unlinking: the file stays
            assert stat.S_ISSOCK(os.lstat(path).st_mode)
            async with (
                running_daemon(make_config(tmp)) as d,
                await Source.connect(sock_path(d), hello=HELLO_ACKS) as src,
            ):
                await src.send(PROBE)
                await expect_ack(src, 1, 0)
                assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
            assert not path.exists()

    run(body())


def test_live_socket_is_not_replaced() -> None:
    """A socket another process still listens on makes start fail and stays working."""

    async def body() -> None:
        loop = asyncio.get_running_loop()
        with short_tmpdir() as tmp:
            path = tmp / "ev.sock"
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as live:
                live.bind(str(path))
                live.listen(8)
                live.setblocking(False)
                inode = os.stat(path).st_ino
                with pytest.raises(StartupError) as info:
                    async with running_daemon(make_config(tmp)):
                        pass
                assert str(path) in str(info.value)
                assert os.stat(path).st_ino == inode
                # The other listener still gets our connections and data.
                with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as peer:
                    peer.setblocking(False)
                    await loop.sock_connect(peer, str(path))
                    await loop.sock_sendall(peer, b"ping")
                    received = b""
                    for _ in range(3):  # the daemon's own probe may be queued first
                        conn, _ = await asyncio.wait_for(loop.sock_accept(live), TIMEOUT)
                        with conn:
                            received = await asyncio.wait_for(loop.sock_recv(conn, 16), TIMEOUT)
                        if received:
                            break
                    assert received == b"ping"

    run(body())


def test_regular_file_at_socket_path_is_refused_and_kept() -> None:
    """A file that is not a socket is never replaced: start fails, the file is untouched."""

    async def body() -> None:
        with short_tmpdir() as tmp:
            path = tmp / "ev.sock"
            path.write_bytes(b"precious data\n")
            with pytest.raises(StartupError) as info:
                async with running_daemon(make_config(tmp)):
                    pass
            assert str(path) in str(info.value)
            assert path.read_bytes() == b"precious data\n"
            assert stat.S_ISREG(os.lstat(path).st_mode)

    run(body())


# -- 7. a source that never reads its replies ----------------------------------------


def test_source_that_never_reads_replies_is_bounded() -> None:
    """Replies to a non-reading source are dropped past a limit; others are still served."""
    lines = 100_000

    async def body() -> None:
        loop = asyncio.get_running_loop()
        async with daemon() as d, client(d) as ws:
            raw = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
                raw.setblocking(False)
                await loop.sock_connect(raw, str(sock_path(d)))
                ingest_logger = logging.getLogger("aaeventd.ingest")
                old_level = ingest_logger.level
                ingest_logger.setLevel(logging.ERROR)  # 100k WARNING lines are just slow
                try:
                    await loop.sock_sendall(raw, b"x\n" * lines)
                    await loop.sock_sendall(raw, b'{"type":"after.flood"}\n')
                    # Barrier: the event after the flood reaches the client.
                    event = await recv_json(ws)
                finally:
                    ingest_logger.setLevel(old_level)
                assert (event["type"], event["seq"]) == ("after.flood", 1)
                flooder = only_source(d)
                assert flooder.errors == lines
                assert flooder.events_accepted == 1
                assert flooder.dropped_replies > 0
                assert d.ingest.dropped_replies == flooder.dropped_replies
                assert flooder.transport is not None
                assert flooder.transport.get_write_buffer_size() <= REPLY_BUFFER_LIMIT + 256
                # Another source and the client are served at once.
                async with await Source.connect(sock_path(d), hello=HELLO_ACKS) as other:
                    await other.send({"type": "still.served"})
                    ack = await other.recv(timeout=PROMPT)
                    assert ack == {"type": "ack", "seq": 2, "delivered": 1}
                    got = await recv_json(ws, timeout=PROMPT)
                    assert (got["type"], got["seq"]) == ("still.served", 2)
            finally:
                raw.close()

    run(body())


# -- 8. peer credentials ----------------------------------------------------------


def test_peer_pid_and_uid_are_recorded_and_logged() -> None:
    """SO_PEERCRED pid/uid are kept per source and go into the log."""

    async def body() -> None:
        with capture_logs(logging.INFO) as records:
            async with daemon() as d, await Source.connect(sock_path(d), hello=HELLO_ACKS):
                src = only_source(d)
                assert (src.pid, src.uid, src.gid) == (os.getpid(), os.getuid(), os.getgid())
                assert src.name == "test-source"
                views = d.front.status.clients_view()["sources"]
                assert [(v["pid"], v["uid"], v["name"]) for v in views] == [
                    (os.getpid(), os.getuid(), "test-source")
                ]
        connected = [
            r.message
            for r in records
            if r.logger == "aaeventd.ingest" and "source connected" in r.message
        ]
        assert len(connected) == 1, [r.message for r in records]
        assert f"pid={os.getpid()}" in connected[0]
        assert f"uid={os.getuid()}" in connected[0]

    run(body())


# -- 9. max_connections ------------------------------------------------------------


def test_connection_past_max_connections_gets_overloaded_and_eof() -> None:
    """Past sources.max_connections a new source gets one overloaded line and EOF."""

    async def body() -> None:
        async with (
            daemon(sources={"max_connections": 2}) as d,
            await Source.connect(sock_path(d), hello=HELLO_ACKS) as a,
            await Source.connect(sock_path(d), hello=HELLO_ACKS) as b,
            await Source.connect(sock_path(d)) as third,
        ):
            reply = await expect_error(third, "overloaded", None)
            assert set(reply) == {"type", "code", "message"}
            assert await asyncio.wait_for(third.reader.read(), TIMEOUT) == b""
            assert d.ingest.refused_overloaded == 1
            assert len(d.ingest.sources) == 2
            await a.send(PROBE)
            await expect_ack(a, 1, 0)
            await b.send(PROBE)
            await expect_ack(b, 2, 0)

    run(body())


# -- 10. logging -------------------------------------------------------------------


def test_one_info_log_line_per_event() -> None:
    """Each broadcast event gives exactly one INFO line: seq, type, pid, skill, step."""

    async def body() -> None:
        with capture_logs(logging.INFO) as records:
            async with (
                daemon() as d,
                await Source.connect(sock_path(d), hello=HELLO_ACKS) as src,
            ):
                await src.send({"type": "skill_started", "skill_name": "build"})
                await src.send(
                    {
                        "type": "step_started",
                        "skill_name": "build",
                        "step_name": "compile",
                        "step_index": 0,
                    }
                )
                await src.send_raw(b"bad line\n")
                await src.send({"type": "plain.event"})
                await expect_ack(src, 1, 0)
                await expect_ack(src, 2, 0)
                await expect_error(src, "invalid_json", 4)
                await expect_ack(src, 3, 0)
        lines = [
            r.message for r in records if r.logger == "aaeventd.events" and r.level == logging.INFO
        ]
        assert len(lines) == 3, lines
        pid = os.getpid()
        wanted = [
            ("1", "skill_started", "build", None),
            ("2", "step_started", "build", "compile"),
            ("3", "plain.event", None, None),
        ]
        for line, (seq, kind, skill, step) in zip(lines, wanted, strict=True):
            assert re.search(rf"\bseq={seq}\b", line), line
            assert f"type={kind} " in line, line
            assert f"pid={pid}" in line, line
            if skill is not None:
                assert f"skill={skill}" in line, line
            if step is not None:
                assert f"step={step}" in line, line

    run(body())


def test_redacted_fields_hidden_in_logs_but_broadcast_intact() -> None:
    """token/Password (nested, in lists) are *** in DEBUG logs and intact in the broadcast."""
    secrets = ["tok-VALUE-1", "pw-VALUE-2", "au-VALUE-3", "sec-VALUE-4"]
    sent: dict[str, Any] = {
        "type": "secret.test",
        "items": [{"token": secrets[0]}, {"deep": [{"Password": secrets[1]}]}],
        "AUTHORIZATION": secrets[2],
        "nested": {"Secret": {"inner": secrets[3]}},
        "keep": "visible-VALUE",
    }

    async def body() -> None:
        with capture_logs(logging.DEBUG) as records:
            async with (
                daemon(logging={"level": "DEBUG"}) as d,
                client(d) as ws,
                await Source.connect(sock_path(d), hello=HELLO_ACKS) as src,
            ):
                await src.send(sent)
                await expect_ack(src, 1, 1)
                got = await recv_json(ws)
                assert without_stamps(got) == sent
        text = "\n".join(r.text for r in records)
        for value in secrets:
            assert value not in text
        payload_lines = [
            r.message for r in records if r.logger == "aaeventd.events" and r.level == logging.DEBUG
        ]
        assert len(payload_lines) == 1, payload_lines
        assert "visible-VALUE" in payload_lines[0]
        assert payload_lines[0].count('"***"') == 4

    run(body())


def test_deeply_nested_event_logged_at_debug_keeps_the_connection() -> None:
    """A valid event nested 600 deep is acked and the source stays usable at DEBUG level."""
    deep = b'{"type":"deep.event","v":' + b"[" * 600 + b"]" * 600 + b"}\n"

    async def body() -> None:
        with capture_logs(logging.DEBUG):
            async with (
                daemon(logging={"level": "DEBUG"}) as d,
                client(d) as ws,
                await Source.connect(sock_path(d), hello=HELLO_ACKS) as src,
            ):
                await src.send_raw(deep + json.dumps(PROBE).encode() + b"\n")
                await expect_ack(src, 1, 1)
                await expect_ack(src, 2, 1)
                assert (await recv_json(ws))["type"] == "deep.event"
                assert (await recv_json(ws))["type"] == "probe.ok"
                assert d.counters.events_in == 2

    run(body())


# -- batching across sources (docs/performance.md) -------------------------------------


def test_lines_of_several_sources_in_one_loop_turn_are_one_batch() -> None:
    """Lines that three sources' reads bring in one turn of the loop reach a client in
    one write (one fan-out), in arrival order, each acked; a client that connects while
    the batch waits for its flush gets every event once (snapshot, then live)."""

    async def body() -> None:
        async with daemon() as d, client(d) as ws:
            batches: list[list[int]] = []
            fan_out = d.ws.fan_out

            def counting(batch: Any) -> list[int]:
                batches.append([s.seq for s in batch])
                return fan_out(batch)

            d.ws.fan_out = counting  # type: ignore[method-assign]
            sources = [await Source.connect(sock_path(d), hello=HELLO_ACKS) for _ in range(3)]
            try:
                # Written before the loop runs again: one epoll wakes all three reads.
                for n, src in enumerate(sources):
                    src.writer.write(json.dumps({"type": "batch.test", "n": n}).encode() + b"\n")
                for n, src in enumerate(sources):
                    await expect_ack(src, n + 1, 1)
                assert batches == [[1, 2, 3]], batches
                got = [await recv_json(ws) for _ in range(3)]
                assert [(e["seq"], e["n"]) for e in got] == [(1, 0), (2, 1), (3, 2)], got
                # Stamped, not yet flushed: a client connecting now sees it exactly once.
                sources[0].writer.write(b'{"type":"batch.test","n":3}\n')
                deadline = time.monotonic() + TIMEOUT
                while d.hub.last_seq < 4:  # one turn at a time: the read, then the flush
                    assert time.monotonic() < deadline, "the line was never read"
                    await asyncio.sleep(0)
                assert d._batch, "the flush runs at the end of the turn"
                # A new client (registered after open_stream returns) asks for everything.
                start = d.open_stream(cast(ClientSession, None), 0, None)
                assert not d._batch, "a client's snapshot flushes the batch first"
                assert start.replay == (0, 4), start.replay
                assert batches[-1] == [4], batches
            finally:
                for src in sources:
                    await src.close()

    run(body())
