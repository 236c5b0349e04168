"""The hub, with no I/O: seq, replay ring, running skills, confirmations (time as input)."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest

from aaeventd.hub import MAX_RUNNING_SKILLS, SKILL_IDLE_SECONDS, Broadcast, Hub, HubLimits, ToSource
from aaeventd.protocol.errors import ErrorCode, ProtocolError
from aaeventd.protocol.events import ConfirmationResponse

WALL = 1_770_201_000.123  # 2026-02-04T10:30:00.123Z


def accept(
    hub: Hub, event: dict[str, Any], *, source: int | None = 1, now: float = 0.0
) -> list[Any]:
    return hub.accept(event, event["type"], source=source, wants_ack=True, wall=WALL, now=now)


def only_broadcast(effects: list[Any]) -> Broadcast:
    broadcasts = [e for e in effects if isinstance(e, Broadcast)]
    assert len(broadcasts) == 1, effects
    return broadcasts[0]


def confirm(hub: Hub, *, now: float = 0.0, **fields: Any) -> str:
    event = {"type": "confirmation_required", "message": "Create branch?", **fields}
    b = only_broadcast(accept(hub, event, now=now))
    assert b.ack_extra is not None
    cid = b.ack_extra["id"]
    assert isinstance(cid, str)
    return cid


def response(cid: str, answer: str = "yes", remember: str = "none") -> ConfirmationResponse:
    return ConfirmationResponse(id=cid, response=answer, remember=remember)


def test_seq_increments_and_continues_from_start_value() -> None:
    """seq starts after the resumed value and grows by one per event."""
    hub = Hub(epoch="e", last_seq=41)
    seqs = [only_broadcast(accept(hub, {"type": "x"})).stamped.seq for _ in range(3)]
    assert seqs == [42, 43, 44]
    assert hub.last_seq == 44


def test_source_seq_overwritten_in_place_and_timestamp_added() -> None:
    """A source's seq is replaced where it stood; timestamp is appended when absent."""
    hub = Hub(epoch="e")
    event = {"type": "x", "seq": 999, "a": 1}
    stamped = only_broadcast(accept(hub, event)).stamped
    assert list(stamped.event) == ["type", "seq", "a", "timestamp"]
    assert stamped.event["seq"] == 1
    assert stamped.event["timestamp"] == "2026-02-04T10:30:00.123Z"


def test_source_timestamp_kept() -> None:
    """A timestamp sent by the source is left exactly as sent."""
    hub = Hub(epoch="e")
    stamped = only_broadcast(accept(hub, {"type": "x", "timestamp": "yesterday"})).stamped
    assert stamped.event["timestamp"] == "yesterday"


def test_frame_and_payload_encode_the_event_once() -> None:
    """The journal payload is the JSON inside the frame, byte for byte."""
    hub = Hub(epoch="e")
    stamped = only_broadcast(accept(hub, {"type": "x", "text": "é" * 200})).stamped
    payload = bytes(stamped.payload)
    assert json.loads(payload) == stamped.event
    assert stamped.frame.endswith(payload)
    assert stamped.frame[0] == 0x81


def test_ack_requested_only_when_source_wants_it() -> None:
    """Plain events are acked only for sources that said acks:true."""
    hub = Hub(epoch="e")
    quiet = hub.accept({"type": "x"}, "x", source=7, wants_ack=False, wall=WALL, now=0)
    loud = hub.accept({"type": "x"}, "x", source=7, wants_ack=True, wall=WALL, now=0)
    assert only_broadcast(quiet).ack_to is None
    assert only_broadcast(loud).ack_to == 7


def test_replay_from_ring_and_gap_when_evicted() -> None:
    """replay_since returns what the ring still has and names the missing range."""
    hub = Hub(epoch="e", limits=HubLimits(replay_buffer=5))
    for _ in range(10):
        accept(hub, {"type": "x"})
    assert [s.seq for s in hub.replay_since(7).events] == [8, 9, 10]
    assert hub.replay_since(7).gap is None
    early = hub.replay_since(2)
    assert early.gap == (3, 5)
    assert [s.seq for s in early.events] == [6, 7, 8, 9, 10]
    assert hub.replay_since(10).events == []
    assert hub.replay_since(50).events == []


