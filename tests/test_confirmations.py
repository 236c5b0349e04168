"""Confirmations (PROTOCOL §3) and the live state of §2.1, through real sockets.

An in-process daemon, sources on its Unix socket, websockets clients on its port.
Each numbered rule of §3 has its own test.  "Nothing else arrived" is proved with a
barrier: a client's ``heartbeat`` is answered after everything written to it before,
and a source's next event is acked after every reply written to it before.  Timeouts
that expire are sub-second; those that must not expire are far longer than any wait
(``LONG``), so no assertion depends on how fast a busy machine runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed

from aaeventd.daemon.app import Daemon
from tests.support import (
    FACTOR,
    TIMEOUT,
    Source,
    recv_json,
    recv_until,
    run,
)
from tests.support import (
    connected_client as client,
)
from tests.support import (
    private_daemon as daemon,
)

HELLO = {"type": "hello", "name": "confirm-tests", "acks": True}
RFC3339 = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")
# Sub-second countdowns, scaled like every other wait.
SHORT = 0.3 * FACTOR
# A countdown no test waits for: longer than any wait may take.
LONG = 30 * TIMEOUT


# -- helpers -----------------------------------------------------------------------


@contextlib.asynccontextmanager
async def source(d: Daemon, hello: dict[str, Any] | None = HELLO) -> AsyncIterator[Source]:
    async with await Source.connect(d.socket_path, hello=hello) as src:
        yield src


async def ask(src: Source, **fields: Any) -> dict[str, Any]:
    """Send a confirmation_required; its ack (asserted to be the next reply)."""
    await src.send({"type": "confirmation_required", "message": "Deploy?", **fields})
    ack = await src.recv()
    assert ack["type"] == "ack", ack
    return ack


async def barrier(ws: ClientConnection) -> list[dict[str, Any]]:
    """Every frame that was written to ``ws`` before a heartbeat sent now."""
    await ws.send(json.dumps({"type": "heartbeat"}))
    frames = []
    while (frame := await recv_json(ws))["type"] != "heartbeat_ack":
        frames.append(frame)
    return frames


async def source_barrier(src: Source) -> list[dict[str, Any]]:
    """Every reply written to ``src`` before the ack of an event sent now."""
    await src.send({"type": "barrier"})
    replies = []
    while (reply := await src.recv())["type"] != "ack":
        replies.append(reply)
    return replies


async def answer(ws: ClientConnection, cid: str, response: str, **extra: Any) -> None:
    msg = {"type": "confirmation_response", "id": cid, "response": response, **extra}
    await ws.send(json.dumps(msg))


async def send(ws: ClientConnection, kind: str, cid: str) -> None:
    await ws.send(json.dumps({"type": kind, "id": cid}))


def of_type(kind: str, cid: str | None = None) -> Any:
    return lambda m: m.get("type") == kind and (cid is None or m.get("id") == cid)


def stamped(frame: dict[str, Any]) -> dict[str, Any]:
    """``frame`` without the daemon's ``seq`` and ``timestamp`` (checked to be there)."""
    assert isinstance(frame.pop("seq"), int)
    assert RFC3339.fullmatch(frame.pop("timestamp"))
    return frame


async def frames_until_closed(ws: ClientConnection) -> list[dict[str, Any]]:
    """Every frame until the server closes the connection."""
    frames = []
    with contextlib.suppress(ConnectionClosed):
        while True:
            frames.append(await recv_json(ws))
    return frames


def session_id(d: Daemon, user_agent: str) -> str:
    (sid,) = [s.id for s in d.ws.sessions.values() if s.user_agent == user_agent]
    return sid


@contextlib.contextmanager
def captured(name: str) -> Iterator[list[logging.LogRecord]]:
    """Records of logger ``name`` at INFO and above (independent of caplog/propagation)."""
    records: list[logging.LogRecord] = []
    handler = logging.Handler(logging.INFO)
    handler.emit = records.append  # type: ignore[method-assign]
    logger = logging.getLogger(name)
    old_level = logger.level
    logger.setLevel(logging.INFO)
    logger.addHandler(handler)
    try:
        yield records
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)


