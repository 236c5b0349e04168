"""The drop-in for the old server's emitter API (``aaeventd.compat``), end to end.

A real daemon, the engine's call sequence through :mod:`aaeventd.compat`, and a real
``websockets`` client reading the frames, checked for the fields the VS Code extension
reads (``tests/node/extension_client.mjs``).
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from aaeventd import compat
from aaeventd.client import AsyncEventSource
from aaeventd.compat import CompatServer
from tests.support import (
    TIMEOUT,
    connected_client,
    make_config,
    recv_json,
    run,
    running_daemon,
    short_tmpdir,
)


async def next_event(ws: Any) -> dict[str, Any]:
    """The next stream event (frames with a seq), control replies skipped."""
    while "seq" not in (frame := await recv_json(ws)):
        pass
    return frame


def test_engine_call_sequence_reaches_a_client_with_the_extensions_fields(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Every old method emits its event with the fields the extension reads."""

    async def body() -> None:
        with short_tmpdir() as tmp:
            config = make_config(tmp)
            async with running_daemon(config) as d, connected_client(d) as (ws, _):
                monkeypatch.setenv("AAEVENTD_SOCKET", str(d.socket_path))
                server = await compat.start_websocket_server()
                assert compat.get_websocket_server() is server, "not a singleton"
                assert server.is_running
                await server.skill_started("s1", "start_work", 3, inputs={"issue": "AAP-1"})
                await server.step_started("s1", 0, "load", description="Load the issue")
                await server.step_completed("s1", 0, "load", 120.5)
                await server.step_failed("s1", 1, "branch", "exists")
                await server.auto_heal_triggered("s1", 1, "conflict", "rename", "x" * 500)
                await server.auto_heal_completed("s1", 1, "rename", True)
                await server.memory_query_started("q1", "who owns it?", ["jira"])
                await server.memory_query_completed("q1", "owner", ["jira"], 2, 31.5)
                await server.intent_classified("q1", "who owns it?", "owner", 0.9, ["jira"])
                asking = asyncio.create_task(
                    server.request_confirmation(
                        "s1",
                        1,
                        "Create branch?",
                        ["yes", "no"],
                        claude_suggestion="yes",
                        timeout_seconds=60,
                    )
                )
                frames = [await next_event(ws) for _ in range(10)]
                kinds = [f["type"] for f in frames]
                assert kinds == [
                    "skill_started",
                    "step_started",
                    "step_completed",
                    "step_failed",
                    "auto_heal_triggered",
                    "auto_heal_completed",
                    "memory_query_started",
                    "memory_query_completed",
                    "intent_classified",
                    "confirmation_required",
                ], kinds
                started, step, done, failed, heal, healed, mq, mqc, intent, ask = frames
                assert (started["skill_id"], started["skill_name"], started["total_steps"]) == (
                    "s1",
                    "start_work",
                    3,
                ), started
                assert started["inputs"] == {"issue": "AAP-1"}, started
                assert started["source"] == "chat", started
                assert (step["step_index"], step["step_name"]) == (0, "load"), step
                assert done["duration_ms"] == 120.5, done
                assert failed["error"] == "exists", failed
                snippet = heal["error_snippet"]
                assert len(snippet) == 200, f"snippet of {len(snippet)} characters"
                assert healed["success"] is True, healed
                assert mq["sources"] == ["jira"], mq
                assert (mqc["result_count"], mqc["latency_ms"]) == (2, 31.5), mqc
                assert intent["confidence"] == 0.9, intent
                assert ask["prompt"] == "Create branch?", ask
                assert ask["options"] == ["yes", "no"], ask
                assert (ask["skill_id"], ask["step_index"]) == ("s1", 1), ask
                assert ask["claude_suggestion"] == "yes", ask
                reply = {"type": "confirmation_response", "id": ask["id"], "response": "yes"}
                await ws.send(json.dumps({**reply, "remember": "this-skill"}))
                answer = await asyncio.wait_for(asking, TIMEOUT)
                assert answer == {"response": "yes", "remember": "this-skill"}, answer
                await server.skill_completed("s1", total_duration_ms=900)
                while (end := await next_event(ws))["type"] != "skill_completed":
                    pass
                assert end["total_duration_ms"] == 900, end
                await compat.stop_websocket_server()
                assert not server.is_running

    try:
        run(body())
    finally:
        compat._server = None  # a failure above must not leave it to the next test


def test_unanswered_confirmation_gives_let_claude() -> None:
    """On expiry the old fallback answer comes back, not an exception."""

    async def body() -> None:
        with short_tmpdir() as tmp:
            async with running_daemon(make_config(tmp)) as d:
                server = CompatServer(AsyncEventSource(d.socket_path, name="engine"))
                answer = await server.request_confirmation(
                    "s", 0, "Go?", ["yes", "no"], timeout_seconds=0.2
                )
                assert answer == {"response": "let_claude", "remember": "none"}, answer
                await server.stop()

    run(body())


def test_daemon_down_then_up_buffers_and_never_raises() -> None:
    """With the daemon down calls return; once it is up the events arrive in order."""

    async def body() -> None:
        with short_tmpdir() as tmp:
            config = make_config(tmp)
            source = AsyncEventSource(config.sources.socket_path, name="engine", timeout=2.0)
            server = CompatServer(source)
            await server.skill_started("s2", "deploy", 2)
            await server.step_started("s2", 1, "push")
            assert source.buffered == 2, f"{source.buffered} events buffered"
            asked = await server.request_confirmation("s2", 1, "Push?", ["yes", "no"])
            assert asked == {"response": "let_claude", "remember": "none"}, asked
            assert source.buffered == 2, f"{source.buffered} buffered: the question was kept"
            async with running_daemon(config) as d:
                assert await source.flush(TIMEOUT), f"{source.buffered} still buffered"
                async with connected_client(d) as (_, first):
                    skills = first["running_skills"]
                    assert [(s["skill_id"], s["current_step"]) for s in skills] == [("s2", 1)], (
                        skills
                    )
                await server.stop()
            assert source.dropped == 0, f"{source.dropped} events dropped"

    run(body())