def test_replay_gap_when_ring_empty_after_restart() -> None:
    """After a restart the ring is empty: everything since N up to the last seq is a gap."""
    hub = Hub(epoch="e", last_seq=20)
    replay = hub.replay_since(15)
    assert replay.gap == (16, 20)
    assert replay.events == []


def test_shrinking_ring_keeps_newest() -> None:
    """A reload to a smaller replay_buffer keeps the newest events."""
    hub = Hub(epoch="e")
    for _ in range(10):
        accept(hub, {"type": "x"})
    hub.set_limits(HubLimits(replay_buffer=3))
    assert hub.oldest_in_ring == 8


# -- running skills -------------------------------------------------------------------


def test_running_skill_tracks_current_step_and_leaves_on_completion() -> None:
    """A skill shows its latest step_started, and leaves on skill_completed."""
    hub = Hub(epoch="e")
    accept(
        hub,
        {"type": "skill_started", "skill_name": "start_work", "skill_id": "s1", "total_steps": 5},
    )
    accept(
        hub, {"type": "step_started", "skill_id": "s1", "step_name": "fetch_issue", "step_index": 2}
    )
    accept(
        hub, {"type": "step_failed", "skill_id": "s1", "step_name": "fetch_issue", "step_index": 2}
    )
    [skill] = hub.running_skills(0)
    assert skill["skill_id"] == "s1"
    assert skill["skill_name"] == "start_work"
    assert skill["total_steps"] == 5
    assert skill["current_step"] == 2
    assert skill["current_step_name"] == "fetch_issue"
    assert skill["status"] == "running"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", skill["started_at"])
    accept(hub, {"type": "skill_completed", "skill_id": "s1"})
    assert hub.running_skills(0) == []


@pytest.mark.parametrize("end", ["skill_failed", "skill_error"])
def test_both_failure_synonyms_end_a_skill(end: str) -> None:
    """skill_failed and skill_error both remove the skill."""
    hub = Hub(epoch="e")
    accept(hub, {"type": "skill_started", "skill_name": "a"})
    accept(hub, {"type": end, "skill_name": "a"})
    assert hub.running_skills(0) == []


def test_skill_keyed_by_id_then_session_then_name() -> None:
    """The key is skill_id, else session_id, else skill_name; same key replaces."""
    hub = Hub(epoch="e")
    accept(hub, {"type": "skill_started", "skill_name": "a", "session_id": "sess"})
    accept(hub, {"type": "skill_started", "skill_name": "b", "session_id": "sess"})
    [skill] = hub.running_skills(0)
    assert skill["skill_name"] == "b"


def test_later_events_match_the_most_recent_start_by_name() -> None:
    """A step naming only skill_name updates the most recently started match."""
    hub = Hub(epoch="e")
    accept(hub, {"type": "skill_started", "skill_name": "a", "skill_id": "1"})
    accept(hub, {"type": "skill_started", "skill_name": "a", "skill_id": "2"})
    accept(hub, {"type": "step_started", "skill_name": "a", "step_name": "s", "step_index": 0})
    skills = {s["skill_id"]: s for s in hub.running_skills(0)}
    assert skills["2"]["current_step_name"] == "s"
    assert skills["1"]["current_step_name"] is None


def test_unmatched_id_falls_back_to_name() -> None:
    """An event whose skill_id matches nothing is matched by its skill_name."""
    hub = Hub(epoch="e")
    accept(hub, {"type": "skill_started", "skill_name": "a"})
    accept(
        hub,
        {
            "type": "step_started",
            "skill_id": "x",
            "skill_name": "a",
            "step_name": "s",
            "step_index": 1,
        },
    )
    assert hub.running_skills(0)[0]["current_step"] == 1


def test_idle_skills_dropped_after_an_hour() -> None:
    """A skill with no event for an hour leaves the list."""
    hub = Hub(epoch="e")
    accept(hub, {"type": "skill_started", "skill_name": "old"}, now=0)
    accept(hub, {"type": "skill_started", "skill_name": "new"}, now=SKILL_IDLE_SECONDS)
    names = [s["skill_name"] for s in hub.running_skills(SKILL_IDLE_SECONDS + 1)]
    assert names == ["new"]