# -- §3.1 the request ----------------------------------------------------------------


def test_id_is_assigned_as_uuid4_when_absent() -> None:
    """Without an id the daemon assigns a UUID4 string; ack and broadcast carry it."""

    async def body() -> None:
        async with daemon() as d, client(d) as (ws, _), source(d) as src:
            ack = await ask(src)
            cid = ack["id"]
            assert uuid.UUID(cid).version == 4
            assert str(uuid.UUID(cid)) == cid
            assert (await recv_json(ws))["id"] == cid
            assert (await ask(src))["id"] != cid

    run(body())


def test_id_sent_by_the_source_is_kept() -> None:
    """A source's own id is used as is."""

    async def body() -> None:
        async with daemon() as d, client(d) as (ws, _), source(d) as src:
            ack = await ask(src, id="deploy-42")
            assert ack["id"] == "deploy-42"
            assert (await recv_json(ws))["id"] == "deploy-42"

    run(body())


def test_pending_id_again_is_duplicate_confirmation() -> None:
    """A pending id again is duplicate_confirmation, not broadcast; reusable once answered."""

    async def body() -> None:
        async with daemon() as d, client(d) as (ws, _), source(d) as src:
            await ask(src, id="same")
            await src.send({"type": "confirmation_required", "message": "Again?", "id": "same"})
            error = await src.recv()
            assert error["type"] == "error"
            assert error["code"] == "duplicate_confirmation"
            assert error["line"] == 3  # hello, the first request, this one
            assert [f["type"] for f in await barrier(ws)] == ["confirmation_required"]
            await answer(ws, "same", "yes")
            await recv_until(ws, of_type("confirmation_answered", "same"))
            assert (await source_barrier(src))[0]["type"] == "confirmation_response"
            assert (await ask(src, id="same"))["id"] == "same"

    run(body())


def test_ack_carries_id_and_delivered_even_without_acks() -> None:
    """confirmation_required is always acked, with id and delivered, even without hello acks."""

    async def body() -> None:
        async with (
            daemon() as d,
            client(d) as (_all, _),
            client(d, "types=confirmation_*") as (_confirm, _),
            client(d, "types=skill_*") as (_skills, _),
            source(d, hello=None) as src,
        ):
            await src.send({"type": "tick"})
            ack = await ask(src, id="c1")  # the next reply: "tick" got none
            assert ack == {"type": "ack", "seq": 2, "delivered": 2, "id": "c1"}

    run(body())


def test_broadcast_carries_prompt_message_options_timeout_created_at() -> None:
    """The broadcast has prompt == message, default options and timeout, created_at."""

    async def body() -> None:
        async with (
            daemon(confirmations={"default_timeout_seconds": 45}) as d,
            client(d) as (ws, _),
            source(d) as src,
        ):
            fields = {"prompt": "Create branch?", "skill_id": "s1", "claude_suggestion": "yes"}
            await src.send({"type": "confirmation_required", **fields})
            ack = await src.recv()
            frame = stamped(await recv_json(ws))
            created_at = frame.pop("created_at")
            assert RFC3339.fullmatch(created_at)
            assert frame == {
                "type": "confirmation_required",
                "prompt": "Create branch?",
                "skill_id": "s1",
                "claude_suggestion": "yes",
                "message": "Create branch?",
                "options": ["yes", "no"],
                "timeout_seconds": 45.0,
                "id": ack["id"],
            }

    run(body())


def test_message_only_gets_prompt_and_given_options_are_kept() -> None:
    """``message`` alone gets ``prompt`` too; given options and timeout stay as sent."""

    async def body() -> None:
        async with daemon() as d, client(d) as (ws, _), source(d) as src:
            await ask(src, message="Retry?", options=["retry", "skip", "abort"], timeout_seconds=5)
            frame = await recv_json(ws)
            assert frame["prompt"] == frame["message"] == "Retry?"
            assert frame["options"] == ["retry", "skip", "abort"]
            assert frame["timeout_seconds"] == 5

    run(body())


