"""Tests for the WebSocket side (PROTOCOL §2.1-§2.3): aaeventd.daemon.wsserver with the app.

Everything is real: the in-process daemon, sources on its Unix socket, websockets
clients on its TCP port.  "Nothing else arrived" is proved with a heartbeat barrier:
frames are written to a client in order, so everything sent before the
``heartbeat_ack`` has arrived by the time it does.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
from collections.abc import AsyncIterator
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from aaeventd import __version__
from aaeventd.daemon.app import Daemon
from tests.support import (
    TIMEOUT,
    Source,
    recv_json,
    run,
    ws_connect,
)
from tests.support import (
    connected_client as client,
)
from tests.support import (
    private_daemon as daemon,
)

HELLO = {"type": "hello", "name": "ws-tests", "acks": True}


# -- helpers -----------------------------------------------------------------------


@contextlib.asynccontextmanager
async def source(d: Daemon) -> AsyncIterator[Source]:
    """A source that asked for acks."""
    src = await Source.connect(d.socket_path, hello=HELLO)
    async with src:
        yield src


async def emit(src: Source, event: dict[str, Any]) -> dict[str, Any]:
    """Send one event and return its ack (sent only after the fan-out)."""
    await src.send(event)
    reply = await src.recv()
    assert reply["type"] == "ack", reply
    return reply


async def emit_many(src: Source, events: list[dict[str, Any]]) -> list[int]:
    return [(await emit(src, e))["seq"] for e in events]


async def barrier(ws: ClientConnection) -> list[dict[str, Any]]:
    """Every frame that arrives before the reply to a heartbeat sent now."""
    await ws.send(json.dumps({"type": "heartbeat"}))
    frames = []
    async with asyncio.timeout(TIMEOUT):
        while True:
            msg = await recv_json(ws)
            if msg == {"type": "heartbeat_ack"}:
                return frames
            frames.append(msg)


async def recv_n_raw(ws: ClientConnection, n: int) -> list[str]:
    """The next ``n`` frames as raw text."""
    out: list[str] = []
    async with asyncio.timeout(TIMEOUT):
        while len(out) < n:
            raw = await ws.recv()
            assert isinstance(raw, str)
            out.append(raw)
    return out


def ticks(types: list[str]) -> list[dict[str, Any]]:
    return [{"type": t, "n": i} for i, t in enumerate(types)]


def seqs(frames: list[dict[str, Any]]) -> list[int]:
    return [f["seq"] for f in frames]


MIXED = ["skill_tick", "misc_tick"] * 5  # seq 1..10: odd seqs skill_tick, even misc_tick


# -- connected (§2.1.1) --------------------------------------------------------------


@pytest.mark.parametrize("path", ["/", "/ws"])
def test_connected_is_first_frame(path: str) -> None:
    """The first frame on / and /ws is `connected` with server, version, epoch and seq."""

    async def body() -> None:
        async with daemon() as d, source(d) as src:
            await emit_many(src, ticks(["a", "b", "c"]))
            async with client(d, path=path) as (ws, first):
                assert first == {
                    "type": "connected",
                    "server": "aaeventd",
                    "version": __version__,
                    "epoch": d.hub.epoch,
                    "seq": 3,
                    "running_skills": [],
                    "pending_confirmations": [],
                }
                assert isinstance(first["epoch"], str)
                assert first["epoch"] != ""
                assert await barrier(ws) == []

    run(body())


def test_connected_on_fresh_daemon_has_seq_zero() -> None:
    """Before any event, `connected` carries seq 0 and empty lists."""

    async def body() -> None:
        async with daemon() as d, client(d) as (_, first):
            assert first["seq"] == 0
            assert first["running_skills"] == []
            assert first["pending_confirmations"] == []

    run(body())


def test_connected_lists_running_skill_until_completed() -> None:
    """A started skill shows with its current step; after skill_completed it is gone."""

    async def body() -> None:
        async with daemon() as d, source(d) as src:
            await emit(
                src,
                {
                    "type": "skill_started",
                    "skill_id": "sk-1",
                    "skill_name": "start_work",
                    "total_steps": 5,
                },
            )
            await emit(
                src,
                {
                    "type": "step_started",
                    "skill_id": "sk-1",
                    "step_name": "fetch_issue",
                    "step_index": 2,
                },
            )
            async with client(d) as (_, first):
                assert first["seq"] == 2
                [skill] = first["running_skills"]
                started_at = skill.pop("started_at")
                assert isinstance(started_at, str)
                assert started_at.endswith("Z")
                assert skill == {
                    "skill_id": "sk-1",
                    "skill_name": "start_work",
                    "session_id": None,
                    "total_steps": 5,
                    "current_step": 2,
                    "current_step_name": "fetch_issue",
                    "status": "running",
                }
            await emit(
                src, {"type": "step_failed", "skill_id": "sk-1", "step_name": "x", "step_index": 2}
            )
            async with client(d) as (_, first):
                assert [s["skill_id"] for s in first["running_skills"]] == ["sk-1"]
            await emit(src, {"type": "skill_completed", "skill_id": "sk-1"})
            async with client(d) as (_, first):
                assert first["seq"] == 4
                assert first["running_skills"] == []

    run(body())


def test_connected_lists_pending_confirmation() -> None:
    """A pending confirmation shows in `connected` with its prompt, options and timing."""

    async def body() -> None:
        async with daemon() as d, source(d) as src:
            ack = await emit(
                src,
                {
                    "type": "confirmation_required",
                    "id": "conf-1",
                    "message": "Deploy now?",
                    "options": ["yes", "no", "later"],
                    "timeout_seconds": 30,
                    "skill_id": "sk-1",
                    "step_name": "deploy",
                    "step_index": 3,
                    "claude_suggestion": "yes",
                },
            )
            assert ack["id"] == "conf-1"
            async with client(d) as (_, first):
                [pending] = first["pending_confirmations"]
                assert pending["id"] == "conf-1"
                assert pending["prompt"] == "Deploy now?"
                assert pending["message"] == "Deploy now?"
                assert pending["options"] == ["yes", "no", "later"]
                assert pending["timeout_seconds"] == 30
                assert pending["skill_id"] == "sk-1"
                assert pending["step_name"] == "deploy"
                assert pending["step_index"] == 3
                assert pending["claude_suggestion"] == "yes"
                assert 0 < pending["remaining_seconds"] <= 30
                assert isinstance(pending["created_at"], str)

    run(body())


# -- live events (§2.1.2) ------------------------------------------------------------


def test_live_event_is_the_source_object_plus_seq_and_timestamp() -> None:
    """A live event arrives as sent (same keys, same order) plus seq and timestamp."""

    async def body() -> None:
        sent: dict[str, Any] = {
            "type": "custom.thing",
            "zeta": 1,
            "alpha": {"nested": [1, 2.5, None, True], "ünï": "ç∑"},
            "seq": 999,  # overwritten in place
            "empty": {},
        }
        async with daemon() as d, client(d) as (ws, _), source(d) as src:
            await emit(src, sent)
            got = await recv_json(ws)
            assert list(got) == [*sent.keys(), "timestamp"]
            timestamp = got.pop("timestamp")
            assert isinstance(timestamp, str)
            assert timestamp.endswith("Z")
            assert got == {**sent, "seq": 1}
            # A source's own timestamp is kept untouched.
            await emit(src, {"type": "x", "timestamp": "2020-01-01T00:00:00Z"})
            assert await recv_json(ws) == {
                "type": "x",
                "timestamp": "2020-01-01T00:00:00Z",
                "seq": 2,
            }

    run(body())


def test_two_clients_get_identical_streams_from_two_sources() -> None:
    """Two clients receive byte-identical frames, in seq order, from two busy sources."""

    async def body() -> None:
        per_source = 250
        async with (
            daemon() as d,
            client(d) as (ws_a, _),
            client(d) as (ws_b, _),
        ):
            src_1 = await Source.connect(d.socket_path)
            src_2 = await Source.connect(d.socket_path)
            async with src_1, src_2:

                async def pump(src: Source, name: str) -> None:
                    for base in range(0, per_source, 10):
                        lines = b"".join(
                            json.dumps({"type": "tick", "src": name, "n": i}).encode() + b"\n"
                            for i in range(base, base + 10)
                        )
                        await src.send_raw(lines)

                frames_a, frames_b, _, _ = await asyncio.gather(
                    recv_n_raw(ws_a, 2 * per_source),
                    recv_n_raw(ws_b, 2 * per_source),
                    pump(src_1, "one"),
                    pump(src_2, "two"),
                )
            assert frames_a == frames_b
            decoded = [json.loads(f) for f in frames_a]
            assert seqs(decoded) == list(range(1, 2 * per_source + 1))
            for name in ("one", "two"):
                ns = [e["n"] for e in decoded if e["src"] == name]
                assert ns == list(range(per_source))
            assert await barrier(ws_a) == []
            assert await barrier(ws_b) == []

    run(body())


# -- filters (§2, §2.2) --------------------------------------------------------------


def test_types_query_filters_with_globs() -> None:
    """`types=skill_*,heal_*` delivers only matching types."""

    async def body() -> None:
        async with daemon() as d, client(d, "types=skill_*,heal_*") as (ws, _), source(d) as src:
            await emit_many(
                src,
                [
                    {"type": "skill_started", "skill_name": "s"},
                    {"type": "persona_changed", "persona": "dev"},
                    {"type": "heal_started"},
                    {"type": "step_started", "skill_name": "s", "step_name": "a", "step_index": 0},
                    {"type": "my_skill_thing"},
                    {"type": "skill_completed", "skill_name": "s"},
                ],
            )
            frames = await barrier(ws)
            assert [(f["type"], f["seq"]) for f in frames] == [
                ("skill_started", 1),
                ("heal_started", 3),
                ("skill_completed", 6),
            ]

    run(body())


def test_subscribe_replaces_the_filter() -> None:
    """`subscribe` replies `subscribed`, replaces the filter, and `[]` means all."""

    async def body() -> None:
        async with daemon() as d, client(d, "types=skill_*") as (ws, _), source(d) as src:
            await ws.send(json.dumps({"type": "subscribe", "types": ["persona_*", "tool?_*"]}))
            assert await recv_json(ws) == {"type": "subscribed", "types": ["persona_*", "tool?_*"]}
            await emit_many(
                src,
                [
                    {"type": "skill_started", "skill_name": "s"},
                    {"type": "persona_changed", "persona": "dev"},
                    {"type": "tools_list_changed"},
                ],
            )
            assert [f["type"] for f in await barrier(ws)] == [
                "persona_changed",
                "tools_list_changed",
            ]
            await ws.send(json.dumps({"type": "subscribe", "types": []}))
            assert await recv_json(ws) == {"type": "subscribed", "types": []}
            await emit_many(src, ticks(["skill_x", "other", "persona_changed_x"]))
            assert seqs(await barrier(ws)) == [4, 5, 6]

    run(body())


def test_control_replies_are_never_filtered() -> None:
    """With a filter matching nothing, heartbeat_ack, subscribed, error, replay_gap arrive."""

    async def body() -> None:
        async with daemon() as d, source(d) as src:
            await emit_many(src, ticks(["a", "b"]))
            async with client(d, "types=nothing_*&since=0&epoch=elsewhere") as (ws, _):
                assert await recv_json(ws) == {
                    "type": "replay_gap",
                    "reason": "epoch_changed",
                    "from": None,
                    "to": None,
                }
                await emit(src, {"type": "a"})
                assert await barrier(ws) == []
                await ws.send("{")
                error = await recv_json(ws)
                assert error["type"] == "error"
                assert error["code"] == "invalid_json"
                await ws.send(json.dumps({"type": "subscribe", "types": ["still_nothing"]}))
                assert await recv_json(ws) == {"type": "subscribed", "types": ["still_nothing"]}

    run(body())


# -- client messages (§2.2) ------------------------------------------------------------


def test_heartbeat_gets_heartbeat_ack() -> None:
    """`heartbeat` is answered with exactly `{"type":"heartbeat_ack"}`."""

    async def body() -> None:
        async with daemon() as d, client(d) as (ws, _):
            for _ in range(3):
                await ws.send('{"type":"heartbeat"}')
                assert await recv_json(ws) == {"type": "heartbeat_ack"}

    run(body())


BAD_MESSAGES = [
    ("not json", "invalid_json"),
    ('{"type": "heartbeat",}', "invalid_json"),
    ('{"type": "heartbeat", "x": NaN}', "invalid_json"),
    ("", "invalid_json"),
    ("[1, 2]", "not_an_object"),
    ('"heartbeat"', "not_an_object"),
    ("null", "not_an_object"),
    ('{"type": "bogus"}', "unknown_message"),
    ('{"id": "conf-1", "response": "yes"}', "unknown_message"),
    ('{"type": 7}', "unknown_message"),
    ('{"type": "subscribe", "types": "skill_*"}', "unknown_message"),
    ('{"type": "pause_timer", "id": "nope"}', "unknown_confirmation"),
    ('{"type": "resume_timer", "id": "nope"}', "unknown_confirmation"),
    ('{"type": "pause_timer"}', "unknown_confirmation"),
    ('{"type": "confirmation_response", "id": "nope", "response": "yes"}', "unknown_confirmation"),
    ('{"type": "confirmation_response", "id": "conf-1", "response": "maybe"}', "invalid_response"),
    ('{"type": "confirmation_response", "id": "conf-1"}', "invalid_response"),
    (
        '{"type": "confirmation_response", "id": "conf-1", "response": "yes", "remember": null}',
        "invalid_response",
    ),
    (
        '{"type": "confirmation_response", "id": "conf-1", "response": "yes", "remember": "bogus"}',
        "invalid_response",
    ),
]


@pytest.mark.parametrize(("message", "code"), BAD_MESSAGES)
def test_bad_client_message_gets_error_and_stays_open(message: str, code: str) -> None:
    """A bad message gets `{"type":"error","code":C,"message":M}`; the connection stays open."""

    async def body() -> None:
        async with daemon() as d, source(d) as src:
            await emit(src, {"type": "confirmation_required", "id": "conf-1", "message": "Go?"})
            async with client(d) as (ws, _):
                await ws.send(message)
                error = await recv_json(ws)
                assert set(error) == {"type", "code", "message"}
                assert error["type"] == "error"
                assert error["code"] == code
                assert isinstance(error["message"], str)
                assert error["message"] != ""
                assert await barrier(ws) == []
                # Still pending: the refused answer did not count.
                async with client(d) as (_, first):
                    assert [p["id"] for p in first["pending_confirmations"]] == ["conf-1"]

    run(body())


def test_valid_pause_and_resume_get_no_reply() -> None:
    """pause_timer / resume_timer for a pending id are silent (also when repeated)."""

    async def body() -> None:
        async with daemon() as d, source(d) as src:
            await emit(src, {"type": "confirmation_required", "id": "conf-1", "message": "Go?"})
            async with client(d) as (ws, _):
                for kind in ("pause_timer", "pause_timer", "resume_timer", "resume_timer"):
                    await ws.send(json.dumps({"type": kind, "id": "conf-1"}))
                    assert await barrier(ws) == []

    run(body())


def test_message_at_max_message_bytes_is_accepted() -> None:
    """A message of exactly websocket.max_message_bytes is processed normally."""

    async def body() -> None:
        async with daemon(websocket={"max_message_bytes": 2048}) as d, client(d) as (ws, _):
            skeleton = '{"type":"heartbeat","pad":""}'
            message = skeleton.replace('""', '"' + "x" * (2048 - len(skeleton)) + '"')
            assert len(message.encode()) == 2048
            await ws.send(message)
            assert await recv_json(ws) == {"type": "heartbeat_ack"}

    run(body())


def test_message_over_max_message_bytes_closes_1009() -> None:
    """A message one byte over websocket.max_message_bytes closes the connection with 1009."""

    async def body() -> None:
        async with daemon(websocket={"max_message_bytes": 2048}) as d, client(d) as (ws, _):
            skeleton = '{"type":"heartbeat","pad":""}'
            message = skeleton.replace('""', '"' + "x" * (2049 - len(skeleton)) + '"')
            assert len(message.encode()) == 2049
            await ws.send(message)
            with pytest.raises(ConnectionClosed):
                await asyncio.wait_for(ws.recv(), TIMEOUT)
            assert ws.close_code == 1009
            # The daemon is fine: a new client still connects.
            async with client(d) as (other, _):
                assert await barrier(other) == []

    run(body())


def test_reloaded_max_message_bytes_applies_to_open_and_new_connections() -> None:
    """A reload that lowers max_message_bytes closes an open client's big message with 1009."""

    async def body() -> None:
        async with daemon(websocket={"max_message_bytes": 65536}) as d, client(d) as (ws, _):
            d.apply_config(
                d.config.model_copy(
                    update={
                        "websocket": d.config.websocket.model_copy(
                            update={"max_message_bytes": 2048}
                        )
                    }
                )
            )
            message = json.dumps({"type": "heartbeat", "pad": "x" * 3000})
            await ws.send(message)
            with pytest.raises(ConnectionClosed):
                await asyncio.wait_for(ws.recv(), TIMEOUT)
            assert ws.close_code == 1009
            async with client(d) as (fresh, _):
                await fresh.send(message)
                with pytest.raises(ConnectionClosed):
                    await asyncio.wait_for(fresh.recv(), TIMEOUT)
                assert fresh.close_code == 1009

    run(body())


