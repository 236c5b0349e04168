"""Running skills survive a daemon restart (PROTOCOL §2.1): rebuilt from the journal.

Real daemons, one after the other on the same journal, a real source and real
WebSocket clients: what a client that connects after the restart sees, and that the
rebuilt skill goes on (and ends) with the events sent after it.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

from aaeventd.daemon import replay
from aaeventd.daemon.hub import SKILL_IDLE_SECONDS
from aaeventd.daemon.journal import Journal
from aaeventd.daemon.replay import _parse, _peek, skill_history
from aaeventd.protocol.codec import rfc3339_utc
from tests.support import (
    Source,
    connected_client,
    make_config,
    recv_json,
    run,
    running_daemon,
    short_tmpdir,
)

HELLO = {"type": "hello", "name": "skill-engine", "acks": True}


async def send_all(path: Path | str, *events: dict[str, Any]) -> None:
    async with await Source.connect(path, hello=HELLO) as src:
        for event in events:
            await src.send(event)
            reply = await src.recv()
            assert reply["type"] == "ack", reply


def started(skill_id: str, **extra: Any) -> dict[str, Any]:
    return {
        "type": "skill_started",
        "skill_id": skill_id,
        "skill_name": "start_work",
        "total_steps": 3,
        **extra,
    }


def step(skill_id: str, index: int, name: str) -> dict[str, Any]:
    return {"type": "step_started", "skill_id": skill_id, "step_index": index, "step_name": name}


def test_running_skill_is_rebuilt_after_restart_and_finishes() -> None:
    """After a restart a new client sees the running skill at its step; it then ends."""

    async def body() -> None:
        with short_tmpdir() as tmp:
            config = make_config(tmp)
            old = rfc3339_utc(time.time() - SKILL_IDLE_SECONDS - 60)
            async with running_daemon(config) as d:
                await send_all(
                    d.socket_path,
                    started("live"),
                    step("live", 1, "fetch_issue"),
                    started("done"),
                    {"type": "skill_completed", "skill_id": "done"},
                    started("idle", timestamp=old),  # a source's own, an hour old
                )
            async with running_daemon(config) as d:
                async with connected_client(d) as (ws, first):
                    skills = first["running_skills"]
                    assert [s["skill_id"] for s in skills] == ["live"], skills
                    assert skills[0]["current_step"] == 1, skills[0]
                    assert skills[0]["current_step_name"] == "fetch_issue", skills[0]
                    assert skills[0]["total_steps"] == 3, skills[0]
                    await send_all(
                        d.socket_path,
                        step("live", 2, "push"),
                        {"type": "skill_completed", "skill_id": "live"},
                    )
                    assert (await recv_json(ws))["step_index"] == 2
                    assert (await recv_json(ws))["type"] == "skill_completed"
                async with connected_client(d) as (_, first):
                    stepped = first["running_skills"]
                    assert stepped == [], f"{len(stepped)} running after skill_completed"
            async with running_daemon(config) as d, connected_client(d) as (_, first):
                left = first["running_skills"]
                assert left == [], f"{len(left)} running after a second restart"

    run(body())


def test_skill_started_in_an_older_journal_file_is_found() -> None:
    """The backwards reader goes back across files to a long-running skill's start."""

    async def body() -> None:
        with short_tmpdir() as tmp:
            config = make_config(tmp, journal={"max_file_bytes": 4096})
            filler = [
                {
                    "type": "step_completed",
                    "skill_id": f"s{i}",
                    "step_index": 0,
                    "step_name": "x" * 200,
                    "duration_ms": 1,
                }
                for i in range(60)
            ]
            async with running_daemon(config) as d:
                await send_all(d.socket_path, started("long"), *filler, step("long", 4, "deploy"))
                files = d.journal.files() if d.journal is not None else []
            assert len(files) >= 3, f"{len(files)} journal files: no rotation to cross"
            async with running_daemon(config) as d, connected_client(d) as (_, first):
                skills = first["running_skills"]
                assert [(s["skill_id"], s["current_step"]) for s in skills] == [("long", 4)], skills

    run(body())


def test_reader_stops_past_the_idle_hour() -> None:
    """Once an hour back and every named skill started, older files are not read."""
    with short_tmpdir() as tmp:
        journal = Journal(tmp, max_file_bytes=4096, max_files=100, fsync="never")
        journal.open()
        journal.close()
        now = time.time()
        lines: list[dict[str, Any]] = [
            {
                "type": "skill_started",
                "skill_id": "old",
                "skill_name": "n",
                "timestamp": rfc3339_utc(now - 9000),
            },
            {
                "type": "skill_started",
                "skill_id": "a",
                "skill_name": "n",
                "timestamp": rfc3339_utc(now - 5000),
            },
            {
                "type": "step_started",
                "skill_id": "a",
                "step_index": 0,
                "step_name": "s",
                "timestamp": rfc3339_utc(now - 4000),
            },
            {
                "type": "skill_started",
                "skill_id": "b",
                "skill_name": "n",
                "timestamp": rfc3339_utc(now - 100),
            },
        ]
        for seq, line in enumerate(lines, 1):
            stamp = line.pop("timestamp")  # last, after the seq, as the daemon writes it
            text = json.dumps({**line, "seq": seq, "timestamp": stamp}, separators=(",", ":"))
            (tmp / f"events-{seq:012d}.jsonl").write_text(text + "\n")
        kept = [(e["type"], e["skill_id"]) for e in skill_history(journal, now)]
        # Back to the first event over an hour old (a's step), not to a's start.
        assert kept == [("step_started", "a"), ("skill_started", "b")], kept