# -- §3.2 answers ----------------------------------------------------------------------


def test_first_valid_answer_wins() -> None:
    """The first valid answer reaches the source and every client; a later one is unknown."""

    async def body() -> None:
        async with (
            daemon() as d,
            client(d, user_agent_header="ui-a/1") as (a, _),
            client(d, user_agent_header="ui-b/2") as (b, _),
            source(d) as src,
        ):
            cid = (await ask(src))["id"]
            await recv_json(a), await recv_json(b)
            await answer(a, cid, "no", remember="this-skill")
            assert await src.recv() == {
                "type": "confirmation_response",
                "id": cid,
                "response": "no",
                "remember": "this-skill",
            }
            expected = {
                "type": "confirmation_answered",
                "id": cid,
                "response": "no",
                "remember": "this-skill",
                "answered_by": {"client": session_id(d, "ui-a/1"), "user_agent": "ui-a/1"},
            }
            assert stamped(await recv_json(a)) == expected
            assert stamped(await recv_json(b)) == expected
            await answer(b, cid, "yes")
            error = await recv_json(b)
            assert error["type"] == "error"
            assert error["code"] == "unknown_confirmation"
            assert await source_barrier(src) == []  # no second response

    run(body())


def test_two_clients_racing_exactly_one_wins() -> None:
    """Two clients answering at once: one wins, the other gets unknown_confirmation."""

    async def body() -> None:
        async with (
            daemon() as d,
            client(d, user_agent_header="ui-a") as (a, _),
            client(d, user_agent_header="ui-b") as (b, _),
            source(d) as src,
        ):
            cid = (await ask(src))["id"]
            await recv_json(a), await recv_json(b)
            await asyncio.gather(answer(a, cid, "yes"), answer(b, cid, "no"))
            seen_a, seen_b = await asyncio.gather(barrier(a), barrier(b))
            response = await src.recv()
            assert response["type"] == "confirmation_response"
            winner, loser = ("ui-a", seen_b) if response["response"] == "yes" else ("ui-b", seen_a)
            errors = [f for f in loser if f["type"] == "error"]
            assert [e["code"] for e in errors] == ["unknown_confirmation"]
            for seen in (seen_a, seen_b):
                answered = [f for f in seen if f["type"] == "confirmation_answered"]
                assert len(answered) == 1
                assert answered[0]["response"] == response["response"]
                assert answered[0]["answered_by"] == {
                    "client": session_id(d, winner),
                    "user_agent": winner,
                }
            winner_seen = seen_a if winner == "ui-a" else seen_b
            assert [f for f in winner_seen if f["type"] == "error"] == []
            assert await source_barrier(src) == []

    run(body())


def test_response_not_in_options_is_invalid_response() -> None:
    """A response outside options is invalid_response and leaves it pending."""

    async def body() -> None:
        async with daemon() as d, client(d) as (ws, _), source(d) as src:
            cid = (await ask(src, options=["retry", "skip"]))["id"]
            await recv_json(ws)
            await answer(ws, cid, "yes")
            error = await recv_json(ws)
            assert (error["type"], error["code"]) == ("error", "invalid_response")
            await answer(ws, cid, "skip")
            assert (await src.recv())["response"] == "skip"

    run(body())


@pytest.mark.parametrize("remember", ["sometimes", None, 1, "", "ALWAYS"])
def test_bad_remember_is_invalid_response(remember: Any) -> None:
    """A remember value outside the four (null included) is invalid_response."""

    async def body() -> None:
        async with daemon() as d, client(d) as (ws, _), source(d) as src:
            cid = (await ask(src))["id"]
            await recv_json(ws)
            await answer(ws, cid, "yes", remember=remember)
            error = await recv_json(ws)
            assert (error["type"], error["code"]) == ("error", "invalid_response")
            assert await source_barrier(src) == []
            assert d.hub.pending_count == 1

    run(body())