def test_fragmented_message_over_max_message_bytes_closes_1009() -> None:
    """Fragments each under the limit but over it together close with 1009."""

    async def body() -> None:
        async with daemon(websocket={"max_message_bytes": 2048}) as d, client(d) as (ws, _):
            await ws.send(['{"type":"heartbeat","pad":"' + "x" * 1200, "x" * 1200 + '"}'])
            with pytest.raises(ConnectionClosed):
                await asyncio.wait_for(ws.recv(), TIMEOUT)
            assert ws.close_code == 1009

    run(body())


# -- replay (§2.3) -------------------------------------------------------------------


@pytest.mark.parametrize("with_epoch", [False, True])
def test_replay_since_then_live_without_gap_or_duplicate(with_epoch: bool) -> None:
    """since=N replays exactly the matching events with seq > N, then live events follow."""

    async def body() -> None:
        async with daemon() as d, source(d) as src:
            await emit_many(src, ticks(MIXED))
            query = "since=4&types=skill_*" + (f"&epoch={d.hub.epoch}" if with_epoch else "")
            async with client(d, query) as (ws, first):
                assert first["seq"] == 10
                replayed = await barrier(ws)
                assert seqs(replayed) == [5, 7, 9]
                assert {f["type"] for f in replayed} == {"skill_tick"}
                await emit_many(src, ticks(["skill_tick", "misc_tick", "skill_tick"]))
                assert seqs(await barrier(ws)) == [11, 13]

    run(body())