def test_reader_takes_names_from_keys_only() -> None:
    """The unparsed fast path reads a skill's names only where parsing would find them."""
    events: list[dict[str, Any]] = [
        {"type": "step_started", "skill_id": "real", "step_index": 1, "step_name": "s"},
        {"type": "skill_started", "skill_name": "m", "inputs": {"skill_id": "nested"}},
        {"type": "step_started", "skill_name": "n", 'x"skill_id': "fake", "step_index": 0,
         "step_name": "s"},
        {"type": "skill_started", "skill_name": "", "session_id": "é"},
    ]  # fmt: skip
    for event in events:
        line = json.dumps(event, separators=(",", ":"), ensure_ascii=False).encode()
        parsed = _parse(line)
        assert parsed is not None, line
        want = [(k, parsed[k]) for k in ("skill_id", "session_id", "skill_name") if parsed.get(k)]
        peeked = _peek(line)
        assert peeked is None or peeked == (event["type"], tuple(want)), (line, peeked)
    lines = [json.dumps(e, separators=(",", ":"), ensure_ascii=False) for e in events]
    fast = [_peek(line.encode()) is not None for line in lines]
    assert fast == [True, False, False, True], f"fast path taken: {fast}"


def test_reader_keeps_a_bounded_history(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Past its bound the reader keeps the newest events, says so, and reads no further."""
    monkeypatch.setattr(replay, "MAX_SKILL_HISTORY", 3)
    with short_tmpdir() as tmp:
        journal = Journal(tmp, max_file_bytes=1 << 20, max_files=2, fsync="never")
        journal.open()
        journal.close()
        stamp = rfc3339_utc(time.time())
        text = "".join(
            json.dumps({**started(f"s{seq}"), "seq": seq, "timestamp": stamp}) + "\n"
            for seq in range(1, 11)
        )
        (tmp / "events-000000000001.jsonl").write_text(text)
        kept = [e["skill_id"] for e in skill_history(journal, time.time())]
    assert kept == ["s8", "s9", "s10"], kept
    assert "older ones not read" in caplog.text, caplog.text


def test_skills_are_rebuilt_from_lines_as_sources_spell_them() -> None:
    """Journal lines keep the source's bytes (docs/protocol.md §1.1): spaces around
    colons (Python's json.dumps), a key spelled with a \\u escape, a key written twice.
    The skills they start are rebuilt after a restart like those of compact lines."""
    lines = [
        json.dumps(started("spaced", session_id="s1")),  # '"skill_id": "spaced"'
        json.dumps({"type": "step_started", "skill_id": "spaced", "step_index": 2,
                    "step_name": "fetch", "total_steps": 7}),
        '{"type":"skill_started","skill_id":"mixed","skill_name":"n","total_steps":3}',
        '{"type":"step_started","skill_id":"mixed","step_index":1,"step_name":"a",'
        '"total_steps": 9}',
        '{"type":"step_started","skill_id":"mixed","step_index":2,"step_name":"b"}',
        '{"type":"skill_started","skill_id":"escaped","skill_name":"n","total_steps":2}',
        '{"type":"step_started","skill\\u005fid":"escaped","step_index":4,"step_name":"s"}',
        '{"type":"skill_started","skill_id":"first","skill_id":"twice","skill_name":"n"}',
    ]  # fmt: skip

    async def body() -> None:
        with short_tmpdir() as tmp:
            cfg = make_config(tmp)
            async with (
                running_daemon(cfg) as d,
                await Source.connect(d.socket_path, hello=HELLO) as src,
            ):
                for line in lines:
                    await src.send_raw(line.encode() + b"\n")
                    assert (await src.recv())["type"] == "ack"
            async with running_daemon(cfg) as d, connected_client(d) as (_, connected):
                skills = {s["skill_id"]: s for s in connected["running_skills"]}
                want = {"spaced", "mixed", "escaped", "twice"}
                assert set(skills) == want, connected["running_skills"]
                assert (skills["spaced"]["current_step"], skills["spaced"]["total_steps"]) == (
                    2,
                    7,
                ), skills["spaced"]
                assert skills["escaped"]["current_step"] == 4, skills["escaped"]
                mixed = skills["mixed"]
                assert (mixed["current_step"], mixed["total_steps"]) == (2, 9), mixed

    run(body())