@pytest.mark.parametrize("remember", ["none", "this-error", "this-skill", "always"])
def test_every_remember_value_is_passed_on(remember: str) -> None:
    """Each allowed ``remember`` reaches the source and the broadcast unchanged."""

    async def body() -> None:
        async with daemon() as d, client(d) as (ws, _), source(d) as src:
            cid = (await ask(src))["id"]
            await answer(ws, cid, "yes", remember=remember)
            assert (await src.recv())["remember"] == remember
            done = await recv_until(ws, of_type("confirmation_answered"))
            assert done["remember"] == remember

    run(body())


def test_remember_defaults_to_none() -> None:
    """An answer without ``remember`` is passed on with ``"remember": "none"``."""

    async def body() -> None:
        async with daemon() as d, client(d) as (ws, _), source(d) as src:
            cid = (await ask(src))["id"]
            await answer(ws, cid, "yes")
            assert (await src.recv())["remember"] == "none"
            done = await recv_until(ws, of_type("confirmation_answered"))
            assert done["remember"] == "none"

    run(body())


def test_unknown_id_is_unknown_confirmation_for_answer_pause_and_resume() -> None:
    """An id that is not pending gets unknown_confirmation for each of the three."""

    async def body() -> None:
        async with daemon() as d, client(d) as (ws, _):
            await answer(ws, "nope", "yes")
            await send(ws, "pause_timer", "nope")
            await send(ws, "resume_timer", "nope")
            frames = await barrier(ws)
            assert [(f["type"], f["code"]) for f in frames] == [
                ("error", "unknown_confirmation")
            ] * 3

    run(body())


def test_pause_twice_and_resume_running_are_silent_no_ops() -> None:
    """Pausing a paused confirmation and resuming a running one get no reply."""

    async def body() -> None:
        async with daemon() as d, client(d) as (ws, _), source(d) as src:
            cid = (await ask(src))["id"]
            await recv_json(ws)
            await send(ws, "resume_timer", cid)  # running: no-op
            await send(ws, "pause_timer", cid)
            await send(ws, "pause_timer", cid)  # paused: no-op
            await send(ws, "resume_timer", cid)
            await send(ws, "resume_timer", cid)  # running again: no-op
            assert await barrier(ws) == []
            assert d.hub.pending_count == 1

    run(body())


# -- §3.3 timeout, pause ---------------------------------------------------------------


def test_timeout_expires_to_source_and_broadcast() -> None:
    """Unanswered in time: confirmation_expired reason timeout to the source and clients."""

    async def body() -> None:
        async with daemon() as d, client(d) as (ws, _), source(d) as src:
            cid = (await ask(src, timeout_seconds=SHORT))["id"]
            expected = {"type": "confirmation_expired", "id": cid, "reason": "timeout"}
            assert await src.recv() == expected
            await recv_json(ws)  # the request
            assert stamped(await recv_json(ws)) == expected
            await answer(ws, cid, "yes")
            assert (await recv_json(ws))["code"] == "unknown_confirmation"

    run(body())


def test_timeout_with_default_carries_response() -> None:
    """With a ``default``, the expiry carries ``"response": default`` to both sides."""

    async def body() -> None:
        async with daemon() as d, client(d) as (ws, _), source(d) as src:
            cid = (await ask(src, timeout_seconds=SHORT, default="no"))["id"]
            expected = {
                "type": "confirmation_expired",
                "id": cid,
                "reason": "timeout",
                "response": "no",
            }
            assert await src.recv() == expected
            assert stamped(await recv_until(ws, of_type("confirmation_expired"))) == expected

    run(body())


# How paused time, resuming and max_pause_seconds move the deadline is the hub's
# arithmetic, tested on its injected clock: test_hub.py's
# test_pause_excludes_time_and_resume_restarts and test_pause_ends_by_itself_after_max_pause.
# Here only what the daemon adds: the messages reach the hub, and its deadline task wakes
# when a pause ends.  The countdowns are long, so no race with a busy machine's clock.