@pytest.mark.parametrize("since", [10, 11, 1000])
def test_replay_since_at_or_past_current_seq_replays_nothing(since: int) -> None:
    """since >= the current seq replays nothing; live events then flow as usual."""

    async def body() -> None:
        async with daemon() as d, source(d) as src:
            await emit_many(src, ticks(MIXED))
            async with client(d, f"since={since}") as (ws, first):
                assert first["seq"] == 10
                assert await barrier(ws) == []
                await emit(src, {"type": "live"})
                assert seqs(await barrier(ws)) == [11]

    run(body())


def test_replay_with_other_epoch_sends_epoch_changed_gap_only() -> None:
    """A different epoch gets replay_gap epoch_changed (from/to null) and no replay."""

    async def body() -> None:
        async with daemon() as d, source(d) as src:
            await emit_many(src, ticks(MIXED))
            async with client(d, "since=3&epoch=not-this-one") as (ws, _):
                assert await recv_json(ws) == {
                    "type": "replay_gap",
                    "reason": "epoch_changed",
                    "from": None,
                    "to": None,
                }
                assert await barrier(ws) == []
                await emit(src, {"type": "live"})
                assert seqs(await barrier(ws)) == [11]

    run(body())


@pytest.mark.parametrize(
    ("ring", "since", "gap", "replayed"),
    [
        (5, 0, (1, 5), [6, 7, 8, 9, 10]),
        (5, 2, (3, 5), [6, 7, 8, 9, 10]),
        (5, 5, None, [6, 7, 8, 9, 10]),
        (5, 7, None, [8, 9, 10]),
        (0, 0, (1, 10), []),
    ],
)
def test_replay_without_journal_reports_evicted_gap(
    ring: int, since: int, gap: tuple[int, int] | None, replayed: list[int]
) -> None:
    """Without a journal, events gone from the ring are announced by replay_gap evicted."""

    async def body() -> None:
        async with (
            daemon(events={"replay_buffer": ring}, journal={"enabled": False}) as d,
            source(d) as src,
        ):
            await emit_many(src, ticks(MIXED))
            async with client(d, f"since={since}") as (ws, _):
                frames = await barrier(ws)
                if gap is not None:
                    assert frames[0] == {
                        "type": "replay_gap",
                        "reason": "evicted",
                        "from": gap[0],
                        "to": gap[1],
                    }
                    frames = frames[1:]
                assert seqs(frames) == replayed
                await emit(src, {"type": "live"})
                assert seqs(await barrier(ws)) == [11]

    run(body())