def test_at_most_100_running_skills_oldest_first_out() -> None:
    """The 101st start pushes out the oldest."""
    hub = Hub(epoch="e")
    for i in range(MAX_RUNNING_SKILLS + 1):
        accept(hub, {"type": "skill_started", "skill_name": f"s{i}"})
    names = [s["skill_name"] for s in hub.running_skills(0)]
    assert len(names) == MAX_RUNNING_SKILLS
    assert names[0] == "s1"


# -- confirmations ----------------------------------------------------------------------


def test_confirmation_gets_id_both_texts_options_and_ack() -> None:
    """A confirmation gets a UUID, prompt==message, default options, created_at, an ack."""
    hub = Hub(epoch="e")
    b = only_broadcast(
        accept(hub, {"type": "confirmation_required", "prompt": "Go?", "skill_name": "s"})
    )
    event = b.stamped.event
    assert re.fullmatch(
        r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[0-9a-f]{4}-[0-9a-f]{12}", event["id"]
    )
    assert event["prompt"] == event["message"] == "Go?"
    assert event["options"] == ["yes", "no"]
    assert event["timeout_seconds"] == 60
    assert event["created_at"] == "2026-02-04T10:30:00.123Z"
    assert b.ack_to == 1
    assert b.ack_extra == {"id": event["id"]}


def test_duplicate_pending_id_refused() -> None:
    """An id still pending is refused with duplicate_confirmation."""
    hub = Hub(epoch="e")
    confirm(hub, id="c1")
    with pytest.raises(ProtocolError) as info:
        confirm(hub, id="c1")
    assert info.value.code is ErrorCode.DUPLICATE_CONFIRMATION


def test_first_valid_answer_wins() -> None:
    """The first valid answer goes to the source and is broadcast; a second is refused."""
    hub = Hub(epoch="e")
    cid = confirm(hub, options=["yes", "no", "skip"])
    effects = hub.answer(response(cid, "skip"), client="c1", user_agent="ua", wall=WALL, now=1)
    to_source = [e for e in effects if isinstance(e, ToSource)]
    assert to_source == [
        ToSource(
            1, {"type": "confirmation_response", "id": cid, "response": "skip", "remember": "none"}
        )
    ]
    answered = only_broadcast(effects).stamped.event
    assert answered["type"] == "confirmation_answered"
    assert answered["answered_by"] == {"client": "c1", "user_agent": "ua"}
    with pytest.raises(ProtocolError) as info:
        hub.answer(response(cid, "yes"), client="c2", user_agent=None, wall=WALL, now=1)
    assert info.value.code is ErrorCode.UNKNOWN_CONFIRMATION


def test_answer_outside_options_refused_and_still_pending() -> None:
    """A response not in options is invalid_response and the confirmation stays pending."""
    hub = Hub(epoch="e")
    cid = confirm(hub)
    with pytest.raises(ProtocolError) as info:
        hub.answer(response(cid, "maybe"), client="c1", user_agent=None, wall=WALL, now=1)
    assert info.value.code is ErrorCode.INVALID_RESPONSE
    assert hub.pending_count == 1


def test_timeout_expires_with_default() -> None:
    """Past timeout_seconds the confirmation expires with reason timeout and its default."""
    hub = Hub(epoch="e")
    cid = confirm(hub, timeout_seconds=5, default="no", now=100)
    assert hub.next_deadline() == 105
    assert hub.expire_due(WALL, 104.9) == []
    effects = hub.expire_due(WALL, 105)
    expected = {"type": "confirmation_expired", "id": cid, "reason": "timeout", "response": "no"}
    assert ToSource(1, expected) in effects
    event = only_broadcast(effects).stamped.event
    assert {k: event[k] for k in expected} == expected
    assert hub.pending_count == 0