async def pending_entry(d: Daemon) -> dict[str, Any]:
    """The one pending confirmation, as a newly connected client's snapshot shows it."""
    async with client(d) as (_, snapshot):
        (entry,) = snapshot["pending_confirmations"]
    return entry


def test_pause_and_resume_from_a_client_stop_and_restart_the_countdown() -> None:
    """pause_timer stops the countdown every snapshot shows; resume_timer restarts it."""

    async def body() -> None:
        async with daemon() as d, client(d) as (ws, _), source(d) as src:
            await ask(src, id="c", timeout_seconds=LONG)
            await send(ws, "pause_timer", "c")
            assert [f["type"] for f in await barrier(ws)] == ["confirmation_required"]
            paused = await pending_entry(d)
            await send(ws, "resume_timer", "c")
            assert await barrier(ws) == []  # resuming did not expire it
            resumed = await pending_entry(d)
            assert (paused["paused"], resumed["paused"]) == (True, False), (paused, resumed)
            assert 0 < resumed["remaining_seconds"] <= paused["remaining_seconds"] <= LONG, (
                paused,
                resumed,
            )

    run(body())


def test_max_pause_seconds_ends_a_pause_by_itself() -> None:
    """A pause ends by itself after max_pause_seconds: the daemon wakes for it."""

    async def body() -> None:
        async with (
            daemon(confirmations={"max_pause_seconds": SHORT}) as d,
            client(d) as (ws, _),
            source(d) as src,
        ):
            await ask(src, id="c", timeout_seconds=LONG)
            await send(ws, "pause_timer", "c")
            await barrier(ws)
            loop = asyncio.get_running_loop()
            deadline, snapshots = loop.time() + TIMEOUT, 1
            while (entry := await pending_entry(d))["paused"] and loop.time() < deadline:
                snapshots += 1
            assert not entry["paused"], (
                f"still paused after {snapshots} snapshots over {TIMEOUT:g} s"
                f" (max_pause_seconds {SHORT:g})"
            )
            assert 0 < entry["remaining_seconds"] < LONG, entry
            assert await source_barrier(src) == []  # it ended the pause, not the countdown

    run(body())


# -- §3.4 source gone, §3.5 shutdown ---------------------------------------------------


def test_source_disconnect_expires_with_source_gone() -> None:
    """A source that disconnects: its confirmation expires with reason source_gone."""

    async def body() -> None:
        async with daemon() as d, client(d) as (ws, _):
            async with source(d) as src:
                cid = (await ask(src, default="yes"))["id"]
            done = await recv_until(ws, of_type("confirmation_expired"))
            assert stamped(done) == {
                "type": "confirmation_expired",
                "id": cid,
                "reason": "source_gone",
            }
            assert d.hub.pending_count == 0

    run(body())


def test_half_closed_source_still_gets_its_answer() -> None:
    """A source that half-closes while waiting still gets its answer, then EOF."""

    async def body() -> None:
        async with daemon() as d, client(d) as (ws, _), source(d) as src:
            cid = (await ask(src))["id"]
            src.writer.write_eof()
            await recv_json(ws)
            await answer(ws, cid, "yes")
            assert (await src.recv())["type"] == "confirmation_response"
            assert await asyncio.wait_for(src.reader.read(), TIMEOUT) == b""

    run(body())


def test_shutdown_expires_pending_and_tells_everyone_before_closing() -> None:
    """Shutdown expires each pending confirmation before sources and clients close."""

    async def body() -> None:
        async with daemon() as d, client(d) as (ws, _), source(d) as src:
            await ask(src, id="a", default="no")
            await ask(src, id="b")
            d.request_stop()
            assert await src.recv() == {
                "type": "confirmation_expired",
                "id": "a",
                "reason": "shutdown",
                "response": "no",
            }
            assert await src.recv() == {
                "type": "confirmation_expired",
                "id": "b",
                "reason": "shutdown",
            }
            assert await asyncio.wait_for(src.reader.read(), TIMEOUT) == b""
            frames = await frames_until_closed(ws)
            assert ws.close_code == 1001
            expired = [(f["id"], f["reason"]) for f in frames if f["type"].endswith("expired")]
            assert expired == [("a", "shutdown"), ("b", "shutdown")]

    run(body())