@pytest.mark.parametrize(
    ("query", "expected"), [("", list(range(1, 11))), ("types=misc_*", [2, 4, 6, 8, 10])]
)
def test_replay_from_journal_and_ring_has_no_gap(query: str, expected: list[int]) -> None:
    """With the journal, since=0 replays 1..10 from journal + a 3-event ring, byte for byte."""

    async def body() -> None:
        async with (
            daemon(events={"replay_buffer": 3}) as d,
            client(d, query) as (live, _),
            source(d) as src,
        ):
            await emit_many(src, ticks(MIXED))
            assert d.hub.oldest_in_ring == 8  # 1..7 can only come from the journal
            live_frames = await recv_n_raw(live, len(expected))
            async with client(d, "since=0&" + query) as (ws, _):
                replay_frames = await recv_n_raw(ws, len(expected))
                assert replay_frames == live_frames
                assert seqs([json.loads(f) for f in replay_frames]) == expected
                assert await barrier(ws) == []
                await emit(src, {"type": "misc_live"})
                assert seqs(await barrier(ws)) == [11]

    run(body())


def test_replay_while_events_flow_has_no_gap_or_duplicate() -> None:
    """A client joining with since=0 while a source streams gets every seq exactly once."""

    def seqs_of(frames: list[str]) -> list[int]:
        return [json.loads(f)["seq"] for f in frames]

    async def body() -> None:
        async with daemon() as d, client(d) as (watcher, _), source(d) as src:
            stop = asyncio.Event()

            async def pump() -> int:
                sent = 0
                while not stop.is_set():
                    await src.send_raw(
                        b"".join(b'{"type":"tick","n":%d}\n' % i for i in range(sent, sent + 5))
                    )
                    for _ in range(5):
                        assert (await src.recv())["type"] == "ack"
                    sent += 5
                return sent

            pumping = asyncio.create_task(pump())
            try:
                seen = seqs_of(await recv_n_raw(watcher, 50))
                async with client(d, "since=0") as (ws, first):
                    joined_at = first["seq"]
                    # Let the stream go on well past the join before stopping it.
                    seen += seqs_of(await recv_n_raw(watcher, joined_at + 100 - len(seen)))
                    stop.set()
                    total = await pumping
                    seen += seqs_of(await recv_n_raw(watcher, total - len(seen)))
                    got = seqs_of(await recv_n_raw(ws, total))
                    assert await barrier(ws) == []
            finally:
                pumping.cancel()
            assert 50 <= joined_at <= total - 100
            assert got == list(range(1, total + 1))
            assert seen == list(range(1, total + 1))

    run(body())