def test_pause_excludes_time_and_resume_restarts() -> None:
    """Paused time does not count; pausing twice or resuming a running one is a no-op."""
    hub = Hub(epoch="e")
    cid = confirm(hub, timeout_seconds=10, now=0)
    hub.pause(cid, 4)
    hub.pause(cid, 6)  # no-op
    assert hub.pending_confirmations(50)[0]["remaining_seconds"] == 6
    assert hub.expire_due(WALL, 50) == []
    hub.resume(cid, 100)
    hub.resume(cid, 101)  # no-op
    assert hub.next_deadline() == 106
    assert hub.expire_due(WALL, 105.9) == []
    assert hub.expire_due(WALL, 106) != []


def test_pause_ends_by_itself_after_max_pause() -> None:
    """A pause longer than max_pause_seconds ends and the countdown goes on."""
    hub = Hub(epoch="e", limits=HubLimits(max_pause_seconds=30))
    cid = confirm(hub, timeout_seconds=10, now=0)
    hub.pause(cid, 2)  # 8 s remain
    assert hub.next_deadline() == 32
    assert hub.expire_due(WALL, 32) == []
    assert hub.next_deadline() == 40
    assert hub.expire_due(WALL, 40) != []


def test_pause_unknown_id_refused() -> None:
    """pause_timer/resume_timer for an id not pending is unknown_confirmation."""
    hub = Hub(epoch="e")
    for op in (hub.pause, hub.resume):
        with pytest.raises(ProtocolError) as info:
            op("nope", 0)
        assert info.value.code is ErrorCode.UNKNOWN_CONFIRMATION


def test_source_gone_expires_its_confirmations_only() -> None:
    """A disconnected source's confirmations expire with source_gone; others stay."""
    hub = Hub(epoch="e")
    mine = confirm(hub)
    hub.accept(
        {"type": "confirmation_required", "message": "other"},
        "confirmation_required",
        source=2,
        wants_ack=False,
        wall=WALL,
        now=0,
    )
    effects = hub.source_gone(1, WALL, 1)
    assert not any(isinstance(e, ToSource) for e in effects)
    event = only_broadcast(effects).stamped.event
    assert (event["id"], event["reason"]) == (mine, "source_gone")
    assert hub.pending_count == 1


def test_shutdown_expires_all_and_tells_sources() -> None:
    """On shutdown every pending confirmation expires with reason shutdown."""
    hub = Hub(epoch="e")
    a = confirm(hub, default="yes")
    b = confirm(hub)
    effects = hub.shutdown(WALL, 1)
    told = {e.message["id"]: e.message for e in effects if isinstance(e, ToSource)}
    assert told[a] == {
        "type": "confirmation_expired",
        "id": a,
        "reason": "shutdown",
        "response": "yes",
    }
    assert told[b] == {"type": "confirmation_expired", "id": b, "reason": "shutdown"}
    assert hub.pending_count == 0


def test_connected_snapshot_lists_pending_with_remaining_seconds() -> None:
    """The connected frame carries epoch, seq and each pending confirmation's countdown."""
    hub = Hub(epoch="ep", last_seq=3)
    cid = confirm(hub, timeout_seconds=60, now=10, skill_name="start_work", step_index=2)
    snap = hub.connected(27.5)
    assert snap["type"] == "connected"
    assert (snap["epoch"], snap["seq"], snap["version"]) == ("ep", 4, "0.1.0")
    [pending] = snap["pending_confirmations"]
    assert pending["id"] == cid
    assert pending["remaining_seconds"] == 42.5
    assert pending["skill_name"] == "start_work"
    assert pending["prompt"] == pending["message"] == "Create branch?"


def test_any_event_naming_a_skill_keeps_it_alive() -> None:
    """A heal or confirmation naming the skill resets its idle hour."""
    hub = Hub(epoch="e")
    accept(hub, {"type": "skill_started", "skill_name": "a", "skill_id": "s1"}, now=0)
    accept(hub, {"type": "heal_started", "skill_id": "s1"}, now=SKILL_IDLE_SECONDS - 1)
    assert [s["skill_id"] for s in hub.running_skills(SKILL_IDLE_SECONDS + 1)] == ["s1"]
    assert hub.running_skills(2 * SKILL_IDLE_SECONDS) == []