# -- the audit trail -------------------------------------------------------------------


def test_every_answer_writes_an_audit_line() -> None:
    """Each answer logs one aaeventd.audit line: id, response, client, user agent, prompt."""

    async def body() -> None:
        with captured("aaeventd.audit") as records:
            async with (
                daemon() as d,
                client(d, user_agent_header="ui-audit/3") as (ws, _),
                source(d) as src,
            ):
                cid = (await ask(src, message="Push to main?"))["id"]
                await answer(ws, cid, "nope")  # invalid: not a decision, not audited
                await answer(ws, cid, "yes", remember="always")
                await src.recv()
                client_id = session_id(d, "ui-audit/3")
        assert len(records) == 1
        line = records[0].getMessage()
        assert records[0].levelno == logging.INFO
        for part in (cid, "'yes'", "remember=always", client_id, "ui-audit/3", "'Push to main?'"):
            assert part in line, (part, line)

    run(body())


# -- §2.1 the late joiner's snapshot ---------------------------------------------------


def test_late_joiner_gets_pending_confirmations_with_remaining_seconds() -> None:
    """A late joiner sees pending confirmations with remaining_seconds going down."""

    async def body() -> None:
        async with daemon() as d, source(d) as src:
            cid = (
                await ask(
                    src,
                    message="Merge?",
                    options=["merge", "wait"],
                    timeout_seconds=30,
                    skill_id="s1",
                    skill_name="ship",
                    step_name="merge_pr",
                    step_index=3,
                    claude_suggestion="merge",
                )
            )["id"]
            async with client(d) as (_, first):
                (early,) = first["pending_confirmations"]
            # Time passes on the daemon's own clock: a short confirmation expires.
            await ask(src, timeout_seconds=SHORT)
            assert (await src.recv())["reason"] == "timeout"
            async with client(d) as (_, second):
                (late,) = second["pending_confirmations"]
        assert 30 - SHORT >= late["remaining_seconds"] > 0
        assert early["remaining_seconds"] - late["remaining_seconds"] >= SHORT * 0.9
        created_at = early.pop("created_at")
        assert RFC3339.fullmatch(created_at)
        assert late.pop("created_at") == created_at
        for entry in (early, late):
            entry.pop("remaining_seconds")
            assert entry == {
                "id": cid,
                "skill_id": "s1",
                "skill_name": "ship",
                "step_index": 3,
                "step_name": "merge_pr",
                "prompt": "Merge?",
                "message": "Merge?",
                "options": ["merge", "wait"],
                "claude_suggestion": "merge",
                "timeout_seconds": 30,
                "paused": False,
            }

    run(body())


async def events(src: Source, *items: dict[str, Any]) -> None:
    for item in items:
        await src.send(item)
        reply = await src.recv()
        assert reply["type"] == "ack", reply


def test_late_joiner_gets_running_skills_with_current_step() -> None:
    """``running_skills`` shows each running skill with its latest step_started."""

    async def body() -> None:
        async with daemon() as d, source(d) as src:
            await events(
                src,
                {"type": "skill_started", "skill_id": "s1", "skill_name": "start_work",
                 "total_steps": 5},
                {"type": "step_started", "skill_id": "s1", "step_name": "load", "step_index": 0},
                {"type": "step_completed", "skill_id": "s1", "step_name": "load",
                 "step_index": 0, "duration_ms": 12},
                {"type": "step_started", "skill_id": "s1", "step_name": "fetch_issue",
                 "step_index": 2},
                {"type": "step_failed", "skill_id": "s1", "step_name": "fetch_issue",
                 "step_index": 2, "error": "404"},
            )  # fmt: skip
            async with client(d) as (_, snapshot):
                (skill,) = snapshot["running_skills"]
        assert RFC3339.fullmatch(skill.pop("started_at"))
        assert skill == {
            "skill_id": "s1",
            "skill_name": "start_work",
            "session_id": None,
            "total_steps": 5,
            "current_step": 2,
            "current_step_name": "fetch_issue",
            "status": "running",
        }

    run(body())