# -- slow consumers (§2.3) -----------------------------------------------------------


async def metric_value(d: Daemon, name: str) -> str:
    """The value of an unlabelled metric, read over real HTTP from /metrics."""
    reader, writer = await asyncio.open_connection("127.0.0.1", d.ws_port)
    try:
        writer.write(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\n\r\n")
        await writer.drain()
        data = await asyncio.wait_for(reader.read(), TIMEOUT)
    finally:
        writer.close()
        await writer.wait_closed()
    for line in data.decode().splitlines():
        if line.startswith(name + " "):
            return line.split(" ", 1)[1]
    raise AssertionError(f"{name} not in /metrics")


async def read_until_closed(ws: ClientConnection) -> list[int]:
    """The seqs of every frame a client still gets before the server's close."""
    out: list[int] = []
    async with asyncio.timeout(TIMEOUT):
        while True:
            try:
                raw = await ws.recv()
            except ConnectionClosed:
                return out
            out.append(json.loads(raw)["seq"])


def test_slow_consumer_closed_1013_while_others_get_everything() -> None:
    """A client that stops reading while 50,000 events flow is closed 1013 "slow consumer";
    the others get every event, and its reconnect with since= recovers the rest."""

    async def body() -> None:
        total, chunk = 50000, 250
        pad = "x" * 450
        async with (
            daemon(
                websocket={"slow_client_buffer_bytes": 65536, "ping_interval_seconds": None}
            ) as d,
            client(d) as (normal, _),
        ):
            # A small, fixed receive buffer (no autotuning), and a client that queues at
            # most one message before it stops reading its socket.
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.setblocking(False)
            try:
                await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", d.ws_port))
            except BaseException:
                sock.close()
                raise
            slow = await connect(
                f"ws://127.0.0.1:{d.ws_port}/", sock=sock, max_queue=1, ping_interval=None
            )
            async with slow:
                assert (await recv_json(slow))["type"] == "connected"
                src = await Source.connect(d.socket_path)
                async with src:
                    got: list[int] = []
                    for base in range(0, total, chunk):
                        await src.send_raw(
                            b"".join(
                                json.dumps({"type": "bulk", "n": i, "pad": pad}).encode() + b"\n"
                                for i in range(base, base + chunk)
                            )
                        )
                        # Pace the source on the normal client, so only the slow one lags.
                        for raw in await recv_n_raw(normal, chunk):
                            got.append(json.loads(raw)["seq"])
                    assert got == list(range(1, total + 1))
                    assert await barrier(normal) == []

                    slow_got = await read_until_closed(slow)
                    assert slow.close_code == 1013
                    assert slow.close_reason == "slow consumer"
                    assert 0 < len(slow_got) < total
                    assert slow_got == list(range(1, len(slow_got) + 1))

                    # The server notices the close; the counter and /metrics say so.
                    async with asyncio.timeout(TIMEOUT):
                        while (
                            await metric_value(d, "aaeventd_slow_client_disconnects_total") != "1"
                        ):
                            pass
                    assert d.ws.slow_closes == 1
                    assert len(d.ws.sessions) == 1

                    # Back with since=: everything it missed, nothing twice.
                    resumed = await ws_connect(d, f"since={slow_got[-1]}", max_size=None)
                    async with resumed:
                        assert (await recv_json(resumed))["type"] == "connected"
                        rest = [
                            json.loads(raw)["seq"]
                            for raw in await recv_n_raw(resumed, total - len(slow_got))
                        ]
                    assert slow_got + rest == list(range(1, total + 1))

    run(body())