@pytest.mark.parametrize("end", ["skill_completed", "skill_failed", "skill_error"])
def test_both_end_vocabularies_remove_a_running_skill(end: str) -> None:
    """skill_completed, skill_failed and skill_error (synonyms) all end a skill."""

    async def body() -> None:
        async with daemon() as d, source(d) as src:
            await events(
                src,
                {"type": "skill_started", "skill_id": "a", "skill_name": "one"},
                {"type": "skill_started", "skill_id": "b", "skill_name": "two"},
                {"type": end, "skill_id": "a"},
            )
            async with client(d) as (_, snapshot):
                assert [s["skill_id"] for s in snapshot["running_skills"]] == ["b"]

    run(body())


def test_running_skills_are_keyed_as_protocol_says() -> None:
    """Running skills are keyed and matched by skill_id, session_id, skill_name."""

    async def body() -> None:
        async with daemon() as d, source(d) as src:
            await events(
                src,
                {"type": "skill_started", "skill_name": "by_name"},
                {"type": "skill_started", "skill_name": "by_session", "session_id": "S"},
                {"type": "skill_started", "skill_name": "by_id", "skill_id": "I",
                 "total_steps": 2},
                {"type": "skill_started", "skill_name": "by_id", "skill_id": "I",
                 "total_steps": 9},
                # skill_id "X" matches nothing: skill_name finds "by_name".
                {"type": "step_started", "skill_id": "X", "skill_name": "by_name",
                 "step_name": "n", "step_index": 1},
                {"type": "step_started", "skill_name": "by_session", "session_id": "S",
                 "step_name": "s", "step_index": 4},
                {"type": "step_started", "skill_id": "I", "step_name": "i", "step_index": 7},
            )  # fmt: skip
            async with client(d) as (_, snapshot):
                skills = snapshot["running_skills"]
        view = [
            (s["skill_name"], s["total_steps"], s["current_step"], s["current_step_name"])
            for s in skills
        ]
        assert view == [
            ("by_name", None, 1, "n"),
            ("by_session", None, 4, "s"),
            ("by_id", 9, 7, "i"),
        ]

    run(body())


def test_at_most_100_running_skills_oldest_start_first_out() -> None:
    """The 101st running skill pushes out the one started first."""

    async def body() -> None:
        async with daemon() as d, source(d) as src:
            starts = [
                {"type": "skill_started", "skill_name": "s", "skill_id": f"k{n}"}
                for n in range(101)
            ]
            await events(src, *starts)
            async with client(d) as (_, snapshot):
                ids = [s["skill_id"] for s in snapshot["running_skills"]]
        assert ids == [f"k{n}" for n in range(1, 101)]

    run(body())


@pytest.mark.parametrize(
    "kind", ["heal_started", "auto_heal_triggered", "heal_completed", "auto_heal_completed"]
)
def test_both_heal_vocabularies_are_validated_and_passed_through(kind: str) -> None:
    """heal_* and auto_heal_* are validated alike and broadcast exactly as sent."""

    async def body() -> None:
        async with daemon() as d, client(d) as (ws, _), source(d) as src:
            event = {"type": kind, "tool_name": "git", "skill_id": "s1", "step_index": 2}
            await events(src, event)
            assert stamped(await recv_json(ws)) == event
            await src.send({**event, "step_index": "2"})
            error = await src.recv()
            assert (error["type"], error["code"]) == ("error", "invalid_event")

    run(body())


@pytest.mark.parametrize("kind", ["skill_error", "skill_failed"])
def test_both_skill_failure_names_are_validated(kind: str) -> None:
    """skill_error and skill_failed both need skill_id or skill_name."""

    async def body() -> None:
        async with daemon() as d, source(d) as src:
            await src.send({"type": kind, "error": "boom"})
            error = await src.recv()
            assert (error["type"], error["code"]) == ("error", "invalid_event")

    run(body())
